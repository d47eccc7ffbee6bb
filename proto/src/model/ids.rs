use super::ModelError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A Proxmox guest id (LXC CTID or VM vmid). Proxmox allows 100..=999999999; we accept
/// 1.. so small test ids work, and reject 0 (protobuf's "unset").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(try_from = "u32", into = "u32")]
pub struct GuestId(u32);

impl GuestId {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for GuestId {
    type Error = ModelError;
    fn try_from(v: u32) -> Result<Self, ModelError> {
        if (1..=999_999_999).contains(&v) {
            Ok(GuestId(v))
        } else {
            Err(ModelError::GuestId(v.to_string()))
        }
    }
}

impl std::str::FromStr for GuestId {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        let v: u32 = s
            .trim()
            .parse()
            .map_err(|_| ModelError::GuestId(s.to_string()))?;
        GuestId::try_from(v)
    }
}

impl From<GuestId> for u32 {
    fn from(g: GuestId) -> u32 {
        g.0
    }
}

impl fmt::Display for GuestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `<kind>:<name>`, how resources name each other in `depends_on`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(try_from = "String", into = "String")]
pub struct ResourceRef(String);

impl ResourceRef {
    pub fn new(kind: &str, name: &str) -> Self {
        ResourceRef(format!("{kind}:{name}"))
    }
    pub fn kind(&self) -> &str {
        self.0.split_once(':').map(|(k, _)| k).unwrap_or("")
    }
    pub fn name(&self) -> &str {
        self.0.split_once(':').map(|(_, n)| n).unwrap_or("")
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ResourceRef {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, ModelError> {
        match s.split_once(':') {
            Some((k, n))
                if !n.is_empty()
                    && matches!(
                        k,
                        "file" | "package" | "apt_source" | "service" | "stack" | "cert" | "exec"
                    ) =>
            {
                Ok(ResourceRef(s))
            }
            _ => Err(ModelError::ResourceRef(s)),
        }
    }
}

impl From<ResourceRef> for String {
    fn from(r: ResourceRef) -> String {
        r.0
    }
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// SPIFFE trust domain, e.g. `phoenix.lab`. Identities are
/// `spiffe://<trust-domain>/guest/<id>` and `spiffe://<trust-domain>/coordinator`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn guest_uri(&self, guest: GuestId) -> String {
        format!("spiffe://{}/guest/{}", self.0, guest)
    }
    pub fn coordinator_uri(&self) -> String {
        format!("spiffe://{}/coordinator", self.0)
    }
    /// DNS name the coordinator's certificate carries and agents verify, independent of
    /// the address they dial (which may be an IP or a NAT'd name).
    pub fn coordinator_dns(&self) -> String {
        format!("coordinator.{}", self.0)
    }
    /// Parses `spiffe://<td>/guest/<id>`; `None` for any other identity in this domain.
    pub fn parse_guest_uri(&self, uri: &str) -> Option<GuestId> {
        let rest = uri
            .strip_prefix("spiffe://")?
            .strip_prefix(self.0.as_str())?;
        rest.strip_prefix("/guest/")?.parse().ok()
    }
}

impl TryFrom<String> for TrustDomain {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, ModelError> {
        let ok = !s.is_empty()
            && s.len() <= 200
            && s.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        if ok {
            Ok(TrustDomain(s))
        } else {
            Err(ModelError::TrustDomain(s))
        }
    }
}

impl From<TrustDomain> for String {
    fn from(t: TrustDomain) -> String {
        t.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
