//! The real [`PackageManager`]: dpkg-query to observe, apt-get/apt-mark/apt-cache to change,
//! every call non-interactive and bounded by a timeout.

use super::{Installed, PackageError, PackageManager, Transaction};
use crate::exec::{CommandRunner, Invocation, Outcome};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Drives apt and dpkg through a [`CommandRunner`].
pub struct Apt<R> {
    runner: R,
    /// How long apt-get waits for another dpkg/apt process to release the lock.
    pub lock_timeout: Duration,
    /// Upper bound for one apt-get run (downloads included).
    pub timeout: Duration,
}

impl<R: CommandRunner> Apt<R> {
    pub fn new(runner: R) -> Self {
        Apt {
            runner,
            lock_timeout: Duration::from_secs(120),
            timeout: Duration::from_secs(1800),
        }
    }

    fn inv(&self, argv: &[&str], timeout: Duration) -> Invocation {
        Invocation::new(argv.iter().map(|s| (*s).to_owned()).collect(), timeout)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("APT_LISTCHANGES_FRONTEND", "none")
    }

    async fn run(&self, action: &str, inv: Invocation) -> Result<Outcome, PackageError> {
        self.runner
            .run(&inv)
            .await
            .map_err(|source| PackageError::Run {
                action: action.to_owned(),
                source,
            })
    }

    fn lock_opt(&self) -> String {
        format!("DPkg::Lock::Timeout={}", self.lock_timeout.as_secs())
    }
}

/// apt's own words: its `E:` lines, else the tail of what it printed.
fn apt_message(o: &Outcome) -> String {
    let err = o.stderr.text();
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("E: ")).collect();
    let msg = if errors.is_empty() {
        let all = format!("{}{}", o.stdout.text(), err);
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    } else {
        errors.join("\n")
    };
    format!("{} ({})", msg.trim(), o.status())
}

const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

#[async_trait::async_trait]
impl<R: CommandRunner> PackageManager for Apt<R> {
    async fn query(&self, names: &[&str]) -> Result<BTreeMap<String, Installed>, PackageError> {
        let mut argv = vec![
            "/usr/bin/dpkg-query",
            "-W",
            "-f=${Package}\t${db:Status-Abbrev}\t${Version}\n",
            "--",
        ];
        argv.extend_from_slice(names);
        let o = self
            .run("query dpkg", self.inv(&argv, QUERY_TIMEOUT))
            .await?;
        // Exit 1 with "no packages found matching" only means dpkg never saw that name.
        let only_unknown = o.code == Some(1)
            && o.stderr
                .text()
                .lines()
                .all(|l| l.contains("no packages found matching"));
        if !o.success() && !only_unknown {
            return Err(PackageError::Apt {
                action: format!("dpkg-query {}", names.join(" ")),
                message: apt_message(&o),
            });
        }
        Ok(parse_dpkg_query(&String::from_utf8_lossy(&o.stdout.bytes)))
    }

    async fn candidates(
        &self,
        names: &[&str],
    ) -> Result<BTreeMap<String, Option<String>>, PackageError> {
        let mut argv = vec!["/usr/bin/apt-cache", "policy", "--"];
        argv.extend_from_slice(names);
        let o = self
            .run("query apt-cache", self.inv(&argv, QUERY_TIMEOUT))
            .await?;
        if !o.success() {
            return Err(PackageError::Apt {
                action: format!("apt-cache policy {}", names.join(" ")),
                message: apt_message(&o),
            });
        }
        Ok(parse_policy(&String::from_utf8_lossy(&o.stdout.bytes)))
    }

    async fn transact(&self, tx: &Transaction) -> Result<String, PackageError> {
        let lock = self.lock_opt();
        let mut argv = vec![
            "/usr/bin/apt-get",
            "-q",
            "-y",
            "-o",
            &lock,
            "-o",
            "Dpkg::Options::=--force-confdef",
            "-o",
            "Dpkg::Options::=--force-confold",
            // An explicit version pin may be older than what is installed.
            "--allow-downgrades",
            "install",
            "--",
        ];
        let args = tx.apt_args();
        argv.extend(args.iter().map(String::as_str));
        let o = self
            .run("run apt-get", self.inv(&argv, self.timeout))
            .await?;
        if !o.success() {
            return Err(PackageError::Apt {
                action: format!("apt-get install {}", args.join(" ")),
                message: apt_message(&o),
            });
        }
        Ok(format!("apt-get install {}", args.join(" ")))
    }

    async fn set_hold(&self, names: &[&str], hold: bool) -> Result<(), PackageError> {
        let verb = if hold { "hold" } else { "unhold" };
        let mut argv = vec!["/usr/bin/apt-mark", verb, "--"];
        argv.extend_from_slice(names);
        let o = self
            .run("run apt-mark", self.inv(&argv, QUERY_TIMEOUT))
            .await?;
        if !o.success() {
            return Err(PackageError::Apt {
                action: format!("apt-mark {verb} {}", names.join(" ")),
                message: apt_message(&o),
            });
        }
        Ok(())
    }

    async fn update_source(&self, sources_file: &Path) -> Result<(), PackageError> {
        let list = format!("Dir::Etc::SourceList={}", sources_file.display());
        let lock = self.lock_opt();
        // Only this source: the others may be unreachable right now, and their lists must
        // not be cleaned away because they were left out of this run.
        let argv = [
            "/usr/bin/apt-get",
            "-q",
            "-o",
            &lock,
            "-o",
            &list,
            "-o",
            "Dir::Etc::SourceParts=/nonexistent",
            "-o",
            "APT::Get::List-Cleanup=0",
            "--error-on=any",
            "update",
        ];
        let o = self
            .run("run apt-get update", self.inv(&argv, self.timeout))
            .await?;
        if !o.success() {
            return Err(PackageError::Apt {
                action: format!("apt-get update for {}", sources_file.display()),
                message: apt_message(&o),
            });
        }
        Ok(())
    }
}

fn parse_dpkg_query(out: &str) -> BTreeMap<String, Installed> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (name, status, version) = (f.next()?, f.next()?, f.next()?);
            Some((
                name.to_owned(),
                Installed {
                    status: status.trim_end().to_owned(),
                    version: version.to_owned(),
                },
            ))
        })
        .collect()
}

fn parse_policy(out: &str) -> BTreeMap<String, Option<String>> {
    let mut map = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in out.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            let name = line.trim_end_matches(':');
            // `apt-cache policy` names foreign-arch packages `name:arch`.
            current = Some(name.split(':').next().unwrap_or(name).to_owned());
        } else if let (Some(name), Some(c)) = (&current, line.trim().strip_prefix("Candidate: ")) {
            let c = (c != "(none)").then(|| c.to_owned());
            map.insert(name.clone(), c);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dpkg_query_rows() {
        let m = parse_dpkg_query("nginx\tii \t1.22.1-9\nfoo\trc \t2.0\nbar\tun \t\nheld\thi \t3\n");
        assert!(m["nginx"].is_installed() && !m["nginx"].held());
        assert!(!m["foo"].is_installed());
        assert!(!m["bar"].is_installed());
        assert!(m["held"].is_installed() && m["held"].held());
    }

    #[test]
    fn parses_apt_cache_policy() {
        let out = "nginx:\n  Installed: (none)\n  Candidate: 1.22.1-9\n  Version table:\n     1.22.1-9 500\n        500 http://deb.debian.org/debian bookworm/main amd64 Packages\nghost:\n  Installed: (none)\n  Candidate: (none)\n";
        let m = parse_policy(out);
        assert_eq!(m["nginx"].as_deref(), Some("1.22.1-9"));
        assert_eq!(m["ghost"], None);
    }
}
