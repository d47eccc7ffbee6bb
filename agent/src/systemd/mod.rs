//! `service` resources: unit files rendered from the model (or drop-ins for units a package
//! owns), written atomically, `daemon-reload` only when one of our files changed (or systemd
//! says the unit changed on disk), enable/disable, start/stop, and a restart (or reload) when
//! our unit files changed or a resource in `restart_on`/`reload_on` changed earlier in the
//! same pass. The active state and the last failure are read back and reported.
//!
//! Through `systemctl`, not D-Bus: see docs/design/0003-systemd-interface.md.
//!
//! Ownership ([`owned`]): a unit file, drop-in or environment file without Phoenix's
//! header is shown as "replace existing (not managed by Phoenix)" and backed up before it
//! is replaced; a service no longer declared is stopped, disabled and its files removed
//! when Phoenix created them.
//!
//! Limits: drop-ins no longer declared by a still-declared service are not pruned; a unit
//! file without Phoenix's header is never removed by `ensure: absent` (only stopped and
//! disabled).

mod owned;
mod systemctl;
mod unit;

pub use systemctl::Systemctl;

use crate::exec::ExecError;
use crate::files::ledger::{Ledger, LedgerError};
use crate::hostio;
use crate::reconcile::{Check, Converge, PassContext, ResourceError};
use phoenix_proto::model::{Ensure, RunState, ServiceSpec};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("service {unit}: {reason}")]
    Invalid { unit: String, reason: String },
    #[error("systemctl {action}: {source}")]
    Run { action: String, source: ExecError },
    #[error("systemctl {action} failed: {message}")]
    Systemctl { action: String, message: String },
    #[error("service {unit}: {action} {path}: {source}")]
    File {
        unit: String,
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("service {unit}: secret environment {key}: {source}")]
    Secret {
        unit: String,
        key: String,
        source: std::io::Error,
    },
    #[error("service {unit} is {state} after {done}{failure}")]
    NotRunning {
        unit: String,
        state: String,
        done: String,
        failure: String,
    },
    #[error("service {unit}: unit not found (no unit given here and none installed)")]
    NotFound { unit: String },
    #[error("service {unit}: {source}")]
    Ledger {
        unit: String,
        #[source]
        source: LedgerError,
    },
}

/// What systemd says about a unit (`systemctl show`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitStatus {
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    pub unit_file_state: String,
    /// Result of the last run, e.g. `success`, `exit-code`, `signal`.
    pub result: String,
    pub need_daemon_reload: bool,
    pub exec_main_status: String,
    /// Automatic restarts since the unit was last started by hand: a rising count while we
    /// watch is a crash loop, whatever `ActiveState` says at the instant we look.
    pub n_restarts: u32,
    /// When the unit last became active, in CLOCK_MONOTONIC microseconds (0: unknown).
    pub active_enter_usec: u64,
}

impl UnitStatus {
    pub fn active(&self) -> bool {
        matches!(
            self.active_state.as_str(),
            "active" | "activating" | "reloading"
        )
    }

    /// Up, and not merely waiting to be restarted after a crash (`activating (auto-restart)`).
    pub fn running(&self) -> bool {
        self.active() && self.sub_state != "auto-restart"
    }

    /// Running, but systemd restarted it on its own and it came up less than `window` ago:
    /// a crash loop caught in its short "up" moment looks exactly like this, so it must be
    /// watched before it is called in sync.
    fn just_restarted_by_systemd(&self, window: Duration) -> bool {
        if !self.running() || self.n_restarts == 0 || self.active_enter_usec == 0 {
            return false;
        }
        let Ok(now) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else {
            return false;
        };
        let now_usec = u64::try_from(now.tv_sec()).unwrap_or(0) * 1_000_000
            + u64::try_from(now.tv_nsec()).unwrap_or(0) / 1_000;
        now_usec.saturating_sub(self.active_enter_usec) < window.as_micros() as u64
    }

    fn enabled_matches(&self, want: bool) -> bool {
        let on = matches!(self.unit_file_state.as_str(), "enabled" | "enabled-runtime");
        // Units without an [Install] section cannot be enabled or disabled.
        let fixed = matches!(
            self.unit_file_state.as_str(),
            "static" | "alias" | "indirect" | "generated" | "transient"
        );
        fixed || on == want
    }

    /// ", last result exit-code (status 3)", or nothing when the last run succeeded.
    fn failure(&self) -> String {
        if self.result.is_empty() || self.result == "success" {
            String::new()
        } else {
            format!(
                ", last result {} (status {})",
                self.result, self.exec_main_status
            )
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Start,
    Stop,
    Restart,
    Reload,
    Enable,
    Disable,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
            Verb::Reload => "reload",
            Verb::Enable => "enable",
            Verb::Disable => "disable",
        }
    }
}

/// The host's service manager.
#[async_trait::async_trait]
pub trait ServiceManager: Send + Sync {
    async fn status(&self, unit: &str) -> Result<UnitStatus, ServiceError>;
    async fn daemon_reload(&self) -> Result<(), ServiceError>;
    async fn control(&self, verb: Verb, unit: &str) -> Result<(), ServiceError>;
    /// The unit's last journal lines, best effort (empty when unavailable).
    async fn recent_log(&self, unit: &str) -> String;
}

/// A file this module owns for a service.
struct Managed {
    path: PathBuf,
    content: Vec<u8>,
    mode: u32,
}

pub struct ServiceConverger<M> {
    mgr: M,
    /// `/etc/systemd/system` on a guest.
    unit_dir: PathBuf,
    /// Where secret environment files go (`/etc/phoenix/env`), root-only.
    env_dir: PathBuf,
    /// How long a started or restarted unit must stay up, without automatic restarts,
    /// before it is reported running: `systemctl start` returns as soon as a simple
    /// service has forked, so a process that dies a moment later looked converged.
    settle: Duration,
    /// Which unit files Phoenix wrote (created or took over).
    ledger: Arc<Ledger>,
}

impl<M: ServiceManager> ServiceConverger<M> {
    pub fn new(mgr: M, unit_dir: impl Into<PathBuf>, env_dir: impl Into<PathBuf>) -> Self {
        ServiceConverger {
            mgr,
            unit_dir: unit_dir.into(),
            env_dir: env_dir.into(),
            settle: Duration::from_secs(3),
            ledger: Arc::new(Ledger::memory()),
        }
    }

    /// The agent's persisted ledger (tests use an in-memory one by default).
    pub fn with_ledger(mut self, ledger: Arc<Ledger>) -> Self {
        self.ledger = ledger;
        self
    }

    /// Overrides the settle window (unit tests with a fake manager use zero).
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// The directory a managed file is resolved beneath (links below it are refused).
    fn root_for(&self, path: &Path) -> &Path {
        if path.starts_with(&self.env_dir) {
            &self.env_dir
        } else {
            &self.unit_dir
        }
    }

    fn unit_path(&self, name: &str) -> PathBuf {
        self.unit_dir.join(name)
    }

    fn dropin_path(&self, name: &str, key: &str) -> PathBuf {
        self.unit_dir
            .join(format!("{name}.d"))
            .join(format!("{key}.conf"))
    }

    /// Every file the spec owns, rendered (secrets read here, never logged).
    fn render(&self, spec: &ServiceSpec) -> Result<Vec<Managed>, ServiceError> {
        let mut files = Vec::new();
        if let Some(u) = &spec.unit {
            let env_path = (!u.secret_environment.is_empty())
                .then(|| self.env_dir.join(format!("{}.env", spec.name)));
            if let Some(p) = &env_path {
                let mut values = Vec::new();
                for (k, r) in &u.secret_environment {
                    let v = hostio::read_secret(r).map_err(|source| ServiceError::Secret {
                        unit: spec.name.to_string(),
                        key: k.to_string(),
                        source,
                    })?;
                    values.push((k.to_string(), v));
                }
                files.push(Managed {
                    path: p.clone(),
                    content: unit::env_file(&spec.name, &values)?.into_bytes(),
                    mode: 0o600,
                });
            }
            let env_str = env_path.as_ref().map(|p| p.display().to_string());
            files.push(Managed {
                path: self.unit_path(&spec.name),
                content: unit::render(u, env_str.as_deref()).into_bytes(),
                mode: 0o644,
            });
        }
        for (key, text) in &spec.dropins {
            let mut body = String::from(unit::HEADER);
            body.push_str(text);
            if !body.ends_with('\n') {
                body.push('\n');
            }
            files.push(Managed {
                path: self.dropin_path(&spec.name, key),
                content: body.into_bytes(),
                mode: 0o644,
            });
        }
        Ok(files)
    }

    fn stale(&self, spec: &ServiceSpec) -> Result<Vec<Managed>, ServiceError> {
        let mut out = Vec::new();
        for f in self.render(spec)? {
            let have =
                hostio::read_if_exists(self.root_for(&f.path), &f.path).map_err(|source| {
                    ServiceError::File {
                        unit: spec.name.to_string(),
                        action: "read",
                        path: f.path.display().to_string(),
                        source,
                    }
                })?;
            if have.as_deref() != Some(f.content.as_slice()) {
                out.push(f);
            }
        }
        Ok(out)
    }

    /// Files of an absent service that are ours to remove: those carrying Phoenix's header
    /// (a drop-in or unit someone else wrote under the same name stays).
    fn removable(&self, spec: &ServiceSpec) -> Vec<PathBuf> {
        let mut paths = vec![self.unit_path(&spec.name)];
        paths.extend(spec.dropins.keys().map(|k| self.dropin_path(&spec.name, k)));
        paths.push(self.env_dir.join(format!("{}.env", spec.name)));
        paths.into_iter().filter(|p| self.has_header(p)).collect()
    }

    /// The file exists and starts with Phoenix's header (links are not followed).
    fn has_header(&self, path: &Path) -> bool {
        matches!(
            hostio::read_if_exists(self.root_for(path), path),
            Ok(Some(b)) if b.starts_with(unit::HEADER.as_bytes())
        )
    }

    /// The restart or reload this pass asks for, with its reason.
    fn refresh(spec: &ServiceSpec, cx: &PassContext) -> Option<(Verb, String)> {
        if let Some(r) = cx.any_changed(&spec.restart_on) {
            return Some((Verb::Restart, format!("{r} changed")));
        }
        cx.any_changed(&spec.reload_on)
            .map(|r| (Verb::Reload, format!("{r} changed")))
    }

    /// The text diff of each stale file, for the plan: secret-looking lines redacted, the
    /// 0600 secret environment file summarized only.
    fn stale_diffs(&self, stale: &[Managed]) -> Vec<String> {
        stale
            .iter()
            .filter_map(|f| {
                let have = hostio::read_if_exists(self.root_for(&f.path), &f.path)
                    .ok()?
                    .unwrap_or_default();
                let new = String::from_utf8_lossy(&f.content);
                let diff = crate::files::content_diff(Some(&have), &new, f.mode & 0o004 == 0);
                Some(format!("{}:\n{diff}", f.path.display()))
            })
            .collect()
    }

    async fn check_present(
        &self,
        spec: &ServiceSpec,
        cx: &PassContext,
    ) -> Result<Vec<String>, ServiceError> {
        let stale = self.stale(spec)?;
        if !cx.dry_run {
            self.adopt(spec, &stale)?;
        }
        let st = self.mgr.status(&spec.name).await?;
        let mut diff = Vec::new();
        if !stale.is_empty() {
            diff.extend(
                self.foreign(&stale)
                    .iter()
                    .map(|p| crate::files::replace_line(p.display())),
            );
            let paths: Vec<String> = stale.iter().map(|f| f.path.display().to_string()).collect();
            diff.push(format!("write {}", paths.join(", ")));
            diff.extend(self.stale_diffs(&stale));
        } else if st.need_daemon_reload {
            diff.push("daemon-reload (unit changed on disk)".into());
        }
        if stale.is_empty() && st.load_state == "not-found" {
            diff.push("unit not installed yet".into());
            return Ok(diff);
        }
        if let Some(want) = spec.enabled
            && !st.enabled_matches(want)
        {
            diff.push(format!(
                "{} (now {})",
                if want { "enable" } else { "disable" },
                st.unit_file_state
            ));
        }
        let will_run = match spec.state {
            Some(RunState::Running) => {
                if !st.running() {
                    diff.push(format!(
                        "start (now {} ({}){})",
                        st.active_state,
                        st.sub_state,
                        st.failure()
                    ));
                } else if st.just_restarted_by_systemd(self.settle) {
                    diff.push(format!(
                        "watch: restarted by systemd {} times, up less than {} s (crash loop?)",
                        st.n_restarts,
                        self.settle.as_secs()
                    ));
                }
                true
            }
            Some(RunState::Stopped) => {
                if st.active() {
                    diff.push("stop".into());
                }
                false
            }
            None => st.active(),
        };
        if will_run
            && st.active()
            && let Some((verb, why)) = Self::refresh(spec, cx)
        {
            diff.push(format!("{}: {why}", verb.as_str()));
        }
        Ok(diff)
    }

    async fn apply_present(
        &self,
        spec: &ServiceSpec,
        cx: &PassContext,
    ) -> Result<String, ServiceError> {
        let name = spec.name.as_str();
        let stale = self.stale(spec)?;
        let mut done = Vec::new();
        for f in &stale {
            done.push(self.write_owned(name, f)?);
        }
        let wrote = !stale.is_empty();
        if wrote || self.mgr.status(name).await?.need_daemon_reload {
            self.mgr.daemon_reload().await?;
            done.push("daemon-reload".into());
        }
        let st = self.mgr.status(name).await?;
        if st.load_state == "not-found" {
            return Err(ServiceError::NotFound {
                unit: name.to_owned(),
            });
        }
        if let Some(want) = spec.enabled
            && !st.enabled_matches(want)
        {
            let verb = if want { Verb::Enable } else { Verb::Disable };
            self.mgr.control(verb, name).await?;
            done.push(verb.as_str().into());
        }
        let refresh = Self::refresh(spec, cx);
        let action = match (spec.state, st.active()) {
            (Some(RunState::Running), false) => Some((Verb::Start, String::new())),
            (Some(RunState::Stopped), true) => Some((Verb::Stop, String::new())),
            (Some(RunState::Stopped), false) | (None, false) => None,
            (_, true) if wrote => Some((Verb::Restart, " (unit files changed)".into())),
            (_, true) => refresh.map(|(v, why)| (v, format!(" ({why})"))),
        };
        let mut restarts_at_start = None;
        if let Some((verb, why)) = action {
            self.mgr.control(verb, name).await?;
            done.push(format!("{}{why}", verb.as_str()));
            if matches!(verb, Verb::Start | Verb::Restart) && !self.settle.is_zero() {
                restarts_at_start = Some(self.mgr.status(name).await?.n_restarts);
                tokio::time::sleep(self.settle).await;
            }
        } else if spec.state == Some(RunState::Running) && st.just_restarted_by_systemd(self.settle)
        {
            // Caught up between two crashes: watch it as if we had just started it.
            restarts_at_start = Some(st.n_restarts);
            tokio::time::sleep(self.settle).await;
            done.push(format!(
                "watched {} s after a restart by systemd",
                self.settle.as_secs()
            ));
        }
        let done = done.join(", ");
        let after = self.mgr.status(name).await?;
        let crash_loop = restarts_at_start
            .filter(|base| after.n_restarts > *base)
            .map(|base| {
                format!(
                    ", crash loop: restarted {} times within {} s of starting",
                    after.n_restarts - base,
                    self.settle.as_secs()
                )
            });
        if spec.state == Some(RunState::Running) && (!after.running() || crash_loop.is_some()) {
            let mut failure = crash_loop.unwrap_or_default();
            failure.push_str(&after.failure());
            let log = self.mgr.recent_log(name).await;
            if !log.is_empty() {
                failure.push_str(&format!("; journal:\n{log}"));
            }
            return Err(ServiceError::NotRunning {
                unit: name.to_owned(),
                state: after.active_state,
                done,
                failure,
            });
        }
        Ok(format!(
            "{done}; now {} ({})",
            after.active_state, after.sub_state
        ))
    }

    async fn check_absent(&self, spec: &ServiceSpec) -> Result<Vec<String>, ServiceError> {
        let st = self.mgr.status(&spec.name).await?;
        let mut diff = Vec::new();
        if st.active() {
            diff.push("stop".to_owned());
        }
        if matches!(st.unit_file_state.as_str(), "enabled" | "enabled-runtime") {
            diff.push("disable".into());
        }
        for p in self.removable(spec) {
            diff.push(format!("remove {}", p.display()));
        }
        Ok(diff)
    }

    /// Stops the unit if it runs and disables it if it is enabled: the first half of taking
    /// a unit away, by `ensure: absent` or by removing one Phoenix created. Returns what it did.
    async fn stop_and_disable(&self, name: &str) -> Result<Vec<String>, ServiceError> {
        let st = self.mgr.status(name).await?;
        let mut done = Vec::new();
        if st.active() {
            self.mgr.control(Verb::Stop, name).await?;
            done.push("stop".to_owned());
        }
        if matches!(st.unit_file_state.as_str(), "enabled" | "enabled-runtime") {
            self.mgr.control(Verb::Disable, name).await?;
            done.push("disable".to_owned());
        }
        Ok(done)
    }

    async fn apply_absent(&self, spec: &ServiceSpec) -> Result<String, ServiceError> {
        let name = spec.name.as_str();
        let mut done = self.stop_and_disable(name).await?;
        let remove = self.removable(spec);
        for p in &remove {
            hostio::remove(self.root_for(p), p).map_err(|source| ServiceError::File {
                unit: name.to_owned(),
                action: "remove",
                path: p.display().to_string(),
                source,
            })?;
            done.push(format!("removed {}", p.display()));
        }
        let dir = self.unit_dir.join(format!("{name}.d"));
        // Only succeeds when empty: drop-ins someone else put there stay.
        let _ = std::fs::remove_dir(&dir);
        if !remove.is_empty() {
            self.mgr.daemon_reload().await?;
            done.push("daemon-reload".into());
        }
        self.ledger
            .forget_unit(name)
            .map_err(|source| ServiceError::Ledger {
                unit: name.to_owned(),
                source,
            })?;
        Ok(done.join(", "))
    }
}

#[async_trait::async_trait]
impl<M: ServiceManager> Converge<ServiceSpec> for ServiceConverger<M> {
    fn validate(&self, spec: &ServiceSpec) -> Result<(), ResourceError> {
        unit::validate(spec)?;
        Ok(())
    }

    async fn check(&self, spec: &ServiceSpec, cx: &PassContext) -> Result<Check, ResourceError> {
        let diff = match spec.ensure {
            Ensure::Present => self.check_present(spec, cx).await?,
            Ensure::Absent => self.check_absent(spec).await?,
        };
        Ok(if diff.is_empty() {
            Check::InSync
        } else {
            Check::Drift {
                diff: diff.join(", "),
            }
        })
    }

    async fn apply(&self, spec: &ServiceSpec, cx: &PassContext) -> Result<String, ResourceError> {
        Ok(match spec.ensure {
            Ensure::Present => self.apply_present(spec, cx).await?,
            Ensure::Absent => self.apply_absent(spec).await?,
        })
    }
}

#[cfg(test)]
mod tests;
