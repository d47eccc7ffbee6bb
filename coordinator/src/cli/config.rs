//! `/etc/phoenix/coordinator.toml`: every `phoenix serve` option, under its flag's name
//! (`--state-dir` is `state-dir = "..."`). A flag (or its environment variable) given on
//! the command line wins over the file; the file wins over the built-in default.
//!
//! Unknown keys and bad values are refused with the file, the key and the reason: a typo
//! in a service's config must stop the start, not silently fall back to a default.

use super::CliError;
use super::args::{CaKind, Cli, Command, ServeArgs, StoreKind};
use super::duration;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use phoenix_proto::model::TrustDomain;
use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Read when `--config` is not given, if it exists.
pub const DEFAULT_PATH: &str = "/etc/phoenix/coordinator.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// toml's message names the key, its line and column, and the reason.
    #[error("config {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The file's contents; each key is a `phoenix serve` flag.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    admin_socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    trust_domain: Option<TrustDomain>,
    admin_group: Option<String>,
    max_pending_connections: Option<Positive>,
    #[serde(default, deserialize_with = "duration_opt")]
    handshake_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration_opt")]
    agent_cert_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "duration_opt")]
    coordinator_cert_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "duration_opt")]
    ping_interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration_opt")]
    renew_after_expiry: Option<Duration>,
    ca: Option<CaKind>,
    step_ca_url: Option<String>,
    step_ca_fingerprint: Option<String>,
    step_ca_provisioner: Option<String>,
    step_ca_jwk: Option<PathBuf>,
    step_ca_jwe: Option<PathBuf>,
    step_ca_password_file: Option<PathBuf>,
    store: Option<StoreKind>,
    etcd_endpoints: Option<Vec<String>>,
    etcd_prefix: Option<String>,
    etcd_ca: Option<PathBuf>,
    etcd_cert: Option<PathBuf>,
    etcd_key: Option<PathBuf>,
    #[serde(default, deserialize_with = "duration_opt")]
    etcd_lease_ttl: Option<Duration>,
    replica_name: Option<String>,
    ca_secret_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "duration_opt")]
    prune_every: Option<Duration>,
    metrics_listen: Option<SocketAddr>,
    status_listen: Option<SocketAddr>,
    status_token_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "duration_opt")]
    events_max_age: Option<Duration>,
    events_max_count: Option<Positive64>,
}

/// A count of at least 1 (`events-max-count`).
#[derive(Debug, Clone, Copy)]
struct Positive64(u64);

impl<'de> Deserialize<'de> for Positive64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u64::deserialize(d)? {
            0 => Err(serde::de::Error::custom("must be at least 1")),
            n => Ok(Positive64(n)),
        }
    }
}

/// A count of at least 1 (`max-pending-connections`).
#[derive(Debug, Clone, Copy)]
struct Positive(u32);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u32::deserialize(d)? {
            0 => Err(serde::de::Error::custom("must be at least 1")),
            n => Ok(Positive(n)),
        }
    }
}

/// The same `90s` / `15m` / `24h` / `7d` forms as the flags.
fn duration_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    duration::parse(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

impl FileConfig {
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string().trim_end().to_string(),
        })
    }

    /// `explicit`: named by `--config`, so it must exist; otherwise the default path is
    /// read only if it is there.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// True when the user gave this argument (flag or environment), so it beats the file.
fn given(m: &ArgMatches, id: &str) -> bool {
    matches!(
        m.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

impl ServeArgs {
    /// Takes every value of `file` whose flag was not given in `m` (the serve matches).
    fn merge(&mut self, file: FileConfig, m: &ArgMatches) {
        macro_rules! take {
            ($($field:ident),* $(,)?) => {$(
                if let Some(v) = file.$field
                    && !given(m, stringify!($field))
                {
                    self.$field = v.into();
                }
            )*};
        }
        take!(
            state_dir,
            listen,
            advertise,
            admin_group,
            handshake_timeout,
            agent_cert_ttl,
            coordinator_cert_ttl,
            ping_interval,
            renew_after_expiry,
            ca,
            step_ca_url,
            step_ca_fingerprint,
            step_ca_provisioner,
            step_ca_jwk,
            step_ca_jwe,
            step_ca_password_file,
            store,
            etcd_endpoints,
            etcd_prefix,
            etcd_ca,
            etcd_cert,
            etcd_key,
            etcd_lease_ttl,
            replica_name,
            ca_secret_file,
            prune_every,
            metrics_listen,
            status_listen,
            status_token_file,
            events_max_age,
        );
        if let Some(Positive64(n)) = file.events_max_count
            && !given(m, "events_max_count")
        {
            self.events_max_count = n;
        }
        if let Some(td) = file.trust_domain
            && !given(m, "trust_domain")
        {
            self.trust_domain = td.as_str().to_string();
        }
        if let Some(Positive(n)) = file.max_pending_connections
            && !given(m, "max_pending_connections")
        {
            self.max_pending_connections = n;
        }
    }
}

impl Cli {
    /// Parses the command line (exiting on a usage error, as clap does) and, for `serve`,
    /// fills what was not given from the config file.
    pub fn parse_with_config() -> Result<Cli, CliError> {
        let matches = Cli::command().get_matches();
        let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        if let Command::Serve(args) = &mut cli.command {
            let (path, explicit) = match &args.config {
                Some(p) => (p.clone(), true),
                None => (PathBuf::from(DEFAULT_PATH), false),
            };
            let mut file = FileConfig::load(&path, explicit)?;
            if let Some(sock) = file.admin_socket.take()
                && !given(&matches, "admin_socket")
            {
                cli.admin_socket = sock;
            }
            if let Some(("serve", sub)) = matches.subcommand() {
                args.merge(file, sub);
            }
        }
        Ok(cli)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_with(argv: &[&str], toml: &str) -> (Cli, Result<(), ConfigError>) {
        let matches = Cli::command()
            .try_get_matches_from(argv)
            .expect("parse argv");
        let mut cli = Cli::from_arg_matches(&matches).expect("args");
        let path = Path::new("/etc/phoenix/coordinator.toml");
        let file = match FileConfig::parse(path, toml) {
            Ok(f) => f,
            Err(e) => return (cli, Err(e)),
        };
        let Command::Serve(args) = &mut cli.command else {
            panic!("not serve")
        };
        let (_, sub) = matches.subcommand().expect("subcommand");
        args.merge(file, sub);
        (cli, Ok(()))
    }

    fn serve_args(cli: &Cli) -> &ServeArgs {
        match &cli.command {
            Command::Serve(a) => a,
            _ => panic!("not serve"),
        }
    }

    #[test]
    fn the_example_file_loads_and_sets_what_it_says() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/coordinator.example.toml");
        let text = std::fs::read_to_string(&path).expect("read the example");
        let (cli, r) = serve_with(&["phoenix", "serve"], &text);
        r.expect("the example is valid");
        let a = serve_args(&cli);
        assert_eq!(a.listen.to_string(), "0.0.0.0:7443");
        assert_eq!(a.state_dir, PathBuf::from("/var/lib/phoenix"));
        assert_eq!(a.admin_group.as_deref(), Some("phoenix"));
        assert_eq!(a.agent_cert_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(a.ca, CaKind::Embedded);
        assert_eq!(
            a.status_listen.map(|s| s.to_string()).as_deref(),
            Some("127.0.0.1:9465"),
            "the page is on, on loopback"
        );
        assert_eq!(a.status_token_file, None);
    }

    #[test]
    fn file_fills_defaults_and_flags_win() {
        let toml = "listen = \"127.0.0.1:9000\"\ntrust-domain = \"lab.example\"\n\
                    ping-interval = \"3s\"\nmax-pending-connections = 7\nca = \"step-ca\"\n";
        let (cli, r) = serve_with(&["phoenix", "serve", "--ping-interval", "9s"], toml);
        r.expect("valid");
        let a = serve_args(&cli);
        assert_eq!(a.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(a.trust_domain, "lab.example");
        assert_eq!(a.ping_interval, Duration::from_secs(9), "the flag wins");
        assert_eq!(a.max_pending_connections, 7);
        assert_eq!(a.ca, CaKind::StepCa);
    }

    #[test]
    fn the_store_can_come_from_the_file() {
        let toml = "store = \"etcd\"\netcd-endpoints = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]\n";
        let (cli, r) = serve_with(&["phoenix", "serve"], toml);
        r.expect("valid");
        let a = serve_args(&cli);
        assert_eq!(a.store, StoreKind::Etcd);
        assert_eq!(a.etcd_endpoints.len(), 2);
        assert_eq!(a.etcd_prefix, "/phoenix/", "default kept");
        let (_, r) = serve_with(&["phoenix", "serve"], "store = \"zookeeper\"\n");
        let msg = r.expect_err("unknown store").to_string();
        assert!(
            msg.contains("store") && msg.contains("unknown variant"),
            "{msg}"
        );
    }

    #[test]
    fn event_retention_comes_from_the_file_and_flags_win() {
        let toml = "events-max-age = \"2d\"\nevents-max-count = 50\n";
        let (cli, r) = serve_with(&["phoenix", "serve", "--events-max-count", "70"], toml);
        r.expect("valid");
        let a = serve_args(&cli);
        assert_eq!(a.events_max_age, Duration::from_secs(2 * 24 * 3600));
        assert_eq!(a.events_max_count, 70, "the flag wins");
        let (_, r) = serve_with(&["phoenix", "serve"], "events-max-count = 0\n");
        let msg = r.expect_err("zero events").to_string();
        assert!(
            msg.contains("events-max-count") && msg.contains("at least 1"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_name_file_key_and_reason() {
        for (toml, key, reason) in [
            ("listne = \"0.0.0.0:1\"\n", "listne", "unknown field"),
            (
                "handshake-timeout = \"5y\"\n",
                "handshake-timeout",
                "invalid duration unit",
            ),
            ("listen = \"nowhere\"\n", "listen", "invalid socket address"),
            (
                "max-pending-connections = 0\n",
                "max-pending-connections",
                "at least 1",
            ),
            ("ca = \"vault\"\n", "ca", "unknown variant"),
            ("trust-domain = \"Bad Domain\"\n", "trust-domain", ""),
        ] {
            let (_, r) = serve_with(&["phoenix", "serve"], toml);
            let msg = r.expect_err(toml).to_string();
            assert!(msg.contains("/etc/phoenix/coordinator.toml"), "{msg}");
            assert!(msg.contains(key), "{key}: {msg}");
            assert!(msg.contains(reason), "{reason}: {msg}");
        }
    }

    #[test]
    fn an_explicit_config_must_exist_the_default_may_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("none.toml");
        assert!(FileConfig::load(&missing, false).is_ok());
        let err = FileConfig::load(&missing, true).expect_err("explicit");
        assert!(err.to_string().contains("none.toml"), "{err}");
    }
}
