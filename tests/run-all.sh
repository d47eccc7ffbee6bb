#!/usr/bin/env bash
# The one command that runs every test. On a fresh machine it installs and starts what the
# tests need (tests/setup/NN-*.sh, sourced in order), builds the binaries, lints, runs the
# whole suite and stops what it started, also on failure.
#
# Where the time goes (issue 14) and how it is cut:
# - The workspace is compiled once. `cargo clippy` type-checks into metadata-only artifacts
#   that `cargo build` cannot reuse, and a plain `cargo build --bins` resolves features
#   without the dev-dependencies' (tokio's test-util), so the test build recompiled tokio
#   and everything above it. Instead one `cargo build --workspace --all-targets` (dev
#   features, every binary and test) runs with clippy's driver as the workspace crates'
#   compiler: the lints run inside that build, deny warnings, and the tests reuse it.
# - The setup scripts (apt, the step-ca Go build, debootstrap, daemons) run in a background
#   shell while cargo compiles; their exports and cleanups are taken over once both are done.
#   Only protoc (etcd-client's build script) is installed before the build.
# - The end-to-end tests (tests/tests/it/*.rs) are modules of one test binary: one link of
#   the whole dependency graph instead of one per file.
# - The test binaries run concurrently under cargo-nextest (.config/nextest.toml groups
#   the tests that share one engine); `cargo test --doc` runs the doc-tests nextest skips.
#
# PHOENIX_REQUIRE_ALL=1 (the default here) turns a missing component into a test failure
# instead of a loud skip. PHOENIX_TEST_THREADS: tests at once (default 3: on 2 cores more makes the real-component tests time out).
set -euo pipefail
cd "$(dirname "$0")/.."
export PHOENIX_REQUIRE_ALL="${PHOENIX_REQUIRE_ALL:-1}"
export PHOENIX_TEST_WORK="${PHOENIX_TEST_WORK:-$(mktemp -d /tmp/phoenix-tests.XXXXXX)}"

t_start=$SECONDS
phase() { echo "== $* [$(date -u +%T), +$((SECONDS - t_start)) s]"; }

cleanup_fns=()
setup_dir="$PHOENIX_TEST_WORK/setup"
setup_pid=""
run_cleanup() {
  local i
  # A setup still running (the build failed first) is let finish, so what it started is
  # known and stopped.
  [ -n "$setup_pid" ] && { wait "$setup_pid" || true; take_setup; }
  for ((i = ${#cleanup_fns[@]} - 1; i >= 0; i--)); do "${cleanup_fns[$i]}" || true; done
  phase "done"
}
trap run_cleanup EXIT

# What the background setup exported and must clean up, into this shell.
take_setup() {
  setup_pid=""
  # shellcheck source=/dev/null
  [ -f "$setup_dir/functions" ] && source "$setup_dir/functions"
  # shellcheck source=/dev/null
  [ -f "$setup_dir/exports" ] && source "$setup_dir/exports"
  local f
  if [ -f "$setup_dir/cleanups" ]; then
    while IFS= read -r f; do [ -n "$f" ] && cleanup_fns+=("$f"); done <"$setup_dir/cleanups"
  fi
}

# Runs every setup script in order in this (sub)shell, recording after each one what it
# exported (as global declarations, so sourcing them inside a function keeps them) and
# which cleanups it registered. A script that fails stops the chain, as `set -e` did.
run_setups() {
  local before setup
  before="$(export -p | sort)"
  for setup in tests/setup/[0-9]*.sh; do
    [ -e "$setup" ] || continue
    local t0=$SECONDS
    echo "-- setup: $setup"
    # shellcheck source=/dev/null
    source "$setup" || { echo "SETUP FAILED: $setup" >&2; return 1; }
    echo "-- setup: $setup took $((SECONDS - t0)) s"
    comm -13 <(echo "$before") <(export -p | sort) |
      sed 's/^declare -x /declare -gx /' >"$setup_dir/exports"
    declare -f >"$setup_dir/functions"
    printf '%s\n' "${cleanup_fns[@]}" >"$setup_dir/cleanups"
  done
}

phase "format"
cargo fmt --all -- --check

# etcd-client's build script runs protoc; everything else the setup installs is for tests.
if ! command -v protoc >/dev/null 2>&1; then
  phase "install protoc (build prerequisite)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null
fi

phase "setup (background) + build with lints"
mkdir -p "$setup_dir"
# Prefixed so its lines stand out among cargo's; setup scripts only touch apt among
# themselves, never while cargo runs something that does.
(
  trap - EXIT
  run_setups
) > >(sed -u 's/^/  [setup] /') 2>&1 &
setup_pid=$!

# clippy-driver is rustc plus the lints; cargo's wrapper applies it to workspace members only
# (dependencies compile as usual). CLIPPY_ARGS is how `cargo clippy -- -D warnings` passes
# the flag to it.
export RUSTC_WORKSPACE_WRAPPER
RUSTC_WORKSPACE_WRAPPER="$(rustc --print sysroot)/bin/clippy-driver"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
# A CI build happens once from nothing: incremental caches are only written, never read
# (2 GB of target/debug/incremental on a fresh disk, and the extra codegen work).
export CARGO_INCREMENTAL=0
build_ok=1
cargo build --workspace --all-targets || build_ok=0
phase "build finished (ok=$build_ok); waiting for setup"
setup_ok=1
wait "$setup_pid" || setup_ok=0
take_setup
[ "$build_ok" = 1 ] || { echo "BUILD OR LINT FAILED" >&2; exit 1; }
[ "$setup_ok" = 1 ] || { echo "SETUP FAILED (see [setup] lines above)" >&2; exit 1; }

phase "test"
test_ok=1
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast \
    --test-threads="${PHOENIX_TEST_THREADS:-3}" || test_ok=0
  phase "doc-tests"
  cargo test --workspace --doc || test_ok=0
else
  # Same tests, one binary at a time (slower). The end-to-end tests are one binary
  # (tests/tests/it) whose files here share one process: .config/nextest.toml's groups
  # (one Docker engine, the admission tests alone) only hold if the integration-test
  # binaries run one test at a time. (Always `--workspace`: the features, and so the
  # artifacts, of the build above.)
  echo "*** cargo-nextest is not installed: running the tests with cargo test ***"
  cargo test --workspace --no-fail-fast --lib --bins \
    -- --test-threads="${PHOENIX_TEST_THREADS:-2}" || test_ok=0
  cargo test --workspace --no-fail-fast --test '*' -- --test-threads=1 || test_ok=0
  cargo test --workspace --doc || test_ok=0
fi
[ "$test_ok" = 1 ]
