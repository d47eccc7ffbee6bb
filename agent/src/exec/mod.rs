//! `exec` resources: a command for the steps that truly need one, made idempotent by its
//! guards. `check` evaluates the guards (`refresh_on`, `creates`, `unless`, `onlyif`, in that
//! order, cheapest first) and reports drift only when every guard says "run"; guard commands
//! run during `check`, also in dry-run, so they must be read-only (as in Puppet and Salt).
//! Output is captured with a cap and, in reports, cut to a short tail with secret values
//! redacted.

mod runner;

pub use runner::{Captured, CommandRunner, Invocation, Outcome, ProcessRunner};

use crate::hostio;
use crate::reconcile::{Check, Converge, PassContext, ResourceError};
use phoenix_proto::model::ExecSpec;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("wait for {program}: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
    #[error("look up user {user}: {reason}")]
    User { user: String, reason: String },
    #[error("exec {name}: {source}")]
    Secret {
        name: String,
        source: std::io::Error,
    },
    #[error("exec {name}: {guard} guard {program}: {source}")]
    Guard {
        name: String,
        guard: &'static str,
        program: String,
        source: Box<ExecError>,
    },
    #[error("exec {name}: {program} {status}; output: {output}")]
    Failed {
        name: String,
        program: String,
        status: String,
        output: String,
    },
}

/// Bytes of output kept in a report or error (the tail, where the reason usually is).
const REPORT_TAIL: usize = 2048;

/// Converges `exec` resources through a [`CommandRunner`].
pub struct ExecConverger<R> {
    runner: R,
}

impl<R: CommandRunner> ExecConverger<R> {
    pub fn new(runner: R) -> Self {
        ExecConverger { runner }
    }

    /// The invocation for `argv` with the spec's environment, cwd, user and timeout, plus
    /// the secret values to redact from what it prints.
    fn invocation(
        &self,
        spec: &ExecSpec,
        argv: &[String],
    ) -> Result<(Invocation, Vec<String>), ExecError> {
        let mut inv = Invocation::new(argv.to_vec(), Duration::from_secs(spec.timeout_seconds));
        inv.env = spec
            .environment
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let mut secrets = Vec::new();
        for (k, r) in &spec.secret_environment {
            let v = hostio::read_secret(r).map_err(|source| ExecError::Secret {
                name: spec.name.to_string(),
                source,
            })?;
            inv.env.insert(k.to_string(), v.clone());
            secrets.push(v);
        }
        inv.cwd = spec.cwd.as_ref().map(|p| PathBuf::from(p.as_str()));
        inv.user = spec.user.as_ref().map(|u| u.to_string());
        Ok((inv, secrets))
    }

    async fn guard(
        &self,
        spec: &ExecSpec,
        guard: &'static str,
        argv: &[String],
    ) -> Result<bool, ExecError> {
        let (inv, _) = self.invocation(spec, argv)?;
        let o = self
            .runner
            .run(&inv)
            .await
            .map_err(|source| ExecError::Guard {
                name: spec.name.to_string(),
                guard,
                program: inv.program().to_owned(),
                source: Box::new(source),
            })?;
        Ok(o.success())
    }
}

/// Stdout and stderr of `o`, the last [`REPORT_TAIL`] bytes, every secret value replaced.
pub fn report_output(o: &Outcome, secrets: &[String]) -> String {
    let mut s = o.stdout.text();
    let err = o.stderr.text();
    if !err.is_empty() {
        if !s.is_empty() && !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str(&err);
    }
    for secret in secrets.iter().filter(|v| !v.is_empty()) {
        s = s.replace(secret.as_str(), "[redacted]");
    }
    let s = s.trim_end();
    if s.len() <= REPORT_TAIL {
        return s.to_owned();
    }
    let mut start = s.len() - REPORT_TAIL;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[…]{}", &s[start..])
}

#[async_trait::async_trait]
impl<R: CommandRunner> Converge<ExecSpec> for ExecConverger<R> {
    fn validate(&self, _spec: &ExecSpec) -> Result<(), ResourceError> {
        // The model already refuses unguarded commands, relative programs and bad names;
        // users and secrets are looked up when the command runs, since a package or file
        // earlier in the same pass may create them.
        Ok(())
    }

    async fn check(&self, spec: &ExecSpec, cx: &PassContext) -> Result<Check, ResourceError> {
        let mut reasons = Vec::new();
        if !spec.refresh_on.is_empty() {
            match cx.any_changed(&spec.refresh_on) {
                Some(r) => reasons.push(format!("{r} changed")),
                None => return Ok(Check::InSync),
            }
        }
        if let Some(p) = &spec.creates {
            if p.as_path().exists() {
                return Ok(Check::InSync);
            }
            reasons.push(format!("{p} does not exist"));
        }
        if let Some(g) = &spec.unless {
            if self.guard(spec, "unless", g).await? {
                return Ok(Check::InSync);
            }
            reasons.push("unless guard failed".into());
        }
        if let Some(g) = &spec.onlyif {
            if !self.guard(spec, "onlyif", g).await? {
                return Ok(Check::InSync);
            }
            reasons.push("onlyif guard succeeded".into());
        }
        Ok(Check::Drift {
            diff: format!("run {:?} ({})", spec.command, reasons.join(", ")),
        })
    }

    async fn apply(&self, spec: &ExecSpec, _cx: &PassContext) -> Result<String, ResourceError> {
        let (inv, secrets) = self.invocation(spec, &spec.command)?;
        let o = self.runner.run(&inv).await?;
        let output = report_output(&o, &secrets);
        if !o.success() {
            return Err(ExecError::Failed {
                name: spec.name.to_string(),
                program: inv.program().to_owned(),
                status: o.status(),
                output,
            }
            .into());
        }
        let mut msg = format!("ran {} ({}, {:.1?})", inv.program(), o.status(), o.elapsed);
        if let Some(p) = &spec.creates
            && !p.as_path().exists()
        {
            msg.push_str(&format!(
                "; warning: {p} still does not exist, so it runs again next pass"
            ));
        }
        if !output.is_empty() {
            msg.push_str(": ");
            msg.push_str(&output);
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_proto::model::ResourceRef;

    fn spec(json: serde_json::Value) -> ExecSpec {
        serde_json::from_value(json).expect("valid exec spec")
    }

    fn conv() -> ExecConverger<ProcessRunner> {
        ExecConverger::new(ProcessRunner::default())
    }

    #[tokio::test]
    async fn creates_guard_runs_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("done");
        let s = spec(serde_json::json!({
            "name": "make-marker",
            "command": ["/bin/sh", "-c", format!("echo made > {}", marker.display())],
            "creates": marker.to_str(),
        }));
        let c = conv();
        let cx = PassContext::default();
        assert!(matches!(
            c.check(&s, &cx).await.expect("check"),
            Check::Drift { .. }
        ));
        c.apply(&s, &cx).await.expect("apply");
        assert_eq!(c.check(&s, &cx).await.expect("check"), Check::InSync);
    }

    #[tokio::test]
    async fn unless_and_onlyif_decide() {
        let c = conv();
        let cx = PassContext::default();
        let base = |k: &str, g: &str| {
            spec(serde_json::json!({"name": "x", "command": ["/bin/true"], k: [g]}))
        };
        assert_eq!(
            c.check(&base("unless", "/bin/true"), &cx).await.expect("c"),
            Check::InSync
        );
        assert!(matches!(
            c.check(&base("unless", "/bin/false"), &cx)
                .await
                .expect("c"),
            Check::Drift { .. }
        ));
        assert_eq!(
            c.check(&base("onlyif", "/bin/false"), &cx)
                .await
                .expect("c"),
            Check::InSync
        );
        assert!(matches!(
            c.check(&base("onlyif", "/bin/true"), &cx).await.expect("c"),
            Check::Drift { .. }
        ));
    }

    #[tokio::test]
    async fn refresh_on_runs_only_when_a_dependency_changed() {
        let c = conv();
        let s = spec(serde_json::json!({
            "name": "reload", "command": ["/bin/true"], "refresh_on": ["file:/etc/a.conf"],
        }));
        assert_eq!(
            c.check(&s, &PassContext::default()).await.expect("c"),
            Check::InSync
        );
        let mut cx = PassContext::default();
        cx.changed.insert(ResourceRef::new("file", "/etc/a.conf"));
        assert!(matches!(
            c.check(&s, &cx).await.expect("c"),
            Check::Drift { .. }
        ));
    }

    #[tokio::test]
    async fn failure_reports_exit_and_redacted_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("token");
        std::fs::write(&secret, "s3cr3t-value\n").expect("write secret");
        let s = spec(serde_json::json!({
            "name": "leaky",
            "command": ["/bin/sh", "-c", "echo token=$TOKEN; echo boom >&2; exit 7"],
            "onlyif": ["/bin/true"],
            "secret_environment": {"TOKEN": {"file": secret.to_str()}},
        }));
        let e = conv()
            .apply(&s, &PassContext::default())
            .await
            .expect_err("fails")
            .to_string();
        assert!(e.contains("exec leaky: /bin/sh exit 7"), "{e}");
        assert!(e.contains("token=[redacted]") && e.contains("boom"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
    }

    #[tokio::test]
    async fn timeout_is_a_failure() {
        let s = spec(serde_json::json!({
            "name": "slow", "command": ["/bin/sleep", "5"], "onlyif": ["/bin/true"],
            "timeout_seconds": 1,
        }));
        let e = conv()
            .apply(&s, &PassContext::default())
            .await
            .expect_err("times out")
            .to_string();
        assert!(e.contains("killed after"), "{e}");
    }

    #[test]
    fn report_output_keeps_the_tail() {
        let o = Outcome {
            code: Some(0),
            timed_out: false,
            stdout: Captured {
                bytes: "a".repeat(5000).into_bytes(),
                total: 5000,
            },
            stderr: Captured::default(),
            elapsed: Duration::ZERO,
        };
        let r = report_output(&o, &[]);
        assert!(r.starts_with("[…]") && r.len() < 2100);
    }
}
