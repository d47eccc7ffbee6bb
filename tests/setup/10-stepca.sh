# shellcheck shell=bash
# Sourced by tests/run-all.sh: provides a real step-ca on loopback for the tests.
#
# Gets a step-ca binary ($STEP_CA_BIN, else a cached build, else apt-get + an offline GOPATH
# build from Debian's packages: tests/stepca/build.sh), creates a fresh CA under
# $PHOENIX_TEST_WORK/stepca (tests/stepca/init-ca.sh), starts it (tests/stepca/ctl.sh) and
# exports what tests read:
#   PHOENIX_STEPCA_URL, PHOENIX_STEPCA_ROOT (PEM path), PHOENIX_STEPCA_FINGERPRINT (hex
#   SHA-256 of the root DER), PHOENIX_STEPCA_PROVISIONER (name), PHOENIX_STEPCA_JWK (plain
#   provisioner JWK, 0600), PHOENIX_STEPCA_JWE + PHOENIX_STEPCA_PASSWORD_FILE (the same key
#   as step's encrypted JWE), PHOENIX_STEPCA_DIR, PHOENIX_STEPCA_LOG, PHOENIX_STEPCA_CTL
#   (`ctl.sh start|stop|restart|status [DIR]`), PHOENIX_STEPCA_INIT + PHOENIX_STEPCA_BIN +
#   PHOENIX_STEPCA_KEYTOOL (to make a private CA: `init-ca.sh DIR BIN KEYTOOL`).
# The cleanup function stops the CA.

phoenix_stepca_setup() {
  local root out t0=$SECONDS
  root="$(pwd)/tests/stepca"
  out="$(bash "$root/build.sh")" || return 1
  local bin keytool
  bin="$(sed -n 's/^STEP_CA_BIN=//p' <<<"$out")"
  keytool="$(sed -n 's/^STEPCA_KEYTOOL=//p' <<<"$out")"
  local dir="$PHOENIX_TEST_WORK/stepca"
  rm -rf "$dir"
  bash "$root/init-ca.sh" "$dir" "$bin" "$keytool" || return 1
  local line
  while IFS= read -r line; do
    # shellcheck disable=SC2163
    export "$line"
  done <"$dir/stepca.env"
  bash "$root/ctl.sh" start "$dir" || return 1
  echo "step-ca $("$bin" --version 2>/dev/null | head -n1) at $PHOENIX_STEPCA_URL (setup $((SECONDS - t0)) s)"
}

phoenix_stepca_cleanup() {
  [ -n "${PHOENIX_STEPCA_DIR:-}" ] && bash "$PHOENIX_STEPCA_CTL" stop "$PHOENIX_STEPCA_DIR"
}

if phoenix_stepca_setup; then
  cleanup_fns+=(phoenix_stepca_cleanup)
else
  echo "SETUP FAILED: step-ca (tests needing it fail under PHOENIX_REQUIRE_ALL=1)" >&2
fi
