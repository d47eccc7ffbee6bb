# shellcheck shell=bash
# Sourced by tests/run-all.sh: Debian's Chromium, for the status page test
# (tests/tests/it/status_page.rs), which runs `chromium --headless` against a coordinator's
# page on loopback (--dump-dom for the DOM, --screenshot for the artifact). Exports
# PHOENIX_CHROMIUM_BIN.

phoenix_chromium_setup() {
  if ! command -v chromium >/dev/null 2>&1; then
    # No recommends: they pull a desktop's worth of fonts, themes and sound daemons; the
    # headless browser needs one font to lay out text, which fonts-dejavu-core gives.
    apt-get install -y --no-install-recommends chromium fonts-dejavu-core >/dev/null || return 1
  fi
  PHOENIX_CHROMIUM_BIN="$(command -v chromium)" || return 1
  export PHOENIX_CHROMIUM_BIN
  echo "chromium $("$PHOENIX_CHROMIUM_BIN" --version 2>/dev/null | sed -n 's/^Chromium \([^ ]*\).*/\1/p') at $PHOENIX_CHROMIUM_BIN"
}

if ! phoenix_chromium_setup; then
  echo "SETUP FAILED: chromium (the status page test fails under PHOENIX_REQUIRE_ALL=1)" >&2
fi
