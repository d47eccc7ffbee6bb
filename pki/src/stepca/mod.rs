//! Client for a real Smallstep step-ca (wire format of 0.19, the Debian build the tests run
//! against; facts in shared/stepca/NOTES.md).
//!
//! - **Bootstrap** by root fingerprint: `GET /root/<fp>` over an unauthenticated TLS
//!   connection, accepted only if the SHA-256 of the answer's DER is the fingerprint; every
//!   later call verifies the CA's TLS chain against that root.
//! - **Sign** with a one-time token (OTT) minted here from the JWK provisioner key (ES256 on
//!   ring). Sign never presents a client certificate: step-ca checks any certificate it is
//!   offered, so a stale identity would fail even this handshake.
//! - **Renew** and **rekey** over mTLS with the current identity; **renew after expiry**
//!   with an `x5cInsecure` bearer token signed by the leaf key (only if the provisioner
//!   allows it); **passive revoke** over mTLS or with a revoke-audience OTT.
//!
//! Every CA refusal becomes [`CaError::Refused`] naming the action, with the CA's JSON
//! message. step-ca 0.19 answers every 401 with the same generic text; the reason is only in
//! its log. A client certificate the CA rejects (expired, foreign) fails the TLS handshake,
//! which surfaces as [`CaError::Unreachable`] carrying the TLS alert.
//!
//! Limits: one JWK provisioner, P-256 keys (ES256) for provisioner and leaves; the CA's root
//! is pinned at [`StepCa::connect`] (a new root reaches holders through [`StepCa::roots`], but
//! this client keeps trusting the CA's TLS through the bootstrapped root).

mod jose;
mod provisioner;

pub use jose::JoseError;
pub use provisioner::{ProvisionerKey, ProvisionerKeyError, ProvisionerKeySource};

use crate::authority::{CaError, CertAuthority, IssueRequest, Issued, San};
use crate::tls::{self, TrustStore};
use crate::x509::{self, CertInfo};
use reqwest::{Method, Url};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::Deserialize;
use serde_json::json;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a minted token is valid. step-ca adds one minute of leeway on each side.
const TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// Issuer of x5c renew tokens, as the step CLI sets it.
const X5C_ISSUER: &str = "step-ca-client/1.0";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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

#[derive(Deserialize)]
struct RootAnswer {
    ca: String,
}

#[derive(Deserialize)]
struct RootsAnswer {
    crts: Vec<String>,
}

#[derive(Deserialize)]
struct SignAnswer {
    crt: String,
    #[serde(default)]
    ca: String,
    #[serde(default, rename = "certChain")]
    cert_chain: Vec<String>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    message: String,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn random_jti() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// step-ca verifies an x5c renew token's chain at `leaf.NotAfter - 1m`; a leaf must be
/// valid then, or it can never be renewed after expiry.
const X5C_VERIFY_SKEW: Duration = Duration::from_secs(60);

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

/// A hex serial (any case, `:` allowed) as the decimal string revoke expects.
pub fn serial_to_decimal(hex_serial: &str) -> Result<String, String> {
    let mut hex_digits: String = hex_serial.chars().filter(|c| *c != ':').collect();
    if hex_digits.len() % 2 == 1 {
        hex_digits.insert(0, '0');
    }
    let mut num =
        hex::decode(&hex_digits).map_err(|e| format!("serial {hex_serial} is not hex: {e}"))?;
    if num.is_empty() {
        return Err("empty serial".into());
    }
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
    Ok(digits.iter().rev().collect())
}

/// Every error in a chain, so "connection refused" is not hidden behind "error sending
/// request".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn leaf_key(key_pem: &str) -> Result<PrivateKeyDer<'static>, CaError> {
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| CaError::Load {
        path: "certificate key".into(),
        reason: format!("parse PEM private key: {e}"),
    })
}

fn chain_ders(chain_pem: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    x509::parse_chain(chain_pem, "certificate chain").map_err(|e| CaError::Load {
        path: "certificate chain".into(),
        reason: e.to_string(),
    })
}

fn http_client(config: ClientConfig) -> Result<reqwest::Client, CaError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| CaError::Load {
            path: "HTTP client".into(),
            reason: error_chain(&e),
        })
}

fn tls_config(
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, CaError> {
    let load = |reason: String| CaError::Load {
        path: "TLS client configuration".into(),
        reason,
    };
    let builder = ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| load(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| load(format!("client identity: {e}")))?,
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

impl StepCa {
    /// Loads the provisioner key and bootstraps the CA's root by fingerprint.
    pub async fn connect(config: &StepCaConfig) -> Result<StepCa, CaError> {
        let provisioner =
            ProvisionerKey::load(&config.provisioner, &config.key).map_err(|e| CaError::Load {
                path: match &config.key {
                    ProvisionerKeySource::Jwk(p) => p.display().to_string(),
                    ProvisionerKeySource::EncryptedJwk { jwe, .. } => jwe.display().to_string(),
                },
                reason: e.to_string(),
            })?;
        let bad_url = |reason: String| CaError::Load {
            path: config.url.clone(),
            reason,
        };
        let base = Url::parse(&config.url).map_err(|e| bad_url(format!("CA URL: {e}")))?;
        if base.scheme() != "https" {
            return Err(bad_url("CA URL must be https".into()));
        }
        let audience_host = base
            .host_str()
            .ok_or_else(|| bad_url("CA URL has no host".into()))?
            .to_string();
        let fingerprint = config.fingerprint.to_ascii_lowercase();
        if fingerprint.len() != 64 || !fingerprint.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(CaError::Load {
                path: "CA fingerprint".into(),
                reason: format!("{} is not a hex SHA-256", config.fingerprint),
            });
        }

        let root_pem = Self::fetch_root(&base, &fingerprint).await?;
        let mut pinned = RootCertStore::empty();
        for der in chain_ders(&root_pem)? {
            pinned.add(der).map_err(|e| CaError::BadAnswer {
                action: "bootstrap",
                reason: format!("root certificate: {e}"),
            })?;
        }
        let pinned = Arc::new(pinned);
        let ca = StepCa {
            http: http_client(tls_config(pinned.clone(), None)?)?,
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

    /// `GET /root/<fp>` without verifying the server: the answer authenticates itself by
    /// its hash.
    async fn fetch_root(base: &Url, fingerprint: &str) -> Result<String, CaError> {
        let mut config = ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| CaError::Load {
                path: "TLS client configuration".into(),
                reason: e.to_string(),
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(BootstrapVerifier))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = http_client(config)?;
        let answer: RootAnswer = call(
            &client,
            base,
            "bootstrap",
            Method::GET,
            &format!("root/{fingerprint}"),
            None,
            None,
        )
        .await?;
        let ders = x509::parse_chain(&answer.ca, "root").map_err(|e| CaError::BadAnswer {
            action: "bootstrap",
            reason: e.to_string(),
        })?;
        match ders.as_slice() {
            [der] if x509::fingerprint(der) == fingerprint => Ok(x509::to_pem(der)),
            [der] => Err(CaError::BadAnswer {
                action: "bootstrap",
                reason: format!(
                    "root has fingerprint {}, expected {fingerprint}",
                    x509::fingerprint(der)
                ),
            }),
            _ => Err(CaError::BadAnswer {
                action: "bootstrap",
                reason: format!("expected one root certificate, got {}", ders.len()),
            }),
        }
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
        jose::sign_es256(self.provisioner.signer(), &header, &claims).map_err(|e| CaError::Sign {
            subject: req.subject.clone(),
            reason: e.to_string(),
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
        let answer = self
            .request(
                &self.http,
                "sign",
                Method::POST,
                "1.0/sign",
                Some(body),
                None,
            )
            .await?;
        self.signed("sign", answer)
    }

    /// `POST /1.0/renew` over mTLS: same key, new serial, same lifetime (NotAfter -
    /// NotBefore). step-ca re-backdates the renewed cert by its own minute, so a cert signed
    /// with a shorter backdate comes back with NotAfter = now + lifetime - 1m. An expired
    /// certificate cannot authenticate (use [`StepCa::renew_expired`]).
    pub async fn renew(&self, chain_pem: &str, key_pem: &str) -> Result<Signed, CaError> {
        let client = self.mtls_client(chain_pem, key_pem)?;
        let answer = self
            .request(&client, "renew", Method::POST, "1.0/renew", None, None)
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
        let client = self.mtls_client(chain_pem, key_pem)?;
        let body = json!({"csr": new_csr_pem});
        let answer = self
            .request(
                &client,
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
        let token = self.x5c_renew_token(chain_pem, key_pem)?;
        let answer = self
            .request(
                &self.http,
                "renew after expiry",
                Method::POST,
                "1.0/renew",
                None,
                Some(&token),
            )
            .await?;
        self.signed("renew after expiry", answer)
    }

    fn x5c_renew_token(&self, chain_pem: &str, key_pem: &str) -> Result<String, CaError> {
        use base64::Engine;
        let chain = chain_ders(chain_pem)?;
        let leaf = x509::inspect(&chain[0]).map_err(|e| CaError::Load {
            path: "certificate chain".into(),
            reason: e.to_string(),
        })?;
        let sign_err = |reason: String| CaError::Sign {
            subject: leaf.common_name.clone(),
            reason,
        };
        let PrivateKeyDer::Pkcs8(pkcs8) = leaf_key(key_pem)? else {
            return Err(sign_err(
                "renew token: the certificate key must be PKCS#8 P-256".into(),
            ));
        };
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.secret_pkcs8_der(),
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| sign_err(format!("renew token: certificate key is not P-256: {e}")))?;
        let x5c: Vec<String> = chain
            .iter()
            .map(|c| base64::engine::general_purpose::STANDARD.encode(c.as_ref()))
            .collect();
        let now = unix_now();
        let header = json!({"alg": "ES256", "typ": "JWT", "x5cInsecure": x5c});
        let claims = json!({
            "iss": X5C_ISSUER,
            "sub": leaf.common_name,
            "aud": self.audience("renew"),
            "iat": now,
            "nbf": now,
            "exp": now + TOKEN_LIFETIME.as_secs(),
            "jti": random_jti(),
        });
        jose::sign_es256(&key, &header, &claims).map_err(|e| sign_err(e.to_string()))
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
        let serial = serial_to_decimal(serial_hex).map_err(|reason| CaError::Load {
            path: "certificate serial".into(),
            reason,
        })?;
        let mut body =
            json!({"serial": serial, "reasonCode": 0, "reason": reason, "passive": true});
        let client = match auth {
            RevokeAuth::Mtls { chain_pem, key_pem } => self.mtls_client(chain_pem, key_pem)?,
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
        let _: serde_json::Value = self
            .request(
                &client,
                "revoke",
                Method::POST,
                "1.0/revoke",
                Some(body),
                None,
            )
            .await?;
        Ok(())
    }

    /// `GET /roots`: the CA's current trust bundle (remembered for [`Issued::roots_pem`]).
    pub async fn roots(&self) -> Result<String, CaError> {
        let answer: RootsAnswer = self
            .request(&self.http, "list roots", Method::GET, "roots", None, None)
            .await?;
        if answer.crts.is_empty() {
            return Err(CaError::BadAnswer {
                action: "list roots",
                reason: "no root certificate".into(),
            });
        }
        let mut bundle = String::new();
        for pem in &answer.crts {
            for der in x509::parse_chain(pem, "root").map_err(|e| CaError::BadAnswer {
                action: "list roots",
                reason: e.to_string(),
            })? {
                bundle.push_str(&x509::to_pem(&der));
            }
        }
        *self.roots_pem.write().unwrap_or_else(|p| p.into_inner()) = bundle.clone();
        Ok(bundle)
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<(), CaError> {
        let _: serde_json::Value = self
            .request(
                &self.http,
                "health check",
                Method::GET,
                "health",
                None,
                None,
            )
            .await?;
        Ok(())
    }

    fn cached_roots(&self) -> String {
        self.roots_pem
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A client presenting `chain_pem`. step-ca rejects an expired client certificate
    /// during the handshake, which under TLS 1.3 reaches the client only as a closed
    /// connection; refusing here names the real cause.
    fn mtls_client(&self, chain_pem: &str, key_pem: &str) -> Result<reqwest::Client, CaError> {
        let identity = (chain_ders(chain_pem)?, leaf_key(key_pem)?);
        let leaf = x509::inspect(&identity.0[0]).map_err(|e| CaError::Load {
            path: "certificate chain".into(),
            reason: e.to_string(),
        })?;
        if leaf.not_after <= SystemTime::now() {
            return Err(CaError::Sign {
                subject: leaf.common_name,
                reason: format!(
                    "certificate {} expired at {}; it cannot authenticate over mTLS (renew after expiry needs an x5c token)",
                    leaf.serial_hex,
                    time::OffsetDateTime::from(leaf.not_after)
                ),
            });
        }
        http_client(tls_config(self.pinned.clone(), Some(identity))?)
    }

    async fn request<T: serde::de::DeserializeOwned>(
        &self,
        client: &reqwest::Client,
        action: &'static str,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        bearer: Option<&str>,
    ) -> Result<T, CaError> {
        call(client, &self.base, action, method, path, body, bearer).await
    }

    /// Turns a sign/renew/rekey answer into a chain, verified against the CA's roots.
    fn signed(&self, action: &'static str, answer: SignAnswer) -> Result<Signed, CaError> {
        let bad = |reason: String| CaError::BadAnswer { action, reason };
        let pems = if answer.cert_chain.is_empty() {
            vec![answer.crt, answer.ca]
        } else {
            answer.cert_chain
        };
        let mut chain_pem = String::new();
        for pem in pems.iter().filter(|p| !p.trim().is_empty()) {
            for der in x509::parse_chain(pem, "certificate").map_err(|e| bad(e.to_string()))? {
                chain_pem.push_str(&x509::to_pem(&der));
            }
        }
        let ders =
            x509::parse_chain(&chain_pem, "certificate chain").map_err(|e| bad(e.to_string()))?;
        let leaf = x509::inspect(&ders[0]).map_err(|e| bad(e.to_string()))?;
        TrustStore::from_pem(&self.cached_roots())
            .and_then(|trust| trust.verify_chain(&chain_pem))
            .map_err(|e| bad(e.to_string()))?;
        Ok(Signed { chain_pem, leaf })
    }
}

async fn call<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    base: &Url,
    action: &'static str,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
    bearer: Option<&str>,
) -> Result<T, CaError> {
    let url = base.join(path).map_err(|e| CaError::Load {
        path: base.to_string(),
        reason: format!("join {path}: {e}"),
    })?;
    let mut req = client.request(method, url.clone());
    if let Some(body) = body {
        req = req.json(&body);
    }
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.map_err(|e| CaError::Unreachable {
        url: url.to_string(),
        reason: error_chain(&e),
    })?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| CaError::Unreachable {
        url: url.to_string(),
        reason: format!("read answer: {}", error_chain(&e)),
    })?;
    if !status.is_success() {
        let message = serde_json::from_str::<ErrorAnswer>(&text)
            .map(|e| e.message)
            .unwrap_or_else(|_| text.trim().chars().take(300).collect());
        return Err(CaError::Refused {
            url: url.to_string(),
            action,
            status: status.as_u16(),
            message,
        });
    }
    serde_json::from_str(&text).map_err(|e| CaError::BadAnswer {
        action,
        reason: format!("HTTP {status}: {e}"),
    })
}

#[async_trait::async_trait]
impl CertAuthority for StepCa {
    fn name(&self) -> &'static str {
        "step-ca"
    }

    /// Signs `req.csr_pem` with a token that grants exactly `req.sans` to
    /// `req.common_name`. step-ca requires the CSR's CN, if any, to equal the common name and
    /// its SANs, if any, to equal the granted ones; the RA builds both from the same data.
    /// Passive revocation with a revoke-audience OTT: step-ca then refuses to renew or
    /// rekey the certificate; TLS peers that do not ask step-ca still accept it until
    /// it expires.
    async fn revoke_serial(&self, serial_hex: &str, reason: &str) -> Result<bool, CaError> {
        StepCa::revoke(self, serial_hex, reason, RevokeAuth::Token).await?;
        Ok(true)
    }

    async fn issue(&self, req: IssueRequest) -> Result<Issued, CaError> {
        let ott = self.sign_token(&req.common_name, &req.sans)?;
        let signed = self.sign(&req.csr_pem, &ott, Some(req.ttl)).await?;
        let mut want: Vec<String> = req.sans.iter().map(ToString::to_string).collect();
        let mut got: Vec<String> = signed.leaf.sans.iter().map(ToString::to_string).collect();
        want.sort();
        got.sort();
        if want != got || signed.leaf.common_name != req.common_name {
            return Err(CaError::BadAnswer {
                action: "sign",
                reason: format!(
                    "CA issued CN={} {got:?}, requested CN={} {want:?}",
                    signed.leaf.common_name, req.common_name
                ),
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
}

/// Accepts the CA's certificate without a trust anchor, for the one bootstrap request
/// whose answer is checked by its hash. Handshake signatures are still verified.
#[derive(Debug)]
struct BootstrapVerifier;

impl ServerCertVerifier for BootstrapVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &tls::provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &tls::provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
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
    fn serials_convert_to_decimal() {
        assert_eq!(serial_to_decimal("00").as_deref(), Ok("0"));
        assert_eq!(serial_to_decimal("ff").as_deref(), Ok("255"));
        assert_eq!(serial_to_decimal("1:00").as_deref(), Ok("256"));
        // 2^128 - 1, the largest 128-bit serial step-ca makes.
        assert_eq!(
            serial_to_decimal("ffffffffffffffffffffffffffffffff").as_deref(),
            Ok("340282366920938463463374607431768211455")
        );
        assert!(serial_to_decimal("xyz").is_err());
        assert!(serial_to_decimal("").is_err());
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
