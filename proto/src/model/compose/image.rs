//! `ImageRef`: a container image reference, checked against Docker's reference grammar
//! (`[host[:port]/]path[:tag][@algo:hex]`) so a typo fails at compile time with the
//! service named, not at pull time on the guest.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(try_from = "String", into = "String")]
pub struct ImageRef(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {value:?}: {reason}")]
pub struct ImageRefError {
    pub value: String,
    pub reason: &'static str,
}

impl ImageRef {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ImageRef {
    type Error = ImageRefError;
    fn try_from(value: String) -> Result<Self, ImageRefError> {
        match check(&value) {
            Ok(()) => Ok(ImageRef(value)),
            Err(reason) => Err(ImageRefError { value, reason }),
        }
    }
}

impl From<ImageRef> for String {
    fn from(i: ImageRef) -> String {
        i.0
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest reference Docker accepts for the name part.
const MAX_NAME: usize = 255;

fn check(v: &str) -> Result<(), &'static str> {
    if v.is_empty() {
        return Err("empty");
    }
    let (rest, digest) = match v.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (v, None),
    };
    if let Some(d) = digest {
        let ok = d.split_once(':').is_some_and(|(algo, hex)| {
            !algo.is_empty()
                && algo
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && hex.len() >= 32
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if !ok {
            return Err("the digest must be algorithm:hex, e.g. sha256:<64 hex digits>");
        }
    }
    // A tag is after the last ':' that follows the last '/' (a registry port comes before).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return Err("the tag may only contain letters, digits, '_', '.' and '-' (at most 128)");
        }
    }
    if name.is_empty() || name.len() > MAX_NAME {
        return Err("the name must be 1 to 255 characters");
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // The first part is a registry host when it looks like one, as Docker decides it.
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        let host = parts.remove(0);
        let (h, port) = match host.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        };
        let host_ok = !h.is_empty()
            && h.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
        if !host_ok || !port_ok {
            return Err("the registry must be a host name with an optional :port");
        }
    }
    if !parts.iter().all(|p| path_component(p)) {
        return Err(
            "each path component must be lowercase letters and digits, joined by '.', '_', '__' or '-'",
        );
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn path_component(p: &str) -> bool {
    let b = p.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &p[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-')) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    // In tests a panic is the failure report.
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn docker_references_are_accepted_and_typos_named() {
        for ok in [
            "busybox",
            "busybox:1.36",
            "phoenix-test/busybox:1",
            "127.0.0.1:55781/phoenix-test/busybox:pulled",
            "localhost/app",
            "ghcr.io/org/my_app__x:v1.2.3-rc1",
            "vllm/vllm-openai:v0.10.2",
            "redis@sha256:4c9e1b7a0f6d3e2c8b5a4f3e2d1c0b9a8f7e6d5c4b3a29180716253443526170",
            "redis:7@sha256:4c9e1b7a0f6d3e2c8b5a4f3e2d1c0b9a8f7e6d5c4b3a29180716253443526170",
        ] {
            assert!(ImageRef::try_from(ok.to_string()).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("Busybox", "lowercase"),
            ("busybox:", "tag"),
            ("busy box", "lowercase"),
            ("busybox:1 ", "tag"),
            ("reg:99999/x", "registry"),
            ("x@sha256:abc", "digest"),
            ("a//b", "lowercase"),
            ("-x", "lowercase"),
        ] {
            let e = ImageRef::try_from(bad.to_string()).unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains(&format!("{bad:?}")),
                "{bad}: {e}"
            );
        }
    }
}
