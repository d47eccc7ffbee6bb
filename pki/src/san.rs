//! Subject alternative names, the one vocabulary for what a certificate asserts: the RA
//! grants them, CSRs carry them, x509 inspection reports them.

use std::net::IpAddr;

/// A subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
    Uri(String),
}

impl San {
    /// `10.0.0.1` → Ip, anything else → Dns.
    pub fn host(s: &str) -> San {
        match s.parse::<IpAddr>() {
            Ok(ip) => San::Ip(ip),
            Err(_) => San::Dns(s.to_string()),
        }
    }
}

impl std::fmt::Display for San {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            San::Dns(d) => write!(f, "DNS:{d}"),
            San::Ip(i) => write!(f, "IP:{i}"),
            San::Uri(u) => write!(f, "URI:{u}"),
        }
    }
}
