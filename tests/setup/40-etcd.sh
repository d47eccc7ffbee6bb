# shellcheck shell=bash
# Sourced by tests/run-all.sh: Debian's etcd (etcd-server + etcd-client for etcdctl), for the
# etcd store tests (tests/tests/it/etcd_store.rs), which start their own 3-member clusters on
# loopback (tests/src/etcd.rs). Also protoc, which the etcd-client crate's build.rs runs.
# Exports PHOENIX_ETCD_BIN and PHOENIX_ETCDCTL_BIN.
#
# TLS: EtcdCluster::start_tls (tests/src/etcd.rs) runs the members as the README's
# Proxmox-cluster section recommends, clients over TLS with client certificates required
# (--cert-file/--key-file/--trusted-ca-file/--client-cert-auth), from a CA it makes with
# the project's own pki; nothing to install for it beyond etcd.

phoenix_etcd_setup() {
  local want=()
  command -v etcd >/dev/null 2>&1 || want+=(etcd-server)
  command -v etcdctl >/dev/null 2>&1 || want+=(etcd-client)
  command -v protoc >/dev/null 2>&1 || want+=(protobuf-compiler)
  if [ ${#want[@]} -gt 0 ]; then
    apt-get install -y "${want[@]}" >/dev/null || return 1
    # The package enables a system etcd on :2379; the tests need none, so a host that did
    # not run etcd before does not run one after.
    if [[ " ${want[*]} " == *" etcd-server "* ]] && [ -d /run/systemd/system ]; then
      systemctl disable --now etcd.service >/dev/null 2>&1 || true
    fi
  fi
  PHOENIX_ETCD_BIN="$(command -v etcd)" || return 1
  PHOENIX_ETCDCTL_BIN="$(command -v etcdctl)" || return 1
  export PHOENIX_ETCD_BIN PHOENIX_ETCDCTL_BIN
  echo "etcd $("$PHOENIX_ETCD_BIN" --version | sed -n 's/^etcd Version: //p') at $PHOENIX_ETCD_BIN"
}

if ! phoenix_etcd_setup; then
  echo "SETUP FAILED: etcd (tests needing it fail under PHOENIX_REQUIRE_ALL=1)" >&2
fi
