//! A hand-driven agent client, for presenting identities the real agent never would.

use phoenix_pki::tls::{self, Identity, IdentityStore, TrustStore};
use phoenix_pki::transport::{self, ChannelOptions};
use phoenix_proto::v1::{self, agent_message};

/// The identity URI a coordinator named `coordinator.<td>` carries.
fn coordinator_uri(server_name: &str) -> String {
    let td = server_name
        .strip_prefix("coordinator.")
        .unwrap_or(server_name);
    format!("spiffe://{td}/coordinator")
}

/// `Code: message`, then the status's sources (where a transport failure keeps the TLS
/// alert the peer sent).
fn status_text(s: &tonic::Status) -> String {
    let text = format!("{:?}: {}", s.code(), s.message());
    match std::error::Error::source(s).map(transport::error_chain) {
        Some(chain) if !text.contains(&chain) => format!("{text}: {chain}"),
        _ => text,
    }
}

/// Opens a session as `chain_pem`/`key_pem` and sends a Hello for `hello_guest`.
/// Ok if the coordinator accepted the session, else the error text.
pub async fn session_attempt(
    addr: &str,
    server_name: &str,
    chain_pem: &str,
    key_pem: &str,
    roots_pem: &str,
    hello_guest: u32,
) -> Result<(), String> {
    let id = Identity::from_pem(chain_pem, key_pem).map_err(|e| e.to_string())?;
    let trust = TrustStore::from_pem(roots_pem).map_err(|e| e.to_string())?;
    let cfg = tls::client_config(IdentityStore::new(id), trust, &coordinator_uri(server_name))
        .map_err(|e| e.to_string())?;
    let channel = transport::connect(addr, server_name, cfg, &ChannelOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut client = v1::agent_client::AgentClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = v1::AgentMessage {
        msg: Some(agent_message::Msg::Hello(v1::Hello {
            guest_id: hello_guest,
            agent_version: "raw".into(),
            ..Default::default()
        })),
    };
    tx.send(hello).await.map_err(|e| e.to_string())?;
    // A refused client certificate is answered by an alert after the handshake, which has
    // been seen to leave tonic's request unanswered. Silence is neither an acceptance nor
    // a refusal, so it fails the test rather than satisfying an `expect_err`.
    let opening = client.session(tokio_stream::wrappers::ReceiverStream::new(rx));
    let Ok(answer) = tokio::time::timeout(std::time::Duration::from_secs(30), opening).await else {
        panic!("session attempt to {addr}: the opening was not answered within 30 s");
    };
    let resp = answer.map_err(|s| status_text(&s))?;
    drop(resp);
    Ok(())
}

/// Calls `Renew` as `chain_pem`/`key_pem`; Ok if a new certificate came back.
pub async fn renew_attempt(
    addr: &str,
    server_name: &str,
    chain_pem: &str,
    key_pem: &str,
    roots_pem: &str,
) -> Result<(), String> {
    let id = Identity::from_pem(chain_pem, key_pem).map_err(|e| e.to_string())?;
    let trust = TrustStore::from_pem(roots_pem).map_err(|e| e.to_string())?;
    let cfg = tls::client_config(IdentityStore::new(id), trust, &coordinator_uri(server_name))
        .map_err(|e| e.to_string())?;
    let channel = transport::connect(addr, server_name, cfg, &ChannelOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let key = phoenix_pki::keys::generate().map_err(|e| e.to_string())?;
    let csr = phoenix_pki::keys::csr(&key, "renew", &[]).map_err(|e| e.to_string())?;
    v1::agent_client::AgentClient::new(channel)
        .renew(v1::RenewRequest { csr_pem: csr })
        .await
        .map_err(|s| status_text(&s))?;
    Ok(())
}

/// Opens a session as `chain_pem`/`key_pem` with `hello` and holds it, reading what the
/// coordinator sends, until the coordinator ends it or `limit` passes. Returns how long
/// the session lasted and how it ended ("Code: message", or "timeout").
pub async fn session_hold(
    addr: &str,
    server_name: &str,
    (chain_pem, key_pem, roots_pem): (&str, &str, &str),
    hello: v1::Hello,
    limit: std::time::Duration,
) -> Result<(std::time::Duration, String), String> {
    let id = Identity::from_pem(chain_pem, key_pem).map_err(|e| e.to_string())?;
    let trust = TrustStore::from_pem(roots_pem).map_err(|e| e.to_string())?;
    let cfg = tls::client_config(IdentityStore::new(id), trust, &coordinator_uri(server_name))
        .map_err(|e| e.to_string())?;
    let channel = transport::connect(addr, server_name, cfg, &ChannelOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut client = v1::agent_client::AgentClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
    })
    .await
    .map_err(|e| e.to_string())?;
    let start = std::time::Instant::now();
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    let end = tokio::time::timeout(limit, async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return "stream closed without status".to_string(),
                Err(s) => return format!("{:?}: {}", s.code(), s.message()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| "timeout".to_string());
    drop(tx);
    Ok((start.elapsed(), end))
}

/// The leaf certificate the coordinator at `addr` presents on a new TLS handshake, as a
/// peer sees it: verified against `roots_pem` and as the coordinator of `server_name`,
/// without a client certificate (as an enrolling agent connects).
pub async fn presented_certificate(
    addr: &str,
    server_name: &str,
    roots_pem: &str,
) -> Result<phoenix_pki::x509::CertInfo, String> {
    let trust = TrustStore::from_pem(roots_pem).map_err(|e| e.to_string())?;
    let cfg =
        tls::server_auth_config(trust, &coordinator_uri(server_name)).map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| format!("{addr} presented no certificate"))?;
    phoenix_pki::x509::inspect(leaf).map_err(|e| e.to_string())
}

/// Completes a TLS handshake as `chain_pem`/`key_pem` and waits for the coordinator's
/// verdict on that client certificate, which TLS 1.3 delivers after the handshake: the
/// alert it sent (e.g. "received fatal alert: UnknownCA"), or "accepted" when the
/// coordinator started talking HTTP/2 instead. The client sends nothing, so the refusal
/// arrives as the alert, never as a reset racing it (as it does under a gRPC client).
pub async fn client_cert_verdict(
    addr: &str,
    server_name: &str,
    (chain_pem, key_pem, roots_pem): (&str, &str, &str),
) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    let id = Identity::from_pem(chain_pem, key_pem).map_err(|e| e.to_string())?;
    let trust = TrustStore::from_pem(roots_pem).map_err(|e| e.to_string())?;
    let cfg = tls::client_config(IdentityStore::new(id), trust, &coordinator_uri(server_name))
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
    let mut buf = [0u8; 1];
    match tokio::time::timeout(std::time::Duration::from_secs(10), tls.read(&mut buf)).await {
        Err(_) => Err("no verdict within 10 s".into()),
        Ok(Ok(0)) => Err("closed without an alert".into()),
        Ok(Ok(_)) => Ok("accepted".into()),
        Ok(Err(e)) => Ok(e.to_string()),
    }
}
