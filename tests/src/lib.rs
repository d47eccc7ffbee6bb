//! End-to-end test harness: locates the built binaries, runs them in temporary state
//! directories and kills what it started when dropped, also when a test fails.

pub mod aptrepo;
pub mod etcd;
pub mod event_checks;
pub mod guest;
pub mod lxc;
pub mod raw;
pub mod replicas;
pub mod sim;
pub mod spine;
pub mod stacks;
pub mod standin;
pub mod stepca;
pub mod store_checks;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `target/<profile>/<name>`, next to the test executable's `deps/` directory. The binaries
/// are built by `cargo build --workspace --bins` (tests/run-all.sh) before the tests run.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace --bins` first (tests/run-all.sh does)",
        path.display()
    );
    path
}

/// Where `cargo build-agent` (.cargo/config.toml) puts the agent as shipped, relative to
/// the target directory.
pub const SHIPPED_AGENT: &str = "x86_64-unknown-linux-gnu/release-agent/phoenix-agent";

/// The agent as shipped, for the benchmarks: `BENCH_AGENT` when set, else
/// [`SHIPPED_AGENT`] (`cargo build-agent`: the size-optimised, statically linked build every
/// guest runs) in the benchmark's own target directory.
pub fn shipped_agent() -> PathBuf {
    if let Some(p) = std::env::var_os("BENCH_AGENT") {
        return PathBuf::from(p);
    }
    let target_dir = bin("phoenix")
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = target_dir.join(SHIPPED_AGENT);
    assert!(
        path.exists(),
        "{} not built: run `cargo build-agent` first",
        path.display()
    );
    path
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A component a test needs is missing: fail under PHOENIX_REQUIRE_ALL=1 (CI), else
/// say so loudly and let the caller return.
pub fn require(component: &str, present: bool) -> bool {
    if present {
        return true;
    }
    if std::env::var("PHOENIX_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("required component missing: {component}");
    }
    eprintln!("\n*** SKIPPED: {component} is not available on this machine ***\n");
    false
}
