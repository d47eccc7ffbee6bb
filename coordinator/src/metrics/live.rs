//! The state series, read at scrape time from what the coordinator already keeps.

use crate::server::{Coordinator, STORE_FILE, now_unix, unix};
use crate::store::StoreError;
use phoenix_proto::model::{GuestId, Status};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use std::sync::Arc;

pub(super) struct Live(pub(super) Arc<Coordinator>);

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuestLabel {
    guest: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    guest: String,
    state: &'static str,
}

/// `guest` is absent for the coordinator's own certificate.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    guest: Option<String>,
    kind: &'static str,
    cert: String,
}

/// What one scrape reads, gathered before anything is encoded so a store error drops
/// the guest series as a whole instead of leaving half of them.
#[derive(Default)]
struct Snapshot {
    last_report: Vec<(GuestLabel, i64)>,
    last_success: Vec<(GuestLabel, i64)>,
    resources: Vec<(ResourceLabels, i64)>,
    cert_ttl: Vec<(CertLabels, i64)>,
}

const STATES: [(Status, &str); 4] = [
    (Status::Unchanged, "unchanged"),
    (Status::Changed, "changed"),
    (Status::Failed, "failed"),
    (Status::Skipped, "skipped"),
];

impl Live {
    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let c = &self.0;
        let now = now_unix();
        let mut s = Snapshot::default();
        let own = unix(c.identity.current().info.not_after);
        s.cert_ttl.push((
            CertLabels {
                guest: None,
                kind: "coordinator",
                cert: "identity".into(),
            },
            own - now,
        ));
        for (guest, agent) in c.store.agents()? {
            // A revoked guest's certificates are refused whatever their dates say.
            if agent.revoked_unix.is_some() {
                continue;
            }
            s.cert_ttl.push((
                CertLabels {
                    guest: Some(guest.to_string()),
                    kind: "identity",
                    cert: "identity".into(),
                },
                agent.not_after_unix - now,
            ));
            self.report_series(guest, &mut s)?;
        }
        for (guest, cert) in c.store.service_certs()? {
            if cert.revoked.is_some() || cert.not_after_unix == 0 {
                continue;
            }
            s.cert_ttl.push((
                CertLabels {
                    guest: Some(guest.to_string()),
                    kind: "service",
                    cert: cert.name,
                },
                cert.not_after_unix - now,
            ));
        }
        Ok(s)
    }

    fn report_series(&self, guest: GuestId, s: &mut Snapshot) -> Result<(), StoreError> {
        let Some(rec) = self.0.store.report(guest)? else {
            return Ok(());
        };
        let g = || GuestLabel {
            guest: guest.to_string(),
        };
        s.last_report.push((g(), rec.received_unix));
        s.last_success
            .push((g(), i64::from(rec.report.converged())));
        for (status, state) in STATES {
            let n = rec.report.count(status);
            s.resources.push((
                ResourceLabels {
                    guest: guest.to_string(),
                    state,
                },
                i64::try_from(n).unwrap_or(i64::MAX),
            ));
        }
        Ok(())
    }
}

/// One gauge family; `series` may be empty (HELP and TYPE are still written).
fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(L, i64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.0;
        let connected = i64::try_from(c.hub.connected_count()).unwrap_or(i64::MAX);
        ConstGauge::new(connected).encode(encoder.encode_descriptor(
            "agents_connected",
            "Agents with an open session to this coordinator.",
            None,
            MetricType::Gauge,
        )?)?;
        let size = std::fs::metadata(c.cfg.state_dir.join(STORE_FILE)).map(|m| m.len());
        match size {
            Ok(bytes) => ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX)).encode(
                encoder.encode_descriptor(
                    "store_size",
                    "Size of the coordinator's store file.",
                    Some(&Unit::Bytes),
                    MetricType::Gauge,
                )?,
            )?,
            // No file: a store that keeps none here (etcd); no series rather than a lie.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the store file's size"),
        }
        let s = match self.snapshot() {
            Ok(s) => s,
            Err(e) => {
                // The scrape still answers; the missing series are what alerts see.
                tracing::warn!(error = %e, "metrics: cannot read guests from the store");
                Snapshot::default()
            }
        };
        gauges(
            &mut encoder,
            "guest_last_report_timestamp",
            "Unix time the guest's last apply report arrived (a pass that changed or failed something; not a plan); age is time() minus this.",
            Some(&Unit::Seconds),
            &s.last_report,
        )?;
        gauges(
            &mut encoder,
            "guest_last_apply_success",
            "1 when the guest's last apply converged (no resource failed or skipped), else 0.",
            None,
            &s.last_success,
        )?;
        gauges(
            &mut encoder,
            "resources",
            "Resources of the guest's last apply report by state.",
            None,
            &s.resources,
        )?;
        gauges(
            &mut encoder,
            "cert_ttl",
            "Seconds until the certificate expires (negative once expired): agent identities, service certificates signed for guests, the coordinator's identity.",
            Some(&Unit::Seconds),
            &s.cert_ttl,
        )
    }
}
