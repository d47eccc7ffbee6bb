//! Client for a real Smallstep step-ca (wire format of 0.19, the Debian build the tests run
//! against; facts in shared/stepca/NOTES.md).
//!
//! - **Bootstrap** by root fingerprint (`bootstrap`): `GET /root/<fp>` over an
//!   unauthenticated TLS connection, accepted only if the SHA-256 of the answer's DER is the
//!   fingerprint; every later call verifies the CA's TLS chain against that root.
//! - **Sign** (`sign`) with a one-time token (OTT) minted here from the JWK provisioner key
//!   (ES256 on ring, `jose`, `provisioner`). Sign never presents a client certificate:
//!   step-ca checks any certificate it is offered, so a stale identity would fail even this
//!   handshake.
//! - **Renew** and **rekey** over mTLS with the current identity; **renew after expiry**
//!   with an `x5cInsecure` bearer token signed by the leaf key (only if the provisioner
//!   allows it); **passive revoke** over mTLS or with a revoke-audience OTT (`renew`).
//! - HTTP plumbing, and how answers become errors, in `client`.
//!
//! A CA refusal becomes [`CaError::Denied`] (401/403), [`CaError::Refused`] (other 4xx)
//! or [`CaError::Failed`] (5xx), naming the action, with the CA's JSON message. step-ca
//! 0.19 answers every 401 with the same generic text; the reason is only in its log. A
//! client certificate the CA rejects (expired, foreign) fails the TLS handshake, which
//! surfaces as [`CaError::Unreachable`] carrying the TLS alert.
//!
//! Limits: one JWK provisioner, P-256 keys (ES256) for provisioner and leaves; the CA's root
//! is pinned at [`StepCa::connect`] (a new root reaches holders through [`StepCa::roots`], but
//! this client keeps trusting the CA's TLS through the bootstrapped root).

mod bootstrap;
mod client;
mod jose;
mod provisioner;
mod renew;
mod sign;

pub use jose::JoseError;
pub use provisioner::{ProvisionerKey, ProvisionerKeyError, ProvisionerKeySource};
pub use renew::{RevokeAuth, serial_to_decimal};
pub use sign::{TokenRequest, san_string};

use crate::{AnswerError, CaError, CertAuthority, IssueRequest, Issued};
use phoenix_pki::x509::CertInfo;
use reqwest::Url;
use rustls::RootCertStore;
use std::sync::{Arc, RwLock};

/// How to reach and authenticate to a step-ca.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepCaConfig {
    /// `https://host:port`. The host must be one of the CA's `dnsNames`: tokens carry it
    /// in their audience.
    pub url: String,
    /// Hex SHA-256 of the root certificate's DER (`step certificate fingerprint`).
    pub fingerprint: String,
    /// The JWK provisioner's name in ca.json (the tokens' `iss`).
    pub provisioner: String,
    pub key: ProvisionerKeySource,
}

/// A certificate step-ca issued, checked against the CA's roots.
#[derive(Debug, Clone)]
pub struct Signed {
    /// Leaf first, then the intermediate.
    pub chain_pem: String,
    pub leaf: CertInfo,
}

/// A step-ca client holding the bootstrapped root and the provisioner key.
pub struct StepCa {
    base: Url,
    audience_host: String,
    fingerprint: String,
    provisioner: ProvisionerKey,
    /// The root the CA's TLS is verified against (from bootstrap).
    pinned: Arc<RootCertStore>,
    /// The trust bundle from the last successful `GET /roots`.
    roots_pem: RwLock<String>,
    /// Plain TLS client, no client certificate (sign, revoke by token, roots).
    http: reqwest::Client,
}

impl std::fmt::Debug for StepCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepCa")
            .field("url", &self.base.as_str())
            .field("provisioner", &self.provisioner)
            .finish_non_exhaustive()
    }
}

impl StepCa {
    /// Loads the provisioner key and bootstraps the CA's root by fingerprint.
    pub async fn connect(config: &StepCaConfig) -> Result<StepCa, CaError> {
        let provisioner = ProvisionerKey::load(&config.provisioner, &config.key)?;
        let base = Url::parse(&config.url).map_err(|source| CaError::Url {
            url: config.url.clone(),
            source,
        })?;
        let shape = |reason| CaError::UrlShape {
            url: config.url.clone(),
            reason,
        };
        if base.scheme() != "https" {
            return Err(shape("must be https"));
        }
        let audience_host = base
            .host_str()
            .ok_or_else(|| shape("has no host"))?
            .to_string();
        let fingerprint = config.fingerprint.to_ascii_lowercase();
        if fingerprint.len() != 64 || !fingerprint.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(CaError::Fingerprint(config.fingerprint.clone()));
        }

        let root_pem = bootstrap::fetch_root(&base, &fingerprint).await?;
        let mut pinned = RootCertStore::empty();
        for der in
            phoenix_pki::x509::parse_chain(&root_pem, "root").map_err(|e| CaError::BadAnswer {
                ca: base.to_string(),
                action: "bootstrap",
                source: Box::new(e.into()),
            })?
        {
            pinned.add(der).map_err(|e| CaError::BadAnswer {
                ca: base.to_string(),
                action: "bootstrap",
                source: Box::new(AnswerError::UnusableRoot(e)),
            })?;
        }
        let pinned = Arc::new(pinned);
        let ca = StepCa {
            http: client::http_client(client::tls_config(pinned.clone(), None)?, "step-ca")?,
            base,
            audience_host,
            fingerprint,
            provisioner,
            pinned,
            roots_pem: RwLock::new(root_pem),
        };
        // The first call that verifies the CA's TLS against the pinned root: a server that
        // merely relayed the root cannot pass it.
        ca.roots().await?;
        Ok(ca)
    }

    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn provisioner(&self) -> &ProvisionerKey {
        &self.provisioner
    }

    /// The audience step-ca expects for `endpoint` ("sign", "revoke", "renew"): the port is
    /// not part of it, the host must be one of the CA's dnsNames.
    pub fn audience(&self, endpoint: &str) -> String {
        format!("https://{}/1.0/{endpoint}", self.audience_host)
    }

    fn cached_roots(&self) -> String {
        self.roots_pem
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait::async_trait]
impl CertAuthority for StepCa {
    fn name(&self) -> &'static str {
        "step-ca"
    }

    /// Signs `req.csr_pem` with a token that grants exactly `req.sans` to
    /// `req.common_name`. step-ca requires the CSR's CN, if any, to equal the common name and
    /// its SANs, if any, to equal the granted ones; the RA builds both from the same data.
    async fn issue(&self, req: IssueRequest) -> Result<Issued, CaError> {
        let ott = self.sign_token(&req.common_name, &req.sans)?;
        let signed = self.sign(&req.csr_pem, &ott, Some(req.ttl)).await?;
        let mut want: Vec<String> = req.sans.iter().map(ToString::to_string).collect();
        let mut got: Vec<String> = signed.leaf.sans.iter().map(ToString::to_string).collect();
        want.sort();
        got.sort();
        if want != got || signed.leaf.common_name != req.common_name {
            return Err(CaError::BadAnswer {
                ca: self.url().to_string(),
                action: "sign",
                source: Box::new(AnswerError::OtherNames {
                    got_cn: signed.leaf.common_name,
                    got,
                    want_cn: req.common_name,
                    want,
                }),
            });
        }
        Ok(Issued {
            chain_pem: signed.chain_pem,
            roots_pem: self.cached_roots(),
            not_after: signed.leaf.not_after,
            serial: signed.leaf.serial_hex,
        })
    }

    async fn roots_pem(&self) -> Result<String, CaError> {
        self.roots().await
    }

    /// Passive revocation with a revoke-audience OTT: step-ca then refuses to renew or
    /// rekey the certificate; TLS peers that do not ask step-ca still accept it until
    /// it expires.
    async fn revoke_serial(&self, serial_hex: &str, reason: &str) -> Result<bool, CaError> {
        StepCa::revoke(self, serial_hex, reason, RevokeAuth::Token).await?;
        Ok(true)
    }
}
