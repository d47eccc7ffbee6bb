//! Planning logic against hand-made observations; the real engine is exercised in
//! tests/tests/stacks.rs.

// In tests a panic is the failure report.
#![allow(clippy::unwrap_used)]

use super::*;
use plan::ObservedContainer;

const STACK: &str = r#"
services:
  db:
    image: img:1
    healthcheck: {test: ["CMD", "true"], interval: 1s}
  api:
    image: img:1
    depends_on: {db: {condition: service_healthy}}
    volumes: ["data:/data", "/srv/app/conf:/conf:ro"]
volumes:
  data:
  shared: {external: true}
"#;

fn desired(compose: &str, files: &[(&str, &str)]) -> Desired {
    let p = compose::parse(compose, &BTreeMap::new()).unwrap();
    let files = files
        .iter()
        .map(|(p, d)| (p.to_string(), d.to_string()))
        .collect();
    plan::render("s", &p, &BTreeMap::new(), &BTreeMap::new(), &files)
}

/// What the engine would show after a perfect converge of `d`.
fn converged(d: &Desired) -> Observed {
    let mut o = Observed::default();
    for (i, c) in d.containers.iter().enumerate() {
        let labels = StackConverger::labels(d, i, "sha256:1");
        o.containers.push(ObservedContainer {
            id: format!("id-{}", c.service),
            name: c.name.clone(),
            labels: labels.into_iter().collect(),
            running: true,
            exit_code: None,
        });
        o.images
            .insert(c.spec.image.clone(), Some("sha256:1".into()));
    }
    for n in &d.networks {
        o.networks.insert(
            n.name.clone(),
            BTreeMap::from([(LABEL_STACK.to_string(), "s".to_string())]),
        );
    }
    o.volumes = d.volumes.iter().map(|v| v.name.clone()).collect();
    o
}

#[test]
fn converged_stack_plans_nothing() {
    let d = desired(STACK, &[]);
    assert_eq!(
        d.containers
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["s-db-1", "s-api-1"]
    );
    let p = plan::plan(&d, &converged(&d)).unwrap();
    assert!(p.is_empty(), "{:?}", p.describe(&d));
}

#[test]
fn empty_engine_plans_everything_in_order() {
    let d = desired(STACK, &[]);
    let mut o = Observed::default();
    o.volumes.insert("shared".into());
    o.images.insert("img:1".into(), Some("sha256:1".into()));
    let p = plan::plan(&d, &o).unwrap();
    assert_eq!(
        p.describe(&d),
        [
            "create network s_default",
            "create volume s_data",
            "create container s-db-1 (db)",
            "create container s-api-1 (api)",
        ]
    );
}

#[test]
fn only_the_changed_service_is_recreated() {
    let before = desired(STACK, &[]);
    let obs = converged(&before);
    let after = desired(&STACK.replace("/conf:ro", "/conf"), &[]);
    let p = plan::plan(&after, &obs).unwrap();
    assert_eq!(
        p.describe(&after),
        ["recreate container s-api-1 (api): configuration changed"]
    );
    // A stack file the service bind-mounts is part of its config.
    let with_file = desired(STACK, &[("/srv/app/conf/x.yml", "abc")]);
    let p = plan::plan(&with_file, &obs).unwrap();
    assert_eq!(p.steps.len(), 1, "{:?}", p.describe(&with_file));
    // A new image ID behind the same tag recreates both users of the image.
    let mut moved = obs.clone();
    moved.images.insert("img:1".into(), Some("sha256:2".into()));
    let p = plan::plan(&before, &moved).unwrap();
    assert_eq!(p.steps.len(), 2);
}

#[test]
fn orphans_stopped_and_foreign_containers() {
    let d = desired(STACK, &[]);
    let mut o = converged(&d);
    o.containers[0].running = false;
    o.containers.push(ObservedContainer {
        id: "gone".into(),
        name: "s-old-1".into(),
        labels: BTreeMap::from([(LABEL_STACK.to_string(), "s".to_string())]),
        running: true,
        exit_code: None,
    });
    o.networks.insert(
        "s_unused".into(),
        BTreeMap::from([(LABEL_STACK.to_string(), "s".to_string())]),
    );
    // Another stack's network is not ours to remove.
    o.networks.insert(
        "t_default".into(),
        BTreeMap::from([(LABEL_STACK.to_string(), "t".to_string())]),
    );
    let p = plan::plan(&d, &o).unwrap();
    assert_eq!(
        p.describe(&d),
        [
            "remove container s-old-1: orphan (not in the stack)",
            "start container s-db-1 (db)",
            "remove network s_unused: not in the stack",
        ]
    );
    // An unlabelled container that holds a stack name stops the plan instead of being replaced.
    o.containers[1].labels.clear();
    let e = plan::plan(&d, &o).unwrap_err().to_string();
    assert!(e.contains("s-api-1") && e.contains("refusing"), "{e}");
}

#[test]
fn missing_external_volume_and_missing_image() {
    let d = desired(STACK, &[]);
    let mut o = converged(&d);
    o.volumes.remove("shared");
    let e = plan::plan(&d, &o).unwrap_err().to_string();
    assert!(e.contains("external volume \"shared\""), "{e}");
    let mut o = converged(&d);
    o.images.insert("img:1".into(), None);
    let p = plan::plan(&d, &o).unwrap();
    assert_eq!(
        p.steps[0],
        Step::Pull {
            image: "img:1".into()
        }
    );
}

#[test]
fn env_files_and_labels() {
    let env = parse_env_file("s", "/e", "# c\nA=1\nB=\"two words\"\n\n").unwrap();
    assert_eq!(env["B"], "two words");
    assert!(parse_env_file("s", "/e", "novalue\n").is_err());
    let spec: StackSpec = serde_json::from_value(serde_json::json!({
        "name": "s",
        "compose": STACK,
        "labels": {"api": ["traefik.enable=true", "broken"]},
    }))
    .unwrap();
    let p = compose::parse(&spec.compose, &spec.variables).unwrap();
    let e = StackConverger::extra_labels(&spec, &p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("broken"), "{e}");
}
