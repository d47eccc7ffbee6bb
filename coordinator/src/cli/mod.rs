//! The `phoenix` command line: `serve` runs the daemon; every other command talks to it
//! over the admin socket.

pub mod duration;

use crate::admin_client;
use crate::compile;
use crate::server::{self, Config};
use clap::{Parser, Subcommand, ValueEnum};
use phoenix_proto::model::{ApplyReport, GuestId, Status, TrustDomain};
use phoenix_proto::v1;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Parser, Debug)]
#[command(
    name = "phoenix",
    version,
    about = "Phoenix coordinator: desired state for every guest of a Proxmox host"
)]
pub struct Cli {
    /// The daemon's admin socket.
    #[arg(
        long,
        global = true,
        env = "PHOENIX_ADMIN_SOCKET",
        default_value = "/run/phoenix/admin.sock"
    )]
    pub admin_socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the coordinator daemon.
    Serve(Box<ServeArgs>),
    /// Check configs offline: every error of the run, with file and JSON path.
    Validate {
        /// A Phoenix etc directory (phoenix_lxc_configs.json, ...) or native desired-state files.
        path: PathBuf,
        /// Also print each guest's compiled desired state as JSON.
        #[arg(long)]
        show: bool,
        /// The trust domain `phoenix serve` uses: certificate names reserved for its
        /// identities (coordinator.<td>, wildcards covering it) are refused.
        #[arg(long, default_value = "phoenix.lab")]
        trust_domain: String,
    },
    /// What `apply` would change on every guest (same as `apply --dry-run`).
    Plan {
        #[arg(short = 'f', long = "file")]
        path: PathBuf,
        #[arg(long, default_value = "60s", value_parser = duration::parse)]
        timeout: Duration,
        /// Only these guests (comma-separated ids); default every compiled guest.
        #[arg(long, value_delimiter = ',')]
        guest: Vec<GuestId>,
    },
    /// Print the JSON Schema of Phoenix's native desired-state format.
    Schema,
    /// Push desired states and follow the agents until they converge.
    Apply {
        /// A Phoenix etc directory (/usr/local/phoenix_hypervisor/etc) or native desired-state files.
        #[arg(short = 'f', long = "file")]
        path: PathBuf,
        /// Show what would change on every guest; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Give up waiting for reports after this long.
        #[arg(long, default_value = "120s", value_parser = duration::parse)]
        timeout: Duration,
        /// Return after the push, without waiting for reports.
        #[arg(long)]
        no_wait: bool,
        /// Only these guests (comma-separated ids); default every compiled guest.
        #[arg(long, value_delimiter = ',')]
        guest: Vec<GuestId>,
        /// Also wait for guests that have not enrolled yet (default: only enrolled ones
        /// are waited for and count in the exit status).
        #[arg(long)]
        wait_all: bool,
    },
    /// Per guest: connected, revision wanted and applied, last report, cert expiry.
    Status {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Enrolled agents.
    Agents {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Identity and service certificates.
    Certs {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// End a guest's session now and refuse its identity until it re-joins with a new
    /// token; its service certificates are revoked at step-ca where possible.
    Revoke {
        #[arg(long)]
        guest: GuestId,
    },
    /// Join tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Print a single-use, expiring join token for one guest.
    Create {
        #[arg(long)]
        guest: GuestId,
        #[arg(long, default_value = "15m", value_parser = duration::parse)]
        ttl: Duration,
        /// Allow the token to replace the identity of the guest while it is connected
        /// (otherwise such a join is refused, so a token used on the wrong machine
        /// cannot silently take over a live guest).
        #[arg(long)]
        replace: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[arg(long, env = "PHOENIX_STATE_DIR", default_value = "/var/lib/phoenix")]
    pub state_dir: PathBuf,
    #[arg(long, default_value = "0.0.0.0:7443")]
    pub listen: SocketAddr,
    /// Address agents dial (written into join tokens); default: the listen address.
    #[arg(long)]
    pub advertise: Option<String>,
    #[arg(long, default_value = "phoenix.lab")]
    pub trust_domain: String,
    /// Group that may use the admin socket besides root (socket mode 0660, else 0600).
    /// Every admin connection is checked by its peer credentials: root, the daemon's uid
    /// or a member of this group.
    #[arg(long)]
    pub admin_group: Option<String>,
    /// Agent-port connections that are not yet authenticated (TLS handshake, waiting for
    /// their first request, or enrolling without a certificate) held at once; further
    /// connections are closed at once and logged.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_connections: u32,
    /// An agent-port connection must finish TLS and send its first request within this
    /// long of being accepted, or it is closed. A connection without a client
    /// certificate (enrollment) is closed 60s after accept in any case.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    pub handshake_timeout: Duration,
    #[arg(long, default_value = "24h", value_parser = duration::parse)]
    pub agent_cert_ttl: Duration,
    #[arg(long, default_value = "24h", value_parser = duration::parse)]
    pub coordinator_cert_ttl: Duration,
    #[arg(long, default_value = "15s", value_parser = duration::parse)]
    pub ping_interval: Duration,
    /// An agent whose identity expired at most this long ago may renew by proving it holds
    /// the old key (a guest powered off over a weekend); 0 disables it.
    #[arg(long, default_value = "7d", value_parser = duration::parse)]
    pub renew_after_expiry: Duration,
    /// Which CA signs identities: the embedded one, or a Smallstep step-ca.
    #[arg(long, value_enum, default_value = "embedded")]
    pub ca: CaKind,
    /// step-ca URL, e.g. https://ca.internal:9000 (its host must be one of the CA's dnsNames).
    #[arg(long, required_if_eq("ca", "step-ca"))]
    pub step_ca_url: Option<String>,
    /// Hex SHA-256 of step-ca's root certificate (`step certificate fingerprint`).
    #[arg(long, required_if_eq("ca", "step-ca"))]
    pub step_ca_fingerprint: Option<String>,
    /// Name of the JWK provisioner in ca.json.
    #[arg(long, required_if_eq("ca", "step-ca"))]
    pub step_ca_provisioner: Option<String>,
    /// The provisioner's private JWK (0600).
    #[arg(long, conflicts_with = "step_ca_jwe")]
    pub step_ca_jwk: Option<PathBuf>,
    /// The provisioner key as step's password-encrypted JWE (the `encryptedKey` of ca.json)…
    #[arg(long, requires = "step_ca_password_file")]
    pub step_ca_jwe: Option<PathBuf>,
    /// …and the file holding its password.
    #[arg(long)]
    pub step_ca_password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum CaKind {
    Embedded,
    StepCa,
}

impl ServeArgs {
    async fn step_ca(
        &self,
    ) -> Result<Option<std::sync::Arc<dyn phoenix_pki::CertAuthority>>, CliError> {
        use phoenix_pki::stepca::{ProvisionerKeySource, StepCa, StepCaConfig};
        if self.ca == CaKind::Embedded {
            return Ok(None);
        }
        let key = match (
            &self.step_ca_jwk,
            &self.step_ca_jwe,
            &self.step_ca_password_file,
        ) {
            (Some(jwk), None, _) => ProvisionerKeySource::Jwk(jwk.clone()),
            (None, Some(jwe), Some(pw)) => ProvisionerKeySource::EncryptedJwk {
                jwe: jwe.clone(),
                password_file: pw.clone(),
            },
            _ => {
                return Err(CliError::Input(
                    "--ca step-ca needs --step-ca-jwk, or --step-ca-jwe with --step-ca-password-file".into(),
                ));
            }
        };
        let cfg = StepCaConfig {
            url: self.step_ca_url.clone().unwrap_or_default(),
            fingerprint: self.step_ca_fingerprint.clone().unwrap_or_default(),
            provisioner: self.step_ca_provisioner.clone().unwrap_or_default(),
            key,
        };
        let ca = StepCa::connect(&cfg)
            .await
            .map_err(|e| CliError::Serve(server::ServeError::Ca(e)))?;
        Ok(Some(std::sync::Arc::new(ca)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Admin(#[from] admin_client::AdminConnectError),
    #[error("{0}")]
    Rpc(String),
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    /// Not every guest converged; the details were printed.
    #[error("{0}")]
    NotConverged(String),
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError::Rpc(s.message().to_string())
    }
}

fn ago(unix: i64) -> String {
    if unix <= 0 {
        return "-".into();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    human(now - unix, "ago")
}

fn until(unix: i64) -> String {
    if unix <= 0 {
        return "-".into();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if unix < now {
        return format!("EXPIRED {}", human(now - unix, "ago"));
    }
    format!("in {}", human(unix - now, ""))
}

fn human(secs: i64, suffix: &str) -> String {
    let s = match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    };
    if suffix.is_empty() {
        s
    } else {
        format!("{s} {suffix}")
    }
}

/// A plain aligned table; no external crate needed for this. Cells are escaped here,
/// once for every table.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| escape_controls(c)).collect())
        .collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.clone()));
    }
    out
}

/// The CONNECTED column; a revoked guest says so whatever else is true.
fn connection(s: &v1::GuestStatus) -> &'static str {
    if s.revoked_unix != 0 {
        "revoked"
    } else if s.connected {
        "yes"
    } else if s.enrolled {
        "no"
    } else {
        "not enrolled"
    }
}

/// `s` with every control character (and the backslash) written as an escape, so text
/// a guest sent (hostname, agent version, error messages) cannot move the cursor, clear
/// the screen or forge table rows in the operator's terminal.
fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_bidi_control(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// Unicode directional overrides can make a cell read backwards (Trojan Source).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

fn report_summary(r: &ApplyReport) -> String {
    let mut parts = Vec::new();
    for (s, n) in [
        (Status::Changed, r.count(Status::Changed)),
        (Status::Unchanged, r.count(Status::Unchanged)),
        (Status::Failed, r.count(Status::Failed)),
        (Status::Skipped, r.count(Status::Skipped)),
    ] {
        if n > 0 {
            parts.push(format!("{n} {s}"));
        }
    }
    if parts.is_empty() {
        "no resources".into()
    } else {
        parts.join(", ")
    }
}

fn status_json(s: &v1::GuestStatus) -> serde_json::Value {
    let report = s
        .last_report
        .clone()
        .and_then(|r| ApplyReport::try_from(r).ok());
    serde_json::json!({
        "guest": s.guest_id,
        "enrolled": s.enrolled,
        "revoked": s.revoked_unix != 0,
        "revoked_unix": (s.revoked_unix != 0).then_some(s.revoked_unix),
        "connected": s.connected,
        "wanted_revision": s.wanted_revision,
        "applied_revision": s.applied_revision,
        "converged": report.as_ref().map(|r| r.converged() && !r.dry_run && r.revision == s.wanted_revision),
        "last_report": report,
        "last_report_unix": s.last_report_unix,
        "cert_not_after_unix": s.cert_not_after_unix,
        "agent_version": s.agent_version,
        "last_seen_unix": s.last_seen_unix,
        "mismatches": s.mismatches,
        "facts": s.facts.as_ref().map(|f| serde_json::json!({
            "hostname": f.hostname, "os": f.os, "kernel": f.kernel, "cpus": f.cpus,
            "memory_bytes": f.memory_bytes, "uptime_seconds": f.uptime_seconds,
            "packages": f.packages,
        })),
    })
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => serve(*args, cli.admin_socket).await,
        Command::Token {
            command:
                TokenCommand::Create {
                    guest,
                    ttl,
                    replace,
                },
        } => {
            let mut admin = admin_client::connect(&cli.admin_socket).await?;
            let resp = admin
                .create_token(v1::CreateTokenRequest {
                    guest_id: guest.get(),
                    ttl_seconds: ttl.as_secs(),
                    replace,
                })
                .await?
                .into_inner();
            println!("{}", resp.token);
            eprintln!(
                "single-use join token for guest {guest}, expires {}; on the guest run: phoenix-agent join <token>",
                until(resp.expires_unix)
            );
            Ok(())
        }
        Command::Status { output } => {
            let mut admin = admin_client::connect(&cli.admin_socket).await?;
            let resp = admin.status(v1::StatusRequest {}).await?.into_inner();
            match output {
                Output::Json => {
                    let v: Vec<_> = resp.guests.iter().map(status_json).collect();
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                }
                Output::Table => {
                    let rows: Vec<Vec<String>> = resp
                        .guests
                        .iter()
                        .map(|s| {
                            let report = s
                                .last_report
                                .clone()
                                .and_then(|r| ApplyReport::try_from(r).ok());
                            vec![
                                s.guest_id.to_string(),
                                connection(s).into(),
                                s.wanted_revision.to_string(),
                                s.applied_revision.to_string(),
                                report
                                    .map(|r| {
                                        format!(
                                            "rev {} {} ({})",
                                            r.revision,
                                            report_summary(&r),
                                            ago(s.last_report_unix)
                                        )
                                    })
                                    .unwrap_or_else(|| "-".into()),
                                until(s.cert_not_after_unix),
                                if s.mismatches.is_empty() {
                                    "-".into()
                                } else {
                                    s.mismatches.join("; ")
                                },
                            ]
                        })
                        .collect();
                    println!(
                        "{}",
                        table(
                            &[
                                "GUEST",
                                "CONNECTED",
                                "WANTED",
                                "APPLIED",
                                "LAST REPORT",
                                "CERT EXPIRES",
                                "DECLARED VS OBSERVED"
                            ],
                            &rows
                        )
                    );
                }
            }
            Ok(())
        }
        Command::Agents { output } => {
            let mut admin = admin_client::connect(&cli.admin_socket).await?;
            let resp = admin.status(v1::StatusRequest {}).await?.into_inner();
            let agents: Vec<_> = resp.guests.iter().filter(|s| s.enrolled).collect();
            match output {
                Output::Json => {
                    let v: Vec<_> = agents.iter().map(|s| status_json(s)).collect();
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                }
                Output::Table => {
                    let rows: Vec<Vec<String>> = agents
                        .iter()
                        .map(|s| {
                            let f = s.facts.clone().unwrap_or_default();
                            vec![
                                s.guest_id.to_string(),
                                connection(s).into(),
                                s.agent_version.clone(),
                                f.hostname,
                                f.os,
                                format!("{} cpu / {} MiB", f.cpus, f.memory_bytes / (1024 * 1024)),
                                ago(s.last_seen_unix),
                            ]
                        })
                        .collect();
                    println!(
                        "{}",
                        table(
                            &[
                                "GUEST",
                                "CONNECTED",
                                "VERSION",
                                "HOSTNAME",
                                "OS",
                                "RESOURCES",
                                "LAST SEEN"
                            ],
                            &rows
                        )
                    );
                }
            }
            Ok(())
        }
        Command::Certs { output } => {
            let mut admin = admin_client::connect(&cli.admin_socket).await?;
            let resp = admin.certs(v1::CertsRequest {}).await?.into_inner();
            match output {
                Output::Json => {
                    let v: Vec<_> = resp
                        .certs
                        .iter()
                        .map(|c| {
                            serde_json::json!({
                                "guest": c.guest_id, "kind": c.kind, "subject": c.subject, "sans": c.sans,
                                "not_after_unix": c.not_after_unix, "last_renewal_unix": c.last_renewal_unix,
                                "last_result": c.last_result, "serial": c.serial,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                }
                Output::Table => {
                    let rows: Vec<Vec<String>> = resp
                        .certs
                        .iter()
                        .map(|c| {
                            vec![
                                if c.guest_id == 0 {
                                    "-".into()
                                } else {
                                    c.guest_id.to_string()
                                },
                                c.kind.clone(),
                                c.subject.clone(),
                                c.sans.join(","),
                                until(c.not_after_unix),
                                ago(c.last_renewal_unix),
                                c.last_result.clone(),
                            ]
                        })
                        .collect();
                    println!(
                        "{}",
                        table(
                            &[
                                "GUEST", "KIND", "SUBJECT", "SANS", "EXPIRES", "RENEWED", "RESULT"
                            ],
                            &rows
                        )
                    );
                }
            }
            Ok(())
        }
        Command::Apply {
            path,
            dry_run,
            timeout,
            no_wait,
            guest,
            wait_all,
        } => {
            let scope = Scope {
                guests: guest,
                wait_all,
            };
            apply(&cli.admin_socket, &path, dry_run, timeout, no_wait, &scope).await
        }
        Command::Plan {
            path,
            timeout,
            guest,
        } => {
            let scope = Scope {
                guests: guest,
                wait_all: false,
            };
            apply(&cli.admin_socket, &path, true, timeout, false, &scope).await
        }
        Command::Revoke { guest } => {
            let mut admin = admin_client::connect(&cli.admin_socket).await?;
            let resp = admin
                .revoke(v1::RevokeRequest {
                    guest_id: guest.get(),
                })
                .await?
                .into_inner();
            println!(
                "revoked identity {} of guest {guest} ({}); its session was ended and it is refused until it re-joins",
                resp.serial,
                escape_controls(&resp.identity)
            );
            for line in &resp.service_certs {
                println!("service certificate {}", escape_controls(line));
            }
            Ok(())
        }
        Command::Schema => {
            println!("{}", compile::schema_json());
            Ok(())
        }
        Command::Validate {
            path,
            show,
            trust_domain,
        } => {
            let compiled = load(&path)?;
            refuse_reserved_names(&compiled, &trust_domain)?;
            for g in compiled.start_order() {
                let c = &compiled.guests[&g];
                println!(
                    "{} {g} ({}): {} resources",
                    c.kind,
                    c.name,
                    c.spec.resources().len()
                );
                if show {
                    // File contents may hold secret-looking lines meant for the guest.
                    let mut json = serde_json::to_value(&c.spec).unwrap_or_default();
                    phoenix_proto::redact::redact_json(&mut json);
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&json).unwrap_or_default()
                    );
                }
            }
            println!("ok: {} guests", compiled.guests.len());
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs, admin_socket: PathBuf) -> Result<(), CliError> {
    let trust_domain = TrustDomain::try_from(args.trust_domain.clone())
        .map_err(|e| CliError::Input(e.to_string()))?;
    if args.handshake_timeout.is_zero() {
        return Err(CliError::Input(
            "--handshake-timeout must be more than 0s".into(),
        ));
    }
    let ca = args.step_ca().await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| server::ServeError::Listen {
            addr: args.listen.to_string(),
            source,
        })?;
    let cfg = Config {
        state_dir: args.state_dir,
        listen: args.listen,
        advertise: args.advertise,
        trust_domain,
        admin_socket,
        admin_group: args.admin_group,
        agent_cert_ttl: args.agent_cert_ttl,
        coordinator_cert_ttl: args.coordinator_cert_ttl,
        renew_after_expiry: args.renew_after_expiry,
        ping_interval: args.ping_interval,
        max_pending_connections: args.max_pending_connections as usize,
        handshake_timeout: args.handshake_timeout,
    };
    raise_fd_limit();
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
        }
    };
    server::run(cfg, listener, ca, shutdown).await?;
    Ok(())
}

/// Certificates naming an identity of `trust_domain` (the daemon refuses them at apply
/// and at signing too), all at once.
fn refuse_reserved_names(compiled: &compile::Compiled, trust_domain: &str) -> Result<(), CliError> {
    let td = TrustDomain::try_from(trust_domain.to_string())
        .map_err(|e| CliError::Input(e.to_string()))?;
    let errors: Vec<String> = compiled
        .guests
        .iter()
        .flat_map(|(g, c)| {
            phoenix_proto::model::reserved_cert_names(&c.spec, &td)
                .into_iter()
                .map(move |e| format!("guest {g}: {e}"))
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CliError::Input(errors.join("\n")))
    }
}

/// One descriptor per agent connection: a fleet needs more than the usual soft limit of
/// 1024, so the daemon raises it to the hard limit (the connection budget follows it).
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "could not raise the open-file limit")
            }
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the open-file limit"),
    }
}

/// Compiles `path`, printing warnings; all errors at once.
/// Warnings are printed whether or not there are errors: a flagged secret must not go
/// unmentioned because an unrelated value failed.
fn load(path: &std::path::Path) -> Result<compile::Compiled, CliError> {
    let (result, warnings) = match compile::load(path) {
        Ok(c) => {
            let w = c.warnings.clone();
            (Ok(c), w)
        }
        Err(e) => {
            let w = e.1.clone();
            (Err(CliError::Input(e.to_string())), w)
        }
    };
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    result
}

/// Which compiled guests an apply or plan pushes to and waits for.
struct Scope {
    /// Empty: every compiled guest.
    guests: Vec<GuestId>,
    wait_all: bool,
}

/// Drops templates (compiled and validated, but a clone source is never a running guest)
/// and guests outside `--guest`; an id in `--guest` that the configs lack is an error.
fn select(compiled: &mut compile::Compiled, scope: &Scope) -> Result<(), CliError> {
    let unknown: Vec<String> = scope
        .guests
        .iter()
        .filter(|g| !compiled.guests.contains_key(g))
        .map(|g| g.to_string())
        .collect();
    if !unknown.is_empty() {
        return Err(CliError::Input(format!(
            "--guest names guests the configs do not declare: {}",
            unknown.join(", ")
        )));
    }
    compiled.guests.retain(|g, c| {
        if !scope.guests.is_empty() && !scope.guests.contains(g) {
            return false;
        }
        if c.facts.is_template {
            println!("guest {g}: template: compiled and valid, never pushed");
            return false;
        }
        true
    });
    Ok(())
}

async fn apply(
    socket: &std::path::Path,
    path: &std::path::Path,
    dry_run: bool,
    timeout: Duration,
    no_wait: bool,
    scope: &Scope,
) -> Result<(), CliError> {
    let mut compiled = load(path)?;
    select(&mut compiled, scope)?;
    if compiled.guests.is_empty() {
        println!("nothing to apply: no guest in scope");
        return Ok(());
    }
    // Each guest's state travels as one message to its agent: refuse what cannot be sent
    // here, with the guest named, rather than as a transport error later.
    let limit = phoenix_proto::MAX_MESSAGE_BYTES;
    let mut total = 0;
    for (g, c) in &compiled.guests {
        let size = c.spec.to_json().len();
        total += size;
        if size > limit / 2 {
            return Err(CliError::Input(format!(
                "desired state of guest {g} is {size} bytes, too large (limit {} bytes per guest): ship big content as packages or stack images, not inline files",
                limit / 2
            )));
        }
    }
    if total > limit - 64 * 1024 {
        return Err(CliError::Input(format!(
            "desired states total {total} bytes, too large for one apply (limit {limit} bytes): apply guests in batches"
        )));
    }
    let mut admin = admin_client::connect(socket).await?;
    let enrolled: BTreeSet<u32> = admin
        .status(v1::StatusRequest {})
        .await?
        .into_inner()
        .guests
        .iter()
        .filter(|s| s.enrolled)
        .map(|s| s.guest_id)
        .collect();
    let guests = compiled
        .guests
        .iter()
        .map(|(g, c)| (g.get(), c.spec.to_json()))
        .collect();
    let declared_json = compiled
        .guests
        .iter()
        .map(|(g, c)| (g.get(), serde_json::to_vec(&c.declared).unwrap_or_default()))
        .collect();
    // Watch before pushing so no report can slip past.
    let ids: Vec<u32> = compiled.guests.keys().map(|g| g.get()).collect();
    let mut reports = admin
        .watch_reports(v1::WatchReportsRequest {
            guest_ids: ids.clone(),
        })
        .await?
        .into_inner();
    let resp = admin
        .apply(v1::AdminApplyRequest {
            guests,
            dry_run,
            declared_json,
        })
        .await?
        .into_inner();
    let mut pending: BTreeMap<u32, (u64, String)> = BTreeMap::new();
    for g in &resp.guests {
        let what = if dry_run {
            "plan"
        } else if g.changed {
            "new"
        } else {
            "unchanged"
        };
        println!(
            "guest {}: {what} {} ({}){}",
            g.guest_id,
            if dry_run {
                String::new()
            } else {
                format!("rev {}", g.revision)
            },
            if g.connected {
                "connected"
            } else if enrolled.contains(&g.guest_id) {
                "not connected: will converge when it connects"
            } else {
                "not enrolled: will converge once it joins"
            },
            if g.diff.is_empty() {
                String::new()
            } else {
                format!("\n  {}", g.diff.join("\n  "))
            }
        );
        let waited = if dry_run {
            g.connected
        } else {
            scope.wait_all || enrolled.contains(&g.guest_id)
        };
        if waited {
            pending.insert(g.guest_id, (g.revision, g.digest.clone()));
        }
    }
    if no_wait || pending.is_empty() {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut failed: BTreeSet<u32> = BTreeSet::new();
    while !pending.is_empty() {
        let ev = match tokio::time::timeout_at(deadline, reports.message()).await {
            Ok(Ok(Some(ev))) => ev,
            Ok(Ok(None)) => {
                return Err(CliError::Rpc("coordinator closed the report stream".into()));
            }
            Ok(Err(s)) => return Err(s.into()),
            Err(_) => break,
        };
        let Some(report) = ev.report.and_then(|r| ApplyReport::try_from(r).ok()) else {
            continue;
        };
        let Some((rev, digest)) = pending.get(&ev.guest_id) else {
            continue;
        };
        let relevant = if dry_run {
            report.dry_run && &report.digest == digest
        } else {
            !report.dry_run
                && report.revision >= *rev
                && (report.revision > *rev || &report.digest == digest)
        };
        if !relevant {
            continue;
        }
        let verdict = if dry_run {
            "plan"
        } else if report.converged() {
            "converged"
        } else {
            "NOT converged"
        };
        println!(
            "guest {} rev {}: {verdict}: {}",
            ev.guest_id,
            if dry_run {
                "-".to_string()
            } else {
                report.revision.to_string()
            },
            report_summary(&report)
        );
        for r in &report.results {
            if r.status != Status::Unchanged {
                let detail = if r.diff.is_empty() {
                    &r.message
                } else {
                    &r.diff
                };
                // The agent's words: escaped line by line, the diff keeps its lines.
                let detail: Vec<String> = detail.lines().map(escape_controls).collect();
                println!(
                    "  {:<9} {}  {}",
                    r.status.to_string(),
                    escape_controls(&r.resource),
                    detail.join("\n            ")
                );
            }
        }
        if !dry_run && !report.converged() {
            failed.insert(ev.guest_id);
        }
        pending.remove(&ev.guest_id);
    }
    if !pending.is_empty() {
        let list: Vec<String> = pending.keys().map(|g| g.to_string()).collect();
        return Err(CliError::NotConverged(format!(
            "timed out after {}s waiting for guests {}",
            timeout.as_secs(),
            list.join(", ")
        )));
    }
    if !failed.is_empty() {
        let list: Vec<String> = failed.iter().map(|g| g.to_string()).collect();
        return Err(CliError::NotConverged(format!(
            "guests not converged: {}",
            list.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> compile::Compiled {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        compile::load(&dir).unwrap_or_else(|e| panic!("{e}"))
    }

    fn id(n: u32) -> GuestId {
        GuestId::try_from(n).expect("id")
    }

    #[test]
    fn templates_are_compiled_but_never_in_scope() {
        let mut c = example();
        assert!(c.guests[&id(9000)].facts.is_template);
        select(
            &mut c,
            &Scope {
                guests: vec![],
                wait_all: false,
            },
        )
        .expect("scope");
        let ids: Vec<u32> = c.guests.keys().map(|g| g.get()).collect();
        assert_eq!(ids, [101, 102, 103, 801, 1002]);
    }

    #[test]
    fn guest_scope_keeps_only_the_named_guests_and_refuses_unknown_ones() {
        let mut c = example();
        let scope = Scope {
            guests: vec![id(101), id(1002)],
            wait_all: false,
        };
        select(&mut c, &scope).expect("scope");
        let ids: Vec<u32> = c.guests.keys().map(|g| g.get()).collect();
        assert_eq!(ids, [101, 1002]);
        let mut c = example();
        let e = select(
            &mut c,
            &Scope {
                guests: vec![id(555)],
                wait_all: false,
            },
        )
        .expect_err("unknown guest");
        assert!(e.to_string().contains("555"), "{e}");
    }
}

#[cfg(test)]
mod escape_tests {
    use super::*;

    #[test]
    fn control_characters_and_bidi_overrides_are_escaped() {
        assert_eq!(
            escape_controls("a\x1b[2J\nb\t\\\u{202e}c"),
            "a\\u{1b}[2J\\nb\\t\\\\\\u{202e}c"
        );
        assert_eq!(escape_controls("plain host-1 ✓"), "plain host-1 ✓");
        let t = table(&["A"], &[vec!["x\ry".into()]]);
        assert_eq!(t, "A\nx\\ry");
    }
}
