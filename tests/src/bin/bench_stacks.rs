//! Stack benchmark: cold and no-op converge of the 4-service stack (tests/src/stacks.rs,
//! `FOUR_SERVICES`, health-gated) by the agent's `StackConverger` and by `docker-compose
//! up -d`, on the same private Docker engine, interleaved, several repetitions.
//!
//! Phoenix is timed two ways: as the `phoenix-agent apply -f guest.json` process (like for
//! like with the `docker-compose` process, start-up included), and as one reconcile pass
//! (validate, check, apply on drift) inside a running process, which is how the agent
//! runs it. Compose's interpreter start-up is measured separately as `docker-compose version`.
//!
//! Run (needs the private engine from tests/setup/20-docker.sh):
//! `PHOENIX_TEST_WORK=$(mktemp -d) bash -c 'cleanup_fns=(); source tests/setup/20-docker.sh;
//!  target/release/bench_stacks 7; for f in "${cleanup_fns[@]}"; do $f; done'`

use phoenix_agent::stacks::StackConverger;
use phoenix_tests::stacks::{DockerEnv, FOUR_SERVICES, Pass, Teardown, pass, project, spec};
use std::process::Command;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const PHOENIX_STACK: &str = "benchphx";
const AGENT_STACK: &str = "benchagt";
const COMPOSE_PROJECT: &str = "benchdc";

/// One `phoenix-agent apply -f spec.json` process; returns its time and the resource's
/// status ("changed", "unchanged", …).
fn agent_apply(env: &DockerEnv, file: &std::path::Path) -> Res<(Duration, String)> {
    let t = Instant::now();
    let out = Command::new(phoenix_tests::bin("phoenix-agent"))
        .env("DOCKER_HOST", &env.host)
        .args(["apply", "--json", "-f"])
        .arg(file)
        .output()?;
    let took = t.elapsed();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "phoenix-agent apply: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let r = &report["results"][0];
    if !out.status.success() {
        return Err(format!("phoenix-agent apply failed: {r}").into());
    }
    Ok((
        took,
        r["status"].as_str().unwrap_or_default().to_lowercase(),
    ))
}

fn compose(env: &DockerEnv, file: &std::path::Path, args: &[&str]) -> Res<Duration> {
    let t = Instant::now();
    let out = Command::new("docker-compose")
        .env("DOCKER_HOST", &env.host)
        .env("IMAGE", &env.image)
        .args(["--no-ansi", "-p", COMPOSE_PROJECT, "-f"])
        .arg(file)
        .args(args)
        .output()?;
    let took = t.elapsed();
    if !out.status.success() {
        return Err(format!(
            "docker-compose {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(took)
}

fn compose_down(env: &DockerEnv, file: &std::path::Path) -> Res<()> {
    compose(env, file, &["down", "-v", "--remove-orphans"]).map(|_| ())
}

/// All four containers whose name starts with `prefix` run, and db is healthy.
fn check_up(env: &DockerEnv, prefix: &str) -> Res<()> {
    let c = env.containers(prefix);
    let running = c
        .values()
        .filter(|(_, state, _)| state == "running")
        .count();
    let healthy = c
        .iter()
        .any(|(name, (_, _, health))| name.contains("db") && health == "healthy");
    if running != 4 || !healthy {
        return Err(format!("{prefix}: not converged: {c:?}").into());
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn line(name: &str, v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    let m = median(&mut s);
    println!(
        "{name:<28} median {m:>9.1} ms   min {:>9.1}   max {:>9.1}   (n={})",
        s[0],
        s[s.len() - 1],
        s.len()
    );
    m
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Res<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(5);
    let Some(env) = DockerEnv::get() else {
        return Err("run tests/setup/20-docker.sh first (see the header of this file)".into());
    };
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("docker-compose.yml");
    std::fs::write(&file, FOUR_SERVICES)?;
    let _down = Teardown {
        env: env.clone(),
        stack: PHOENIX_STACK.into(),
        extra: vec![],
    };
    let conv = StackConverger::new(env.engine(), Vec::new(), phoenix_tests::stacks::owner_key());
    let stack = spec(PHOENIX_STACK, FOUR_SERVICES, &[("IMAGE", &env.image)]);
    let _down_agent = Teardown {
        env: env.clone(),
        stack: AGENT_STACK.into(),
        extra: vec![],
    };
    let guest = dir.path().join("guest.json");
    std::fs::write(
        &guest,
        serde_json::to_vec(&serde_json::json!({"resources": [{
            "kind": "stack",
            "name": AGENT_STACK,
            "project": project(FOUR_SERVICES, &[("IMAGE", &env.image)]),
        }]}))?,
    )?;
    compose_down(&env, &file)?;

    let (mut a_cold, mut a_noop) = (vec![], vec![]);
    let (mut p_cold, mut p_noop, mut c_cold, mut c_noop, mut c_start) =
        (vec![], vec![], vec![], vec![], vec![]);
    for rep in 0..reps {
        // The agent binary, then the in-process pass and Compose in alternating order.
        drop(Teardown {
            env: env.clone(),
            stack: AGENT_STACK.into(),
            extra: vec![],
        });
        let (t, status) = agent_apply(&env, &guest)?;
        if status != "changed" {
            return Err(format!("cold phoenix-agent apply: {status}").into());
        }
        a_cold.push(ms(t));
        check_up(&env, &format!("{AGENT_STACK}-"))?;
        let (t, status) = agent_apply(&env, &guest)?;
        if status != "unchanged" {
            return Err(format!("no-op phoenix-agent apply: {status}").into());
        }
        a_noop.push(ms(t));
        for phoenix_first in [rep % 2 == 0, rep % 2 == 1] {
            if phoenix_first {
                drop(Teardown {
                    env: env.clone(),
                    stack: PHOENIX_STACK.into(),
                    extra: vec![],
                });
                let t = Instant::now();
                let r = pass(&conv, &stack, false).await?;
                p_cold.push(ms(t.elapsed()));
                if !matches!(r, Pass::Applied { .. }) {
                    return Err(format!("cold pass did not apply: {r:?}").into());
                }
                check_up(&env, &format!("{PHOENIX_STACK}-"))?;
                let t = Instant::now();
                let r = pass(&conv, &stack, false).await?;
                p_noop.push(ms(t.elapsed()));
                if !matches!(r, Pass::InSync) {
                    return Err(format!("no-op pass was not in sync: {r:?}").into());
                }
            } else {
                compose_down(&env, &file)?;
                c_cold.push(ms(compose(&env, &file, &["up", "-d"])?));
                check_up(&env, &format!("{COMPOSE_PROJECT}_"))?;
                let ids = env.containers(&format!("{COMPOSE_PROJECT}_"));
                c_noop.push(ms(compose(&env, &file, &["up", "-d"])?));
                if env.containers(&format!("{COMPOSE_PROJECT}_")) != ids {
                    return Err("docker-compose recreated containers on a no-op".into());
                }
                let t = Instant::now();
                let out = Command::new("docker-compose").arg("version").output()?;
                if !out.status.success() {
                    return Err("docker-compose version failed".into());
                }
                c_start.push(ms(t.elapsed()));
            }
        }
        eprintln!("rep {} of {reps} done", rep + 1);
    }
    compose_down(&env, &file)?;

    let server = env.docker(&["version", "--format", "{{.Server.Version}}"]);
    let dc = String::from_utf8_lossy(
        &Command::new("docker-compose")
            .arg("version")
            .arg("--short")
            .output()?
            .stdout,
    )
    .trim()
    .to_string();
    println!(
        "4-service stack (health-gated db), dockerd {server}, docker-compose {dc}, {reps} reps"
    );
    let ac = line("phoenix-agent apply, cold", &a_cold);
    let an = line("phoenix-agent apply, no-op", &a_noop);
    let pc = line("in-process pass, cold", &p_cold);
    let pn = line("in-process pass, no-op", &p_noop);
    let cc = line("docker-compose cold up -d", &c_cold);
    let cn = line("docker-compose no-op up -d", &c_noop);
    line("docker-compose version", &c_start);
    println!(
        "no-op: compose / phoenix-agent apply = {:.1}x, compose / in-process pass = {:.1}x",
        cn / an,
        cn / pn
    );
    println!(
        "cold:  compose / phoenix-agent apply = {:.2}x, compose / in-process pass = {:.2}x",
        cc / ac,
        cc / pc
    );
    Ok(())
}
