//! Conversions between wire messages and domain types. Wire → domain validates.

use crate::model::{
    self, ApplyReport, DesiredState, GuestSpec, ModelError, ResourceResult, Status,
};
use crate::v1;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("desired state digest mismatch: header says {claimed}, spec hashes to {actual}")]
    Digest { claimed: String, actual: String },
    #[error("desired state revision {0} is invalid (must be at least 1; 0 only for a dry run)")]
    Revision(u64),
    #[error("desired state spec is invalid: {}", join(.0))]
    Spec(Vec<ModelError>),
    #[error("report for revision {revision}: resource {resource:?} has no status")]
    Status { revision: u64, resource: String },
}

fn join(errs: &[ModelError]) -> String {
    errs.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl DesiredState {
    pub fn new(revision: u64, spec: GuestSpec, dry_run: bool) -> Self {
        let digest = model::digest(&spec.to_json());
        DesiredState {
            revision,
            digest,
            spec,
            dry_run,
        }
    }
}

impl TryFrom<v1::DesiredState> for DesiredState {
    type Error = ConvertError;
    fn try_from(m: v1::DesiredState) -> Result<Self, ConvertError> {
        if m.revision == 0 && !m.dry_run {
            return Err(ConvertError::Revision(m.revision));
        }
        let actual = model::digest(&m.spec_json);
        if actual != m.digest {
            return Err(ConvertError::Digest {
                claimed: m.digest,
                actual,
            });
        }
        let spec = GuestSpec::from_json(&m.spec_json).map_err(ConvertError::Spec)?;
        Ok(DesiredState {
            revision: m.revision,
            digest: m.digest,
            spec,
            dry_run: m.dry_run,
        })
    }
}

impl From<&DesiredState> for v1::DesiredState {
    fn from(d: &DesiredState) -> Self {
        v1::DesiredState {
            revision: d.revision,
            digest: d.digest.clone(),
            spec_json: d.spec.to_json(),
            dry_run: d.dry_run,
        }
    }
}

impl From<Status> for v1::ResourceStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Unchanged => v1::ResourceStatus::Unchanged,
            Status::Changed => v1::ResourceStatus::Changed,
            Status::Failed => v1::ResourceStatus::Failed,
            Status::Skipped => v1::ResourceStatus::Skipped,
        }
    }
}

impl From<&ApplyReport> for v1::ApplyReport {
    fn from(r: &ApplyReport) -> Self {
        v1::ApplyReport {
            revision: r.revision,
            digest: r.digest.clone(),
            dry_run: r.dry_run,
            duration_micros: r.duration_micros,
            trigger: r.trigger.clone(),
            results: r
                .results
                .iter()
                .map(|x| v1::ResourceResult {
                    resource: x.resource.clone(),
                    status: v1::ResourceStatus::from(x.status) as i32,
                    message: x.message.clone(),
                    duration_micros: x.duration_micros,
                    diff: x.diff.clone(),
                })
                .collect(),
        }
    }
}

impl TryFrom<v1::ApplyReport> for ApplyReport {
    type Error = ConvertError;
    fn try_from(r: v1::ApplyReport) -> Result<Self, ConvertError> {
        let revision = r.revision;
        let results = r
            .results
            .into_iter()
            .map(|x| {
                let status = match v1::ResourceStatus::try_from(x.status) {
                    Ok(v1::ResourceStatus::Unchanged) => Status::Unchanged,
                    Ok(v1::ResourceStatus::Changed) => Status::Changed,
                    Ok(v1::ResourceStatus::Failed) => Status::Failed,
                    Ok(v1::ResourceStatus::Skipped) => Status::Skipped,
                    Ok(v1::ResourceStatus::Unspecified) | Err(_) => {
                        return Err(ConvertError::Status {
                            revision,
                            resource: x.resource,
                        });
                    }
                };
                Ok(ResourceResult {
                    resource: x.resource,
                    status,
                    message: x.message,
                    duration_micros: x.duration_micros,
                    diff: x.diff,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(ApplyReport {
            revision,
            digest: r.digest,
            dry_run: r.dry_run,
            results,
            duration_micros: r.duration_micros,
            trigger: r.trigger,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tampered_spec_is_refused() {
        let d = DesiredState::new(3, GuestSpec::default(), false);
        let mut wire = v1::DesiredState::from(&d);
        wire.spec_json = br#"{"resources":[{"kind":"file","path":"/x","content":""}]}"#.to_vec();
        assert!(matches!(
            DesiredState::try_from(wire),
            Err(ConvertError::Digest { .. })
        ));
        let ok = v1::DesiredState::from(&d);
        assert_eq!(DesiredState::try_from(ok).expect("round trip"), d);
    }
}
