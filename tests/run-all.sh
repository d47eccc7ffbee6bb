#!/usr/bin/env bash
# The one command that runs every test. On a fresh machine it installs and starts what the
# tests need (tests/setup/NN-*.sh, sourced in order), builds the binaries, runs the whole
# suite and stops what it started, also on failure.
#
# PHOENIX_REQUIRE_ALL=1 (the default here) turns a missing component into a test failure
# instead of a loud skip.
set -euo pipefail
cd "$(dirname "$0")/.."
export PHOENIX_REQUIRE_ALL="${PHOENIX_REQUIRE_ALL:-1}"
export PHOENIX_TEST_WORK="${PHOENIX_TEST_WORK:-$(mktemp -d /tmp/phoenix-tests.XXXXXX)}"

cleanup_fns=()
run_cleanup() {
  local i
  for ((i = ${#cleanup_fns[@]} - 1; i >= 0; i--)); do "${cleanup_fns[$i]}" || true; done
}
trap run_cleanup EXIT

for setup in tests/setup/[0-9]*.sh; do
  [ -e "$setup" ] || continue
  echo "== setup: $setup"
  # shellcheck source=/dev/null
  source "$setup"
done

echo "== build"
cargo build --workspace --bins
echo "== lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
echo "== test"
cargo test --workspace --no-fail-fast -- --test-threads="${PHOENIX_TEST_THREADS:-2}"
