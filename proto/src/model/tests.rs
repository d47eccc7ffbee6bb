use super::*;

fn spec(json: &str) -> Result<GuestSpec, Vec<ModelError>> {
    GuestSpec::from_json(json.as_bytes())
}

#[test]
fn orders_by_dependencies_then_id() {
    let s = spec(
        r#"{"resources":[
        {"kind":"file","path":"/b","content":"x","depends_on":["file:/c"]},
        {"kind":"file","path":"/a","content":"x"},
        {"kind":"file","path":"/c","content":"x"}]}"#,
    )
    .expect("valid");
    let order: Vec<String> = s
        .order()
        .into_iter()
        .map(|i| s.resources[i].id().to_string())
        .collect();
    assert_eq!(order, ["file:/a", "file:/c", "file:/b"]);
}

#[test]
fn reports_every_error_together() {
    let errs = spec(
        r#"{"resources":[
        {"kind":"file","path":"/a","content":"x","depends_on":["file:/missing"]},
        {"kind":"file","path":"/a","content":"y"},
        {"kind":"package","name":"nginx","version":"1.0;rm -rf"}]}"#,
    )
    .expect_err("invalid");
    assert_eq!(errs.len(), 3, "{errs:?}");
}

#[test]
fn a_bad_name_is_refused_while_reading_naming_value_and_place() {
    let errs = spec(r#"{"resources":[{"kind":"package","name":"ng;rm -rf"}]}"#).expect_err("bad");
    let text = errs[0].to_string();
    assert!(
        text.contains("invalid package name \"ng;rm -rf\"") && text.contains("line 1"),
        "{text}"
    );
}

#[test]
fn rejects_cycles() {
    let errs = spec(
        r#"{"resources":[
        {"kind":"file","path":"/a","content":"x","depends_on":["file:/b"]},
        {"kind":"file","path":"/b","content":"x","depends_on":["file:/a"]}]}"#,
    )
    .expect_err("cycle");
    assert_eq!(
        errs.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        ["dependency cycle: file:/a -> file:/b -> file:/a"]
    );
}

#[test]
fn rejects_relative_and_dotdot_paths() {
    for p in ["etc/x", "/etc/../x", "/etc/./x", "/etc//x", "/etc/x/"] {
        assert!(AbsPath::try_from(p.to_string()).is_err(), "{p}");
    }
    assert!(AbsPath::try_from("/etc/x".to_string()).is_ok());
}

#[test]
fn guest_uri_round_trip() {
    let td = TrustDomain::try_from("phoenix.lab".to_string()).expect("valid");
    let g = GuestId::try_from(101).expect("valid");
    assert_eq!(td.parse_guest_uri(&td.guest_uri(g)), Some(g));
    assert_eq!(td.parse_guest_uri(&td.coordinator_uri()), None);
    let other = TrustDomain::try_from("other.lab".to_string()).expect("valid");
    assert_eq!(other.parse_guest_uri(&td.guest_uri(g)), None);
    assert!(GuestId::try_from(0).is_err());
}

#[test]
fn mode_is_octal_string() {
    let m = FileMode::try_from("0640".to_string()).expect("valid");
    assert_eq!(m.bits(), 0o640);
    assert_eq!(String::from(m), "0640");
    assert!(FileMode::try_from("999".to_string()).is_err());
}

#[test]
fn service_cert_names_reserved_for_identities_are_refused_naming_the_rule() {
    let td = TrustDomain::try_from("phoenix.lab".to_string()).expect("valid");
    let rule = |n: &str| reserved_name(&td, n).map(|e| e.to_string());
    assert_eq!(
        rule("*.phoenix.lab").as_deref(),
        Some(
            "refused: service certificate name \"*.phoenix.lab\" covers the reserved coordinator name coordinator.phoenix.lab (service certs may not carry identity names)"
        )
    );
    for n in [
        "coordinator.phoenix.lab",
        "Coordinator.Phoenix.Lab.",
        "COORDINATOR.phoenix.lab",
    ] {
        assert!(
            rule(n).is_some_and(
                |e| e.contains("is the reserved coordinator name coordinator.phoenix.lab")
            ),
            "{n}"
        );
    }
    for n in ["x.coordinator.phoenix.lab", "*.coordinator.phoenix.lab"] {
        assert!(
            rule(n).is_some_and(|e| e.contains("is under the reserved coordinator name")),
            "{n}"
        );
    }
    for n in [
        "coord*.phoenix.lab",
        "*tor.phoenix.lab",
        "*.*.lab",
        "*.phoenix.*",
        "c*o*r.phoenix.lab",
    ] {
        assert!(
            rule(n).is_some_and(|e| e.contains("covers the reserved")),
            "{n}"
        );
    }
    for n in [
        "spiffe://phoenix.lab/coordinator",
        "spiffe://phoenix.lab/guest/101",
        "https://x",
    ] {
        assert!(rule(n).is_some_and(|e| e.contains("is a URI")), "{n}");
    }
    // Ordinary service names in and outside the trust domain stay allowed.
    for n in [
        "gw.phoenix.lab",
        "*.apps.phoenix.lab",
        "*.internal.thinkheads.ai",
        "phoenix.lab",
        "coordinatorx.phoenix.lab",
        "x*.phoenix.lab",
        "10.0.0.13",
        "coordinator.other.lab",
        "ü*.phoenix.lab",
    ] {
        assert_eq!(rule(n), None, "{n}");
    }
    let spec = spec(
        r#"{"resources":[
        {"kind":"cert","name":"ok","common_name":"gw.phoenix.lab","cert_path":"/a.crt","key_path":"/a.key"},
        {"kind":"cert","name":"wild","common_name":"gw.phoenix.lab","sans":["*.phoenix.lab"],"cert_path":"/b.crt","key_path":"/b.key"}]}"#,
    )
    .expect("valid");
    let found = reserved_cert_names(&spec, &td);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0]
            .starts_with("cert wild: refused: service certificate name \"*.phoenix.lab\" covers"),
        "{found:?}"
    );
}

/// Each value rendered into a unit, with each character that would end its line: the
/// model refuses all of them, naming the field, so `phoenix validate` and the agent agree.
#[test]
fn unit_fields_refuse_line_breaks_and_nul() {
    type UnitWith = fn(&str) -> serde_json::Value;
    let fields: [(&str, UnitWith); 7] = [
        (
            "unit.working_directory",
            |v| serde_json::json!({"exec_start": ["/bin/true"], "working_directory": format!("/srv/a{v}ExecStartPre=/bin/touch /pwned")}),
        ),
        (
            "unit.environment.MODE",
            |v| serde_json::json!({"exec_start": ["/bin/true"], "environment": {"MODE": format!("x{v}ExecStartPre=/bin/touch /pwned")}}),
        ),
        (
            "unit.description",
            |v| serde_json::json!({"exec_start": ["/bin/true"], "description": format!("d{v}ExecStartPre=/bin/touch /pwned")}),
        ),
        (
            "unit.exec_start[1]",
            |v| serde_json::json!({"exec_start": ["/bin/true", format!("a{v}ExecStartPre=/bin/touch /pwned")]}),
        ),
        (
            "unit.exec_reload[1]",
            |v| serde_json::json!({"exec_start": ["/bin/true"], "exec_reload": ["/bin/kill", format!("a{v}b")]}),
        ),
        (
            "unit.user",
            |v| serde_json::json!({"exec_start": ["/bin/true"], "user": format!("www{v}data")}),
        ),
        (
            "unit.limits.memory_max",
            |v| serde_json::json!({"exec_start": ["/bin/true"], "limits": {"memory_max": format!("4G{v}X=1")}}),
        ),
    ];
    for (field, unit) in fields {
        for bad in ["\n", "\r", "\0"] {
            let json = serde_json::json!({"resources": [{"kind": "service", "name": "a.service", "unit": unit(bad)}]});
            let errs = spec(&json.to_string()).expect_err("refused");
            let text = format!("{errs:?}");
            // NUL in a path is already refused when the path is parsed.
            assert!(
                text.contains(field.rsplit('.').next().unwrap_or(field))
                    || (field == "unit.working_directory" && text.contains("invalid path")),
                "{field} with {bad:?}: {text}"
            );
        }
    }
}

#[test]
fn unit_fields_accept_odd_but_valid_characters() {
    let json = serde_json::json!({"resources": [{"kind": "service", "name": "a.service", "unit": {
        "description": "100% \"quoted\" $HOME back\\slash",
        "exec_start": ["/bin/sh", "a b", "%n", "$X", "\\", "'", "\t"],
        "environment": {"V": "%i $Y \"q\" \\ end\\"},
        "working_directory": "/srv/my dir/%h"
    }}]});
    spec(&json.to_string()).expect("valid");
}

#[test]
fn unquoted_unit_values_refuse_a_trailing_backslash() {
    for unit in [
        serde_json::json!({"exec_start": ["/bin/true"], "description": "x\\"}),
        serde_json::json!({"exec_start": ["/bin/true"], "working_directory": "/srv/x\\"}),
        serde_json::json!({"exec_start": ["/bin/true"], "description": " x"}),
    ] {
        let json = serde_json::json!({"resources": [{"kind": "service", "name": "a.service", "unit": unit}]});
        assert!(spec(&json.to_string()).is_err(), "{json}");
    }
}

/// Every way into a `GuestSpec` validates: a plain serde load (the agent's desired.json,
/// a `DesiredState`) refuses what `from_json` refuses, naming each reason.
#[test]
fn deserializing_runs_the_whole_validation() {
    let dup = r#"{"resources":[
        {"kind":"file","path":"/a","content":"x"},
        {"kind":"file","path":"/a","content":"y","depends_on":["file:/nope"]}]}"#;
    let e = serde_json::from_str::<GuestSpec>(dup).expect_err("refused");
    assert!(
        e.to_string().contains("resource file:/a is declared twice")
            && e.to_string()
                .contains("depends on file:/nope, which is not declared"),
        "{e}"
    );
    let desired = format!(r#"{{"revision":1,"digest":"d","dry_run":false,"spec":{dup}}}"#);
    assert!(serde_json::from_str::<DesiredState>(&desired).is_err());
    let ok = r#"{"resources":[{"kind":"file","path":"/a","content":"x"}]}"#;
    let spec: GuestSpec = serde_json::from_str(ok).expect("valid");
    assert_eq!(
        String::from_utf8_lossy(&spec.to_json()),
        r#"{"resources":[{"kind":"file","path":"/a","ensure":"present","content":"x"}]}"#
    );
}

#[cfg(feature = "schema")]
#[test]
fn schema_describes_the_raw_shape() {
    let schema = serde_json::to_value(schemars::schema_for!(GuestSpec)).expect("json");
    assert_eq!(schema["additionalProperties"], false, "{schema}");
    assert!(schema["properties"]["resources"].is_object());
    assert!(schema.get("required").is_none(), "resources defaults to []");
}

/// A reload the spec itself makes impossible is refused before the agent writes a key.
#[test]
fn a_cert_may_not_reload_a_service_that_cannot_be_reloaded() {
    let with = |service: &str, reload: &str| {
        spec(&format!(
            r#"{{"resources":[{service},
            {{"kind":"cert","name":"web","common_name":"web.lab","cert_path":"/c","key_path":"/k",
              "reload":[{reload}]}}]}}"#
        ))
    };
    let generated = r#"{"kind":"service","name":"web.service","unit":{"exec_start":["/bin/web"]}}"#;
    let errs = with(generated, r#"{"service_reload":"web.service"}"#).expect_err("refused");
    assert!(
        errs[0]
            .to_string()
            .starts_with("resource cert:web: service_reload web.service: Phoenix generates that unit without exec_reload"),
        "{errs:?}"
    );
    assert!(with(generated, r#"{"service_restart":"web.service"}"#).is_ok());
    let stopped = r#"{"kind":"service","name":"web.service","state":"stopped"}"#;
    let errs = with(stopped, r#"{"service_restart":"web.service"}"#).expect_err("refused");
    assert!(
        errs[0].to_string().contains("removes or keeps stopped"),
        "{errs:?}"
    );
    // A unit the spec does not declare (from a package installed by hand) is the host's.
    let other = r#"{"kind":"file","path":"/x","content":""}"#;
    assert!(with(other, r#"{"service_reload":"nginx.service"}"#).is_ok());
}
