//! One-time join tokens. A token carries everything `phoenix-agent join` needs: the
//! coordinator addresses, the CA fingerprint to pin (as `step ca bootstrap --fingerprint`)
//! and the guest it is for. Only the SHA-256 of its secret is stored.
//!
//! A cluster of coordinator replicas (docs/design/0010) puts every replica's address in
//! the token: `a` is the replica that minted it, `r` the others. Tokens from before `r`
//! existed decode with no other replicas.

use crate::model::{GuestId, TrustDomain};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const PREFIX: &str = "PHX1.";
/// Bounds on what a token may list: it is pasted by hand and decoded by root.
const MAX_REPLICAS: usize = 16;
const MAX_ADDR_LEN: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("join token is malformed: {0}")]
    Malformed(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Address agents dial, host:port.
    #[serde(rename = "a")]
    pub addr: String,
    /// The other coordinator replicas' addresses, host:port; empty for one coordinator.
    #[serde(rename = "r", default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    /// The coordinator's certificate is verified as `coordinator.<trust domain>`.
    #[serde(rename = "t")]
    pub trust_domain: TrustDomain,
    /// Hex SHA-256 of the root CA certificate.
    #[serde(rename = "f")]
    pub ca_fingerprint: String,
    #[serde(rename = "g")]
    pub guest: GuestId,
    #[serde(rename = "e")]
    pub expires_unix: i64,
    /// 32 random bytes, hex.
    #[serde(rename = "s")]
    pub secret: String,
}

impl JoinToken {
    pub fn mint(
        addr: &str,
        trust_domain: &TrustDomain,
        ca_fingerprint: &str,
        guest: GuestId,
        expires_unix: i64,
    ) -> Self {
        let mut secret = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut secret[..]);
        JoinToken {
            addr: addr.to_string(),
            replicas: Vec::new(),
            trust_domain: trust_domain.clone(),
            ca_fingerprint: ca_fingerprint.to_string(),
            guest,
            expires_unix,
            secret: hex::encode(secret),
        }
    }

    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    pub fn decode(s: &str) -> Result<Self, TokenError> {
        let body = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(TokenError::Malformed("missing PHX1. prefix"))?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed("not base64url"))?;
        let mut t: JoinToken =
            serde_json::from_slice(&json).map_err(|_| TokenError::Malformed("bad payload"))?;
        if t.secret.len() != 64 || hex::decode(&t.secret).is_err() {
            return Err(TokenError::Malformed("bad secret"));
        }
        if t.ca_fingerprint.len() != 64 || hex::decode(&t.ca_fingerprint).is_err() {
            return Err(TokenError::Malformed("bad CA fingerprint"));
        }
        if t.replicas.len() > MAX_REPLICAS {
            return Err(TokenError::Malformed("more than 16 coordinator addresses"));
        }
        if std::iter::once(&t.addr)
            .chain(&t.replicas)
            .any(|a| !valid_addr(a))
        {
            return Err(TokenError::Malformed("bad coordinator address"));
        }
        // Hex is case-insensitive; every comparison downstream is against lower case.
        t.ca_fingerprint.make_ascii_lowercase();
        Ok(t)
    }

    /// Adds the other replicas' addresses (the minting one's own and repeats are left out).
    pub fn with_replicas(mut self, others: impl IntoIterator<Item = String>) -> Self {
        for a in others {
            if a != self.addr && !self.replicas.contains(&a) && self.replicas.len() < MAX_REPLICAS {
                self.replicas.push(a);
            }
        }
        self
    }

    /// Every coordinator address, the minting replica's first.
    pub fn addrs(&self) -> Vec<String> {
        std::iter::once(self.addr.clone())
            .chain(self.replicas.iter().cloned())
            .collect()
    }

    /// The store key: the secret's hash, so a leaked database does not leak tokens.
    pub fn secret_hash(&self) -> String {
        hex::encode(Sha256::digest(self.secret.as_bytes()))
    }
}

/// host:port with a port, no whitespace or control characters, of bounded length.
fn valid_addr(a: &str) -> bool {
    a.len() <= MAX_ADDR_LEN
        && !a
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        && a.rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let g = GuestId::try_from(101).expect("valid");
        let td = TrustDomain::try_from("phoenix.lab".to_string()).expect("valid");
        let t = JoinToken::mint("10.0.0.2:7443", &td, &"ab".repeat(32), g, 99);
        assert_eq!(JoinToken::decode(&t.encode()), Ok(t.clone()));
        assert!(JoinToken::decode("PHX1.!!!").is_err());
        assert!(JoinToken::decode(&t.encode().replace("PHX1.", "PHX2.")).is_err());
        assert_ne!(t.secret_hash(), t.secret);
    }

    #[test]
    fn fingerprint_case_does_not_matter() {
        let g = GuestId::try_from(101).expect("valid");
        let td = TrustDomain::try_from("phoenix.lab".to_string()).expect("valid");
        let mut t = JoinToken::mint("10.0.0.2:7443", &td, &"ab".repeat(32), g, 99);
        t.ca_fingerprint = "AB".repeat(32);
        let decoded = JoinToken::decode(&t.encode()).expect("upper-case hex is valid");
        assert_eq!(decoded.ca_fingerprint, "ab".repeat(32));
        assert_eq!(decoded.secret_hash(), t.secret_hash());
        t.ca_fingerprint = "zz".repeat(32);
        assert!(JoinToken::decode(&t.encode()).is_err());
    }

    #[test]
    fn replicas_round_trip_and_old_tokens_still_read() {
        let g = GuestId::try_from(101).expect("valid");
        let td = TrustDomain::try_from("phoenix.lab".to_string()).expect("valid");
        let t = JoinToken::mint("10.0.0.2:7443", &td, &"ab".repeat(32), g, 99).with_replicas([
            "10.0.0.3:7443".to_string(),
            "10.0.0.2:7443".to_string(),
            "10.0.0.3:7443".to_string(),
            "[fd00::4]:7443".to_string(),
        ]);
        assert_eq!(
            t.addrs(),
            ["10.0.0.2:7443", "10.0.0.3:7443", "[fd00::4]:7443"]
        );
        assert_eq!(JoinToken::decode(&t.encode()), Ok(t.clone()));
        // A token minted before replicas existed: no "r" key.
        let mut old = serde_json::to_value(&t).expect("json");
        old.as_object_mut().expect("object").remove("r");
        let old = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(old.to_string()));
        assert_eq!(
            JoinToken::decode(&old).expect("old token").addrs(),
            ["10.0.0.2:7443"]
        );
    }

    #[test]
    fn hostile_addresses_are_refused() {
        let g = GuestId::try_from(101).expect("valid");
        let td = TrustDomain::try_from("phoenix.lab".to_string()).expect("valid");
        let base = JoinToken::mint("10.0.0.2:7443", &td, &"ab".repeat(32), g, 99);
        let long = format!("{}:1", "x".repeat(300));
        for bad in [
            "nohost", ":7443", "h:0", "h:99999", "a b:1", "h:1\n", "h/x:1", &long,
        ] {
            let mut t = base.clone();
            t.replicas = vec![bad.to_string()];
            assert!(JoinToken::decode(&t.encode()).is_err(), "{bad:?} accepted");
        }
        let mut t = base.clone();
        t.replicas = (0..17).map(|n| format!("10.0.1.{n}:7443")).collect();
        assert!(
            JoinToken::decode(&t.encode()).is_err(),
            "17 replicas accepted"
        );
    }
}
