//! `guest install`: the agent into guests from the host, one line per guest as it goes
//! (or `-o json` at the end); non-zero exit when any guest failed.

use super::args::Output;
use super::offline::load;
use super::{CliError, duration};
use crate::admin_client;
use crate::guests::attach::{Docker, Lxc, Pct};
use crate::guests::install::{Installer, Outcome};
use crate::guests::qm::Qm;
use crate::guests::{GuestTransport, ProcessHost};
use clap::ValueEnum;
use phoenix_proto::model::{GuestId, TrustDomain};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum TransportKind {
    /// On a Proxmox node: `pct` for containers, `qm` + the guest agent for VMs, told
    /// apart by /etc/pve/{lxc,qemu-server}/<id>.conf.
    Proxmox,
    Pct,
    Qm,
    /// Plain LXC (`lxc-attach`); the container is named by the guest id.
    Lxc,
    /// A Docker container named by the guest id.
    Docker,
}

#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// Guest ids (Proxmox vmids).
    #[arg(required_unless_present = "all")]
    pub guests: Vec<GuestId>,
    /// Every guest the configs (-f, default /usr/local/phoenix_hypervisor/etc) declare,
    /// templates skipped.
    #[arg(long, conflicts_with = "guests")]
    pub all: bool,
    /// Phoenix configs: templates among the guests are skipped (an identity must never be
    /// baked into a template).
    #[arg(short = 'f', long = "file")]
    pub path: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "proxmox")]
    pub transport: TransportKind,
    /// The agent binary to install; default: `phoenix-agent` next to this `phoenix`, else
    /// the one the phoenix package ships for guests (/usr/lib/phoenix/phoenix-agent).
    #[arg(long)]
    pub agent_binary: Option<PathBuf>,
    /// The daemon's trust domain (`serve --trust-domain`): how the guest's own certificate
    /// is checked to name it.
    #[arg(long, default_value = "phoenix.lab")]
    pub trust_domain: String,
    /// Per guest, wait this long for the agent's session after starting it.
    #[arg(long, default_value = "60s", value_parser = duration::parse)]
    pub timeout: Duration,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
}

/// The guests to visit, in order, with templates reported and dropped.
fn targets(args: &InstallArgs) -> Result<(Vec<GuestId>, Vec<GuestId>), CliError> {
    let default = args.all.then(|| PathBuf::from(DEFAULT_CONFIGS));
    let Some(path) = args.path.as_ref().or(default.as_ref()) else {
        return Ok((args.guests.clone(), vec![]));
    };
    let compiled = load(path)?;
    let wanted: Vec<GuestId> = if args.all {
        compiled.guests.keys().copied().collect()
    } else {
        args.guests.clone()
    };
    let (templates, guests) = wanted
        .into_iter()
        .partition(|g| compiled.guests.get(g).is_some_and(|c| c.facts.is_template));
    Ok((guests, templates))
}

/// Where `--all` finds the guests without `-f`: the Phoenix Hypervisor configs.
const DEFAULT_CONFIGS: &str = "/usr/local/phoenix_hypervisor/etc";

/// The agent binary the phoenix package ships for guests (the host runs no agent).
const PACKAGED_AGENT: &str = "/usr/lib/phoenix/phoenix-agent";

fn agent_binary(args: &InstallArgs) -> Result<Vec<u8>, CliError> {
    let path = match &args.agent_binary {
        Some(p) => p.clone(),
        None => {
            let beside = std::env::current_exe()
                .map_err(|e| CliError::Input(format!("locate the phoenix binary: {e}")))?
                .with_file_name("phoenix-agent");
            if beside.exists() {
                beside
            } else {
                PathBuf::from(PACKAGED_AGENT)
            }
        }
    };
    std::fs::read(&path).map_err(|e| {
        CliError::Input(format!(
            "read the agent binary {}: {e} (give it with --agent-binary)",
            path.display()
        ))
    })
}

struct Transports {
    pct: Pct<ProcessHost>,
    qm: Qm<ProcessHost>,
    lxc: Lxc<ProcessHost>,
    docker: Docker<ProcessHost>,
}

impl Transports {
    fn pick(&self, kind: TransportKind, guest: GuestId) -> Result<&dyn GuestTransport, String> {
        Ok(match kind {
            TransportKind::Pct => &self.pct,
            TransportKind::Qm => &self.qm,
            TransportKind::Lxc => &self.lxc,
            TransportKind::Docker => &self.docker,
            TransportKind::Proxmox => {
                let conf = |dir: &str| Path::new(&format!("/etc/pve/{dir}/{guest}.conf")).exists();
                if conf("lxc") {
                    &self.pct
                } else if conf("qemu-server") {
                    &self.qm
                } else {
                    return Err(format!(
                        "no /etc/pve/lxc/{guest}.conf or /etc/pve/qemu-server/{guest}.conf: not a guest of this Proxmox node (or use --transport lxc|docker)"
                    ));
                }
            }
        })
    }
}

pub(super) async fn install(socket: &Path, args: InstallArgs) -> Result<(), CliError> {
    let trust_domain = TrustDomain::try_from(args.trust_domain.clone())
        .map_err(|e| CliError::Input(format!("--trust-domain: {e}")))?;
    let (guests, templates) = targets(&args)?;
    let binary = agent_binary(&args)?;
    let transports = Transports {
        pct: Pct { host: ProcessHost },
        qm: Qm {
            host: ProcessHost,
            node: "localhost".into(),
            poll: Duration::from_millis(500),
            timeout: Duration::from_secs(120),
        },
        lxc: Lxc { host: ProcessHost },
        docker: Docker { host: ProcessHost },
    };
    let mut installer = Installer {
        admin: admin_client::connect(socket).await?,
        transport: &transports.lxc,
        agent_binary: &binary,
        trust_domain,
        timeout: args.timeout,
    };
    let json = args.output == Output::Json;
    let mut rows = Vec::new();
    let mut failed = 0;
    let mut report = |guest: GuestId, result: &str, detail: String, secs: Option<f64>| {
        if json {
            rows.push(serde_json::json!({"guest": guest.get(), "result": result, "detail": detail, "seconds": secs}));
        } else {
            let took = secs.map(|s| format!(" ({s:.1}s)")).unwrap_or_default();
            println!("guest {guest}: {result}: {detail}{took}");
        }
    };
    for g in templates {
        report(
            g,
            "skipped",
            "template: an agent identity is never installed into a template".into(),
            None,
        );
    }
    for g in guests {
        let started = Instant::now();
        let result = match transports.pick(args.transport, g) {
            Ok(t) => {
                installer.transport = t;
                installer.install(g).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        let secs = Some(started.elapsed().as_secs_f64());
        match result {
            Ok(Outcome::LeftAlone) => report(
                g,
                "ok",
                "already enrolled and connected, left alone".into(),
                None,
            ),
            Ok(Outcome::Installed { why }) => report(
                g,
                "installed",
                format!("{why}; enrolled and connected"),
                secs,
            ),
            Err(e) => {
                failed += 1;
                report(g, "failed", e, secs);
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    }
    if failed > 0 {
        return Err(CliError::NotConverged(format!("{failed} guest(s) failed")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(guests: &[u32], all: bool) -> InstallArgs {
        InstallArgs {
            guests: guests
                .iter()
                .map(|&g| GuestId::try_from(g).expect("id"))
                .collect(),
            all,
            path: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")),
            transport: TransportKind::Lxc,
            agent_binary: None,
            trust_domain: "phoenix.lab".into(),
            timeout: Duration::from_secs(1),
            output: Output::Table,
        }
    }

    fn ids(v: &[GuestId]) -> Vec<u32> {
        v.iter().map(|g| g.get()).collect()
    }

    #[test]
    fn all_needs_no_file_and_reads_the_hypervisor_configs() {
        use clap::Parser;
        let cli = super::super::args::Cli::try_parse_from(["phoenix", "guest", "install", "--all"])
            .expect("`guest install --all` parses without -f");
        let super::super::args::Command::Guest {
            command: super::super::args::GuestCommand::Install(args),
        } = cli.command
        else {
            panic!("not guest install: {:?}", cli.command);
        };
        match targets(&args) {
            Err(e) => assert!(e.to_string().contains(DEFAULT_CONFIGS), "{e}"),
            // A machine that has the configs: they were read.
            Ok(_) => assert!(Path::new(DEFAULT_CONFIGS).exists()),
        }
    }

    #[test]
    fn templates_are_skipped_whether_named_or_taken_by_all() {
        let (guests, templates) = targets(&args(&[], true)).expect("targets");
        assert_eq!(ids(&guests), [101, 102, 103, 801, 1002]);
        assert_eq!(ids(&templates), [9000]);
        let (guests, templates) = targets(&args(&[9000, 102], false)).expect("targets");
        assert_eq!(ids(&guests), [102]);
        assert_eq!(ids(&templates), [9000]);
    }
}
