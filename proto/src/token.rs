//! One-time join tokens. A token carries everything `phoenix-agent join` needs: the
//! coordinator address, the CA fingerprint to pin (as `step ca bootstrap --fingerprint`)
//! and the guest it is for. Only the SHA-256 of its secret is stored.

use crate::model::{GuestId, TrustDomain};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const PREFIX: &str = "PHX1.";

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
        // Hex is case-insensitive; every comparison downstream is against lower case.
        t.ca_fingerprint.make_ascii_lowercase();
        Ok(t)
    }

    /// The store key: the secret's hash, so a leaked database does not leak tokens.
    pub fn secret_hash(&self) -> String {
        hex::encode(Sha256::digest(self.secret.as_bytes()))
    }
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
}
