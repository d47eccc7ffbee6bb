//! Simulated agents for the benchmarks (`src/bin/bench_*`): real enrollments and real mTLS
//! sessions, many per process, that answer every desired state with a report without
//! touching the host. One copy of the protocol steps, so the benchmarks measure the same
//! agent.

use phoenix_pki::keys;
use phoenix_pki::tls::{self, Identity, IdentityStore, TrustStore};
use phoenix_pki::transport::{self, ChannelOptions};
use phoenix_proto::model;
use phoenix_proto::token::JoinToken;
use phoenix_proto::v1::{self, agent_message, coordinator_message};
use std::process::Child;
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::Streaming;
use tonic::transport::Channel;

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A process the benchmark started: killed and reaped when dropped, also on an early error.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Raises the open-file limit to its hard limit: every simulated session is a socket.
pub fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// The `p` quantile (0..=1) of ascending `sorted`; 0 when empty.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A simulated agent's identity after enrollment, as `phoenix-agent join` keeps it.
pub struct Enrolled {
    pub guest: u32,
    /// The decoded join token: the replica addresses and the trust domain.
    pub token: JoinToken,
    pub identity: Arc<IdentityStore>,
    pub trust: Arc<TrustStore>,
}

/// Enrolls `guest` with `token` through `addr` (one of the token's addresses): a new key,
/// a CSR, the `Enroll` RPC against the coordinator pinned by the token's CA fingerprint.
pub async fn enroll(guest: u32, token: &str, addr: &str) -> Res<Enrolled> {
    let tok = JoinToken::decode(token)?;
    let key = keys::generate()?;
    let csr = keys::csr(&key, &format!("guest-{guest}"), &[])?;
    let ch = transport::connect(
        addr,
        &tok.trust_domain.coordinator_dns(),
        tls::enroll_client_config(&tok.ca_fingerprint, &tok.trust_domain.coordinator_uri())?,
        &ChannelOptions::default(),
    )
    .await?;
    let resp = v1::agent_client::AgentClient::new(ch)
        .enroll(v1::EnrollRequest {
            token: token.to_string(),
            guest_id: guest,
            csr_pem: csr,
        })
        .await?
        .into_inner();
    Ok(Enrolled {
        guest,
        identity: IdentityStore::new(Identity::from_pem(&resp.chain_pem, &key.serialize_pem())?),
        trust: TrustStore::from_pem(&resp.roots_pem)?,
        token: tok,
    })
}

impl Enrolled {
    /// The mTLS client config presenting this agent's current identity.
    pub fn client_config(&self) -> Res<Arc<rustls::ClientConfig>> {
        Ok(tls::client_config(
            self.identity.clone(),
            self.trust.clone(),
            &self.token.trust_domain.coordinator_uri(),
        )?)
    }

    /// An mTLS channel to the coordinator at `addr`.
    pub async fn client(&self, addr: &str) -> Res<v1::agent_client::AgentClient<Channel>> {
        self.client_with(addr, self.client_config()?).await
    }

    /// As [`Enrolled::client`], with a config built once by the caller (reconnect loops).
    pub async fn client_with(
        &self,
        addr: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Res<v1::agent_client::AgentClient<Channel>> {
        let ch = transport::connect(
            addr,
            &self.token.trust_domain.coordinator_dns(),
            config,
            &ChannelOptions::default(),
        )
        .await?;
        Ok(v1::agent_client::AgentClient::new(ch))
    }
}

/// An open session: what the agent sends, what the coordinator sends.
pub struct Session {
    pub outbound: mpsc::Sender<v1::AgentMessage>,
    pub inbound: Streaming<v1::CoordinatorMessage>,
}

/// Opens the `Session` stream on `client` and says hello as `guest`.
pub async fn open_session(
    client: &mut v1::agent_client::AgentClient<Channel>,
    guest: u32,
) -> Res<Session> {
    let (outbound, rx) = mpsc::channel(8);
    outbound
        .send(v1::AgentMessage {
            msg: Some(agent_message::Msg::Hello(v1::Hello {
                guest_id: guest,
                agent_version: "sim".into(),
                ..Default::default()
            })),
        })
        .await?;
    let inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(Session { outbound, inbound })
}

/// What a simulated agent's report lists.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Results {
    /// One `Unchanged` result per resource, as a converged real agent reports.
    Unchanged,
    /// No per-resource results: the smallest report.
    None,
}

impl Session {
    /// Answers every desired state with a report (nothing applied) and calls `on_report`
    /// with its revision once sent. Returns when the coordinator closes the stream
    /// (`Ok`) or ends it with a status (`Err`); an undecodable desired state ends it too,
    /// as a locally made status.
    pub async fn answer(
        &mut self,
        results: Results,
        mut on_report: impl FnMut(u64),
    ) -> Result<(), tonic::Status> {
        while let Some(m) = self.inbound.message().await? {
            let Some(coordinator_message::Msg::Desired(d)) = m.msg else {
                continue;
            };
            let state = model::DesiredState::try_from(d)
                .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
            let report = v1::ApplyReport {
                revision: state.revision,
                digest: state.digest.clone(),
                results: match results {
                    Results::Unchanged => state
                        .spec
                        .resources()
                        .iter()
                        .map(|r| v1::ResourceResult {
                            resource: r.id().to_string(),
                            status: v1::ResourceStatus::Unchanged as i32,
                            ..Default::default()
                        })
                        .collect(),
                    Results::None => Vec::new(),
                },
                duration_micros: 1,
                trigger: "push".into(),
                ..Default::default()
            };
            let sent = self
                .outbound
                .send(v1::AgentMessage {
                    msg: Some(agent_message::Msg::Report(report)),
                })
                .await;
            // A closed request stream means the session is ending: keep reading for how.
            if sent.is_ok() {
                on_report(state.revision);
            }
        }
        Ok(())
    }
}
