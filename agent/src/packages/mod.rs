//! `package` and `apt_source` resources. Observed with dpkg-query, changed with apt-get,
//! non-interactively (no prompts, dpkg lock waited for with a timeout, conffiles kept), all
//! package changes of one pass in one apt-get transaction (`apply_batch`). Holds are set
//! with apt-mark: a managed package is held exactly when its spec says so.
//!
//! Limits: `absent` removes (keeps conffiles) rather than purges; apt sources are written
//! and refreshed but never removed by this module.

mod apt;
mod sources;

pub use apt::Apt;
pub use sources::AptSourceConverger;

use crate::exec::ExecError;
use crate::reconcile::{Check, Converge, PassContext, ResourceError};
use phoenix_proto::model::{PackageSpec, PackageState};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{action}: {source}")]
    Run { action: String, source: ExecError },
    #[error("{action} failed: {message}")]
    Apt { action: String, message: String },
    #[error(
        "package {name}: apt knows no installable version (is its source configured and updated?)"
    )]
    NoCandidate { name: String },
    #[error("package {name}: still not as declared after apt-get: {diff}")]
    NotConverged { name: String, diff: String },
    #[error("apt source {name}: {action} {path}: {source}")]
    File {
        name: String,
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("apt source {name}: signing key must be an ASCII-armored OpenPGP public key")]
    KeyFormat { name: String },
}

/// dpkg's record of one package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// `${db:Status-Abbrev}`: want, status, error flag, e.g. `ii`, `hi`, `rc`.
    pub status: String,
    pub version: String,
}

impl Installed {
    pub fn is_installed(&self) -> bool {
        self.status.as_bytes().get(1) == Some(&b'i')
    }
    pub fn held(&self) -> bool {
        self.status.as_bytes().first() == Some(&b'h')
    }
}

/// One apt-get run: packages to install (optionally `=version`) and to remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    pub install: Vec<(String, Option<String>)>,
    pub remove: Vec<String>,
}

impl Transaction {
    pub fn is_empty(&self) -> bool {
        self.install.is_empty() && self.remove.is_empty()
    }

    /// `apt-get install` arguments: `name`, `name=version`, and `name-` for removal, so
    /// one resolver run sees every change.
    pub fn apt_args(&self) -> Vec<String> {
        self.install
            .iter()
            .map(|(n, v)| match v {
                Some(v) => format!("{n}={v}"),
                None => n.clone(),
            })
            .chain(self.remove.iter().map(|n| format!("{n}-")))
            .collect()
    }
}

/// The host's package system.
#[async_trait::async_trait]
pub trait PackageManager: Send + Sync {
    /// dpkg's view of `names`; a name dpkg never saw is missing from the map.
    async fn query(&self, names: &[&str]) -> Result<BTreeMap<String, Installed>, PackageError>;
    /// apt's candidate version per name; missing or `None` means nothing installable.
    async fn candidates(
        &self,
        names: &[&str],
    ) -> Result<BTreeMap<String, Option<String>>, PackageError>;
    /// Runs one transaction; the result says what apt was asked to do.
    async fn transact(&self, tx: &Transaction) -> Result<String, PackageError>;
    async fn set_hold(&self, names: &[&str], hold: bool) -> Result<(), PackageError>;
    /// Refreshes the package index of one sources file only.
    async fn update_source(&self, sources_file: &Path) -> Result<(), PackageError>;
}

/// What must change for one package, from desired and observed state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Plan {
    install: Option<Option<String>>,
    remove: bool,
    hold: Option<bool>,
    diff: Vec<String>,
}

fn plan(spec: &PackageSpec, observed: Option<&Installed>, candidate: Option<&str>) -> Plan {
    let mut p = Plan::default();
    let installed = observed.filter(|i| i.is_installed());
    match spec.state {
        PackageState::Absent => {
            if let Some(i) = installed {
                p.remove = true;
                p.diff.push(format!("remove {} {}", spec.name, i.version));
            }
        }
        PackageState::Present => match (installed, &spec.version) {
            (None, v) => {
                p.install = Some(v.clone());
                p.diff.push(format!(
                    "install {}{}",
                    spec.name,
                    v.as_ref().map(|v| format!(" {v}")).unwrap_or_default()
                ));
            }
            (Some(i), Some(v)) if &i.version != v => {
                p.install = Some(Some(v.clone()));
                p.diff
                    .push(format!("change {} {} -> {v}", spec.name, i.version));
            }
            _ => {}
        },
        PackageState::Latest => match (installed, candidate) {
            (None, c) => {
                p.install = Some(None);
                p.diff.push(format!(
                    "install {} {}",
                    spec.name,
                    c.unwrap_or("(no candidate)")
                ));
            }
            (Some(i), Some(c)) if i.version != c => {
                p.install = Some(None);
                p.diff
                    .push(format!("upgrade {} {} -> {c}", spec.name, i.version));
            }
            _ => {}
        },
    }
    let held = observed.is_some_and(Installed::held);
    if spec.state != PackageState::Absent && held != spec.hold {
        p.hold = Some(spec.hold);
        p.diff.push(format!(
            "{} {}",
            if spec.hold { "hold" } else { "unhold" },
            spec.name
        ));
    }
    p
}

/// Converges `package` resources and remembers the installed versions it saw, for facts.
pub struct PackageConverger<M> {
    mgr: M,
    seen: Mutex<BTreeMap<String, Option<String>>>,
}

impl<M: PackageManager> PackageConverger<M> {
    pub fn new(mgr: M) -> Self {
        PackageConverger {
            mgr,
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    /// Installed versions of the managed packages, as of the last check or apply; for the
    /// agent's facts. Packages seen absent are left out.
    pub fn installed_versions(&self) -> BTreeMap<String, String> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|(n, v)| v.clone().map(|v| (n.clone(), v)))
            .collect()
    }

    fn remember(&self, observed: &BTreeMap<String, Installed>, names: &[&str]) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for n in names {
            let v = observed
                .get(*n)
                .filter(|i| i.is_installed())
                .map(|i| i.version.clone());
            seen.insert((*n).to_owned(), v);
        }
    }

    /// Observes `specs` and plans each; also returns what dpkg said.
    async fn plans(
        &self,
        specs: &[&PackageSpec],
    ) -> Result<(Vec<Plan>, BTreeMap<String, Installed>), PackageError> {
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let observed = self.mgr.query(&names).await?;
        self.remember(&observed, &names);
        let latest: Vec<&str> = specs
            .iter()
            .filter(|s| s.state == PackageState::Latest)
            .map(|s| s.name.as_str())
            .collect();
        let candidates = if latest.is_empty() {
            BTreeMap::new()
        } else {
            self.mgr.candidates(&latest).await?
        };
        let plans = specs
            .iter()
            .map(|s| {
                let c = candidates.get(s.name.as_str()).cloned().flatten();
                if s.state == PackageState::Latest && c.is_none() {
                    return Err(PackageError::NoCandidate {
                        name: s.name.to_string(),
                    });
                }
                Ok(plan(s, observed.get(s.name.as_str()), c.as_deref()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((plans, observed))
    }

    async fn batch(&self, specs: &[&PackageSpec]) -> Vec<Result<String, PackageError>> {
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let (plans, observed) = match self.plans(specs).await {
            Ok(p) => p,
            Err(e) => {
                let msg = e.to_string();
                return specs
                    .iter()
                    .map(|s| {
                        Err(PackageError::Apt {
                            action: format!("plan package {}", s.name),
                            message: msg.clone(),
                        })
                    })
                    .collect();
            }
        };
        let mut tx = Transaction::default();
        let mut unhold = Vec::new();
        for (s, p) in specs.iter().zip(&plans) {
            if let Some(v) = &p.install {
                tx.install.push((s.name.to_string(), v.clone()));
            }
            if p.remove {
                tx.remove.push(s.name.to_string());
            }
            // apt refuses to touch held packages; what we change we re-hold afterwards.
            if (p.install.is_some() || p.remove)
                && observed.get(s.name.as_str()).is_some_and(Installed::held)
            {
                unhold.push(s.name.as_str());
            }
        }
        let mut tx_error = None;
        if !unhold.is_empty()
            && let Err(e) = self.mgr.set_hold(&unhold, false).await
        {
            tx_error = Some(e.to_string());
        }
        if tx_error.is_none()
            && !tx.is_empty()
            && let Err(e) = self.mgr.transact(&tx).await
        {
            tx_error = Some(e.to_string());
        }
        // Holds as declared, also after a failed transaction (re-holding what we unheld).
        let after = self.mgr.query(&names).await;
        let mut hold_errors = BTreeMap::new();
        if let Ok(after) = &after {
            for want in [true, false] {
                let todo: Vec<&str> = specs
                    .iter()
                    .filter(|s| s.state != PackageState::Absent && s.hold == want)
                    .filter(|s| {
                        after
                            .get(s.name.as_str())
                            .is_some_and(|i| i.is_installed() && i.held() != want)
                    })
                    .map(|s| s.name.as_str())
                    .collect();
                if !todo.is_empty()
                    && let Err(e) = self.mgr.set_hold(&todo, want).await
                {
                    for n in todo {
                        hold_errors.insert(n.to_owned(), e.to_string());
                    }
                }
            }
        }
        let verify = self
            .plans(specs)
            .await
            .map(|(v, _)| v)
            .map_err(|e| e.to_string());
        specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let p = &plans[i];
                let in_tx = p.install.is_some() || p.remove;
                if in_tx && let Some(e) = &tx_error {
                    return Err(PackageError::Apt {
                        action: format!("package {}", s.name),
                        message: e.clone(),
                    });
                }
                if let Some(e) = hold_errors.get(s.name.as_str()) {
                    return Err(PackageError::Apt {
                        action: format!("package {}", s.name),
                        message: e.clone(),
                    });
                }
                match &verify {
                    Err(e) => Err(PackageError::Apt {
                        action: format!("verify package {}", s.name),
                        message: e.clone(),
                    }),
                    Ok(v) if !v[i].diff.is_empty() => Err(PackageError::NotConverged {
                        name: s.name.to_string(),
                        diff: v[i].diff.join(", "),
                    }),
                    Ok(_) => Ok(p.diff.join(", ")),
                }
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl<M: PackageManager> Converge<PackageSpec> for PackageConverger<M> {
    fn validate(&self, _spec: &PackageSpec) -> Result<(), ResourceError> {
        // Names and versions are checked by the model; they reach apt-get as argv, after
        // `--`, never through a shell.
        Ok(())
    }

    async fn check(&self, spec: &PackageSpec, _cx: &PassContext) -> Result<Check, ResourceError> {
        let p = self.plans(&[spec]).await?.0.remove(0);
        Ok(if p.diff.is_empty() {
            Check::InSync
        } else {
            Check::Drift {
                diff: p.diff.join(", "),
            }
        })
    }

    async fn apply(&self, spec: &PackageSpec, cx: &PassContext) -> Result<String, ResourceError> {
        self.apply_batch(&[spec], cx).await.remove(0)
    }

    async fn apply_batch(
        &self,
        specs: &[&PackageSpec],
        _cx: &PassContext,
    ) -> Vec<Result<String, ResourceError>> {
        self.batch(specs)
            .await
            .into_iter()
            .map(|r| r.map_err(ResourceError::from))
            .collect()
    }
}

#[cfg(test)]
mod tests;
