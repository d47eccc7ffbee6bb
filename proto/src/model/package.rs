use super::secret::SecretRef;
use super::{PackageName, ResourceRef, SimpleName};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum PackageState {
    #[default]
    Present,
    Absent,
    /// Upgrade to the candidate version on every pass.
    Latest,
}

/// An apt/dpkg package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PackageSpec {
    pub name: PackageName,
    /// Exact Debian version to pin (`apt-get install name=version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    pub state: PackageState,
    /// `apt-mark hold`, so unattended upgrades leave it alone.
    #[serde(default)]
    pub hold: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<ResourceRef>,
}

impl PackageSpec {
    pub(super) fn validate(&self) -> Result<(), String> {
        if let Some(v) = &self.version {
            // Debian policy 5.6.12: [epoch:]upstream[-revision]; no shell metacharacters.
            let ok = !v.is_empty()
                && v.as_bytes()[0].is_ascii_digit()
                && v.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-' | b'~' | b':')
                });
            if !ok {
                return Err(format!("version {v:?} is not a Debian version"));
            }
            if self.state != PackageState::Present {
                return Err("a version pin needs state \"present\"".into());
            }
        }
        if self.hold && self.state == PackageState::Absent {
            return Err("hold makes no sense for an absent package".into());
        }
        Ok(())
    }
}

/// An apt source (deb822 `.sources` file under /etc/apt/sources.list.d) with its
/// signing key, e.g. the Docker or NVIDIA repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AptSourceSpec {
    /// File stem: `/etc/apt/sources.list.d/<name>.sources`.
    pub name: SimpleName,
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,
    /// ASCII-armored or binary key, written to `/etc/apt/keyrings/<name>.asc|.gpg`
    /// and referenced by `Signed-By`.
    pub signing_key: KeySource,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<ResourceRef>,
}

/// Where a key's bytes come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KeySource {
    /// Inline ASCII-armored key (public keys are not secrets).
    Armored(String),
    /// Read on the agent.
    Secret(SecretRef),
}

impl AptSourceSpec {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.uris.is_empty() || self.suites.is_empty() {
            return Err("an apt source needs at least one URI and one suite".into());
        }
        for s in self
            .uris
            .iter()
            .chain(&self.suites)
            .chain(&self.components)
            .chain(&self.architectures)
        {
            if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "apt source field {s:?} contains whitespace or is empty"
                ));
            }
        }
        Ok(())
    }
}
