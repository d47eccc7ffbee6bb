use super::{
    AbsPath, AccountName, ContainerName, Ensure, FileMode, GuestSpec, Resource, ResourceRef,
    RunState, SimpleName, TrustDomain, UnitName,
};
use serde::{Deserialize, Serialize};

/// A guest service certificate (nginx, Traefik, Portainer). The key is generated in the
/// guest and never leaves it; the coordinator signs the CSR.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CertSpec {
    pub name: SimpleName,
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
    pub owner: Option<AccountName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<AccountName>,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Reload {
    /// `systemctl reload <unit>`.
    ServiceReload(UnitName),
    /// `systemctl restart <unit>`.
    ServiceRestart(UnitName),
    /// Restart a Docker container by name, through the engine API.
    ContainerRestart(ContainerName),
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
        if self.key_mode.bits() & 0o007 != 0 {
            return Err(format!(
                "key_mode {:04o} makes the private key world-accessible",
                self.key_mode.bits()
            ));
        }
        if self.ttl_seconds < 60 {
            return Err("ttl_seconds must be at least 60".into());
        }
        Ok(())
    }
}

impl CertSpec {
    /// What the agent can carry out: a reload the spec itself makes impossible is refused
    /// here, before the agent writes a key it would then fail to load. A service the spec
    /// removes or keeps stopped cannot be reloaded or restarted, and `systemctl reload`
    /// fails on a unit Phoenix generates without `exec_reload`.
    pub(super) fn check_reloads(&self, resources: &[Resource]) -> Result<(), String> {
        for r in &self.reload {
            let (unit, reload) = match r {
                Reload::ServiceReload(u) => (u, true),
                Reload::ServiceRestart(u) => (u, false),
                // Containers come from stacks, which the agent creates by the same name.
                Reload::ContainerRestart(_) => continue,
            };
            let declared = resources.iter().find_map(|x| match x {
                Resource::Service(s) if s.name == *unit => Some(s),
                _ => None,
            });
            let Some(s) = declared else { continue };
            if s.ensure == Ensure::Absent || s.state == Some(RunState::Stopped) {
                return Err(format!(
                    "reloads service {unit}, which this spec removes or keeps stopped"
                ));
            }
            if reload && s.unit.as_ref().is_some_and(|u| u.exec_reload.is_empty()) {
                return Err(format!(
                    "service_reload {unit}: Phoenix generates that unit without exec_reload, so systemctl reload would fail; use service_restart or give the unit exec_reload"
                ));
            }
        }
        Ok(())
    }
}

/// A service certificate name that would let its holder pass for a Phoenix identity.
///
/// Identities are recognised by their `spiffe://` URI (docs/design/0005), which service
/// certificates never carry; the coordinator's DNS name is reserved as well because agents
/// before that rule authenticated the coordinator by it alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refused: service certificate name {name:?} {rule} (service certs may not carry identity names)"
)]
pub struct ReservedName {
    pub name: String,
    /// Which rule the name breaks, with the identity it collides with.
    pub rule: String,
}

/// Whether `name` (a service certificate's CN or SAN) is reserved for identities of `td`:
/// a URI, the coordinator's name `coordinator.<td>` or any name under it, or a wildcard
/// covering one of those (compared label by label, `*` matching within one label).
pub fn reserved_name(td: &TrustDomain, name: &str) -> Option<ReservedName> {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    let refuse = |rule: String| {
        Some(ReservedName {
            name: name.to_string(),
            rule,
        })
    };
    if n.contains("://") || n.starts_with("spiffe:") || n.starts_with("uri:") {
        return refuse(format!(
            "is a URI; identities are spiffe://{td}/... URIs and only the coordinator's own CA path issues them"
        ));
    }
    let coordinator = td.coordinator_dns();
    if n == coordinator {
        return refuse(format!("is the reserved coordinator name {coordinator}"));
    }
    if n.ends_with(&format!(".{coordinator}")) {
        return refuse(format!(
            "is under the reserved coordinator name {coordinator}"
        ));
    }
    if n.contains('*') {
        let labels: Vec<&str> = n.split('.').collect();
        let reserved: Vec<&str> = coordinator.split('.').collect();
        if labels.len() == reserved.len()
            && labels
                .iter()
                .zip(&reserved)
                .all(|(l, r)| label_matches(l.as_bytes(), r.as_bytes()))
        {
            return refuse(format!(
                "covers the reserved coordinator name {coordinator}"
            ));
        }
    }
    None
}

/// `pattern` (one DNS label, `*` for any run of characters) matches `label`. Bytes, not
/// chars: names reaching the signing RPC come from the network unvalidated.
fn label_matches(pattern: &[u8], label: &[u8]) -> bool {
    match pattern.iter().position(|b| *b == b'*') {
        None => pattern == label,
        Some(star) => {
            let (head, tail) = (&pattern[..star], &pattern[star + 1..]);
            label.starts_with(head)
                && (head.len()..=label.len()).any(|i| label_matches(tail, &label[i..]))
        }
    }
}

impl CertSpec {
    /// The first of the common name and SANs that is reserved for an identity of `td`.
    pub fn check_identity_names(&self, td: &TrustDomain) -> Result<(), ReservedName> {
        match std::iter::once(&self.common_name)
            .chain(&self.sans)
            .find_map(|n| reserved_name(td, n))
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Every certificate of `spec` that names a reserved identity, as "cert NAME: reason".
pub fn reserved_cert_names(spec: &GuestSpec, td: &TrustDomain) -> Vec<String> {
    spec.resources
        .iter()
        .filter_map(|r| match r {
            Resource::Cert(c) => c
                .check_identity_names(td)
                .err()
                .map(|e| format!("cert {}: {e}", c.name)),
            _ => None,
        })
        .collect()
}

/// The `SimpleName` rule for a name still held as a `String` (the stack's).
pub(crate) fn simple_name(what: &str, name: &str) -> Result<(), String> {
    super::names::check_simple(name).map_err(|reason| format!("{what} name {name:?} {reason}"))
}
