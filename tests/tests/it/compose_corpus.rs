//! How much of real-world Compose the stack parser reads: every file of the shared corpus
//! (`../shared/compose-corpus/`, Docker Compose's own end-to-end fixtures), read in place,
//! is either accepted or refused with an error naming the key; the counts are printed.
//! The deliberately broken fixtures must be refused.

// In tests a panic is the failure report.
#![allow(clippy::unwrap_used)]

use phoenix_proto::model::compose;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn corpus_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/compose-corpus/docker-compose-e2e");
    let ok = phoenix_tests::require(
        "the shared Compose corpus (../shared/compose-corpus)",
        dir.is_dir(),
    );
    ok.then_some(dir)
}

fn compose_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read the corpus")
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")))
        .collect();
    files.sort();
    files
}

#[test]
fn the_corpus_is_read_or_refused_by_key() {
    let Some(dir) = corpus_dir() else { return };
    let files = compose_files(&dir);
    assert!(files.len() >= 40, "corpus has {} files", files.len());
    let mut accepted = Vec::new();
    let mut refused: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in &files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let text = std::fs::read_to_string(f).expect("read a corpus file");
        // As on a guest: the project directory is the file's own directory, the project
        // is named after the fixture, no profile is enabled and no variable is set.
        // Other files of the project (`extends: {file}`) are read beside the file, as
        // the coordinator reads them beside the compose file.
        let beside = dir.clone();
        let opts = compose::ParseOptions {
            variables: BTreeMap::new(),
            project_dir: Some(PathBuf::from("/srv/phoenix/stacks/corpus")),
            project_name: Some("corpus".into()),
            profiles: Vec::new(),
            files: Some(compose::FileReader::new(move |rel| {
                std::fs::read_to_string(beside.join(rel)).map_err(|e| e.to_string())
            })),
            withheld: Default::default(),
        };
        match compose::parse_with(&text, &opts) {
            Ok(p) => {
                // Unset variables are substituted and said, never refused.
                for w in p.warnings() {
                    println!("WARNING {name}: {w}");
                }
                accepted.push(name)
            }
            Err(e) => {
                let msg = e.to_string();
                let first = msg.lines().next().unwrap_or_default().to_string();
                // Every refusal names the key it stopped at: `compose <field>: why`.
                assert!(
                    first.starts_with("compose ") && first.contains(": "),
                    "{name}: refusal without a key: {first}"
                );
                println!("REFUSED {name}: {first}");
                refused.entry(first).or_default().push(name);
            }
        }
    }
    for a in &accepted {
        println!("ACCEPTED {a}");
    }
    println!(
        "compose corpus: {} of {} accepted, {} refused",
        accepted.len(),
        files.len(),
        files.len() - accepted.len()
    );
    // Measured on 2026-12-02 after unset variables became warnings, extends, platform
    // (checked by the agent against the engine) and anonymous volumes: 33 of 42. A floor,
    // so a regression in the parser shows here.
    assert!(accepted.len() >= 33, "{} accepted", accepted.len());
    // Deliberately broken: an unknown service key.
    assert!(
        !accepted
            .iter()
            .any(|a| a == "wrong-composefile_compose.yaml"),
        "the broken fixture was accepted"
    );
}

fn historical(shape: &str, vars: &[(&str, &str)]) -> Result<compose::ComposeProject, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/compose")
        .join(shape);
    let text = std::fs::read_to_string(dir.join("docker-compose.yml")).expect("fixture");
    let opts = compose::ParseOptions {
        variables: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        project_dir: Some(PathBuf::from(format!("/srv/phoenix/stacks/{shape}"))),
        project_name: Some(shape.to_string()),
        profiles: Vec::new(),
        files: None,
        withheld: Default::default(),
    };
    compose::parse_with(&text, &opts).map_err(|e| e.to_string())
}

/// Each shape the real stacks' compose files took across the old system's history
/// (tests/fixtures/compose/, one directory per shape) is read as Compose reads it, or
/// refused naming the key and why.
#[test]
fn historical_phoenix_compose_shapes_read_correctly() {
    // Relative binds land in the project directory on the guest.
    let p = historical("qdrant-relative-bind", &[]).unwrap();
    assert_eq!(
        p.services()["qdrant"].volumes[0].source,
        "/srv/phoenix/stacks/qdrant-relative-bind/qdrant_storage"
    );
    let p = historical("qdrant-relative-bind-z", &[]).unwrap();
    assert_eq!(
        p.services()["qdrant"].volumes[0].source,
        "/srv/phoenix/stacks/qdrant-relative-bind-z/qdrant_storage"
    );
    let p = historical("base-dir-bind", &[("API_PORT", "8000")]).unwrap();
    let app = &p.services()["thinkheads_ai_app"];
    assert_eq!(app.volumes[0].source, "/srv/phoenix/stacks/base-dir-bind");
    assert_eq!(app.ports[0].host_port, Some(8000));
    let p = historical("monitoring-relative", &[]).unwrap();
    assert_eq!(
        p.services()["grafana"].volumes[0].source,
        "/srv/phoenix/stacks/monitoring-relative/grafana_data"
    );
    // Swarm-era deploy keys: replicas honoured, placement and labels ignored as Compose
    // ignores them on one engine; a map where a list was written elsewhere.
    let p = historical("deploy-replicas-placement", &[]).unwrap();
    assert_eq!(p.services()["qdrant"].replicas, Some(1));
    let p = historical("deploy-labels-map", &[]).unwrap();
    let q = &p.services()["qdrant"];
    assert_eq!(q.environment["QDRANT__SERVICE__GRPC_PORT"], "6334");
    assert!(
        q.labels.is_empty(),
        "deploy.labels are not container labels"
    );
    assert!(p.networks()["traefik-public"].external);
    // Limits and reservations.
    let p = historical("resource-limits", &[]).unwrap();
    let r = &p.services()["qdrant"].resources;
    assert_eq!(r.nano_cpus, Some(2_000_000_000));
    assert_eq!(r.memory, Some(4 << 30));
    assert_eq!(r.memory_reservation, Some(1 << 30));
    // Hardening and an escaped `$`.
    let p = historical("hardened-bind-volume", &[]).unwrap();
    let s = &p.services()["portainer"];
    assert_eq!(s.security_opt, ["no-new-privileges:true"]);
    assert_eq!(
        s.command.as_deref().unwrap(),
        ["--admin-password-file", "/run/$secret"]
    );
    // Built from the compose file's directory; the socket bind is a grant to declare.
    let p = historical("build-context", &[]).unwrap();
    let s = &p.services()["portainer"];
    assert_eq!(
        s.build.as_ref().unwrap().context,
        "/srv/phoenix/stacks/build-context"
    );
    assert_eq!(s.image.as_str(), "build-context-portainer");
    assert_eq!(
        s.volumes[2].source,
        "/srv/phoenix/stacks/build-context/certs"
    );
    let grants = compose::grants::detect(&p, &[]);
    assert_eq!(grants[0].access, "bind /var/run/docker.sock");
    // `${VAR:?err}`: the variable and the file's message, set or not.
    let e = historical("required-variable", &[]).unwrap_err();
    assert!(
        e.contains("API_PORT") && e.contains("set API_PORT in the stack's variables"),
        "{e}"
    );
    let p = historical("required-variable", &[("API_PORT", "8000")]).unwrap();
    assert_eq!(
        p.services()["thinkheads_ai_app"].image.as_str(),
        "thinkheads_ai_app:latest"
    );
    // What only a swarm provides is refused with the key and why.
    let e = historical("swarm-portainer", &[]).unwrap_err();
    assert!(
        e.contains("secrets.portainer_admin_password.external") && e.contains("swarm"),
        "{e}"
    );
    let e = historical("swarm-overlay", &[]).unwrap_err();
    assert!(
        e.contains("networks.portainer_network.driver") && e.contains("swarm"),
        "{e}"
    );
}

/// The real stacks of the sample host, read in place from ../shared/phoenix/main/stacks.
#[test]
fn the_real_stacks_parse_in_their_project_directories() {
    let stacks = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/phoenix/main/stacks");
    if !phoenix_tests::require("../shared/phoenix/main/stacks", stacks.is_dir()) {
        return;
    }
    let mut n = 0;
    for e in std::fs::read_dir(&stacks).expect("read stacks") {
        let dir = e.expect("entry").path();
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let Ok(text) = std::fs::read_to_string(dir.join("docker-compose.yml")) else {
            continue;
        };
        let opts = compose::ParseOptions {
            variables: BTreeMap::from([("API_PORT".to_string(), "8000".to_string())]),
            project_dir: Some(PathBuf::from(format!("/srv/phoenix/stacks/{name}"))),
            project_name: Some(name.clone()),
            profiles: Vec::new(),
            files: None,
            withheld: Default::default(),
        };
        compose::parse_with(&text, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        n += 1;
    }
    assert!(n >= 3, "{n} stacks");
}

/// The real `phoenix validate` on a Phoenix config: an unset variable is a warning naming
/// the field and the variable (the stack still compiles); a build context holding a
/// private key that `.dockerignore` does not exclude is refused, naming the file and
/// never printing the key; excluded, it compiles and is not shipped.
#[test]
fn phoenix_validate_warns_of_unset_variables_and_refuses_private_keys_in_contexts() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let write = |p: &str, body: &str| {
        let p = base.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    };
    write(
        "etc/phoenix_vm_configs.json",
        r#"{"vms": [{"vmid": 1002, "name": "dr", "docker_stacks": ["web"]}]}"#,
    );
    write(
        "stacks/web/phoenix.json",
        r#"{"environments": {"production": {}}}"#,
    );
    write(
        "stacks/web/docker-compose.yml",
        "services:\n  web:\n    build: ./app\n    environment:\n      MODE: \"${MODE}\"\n",
    );
    write("stacks/web/app/Dockerfile", "FROM busybox\n");
    const KEY_BODY: &str = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7";
    write(
        "stacks/web/app/keys/tls.key",
        &format!("-----BEGIN PRIVATE KEY-----\n{KEY_BODY}\n-----END PRIVATE KEY-----\n"),
    );
    let validate = || {
        let out = std::process::Command::new(phoenix_tests::bin("phoenix"))
            .arg("validate")
            .arg(base.join("etc"))
            .output()
            .expect("run phoenix validate");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), all)
    };
    let (ok, all) = validate();
    assert!(!ok, "a private key in a context must fail validate:\n{all}");
    assert!(
        all.contains("app/keys/tls.key holds a private key") && !all.contains(KEY_BODY),
        "{all}"
    );
    write("stacks/web/app/.dockerignore", "keys/\n");
    let (ok, all) = validate();
    assert!(ok, "{all}");
    assert!(
        all.contains("services.web.environment: variable MODE is not set"),
        "{all}"
    );
    assert!(!all.contains(KEY_BODY), "{all}");
}
