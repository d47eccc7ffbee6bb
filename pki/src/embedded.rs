//! The single-host default CA: a self-signed P-256 root made with rcgen and kept in the
//! coordinator's state directory (key 0600). It signs every identity directly (no
//! intermediate): fine for a homelab, and Step-CA is there when more is wanted.

use crate::authority::{CaError, CertAuthority, IssueRequest, Issued};
use crate::fsutil::{write_atomic, write_private};
use crate::keys::san_type;
use crate::x509;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
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
        crate::fsutil::ensure_dir(dir, 0o700).map_err(|e| CaError::Load {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        if cert_path.exists() {
            let load = |p: &PathBuf| {
                std::fs::read_to_string(p).map_err(|e| CaError::Load {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })
            };
            let root_pem = load(&cert_path)?;
            let key = KeyPair::from_pem(&load(&key_path)?).map_err(|e| CaError::Load {
                path: key_path.display().to_string(),
                reason: e.to_string(),
            })?;
            let issuer = Issuer::from_ca_cert_pem(&root_pem, key).map_err(|e| CaError::Load {
                path: cert_path.display().to_string(),
                reason: e.to_string(),
            })?;
            return Ok(EmbeddedCa { root_pem, issuer });
        }
        let key = KeyPair::generate().map_err(|e| CaError::Load {
            path: key_path.display().to_string(),
            reason: e.to_string(),
        })?;
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
        let cert = params.self_signed(&key).map_err(|e| CaError::Sign {
            subject: "root CA".into(),
            reason: e.to_string(),
        })?;
        let write_err = |p: &Path, e: std::io::Error| CaError::Load {
            path: p.display().to_string(),
            reason: e.to_string(),
        };
        write_private(&key_path, key.serialize_pem().as_bytes())
            .map_err(|e| write_err(&key_path, e))?;
        let root_pem = cert.pem();
        write_atomic(&cert_path, root_pem.as_bytes(), 0o644)
            .map_err(|e| write_err(&cert_path, e))?;
        let issuer = Issuer::new(params, key);
        Ok(EmbeddedCa { root_pem, issuer })
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
        let csr = CertificateSigningRequestParams::from_pem(&req.csr_pem)
            .map_err(|e| CaError::Csr(e.to_string()))?;
        let sign_err = |reason: String| CaError::Sign {
            subject: req.common_name.clone(),
            reason,
        };
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, req.common_name.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = req
            .sans
            .iter()
            .map(san_type)
            .collect::<Result<_, _>>()
            .map_err(sign_err)?;
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
            .map_err(|e| sign_err(e.to_string()))?;
        let info = x509::inspect(cert.der()).map_err(|e| sign_err(e.to_string()))?;
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
    use crate::{San, keys};

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
}
