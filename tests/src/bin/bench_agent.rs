//! Agent footprint benchmark: for each given `phoenix-agent` binary, its stripped size and
//! the idle memory of a real agent process run from it: enrolled with a real `phoenix
//! serve`, converged to a small state, then left idle. All binaries run side by side
//! against one coordinator, so "before" and "after" are measured in the same run.
//!
//! Run: `cargo build --release -p phoenix-coordinator -p phoenix-tests --bin phoenix
//!  --bin bench_agent && cargo build-agent && target/release/bench_agent [--idle SECS]
//!  [AGENT_BINARY…]` (default binary: the shipped one, `phoenix_tests::SHIPPED_AGENT`;
//!  default idle 30 s).

use phoenix_tests::spine::{Coordinator, converged, files_spec, guest_status, write_spec};
use phoenix_tests::wait_for;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Guest ids of the measured agents start here (one per binary).
const FIRST_GUEST: u32 = 7001;

/// An agent process, killed when dropped.
struct Running(Child);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `RssAnon`, `RssFile`, …).
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resident kB of the mappings of `file` in `pid` (the binary's own pages, not libc's).
fn mapped_kb(pid: u32, file: &Path) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let want = file.to_string_lossy();
    let mut ours = false;
    let mut kb = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            // A mapping header: "start-end perms offset dev inode [path]".
            Some(w) if w.contains('-') && !w.ends_with(':') => {
                ours = words.nth(4).is_some_and(|p| p == want);
            }
            Some("Rss:") if ours => {
                kb += words
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            _ => {}
        }
    }
    kb
}

/// The shared objects `pid` has mapped (file names, sorted), empty for a static binary.
fn shared_objects(pid: u32) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut libs: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains(".so"))
        .filter_map(|p| Path::new(p).file_name()?.to_str().map(str::to_string))
        .collect();
    libs.sort();
    libs.dedup();
    libs
}

/// Size of `bin` after `objcopy --strip-all` (what a package ships at most).
fn stripped_size(bin: &Path, scratch: &Path) -> Res<u64> {
    let out = scratch.join("stripped");
    let st = Command::new("objcopy")
        .arg("--strip-all")
        .arg(bin)
        .arg(&out)
        .status()?;
    if !st.success() {
        return Err(format!("objcopy --strip-all {}: {st}", bin.display()).into());
    }
    let size = std::fs::metadata(&out)?.len();
    std::fs::remove_file(&out)?;
    Ok(size)
}

fn main() -> Res<()> {
    phoenix_pki::tls::install_default_provider();
    let mut args = std::env::args().skip(1).peekable();
    let mut idle = 30;
    let mut bins = Vec::new();
    while let Some(a) = args.next() {
        if a == "--idle" {
            idle = args.next().ok_or("--idle needs seconds")?.parse()?;
        } else {
            bins.push(std::fs::canonicalize(&a).map_err(|e| format!("{a}: {e}"))?);
        }
    }
    if bins.is_empty() {
        bins.push(phoenix_tests::shipped_agent());
    }
    let work = tempfile::tempdir()?;
    let c = Coordinator::start(&work.path().join("coordinator"), &[]);
    let mut agents = Vec::new();
    let mut guests = Vec::new();
    for (i, bin) in bins.iter().enumerate() {
        let guest = FIRST_GUEST + u32::try_from(i)?;
        let dir = work.path().join(format!("agent-{guest}"));
        let root = dir.join("root");
        std::fs::create_dir_all(&root)?;
        let state = dir.join("state");
        let join = Command::new(bin)
            .arg("--state-dir")
            .arg(&state)
            .arg("join")
            .arg(c.token(guest))
            .output()?;
        if !join.status.success() {
            return Err(format!(
                "{} join: {}",
                bin.display(),
                String::from_utf8_lossy(&join.stderr)
            )
            .into());
        }
        // As the unit runs it: default drift interval and log level, stderr to a file.
        let log = std::fs::File::create(dir.join("agent.log"))?;
        let child = Command::new(bin)
            .arg("--state-dir")
            .arg(&state)
            .arg("run")
            .arg("--file-root")
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()?;
        agents.push(Running(child));
        guests.push((
            guest,
            files_spec(&root, &[("motd", "idle agent\n"), ("app.conf", "x = 1\n")]),
        ));
    }
    for (guest, _) in &guests {
        wait_for(Duration::from_secs(60), "agent connected", || {
            guest_status(&c.status(), *guest).filter(|g| g["connected"] == true)
        });
    }
    let spec = work.path().join("spec.json");
    write_spec(&spec, &guests);
    c.apply_ok(&spec);
    for (guest, _) in &guests {
        wait_for(Duration::from_secs(60), "agent converged", || {
            converged(&c.status(), *guest).then_some(())
        });
    }
    std::thread::sleep(Duration::from_secs(idle));
    println!("idle {idle} s after converging 2 files, connected to a real coordinator:");
    for (bin, agent) in bins.iter().zip(&agents) {
        let pid = agent.0.id();
        println!(
            "{}: stripped {} bytes (file {}); VmRSS {} kB, RssAnon {} kB, RssFile {} kB \
             (of it the binary {} kB), threads {}, shared objects: {}",
            bin.display(),
            stripped_size(bin, work.path())?,
            std::fs::metadata(bin)?.len(),
            status_kb(pid, "VmRSS"),
            status_kb(pid, "RssAnon"),
            status_kb(pid, "RssFile"),
            mapped_kb(pid, bin),
            status_kb(pid, "Threads"),
            match shared_objects(pid) {
                libs if libs.is_empty() => "none (static)".to_string(),
                libs => libs.join(" "),
            },
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_status_and_mapping() {
        let pid = std::process::id();
        assert!(super::status_kb(pid, "VmRSS") > 0);
        let exe = std::env::current_exe().expect("exe");
        assert!(super::mapped_kb(pid, &exe) > 0);
        // Test binaries link libc dynamically.
        assert!(
            super::shared_objects(pid)
                .iter()
                .any(|l| l.starts_with("libc"))
        );
    }
}
