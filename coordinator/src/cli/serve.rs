//! `phoenix serve`: the daemon's wiring from flags to `server::run` (the CA it signs
//! with, the listener, the open-file limit, shutdown on SIGINT/SIGTERM).

use super::CliError;
use super::args::{CaKind, ServeArgs};
use crate::server::{self, Config};
use phoenix_proto::model::TrustDomain;
use std::path::PathBuf;

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

pub(super) async fn serve(args: ServeArgs, admin_socket: PathBuf) -> Result<(), CliError> {
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
