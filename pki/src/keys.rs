//! Key pairs and certificate signing requests. Keys are ECDSA P-256 and are generated
//! where they are used; only CSRs travel.

use crate::San;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("generate key pair: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("load private key: {0}")]
    Load(#[source] rcgen::Error),
    #[error("certificate for {subject}: {san} is not a valid name: {source}")]
    San {
        subject: String,
        san: San,
        #[source]
        source: rcgen::Error,
    },
    #[error("build CSR for {subject}: {source}")]
    Csr {
        subject: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("sign with private key: {0}")]
    Sign(#[source] rcgen::Error),
}

pub fn generate() -> Result<KeyPair, KeyError> {
    KeyPair::generate().map_err(KeyError::Generate)
}

pub fn load(pem: &str) -> Result<KeyPair, KeyError> {
    KeyPair::from_pem(pem).map_err(KeyError::Load)
}

/// `san` as rcgen wants it, for a certificate or CSR naming `subject`.
pub fn san_type(subject: &str, san: &San) -> Result<SanType, KeyError> {
    let invalid = |source| KeyError::San {
        subject: subject.to_string(),
        san: san.clone(),
        source,
    };
    Ok(match san {
        San::Dns(d) => SanType::DnsName(d.clone().try_into().map_err(invalid)?),
        San::Uri(u) => SanType::URI(u.clone().try_into().map_err(invalid)?),
        San::Ip(ip) => SanType::IpAddress(*ip),
    })
}

/// A PEM CSR for `common_name` carrying `sans`. The CA may override both; the CSR's job
/// is proof of possession.
pub fn csr(key: &KeyPair, common_name: &str, sans: &[San]) -> Result<String, KeyError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.subject_alt_names = sans
        .iter()
        .map(|san| san_type(common_name, san))
        .collect::<Result<_, _>>()?;
    params
        .serialize_request(key)
        .and_then(|r| r.pem())
        .map_err(|source| KeyError::Csr {
            subject: common_name.to_string(),
            source,
        })
}

/// What an expired identity's key signs to ask for renewal: the context string binds the
/// signature to this purpose, the CSR to the new key.
pub fn renew_expired_message(csr_pem: &str) -> Vec<u8> {
    let mut m = b"phoenix-renew-expired:v1\n".to_vec();
    m.extend_from_slice(csr_pem.as_bytes());
    m
}

/// Signs `msg` with `key` (ECDSA P-256 SHA-256, ASN.1 DER).
pub fn sign(key: &KeyPair, msg: &[u8]) -> Result<Vec<u8>, KeyError> {
    rcgen::SigningKey::sign(key, msg).map_err(KeyError::Sign)
}
