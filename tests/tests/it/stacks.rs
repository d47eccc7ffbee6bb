//! Docker stacks against a real Docker engine (a private dockerd 20.10 from
//! tests/setup/20-docker.sh), through the agent's `StackConverger`.

// In tests a panic is the failure report.
#![allow(clippy::unwrap_used)]

use phoenix_agent::stacks::StackConverger;
use phoenix_agent::stacks::engine::ContainerEngine;
use phoenix_proto::model::StackSpec;
use phoenix_tests::stacks::{
    CountingEngine, DockerEnv, FOUR_SERVICES, Pass, StartFault, Teardown, owner_key, pass, project,
    sample_spec, spec,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The daemon-restart test would break any test running beside it on the same engine.
static ENGINE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn converger(env: &DockerEnv) -> (Arc<CountingEngine>, StackConverger) {
    let counting = CountingEngine::new(env.engine());
    let conv = StackConverger::new(
        counting.clone() as Arc<dyn ContainerEngine>,
        Vec::new(),
        owner_key(),
    );
    (counting, conv)
}

fn ids(m: &BTreeMap<String, (String, String, String)>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect()
}

fn assert_running(env: &DockerEnv, stack: &str, names: &[&str]) {
    let c = env.containers(&format!("{stack}-"));
    let got: Vec<&str> = c.keys().map(String::as_str).collect();
    assert_eq!(got, names, "containers of {stack}");
    for (name, (_, state, _)) in &c {
        assert_eq!(state, "running", "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_service_stack_converges_recreates_only_changes_and_removes_orphans() {
    let Some(env) = DockerEnv::get() else { return };
    let _lock = ENGINE.lock().await;
    let stack = "phx4";
    let _down = Teardown {
        env: env.clone(),
        stack: stack.into(),
        extra: vec![],
    };
    let (count, conv) = converger(&env);
    let v1 = spec(stack, FOUR_SERVICES, &[("IMAGE", &env.image)]);

    // Cold converge.
    let Pass::Applied { diff, report } = pass(&conv, &v1, false).await.unwrap() else {
        panic!("first pass must apply")
    };
    assert!(diff.contains("create container phx4-db-1 (db)"), "{diff}");
    assert!(report.contains("phx4-db-1: running (healthy)"), "{report}");
    let all = ["phx4-api-1", "phx4-db-1", "phx4-web-1", "phx4-worker-1"];
    assert_running(&env, stack, &all);
    let c = env.containers("phx4-");
    assert_eq!(c["phx4-db-1"].2, "healthy");
    // The health gate held: api started only after db's first passing healthcheck.
    let db_healthy = env.docker(&[
        "inspect",
        "-f",
        "{{(index .State.Health.Log 0).End}}",
        "phx4-db-1",
    ]);
    let api_started = env.docker(&["inspect", "-f", "{{.State.StartedAt}}", "phx4-api-1"]);
    assert!(
        api_started.as_str() > db_healthy.as_str(),
        "api started {api_started} before db was healthy {db_healthy}"
    );
    // Labels on everything created; other services reach api by its service name.
    assert_eq!(
        env.docker(&[
            "network",
            "inspect",
            "-f",
            "{{index .Labels \"phoenix.stack\"}}",
            "phx4_back"
        ]),
        stack
    );
    assert_eq!(
        env.docker(&[
            "volume",
            "inspect",
            "-f",
            "{{index .Labels \"phoenix.stack\"}}",
            "phx4_data"
        ]),
        stack
    );
    let labels = env.docker(&["inspect", "-f", "{{json .Config.Labels}}", "phx4-web-1"]);
    for l in [
        "phoenix.config-hash",
        "phoenix.image-digest",
        "\"phoenix.service\":\"web\"",
        "example.role",
    ] {
        assert!(labels.contains(l), "{l} missing in {labels}");
    }
    // (Resolution only: this machine's FORWARD policy drops traffic between containers
    // of a daemon that does not manage iptables.)
    let api_ip = env.docker(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"phx4_back\").IPAddress}}",
        "phx4-api-1",
    ]);
    let lookup = env.docker(&["exec", "phx4-worker-1", "nslookup", "api"]);
    assert!(
        lookup.contains(&api_ip),
        "api resolved to something else than {api_ip}: {lookup}"
    );
    assert_eq!(
        env.docker(&[
            "exec",
            "phx4-api-1",
            "wget",
            "-qO-",
            "http://127.0.0.1:8080/"
        ]),
        "ok"
    );
    count.take();

    // Converged: the next pass is read-only.
    assert!(matches!(
        pass(&conv, &v1, false).await.unwrap(),
        Pass::InSync
    ));
    assert_eq!(
        count.take(),
        Vec::<String>::new(),
        "no-op pass mutated the engine"
    );

    // Change one service: only it is recreated.
    let before = ids(&env.containers("phx4-"));
    let v2 = spec(
        stack,
        FOUR_SERVICES,
        &[("IMAGE", &env.image), ("MODE", "debug")],
    );
    let Pass::Applied { diff, .. } = pass(&conv, &v2, false).await.unwrap() else {
        panic!("a changed service must apply")
    };
    assert_eq!(
        diff,
        "recreate container phx4-api-1 (api): configuration changed"
    );
    let after = ids(&env.containers("phx4-"));
    assert_ne!(before["phx4-api-1"], after["phx4-api-1"]);
    for name in ["phx4-db-1", "phx4-web-1", "phx4-worker-1"] {
        assert_eq!(before[name], after[name], "{name} was recreated");
    }
    assert!(
        env.docker(&["exec", "phx4-api-1", "env"])
            .contains("MODE=debug")
    );
    assert_running(&env, stack, &all);
    assert!(matches!(
        pass(&conv, &v2, false).await.unwrap(),
        Pass::InSync
    ));
    count.take();

    // Remove one service from the file: its container goes as an orphan.
    let without_worker = FOUR_SERVICES.split("  worker:").next().unwrap().to_string()
        + "networks:\n  back: {}\n  front: {}\nvolumes:\n  data: {}\n";
    let v3 = spec(
        stack,
        &without_worker,
        &[("IMAGE", &env.image), ("MODE", "debug")],
    );
    let Pass::Applied { diff, .. } = pass(&conv, &v3, false).await.unwrap() else {
        panic!("removing a service must apply")
    };
    assert_eq!(
        diff,
        "remove container phx4-worker-1: orphan (not in the stack)"
    );
    assert_running(&env, stack, &["phx4-api-1", "phx4-db-1", "phx4-web-1"]);
    assert_eq!(
        ids(&env.containers("phx4-"))["phx4-api-1"],
        after["phx4-api-1"]
    );
    assert!(matches!(
        pass(&conv, &v3, false).await.unwrap(),
        Pass::InSync
    ));

    // Status reports each container's state and health.
    let status = conv.status(&v3).await.unwrap();
    let db = status.iter().find(|s| s.service == "db").unwrap();
    assert_eq!(
        (db.state.as_str(), db.health.as_deref()),
        ("running", Some("healthy"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_the_plan_and_mutates_nothing() {
    let Some(env) = DockerEnv::get() else { return };
    let _lock = ENGINE.lock().await;
    let stack = "phxdry";
    let _down = Teardown {
        env: env.clone(),
        stack: stack.into(),
        extra: vec![],
    };
    let (count, conv) = converger(&env);
    let v1 = spec(stack, FOUR_SERVICES, &[("IMAGE", &env.image)]);

    let Pass::Planned(diff) = pass(&conv, &v1, true).await.unwrap() else {
        panic!("dry-run must only plan")
    };
    assert_eq!(
        diff.lines().collect::<Vec<_>>(),
        [
            "create network phxdry_back",
            "create network phxdry_front",
            "create volume phxdry_data",
            "create container phxdry-db-1 (db)",
            "create container phxdry-api-1 (api)",
            "create container phxdry-web-1 (web)",
            "create container phxdry-worker-1 (worker)",
        ]
    );
    assert_eq!(count.take(), Vec::<String>::new());
    assert!(env.containers("phxdry-").is_empty());
    let filter = format!("label=phoenix.stack={stack}");
    assert_eq!(
        env.docker(&["network", "ls", "-q", "--filter", &filter]),
        ""
    );
    assert_eq!(env.docker(&["volume", "ls", "-q", "--filter", &filter]), "");

    // On a converged stack, a change is planned as a recreate and nothing moves.
    assert!(matches!(
        pass(&conv, &v1, false).await.unwrap(),
        Pass::Applied { .. }
    ));
    count.take();
    let before = env.containers("phxdry-");
    let v2 = spec(
        stack,
        FOUR_SERVICES,
        &[("IMAGE", &env.image), ("MODE", "x")],
    );
    let Pass::Planned(diff) = pass(&conv, &v2, true).await.unwrap() else {
        panic!("dry-run must only plan")
    };
    assert_eq!(
        diff,
        "recreate container phxdry-api-1 (api): configuration changed"
    );
    assert_eq!(count.take(), Vec::<String>::new());
    assert_eq!(ids(&env.containers("phxdry-")), ids(&before));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_outside_the_stack_are_never_touched() {
    let Some(env) = DockerEnv::get() else { return };
    let _lock = ENGINE.lock().await;
    let stack = "phxown";
    let _down = Teardown {
        env: env.clone(),
        stack: stack.into(),
        extra: vec![
            "phxown-foreign".into(),
            "phxown-web-1".into(),
            "phxother-x".into(),
        ],
    };
    let (_count, conv) = converger(&env);
    let compose = "services:\n  web:\n    image: \"${IMAGE}\"\n    init: true\n    command: [sleep, \"100000\"]\n";
    let v = spec(stack, compose, &[("IMAGE", &env.image)]);

    // Unlabelled, and labelled for another stack: both outlive our converges.
    let foreign = env.docker(&[
        "run",
        "-d",
        "--init",
        "--name",
        "phxown-foreign",
        &env.image,
        "sleep",
        "100000",
    ]);
    let other = env.docker(&[
        "run",
        "-d",
        "--init",
        "--name",
        "phxother-x",
        "--label",
        "phoenix.stack=phxother",
        "--label",
        "phoenix.service=x",
        &env.image,
        "sleep",
        "100000",
    ]);
    assert!(matches!(
        pass(&conv, &v, false).await.unwrap(),
        Pass::Applied { .. }
    ));
    assert!(matches!(
        pass(&conv, &v, false).await.unwrap(),
        Pass::InSync
    ));
    let c = env.containers("phx");
    assert!(c["phxown-foreign"].0.starts_with(&foreign[..12]));
    assert!(c["phxother-x"].0.starts_with(&other[..12]));
    assert_eq!(c["phxown-foreign"].1, "running");
    assert_eq!(c["phxother-x"].1, "running");

    // A foreign container squatting on the stack's container name stops the pass.
    env.docker(&["rm", "-f", "phxown-web-1"]);
    let squatter = env.docker(&[
        "run",
        "-d",
        "--init",
        "--name",
        "phxown-web-1",
        &env.image,
        "sleep",
        "100000",
    ]);
    let e = pass(&conv, &v, false).await.unwrap_err();
    assert!(e.contains("not labelled as part of this stack"), "{e}");
    let c = env.containers("phxown-web-1");
    assert!(c["phxown-web-1"].0.starts_with(&squatter[..12]));
    assert_eq!(c["phxown-web-1"].1, "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_recreate_puts_the_previous_container_back() {
    let Some(env) = DockerEnv::get() else { return };
    let _lock = ENGINE.lock().await;
    let stack = "phxrb";
    let _down = Teardown {
        env: env.clone(),
        stack: stack.into(),
        extra: vec![],
    };
    let (_count, conv) = converger(&env);
    let good = "services:\n  app:\n    image: \"${IMAGE}\"\n    init: true\n    command: [\"${CMD}\", \"100000\"]\n    ports: [\"127.0.0.1::80\"]\n";
    let v1 = spec(stack, good, &[("IMAGE", &env.image), ("CMD", "sleep")]);
    assert!(matches!(
        pass(&conv, &v1, false).await.unwrap(),
        Pass::Applied { .. }
    ));
    let before = env.containers("phxrb-");
    let old_id = &before["phxrb-app-1"].0;

    // The new command does not exist: create succeeds, start fails.
    let bad = spec(
        stack,
        good,
        &[("IMAGE", &env.image), ("CMD", "/no/such/binary")],
    );
    let e = pass(&conv, &bad, false).await.unwrap_err();
    assert!(e.contains("recreate app failed"), "{e}");
    assert!(e.contains("the previous container was put back"), "{e}");
    let after = env.containers("phxrb-");
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(&after["phxrb-app-1"].0, old_id);
    assert_eq!(after["phxrb-app-1"].1, "running");
    // The old container is the converged state of the old spec again.
    assert!(matches!(
        pass(&conv, &v1, false).await.unwrap(),
        Pass::InSync
    ));

    // With rollback_on_failure off, the failed container stays for inspection.
    let mut no_rb = bad.clone();
    no_rb.rollback_on_failure = false;
    let e = pass(&conv, &no_rb, false).await.unwrap_err();
    assert!(e.contains("was not restored"), "{e}");
}

/// The one-service stack of the rollback tests; `${CMD}` decides whether it can start.
const ROLLBACK_STACK: &str = "services:\n  app:\n    image: \"${IMAGE}\"\n    init: true\n    command: [\"${CMD}\", \"100000\"]\n    ports: [\"127.0.0.1::80\"]\n";

fn names(m: &BTreeMap<String, (String, String, String)>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

/// `ROLLBACK_STACK` with `cmd`.
fn rollback_spec(env: &DockerEnv, stack: &str, cmd: &str) -> StackSpec {
    spec(
        stack,
        ROLLBACK_STACK,
        &[("IMAGE", &env.image), ("CMD", cmd)],
    )
}

/// Asserts `<stack>-app-1` is the stack's only container, running, and `v`'s converged
/// state; returns its ID.
async fn only_app_running(
    env: &DockerEnv,
    conv: &StackConverger,
    stack: &str,
    v: &StackSpec,
) -> String {
    let name = format!("{stack}-app-1");
    let c = env.containers(&format!("{stack}-"));
    assert_eq!(names(&c), [name.as_str()]);
    assert_eq!(c[&name].1, "running");
    assert!(matches!(pass(conv, v, false).await.unwrap(), Pass::InSync));
    c[&name].0.clone()
}

/// The agent killed while a recreate starts the replacement (old container stopped and
/// renamed aside, new one created, never started): the next pass puts the old container
/// back and keeps it as the rollback copy, instead of deleting it as an orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_recreate_keeps_the_set_aside_container_for_rollback() {
    let Some(env) = DockerEnv::get() else { return };
    let _lock = ENGINE.lock().await;
    let stack = "phxaside";
    let _down = Teardown {
        env: env.clone(),
        stack: stack.into(),
        extra: vec![],
    };
    let (count, conv) = converger(&env);
    let conv = Arc::new(conv);
    let good = rollback_spec(&env, stack, "sleep");
    pass(&conv, &good, false).await.unwrap();
    let old_id = only_app_running(&env, &conv, stack, &good).await;

    let bad = rollback_spec(&env, stack, "/no/such/binary");
    count.fault_next_start(StartFault::Hang);
    let interrupted = tokio::spawn({
        let conv = conv.clone();
        let bad = bad.clone();
        async move { pass(&conv, &bad, false).await }
    });
    let env2 = env.clone();
    let mid = tokio::task::spawn_blocking(move || {
        phoenix_tests::wait_for(
            Duration::from_secs(30),
            "the replacement created beside the set-aside container",
            || {
                let c = env2.containers("phxaside-");
                (c.len() == 2).then_some(c)
            },
        )
    })
    .await
    .unwrap();
    // What a SIGKILL of the agent does to the pass.
    interrupted.abort();
    assert!(interrupted.await.is_err(), "the pass was cut off");
    assert_eq!(
        names(&mid),
        ["phxaside-app-1", "phxaside-app-1-phoenix-old"]
    );
    assert_eq!(mid["phxaside-app-1-phoenix-old"].0, old_id);
    assert_eq!(mid["phxaside-app-1"].1, "created");

    // The next pass tries the broken spec again, and rolls back to the old container.
    let e = pass(&conv, &bad, false).await.unwrap_err();
    assert!(e.contains("the previous container was put back"), "{e}");
    assert_eq!(
        only_app_running(&env, &conv, stack, &good).await,
        old_id,
        "the original container"
    );
}

/// dockerd killed mid-start can leave containerd holding the container's task: every
/// start then fails with "task … already exists". The agent recreates such a container
/// instead of failing every pass until someone runs `docker rm -f`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_with_a_stale_containerd_task_is_recreated() {
    let Some(env) = DockerEnv::get() else { return };
    let _lock = ENGINE.lock().await;
    let stack = "phxstale";
    let _down = Teardown {
        env: env.clone(),
        stack: stack.into(),
        extra: vec![],
    };
    let (count, conv) = converger(&env);
    let v = rollback_spec(&env, stack, "sleep");
    pass(&conv, &v, false).await.unwrap();
    let old_id = only_app_running(&env, &conv, stack, &v).await;
    env.docker(&["stop", "-t", "1", "phxstale-app-1"]);
    // The daemon's answer in that state (moby: "failed to create task … already exists").
    count.fault_next_start(StartFault::Fail(format!(
        "failed to create task for container: task {old_id}: already exists: unknown"
    )));
    let Pass::Applied { report, .. } = pass(&conv, &v, false).await.unwrap() else {
        panic!("the stopped container was not started")
    };
    assert!(
        report.contains("recreated (its containerd task was stale)"),
        "{report}"
    );
    assert_ne!(
        only_app_running(&env, &conv, stack, &v).await,
        old_id,
        "a new container"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_restart_mid_converge_then_next_pass_converges() {
    let Some(env) = DockerEnv::get() else { return };
    let _lock = ENGINE.lock().await;
    let stack = "phxrst";
    let _down = Teardown {
        env: env.clone(),
        stack: stack.into(),
        extra: vec![],
    };
    let (count, conv) = converger(&env);
    let conv = Arc::new(conv);
    let v = spec(stack, FOUR_SERVICES, &[("IMAGE", &env.image)]);

    let first = tokio::spawn({
        let conv = conv.clone();
        let v = v.clone();
        async move { pass(&conv, &v, false).await }
    });
    // db is created first and api waits for its health: restart while that wait runs.
    let env2 = env.clone();
    let seen = tokio::task::spawn_blocking(move || {
        phoenix_tests::wait_for(Duration::from_secs(30), "phxrst-db-1 to exist", || {
            let c = env2.containers("phxrst-");
            c.contains_key("phxrst-db-1").then_some(c)
        })
    })
    .await
    .unwrap();
    assert!(
        !seen.contains_key("phxrst-worker-1"),
        "restart came too late: {seen:?}"
    );
    let env3 = env.clone();
    tokio::task::spawn_blocking(move || env3.daemon("restart"))
        .await
        .unwrap();
    let interrupted = first.await.unwrap();
    assert!(
        interrupted.is_err(),
        "the interrupted pass cannot have succeeded: {interrupted:?}"
    );
    count.take();

    // The next pass converges whatever the restart left behind.
    let Pass::Applied { report, .. } = pass(&conv, &v, false).await.unwrap() else {
        panic!("the stack was not converged after the restart")
    };
    assert!(
        report.contains("phxrst-db-1: running (healthy)"),
        "{report}"
    );
    assert_running(
        &env,
        stack,
        &[
            "phxrst-api-1",
            "phxrst-db-1",
            "phxrst-web-1",
            "phxrst-worker-1",
        ],
    );
    count.take();
    assert!(matches!(
        pass(&conv, &v, false).await.unwrap(),
        Pass::InSync
    ));
    assert_eq!(count.take(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_is_pulled_from_the_registry() {
    let Some(env) = DockerEnv::get() else { return };
    let _lock = ENGINE.lock().await;
    let stack = "phxpull";
    let _down = Teardown {
        env: env.clone(),
        stack: stack.into(),
        extra: vec![],
    };
    let (count, conv) = converger(&env);
    // Only in the registry (the setup pushed it and removed it locally); make sure.
    let _ = env.docker_raw(&["rmi", &env.registry_image]);
    let compose = "services:\n  app:\n    image: \"${IMAGE}\"\n    init: true\n    command: [sleep, \"100000\"]\n";
    let v = spec(stack, compose, &[("IMAGE", &env.registry_image)]);
    let Pass::Applied { diff, report } = pass(&conv, &v, false).await.unwrap() else {
        panic!("must apply")
    };
    assert!(
        diff.starts_with(&format!("pull image {}", env.registry_image)),
        "{diff}"
    );
    assert!(report.contains("phxpull-app-1: running"), "{report}");
    let calls = count.take();
    assert_eq!(
        calls.iter().filter(|c| c.starts_with("pull_image")).count(),
        1,
        "{calls:?}"
    );
    let image_id = env.docker(&["image", "inspect", "-f", "{{.Id}}", &env.registry_image]);
    assert_eq!(
        env.docker(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"phoenix.image-digest\"}}",
            "phxpull-app-1"
        ]),
        image_id
    );
    // Present now: not pulled again.
    assert!(matches!(
        pass(&conv, &v, false).await.unwrap(),
        Pass::InSync
    ));
    assert_eq!(count.take(), Vec::<String>::new());
    let _ = env.docker_raw(&["rm", "-f", "phxpull-app-1"]);
    let _ = env.docker_raw(&["rmi", &env.registry_image]);
}

/// The Phoenix repo's own stacks parse and plan. Their images are not pulled: planning
/// runs against an engine without them and shows the pulls it would do.
#[test]
fn real_sample_stacks_parse_and_plan() {
    // tests/setup/05-samples.sh exports PHOENIX_SAMPLES (the samples are read in place).
    let samples =
        std::env::var("PHOENIX_SAMPLES").unwrap_or_else(|_| "../../shared/phoenix/main".into());
    let dir = Path::new(&samples).join("stacks");
    let dir = dir.as_path();
    if !phoenix_tests::require("Phoenix sample stacks", dir.is_dir()) {
        return;
    }
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.join("docker-compose.yml").exists() {
            continue;
        }
        seen += 1;
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let mut parsed = sample_spec(&path, &[]);
        if name == "thinkheads_ai_app" {
            // Uses ${API_PORT} but its manifest defines no variables: Compose would
            // silently publish ":"; Phoenix refuses and names the variable.
            let e = parsed.unwrap_err().to_string();
            assert!(e.contains("API_PORT"), "{e}");
            parsed = sample_spec(&path, &[("API_PORT", "8000")]);
        }
        let spec = parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
        let project = &spec.project;
        let labels: BTreeMap<String, BTreeMap<String, String>> = spec
            .labels
            .iter()
            .map(|(svc, l)| {
                let m = l
                    .iter()
                    .filter_map(|x| x.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                (svc.clone(), m)
            })
            .collect();
        let desired = phoenix_agent::stacks::plan::render(
            &name,
            project,
            &labels,
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        // An engine where the external volumes exist and nothing else does.
        let mut observed = phoenix_agent::stacks::plan::Observed::default();
        for v in desired.volumes.iter().filter(|v| v.external) {
            observed.volumes.insert(v.name.clone());
        }
        let plan = phoenix_agent::stacks::plan::plan(&desired, &observed)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let lines = plan.describe(&desired);
        for c in &desired.containers {
            assert!(
                lines.contains(&format!("pull image {}", c.spec.image)),
                "{lines:?}"
            );
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with(&format!("create container {}", c.name))),
                "{lines:?}"
            );
        }
        if name == "portainer_service" {
            let p = &desired.containers[0];
            assert_eq!(p.name, "portainer_server");
            assert_eq!(
                p.spec.command.as_deref().unwrap(),
                ["-H", "unix:///var/run/docker.sock"]
            );
            assert_eq!(
                p.spec.labels["traefik.http.services.portainer.loadbalancer.server.port"],
                "9000"
            );
            assert_eq!(p.spec.init, Some(true));
            // The socket bind is root on the guest; the plan says so.
            assert!(
                lines.contains(&"create container portainer_server (portainer) (GRANTS HOST ACCESS: bind /var/run/docker.sock)".to_string()),
                "{lines:?}"
            );
        } else {
            assert!(
                desired.containers.iter().all(|c| c.grants.is_empty()),
                "{name}"
            );
        }
        // Without the external volume, planning refuses before changing anything.
        let e = phoenix_agent::stacks::plan::plan(&desired, &Default::default()).unwrap_err();
        assert!(e.to_string().contains("external"), "{e}");
    }
    assert_eq!(seen, 3, "expected the three stacks of the main branch");
}

/// A stack that binds `/` and the Docker socket, adds every capability and a host device
/// is refused with each grant named, and nothing reaches the engine; declared, the same
/// grants are created and every plan line says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_root_grants_are_refused_unless_declared() {
    let Some(env) = DockerEnv::get() else { return };
    let _lock = ENGINE.lock().await;
    let stack = "phxgrant";
    let _down = Teardown {
        env: env.clone(),
        stack: stack.into(),
        extra: vec![],
    };
    let (count, conv) = converger(&env);
    let compose = |cap: &str, device: &str| {
        format!(
            "services:\n  evil:\n    image: \"${{IMAGE}}\"\n    init: true\n    command: [sleep, \"100000\"]\n    volumes:\n      - /:/host:ro\n      - /var/run/docker.sock:/var/run/docker.sock:ro\n    cap_add: [{cap}]\n    devices: [\"{device}\"]\n"
        )
    };
    let undeclared = spec(stack, &compose("ALL", "/dev/mem"), &[("IMAGE", &env.image)]);
    for dry_run in [true, false] {
        let e = pass(&conv, &undeclared, dry_run).await.unwrap_err();
        for part in [
            "stack phxgrant: host access not declared in host_access",
            "bind / (services.evil.volumes)",
            "bind /var/run/docker.sock (services.evil.volumes)",
            "cap_add ALL (services.evil.cap_add)",
            "device /dev/mem (services.evil.devices)",
        ] {
            assert!(e.contains(part), "{part:?} missing in: {e}");
        }
    }
    assert_eq!(count.take(), Vec::<String>::new());
    assert!(env.containers("phxgrant-").is_empty());
    // Declaring some is not declaring all.
    let mut partly = undeclared.clone();
    partly.host_access = vec!["bind /var/run/docker.sock".into()];
    let e = pass(&conv, &partly, false).await.unwrap_err();
    assert!(e.contains("bind / (services.evil.volumes)"), "{e}");
    assert!(!e.contains("bind /var/run/docker.sock"), "{e}");
    assert_eq!(count.take(), Vec::<String>::new());
    assert!(env.containers("phxgrant-").is_empty());

    // Declared. (The test machine's dockerd runs without /dev/mem and without every
    // capability, so the declared grants are SYS_ADMIN and /dev/zero.)
    let mut declared = spec(
        stack,
        &compose("SYS_ADMIN", "/dev/zero"),
        &[("IMAGE", &env.image)],
    );
    declared.host_access = vec![
        "bind /".into(),
        "bind /var/run/docker.sock".into(),
        "cap_add SYS_ADMIN".into(),
        "device /dev/zero".into(),
    ];
    let line = "create container phxgrant-evil-1 (evil) (GRANTS HOST ACCESS: cap_add SYS_ADMIN, device /dev/zero, bind /, bind /var/run/docker.sock)";
    let Pass::Planned(plan) = pass(&conv, &declared, true).await.unwrap() else {
        panic!("dry run must plan")
    };
    assert!(plan.lines().any(|l| l == line), "{plan}");
    let Pass::Applied { diff, .. } = pass(&conv, &declared, false).await.unwrap() else {
        panic!("declared grants must apply")
    };
    assert!(diff.lines().any(|l| l == line), "{diff}");
    assert_running(&env, stack, &["phxgrant-evil-1"]);
    let host = env.docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.Binds}} {{.HostConfig.CapAdd}} {{range .HostConfig.Devices}}{{.PathOnHost}}{{end}}",
        "phxgrant-evil-1",
    ]);
    assert_eq!(
        host,
        "[/:/host:ro /var/run/docker.sock:/var/run/docker.sock:ro] [SYS_ADMIN] /dev/zero"
    );
}

/// env_file may not read a file of the guest outside the allowed roots, neither named
/// directly nor through a link inside a root; the victim's content reaches no container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_file_outside_the_allowed_roots_is_refused() {
    let Some(env) = DockerEnv::get() else { return };
    let _lock = ENGINE.lock().await;
    let stack = "phxenv";
    let _down = Teardown {
        env: env.clone(),
        stack: stack.into(),
        extra: vec![],
    };
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    // A root-only victim outside the root, as /etc/shadow is.
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "VICTIM=phx-victim-secret\n").unwrap();
    std::fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&victim, root.path().join("app.env")).unwrap();
    std::fs::write(root.path().join("good.env"), "GOOD=from-root\n").unwrap();
    let counting = CountingEngine::new(env.engine());
    let conv = StackConverger::new(
        counting.clone() as Arc<dyn ContainerEngine>,
        vec![root.path().to_path_buf()],
        owner_key(),
    );
    let compose = |file: &str| {
        format!(
            "services:\n  app:\n    image: \"${{IMAGE}}\"\n    init: true\n    command: [sleep, \"100000\"]\n    env_file: {file}\n"
        )
    };
    let link = root.path().join("app.env").display().to_string();
    for (file, why) in [
        ("/etc/shadow".to_string(), "is outside the allowed roots"),
        (victim.display().to_string(), "is outside the allowed roots"),
        (link.clone(), "leads outside the allowed root"),
    ] {
        let s = spec(stack, &compose(&file), &[("IMAGE", &env.image)]);
        let e = pass(&conv, &s, false).await.unwrap_err();
        assert!(
            e.contains(&format!("stack phxenv: env file {file}: {why}")),
            "{e}"
        );
        assert!(!e.contains("phx-victim-secret"), "{e}");
    }
    assert_eq!(counting.take(), Vec::<String>::new());
    assert!(env.containers("phxenv-").is_empty());

    // An env file beneath the root is read.
    let good = root.path().join("good.env").display().to_string();
    let s = spec(stack, &compose(&good), &[("IMAGE", &env.image)]);
    assert!(matches!(
        pass(&conv, &s, false).await.unwrap(),
        Pass::Applied { .. }
    ));
    let envs = env.docker(&["inspect", "-f", "{{.Config.Env}}", "phxenv-app-1"]);
    assert!(envs.contains("GOOD=from-root"), "{envs}");
    // No container on the engine carries the victim's content.
    let all = env.docker(&["ps", "-aq"]);
    for id in all.split_whitespace() {
        let envs = env.docker(&["inspect", "-f", "{{.Config.Env}}", id]);
        assert!(!envs.contains("phx-victim-secret"), "{id}: {envs}");
    }
}

/// A container anyone starts with the stack's labels (even a copied owner label) is
/// neither removed as an orphan nor adopted as a service: the pass fails for the stack,
/// names the conflict and touches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_containers_are_conflicts_not_orphans_or_services() {
    let Some(env) = DockerEnv::get() else { return };
    let _lock = ENGINE.lock().await;
    let stack = "phxfor";
    let _down = Teardown {
        env: env.clone(),
        stack: stack.into(),
        extra: vec!["phxfor-stray".into()],
    };
    let (count, conv) = converger(&env);
    let compose = "services:\n  web:\n    image: \"${IMAGE}\"\n    init: true\n    command: [sleep, \"100000\"]\n  db:\n    image: \"${IMAGE}\"\n    init: true\n    command: [sleep, \"100000\"]\n";
    let v = spec(stack, compose, &[("IMAGE", &env.image)]);
    assert!(matches!(
        pass(&conv, &v, false).await.unwrap(),
        Pass::Applied { .. }
    ));
    count.take();
    let label = |name: &str, key: &str| {
        env.docker(&[
            "inspect",
            "-f",
            &format!("{{{{index .Config.Labels \"{key}\"}}}}"),
            name,
        ])
    };
    let db_owner = label("phxfor-db-1", "phoenix.owner");
    assert_eq!(db_owner.len(), 64, "{db_owner}");
    let before = ids(&env.containers("phxfor-"));

    // A stray with the stack's labels and a copied owner proof: formerly an "orphan".
    let stray = env.docker(&[
        "run",
        "-d",
        "--init",
        "--name",
        "phxfor-stray",
        "--label",
        "phoenix.stack=phxfor",
        "--label",
        "phoenix.service=stray",
        "--label",
        &format!("phoenix.owner={db_owner}"),
        &env.image,
        "sleep",
        "100000",
    ]);
    for dry_run in [true, false] {
        let e = pass(&conv, &v, dry_run).await.unwrap_err();
        assert!(
            e.contains("stack phxfor: conflict: container phxfor-stray carries phoenix labels but was not created by this agent"),
            "{e}"
        );
    }
    assert_eq!(count.take(), Vec::<String>::new());
    let mut after = before.clone();
    after.insert(
        "phxfor-stray".into(),
        env.containers("phxfor-stray")["phxfor-stray"].0.clone(),
    );
    assert_eq!(ids(&env.containers("phxfor-")), after);
    assert!(stray.starts_with(&after["phxfor-stray"]));
    assert_eq!(env.containers("phxfor-stray")["phxfor-stray"].1, "running");
    env.docker(&["rm", "-f", "phxfor-stray"]);

    // A look-alike in web's place with web's labels: formerly adopted as web.
    let mut args: Vec<String> = ["run", "-d", "--init", "--name", "phxfor-web-1"]
        .map(String::from)
        .to_vec();
    for key in [
        "phoenix.stack",
        "phoenix.service",
        "phoenix.config-hash",
        "phoenix.image-digest",
    ] {
        args.push("--label".into());
        args.push(format!("{key}={}", label("phxfor-web-1", key)));
    }
    args.push("--label".into());
    args.push(format!("phoenix.owner={db_owner}"));
    args.extend([env.image.clone(), "sleep".into(), "100000".into()]);
    env.docker(&["rm", "-f", "phxfor-web-1"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let fake = env.docker(&args);
    let e = pass(&conv, &v, false).await.unwrap_err();
    assert!(
        e.contains("conflict: container phxfor-web-1 carries phoenix labels but was not created by this agent"),
        "{e}"
    );
    assert_eq!(count.take(), Vec::<String>::new());
    let c = env.containers("phxfor-");
    assert!(fake.starts_with(&c["phxfor-web-1"].0));
    assert_eq!(c["phxfor-web-1"].1, "running");
    assert_eq!(c["phxfor-db-1"].0, before["phxfor-db-1"]);
    // Removing the look-alike by hand lets the next pass recreate web.
    env.docker(&["rm", "-f", "phxfor-web-1"]);
    let Pass::Applied { diff, .. } = pass(&conv, &v, false).await.unwrap() else {
        panic!("must recreate web")
    };
    assert_eq!(diff, "create container phxfor-web-1 (web)");
}

/// The same guarantees through the real `phoenix-agent` binary: an undeclared grant fails
/// the stack, a declared one is planned with its grants and created, and an agent with
/// another state directory (another owner key) treats the containers as a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_binary_refuses_undeclared_grants_and_foreign_owners() {
    let Some(env) = DockerEnv::get() else { return };
    let _lock = ENGINE.lock().await;
    let stack = "phxbin";
    let _down = Teardown {
        env: env.clone(),
        stack: stack.into(),
        extra: vec![],
    };
    let dir = tempfile::tempdir().unwrap();
    let compose = "services:\n  app:\n    image: \"${IMAGE}\"\n    init: true\n    command: [sleep, \"100000\"]\n    volumes: [\"/var/run/docker.sock:/var/run/docker.sock:ro\"]\n";
    let apply = |state: &str, host_access: &[&str], dry_run: bool| {
        let file = dir.path().join("guest.json");
        std::fs::write(
            &file,
            serde_json::to_vec(&serde_json::json!({"resources": [{
                "kind": "stack",
                "name": stack,
                "project": project(compose, &[("IMAGE", &env.image)]),
                "host_access": host_access,
            }]}))
            .unwrap(),
        )
        .unwrap();
        let mut cmd = std::process::Command::new(phoenix_tests::bin("phoenix-agent"));
        cmd.env("DOCKER_HOST", &env.host)
            .arg("--state-dir")
            .arg(dir.path().join(state))
            .args(["apply", "--json", "-f"])
            .arg(&file);
        if dry_run {
            cmd.arg("--dry-run");
        }
        let out = cmd.output().unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), report["results"][0].clone())
    };

    let (code, r) = apply("a", &[], false);
    assert_eq!(code, Some(2), "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains("stack phxbin: host access not declared in host_access: bind /var/run/docker.sock (services.app.volumes)"),
        "{r}"
    );
    assert!(env.containers("phxbin-").is_empty());

    let declared = ["bind /var/run/docker.sock"];
    let (code, r) = apply("a", &declared, true);
    assert_eq!(code, Some(0), "{r}");
    assert!(
        r["diff"].as_str().unwrap().contains(
            "create container phxbin-app-1 (app) (GRANTS HOST ACCESS: bind /var/run/docker.sock)"
        ),
        "{r}"
    );
    assert!(env.containers("phxbin-").is_empty());
    let (code, r) = apply("a", &declared, false);
    assert_eq!(code, Some(0), "{r}");
    assert_running(&env, stack, &["phxbin-app-1"]);
    let id = env.containers("phxbin-")["phxbin-app-1"].0.clone();
    let (code, r) = apply("a", &declared, false);
    assert_eq!(
        (code, r["status"].as_str()),
        (Some(0), Some("unchanged")),
        "{r}"
    );

    // Another agent's key: the container is not its to adopt or replace.
    let (code, r) = apply("b", &declared, false);
    assert_eq!(code, Some(2), "{r}");
    assert!(
        r["message"].as_str().unwrap().contains(
            "conflict: container phxbin-app-1 carries phoenix labels but was not created by this agent"
        ),
        "{r}"
    );
    assert_eq!(env.containers("phxbin-")["phxbin-app-1"].0, id);
}
