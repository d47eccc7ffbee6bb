//! `/etc/phoenix-agent/agent.toml`: the agent's options under their flag names
//! (`--drift-interval 300` is `drift-interval = 300`). The binary applies a file value only
//! where the flag (or its environment variable) was not given, so flags win over the file
//! and the file over the built-in default.
//!
//! Unknown keys and bad values are refused with the file, the key and the reason: a typo
//! in a guest's agent config must stop the start, not silently fall back to a default.

use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};

/// Read when `--config` is not given, if it exists.
pub const DEFAULT_PATH: &str = "/etc/phoenix-agent/agent.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// toml's message names the key, its line and column, and the reason.
    #[error("config {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The file's contents; each key is a `phoenix-agent` flag.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentConfig {
    pub state_dir: Option<AbsDir>,
    /// Directories under which managed files may live (replaces the default list).
    pub file_root: Option<Vec<AbsDir>>,
    pub drift_interval: Option<Seconds>,
    pub backoff_max: Option<Seconds>,
    pub shutdown_deadline: Option<Seconds>,
    pub session_open_timeout: Option<Seconds>,
}

/// An absolute directory path.
#[derive(Debug, Clone, PartialEq)]
pub struct AbsDir(pub PathBuf);

impl<'de> Deserialize<'de> for AbsDir {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = PathBuf::from(String::deserialize(d)?);
        if !p.is_absolute() {
            return Err(serde::de::Error::custom(format!(
                "{} is not an absolute path",
                p.display()
            )));
        }
        Ok(AbsDir(p))
    }
}

/// A whole number of seconds, at least 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seconds(pub u64);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u64::deserialize(d)? {
            0 => Err(serde::de::Error::custom("must be at least 1 (seconds)")),
            n => Ok(Seconds(n)),
        }
    }
}

impl AgentConfig {
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string().trim_end().to_string(),
        })
    }

    /// `explicit`: named by `--config`, so it must exist; otherwise the default path is
    /// read only if it is there.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/agent.example.toml");
        let text = std::fs::read_to_string(&path).expect("read the example");
        let c = AgentConfig::parse(&path, &text).expect("the example is valid");
        assert_eq!(c.drift_interval, Some(Seconds(300)));
        assert_eq!(
            c.file_root.map(|r| r.len()),
            Some(5),
            "the example lists the default roots"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_name_file_key_and_reason() {
        let path = Path::new(DEFAULT_PATH);
        for (toml, key, reason) in [
            ("drift-intervall = 60\n", "drift-intervall", "unknown field"),
            ("drift-interval = 0\n", "drift-interval", "at least 1"),
            ("backoff-max = \"soon\"\n", "backoff-max", "invalid type"),
            (
                "file-root = [\"etc\"]\n",
                "file-root",
                "not an absolute path",
            ),
        ] {
            let msg = AgentConfig::parse(path, toml).expect_err(toml).to_string();
            assert!(msg.contains(DEFAULT_PATH), "{msg}");
            assert!(msg.contains(key), "{key}: {msg}");
            assert!(msg.contains(reason), "{reason}: {msg}");
        }
    }

    #[test]
    fn an_explicit_config_must_exist_the_default_may_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("agent.toml");
        assert_eq!(
            AgentConfig::load(&missing, false).expect("absent default"),
            AgentConfig::default()
        );
        let err = AgentConfig::load(&missing, true).expect_err("explicit and absent");
        assert!(err.to_string().contains("agent.toml"), "{err}");
    }
}
