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
        .expect("acyclic")
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
        {"kind":"package","name":"ng;rm -rf"}]}"#,
    )
    .expect_err("invalid");
    assert_eq!(errs.len(), 3, "{errs:?}");
}

#[test]
fn rejects_cycles() {
    let errs = spec(
        r#"{"resources":[
        {"kind":"file","path":"/a","content":"x","depends_on":["file:/b"]},
        {"kind":"file","path":"/b","content":"x","depends_on":["file:/a"]}]}"#,
    )
    .expect_err("cycle");
    assert!(matches!(errs[0], ModelError::Cycle(_)), "{errs:?}");
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
