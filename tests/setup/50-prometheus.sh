# shellcheck shell=bash
# Sourced by tests/run-all.sh: Debian's Prometheus server, for the metrics test
# (tests/tests/it/metrics.rs), which runs its own `prometheus` with a temporary config and
# storage on loopback. Exports PHOENIX_PROMETHEUS_BIN.

phoenix_prometheus_setup() {
  if ! command -v prometheus >/dev/null 2>&1; then
    # No recommends: they add node-exporter, another daemon the tests do not use.
    apt-get install -y --no-install-recommends prometheus >/dev/null || return 1
    # The package enables a system Prometheus on :9090; the test needs none, so a host
    # that did not run one before does not run one after.
    if [ -d /run/systemd/system ]; then
      systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
  fi
  PHOENIX_PROMETHEUS_BIN="$(command -v prometheus)" || return 1
  export PHOENIX_PROMETHEUS_BIN
  echo "prometheus $("$PHOENIX_PROMETHEUS_BIN" --version 2>&1 | sed -n 's/^prometheus, version \([^ ]*\).*/\1/p') at $PHOENIX_PROMETHEUS_BIN"
}

if ! phoenix_prometheus_setup; then
  echo "SETUP FAILED: prometheus (the metrics test fails under PHOENIX_REQUIRE_ALL=1)" >&2
fi
