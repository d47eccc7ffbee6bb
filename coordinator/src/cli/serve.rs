//! `phoenix serve`: the daemon's wiring from flags to `server::run` (the CA it signs
//! with, the listener, the open-file limit, shutdown on SIGINT/SIGTERM).

use super::CliError;
use super::args::{CaKind, ServeArgs, StoreKind};
use crate::cluster::{ClusterConfig, ReplicaName};
use crate::server::{self, Config};
use crate::store::{EtcdConfig, EtcdTls};
use phoenix_proto::model::TrustDomain;
use std::path::PathBuf;
use std::time::Duration;

impl ServeArgs {
    async fn step_ca(
        &self,
    ) -> Result<Option<std::sync::Arc<dyn phoenix_ca::CertAuthority>>, CliError> {
        use phoenix_ca::stepca::{ProvisionerKeySource, StepCa, StepCaConfig};
        if self.ca == CaKind::Embedded {
            return Ok(None);
        }
        // Checked here rather than by clap: each value may come from the config file.
        let missing = |what: &str| {
            CliError::Input(format!(
                "--ca step-ca needs {what} (flag or config file key without the dashes)"
            ))
        };
        let key = match (
            &self.step_ca_jwk,
            &self.step_ca_jwe,
            &self.step_ca_password_file,
        ) {
            (Some(jwk), None, None) => ProvisionerKeySource::Jwk(jwk.clone()),
            (None, Some(jwe), Some(pw)) => ProvisionerKeySource::EncryptedJwk {
                jwe: jwe.clone(),
                password_file: pw.clone(),
            },
            _ => {
                return Err(missing(
                    "--step-ca-jwk, or --step-ca-jwe with --step-ca-password-file",
                ));
            }
        };
        let cfg = StepCaConfig {
            url: self
                .step_ca_url
                .clone()
                .ok_or_else(|| missing("--step-ca-url"))?,
            fingerprint: self
                .step_ca_fingerprint
                .clone()
                .ok_or_else(|| missing("--step-ca-fingerprint"))?,
            provisioner: self
                .step_ca_provisioner
                .clone()
                .ok_or_else(|| missing("--step-ca-provisioner"))?,
            key,
        };
        let ca = StepCa::connect(&cfg)
            .await
            .map_err(|e| CliError::Serve(server::ServeError::Ca(e)))?;
        Ok(Some(std::sync::Arc::new(ca)))
    }
}

pub(super) async fn serve(args: ServeArgs, admin_socket: PathBuf) -> Result<(), CliError> {
    let trust_domain = TrustDomain::try_from(args.trust_domain.clone())
        .map_err(|e| CliError::Input(e.to_string()))?;
    if args.handshake_timeout.is_zero() {
        return Err(CliError::Input(
            "--handshake-timeout must be more than 0s".into(),
        ));
    }
    if args.store == StoreKind::Etcd && args.etcd_endpoints.is_empty() {
        return Err(CliError::Input(
            "--store etcd needs --etcd-endpoints (or etcd-endpoints in the config file)".into(),
        ));
    }
    let ca = args.step_ca().await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| server::ServeError::Listen {
            addr: args.listen.to_string(),
            source,
        })?;
    let cluster = cluster_config(&args)?;
    let etcd = match args.store {
        StoreKind::Etcd => Some(EtcdConfig {
            prefix: args.etcd_prefix.clone(),
            lease_ttl: args.etcd_lease_ttl,
            tls: etcd_tls(&args)?,
            ..EtcdConfig::new(args.etcd_endpoints.clone())
        }),
        StoreKind::Redb => None,
    };
    let cfg = Config {
        state_dir: args.state_dir,
        etcd,
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
        metrics_listen: args.metrics_listen,
        status_listen: args.status_listen,
        status_token_file: args.status_token_file,
        events: crate::store::Retention {
            max_age: args.events_max_age,
            max_count: args.events_max_count,
        },
        cluster,
    };
    raise_fd_limit();
    // Handlers installed now, before READY=1: a SIGTERM right after readiness must stop
    // the daemon cleanly, not kill it with the default action.
    let signal = |kind| {
        tokio::signal::unix::signal(kind)
            .map_err(|e| CliError::Input(format!("install the SIGTERM/SIGINT handlers: {e}")))
    };
    let mut term = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    };
    server::run(cfg, listener, ca, shutdown).await?;
    Ok(())
}

/// The replica's name (validated; the host name by default) and the leader's schedule.
fn cluster_config(args: &ServeArgs) -> Result<ClusterConfig, CliError> {
    let replica = match &args.replica_name {
        Some(n) => ReplicaName::try_from(n.clone()).map_err(|e| CliError::Input(e.to_string()))?,
        None => ReplicaName::from_host(),
    };
    if args.prune_every < Duration::from_secs(1) {
        return Err(CliError::Input("--prune-every must be at least 1s".into()));
    }
    let defaults = ClusterConfig::default();
    Ok(ClusterConfig {
        replica,
        prune_every: args.prune_every,
        // Campaign three times per lease, so a leader that lost its key knows it before
        // a new one has been elected for long.
        lead_every: (args.etcd_lease_ttl / 3)
            .clamp(Duration::from_millis(500), defaults.lead_every),
        ca_secret_file: args.ca_secret_file.clone(),
    })
}

/// etcd over TLS: the CA is required for https:// endpoints; a client certificate and
/// key come together. Files are read here, so a missing one stops the start naming it.
fn etcd_tls(args: &ServeArgs) -> Result<Option<EtcdTls>, CliError> {
    let read = |flag: &str, p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map_err(|e| CliError::Input(format!("{flag} {}: {e}", p.display())))
    };
    let https = args
        .etcd_endpoints
        .iter()
        .any(|e| e.starts_with("https://"));
    let ca = match (&args.etcd_ca, https) {
        (Some(p), _) => read("--etcd-ca", p)?,
        (None, true) => {
            return Err(CliError::Input(
                "https:// etcd endpoints need --etcd-ca (the CA of etcd's server certificates)"
                    .into(),
            ));
        }
        (None, false) if args.etcd_cert.is_some() || args.etcd_key.is_some() => {
            return Err(CliError::Input(
                "--etcd-cert and --etcd-key need https:// endpoints and --etcd-ca".into(),
            ));
        }
        (None, false) => return Ok(None),
    };
    let identity = match (&args.etcd_cert, &args.etcd_key) {
        (Some(c), Some(k)) => Some((read("--etcd-cert", c)?, read("--etcd-key", k)?)),
        (None, None) => None,
        _ => {
            return Err(CliError::Input(
                "--etcd-cert and --etcd-key go together".into(),
            ));
        }
    };
    Ok(Some(EtcdTls {
        ca_pem: ca,
        identity,
    }))
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

#[cfg(test)]
mod tests {
    use super::super::args::{Cli, Command};
    use clap::Parser;

    /// clap no longer checks these (the config file may supply them): serve must.
    #[tokio::test]
    async fn step_ca_without_its_settings_is_refused_naming_what_is_missing() {
        for (extra, missing) in [
            (&[][..], "--step-ca-jwk"),
            (&["--step-ca-jwk", "/k"][..], "--step-ca-url"),
            (
                &["--step-ca-jwe", "/k", "--step-ca-url", "https://ca:9000"][..],
                "--step-ca-password-file",
            ),
        ] {
            let argv = [&["phoenix", "serve", "--ca", "step-ca"][..], extra].concat();
            let Command::Serve(args) = Cli::try_parse_from(argv).expect("parse").command else {
                panic!("not serve")
            };
            let err = match args.step_ca().await {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{extra:?}: accepted"),
            };
            assert!(err.contains(missing), "{extra:?}: {err}");
        }
    }
}
