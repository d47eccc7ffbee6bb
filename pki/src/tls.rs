//! rustls configurations with in-memory rotation.
//!
//! Certificates and trust bundles sit behind `RwLock`s the handshake consults, so a
//! renewed cert or a new root is used by the next handshake while open connections keep
//! running. Session resumption is off on both sides: a resumed TLS 1.3 session would
//! carry the old identity past a rotation (CRATES.md §5.6).

use crate::x509::{self, CertInfo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, Error as TlsError, RootCertStore,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::sync::{Arc, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("load identity: {0}")]
    Identity(String),
    #[error("load trust bundle: {0}")]
    Roots(String),
    #[error("identity does not verify against the trust bundle: {0}")]
    Untrusted(String),
    #[error(
        "server certificate ({presented}) lacks the coordinator identity {want}: a certificate from the same CA without that URI (a service certificate) cannot act as the coordinator"
    )]
    NotTheServer { want: String, presented: String },
}

/// The server's identity check after chain validation: the leaf must carry the URI SAN
/// `want`. DNS names prove nothing here: the same CA signs service certificates for any
/// name a guest declares (docs/design/0005-identities-and-service-certs.md).
pub fn require_server_identity(end_entity: &[u8], want: &str) -> Result<(), TlsSetupError> {
    let info = x509::inspect(end_entity).map_err(|e| TlsSetupError::Identity(e.to_string()))?;
    if info.uris().any(|u| u == want) {
        return Ok(());
    }
    let mut presented = vec![format!("CN={}", info.common_name)];
    presented.extend(info.sans.iter().map(ToString::to_string));
    Err(TlsSetupError::NotTheServer {
        want: want.to_string(),
        presented: presented.join(", "),
    })
}

/// [`require_server_identity`] as a rustls verdict, keeping the message for the log.
fn server_identity_verdict(end_entity: &[u8], want: &str) -> Result<ServerCertVerified, TlsError> {
    require_server_identity(end_entity, want)
        .map(|()| ServerCertVerified::assertion())
        .map_err(|e| TlsError::Other(rustls::OtherError(Arc::new(e))))
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process default; tonic's own TLS paths rely on it. Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A certificate chain with its key, checked to match.
#[derive(Clone)]
pub struct Identity {
    pub certified: Arc<CertifiedKey>,
    pub info: CertInfo,
    pub chain_pem: String,
}

impl Identity {
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, TlsSetupError> {
        let chain = x509::parse_chain(chain_pem, "certificate chain")
            .map_err(|e| TlsSetupError::Identity(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsSetupError::Identity(format!("private key: {e}")))?;
        let info = x509::inspect(&chain[0]).map_err(|e| TlsSetupError::Identity(e.to_string()))?;
        let certified = CertifiedKey::from_der(chain, key, &provider())
            .map_err(|e| TlsSetupError::Identity(e.to_string()))?;
        Ok(Identity {
            certified: Arc::new(certified),
            info,
            chain_pem: chain_pem.to_string(),
        })
    }
}

/// The current identity, swappable while connections are open.
pub struct IdentityStore {
    current: RwLock<Identity>,
}

impl IdentityStore {
    pub fn new(id: Identity) -> Arc<Self> {
        Arc::new(IdentityStore {
            current: RwLock::new(id),
        })
    }
    pub fn current(&self) -> Identity {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    pub fn swap(&self, id: Identity) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = id;
    }
}

impl std::fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityStore")
            .field("subject", &self.current().info.common_name)
            .finish()
    }
}

impl ResolvesServerCert for IdentityStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().certified)
    }
}

impl ResolvesClientCert for IdentityStore {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current().certified)
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// The trust bundle, swappable so a new root can be added before it is used.
pub struct TrustStore {
    current: RwLock<Arc<Trust>>,
}

/// One trust bundle with the verifiers built from it once, not per handshake.
struct Trust {
    pem: String,
    store: Arc<RootCertStore>,
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

impl Trust {
    fn new(pem: &str) -> Result<Arc<Trust>, TlsSetupError> {
        let store = root_store(pem)?;
        let client = WebPkiClientVerifier::builder_with_provider(store.clone(), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsSetupError::Roots(e.to_string()))?;
        let server = WebPkiServerVerifier::builder_with_provider(store.clone(), provider())
            .build()
            .map_err(|e| TlsSetupError::Roots(e.to_string()))?;
        Ok(Arc::new(Trust {
            pem: pem.to_string(),
            store,
            client,
            server,
        }))
    }
}

pub fn root_store(pem: &str) -> Result<Arc<RootCertStore>, TlsSetupError> {
    let mut store = RootCertStore::empty();
    for der in
        x509::parse_chain(pem, "trust bundle").map_err(|e| TlsSetupError::Roots(e.to_string()))?
    {
        store
            .add(der)
            .map_err(|e| TlsSetupError::Roots(e.to_string()))?;
    }
    Ok(Arc::new(store))
}

impl TrustStore {
    pub fn from_pem(pem: &str) -> Result<Arc<Self>, TlsSetupError> {
        Ok(Arc::new(TrustStore {
            current: RwLock::new(Trust::new(pem)?),
        }))
    }
    fn get(&self) -> Arc<Trust> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    pub fn pem(&self) -> String {
        self.get().pem.clone()
    }
    fn store(&self) -> Arc<RootCertStore> {
        self.get().store.clone()
    }
    pub fn swap(&self, pem: &str) -> Result<(), TlsSetupError> {
        let trust = Trust::new(pem)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = trust;
        Ok(())
    }

    /// Checks `chain_pem` verifies as a client+server identity against these roots now.
    pub fn verify_chain(&self, chain_pem: &str) -> Result<(), TlsSetupError> {
        self.verify_chain_at(chain_pem, UnixTime::now())
    }

    /// As `verify_chain`, at another instant (an expired identity is checked as of just
    /// before its expiry, as step-ca does for renew-after-expiry).
    pub fn verify_chain_at(&self, chain_pem: &str, at: UnixTime) -> Result<(), TlsSetupError> {
        let chain = x509::parse_chain(chain_pem, "certificate chain")
            .map_err(|e| TlsSetupError::Identity(e.to_string()))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(self.store(), provider())
            .build()
            .map_err(|e| TlsSetupError::Roots(e.to_string()))?;
        verifier
            .verify_client_cert(&chain[0], &chain[1..], at)
            .map(|_| ())
            .map_err(|e| TlsSetupError::Untrusted(e.to_string()))
    }
}

/// Client-cert verification against the current trust bundle. Client certs are optional
/// at the TLS layer (enrollment has none); RPCs that need one check `peer_certs`.
#[derive(Debug)]
struct SwappableClientVerifier {
    trust: Arc<TrustStore>,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrustStore")
    }
}

impl SwappableClientVerifier {
    fn inner(&self) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        Ok(self.trust.get().client.clone())
    }
}

impl ClientCertVerifier for SwappableClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        self.inner()?
            .verify_client_cert(end_entity, intermediates, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner()?.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner()?.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Server verification against the current trust bundle and the server name the caller
/// passes, then the identity: the leaf must carry the URI SAN `identity`.
#[derive(Debug)]
struct SwappableServerVerifier {
    trust: Arc<TrustStore>,
    identity: String,
}

impl SwappableServerVerifier {
    fn inner(&self) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
        Ok(self.trust.get().server.clone())
    }
}

impl ServerCertVerifier for SwappableServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        self.inner()?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        server_identity_verdict(end_entity, &self.identity)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner()?.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner()?.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Trust-on-first-use by fingerprint, as `step ca bootstrap --fingerprint`: the server
/// must send a chain containing the root whose SHA-256 is `fingerprint`, and the leaf must
/// verify against that root, and carry the URI SAN `identity`. Used only for enrollment,
/// before the agent has the bundle.
#[derive(Debug)]
pub struct FingerprintVerifier {
    fingerprint: String,
    identity: String,
}

impl FingerprintVerifier {
    pub fn new(fingerprint: &str, identity: &str) -> Arc<Self> {
        Arc::new(FingerprintVerifier {
            fingerprint: fingerprint.to_ascii_lowercase(),
            identity: identity.to_string(),
        })
    }
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let root = intermediates
            .iter()
            .find(|c| x509::fingerprint(c) == self.fingerprint)
            .ok_or_else(|| {
                TlsError::General(format!(
                    "coordinator did not present the CA with fingerprint {}",
                    self.fingerprint
                ))
            })?;
        let mut store = RootCertStore::empty();
        store
            .add(root.clone().into_owned())
            .map_err(|e| TlsError::General(e.to_string()))?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider())
            .build()
            .map_err(|e| TlsError::General(e.to_string()))?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        server_identity_verdict(end_entity, &self.identity)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn h2() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec()]
}

/// The coordinator's listener config. The identity's chain should end with the root so
/// enrolling agents can pin it by fingerprint.
pub fn server_config(
    identity: Arc<IdentityStore>,
    trust: Arc<TrustStore>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Roots(e.to_string()))?
        .with_client_cert_verifier(Arc::new(SwappableClientVerifier { trust }))
        .with_cert_resolver(identity);
    cfg.alpn_protocols = h2();
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// An agent's mTLS config: verifies the coordinator against the pinned bundle and by its
/// identity URI `server_identity` (`spiffe://<td>/coordinator`), and presents the current
/// identity.
pub fn client_config(
    identity: Arc<IdentityStore>,
    trust: Arc<TrustStore>,
    server_identity: &str,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Roots(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SwappableServerVerifier {
            trust,
            identity: server_identity.to_string(),
        }))
        .with_client_cert_resolver(identity);
    cfg.alpn_protocols = h2();
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// Server-authenticated only (no client cert), against the pinned bundle: for renewing an
/// identity that can no longer authenticate. The server must carry `server_identity`.
pub fn server_auth_config(
    trust: Arc<TrustStore>,
    server_identity: &str,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Roots(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SwappableServerVerifier {
            trust,
            identity: server_identity.to_string(),
        }))
        .with_no_client_auth();
    cfg.alpn_protocols = h2();
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// Enrollment: no client cert; the server is pinned by the CA fingerprint from the token
/// and must carry `server_identity`.
pub fn enroll_client_config(
    fingerprint: &str,
    server_identity: &str,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Roots(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(FingerprintVerifier::new(fingerprint, server_identity))
        .with_no_client_auth();
    cfg.alpn_protocols = h2();
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{San, keys};

    /// A self-signed leaf naming `coordinator.lab` with `sans`: the identity check reads
    /// only the leaf's names, so no CA is needed.
    fn leaf(sans: Vec<San>) -> Vec<u8> {
        let key = keys::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "coordinator.lab");
        params.subject_alt_names = sans
            .iter()
            .map(|s| keys::san_type("coordinator.lab", s).expect("san"))
            .collect();
        params.self_signed(&key).expect("leaf").der().to_vec()
    }

    #[test]
    fn the_coordinator_is_recognised_by_its_uri_not_its_dns_name() {
        let want = "spiffe://lab/coordinator";
        let genuine = leaf(vec![
            San::Dns("coordinator.lab".into()),
            San::Uri(want.into()),
        ]);
        require_server_identity(&genuine, want).expect("coordinator identity");
        // What the signing RPC used to issue for a declared `coordinator.lab` service cert.
        let service = leaf(vec![San::Dns("coordinator.lab".into())]);
        let err = require_server_identity(&service, want)
            .expect_err("service cert")
            .to_string();
        assert!(
            err.contains("(CN=coordinator.lab, DNS:coordinator.lab) lacks the coordinator identity spiffe://lab/coordinator"),
            "{err}"
        );
        let guest = leaf(vec![San::Uri("spiffe://lab/guest/101".into())]);
        assert!(require_server_identity(&guest, want).is_err());
    }
}
