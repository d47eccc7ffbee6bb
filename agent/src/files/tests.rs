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
