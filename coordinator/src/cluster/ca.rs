//! The embedded CA in a cluster: one root for every replica, its key sealed in etcd
//! (`ca/embedded`, [`phoenix_ca::sealed`]) so no replica's disk is the CA. The first
//! replica to start puts it there: the state directory's existing CA if it has one (a
//! single coordinator becoming a cluster keeps its agents' trust), else a new one; a
//! replica that loses the race uses the winner's. Every later start unseals it.
//!
//! With step-ca nothing is shared here: every replica is a registration authority of the
//! same step-ca (the same provisioner), which is the CA.

use crate::store::{EtcdStore, StoreError};
use phoenix_ca::CaError;
use phoenix_ca::embedded::EmbeddedCa;
use phoenix_ca::sealed::{SealError, SealedCa};
use std::path::{Path, PathBuf};

const KEY: &str = "ca/embedded";

#[derive(Debug, thiserror::Error)]
pub enum ClusterCaError {
    #[error(
        "--store etcd with the embedded CA needs --ca-secret-file: the CA key is shared by every replica through etcd, sealed with that secret (or use --ca step-ca)"
    )]
    NoSecret,
    #[error("read CA secret file {path}: {source}")]
    ReadSecret {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("shared CA in etcd ({KEY}): {0}")]
    Seal(#[from] SealError),
    #[error("shared CA in etcd ({KEY}): not a sealed CA record: {0}")]
    Record(serde_json::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// The cluster's embedded CA, from etcd or put there by this replica.
pub fn shared_embedded(
    etcd: &EtcdStore,
    secret_file: Option<&Path>,
    local_dir: &Path,
    name: &str,
) -> Result<EmbeddedCa, ClusterCaError> {
    let path = secret_file.ok_or(ClusterCaError::NoSecret)?;
    let secret = std::fs::read(path).map_err(|source| ClusterCaError::ReadSecret {
        path: path.to_path_buf(),
        source,
    })?;
    let origin = Path::new("etcd:ca/embedded");
    let stored = match etcd.get_shared(KEY)? {
        Some(v) => v,
        None => {
            let ca = if local_dir.join("ca.crt").exists() {
                tracing::info!(dir = %local_dir.display(), "sharing this replica's existing CA with the cluster");
                EmbeddedCa::load_or_create(local_dir, name)?
            } else {
                EmbeddedCa::generate(name)
                    .map_err(|source| CaError::Material {
                        action: "generate CA key for",
                        path: origin.to_path_buf(),
                        source,
                    })?
                    .0
            };
            let sealed = SealedCa::seal(ca.root_pem(), &ca.key_pem(), &secret)?;
            let json = serde_json::to_vec(&sealed).map_err(ClusterCaError::Record)?;
            match etcd.create_shared(KEY, json)? {
                None => {
                    tracing::info!("put the cluster's CA in etcd, sealed");
                    return Ok(ca);
                }
                // Another replica started at the same moment and won: use its CA.
                Some(theirs) => theirs,
            }
        }
    };
    let sealed: SealedCa = serde_json::from_slice(&stored).map_err(ClusterCaError::Record)?;
    let key = sealed.open(&secret)?;
    Ok(EmbeddedCa::from_pem(&sealed.root_pem, &key, origin)?)
}
