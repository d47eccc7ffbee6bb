//! The example configs in `configs/` (the Phoenix design, written as a user would)
//! compile to the reviewed golden states; every broken config in `tests/broken/`
//! produces exactly its expected errors, all of them in one run.
//!
//! Regenerate goldens/expectations after a deliberate change with
//! `PHOENIX_UPDATE_GOLDEN=1 cargo test -p phoenix-coordinator --test compile_configs`,
//! then review the diff by hand.

mod common;

use phoenix_coordinator::compile::{self, NativeConfig};
use phoenix_proto::model::{GuestId, Resource};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn configs() -> PathBuf {
    repo().join("configs")
}

fn id(n: u32) -> GuestId {
    GuestId::try_from(n).expect("valid id")
}

fn update() -> bool {
    std::env::var("PHOENIX_UPDATE_GOLDEN").as_deref() == Ok("1")
}

fn check_text(path: &Path, actual: &str) {
    if update() {
        std::fs::write(path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (PHOENIX_UPDATE_GOLDEN=1 creates it)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs from the compiler's output:\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

#[test]
fn every_file_in_configs_loads_and_compiles() {
    let c = compile::load(&configs()).unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<u32> = c.guests.keys().map(|g| g.get()).collect();
    assert_eq!(ids, [101, 102, 103, 801, 1002, 9000]);
    // The one thing the examples cannot declare: the CA's one-off `step ca init`.
    let warnings: Vec<String> = c.warnings.iter().map(|w| w.message.clone()).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].starts_with("`step ca init`"));
    // The base directory and its etc/ are the same install.
    let etc = compile::load(&configs().join("etc")).unwrap_or_else(|e| panic!("etc/: {e}"));
    assert_eq!(etc.guests, c.guests);
    // Every Phoenix file named directly compiles as its directory.
    for name in [
        "phoenix_lxc_configs.json",
        "phoenix_vm_configs.json",
        "phoenix_stacks_config.json",
        "phoenix_hypervisor_config.json",
        "certificate-manifest.json",
    ] {
        let one = compile::load(&configs().join("etc").join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(one.guests, c.guests, "{name}");
    }
    // Every stack directory is used by a guest.
    let mut used: Vec<String> = c
        .guests
        .values()
        .flat_map(|g| g.spec.resources().iter())
        .filter_map(|r| match r {
            Resource::Stack(s) => Some(s.name.clone()),
            _ => None,
        })
        .collect();
    used.sort();
    let mut dirs: Vec<String> = std::fs::read_dir(configs().join("stacks"))
        .expect("stacks dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(used, dirs);
    // The native example, as a file and as a directory.
    for p in [
        configs().join("native"),
        configs().join("native/lab-extras.json"),
    ] {
        let n = compile::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(n.guests[&id(104)].spec.resources().len(), 3);
    }
}

#[test]
fn golden_lxc_101_vllm_lxc_801_and_vm_1002() {
    let c = compile::load(&configs()).unwrap_or_else(|e| panic!("{e}"));
    for g in [101, 801, 1002] {
        let json = serde_json::to_string_pretty(&c.guests[&id(g)]).expect("json") + "\n";
        check_text(
            &repo().join(format!("coordinator/tests/golden/{g}.json")),
            &json,
        );
    }
}

/// Every golden file and every guest compiled from configs/ is a state the agent accepts:
/// the golden's own bytes go through the agent's wire conversion, so a golden the model
/// or the agent would refuse cannot be kept by regenerating it.
#[test]
fn every_golden_and_compiled_state_passes_the_agents_validation() {
    let goldens = repo().join("coordinator/tests/golden");
    let mut n = 0;
    for entry in std::fs::read_dir(&goldens).expect("goldens") {
        let path = entry.expect("entry").path();
        let golden: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        let spec = serde_json::to_vec(&golden["spec"]).expect("json");
        common::as_the_agent_receives(spec).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        n += 1;
    }
    assert!(n >= 3, "goldens found: {n}");
    let c = compile::load(&configs()).unwrap_or_else(|e| panic!("{e}"));
    for (id, g) in &c.guests {
        let d = common::as_the_agent_receives(g.spec.to_json())
            .unwrap_or_else(|e| panic!("guest {id}: {e}"));
        assert_eq!(d.spec, g.spec, "guest {id}");
    }
}

#[test]
fn compiled_specs_round_trip_through_the_native_format() {
    let c = compile::load(&configs()).unwrap_or_else(|e| panic!("{e}"));
    let native = NativeConfig {
        guests: c
            .guests
            .iter()
            .map(|(id, g)| (*id, g.spec.clone()))
            .collect(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("all.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&native).expect("json")).expect("write");
    let again = compile::load(&file).unwrap_or_else(|e| panic!("{e}"));
    for (id, g) in &c.guests {
        assert_eq!(again.guests[id].spec, g.spec, "guest {id}");
    }
}

#[test]
fn schema_describes_the_native_format() {
    let schema: serde_json::Value =
        serde_json::from_str(&compile::schema_json()).expect("schema is JSON");
    assert!(schema["properties"]["guests"].is_object(), "{schema}");
    let text = schema.to_string();
    for kind in [
        "file",
        "package",
        "apt_source",
        "service",
        "stack",
        "cert",
        "exec",
    ] {
        assert!(text.contains(&format!("\"{kind}\"")), "kind {kind} missing");
    }
}

/// Each `tests/broken/<case>/` is a config (a Phoenix etc dir, or `native.json`) and
/// `expected.txt`: every error line, with the case directory written as `<dir>`.
#[test]
fn every_broken_config_reports_its_precise_errors() {
    let root = repo().join("coordinator/tests/broken");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("broken corpus")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 8, "corpus has {} cases", cases.len());
    for case in cases {
        let input = if case.join("native.json").is_file() {
            case.join("native.json")
        } else {
            case.clone()
        };
        let errors = match compile::load(&input) {
            Ok(_) => panic!("{} compiled but must fail", case.display()),
            Err(e) => e,
        };
        let prefix = format!("{}/", case.display());
        let mut actual = String::new();
        for e in &errors.0 {
            actual.push_str(&e.to_string().replace(&prefix, "<dir>/"));
            actual.push('\n');
        }
        check_text(&case.join("expected.txt"), &actual);
        // The summary names every error, once.
        let shown = errors.to_string();
        assert!(shown.starts_with(&format!("{} config error", errors.0.len())));
        assert_eq!(shown.lines().count(), errors.0.len() + 1);
    }
}

/// A compose file with a literal password is refused, naming the key and never the
/// value; the same stack with the secret in an env_file on the guest compiles.
#[test]
fn literal_secrets_in_compose_are_refused_without_printing_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::create_dir_all(d.join("stacks/db")).expect("mkdir");
    std::fs::write(
        d.join("phoenix_vm_configs.json"),
        r#"{"vms": [{"vmid": 1002, "name": "dr", "docker_stacks": ["db"]}]}"#,
    )
    .expect("write");
    std::fs::write(
        d.join("stacks/db/phoenix.json"),
        r#"{"environments": {"production": {"variables": [{"name": "POSTGRES_USER", "value": "app"}]}}}"#,
    )
    .expect("write");
    let compose = d.join("stacks/db/docker-compose.yml");
    let head = "services:\n  db:\n    image: postgres:16\n";
    std::fs::write(
        &compose,
        format!("{head}    environment:\n      POSTGRES_USER: ${{POSTGRES_USER}}\n      POSTGRES_PASSWORD: correct-horse-battery\n"),
    )
    .expect("write");
    let e = compile::load(d).expect_err("literal secret must be refused");
    let text = e.to_string();
    assert_eq!(e.0.len(), 1, "{text}");
    assert!(
        text.contains("literal secret for POSTGRES_PASSWORD"),
        "{text}"
    );
    assert!(!text.contains("correct-horse-battery") && !format!("{e:?}").contains("correct-horse"));

    std::fs::write(
        &compose,
        format!("{head}    env_file:\n      - /etc/phoenix/secrets/db.env\n    environment:\n      POSTGRES_USER: ${{POSTGRES_USER}}\n"),
    )
    .expect("write");
    let c = compile::load(d).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.guests[&id(1002)].spec.resources().len(), 1);
}

/// A stack's host-root grants come from its manifest's `host_access`; an undeclared one
/// is shown by `phoenix validate` with the manifest line that would declare it, and the
/// compiled spec does not carry it (so the agent refuses the stack).
#[test]
fn stack_host_access_is_declared_in_the_manifest_and_shown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::create_dir_all(d.join("stacks/ui")).expect("mkdir");
    std::fs::write(
        d.join("phoenix_vm_configs.json"),
        r#"{"vms": [{"vmid": 1002, "name": "dr", "docker_stacks": ["ui"]}]}"#,
    )
    .expect("write");
    std::fs::write(
        d.join("stacks/ui/docker-compose.yml"),
        "services:\n  ui:\n    image: portainer/portainer-ce:latest\n    volumes:\n      - /var/run/docker.sock:/var/run/docker.sock\n",
    )
    .expect("write");
    let manifest = d.join("stacks/ui/phoenix.json");
    let stack = |c: &compile::Compiled| match &c.guests[&id(1002)].spec.resources()[0] {
        phoenix_proto::model::Resource::Stack(s) => s.clone(),
        other => panic!("not a stack: {other:?}"),
    };

    std::fs::write(&manifest, r#"{"environments": {"production": {}}}"#).expect("write");
    let c = compile::load(d).unwrap_or_else(|e| panic!("{e}"));
    assert!(stack(&c).host_access.is_empty());
    let w: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        w.iter().any(|w| w.contains("services.ui.volumes")
            && w.contains(
                "service ui GRANTS HOST ACCESS: bind /var/run/docker.sock, not declared"
            )
            && w.contains(r#""host_access": ["bind /var/run/docker.sock"]"#)),
        "{w:?}"
    );

    std::fs::write(
        &manifest,
        r#"{"environments": {"production": {"host_access": ["bind /var/run/docker.sock"]}}}"#,
    )
    .expect("write");
    let c = compile::load(d).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stack(&c).host_access, ["bind /var/run/docker.sock"]);
    let w: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        w.iter().any(|w| w.contains(
            "service ui GRANTS HOST ACCESS: bind /var/run/docker.sock (declared in host_access)"
        )),
        "{w:?}"
    );
}
