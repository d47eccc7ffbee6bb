//! The embedded CA's key sealed for a cluster's shared store (docs/design/0010): every
//! coordinator replica signs with the same root, and etcd (its disk, its backups, anyone
//! who can read its keys) holds only ciphertext. The sealing key is derived from a secret
//! file each replica has (on Proxmox: under /etc/pve/priv, which the cluster filesystem
//! already copies to every node, root-only).
//!
//! AES-256-GCM (ring, the workspace's one provider) under a key from HKDF-SHA256 over the
//! secret with a random salt per sealing; the CA certificate's SHA-256 is the associated
//! data, so a sealed key cannot be paired with another certificate. The secret must hold
//! at least 32 bytes (e.g. `head -c 32 /dev/urandom | base64`): HKDF stretches nothing,
//! so a short password would be guessable offline.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MIN_SECRET_BYTES: usize = 32;
const INFO: &[u8] = b"phoenix embedded CA key v1";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "CA sealing secret is {0} bytes; it needs at least {MIN_SECRET_BYTES} (e.g. `head -c 32 /dev/urandom | base64`)"
    )]
    WeakSecret(usize),
    #[error("sealed CA key is malformed: {0}")]
    Malformed(&'static str),
    #[error(
        "cannot unseal the CA key: wrong secret, or the sealed key does not belong to this CA certificate"
    )]
    Open,
    #[error("seal the CA key: {0}")]
    Seal(&'static str),
}

/// What the store holds: the root certificate in clear, its key sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedCa {
    pub v: u32,
    pub root_pem: String,
    salt: String,
    nonce: String,
    sealed_key: String,
}

fn key_for(secret: &[u8], salt: &[u8]) -> Result<LessSafeKey, SealError> {
    let secret = trimmed(secret);
    if secret.len() < MIN_SECRET_BYTES {
        return Err(SealError::WeakSecret(secret.len()));
    }
    let prk = Salt::new(HKDF_SHA256, salt).extract(secret);
    let info = [INFO];
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .map_err(|_| SealError::Seal("derive key"))?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

/// A secret file's trailing newline is not part of the secret.
fn trimmed(s: &[u8]) -> &[u8] {
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &s[..end]
}

fn aad(root_pem: &str) -> [u8; 32] {
    Sha256::digest(root_pem.as_bytes()).into()
}

impl SealedCa {
    pub fn seal(root_pem: &str, key_pem: &str, secret: &[u8]) -> Result<Self, SealError> {
        let mut salt = [0u8; 32];
        let mut nonce = [0u8; NONCE_LEN];
        rand::Rng::fill(&mut rand::rng(), &mut salt[..]);
        rand::Rng::fill(&mut rand::rng(), &mut nonce[..]);
        let key = key_for(secret, &salt)?;
        let mut data = key_pem.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(root_pem)),
            &mut data,
        )
        .map_err(|_| SealError::Seal("encrypt"))?;
        Ok(SealedCa {
            v: 1,
            root_pem: root_pem.to_string(),
            salt: STANDARD.encode(salt),
            nonce: STANDARD.encode(nonce),
            sealed_key: STANDARD.encode(data),
        })
    }

    /// The key's PEM, if `secret` is the one it was sealed with and the certificate is
    /// the one it was sealed for.
    pub fn open(&self, secret: &[u8]) -> Result<String, SealError> {
        if self.v != 1 {
            return Err(SealError::Malformed("unknown version"));
        }
        let b64 = |s: &str| {
            STANDARD
                .decode(s)
                .map_err(|_| SealError::Malformed("not base64"))
        };
        let salt = b64(&self.salt)?;
        let nonce: [u8; NONCE_LEN] = b64(&self.nonce)?
            .try_into()
            .map_err(|_| SealError::Malformed("nonce length"))?;
        let mut data = b64(&self.sealed_key)?;
        let key = key_for(secret, &salt)?;
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&self.root_pem)),
                &mut data,
            )
            .map_err(|_| SealError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Malformed("key is not text"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef\n";

    #[test]
    fn seals_and_opens_with_the_same_secret_only() {
        let sealed = SealedCa::seal("ROOT", "KEY PEM", SECRET).expect("seal");
        assert!(!sealed.sealed_key.contains("KEY"));
        let json = serde_json::to_string(&sealed).expect("json");
        let back: SealedCa = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.open(SECRET).expect("open"), "KEY PEM");
        // The trailing newline of a secret file does not matter.
        assert_eq!(
            back.open(&SECRET[..SECRET.len() - 1]).expect("open"),
            "KEY PEM"
        );
        let wrong = b"1123456789abcdef0123456789abcdef";
        assert!(matches!(back.open(wrong), Err(SealError::Open)));
    }

    #[test]
    fn a_sealed_key_cannot_be_moved_to_another_certificate() {
        let mut sealed = SealedCa::seal("ROOT", "KEY PEM", SECRET).expect("seal");
        sealed.root_pem = "ATTACKER ROOT".into();
        assert!(matches!(sealed.open(SECRET), Err(SealError::Open)));
    }

    #[test]
    fn short_secrets_are_refused() {
        let err = SealedCa::seal("ROOT", "KEY", b"hunter2\n").expect_err("weak");
        assert!(matches!(err, SealError::WeakSecret(7)), "{err}");
    }
}
