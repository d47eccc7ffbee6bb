//! The command line as clap reads it: every command, its flags and their defaults.
//! Nothing here acts; [`super::run`] dispatches.

use super::duration;
use clap::{Parser, Subcommand, ValueEnum};
use phoenix_proto::model::GuestId;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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

/// `-o`: what a command prints on stdout.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// Readable text; tables fit an 80-column terminal.
    Table,
    /// Tables with every column (agent, trigger, facts, every name), however wide.
    Wide,
    /// JSON: a listing is one array; apply and plan print one object per line as
    /// they happen (newline-delimited), validate one object.
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
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
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
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
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
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        /// Also run a pass now on every guest whose desired state is unchanged (as
        /// `phoenix converge` does for one): repairs drift without waiting for the agent's
        /// drift interval. A guest that is not connected then counts as not converged.
        #[arg(long, conflicts_with = "dry_run")]
        force: bool,
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
    /// The event log: enrollments and refusals, sessions, desired states pushed, every
    /// report (with the time the guest did the work), certificates, the CA's health.
    /// One line per event, or with `-o json` one JSON object per line (index, time,
    /// topic, type, key, payload).
    Events {
        /// Keep printing new events as they are recorded.
        #[arg(long)]
        follow: bool,
        /// Only events about these guests (comma-separated ids).
        #[arg(long, value_delimiter = ',')]
        guest: Vec<GuestId>,
        /// Only these topics (comma-separated): Enrollment, Session, Desired, Report,
        /// Cert, Ca, Guest.
        #[arg(long, value_delimiter = ',')]
        topic: Vec<crate::store::Topic>,
        /// Only events after this index (the last one you saw): resumes a stream.
        #[arg(long, default_value_t = 0)]
        since: u64,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// A guest's applies, newest first: what changed, what failed and why.
    History {
        #[arg(long)]
        guest: GuestId,
        /// Show at most this many applies.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Drop a guest from the coordinator (one taken out of the configs): its identity is
    /// revoked and its session ended, then its records are deleted. Its events stay.
    Forget {
        #[arg(long)]
        guest: GuestId,
    },
    /// Have a guest's agent run a pass now, even on an unchanged revision, and print
    /// its report.
    Converge {
        #[arg(long)]
        guest: GuestId,
        /// Give up waiting for the report after this long.
        #[arg(long, default_value = "120s", value_parser = duration::parse)]
        timeout: Duration,
        /// Return once the pass is requested.
        #[arg(long)]
        no_wait: bool,
    },
    /// Guests as seen from the host.
    Guest {
        #[command(subcommand)]
        command: GuestCommand,
    },
    /// Join tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Write man pages or shell completions (for packaging).
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        what: Generated,
        /// Directory to write into (created).
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Generated {
    /// phoenix.1 and phoenix-<command>.1.
    Man,
    /// bash (phoenix), zsh (_phoenix) and fish (phoenix.fish).
    Completions,
}

#[derive(Subcommand, Debug)]
pub enum GuestCommand {
    /// Put the agent into guests and enroll them: push the binary and its unit, join
    /// with a single-use token, start, wait for the session. Idempotent.
    Install(super::guest::InstallArgs),
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
    /// A TOML file holding any of these options under their flag names
    /// (configs/coordinator.example.toml); flags given here win over it. Default:
    /// /etc/phoenix/coordinator.toml when it exists.
    #[arg(long, env = "PHOENIX_CONFIG")]
    pub config: Option<PathBuf>,
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
    /// Serve Prometheus metrics (OpenMetrics text at /metrics) on this address, e.g.
    /// 127.0.0.1:9464. Plain HTTP without authentication: keep it on loopback or a
    /// network only the Prometheus server reaches. Off when not given.
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Serve the read-only status page (HTML at /) on this address, e.g.
    /// 127.0.0.1:9465. Off when not given. Any address other than loopback needs
    /// --status-token-file.
    #[arg(long)]
    pub status_listen: Option<std::net::SocketAddr>,
    /// A file (not world-readable) whose first line is the token every status page
    /// request must carry (`Authorization: Bearer`, or the password of HTTP Basic
    /// authentication in a browser). Required when --status-listen is not loopback.
    #[arg(long)]
    pub status_token_file: Option<PathBuf>,
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
    /// Which CA signs identities: the embedded one, or a Smallstep step-ca (which needs
    /// the step-ca URL, fingerprint and provisioner, and its key: a JWK, or a JWE with its
    /// password file).
    #[arg(long, value_enum, default_value = "embedded")]
    pub ca: CaKind,
    /// step-ca URL, e.g. https://ca.internal:9000 (its host must be one of the CA's dnsNames).
    #[arg(long)]
    pub step_ca_url: Option<String>,
    /// Hex SHA-256 of step-ca's root certificate (`step certificate fingerprint`).
    #[arg(long)]
    pub step_ca_fingerprint: Option<String>,
    /// Name of the JWK provisioner in ca.json.
    #[arg(long)]
    pub step_ca_provisioner: Option<String>,
    /// The provisioner's private JWK (0600).
    #[arg(long)]
    pub step_ca_jwk: Option<PathBuf>,
    /// The provisioner key as step's password-encrypted JWE (the `encryptedKey` of ca.json)…
    #[arg(long)]
    pub step_ca_jwe: Option<PathBuf>,
    /// …and the file holding its password.
    #[arg(long)]
    pub step_ca_password_file: Option<PathBuf>,
    /// Where enrollments, tokens, desired states and reports live: redb in the state
    /// directory, or etcd shared by coordinator replicas (docs/design/0010).
    #[arg(long, value_enum, default_value = "redb")]
    pub store: StoreKind,
    /// etcd client URLs, comma-separated, e.g. http://10.0.0.1:2379,http://10.0.0.2:2379.
    #[arg(long, env = "PHOENIX_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Every Phoenix key lives under this etcd prefix.
    #[arg(long, default_value = "/phoenix/")]
    pub etcd_prefix: String,
    /// CA certificate (PEM) that etcd's server certificates chain to; with it the
    /// endpoints must be https://.
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) this replica presents to etcd (etcd
    /// --client-cert-auth), with --etcd-key.
    #[arg(long)]
    pub etcd_cert: Option<PathBuf>,
    /// Private key (PEM) of --etcd-cert.
    #[arg(long)]
    pub etcd_key: Option<PathBuf>,
    /// Lease of the leader key: a replica that dies is replaced as leader within this.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    pub etcd_lease_ttl: Duration,
    /// This replica's name in a cluster (leader key, replica registry); default: the
    /// host name.
    #[arg(long)]
    pub replica_name: Option<String>,
    /// With --store etcd and the embedded CA: a file of at least 32 bytes, the same on
    /// every replica, that seals the CA key shared through etcd (docs/design/0010).
    #[arg(long)]
    pub ca_secret_file: Option<PathBuf>,
    /// How often the leader deletes join tokens that expired over a day ago.
    #[arg(long, default_value = "1h", value_parser = duration::parse)]
    pub prune_every: Duration,
    /// Events (`phoenix events`, `phoenix history`) older than this are dropped.
    #[arg(long, default_value = "30d", value_parser = duration::parse)]
    pub events_max_age: Duration,
    /// At most this many events are kept; beyond it the oldest are dropped.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub events_max_count: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    Redb,
    Etcd,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaKind {
    Embedded,
    StepCa,
}
