use super::{AccountName, ModelError, ResourceRef};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Component, Path};

/// An absolute, lexically normalized path: no `.`/`..` components, no NUL, no trailing
/// slash. Whether it lies under an allowed root is the agent's check, not the model's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(try_from = "String", into = "String")]
pub struct AbsPath(String);

impl AbsPath {
    pub fn as_path(&self) -> &Path {
        Path::new(&self.0)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AbsPath {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, ModelError> {
        let p = Path::new(&s);
        let normalized = p.is_absolute()
            && !s.contains('\0')
            && (s == "/" || !s.ends_with('/'))
            && !s.contains("//")
            && s.split('/').skip(1).all(|seg| seg != "." && seg != "..")
            && p.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if normalized && s.len() <= 4096 {
            Ok(AbsPath(s))
        } else {
            Err(ModelError::Path(s))
        }
    }
}

impl From<AbsPath> for String {
    fn from(p: AbsPath) -> String {
        p.0
    }
}

impl fmt::Display for AbsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Permission bits, written in JSON as an octal string ("0644") so they read as in `ls -l`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(try_from = "String", into = "String")]
pub struct FileMode(u32);

impl FileMode {
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl TryFrom<String> for FileMode {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, ModelError> {
        match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
            Ok(v) if v <= 0o7777 && !s.is_empty() => Ok(FileMode(v)),
            _ => Err(ModelError::Mode(s)),
        }
    }
}

impl From<FileMode> for String {
    fn from(m: FileMode) -> String {
        format!("{:04o}", m.0)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Ensure {
    #[default]
    Present,
    Absent,
}

/// A managed regular file, written atomically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub path: AbsPath,
    #[serde(default)]
    pub ensure: Ensure,
    /// Full content; Phoenix owns the whole file.
    #[serde(default)]
    pub content: String,
    /// Unset keeps the mode of an existing file (0644 for a new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<FileMode>,
    /// User name or numeric uid; unset leaves ownership alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<AccountName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<AccountName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<ResourceRef>,
}

impl FileSpec {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.ensure == Ensure::Absent && !self.content.is_empty() {
            return Err("content given for a file that must be absent".into());
        }
        Ok(())
    }
}
