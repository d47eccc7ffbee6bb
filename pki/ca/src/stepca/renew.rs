//! What a certificate holder does with the CA: renew and rekey over mTLS, renew after
//! expiry with an x5c token its key signs, and passive revocation.

use super::client::{SignAnswer, call, held_chain, held_key};
use super::sign::{TOKEN_LIFETIME, random_jti, unix_now};
use super::{Signed, StepCa, TokenRequest, jose};
use crate::{CaError, KeyFormatError};
use base64::Engine;
use reqwest::Method;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use serde_json::json;

/// Issuer of x5c renew tokens, as the step CLI sets it.
const X5C_ISSUER: &str = "step-ca-client/1.0";

/// How a revocation is authorised.
pub enum RevokeAuth<'a> {
    /// The certificate itself, over mTLS (its key proves possession).
    Mtls {
        chain_pem: &'a str,
        key_pem: &'a str,
    },
    /// A provisioner OTT with the revoke audience.
    Token,
}

/// A hex serial (any case, `:` allowed) as the decimal string revoke expects; `None` when
/// it is empty or not hex.
pub fn serial_to_decimal(hex_serial: &str) -> Option<String> {
    let mut hex_digits: String = hex_serial.chars().filter(|c| *c != ':').collect();
    if hex_digits.len() % 2 == 1 {
        hex_digits.insert(0, '0');
    }
    let mut num = hex::decode(&hex_digits).ok().filter(|n| !n.is_empty())?;
    let mut digits = Vec::new();
    while num.iter().any(|b| *b != 0) {
        let mut rem = 0u32;
        for b in num.iter_mut() {
            let cur = rem * 256 + u32::from(*b);
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(char::from(b'0' + rem as u8));
    }
    if digits.is_empty() {
        digits.push('0');
    }
    Some(digits.iter().rev().collect())
}

impl StepCa {
    /// `POST /1.0/renew` over mTLS: same key, new serial, same lifetime (NotAfter -
    /// NotBefore). step-ca re-backdates the renewed cert by its own minute, so a cert signed
    /// with a shorter backdate comes back with NotAfter = now + lifetime - 1m. An expired
    /// certificate cannot authenticate (use [`StepCa::renew_expired`]).
    pub async fn renew(&self, chain_pem: &str, key_pem: &str) -> Result<Signed, CaError> {
        let client = self.mtls_client("renew", chain_pem, key_pem)?;
        let answer: SignAnswer = call(
            &client,
            &self.base,
            "renew",
            Method::POST,
            "1.0/renew",
            None,
            None,
        )
        .await?;
        self.signed("renew", answer)
    }

    /// `POST /1.0/rekey` over mTLS with the current identity; `new_csr_pem` carries the new
    /// key. Subject and SANs stay those of the current certificate.
    pub async fn rekey(
        &self,
        chain_pem: &str,
        key_pem: &str,
        new_csr_pem: &str,
    ) -> Result<Signed, CaError> {
        let client = self.mtls_client("rekey", chain_pem, key_pem)?;
        let body = json!({"csr": new_csr_pem});
        let answer: SignAnswer = call(
            &client,
            &self.base,
            "rekey",
            Method::POST,
            "1.0/rekey",
            Some(body),
            None,
        )
        .await?;
        self.signed("rekey", answer)
    }

    /// Renews a certificate that may already have expired: `POST /1.0/renew` without a
    /// client certificate, authorised by an `x5cInsecure` token the leaf key signs. step-ca
    /// accepts an expired leaf only if the provisioner has `allowRenewalAfterExpiry`.
    pub async fn renew_expired(&self, chain_pem: &str, key_pem: &str) -> Result<Signed, CaError> {
        const ACTION: &str = "renew after expiry";
        let token = self.x5c_renew_token(ACTION, chain_pem, key_pem)?;
        let answer: SignAnswer = call(
            &self.http,
            &self.base,
            ACTION,
            Method::POST,
            "1.0/renew",
            None,
            Some(&token),
        )
        .await?;
        self.signed(ACTION, answer)
    }

    fn x5c_renew_token(
        &self,
        action: &'static str,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<String, CaError> {
        let (chain, leaf) = held_chain(action, chain_pem)?;
        let key_err = |source| CaError::Key {
            action,
            subject: leaf.common_name.clone(),
            source,
        };
        let PrivateKeyDer::Pkcs8(pkcs8) = held_key(action, &leaf, key_pem)? else {
            return Err(key_err(KeyFormatError::NotPkcs8));
        };
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.secret_pkcs8_der(),
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| key_err(KeyFormatError::NotP256(e)))?;
        let x5c: Vec<String> = chain
            .iter()
            .map(|c| base64::engine::general_purpose::STANDARD.encode(c.as_ref()))
            .collect();
        let now = unix_now();
        let audience = self.audience("renew");
        let header = json!({"alg": "ES256", "typ": "JWT", "x5cInsecure": x5c});
        let claims = json!({
            "iss": X5C_ISSUER,
            "sub": leaf.common_name,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_LIFETIME.as_secs(),
            "jti": random_jti(),
        });
        jose::sign_es256(&key, &header, &claims).map_err(|source| CaError::Token {
            subject: leaf.common_name.clone(),
            audience,
            source,
        })
    }

    /// Passive revocation (`POST /1.0/revoke`) of the certificate with `serial_hex`.
    /// step-ca 0.19 consults revocation only on renew and rekey: a revoked certificate stays
    /// valid for TLS peers until it expires.
    pub async fn revoke(
        &self,
        serial_hex: &str,
        reason: &str,
        auth: RevokeAuth<'_>,
    ) -> Result<(), CaError> {
        let serial = serial_to_decimal(serial_hex).ok_or_else(|| CaError::Serial {
            action: "revoke",
            serial: serial_hex.to_string(),
        })?;
        let mut body =
            json!({"serial": serial, "reasonCode": 0, "reason": reason, "passive": true});
        let client = match auth {
            RevokeAuth::Mtls { chain_pem, key_pem } => {
                self.mtls_client("revoke", chain_pem, key_pem)?
            }
            RevokeAuth::Token => {
                // step sets sub to the serial; 0.19 does not compare them.
                body["ott"] = json!(self.mint_token(&TokenRequest {
                    subject: serial.clone(),
                    sans: Vec::new(),
                    audience: self.audience("revoke"),
                })?);
                self.http.clone()
            }
        };
        let _: serde_json::Value = call(
            &client,
            &self.base,
            "revoke",
            Method::POST,
            "1.0/revoke",
            Some(body),
            None,
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_convert_to_decimal() {
        assert_eq!(serial_to_decimal("00").as_deref(), Some("0"));
        assert_eq!(serial_to_decimal("ff").as_deref(), Some("255"));
        assert_eq!(serial_to_decimal("1:00").as_deref(), Some("256"));
        // 2^128 - 1, the largest 128-bit serial step-ca makes.
        assert_eq!(
            serial_to_decimal("ffffffffffffffffffffffffffffffff").as_deref(),
            Some("340282366920938463463374607431768211455")
        );
        assert_eq!(serial_to_decimal("xyz"), None);
        assert_eq!(serial_to_decimal(""), None);
    }
}
