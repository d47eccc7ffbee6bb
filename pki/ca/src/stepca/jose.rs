//! The little JOSE step-ca needs, on ring: ES256 compact JWS (one-time tokens and x5c renew
//! tokens) and decryption of step's password-protected JWK (PBES2-HS256+A128KW key wrap,
//! A256GCM content). No general JOSE library: josekit needs OpenSSL and jsonwebtoken cannot
//! sign with a JWK (CRATES.md §5.16).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::SystemRandom;
use ring::signature::EcdsaKeyPair;
use serde::Deserialize;
use std::num::NonZeroU32;

#[derive(Debug, thiserror::Error)]
pub enum JoseError {
    #[error("sign token: {0}")]
    Sign(String),
    #[error("decrypt JWE: {0}")]
    Decrypt(String),
}

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn b64url_decode(what: &str, s: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| format!("{what} is not base64url: {e}"))
}

/// A compact JWS over `header` and `claims` with an ES256 key (ring's fixed signing
/// format is already the raw r‖s that JWS wants).
pub fn sign_es256(
    key: &EcdsaKeyPair,
    header: &serde_json::Value,
    claims: &serde_json::Value,
) -> Result<String, JoseError> {
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = key
        .sign(&SystemRandom::new(), input.as_bytes())
        .map_err(|_| JoseError::Sign("ECDSA signing failed".into()))?;
    Ok(format!("{input}.{}", b64url(sig.as_ref())))
}

const PBES2_ALG: &str = "PBES2-HS256+A128KW";
/// step writes 100,000; a file demanding far more would only burn CPU.
const MAX_PBES2_COUNT: u32 = 10_000_000;

#[derive(Deserialize)]
struct JweHeader {
    alg: String,
    enc: String,
    p2s: String,
    p2c: u32,
}

/// Decrypts a compact JWE as `step crypto jwk create` / `step ca init` write it.
pub fn decrypt_pbes2(compact: &str, password: &[u8]) -> Result<Vec<u8>, JoseError> {
    let err = |m: String| JoseError::Decrypt(m);
    let parts: Vec<&str> = compact.trim().split('.').collect();
    let [header_b64, wrapped_b64, iv_b64, ciphertext_b64, tag_b64] = parts[..] else {
        return Err(err(format!(
            "expected 5 dot-separated parts, found {}",
            parts.len()
        )));
    };
    let header: JweHeader =
        serde_json::from_slice(&b64url_decode("JWE header", header_b64).map_err(err)?)
            .map_err(|e| err(format!("JWE header: {e}")))?;
    if header.alg != PBES2_ALG || header.enc != "A256GCM" {
        return Err(err(format!(
            "unsupported alg/enc {}/{} (want {PBES2_ALG}/A256GCM)",
            header.alg, header.enc
        )));
    }
    let count = NonZeroU32::new(header.p2c)
        .filter(|c| c.get() <= MAX_PBES2_COUNT)
        .ok_or_else(|| err(format!("PBES2 count {} out of range", header.p2c)))?;

    // RFC 7518 §4.8.1.1: salt = UTF8(alg) || 0x00 || p2s.
    let mut salt = PBES2_ALG.as_bytes().to_vec();
    salt.push(0);
    salt.extend(b64url_decode("p2s", &header.p2s).map_err(err)?);
    let mut kek = [0u8; 16];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        count,
        &salt,
        password,
        &mut kek,
    );

    use aes_kw::KeyInit;
    let wrapped = b64url_decode("encrypted key", wrapped_b64).map_err(err)?;
    let kw = aes_kw::KwAes128::new_from_slice(&kek)
        .map_err(|_| err("derive key-wrapping key".into()))?;
    let mut cek_buf = [0u8; 32];
    let cek = kw
        .unwrap_key(&wrapped, &mut cek_buf)
        .map_err(|_| err("wrong password (key unwrap integrity check failed)".into()))?;

    let iv: [u8; 12] = b64url_decode("iv", iv_b64)
        .map_err(err)?
        .try_into()
        .map_err(|_| err("iv is not 96 bits".into()))?;
    let mut in_out = b64url_decode("ciphertext", ciphertext_b64).map_err(err)?;
    in_out.extend(b64url_decode("tag", tag_b64).map_err(err)?);
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, cek)
            .map_err(|_| err("content key is not 256 bits".into()))?,
    );
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(iv),
            Aad::from(header_b64.as_bytes()),
            &mut in_out,
        )
        .map_err(|_| err("content authentication failed".into()))?;
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, KeyPair};

    #[test]
    fn es256_token_verifies_with_the_public_key() {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("generate");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("load");
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT"});
        let claims = serde_json::json!({"sub": "x"});
        let token = sign_es256(&key, &header, &claims).expect("sign");
        let (input, sig) = token.rsplit_once('.').expect("three parts");
        let sig = b64url_decode("sig", sig).expect("b64");
        assert_eq!(sig.len(), 64, "JWS ES256 signatures are raw r||s");
        ring::signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.public_key())
            .verify(input.as_bytes(), &sig)
            .expect("signature verifies");
        let claims_b64 = input.split('.').nth(1).expect("claims");
        let decoded: serde_json::Value =
            serde_json::from_slice(&b64url_decode("claims", claims_b64).expect("b64"))
                .expect("json");
        assert_eq!(decoded["sub"], "x");
    }

    #[test]
    fn jwe_with_wrong_shape_or_alg_is_refused() {
        assert!(matches!(
            decrypt_pbes2("a.b.c", b"pw"),
            Err(JoseError::Decrypt(m)) if m.contains("5 dot-separated")
        ));
        let header = b64url(br#"{"alg":"dir","enc":"A256GCM","p2s":"","p2c":1}"#);
        let jwe = format!("{header}.AA.AA.AA.AA");
        assert!(matches!(
            decrypt_pbes2(&jwe, b"pw"),
            Err(JoseError::Decrypt(m)) if m.contains("unsupported alg")
        ));
    }
}
