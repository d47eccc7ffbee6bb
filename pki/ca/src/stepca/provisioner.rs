//! The JWK provisioner key that mints step-ca one-time tokens, loaded from a plain JWK
//! file or from step's password-encrypted JWE plus a password file.

use super::jose::{self, JoseError, b64url, b64url_decode};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ProvisionerKeyError {
    #[error("read provisioner key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("provisioner key {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("provisioner key {path}: {source}")]
    Decrypt { path: PathBuf, source: JoseError },
}

/// Where the provisioner's private key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvisionerKeySource {
    /// A plain private JWK (`kty` EC, `crv` P-256, with `d`), kept 0600.
    Jwk(PathBuf),
    /// step's encrypted form (the `encryptedKey` of ca.json) and the file holding its
    /// password; trailing newlines of the password file are ignored, as step does.
    EncryptedJwk {
        jwe: PathBuf,
        password_file: PathBuf,
    },
}

#[derive(Deserialize)]
struct EcJwk {
    kty: String,
    crv: String,
    x: String,
    y: String,
    d: Option<String>,
    kid: Option<String>,
}

/// A JWK provisioner: its name in ca.json and its ES256 key.
pub struct ProvisionerKey {
    pub name: String,
    /// The `kid` step-ca looks the provisioner up by (`iss:kid`): the JWK's own `kid`,
    /// else its RFC 7638 thumbprint, which is what step writes.
    pub kid: String,
    thumbprint: String,
    key: EcdsaKeyPair,
}

impl std::fmt::Debug for ProvisionerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisionerKey")
            .field("name", &self.name)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ProvisionerKeyError> {
    std::fs::read(path).map_err(|source| ProvisionerKeyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl ProvisionerKey {
    pub fn load(name: &str, source: &ProvisionerKeySource) -> Result<Self, ProvisionerKeyError> {
        match source {
            ProvisionerKeySource::Jwk(path) => Self::from_jwk(name, &read(path)?, path),
            ProvisionerKeySource::EncryptedJwk { jwe, password_file } => {
                let password = read(password_file)?;
                let password = password
                    .strip_suffix(b"\n")
                    .map(|p| p.strip_suffix(b"\r").unwrap_or(p))
                    .unwrap_or(&password);
                let compact =
                    String::from_utf8(read(jwe)?).map_err(|_| ProvisionerKeyError::Invalid {
                        path: jwe.clone(),
                        reason: "not UTF-8".into(),
                    })?;
                let jwk = jose::decrypt_pbes2(&compact, password).map_err(|source| {
                    ProvisionerKeyError::Decrypt {
                        path: jwe.clone(),
                        source,
                    }
                })?;
                Self::from_jwk(name, &jwk, jwe)
            }
        }
    }

    /// `path` only names the origin in errors.
    pub fn from_jwk(name: &str, json: &[u8], path: &Path) -> Result<Self, ProvisionerKeyError> {
        let invalid = |reason: String| ProvisionerKeyError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let jwk: EcJwk = serde_json::from_slice(json).map_err(|e| invalid(format!("JWK: {e}")))?;
        if jwk.kty != "EC" || jwk.crv != "P-256" {
            return Err(invalid(format!(
                "unsupported key type {}/{} (want EC/P-256)",
                jwk.kty, jwk.crv
            )));
        }
        let d = jwk
            .d
            .as_deref()
            .ok_or_else(|| invalid("JWK has no private part (d)".into()))?;
        let d = b64url_decode("d", d).map_err(invalid)?;
        let x = b64url_decode("x", &jwk.x).map_err(invalid)?;
        let y = b64url_decode("y", &jwk.y).map_err(invalid)?;
        let mut public = vec![4u8];
        public.extend(&x);
        public.extend(&y);
        let key = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &d,
            &public,
            &SystemRandom::new(),
        )
        .map_err(|e| invalid(format!("private key does not match x/y: {e}")))?;
        // RFC 7638: the required members in lexicographic order, no whitespace.
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk.x, jwk.y
        );
        let thumbprint = b64url(&Sha256::digest(canonical.as_bytes()));
        Ok(ProvisionerKey {
            name: name.to_string(),
            kid: jwk.kid.unwrap_or_else(|| thumbprint.clone()),
            thumbprint,
            key,
        })
    }

    /// The RFC 7638 SHA-256 thumbprint of the public key.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    pub(super) fn signer(&self) -> &EcdsaKeyPair {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A P-256 key made for this test only (RFC 7515 appendix A.3's example key).
    const JWK: &str = r#"{"kty":"EC","crv":"P-256",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
        "d":"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"}"#;

    #[test]
    fn loads_p256_jwk_and_derives_kid_from_rfc7638_thumbprint() {
        let key = ProvisionerKey::from_jwk("p", JWK.as_bytes(), Path::new("t")).expect("load");
        // SHA-256 over {"crv":"P-256","kty":"EC","x":"f83O…","y":"x_FE…"}, computed with
        // `printf %s '<that JSON>' | openssl dgst -sha256 -binary | basenc --base64url`.
        assert_eq!(key.kid, "oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U");
        assert_eq!(key.thumbprint(), key.kid);
    }

    #[test]
    fn explicit_kid_wins_and_public_only_jwk_is_refused() {
        let with_kid = JWK.replacen('{', r#"{"kid":"mine","#, 1);
        let key = ProvisionerKey::from_jwk("p", with_kid.as_bytes(), Path::new("t")).expect("load");
        assert_eq!(key.kid, "mine");
        let public = JWK.replace(
            r#""d":"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI""#,
            r#""use":"sig""#,
        );
        let err = ProvisionerKey::from_jwk("p", public.as_bytes(), Path::new("t"))
            .expect_err("public-only");
        assert!(err.to_string().contains("no private part"), "{err}");
    }
}
