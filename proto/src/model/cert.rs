use super::file::valid_account;
use super::service::valid_unit_name;
use super::{AbsPath, FileMode, ResourceRef};
use serde::{Deserialize, Serialize};

/// A guest service certificate (nginx, Traefik, Portainer). The key is generated in the
/// guest and never leaves it; the coordinator signs the CSR.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertSpec {
    pub name: String,
    pub common_name: String,
    /// DNS names and IP addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sans: Vec<String>,
    pub cert_path: AbsPath,
    pub key_path: AbsPath,
    /// Leaf + intermediates; unset appends the chain to `cert_path` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_path: Option<AbsPath>,
    /// Where to place the CA bundle (the manifest's `include_ca`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_path: Option<AbsPath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Mode of the cert and chain files.
    #[serde(default = "cert_mode")]
    pub mode: FileMode,
    /// Mode of the key; owner and mode are restored on every renewal.
    #[serde(default = "key_mode")]
    pub key_mode: FileMode,
    /// Requested lifetime; the CA may clamp it.
    #[serde(default = "default_ttl")]
    pub ttl_seconds: u64,
    /// Run once after each renewal, only after the new files verified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reload: Vec<Reload>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<ResourceRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Reload {
    /// `systemctl reload <unit>`.
    ServiceReload(String),
    /// `systemctl restart <unit>`.
    ServiceRestart(String),
    /// Restart a Docker container by name.
    ContainerRestart(String),
}

fn cert_mode() -> FileMode {
    FileMode::try_from("0644".to_string()).unwrap_or_else(|_| unreachable!())
}

fn key_mode() -> FileMode {
    FileMode::try_from("0600".to_string()).unwrap_or_else(|_| unreachable!())
}

fn default_ttl() -> u64 {
    24 * 3600
}

impl CertSpec {
    pub(super) fn validate(&self) -> Result<(), String> {
        simple_name("cert", &self.name)?;
        let host_like = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'*'))
        };
        if !host_like(&self.common_name) {
            return Err(format!(
                "common_name {:?} is not a host name",
                self.common_name
            ));
        }
        if let Some(bad) = self.sans.iter().find(|s| !host_like(s)) {
            return Err(format!("SAN {bad:?} is not a DNS name or IP address"));
        }
        if self.cert_path == self.key_path {
            return Err("cert_path and key_path are the same file".into());
        }
        for (what, v) in [("owner", &self.owner), ("group", &self.group)] {
            if let Some(v) = v
                && !valid_account(v)
            {
                return Err(format!(
                    "{what} {v:?} is not a user/group name or numeric id"
                ));
            }
        }
        if self.key_mode.bits() & 0o007 != 0 {
            return Err(format!(
                "key_mode {:04o} makes the private key world-accessible",
                self.key_mode.bits()
            ));
        }
        if self.ttl_seconds < 60 {
            return Err("ttl_seconds must be at least 60".into());
        }
        for r in &self.reload {
            match r {
                Reload::ServiceReload(u) | Reload::ServiceRestart(u) => valid_unit_name(u)?,
                Reload::ContainerRestart(c) => simple_name("container", c)?,
            }
        }
        Ok(())
    }
}

/// Names used as identifiers (stack, cert, exec): letters, digits, `-_.`.
pub(crate) fn simple_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} name {name:?} may only contain letters, digits, '-', '_' and '.'"
        ))
    }
}
