//! A signed local apt repository built on the host for the apt tests: packages made with
//! dpkg-deb, indexed with dpkg-scanpackages and apt-ftparchive, its InRelease clear-signed
//! with a fresh ed25519 key from gpg. Flat layout (`Suites: ./`), served as `file:` URI
//! from a read-only bind mount into the guest.

use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;

pub struct Repo {
    dir: TempDir,
    gnupg: TempDir,
    /// The public key, ASCII-armored, for the apt source's `signing_key`.
    pub key: String,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True when the host has the tools to build a repository.
pub fn tools_present() -> bool {
    ["dpkg-deb", "dpkg-scanpackages", "apt-ftparchive", "gpg"]
        .iter()
        .all(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// A new gpg home with one signing key; returns (home, armored public key).
pub fn signing_key(uid: &str) -> (TempDir, String) {
    let home = tempfile::tempdir().expect("gnupg home");
    let gpg = |args: &[&str]| {
        let mut c = Command::new("gpg");
        c.args(["--batch", "--quiet", "--homedir"])
            .arg(home.path())
            .args(args);
        c
    };
    run(&mut gpg(&[
        "--passphrase",
        "",
        "--quick-gen-key",
        uid,
        "ed25519",
        "sign",
        "never",
    ]));
    let key = run(&mut gpg(&["--armor", "--export"]));
    (home, key)
}

impl Repo {
    /// Builds `packages` as (name, version) pairs, all `Architecture: all`; each installs
    /// `/usr/share/<name>/version` containing its version.
    pub fn build(packages: &[(&str, &str)]) -> Repo {
        Self::build_with_postinst(packages, &[])
    }

    /// As `build`; the packages named in `postinst` get that script as their postinst.
    pub fn build_with_postinst(packages: &[(&str, &str)], postinst: &[(&str, &str)]) -> Repo {
        let dir = tempfile::tempdir().expect("repo dir");
        let build = tempfile::tempdir().expect("build dir");
        for (name, version) in packages {
            let root = build.path().join(format!("{name}-{version}"));
            std::fs::create_dir_all(root.join("DEBIAN")).expect("mkdir DEBIAN");
            std::fs::create_dir_all(root.join("usr/share").join(name)).expect("mkdir share");
            std::fs::write(
                root.join("DEBIAN/control"),
                format!(
                    "Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: Phoenix Tests <tests@phoenix.invalid>\nDescription: Phoenix test package\n"
                ),
            )
            .expect("write control");
            if let Some((_, script)) = postinst.iter().find(|(n, _)| n == name) {
                let path = root.join("DEBIAN/postinst");
                std::fs::write(&path, script).expect("write postinst");
                run(Command::new("chmod").arg("0755").arg(&path));
            }
            std::fs::write(root.join("usr/share").join(name).join("version"), version)
                .expect("write payload");
            let deb = dir.path().join(format!("{name}_{version}_all.deb"));
            run(Command::new("dpkg-deb")
                .args(["--root-owner-group", "--build"])
                .arg(&root)
                .arg(&deb));
        }
        let packages = run(Command::new("dpkg-scanpackages")
            .args(["-m", "."])
            .current_dir(dir.path()));
        std::fs::write(dir.path().join("Packages"), packages).expect("write Packages");
        let release = run(Command::new("apt-ftparchive")
            .args(["release", "."])
            .current_dir(dir.path()));
        std::fs::write(dir.path().join("Release"), release).expect("write Release");
        let (gnupg, key) = signing_key("Phoenix Test Repo <repo@phoenix.invalid>");
        run(Command::new("gpg")
            .args(["--batch", "--quiet", "--homedir"])
            .arg(gnupg.path())
            .args(["--clearsign", "-o"])
            .arg(dir.path().join("InRelease"))
            .arg(dir.path().join("Release")));
        // Readable by apt's unprivileged `_apt` user inside the guest.
        run(Command::new("chmod").arg("-R").arg("a+rX").arg(dir.path()));
        Repo { dir, gnupg, key }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn gnupg(&self) -> PathBuf {
        self.gnupg.path().to_owned()
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.gnupg.path())
            .args(["--kill", "gpg-agent"])
            .output();
    }
}
