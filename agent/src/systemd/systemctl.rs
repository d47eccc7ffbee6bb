//! The real [`ServiceManager`]: `systemctl` and `journalctl` (docs/design/0003 says why not
//! D-Bus).

use super::{ServiceError, ServiceManager, UnitStatus, Verb};
use crate::exec::{CommandRunner, Invocation, Outcome};
use std::time::Duration;

pub struct Systemctl<R> {
    runner: R,
    /// Upper bound for one systemctl call; start/stop wait for their job to finish.
    pub timeout: Duration,
}

impl<R: CommandRunner> Systemctl<R> {
    pub fn new(runner: R) -> Self {
        Systemctl {
            runner,
            timeout: Duration::from_secs(300),
        }
    }

    async fn systemctl(&self, action: String, args: &[&str]) -> Result<Outcome, ServiceError> {
        let mut argv = vec![
            "/usr/bin/systemctl".to_owned(),
            "--no-ask-password".to_owned(),
        ];
        argv.extend(args.iter().map(|s| (*s).to_owned()));
        let o = self
            .runner
            .run(&Invocation::new(argv, self.timeout))
            .await
            .map_err(|source| ServiceError::Run {
                action: action.clone(),
                source,
            })?;
        if !o.success() {
            let mut msg = o.stderr.text().trim().to_owned();
            if msg.is_empty() {
                msg = o.stdout.text().trim().to_owned();
            }
            return Err(ServiceError::Systemctl {
                action,
                message: format!("{msg} ({})", o.status()),
            });
        }
        Ok(o)
    }
}

const PROPS: &str = "LoadState,ActiveState,SubState,UnitFileState,Result,NeedDaemonReload,ExecMainStatus,NRestarts,ActiveEnterTimestampMonotonic";

#[async_trait::async_trait]
impl<R: CommandRunner> ServiceManager for Systemctl<R> {
    async fn status(&self, unit: &str) -> Result<UnitStatus, ServiceError> {
        let o = self
            .systemctl(format!("show {unit}"), &["show", "-p", PROPS, "--", unit])
            .await?;
        Ok(parse_show(&String::from_utf8_lossy(&o.stdout.bytes)))
    }

    async fn daemon_reload(&self) -> Result<(), ServiceError> {
        self.systemctl("daemon-reload".into(), &["daemon-reload"])
            .await
            .map(drop)
    }

    async fn control(&self, verb: Verb, unit: &str) -> Result<(), ServiceError> {
        let v = verb.as_str();
        self.systemctl(format!("{v} {unit}"), &[v, "--", unit])
            .await
            .map(drop)
    }

    async fn recent_log(&self, unit: &str) -> String {
        let argv = [
            "/usr/bin/journalctl",
            "--no-pager",
            "-o",
            "cat",
            "-n",
            "10",
            "-u",
            unit,
        ];
        let inv = Invocation::new(
            argv.iter().map(|s| (*s).to_owned()).collect(),
            Duration::from_secs(10),
        );
        match self.runner.run(&inv).await {
            Ok(o) if o.success() => o.stdout.text().trim().to_owned(),
            _ => String::new(),
        }
    }
}

fn parse_show(out: &str) -> UnitStatus {
    let mut s = UnitStatus::default();
    for line in out.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.to_owned();
        match k {
            "LoadState" => s.load_state = v,
            "ActiveState" => s.active_state = v,
            "SubState" => s.sub_state = v,
            "UnitFileState" => s.unit_file_state = v,
            "Result" => s.result = v,
            "NeedDaemonReload" => s.need_daemon_reload = v == "yes",
            "ExecMainStatus" => s.exec_main_status = v,
            "NRestarts" => s.n_restarts = v.parse().unwrap_or(0),
            "ActiveEnterTimestampMonotonic" => s.active_enter_usec = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_systemctl_show() {
        let s = parse_show(
            "LoadState=loaded\nActiveState=failed\nSubState=failed\nUnitFileState=enabled\nResult=exit-code\nNeedDaemonReload=no\nInvocationID=abc\nExecMainStatus=3\n",
        );
        assert_eq!(s.active_state, "failed");
        assert_eq!(s.result, "exit-code");
        assert!(!s.need_daemon_reload);
        assert_eq!(s.exec_main_status, "3");
    }
}
