//! A private step-ca per test (so one test may stop its CA without disturbing others),
//! made with the scripts tests/setup/10-stepca.sh exports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct StepCa {
    pub dir: PathBuf,
    pub env: HashMap<String, String>,
    ctl: String,
}

impl StepCa {
    /// `None` (after a loud skip) when the setup did not provide step-ca.
    pub fn start(dir: &Path) -> Option<StepCa> {
        let var = |k: &str| std::env::var(k).ok();
        let (Some(init), Some(bin), Some(keytool), Some(ctl)) = (
            var("PHOENIX_STEPCA_INIT"),
            var("PHOENIX_STEPCA_BIN"),
            var("PHOENIX_STEPCA_KEYTOOL"),
            var("PHOENIX_STEPCA_CTL"),
        ) else {
            crate::require(
                "step-ca (run tests/run-all.sh, which builds and exports it)",
                false,
            );
            return None;
        };
        let ok = Command::new("bash")
            .args([&init, &dir.display().to_string(), &bin, &keytool])
            .status()
            .expect("run init-ca.sh")
            .success();
        assert!(ok, "init-ca.sh failed");
        let env: HashMap<String, String> = std::fs::read_to_string(dir.join("stepca.env"))
            .expect("stepca.env")
            .lines()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        let ca = StepCa {
            dir: dir.to_path_buf(),
            env,
            ctl,
        };
        ca.ctl("start");
        Some(ca)
    }

    pub fn ctl(&self, cmd: &str) {
        let ok = Command::new("bash")
            .args([&self.ctl, cmd, &self.dir.display().to_string()])
            .status()
            .expect("run ctl.sh")
            .success();
        assert!(ok, "ctl.sh {cmd} failed");
    }

    pub fn get(&self, k: &str) -> &str {
        self.env.get(k).map(String::as_str).unwrap_or_default()
    }

    /// `phoenix serve` flags selecting this CA.
    pub fn serve_args(&self) -> Vec<String> {
        vec![
            "--ca".into(),
            "step-ca".into(),
            "--step-ca-url".into(),
            self.get("PHOENIX_STEPCA_URL").into(),
            "--step-ca-fingerprint".into(),
            self.get("PHOENIX_STEPCA_FINGERPRINT").into(),
            "--step-ca-provisioner".into(),
            self.get("PHOENIX_STEPCA_PROVISIONER").into(),
            "--step-ca-jwe".into(),
            self.get("PHOENIX_STEPCA_JWE").into(),
            "--step-ca-password-file".into(),
            self.get("PHOENIX_STEPCA_PASSWORD_FILE").into(),
        ]
    }
}

impl Drop for StepCa {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .args([&self.ctl, "stop", &self.dir.display().to_string()])
            .status();
    }
}
