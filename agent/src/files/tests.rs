use super::*;
use phoenix_proto::model::{AbsPath, FileMode};
use std::os::unix::fs::PermissionsExt;

fn spec(path: &Path, content: &str, mode: Option<&str>) -> FileSpec {
    FileSpec {
        path: AbsPath::try_from(path.display().to_string()).expect("abs"),
        ensure: Ensure::Present,
        content: content.into(),
        mode: mode.map(|m| FileMode::try_from(m.to_string()).expect("mode")),
        owner: None,
        group: None,
        depends_on: vec![],
    }
}

fn cx() -> PassContext {
    PassContext::default()
}

#[tokio::test]
async fn converges_content_and_mode_then_is_in_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conv = FileConverger::new(vec![dir.path().to_path_buf()]);
    let p = dir.path().join("sub/app.conf");
    let s = spec(&p, "listen 80\n", Some("0640"));
    conv.validate(&s).expect("inside root");
    assert!(matches!(
        conv.check(&s, &cx()).await.expect("check"),
        Check::Drift { .. }
    ));
    conv.apply(&s, &cx()).await.expect("apply");
    assert_eq!(std::fs::read_to_string(&p).expect("read"), "listen 80\n");
    let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640);
    assert_eq!(conv.check(&s, &cx()).await.expect("check"), Check::InSync);
    let names: Vec<_> = std::fs::read_dir(p.parent().expect("parent"))
        .expect("list")
        .collect();
    assert_eq!(names.len(), 1, "no temp file left behind");

    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    match conv.check(&s, &cx()).await.expect("check") {
        Check::Drift { diff } => assert!(diff.contains("mode: 0666 → 0640"), "{diff}"),
        Check::InSync => panic!("mode drift not seen"),
    }
}

#[tokio::test]
async fn refuses_paths_outside_roots_and_symlink_escapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let conv = FileConverger::new(vec![root.clone()]);
    let err = conv
        .validate(&spec(&outside.path().join("x"), "", None))
        .expect_err("outside");
    assert!(
        err.to_string().contains("outside the allowed roots"),
        "{err}"
    );

    std::os::unix::fs::symlink(outside.path(), root.join("link")).expect("symlink");
    let s = spec(&root.join("link/evil"), "x", None);
    conv.validate(&s).expect("lexically inside");
    let err = conv.apply(&s, &cx()).await.expect_err("escape");
    assert!(
        err.to_string().contains(&format!(
            "refusing to follow symbolic link {}",
            root.join("link").display()
        )),
        "{err}"
    );
    assert!(!outside.path().join("evil").exists());
}

#[tokio::test]
async fn private_file_diff_hides_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conv = FileConverger::new(vec![dir.path().to_path_buf()]);
    let p = dir.path().join("secret");
    std::fs::write(&p, "password=old\n").expect("write");
    let s = spec(&p, "password=new\n", Some("0600"));
    match conv.check(&s, &cx()).await.expect("check") {
        Check::Drift { diff } => {
            assert!(!diff.contains("password"), "{diff}");
            assert!(diff.contains("private file"), "{diff}");
        }
        Check::InSync => panic!("drift expected"),
    }
}

#[tokio::test]
async fn absent_removes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conv = FileConverger::new(vec![dir.path().to_path_buf()]);
    let p = dir.path().join("old");
    std::fs::write(&p, "x").expect("write");
    let mut s = spec(&p, "", None);
    s.ensure = Ensure::Absent;
    conv.apply(&s, &cx()).await.expect("remove");
    assert!(!p.exists());
    assert_eq!(conv.check(&s, &cx()).await.expect("check"), Check::InSync);
}

/// A world-readable file's plan diff shows which lines change, never a secret's value.
#[test]
fn content_diff_redacts_secret_lines() {
    let old = "host=db\npassword=hunter2\n-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkq\n-----END PRIVATE KEY-----\n";
    let new = "host=db\npassword=correct-horse\nurl=redis://:pw1234@cache\n";
    let diff = super::content_diff(Some(old.as_bytes()), new, false);
    for secret in ["hunter2", "correct-horse", "pw1234", "MIIBVQIBADANBgkq"] {
        assert!(!diff.contains(secret), "{secret} shown: {diff}");
    }
    assert!(diff.contains("- password=<redacted>"), "{diff}");
    assert!(diff.contains("+ password=<redacted>"), "{diff}");
    assert!(diff.contains("- <redacted> (private key)"), "{diff}");
    assert!(
        !diff.contains("host=db"),
        "unchanged lines are not listed: {diff}"
    );
}

fn guest(files: &[FileSpec]) -> GuestSpec {
    let resources: Vec<serde_json::Value> = files
        .iter()
        .map(|f| {
            let mut v = serde_json::to_value(Resource::File(f.clone())).expect("json");
            v["kind"] = "file".into();
            v
        })
        .collect();
    GuestSpec::from_json(
        serde_json::json!({ "resources": resources })
            .to_string()
            .as_bytes(),
    )
    .expect("spec")
}

#[tokio::test]
async fn an_existing_file_not_written_by_phoenix_is_backed_up_before_it_is_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let ledger = Arc::new(Ledger::open(state.path()).expect("ledger"));
    let conv = FileConverger::new(vec![dir.path().to_path_buf()]).with_ledger(ledger.clone());
    let p = dir.path().join("app.conf");
    std::fs::write(&p, "hand written\n").expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    // A group the file did not have, when the test may give it away (root).
    let root = nix::unistd::geteuid().is_root();
    if root {
        std::os::unix::fs::chown(&p, Some(4321), Some(8765)).expect("chown");
    }
    let s = spec(&p, "phoenix\n", Some("0644"));
    let Check::Drift { diff } = conv.check(&s, &cx()).await.expect("check") else {
        panic!("drift expected");
    };
    assert!(diff.contains("(not managed by Phoenix"), "{diff}");
    let done = conv.apply(&s, &cx()).await.expect("apply");
    let owned = ledger.file(&p).expect("recorded");
    let backup = owned.backup.clone().expect("backup kept");
    assert!(done.contains(&backup.display().to_string()), "{done}");
    assert!(backup.starts_with(state.path()), "outside the managed root");
    assert_eq!(
        std::fs::read_to_string(&backup).expect("read"),
        "hand written\n"
    );
    // The copy is the original as it was, so `cp -p` restores mode and owner too.
    let meta = std::fs::metadata(&backup).expect("stat backup");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    if root {
        use std::os::unix::fs::MetadataExt;
        assert_eq!((meta.uid(), meta.gid()), (4321, 8765));
    }
    assert!(!owned.created);

    // Phoenix's own file changes later: no "not managed", no second backup.
    let s2 = spec(&p, "phoenix v2\n", None);
    let Check::Drift { diff } = conv.check(&s2, &cx()).await.expect("check") else {
        panic!("drift expected");
    };
    assert!(!diff.contains("not managed"), "{diff}");
    conv.apply(&s2, &cx()).await.expect("apply");
    let backups = std::fs::read_dir(state.path().join("backups"))
        .expect("list")
        .count();
    assert_eq!(backups, 1);

    // No longer declared: taken over, so left in place and released.
    let left = conv.leftovers(&guest(&[])).await.expect("leftovers");
    assert_eq!(left.len(), 1);
    assert!(left[0].diff.starts_with("keep "), "{}", left[0].diff);
    conv.remove(&left[0]).await.expect("release");
    assert_eq!(
        std::fs::read_to_string(&p).expect("still there"),
        "phoenix v2\n"
    );
    assert!(ledger.file(&p).is_none());
}

#[tokio::test]
async fn only_files_phoenix_created_and_nobody_changed_are_removed_when_undeclared() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conv = FileConverger::new(vec![dir.path().to_path_buf()]);
    let (a, b, c) = (
        dir.path().join("a.conf"),
        dir.path().join("b.conf"),
        dir.path().join("c.conf"),
    );
    let specs = [
        spec(&a, "a", None),
        spec(&b, "b", None),
        spec(&c, "c", None),
    ];
    for s in &specs {
        conv.apply(s, &cx()).await.expect("apply");
    }
    std::fs::write(&b, "edited by hand").expect("edit");
    // c is still declared; a and b are not.
    let left = conv
        .leftovers(&guest(&specs[2..]))
        .await
        .expect("leftovers");
    let diffs: Vec<&str> = left.iter().map(|l| l.diff.as_str()).collect();
    assert_eq!(left.len(), 2, "{diffs:?}");
    assert!(
        diffs
            .iter()
            .any(|d| d.starts_with("- remove ") && d.contains("a.conf")),
        "{diffs:?}"
    );
    assert!(
        diffs.iter().any(|d| d.starts_with("keep ")
            && d.contains("b.conf")
            && d.contains("changed on the guest")),
        "{diffs:?}"
    );
    for l in &left {
        conv.remove(l).await.expect("remove");
    }
    assert!(!a.exists(), "created by Phoenix: removed");
    assert_eq!(std::fs::read_to_string(&b).expect("kept"), "edited by hand");
    assert!(c.exists());
    assert!(
        conv.leftovers(&guest(&specs[2..]))
            .await
            .expect("again")
            .is_empty()
    );
}
