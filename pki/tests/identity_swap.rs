//! Loopback mTLS with the swappable stores of `phoenix_pki::tls`, no real components: an
//! identity or trust bundle swapped in memory is what the next handshake uses, and a
//! connection opened before the swap keeps working. This is the mechanism both rotations
//! (agent and coordinator) rely on; the end-to-end proof with step-ca is
//! tests/tests/it/rotation.rs.

use phoenix_pki::tls::{self, Identity, IdentityStore, TrustStore};
use phoenix_pki::transport;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_stream::StreamExt;

const SERVER_NAME: &str = "coordinator.lab";
const SERVER_URI: &str = "spiffe://lab/coordinator";
const AGENT_URI: &str = "spiffe://lab/guest/101";
/// Generous: two cores shared with parallel builds.
const T: Duration = Duration::from_secs(20);

/// A root CA made here with rcgen, so the test depends on the TLS layer alone.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{name} root CA"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root_pem = params.self_signed(&key).expect("self-sign root").pem();
        TestCa {
            issuer: Issuer::new(params, key),
            root_pem,
        }
    }

    /// A leaf with `serial`, the DNS name (server certs) and the URI, chained to the root.
    fn identity(&self, serial: u64, dns: Option<&str>, uri: &str) -> Identity {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(dns.map(String::from).into_iter().collect::<Vec<_>>())
                .expect("leaf params");
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().expect("uri")));
        params.serial_number = Some(SerialNumber::from(serial));
        let leaf = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let chain = format!("{}{}", leaf.pem(), self.root_pem);
        Identity::from_pem(&chain, &key.serialize_pem()).expect("identity")
    }
}

/// The serial of a DER certificate, as `CertInfo::serial_hex` spells it.
fn serial_hex(der: Vec<u8>) -> String {
    phoenix_pki::x509::inspect(&der)
        .expect("inspect")
        .serial_hex
}

/// A TLS echo server on 127.0.0.1:0 behind `tls::server_config`; every accepted
/// connection's client-certificate serial is sent on the returned channel.
async fn echo_server(
    identity: Arc<IdentityStore>,
    trust: Arc<TrustStore>,
) -> (String, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let cfg = tls::server_config(identity, trust).expect("server config");
    let mut incoming = transport::tls_incoming(listener, cfg);
    let (seen, seen_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(mut tls)) = incoming.next().await {
            let client = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| serial_hex(c.to_vec()))
                .unwrap_or_else(|| "none".into());
            let _ = seen.send(client);
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = tls.read(&mut buf).await {
                    if tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, seen_rx)
}

async fn dial(addr: &str, cfg: Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let name = ServerName::try_from(SERVER_NAME).expect("name");
    tokio::time::timeout(T, TlsConnector::from(cfg).connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

/// The serial of the certificate the server presented on this connection.
fn server_serial(s: &TlsStream<TcpStream>) -> String {
    let certs = s.get_ref().1.peer_certificates().expect("server certs");
    serial_hex(certs[0].to_vec())
}

/// One round trip on the connection; fails the test if the connection no longer works.
async fn echo(s: &mut TlsStream<TcpStream>, msg: &str) {
    s.write_all(msg.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(T, s.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("echo read");
    assert_eq!(String::from_utf8_lossy(&buf), msg);
}

async fn next_client_serial(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(T, rx.recv())
        .await
        .expect("server accepted a connection in time")
        .expect("server running")
}

#[tokio::test]
async fn swapped_identities_are_presented_on_new_handshakes_and_open_streams_keep_working() {
    let ca = TestCa::new("lab");
    let (server_v1, server_v2) = (
        ca.identity(0x51, Some(SERVER_NAME), SERVER_URI),
        ca.identity(0x52, Some(SERVER_NAME), SERVER_URI),
    );
    let (agent_v1, agent_v2) = (
        ca.identity(0xa1, None, AGENT_URI),
        ca.identity(0xa2, None, AGENT_URI),
    );
    let server_id = IdentityStore::new(server_v1.clone());
    let (addr, mut client_serials) = echo_server(
        server_id.clone(),
        TrustStore::from_pem(&ca.root_pem).expect("trust"),
    )
    .await;
    let agent_id = IdentityStore::new(agent_v1.clone());
    let client_cfg = tls::client_config(
        agent_id.clone(),
        TrustStore::from_pem(&ca.root_pem).expect("trust"),
        SERVER_URI,
    )
    .expect("client config");

    let mut open = dial(&addr, client_cfg.clone()).await;
    echo(&mut open, "before").await;
    assert_eq!(server_serial(&open), server_v1.info.serial_hex);
    assert_eq!(
        next_client_serial(&mut client_serials).await,
        agent_v1.info.serial_hex
    );

    // Both sides rotate while the connection is open.
    server_id.swap(server_v2.clone());
    agent_id.swap(agent_v2.clone());

    echo(&mut open, "across the swap").await;
    assert_eq!(
        server_serial(&open),
        server_v1.info.serial_hex,
        "an open connection is not renegotiated"
    );

    let mut fresh = dial(&addr, client_cfg.clone()).await;
    echo(&mut fresh, "after").await;
    assert_eq!(server_serial(&fresh), server_v2.info.serial_hex);
    assert_eq!(
        next_client_serial(&mut client_serials).await,
        agent_v2.info.serial_hex
    );
    // The old connection still works beside the new one.
    echo(&mut open, "still open").await;
}

#[tokio::test]
async fn a_swapped_trust_bundle_admits_the_new_ca_on_new_handshakes_only() {
    let (old_ca, new_ca) = (TestCa::new("old"), TestCa::new("new"));
    let server_trust = TrustStore::from_pem(&old_ca.root_pem).expect("trust");
    let (addr, mut client_serials) = echo_server(
        IdentityStore::new(old_ca.identity(0x51, Some(SERVER_NAME), SERVER_URI)),
        server_trust.clone(),
    )
    .await;
    let client = |id: &Identity| {
        tls::client_config(
            IdentityStore::new(id.clone()),
            TrustStore::from_pem(&old_ca.root_pem).expect("trust"),
            SERVER_URI,
        )
        .expect("client config")
    };
    let old_agent = old_ca.identity(0xa1, None, AGENT_URI);
    let new_agents = [0xb1, 0xb2].map(|s| new_ca.identity(s, None, AGENT_URI));
    let mut open = dial(&addr, client(&old_agent)).await;
    echo(&mut open, "old CA").await;
    assert_eq!(
        next_client_serial(&mut client_serials).await,
        old_agent.info.serial_hex
    );

    // Before the swap, a client of the new CA is refused: the TLS 1.3 client learns it on
    // its first read (the server's alert; it sends nothing, so no reset races the alert),
    // and the server never hands the stream over.
    let mut early = dial(&addr, client(&new_agents[0])).await;
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(T, early.read(&mut buf))
        .await
        .expect("refusal in time");
    let err = read.expect_err("a client of an unknown CA is refused");
    assert!(err.to_string().contains("UnknownCA"), "{err}");

    server_trust
        .swap(&format!("{}{}", old_ca.root_pem, new_ca.root_pem))
        .expect("swap trust");
    let mut fresh = dial(&addr, client(&new_agents[1])).await;
    echo(&mut fresh, "new CA").await;
    assert_eq!(
        next_client_serial(&mut client_serials).await,
        new_agents[1].info.serial_hex,
        "the refused client never reached the server's accept queue"
    );
    echo(&mut open, "old connection").await;
}
