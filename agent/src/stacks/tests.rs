//! Planning logic against hand-made observations; the real engine is exercised in
//! tests/tests/it/stacks.rs.

// In tests a panic is the failure report.
#![allow(clippy::unwrap_used)]

use super::*;
use phoenix_proto::model::compose;
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

fn key() -> OwnerKey {
    let dir = tempfile::tempdir().unwrap();
    OwnerKey::load_or_create(dir.path()).unwrap()
}

/// What the engine would show after a perfect converge of `d`.
fn converged(d: &Desired) -> Observed {
    let mut o = Observed::default();
    let key = key();
    for (i, c) in d.containers.iter().enumerate() {
        let labels = StackConverger::labels(&key, d, i, "sha256:1");
        o.owned.insert(format!("id-{}", c.service));
        o.containers.push(ObservedContainer {
            id: format!("id-{}", c.service),
            name: c.name.clone(),
            labels: labels.into_iter().collect(),
            running: true,
            exit_code: None,
        });
        o.images
            .insert(c.spec.image.to_string(), Some("sha256:1".into()));
    }
    for n in &d.networks {
        o.owned_networks.insert(n.name.clone());
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
    o.owned.insert("gone".into());
    o.owned_networks.insert("s_unused".into());
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
fn an_interrupted_recreate_puts_the_set_aside_container_back() {
    let before = desired(STACK, &[]);
    let after = desired(&STACK.replace("/conf:ro", "/conf"), &[]);
    // Aborted between renaming api aside and creating its replacement.
    let mut aside = converged(&before);
    let api = aside
        .containers
        .iter_mut()
        .find(|c| c.name == "s-api-1")
        .unwrap();
    api.name = format!("s-api-1{ASIDE_SUFFIX}");
    api.running = false;
    let p = plan::plan(&after, &aside).unwrap();
    assert_eq!(
        p.describe(&after),
        [
            "restore container s-api-1 (api) set aside by an interrupted recreate",
            "recreate container s-api-1 (api): configuration changed",
        ]
    );
    // The recreate keeps it as its rollback copy, and restarts it on failure: it was
    // running until the interrupted recreate stopped it.
    assert!(
        matches!(&p.steps[1], Step::Recreate { old_id, was_running: true, .. } if old_id == "id-api"),
        "{:?}",
        p.steps
    );
    // With the spec back at the old revision, putting it back and starting it is all.
    let p = plan::plan(&before, &aside).unwrap();
    assert_eq!(
        p.describe(&before),
        [
            "restore container s-api-1 (api) set aside by an interrupted recreate",
            "start container s-api-1 (api)",
        ]
    );

    // Aborted after creating the replacement, before it ran: the replacement goes.
    let key = key();
    let mut created = aside.clone();
    created.owned.insert("id-new".into());
    created.containers.push(ObservedContainer {
        id: "id-new".into(),
        name: "s-api-1".into(),
        labels: StackConverger::labels(&key, &after, 1, "sha256:1")
            .into_iter()
            .collect(),
        running: false,
        exit_code: None,
    });
    let p = plan::plan(&after, &created).unwrap();
    assert_eq!(
        p.describe(&after),
        [
            "remove container s-api-1: replacement of a set-aside container that never started",
            "restore container s-api-1 (api) set aside by an interrupted recreate",
            "recreate container s-api-1 (api): configuration changed",
        ]
    );

    // Aborted after the replacement started: only removing the old one was left.
    let mut started = created.clone();
    started.containers.last_mut().unwrap().running = true;
    let p = plan::plan(&after, &started).unwrap();
    assert_eq!(
        p.describe(&after),
        ["remove container s-api-1-phoenix-old: set aside by a recreate that finished"]
    );
}

#[test]
fn unproven_stack_labels_are_conflicts_not_orphans_or_services() {
    let d = desired(STACK, &[]);
    // A look-alike of s-api-1 (same labels, no valid proof) and an unproven "orphan".
    for (id, name, service) in [("fake", "s-api-1", "api"), ("stray", "s-old-1", "old")] {
        let mut o = converged(&d);
        o.containers.retain(|c| c.name != name);
        o.containers.push(ObservedContainer {
            id: id.into(),
            name: name.into(),
            labels: BTreeMap::from([
                (LABEL_STACK.to_string(), "s".to_string()),
                (LABEL_SERVICE.to_string(), service.to_string()),
                (owner::LABEL_OWNER.to_string(), "00".repeat(32)),
            ]),
            running: true,
            exit_code: None,
        });
        let e = plan::plan(&d, &o).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "conflict: container {name} carries phoenix labels but was not created by this agent"
            )),
            "{e}"
        );
    }
    // An unproven network with the stack label is not removed either.
    let mut o = converged(&d);
    o.networks.insert(
        "s_unused".into(),
        BTreeMap::from([(LABEL_STACK.to_string(), "s".to_string())]),
    );
    let e = plan::plan(&d, &o).unwrap_err().to_string();
    assert!(e.contains("network s_unused"), "{e}");
}

#[test]
fn plan_lines_name_the_grants() {
    let d = desired(
        "services:\n  p:\n    image: img:1\n    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n    cap_add: [SYS_ADMIN]\n",
        &[],
    );
    let mut o = Observed::default();
    o.images.insert("img:1".into(), Some("sha256:1".into()));
    let p = plan::plan(&d, &o).unwrap();
    assert!(
        p.describe(&d).contains(
            &"create container s-p-1 (p) (GRANTS HOST ACCESS: cap_add SYS_ADMIN, bind /var/run/docker.sock)"
                .to_string()
        ),
        "{:?}",
        p.describe(&d)
    );
}

#[test]
fn env_files_are_read_only_beneath_the_roots() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "SECRET=victim\n").unwrap();
    std::fs::write(root.path().join("ok.env"), "A=1\n").unwrap();
    std::os::unix::fs::symlink(&victim, root.path().join("link.env")).unwrap();
    std::os::unix::fs::symlink("ok.env", root.path().join("inner.env")).unwrap();
    let roots = vec![root.path().to_path_buf()];
    let at = |name: &str| root.path().join(name).display().to_string();
    assert_eq!(read_env_file(&roots, &at("ok.env")).unwrap(), "A=1\n");
    // A link that stays inside the root is fine.
    assert_eq!(read_env_file(&roots, &at("inner.env")).unwrap(), "A=1\n");
    let e = read_env_file(&roots, &at("link.env")).unwrap_err();
    assert!(e.contains("leads outside the allowed root"), "{e}");
    let e = read_env_file(&roots, &victim.display().to_string()).unwrap_err();
    assert!(e.contains("outside the allowed roots"), "{e}");
    let e = read_env_file(
        &roots,
        &format!(
            "{}/../{}/victim",
            root.path().display(),
            outside.path().display()
        ),
    )
    .unwrap_err();
    assert!(e.contains("outside the allowed roots"), "{e}");
    let e = read_env_file(&roots, "/etc/shadow").unwrap_err();
    assert!(e.contains("outside the allowed roots"), "{e}");
    nix::unistd::mkfifo(
        &root.path().join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let e = read_env_file(&roots, &at("fifo")).unwrap_err();
    assert!(e.contains("not a regular file"), "{e}");
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
    let mut spec = StackSpec::new("s", compose::parse(STACK, &BTreeMap::new()).unwrap());
    spec.labels.insert(
        "api".into(),
        vec!["traefik.enable=true".into(), "broken".into()],
    );
    let e = StackConverger::extra_labels(&spec, &spec.project)
        .unwrap_err()
        .to_string();
    assert!(e.contains("broken"), "{e}");
}
