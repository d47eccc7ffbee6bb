//! The install flow for one guest: decide whether it needs anything, push the agent and its
//! unit, enroll with a single-use token, start, and wait for its session.
//!
//! "Left alone" needs both sides to agree: the daemon has a connected, unrevoked session for
//! the guest, and the identity in the guest's own state directory is that session's (same
//! certificate serial, naming this guest). A guest cloned from an enrolled one (or from a
//! template someone enrolled) carries another guest's identity: it fails that check and is
//! re-joined with its own key; the token may then replace the live session, since the one
//! holding this guest's name is not this guest.

use super::transport::{GuestTransport, TransportError};
use phoenix_proto::model::{GuestId, TrustDomain};
use phoenix_proto::v1;
use phoenix_proto::v1::admin_client::AdminClient;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

pub const AGENT_PATH: &str = "/usr/local/bin/phoenix-agent";
pub const UNIT_PATH: &str = "/etc/systemd/system/phoenix-agent.service";
pub const UNIT: &str = "phoenix-agent.service";
/// On tmpfs in a systemd guest, root-only, removed right after the join.
pub const TOKEN_PATH: &str = "/run/phoenix-agent-join.token";
const CERT_PATH: &str = "/var/lib/phoenix-agent/cert.pem";

/// The agent's unit. `KillMode=process`: a restart of the agent must not kill an apt/dpkg
/// it started; the stop timeout is above the agent's own 80 s shutdown deadline.
pub const UNIT_TEXT: &str = "\
[Unit]
Description=Phoenix agent: keeps this guest converged to its desired state
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/local/bin/phoenix-agent run
Restart=on-failure
RestartSec=5
KillMode=process
TimeoutStopSec=90

[Install]
WantedBy=multi-user.target
";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{action} for guest {guest}: {reason}")]
    Admin {
        action: &'static str,
        guest: GuestId,
        reason: String,
    },
    #[error("{action} in guest {guest}: {reason}")]
    Step {
        action: String,
        guest: GuestId,
        reason: String,
    },
    #[error("guest {guest} joined but no session within {timeout:?}: {hint}")]
    NoSession {
        guest: GuestId,
        timeout: Duration,
        hint: String,
    },
}

/// What happened to one guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Enrolled, connected, and the guest holds that identity.
    LeftAlone,
    /// Installed (or re-installed) and connected; `why` says what it found first.
    Installed { why: String },
}

pub struct Installer<'a> {
    pub admin: AdminClient<Channel>,
    pub transport: &'a dyn GuestTransport,
    pub agent_binary: &'a [u8],
    pub trust_domain: TrustDomain,
    /// How long to wait for the new session.
    pub timeout: Duration,
}

impl Installer<'_> {
    async fn status(&mut self, guest: GuestId) -> Result<Option<v1::GuestStatus>, InstallError> {
        let all = crate::admin_client::status(&mut self.admin)
            .await
            .map_err(|e| admin_err("read the daemon's status", guest, e))?;
        Ok(all.into_iter().find(|s| s.guest_id == guest.get()))
    }

    /// The serial of the identity the daemon holds for `guest`, if any.
    async fn daemon_serial(&mut self, guest: GuestId) -> Result<Option<String>, InstallError> {
        let certs = self
            .admin
            .certs(v1::CertsRequest {})
            .await
            .map_err(|e| admin_err("read the daemon's certificates", guest, e))?;
        Ok(certs
            .into_inner()
            .certs
            .into_iter()
            .find(|c| c.guest_id == guest.get() && c.kind == "identity")
            .map(|c| normal_serial(&c.serial)))
    }

    /// Why the guest needs an install, or `None` when it is enrolled, connected and holds
    /// its own identity.
    async fn needs(&mut self, guest: GuestId) -> Result<Option<String>, InstallError> {
        let st = self.status(guest).await?;
        let Some(st) = st.filter(|s| s.enrolled) else {
            return Ok(Some("not enrolled".into()));
        };
        if st.revoked_unix != 0 {
            return Ok(Some("identity revoked".into()));
        }
        if !st.connected {
            return Ok(Some("enrolled but not connected (stale)".into()));
        }
        let local = self.transport.exec(guest, &["cat", CERT_PATH]).await?;
        let local = local
            .success()
            .then(|| phoenix_pki::x509::parse_chain(&local.stdout, "the guest's cert.pem").ok())
            .flatten()
            .and_then(|chain| phoenix_pki::x509::inspect(chain.first()?).ok());
        let Some(local) = local else {
            return Ok(Some(format!(
                "connected as guest {guest}, but {CERT_PATH} in the guest is missing or unreadable"
            )));
        };
        let names: Vec<GuestId> = local
            .uris()
            .filter_map(|u| self.trust_domain.parse_guest_uri(u))
            .collect();
        if names != [guest] {
            let other = names
                .first()
                .map(|g| format!("guest {g}"))
                .unwrap_or("no guest".into());
            return Ok(Some(format!(
                "the guest holds the identity of {other} (cloned?)"
            )));
        }
        if self.daemon_serial(guest).await? != Some(normal_serial(&local.serial_hex)) {
            return Ok(Some(
                "the guest's identity is not the one connected as it (cloned?)".into(),
            ));
        }
        Ok(None)
    }

    async fn run(&self, guest: GuestId, argv: &[&str]) -> Result<(), InstallError> {
        let out = self.transport.exec(guest, argv).await?;
        if out.success() {
            Ok(())
        } else {
            Err(InstallError::Step {
                action: argv.join(" "),
                guest,
                reason: out.reason(),
            })
        }
    }

    pub async fn install(&mut self, guest: GuestId) -> Result<Outcome, InstallError> {
        let Some(why) = self.needs(guest).await? else {
            return Ok(Outcome::LeftAlone);
        };
        let t = self.transport;
        // A running agent holds the old identity and would race the join; a first install
        // has no unit yet, so a failed stop means nothing.
        t.exec(guest, &["systemctl", "stop", UNIT]).await?;
        t.push(guest, AGENT_PATH, 0o755, self.agent_binary).await?;
        t.push(guest, UNIT_PATH, 0o644, UNIT_TEXT.as_bytes())
            .await?;
        // Replace a live session only when what holds it is not this guest (a clone).
        let replace = why.contains("cloned");
        let token = self
            .admin
            .create_token(v1::CreateTokenRequest {
                guest_id: guest.get(),
                ttl_seconds: 600,
                replace,
            })
            .await
            .map_err(|e| admin_err("create a join token", guest, e))?
            .into_inner()
            .token;
        // The token travels as a 0600 file, never in an argv a `ps` in host or guest shows.
        t.push(guest, TOKEN_PATH, 0o600, token.as_bytes()).await?;
        let joined = self
            .run(guest, &[AGENT_PATH, "join", "--token-file", TOKEN_PATH])
            .await;
        t.exec(guest, &["rm", "-f", TOKEN_PATH]).await?;
        joined?;
        self.run(guest, &["systemctl", "daemon-reload"]).await?;
        self.run(guest, &["systemctl", "enable", UNIT]).await?;
        self.run(guest, &["systemctl", "restart", UNIT]).await?;
        self.wait_connected(guest).await?;
        Ok(Outcome::Installed { why })
    }

    async fn wait_connected(&mut self, guest: GuestId) -> Result<(), InstallError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if self.status(guest).await?.is_some_and(|s| s.connected) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let hint = self
                    .transport
                    .exec(
                        guest,
                        &[
                            "journalctl",
                            "-u",
                            UNIT,
                            "-n",
                            "5",
                            "--no-pager",
                            "-o",
                            "cat",
                        ],
                    )
                    .await
                    .map(|o| o.stdout.trim().replace('\n', " | "))
                    .unwrap_or_default();
                return Err(InstallError::NoSession {
                    guest,
                    timeout: self.timeout,
                    hint: format!("last agent log lines: {hint}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

fn admin_err(action: &'static str, guest: GuestId, e: tonic::Status) -> InstallError {
    InstallError::Admin {
        action,
        guest,
        reason: e.message().to_owned(),
    }
}

/// Serials as hex without separators or leading zeros, lowercase: the daemon and the
/// certificate parser may spell the same number differently.
fn normal_serial(s: &str) -> String {
    let hex: String = s
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    hex.trim_start_matches('0').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_compare_by_value() {
        assert_eq!(normal_serial("00:AB:0c"), normal_serial("ab0c"));
        assert_ne!(normal_serial("ab0c"), normal_serial("ab0d"));
    }

    #[test]
    fn the_unit_restarts_on_failure_and_never_kills_a_child_install() {
        assert!(UNIT_TEXT.contains("\nRestart=on-failure\n"));
        assert!(UNIT_TEXT.contains("\nKillMode=process\n"));
        assert!(UNIT_TEXT.contains(&format!("\nExecStart={AGENT_PATH} run\n")));
    }
}
