# Sourced by tests/run-all.sh. Installs Debian's `lxc` for the plain-LXC transport test of
# `phoenix guest install` (tests/tests/it/guest_install.rs). The containers themselves are made by
# the test from the rootfs tarball 30-guest.sh caches; this only needs the tools (lxc-start,
# lxc-attach, lxc-stop, lxc-info). No lxc-net, no AppArmor profiles, no templates: the test
# writes every container config itself. Idempotent; if the package cannot be installed it says
# so loudly and the test skips (or fails under PHOENIX_REQUIRE_ALL=1).
#
# Exports PHOENIX_GUEST_TARBALL (the rootfs the test unpacks into its containers).

phoenix_lxc_setup() {
  if ! command -v lxc-attach >/dev/null; then
    apt-get update -qq
    # --no-install-recommends: not apparmor, lxc-templates, debootstrap's extras or lxcfs.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lxc >/dev/null ||
      { echo "*** 35-lxc.sh: could not install lxc; the LXC guest-install test will skip ***"; return 0; }
  fi
  local tarball=/var/cache/phoenix/guest-bookworm-1.tar
  if [ -s "$tarball" ]; then
    export PHOENIX_GUEST_TARBALL="$tarball"
  else
    echo "*** 35-lxc.sh: $tarball missing (30-guest.sh builds it); the LXC test will skip ***"
  fi
}

phoenix_lxc_setup
