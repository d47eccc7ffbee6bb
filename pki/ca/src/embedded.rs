//! The single-host default CA: a self-signed P-256 root made with rcgen and kept in the
//! coordinator's state directory (key 0600). It signs every identity directly (no
//! intermediate): fine for a homelab, and Step-CA is there when more is wanted.

use crate::{CaError, CertAuthority, IssueRequest, Issued};
use phoenix_pki::keys::san_type;
use phoenix_pki::statedir::{ensure_dir, write_atomic, write_private};
use phoenix_pki::x509;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use std::path::Path;
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;

/// Backdating absorbs clock skew between host and guests.
const BACKDATE: Duration = Duration::from_secs(60);

/// Backdate of a leaf with lifetime `ttl`: a minute, but never so much of a short lifetime
/// that "renew at 2/3 of the lifetime" would already be in the past.
pub fn backdate(ttl: Duration) -> Duration {
    BACKDATE.min(ttl / 10)
}
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

pub struct EmbeddedCa {
    root_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl EmbeddedCa {
    /// Loads `dir/ca.crt` + `dir/ca.key`, or creates them on first start.
    pub fn load_or_create(dir: &Path, name: &str) -> Result<Self, CaError> {
        let io = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Io {
                action,
                path,
                source,
            }
        };
        let material = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Material {
                action,
                path,
                source,
            }
        };
        ensure_dir(dir, 0o700).map_err(io("create CA directory", dir))?;
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        if cert_path.exists() {
            let root_pem = std::fs::read_to_string(&cert_path)
                .map_err(io("read CA certificate", &cert_path))?;
            let key_pem =
                std::fs::read_to_string(&key_path).map_err(io("read CA key", &key_path))?;
            let key = KeyPair::from_pem(&key_pem).map_err(material("parse CA key", &key_path))?;
            let issuer = Issuer::from_ca_cert_pem(&root_pem, key)
                .map_err(material("use CA certificate", &cert_path))?;
            return Ok(EmbeddedCa { root_pem, issuer });
        }
        let (ca, key_pem) =
            Self::generate(name).map_err(material("generate CA key for", &key_path))?;
        write_private(&key_path, key_pem.as_bytes()).map_err(io("write CA key", &key_path))?;
        write_atomic(&cert_path, ca.root_pem.as_bytes(), 0o644)
            .map_err(io("write CA certificate", &cert_path))?;
        Ok(ca)
    }

    /// A new root in memory: the CA and its key's PEM (which the caller keeps: a file, or
    /// sealed in a cluster's store, see [`crate::sealed`]).
    pub fn generate(name: &str) -> Result<(Self, String), rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{name} root CA"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = OffsetDateTime::from(now - BACKDATE);
        params.not_after = OffsetDateTime::from(now + ROOT_LIFETIME);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        let root_pem = cert.pem();
        let issuer = Issuer::new(params, key);
        Ok((EmbeddedCa { root_pem, issuer }, key_pem))
    }

    /// The CA from its certificate and key (both PEM), e.g. unsealed from a cluster's
    /// store; `origin` names where they came from in errors.
    pub fn from_pem(root_pem: &str, key_pem: &str, origin: &Path) -> Result<Self, CaError> {
        let material = |action: &'static str| {
            let path = origin.to_path_buf();
            move |source| CaError::Material {
                action,
                path,
                source,
            }
        };
        let key = KeyPair::from_pem(key_pem).map_err(material("parse CA key"))?;
        let issuer =
            Issuer::from_ca_cert_pem(root_pem, key).map_err(material("use CA certificate"))?;
        Ok(EmbeddedCa {
            root_pem: root_pem.to_string(),
            issuer,
        })
    }

    /// The CA's key, PEM (to seal it for the other replicas of a cluster).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }
}

#[async_trait::async_trait]
impl CertAuthority for EmbeddedCa {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn issue(&self, req: IssueRequest) -> Result<Issued, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(&req.csr_pem).map_err(|source| {
            CaError::Csr {
                subject: req.common_name.clone(),
                source,
            }
        })?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, req.common_name.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = req
            .sans
            .iter()
            .map(|san| san_type(&req.common_name, san))
            .collect::<Result<_, _>>()
            .map_err(CaError::Grant)?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = OffsetDateTime::from(now - backdate(req.ttl));
        params.not_after = OffsetDateTime::from(now + req.ttl);
        let mut serial = [0u8; 16];
        rand::Rng::fill(&mut rand::rng(), &mut serial[..]);
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|source| CaError::Sign {
                subject: req.common_name.clone(),
                source,
            })?;
        // rcgen wrote these; read them back rather than trusting the params.
        let info = x509::inspect(cert.der()).map_err(|source| CaError::BadAnswer {
            ca: "embedded".into(),
            action: "sign",
            source: Box::new(source.into()),
        })?;
        Ok(Issued {
            chain_pem: cert.pem(),
            roots_pem: self.root_pem.clone(),
            not_after: info.not_after,
            serial: info.serial_hex,
        })
    }

    async fn roots_pem(&self) -> Result<String, CaError> {
        Ok(self.root_pem.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_pki::{San, keys};

    #[tokio::test]
    async fn issues_only_the_granted_sans() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = EmbeddedCa::load_or_create(dir.path(), "test").expect("ca");
        let key = keys::generate().expect("key");
        // The CSR asks for more than the RA grants (a DNS name and an identity URI); the
        // grant wins, so a service CSR can never smuggle in a spiffe:// URI.
        let csr = keys::csr(
            &key,
            "evil",
            &[
                San::Dns("coordinator.lab".into()),
                San::Uri("spiffe://lab/coordinator".into()),
            ],
        )
        .expect("csr");
        let issued = ca
            .issue(IssueRequest {
                csr_pem: csr,
                common_name: "guest-101".into(),
                sans: vec![San::Uri("spiffe://lab/guest/101".into())],
                ttl: Duration::from_secs(3600),
            })
            .await
            .expect("issue");
        let chain = x509::parse_chain(&issued.chain_pem, "chain").expect("pem");
        let info = x509::inspect(&chain[0]).expect("inspect");
        assert_eq!(info.common_name, "guest-101");
        assert_eq!(info.sans, vec![San::Uri("spiffe://lab/guest/101".into())]);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("ca.key"))
                .expect("meta")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // Reload keeps the same root.
        let again = EmbeddedCa::load_or_create(dir.path(), "test").expect("reload");
        assert_eq!(again.root_pem(), ca.root_pem());
    }

    #[tokio::test]
    async fn a_garbled_csr_and_an_invalid_grant_name_the_subject() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = EmbeddedCa::load_or_create(dir.path(), "test").expect("ca");
        let req = |csr_pem: String, san: &str| IssueRequest {
            csr_pem,
            common_name: "guest-7".into(),
            sans: vec![San::Dns(san.into())],
            ttl: Duration::from_secs(60),
        };
        let err = ca
            .issue(req("not a CSR".into(), "ok.lab"))
            .await
            .expect_err("garbled CSR");
        assert!(
            matches!(err, CaError::Csr { ref subject, .. } if subject == "guest-7"),
            "{err}"
        );
        let csr = keys::csr(&keys::generate().expect("key"), "guest-7", &[]).expect("csr");
        let err = ca
            .issue(req(csr, "bäd.lab"))
            .await
            .expect_err("unencodable DNS name");
        assert!(matches!(err, CaError::Grant(_)), "{err}");
        assert!(
            err.to_string()
                .contains("certificate for guest-7: DNS:bäd.lab"),
            "{err}"
        );
    }
}
