//! Signing a CSR with a provisioner one-time token: minting the token and `POST /1.0/sign`.

use super::client::{SignAnswer, call};
use super::{Signed, StepCa, jose};
use crate::CaError;
use phoenix_pki::San;
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a minted token is valid. step-ca adds one minute of leeway on each side.
pub(super) const TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// step-ca verifies an x5c renew token's chain at `leaf.NotAfter - 1m`; a leaf must be
/// valid then, or it can never be renewed after expiry.
const X5C_VERIFY_SKEW: Duration = Duration::from_secs(60);

/// The claims of a one-time token. Public so tests can mint deliberately wrong ones.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The certificate's CN for sign; the decimal serial for revoke.
    pub subject: String,
    /// SANs as step expects them: DNS names, IP addresses and URIs as plain strings.
    pub sans: Vec<String>,
    /// `https://<ca host>/1.0/sign` or `…/1.0/revoke`; see [`StepCa::audience`].
    pub audience: String,
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

pub(super) fn random_jti() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The backdate for a certificate valid until now + `ttl`: the embedded CA's (at most a
/// tenth of the lifetime, so renewal at 2/3 is not already due), stretched where needed so
/// that NotAfter - 1m falls inside the validity (renewal after expiry) — unless that would
/// make renewal at 2/3 of the lifetime already due (backdate ≥ 2 × ttl, i.e. ttl ≤ 20 s):
/// such certs cannot be renewed after expiry.
fn x5c_backdate(ttl: Duration) -> Duration {
    let needed = (X5C_VERIFY_SKEW + Duration::from_secs(1)).saturating_sub(ttl);
    let base = crate::embedded::backdate(ttl);
    if needed > base && needed < ttl * 2 {
        needed
    } else {
        base
    }
}

/// step's SAN strings.
pub fn san_string(san: &San) -> String {
    match san {
        San::Dns(d) => d.clone(),
        San::Ip(ip) => ip.to_string(),
        San::Uri(u) => u.clone(),
    }
}

impl StepCa {
    /// A provisioner one-time token (JWS, ES256) for `req`.
    pub fn mint_token(&self, req: &TokenRequest) -> Result<String, CaError> {
        let now = unix_now();
        let header = json!({"alg": "ES256", "kid": self.provisioner.kid, "typ": "JWT"});
        let mut claims = json!({
            "iss": self.provisioner.name,
            "sub": req.subject,
            "aud": req.audience,
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_LIFETIME.as_secs(),
            "jti": random_jti(),
            "sha": self.fingerprint,
        });
        if !req.sans.is_empty() {
            claims["sans"] = json!(req.sans);
        }
        jose::sign_es256(self.provisioner.signer(), &header, &claims).map_err(|source| {
            CaError::Token {
                subject: req.subject.clone(),
                audience: req.audience.clone(),
                source,
            }
        })
    }

    /// A sign token granting exactly `sans` to `common_name`.
    pub fn sign_token(&self, common_name: &str, sans: &[San]) -> Result<String, CaError> {
        self.mint_token(&TokenRequest {
            subject: common_name.to_string(),
            sans: sans.iter().map(san_string).collect(),
            audience: self.audience("sign"),
        })
    }

    /// `POST /1.0/sign`. `not_after` is relative to now; `None` takes the CA's default.
    pub async fn sign(
        &self,
        csr_pem: &str,
        ott: &str,
        not_after: Option<Duration>,
    ) -> Result<Signed, CaError> {
        let mut body = json!({"csr": csr_pem, "ott": ott});
        if let Some(d) = not_after {
            // step-ca backdates by a minute unless notBefore is given; for short test
            // lifetimes that would put "renew at 2/3" in the past, so send both ends.
            let now = SystemTime::now();
            let backdate = x5c_backdate(d);
            let fmt = |t: SystemTime| {
                time::OffsetDateTime::from(t)
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            };
            body["notBefore"] = json!(fmt(now - backdate));
            body["notAfter"] = json!(fmt(now + d));
        }
        let answer: SignAnswer = call(
            &self.http,
            &self.base,
            "sign",
            Method::POST,
            "1.0/sign",
            Some(body),
            None,
        )
        .await?;
        self.signed("sign", answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backdate_keeps_short_certs_renewable_after_expiry() {
        let s = Duration::from_secs;
        // Long lifetimes: the embedded CA's minute / tenth.
        assert_eq!(x5c_backdate(s(3600)), s(60));
        assert_eq!(x5c_backdate(s(120)), s(12));
        // Short ones reach back far enough that NotAfter - 1m is inside the validity…
        assert_eq!(x5c_backdate(s(30)), s(31));
        assert!(s(30) + x5c_backdate(s(30)) > X5C_VERIFY_SKEW);
        // …while renewal at 2/3 of the lifetime is still ahead of now.
        let lifetime = s(30) + x5c_backdate(s(30));
        assert!(lifetime * 2 / 3 > x5c_backdate(s(30)));
        // Too short for both: renewal timing wins (a tenth of the lifetime).
        assert_eq!(x5c_backdate(s(15)), s(15) / 10);
        assert_eq!(x5c_backdate(s(20)), s(2));
    }

    #[test]
    fn sans_are_plain_strings() {
        let sans = [
            San::Dns("a.lab".into()),
            San::host("10.0.0.1"),
            San::Uri("spiffe://lab/agent/1".into()),
        ];
        let strings: Vec<String> = sans.iter().map(san_string).collect();
        assert_eq!(strings, ["a.lab", "10.0.0.1", "spiffe://lab/agent/1"]);
    }
}
