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
        .map_err(|e| format!("{e:?}"))?;
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
    let resp = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
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
        .map_err(|e| format!("{e:?}"))?;
    let key = phoenix_pki::keys::generate().map_err(|e| e.to_string())?;
    let csr = phoenix_pki::keys::csr(&key, "renew", &[]).map_err(|e| e.to_string())?;
    v1::agent_client::AgentClient::new(channel)
        .renew(v1::RenewRequest { csr_pem: csr })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
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
        .map_err(|e| format!("{e:?}"))?;
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
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
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
