use super::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

const VICTIM: &[u8] = b"root:secret-hash:19000:0:99999:7:::\n";

fn attrs(mode: u32) -> FileAttrs {
    FileAttrs {
        mode,
        uid: None,
        gid: None,
    }
}

/// A root directory and, outside it, a victim file the writes must never touch.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    victim: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    fs::create_dir(&root).expect("mkdir root");
    let victim = tmp.path().join("victim");
    fs::write(&victim, VICTIM).expect("write victim");
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).expect("chmod victim");
    Fixture {
        _tmp: tmp,
        root,
        victim,
    }
}

impl Fixture {
    fn assert_victim_untouched(&self) {
        assert_eq!(fs::read(&self.victim).expect("read victim"), VICTIM);
        let mode = fs::metadata(&self.victim).expect("stat").mode() & 0o7777;
        assert_eq!(mode, 0o600, "victim mode unchanged");
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn writes_create_dirs_replace_content_and_leave_no_temp() {
    let fx = fixture();
    let p = fx.root.join("a/b/f.conf");
    write_beneath(&fx.root, &p, b"one", attrs(0o600), true).expect("first write");
    write_beneath(&fx.root, &p, b"two", attrs(0o644), true).expect("second write");
    let got = read_beneath(&fx.root, &p).expect("read").expect("exists");
    assert_eq!(got.bytes, b"two");
    assert_eq!(got.mode, 0o644);
    assert_eq!(entries(&fx.root.join("a/b")), ["f.conf"]);
    assert_eq!(
        read_beneath(&fx.root, &fx.root.join("a/none")).expect("read"),
        None
    );
    assert_eq!(
        read_beneath(&fx.root, &fx.root.join("x/none")).expect("read"),
        None
    );
}

#[test]
fn missing_parent_is_an_error_unless_asked_to_create() {
    let fx = fixture();
    let err = write_beneath(&fx.root, &fx.root.join("d/f"), b"x", attrs(0o644), false)
        .expect_err("no parent");
    assert!(err.to_string().contains("open directory"), "{err}");
}

#[test]
fn link_at_the_old_predictable_temp_name_is_not_followed() {
    let fx = fixture();
    symlink(&fx.victim, fx.root.join(".index.html.phoenix-tmp")).expect("plant");
    let p = fx.root.join("index.html");
    write_beneath(&fx.root, &p, b"hello", attrs(0o644), true).expect("write");
    fx.assert_victim_untouched();
    assert_eq!(fs::read(&p).expect("read"), b"hello");
    assert!(
        !fs::symlink_metadata(&p)
            .expect("stat")
            .file_type()
            .is_symlink()
    );
    // The stale temp (a link here) was removed, not followed.
    assert_eq!(entries(&fx.root), ["index.html"]);
}

#[test]
fn link_at_the_target_is_refused_on_read_and_replaced_on_write() {
    let fx = fixture();
    let p = fx.root.join("index.html");
    symlink(&fx.victim, &p).expect("plant");
    let err = read_beneath(&fx.root, &p).expect_err("must refuse");
    assert!(matches!(err, FsError::Symlink { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("refusing to follow symbolic link {}", p.display())
    );
    let err = set_attrs_beneath(&fx.root, &p, attrs(0o666)).expect_err("must refuse");
    assert!(matches!(err, FsError::Symlink { .. }), "{err}");
    write_beneath(&fx.root, &p, b"hello", attrs(0o644), true).expect("write");
    fx.assert_victim_untouched();
    assert_eq!(fs::read(&p).expect("read"), b"hello");
    assert!(remove_beneath(&fx.root, &p).expect("remove"));
    fx.assert_victim_untouched();
}

#[test]
fn removing_a_planted_link_removes_the_link_only() {
    let fx = fixture();
    let p = fx.root.join("gone");
    symlink(&fx.victim, &p).expect("plant");
    assert!(remove_beneath(&fx.root, &p).expect("remove"));
    assert!(!remove_beneath(&fx.root, &p).expect("remove again"));
    fx.assert_victim_untouched();
}

#[test]
fn symlinked_parent_directory_is_refused_and_named() {
    let fx = fixture();
    let outside = fx.victim.parent().expect("tmp").join("outside");
    fs::create_dir(&outside).expect("mkdir");
    fs::write(outside.join("victim"), VICTIM).expect("write");
    let link = fx.root.join("www");
    symlink(&outside, &link).expect("plant");
    let p = link.join("victim");
    let err = write_beneath(&fx.root, &p, b"pwned", attrs(0o644), true).expect_err("refuse");
    assert_eq!(
        err.to_string(),
        format!("refusing to follow symbolic link {}", link.display())
    );
    assert!(matches!(
        read_beneath(&fx.root, &p),
        Err(FsError::Symlink { .. })
    ));
    assert!(matches!(
        remove_beneath(&fx.root, &p),
        Err(FsError::Symlink { .. })
    ));
    assert_eq!(fs::read(outside.join("victim")).expect("read"), VICTIM);
    assert_eq!(entries(&outside), ["victim"]);
}

#[test]
fn paths_outside_or_escaping_the_root_are_refused() {
    let fx = fixture();
    for p in [
        fx.victim.clone(),
        fx.root.join("../victim"),
        fx.root.clone(),
        PathBuf::from("relative"),
    ] {
        let err = write_beneath(&fx.root, &p, b"x", attrs(0o644), true).expect_err("refuse");
        assert!(matches!(err, FsError::NotBeneath { .. }), "{p:?}: {err}");
    }
    fx.assert_victim_untouched();
}

#[test]
fn hard_link_is_not_chmodded_in_place() {
    let fx = fixture();
    let p = fx.root.join("linked");
    fs::hard_link(&fx.victim, &p).expect("link");
    let err = set_attrs_beneath(&fx.root, &p, attrs(0o644)).expect_err("refuse");
    assert!(matches!(err, FsError::HardLinked { links: 2, .. }), "{err}");
    fx.assert_victim_untouched();
}

#[test]
fn fifo_at_the_target_is_refused_without_blocking() {
    let fx = fixture();
    let p = fx.root.join("pipe");
    nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o644)).expect("mkfifo");
    let err = read_beneath(&fx.root, &p).expect_err("refuse");
    assert!(matches!(err, FsError::NotRegular { .. }), "{err}");
}

#[test]
fn attrs_are_set_through_the_fd() {
    let fx = fixture();
    let p = fx.root.join("f");
    write_beneath(&fx.root, &p, b"x", attrs(0o600), true).expect("write");
    set_attrs_beneath(&fx.root, &p, attrs(0o640)).expect("chmod");
    assert_eq!(fs::metadata(&p).expect("stat").mode() & 0o7777, 0o640);
}

#[test]
fn root_of_picks_the_longest_root() {
    let roots = [PathBuf::from("/srv"), PathBuf::from("/srv/www")];
    assert_eq!(
        root_of(&roots, Path::new("/srv/www/a")),
        Some(Path::new("/srv/www"))
    );
    assert_eq!(
        root_of(&roots, Path::new("/srv/x")),
        Some(Path::new("/srv"))
    );
    assert_eq!(root_of(&roots, Path::new("/srv")), None);
    assert_eq!(root_of(&roots, Path::new("/etc/x")), None);
}
