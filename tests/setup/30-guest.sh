# Sourced by tests/run-all.sh. Provides a Debian bookworm image that boots systemd as PID 1
# under the machine's Docker engine, for the real apt/systemd/nginx tests (tests/tests/it/{apt,
# systemd,nginx}.rs), plus the host tools those tests use to build a signed local apt repository.
#
# The rootfs is made with debootstrap from Debian's mirror (the registry this machine reaches) and
# cached as a tarball under /var/cache/phoenix, so later runs only `docker import` it. nginx's .debs
# are downloaded into the image's apt cache (with the package lists) at build time, so the tests run
# the containers with --network none and apt still installs nginx for real, from Debian's packages.
#
# Exports PHOENIX_GUEST_IMAGE.

phoenix_guest_setup() {
  local version=1
  local image="phoenix-guest:bookworm-${version}"
  local cache=/var/cache/phoenix
  local tarball="${cache}/guest-bookworm-${version}.tar"
  local need=()
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v dpkg-scanpackages >/dev/null || need+=(dpkg-dev)
  command -v apt-ftparchive >/dev/null || need+=(apt-utils)
  command -v gpg >/dev/null || need+=(gnupg)
  if [ "${#need[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    if [ ! -s "$tarball" ]; then
      echo "building the guest rootfs (debootstrap bookworm, about 2 minutes)"
      mkdir -p "$cache"
      local root
      root="$(mktemp -d "${cache}/rootfs.XXXXXX")"
      debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,dbus,ca-certificates,curl,python3 \
        bookworm "$root" http://deb.debian.org/debian >"${cache}/debootstrap.log" 2>&1 ||
        { tail -20 "${cache}/debootstrap.log"; rm -rf "$root"; return 1; }
      # Lists and nginx's archives in the image: apt resolves and installs nginx offline.
      chroot "$root" apt-get -o APT::Sandbox::User=root update -qq
      chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -o APT::Sandbox::User=root install -y -qq --download-only nginx
      # Docker supplies these; a stale copy from the build host would shadow them.
      rm -f "$root/etc/hostname" "$root/etc/resolv.conf"
      tar -C "$root" -cf "${tarball}.tmp" . && mv "${tarball}.tmp" "$tarball"
      rm -rf "$root"
    fi
    docker import "$tarball" "$image" >/dev/null
  fi
  export PHOENIX_GUEST_IMAGE="$image"
}

phoenix_guest_setup
