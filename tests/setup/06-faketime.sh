# shellcheck shell=bash
# Sourced by tests/run-all.sh: libfaketime, to run `phoenix-agent join` with a clock behind
# the coordinator's (tests/tests/it/sessions.rs).
if ! command -v faketime >/dev/null 2>&1; then
  apt-get install -y faketime >/dev/null
fi
