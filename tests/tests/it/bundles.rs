//! Compiled application bundles start the real programs with command lines those programs
//! accept. Enrolling an existing Step-CA guest (103) once rewrote `step-ca.service` with an
//! argv step-ca 0.19 refuses (`too many positional arguments`): the unit crash-looped.

use phoenix_coordinator::compile;
use phoenix_proto::model::{GuestId, Resource};
use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_compiled_step_ca_unit_command_line_is_accepted_by_the_real_step_ca() {
    let bin = std::env::var_os("PHOENIX_STEPCA_BIN").map(PathBuf::from);
    if !phoenix_tests::require(
        "step-ca binary (PHOENIX_STEPCA_BIN, tests/setup/10-stepca.sh)",
        bin.as_ref().is_some_and(|b| b.is_file()),
    ) {
        return;
    }
    let configs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let c = compile::load(&configs).unwrap_or_else(|e| panic!("{e}"));
    let g = &c.guests[&GuestId::try_from(103).expect("id")];
    let argv = g
        .spec
        .resources()
        .iter()
        .find_map(|r| match r {
            Resource::Service(s) if s.name == "step-ca.service" => {
                s.unit.as_ref().map(|u| u.exec_start.clone())
            }
            _ => None,
        })
        .expect("103 runs step-ca.service from a generated unit");
    assert_eq!(argv[0], "/usr/bin/step-ca");
    // The same argv with the real binary: it must get past argument parsing and fail only
    // on the files this machine does not have.
    let out = Command::new(bin.unwrap_or_default())
        .args(&argv[1..])
        .output()
        .expect("run step-ca");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("positional arguments"), "{text}");
    assert!(
        text.contains("/root/.step/secrets/password.txt")
            || text.contains("/root/.step/config/ca.json"),
        "step-ca got as far as opening its files: {text}"
    );
}
