//! A stack taken out of the desired state is brought down, as `docker compose down`
//! (without `-v`) would, by the real `phoenix-agent` on the private Docker engine of
//! tests/setup/20-docker.sh, driven by a real `phoenix` coordinator. Containers that only
//! claim a stack with a label (anyone with the engine's socket can set one) stay.

// In tests a panic is the failure report.
#![allow(clippy::unwrap_used)]

use phoenix_tests::spine::{Agent, Coordinator, guest_status, write_spec};
use phoenix_tests::stacks::{DockerEnv, Teardown, project};
use phoenix_tests::wait_for;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `b`'s app ignores SIGTERM (so only its grace period ends it) and depends on db, which
/// stops on SIGUSR1 only: the order, the signal and the grace period all show in the
/// engine's events.
const STACK_B: &str = r#"
services:
  db:
    image: "${IMAGE}"
    init: true
    command: ["sh", "-c", "trap 'exit 0' USR1; while :; do sleep 1; done"]
    stop_signal: SIGUSR1
    volumes: ["data:/data"]
  app:
    image: "${IMAGE}"
    command: ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]
    stop_grace_period: 2s
    depends_on: [db]
volumes:
  data: {}
"#;

const STACK_A: &str = r#"
services:
  app:
    image: "${IMAGE}"
    init: true
    command: ["sleep", "100000"]
"#;

fn stack(env: &DockerEnv, name: &str, compose: &str) -> Value {
    serde_json::json!({
        "kind": "stack",
        "name": name,
        "project": project(compose, &[("IMAGE", &env.image)]),
    })
}

fn spec(path: &Path, guest: u32, stacks: Vec<Value>) {
    write_spec(path, &[(guest, serde_json::json!({ "resources": stacks }))]);
}

/// An agent for `guest` on the private engine, with a drift interval so long that only
/// applies run passes.
fn agent(c: &Coordinator, dir: &Path, guest: u32, env: &DockerEnv) -> Agent {
    let mut a = Agent::new(dir, guest);
    a.env.push(("DOCKER_HOST".into(), env.host.clone()));
    let out = a.join(&c.token(guest), &[]);
    assert!(
        out.status.success(),
        "join: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.start_with_drift("3600");
    wait_for(Duration::from_secs(30), "agent connected", || {
        guest_status(&c.status(), guest).filter(|g| g["connected"] == true)
    });
    a
}

fn cli_ok(c: &Coordinator, args: &[&str]) -> String {
    let out = c.cli(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "phoenix {args:?}: {text}");
    text
}

/// Results for `resource` in the guest's reports (newest last).
fn results_for(c: &Coordinator, guest: u32, resource: &str) -> Vec<Value> {
    c.events(&["--guest", &guest.to_string(), "--topic", "Report"])
        .into_iter()
        .flat_map(|e| {
            e["payload"]["results"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|r| r["resource"] == resource)
        .collect()
}

fn exists(env: &DockerEnv, kind: &str, name: &str) -> bool {
    env.docker_raw(&[kind, "inspect", name]).status.success()
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn a_stack_taken_out_is_brought_down_like_compose_down_and_the_others_stay() {
    let Some(env) = DockerEnv::get() else { return };
    let (a_name, b_name) = ("phxpra", "phxprb");
    let _down = [a_name, b_name].map(|s| Teardown {
        env: env.clone(),
        stack: s.into(),
        extra: vec![],
    });
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &[]);
    let _agent = agent(&c, dir.path(), 321, &env);
    let file = dir.path().join("spec.json");
    spec(
        &file,
        321,
        vec![stack(&env, a_name, STACK_A), stack(&env, b_name, STACK_B)],
    );
    c.apply_ok(&file);
    let a_id = env.containers("phxpra-")["phxpra-app-1"].0.clone();
    assert_eq!(
        env.containers("phxprb-").keys().collect::<Vec<_>>(),
        ["phxprb-app-1", "phxprb-db-1"]
    );
    assert!(exists(&env, "network", "phxprb_default"));
    assert!(exists(&env, "volume", "phxprb_data"));

    // The plan lists the removal and changes nothing.
    spec(&file, 321, vec![stack(&env, a_name, STACK_A)]);
    let plan = cli_ok(
        &c,
        &["plan", "-f", file.to_str().unwrap(), "--timeout", "60s"],
    );
    for line in [
        "stack:phxprb",
        "- bring down stack phxprb (created by Phoenix, no longer declared)",
        "- stop and remove container phxprb-app-1 (service app)",
        "- stop and remove container phxprb-db-1 (service db)",
        "- remove network phxprb_default",
        "keep volume phxprb_data",
    ] {
        assert!(plan.contains(line), "{line:?} not in the plan:\n{plan}");
    }
    assert_eq!(
        env.containers("phxprb-").len(),
        2,
        "the plan changed nothing"
    );
    assert!(exists(&env, "network", "phxprb_default"));

    let before = now_secs();
    let applied = c.apply_ok(&file);
    let after = now_secs();
    assert!(applied.contains("stack:phxprb"), "{applied}");
    assert!(
        env.containers("phxprb-").is_empty(),
        "{:?}",
        env.containers("phxprb-")
    );
    assert!(!exists(&env, "network", "phxprb_default"));
    assert!(
        exists(&env, "volume", "phxprb_data"),
        "named volumes are data: kept"
    );
    // Stack a is untouched: the same container, still running.
    let a = env.containers("phxpra-");
    assert_eq!(a["phxpra-app-1"].0, a_id);
    assert_eq!(a["phxpra-app-1"].1, "running");
    assert!(exists(&env, "network", "phxpra_default"));

    // Stopped as compose stops: app (which depends on db) first, with SIGTERM and, as it
    // ignores it, SIGKILL once its 2 s grace period is over; then db with its own signal.
    let events = env.docker(&[
        "events",
        "--since",
        &format!("{before:.3}"),
        "--until",
        &format!("{after:.3}"),
        "--filter",
        "type=container",
        "--filter",
        "event=kill",
        "--format",
        "{{.Action}} {{.Actor.Attributes.name}} {{.Actor.Attributes.signal}} {{.TimeNano}}",
    ]);
    // (Other tests' containers on the engine may die in the same window.)
    let rows: Vec<Vec<&str>> = events
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|r| r.len() == 4 && r[1].starts_with("phxprb-"))
        .collect();
    let kills: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r[0] == "kill")
        .map(|r| (r[1], r[2]))
        .collect();
    assert_eq!(
        kills,
        [
            ("phxprb-app-1", "15"),
            ("phxprb-app-1", "9"),
            ("phxprb-db-1", "10")
        ],
        "{events}"
    );
    let at = |name: &str, sig: &str| -> u128 {
        rows.iter()
            .find(|r| r[0] == "kill" && r[1] == name && r[2] == sig)
            .unwrap()[3]
            .parse()
            .unwrap()
    };
    let grace = at("phxprb-app-1", "9") - at("phxprb-app-1", "15");
    assert!(
        grace >= 1_900_000_000,
        "SIGKILL {grace} ns after SIGTERM: the grace period was not waited out"
    );

    // The report says what was done, per stack.
    let results = results_for(&c, 321, "stack:phxprb");
    let last = results.last().expect("a result for the removed stack");
    assert_eq!(last["status"], "changed", "{last}");
    let msg = last["message"].as_str().unwrap();
    for part in [
        "stopped and removed container phxprb-app-1",
        "stopped and removed container phxprb-db-1",
        "removed network phxprb_default",
        "kept volume phxprb_data",
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg}");
    }
    // The next pass finds nothing left to remove.
    let again = c.cli(&["converge", "--guest", "321", "--timeout", "60s"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(results_for(&c, 321, "stack:phxprb").len(), results.len());
}

/// A guest user with the engine's socket labels containers as a stack Phoenix created
/// (with the stack's own names, and with the owner proof copied from a real container), or
/// as a stack that never existed. Taking the real stack out removes only what the agent
/// can prove it created.
#[test]
fn containers_with_forged_stack_labels_are_never_removed() {
    let Some(env) = DockerEnv::get() else { return };
    let (real, ghost) = ("phxprf", "phxprghost");
    let forged = ["phxprf-app-2", "phxprf-copy-1", "phxprghost-app-1"];
    let _down = [real, ghost].map(|s| Teardown {
        env: env.clone(),
        stack: s.into(),
        extra: forged.iter().map(|s| s.to_string()).collect(),
    });
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &[]);
    let _agent = agent(&c, dir.path(), 322, &env);
    let file = dir.path().join("spec.json");
    spec(&file, 322, vec![stack(&env, real, STACK_A)]);
    c.apply_ok(&file);
    let proof = env.docker(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"phoenix.owner\"}}",
        "phxprf-app-1",
    ]);
    assert_eq!(proof.len(), 64, "{proof}");
    let run = |name: &str, labels: &[String]| {
        let mut args = vec!["run", "-d", "--init", "--name", name];
        for l in labels {
            args.extend(["--label", l]);
        }
        args.extend([env.image.as_str(), "sleep", "100000"]);
        env.docker(&args)
    };
    let stack_label = |s: &str| format!("phoenix.stack={s}");
    let service = "phoenix.service=app".to_string();
    let ids = [
        // The stack's label and the next replica's name.
        run(forged[0], &[stack_label(real), service.clone()]),
        // The real container's proof, copied onto another name.
        run(
            forged[1],
            &[
                stack_label(real),
                service.clone(),
                format!("phoenix.owner={proof}"),
            ],
        ),
        // A stack that was never declared.
        run(forged[2], &[stack_label(ghost), service]),
    ];

    spec(&file, 322, vec![]);
    let plan = cli_ok(
        &c,
        &["plan", "-f", file.to_str().unwrap(), "--timeout", "60s"],
    );
    assert!(
        plan.contains("- stop and remove container phxprf-app-1"),
        "{plan}"
    );
    assert!(
        plan.contains(
            "leave container phxprf-app-2 in place: it claims the stack without this agent's proof"
        ),
        "{plan}"
    );
    assert!(
        !plan.contains("- stop and remove container phxprf-app-2"),
        "{plan}"
    );
    assert!(!plan.contains("phxprf-copy-1 (service"), "{plan}");
    assert!(!plan.contains("stack:phxprghost"), "{plan}");

    c.apply_ok(&file);
    assert!(!exists(&env, "container", "phxprf-app-1"));
    for (name, id) in forged.iter().zip(&ids) {
        let c = env.containers(name);
        let (have, state, _) = &c[*name];
        assert!(id.starts_with(have.as_str()), "{name}: {have} is not {id}");
        assert_eq!(state, "running", "{name} was touched");
    }
    let msg = results_for(&c, 322, "stack:phxprf")
        .last()
        .map(|r| r["message"].as_str().unwrap_or_default().to_string())
        .unwrap();
    assert!(
        msg.contains("left container phxprf-copy-1 in place (no proof)"),
        "{msg}"
    );
    assert!(results_for(&c, 322, "stack:phxprghost").is_empty());
}
