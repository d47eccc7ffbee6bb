//! Planning and batching logic against an in-memory package system. The proof against
//! real apt and dpkg is tests/tests/it/apt.rs.

use super::*;
use std::path::Path;

/// dpkg state (name -> (version, held)), apt candidates, and a log of calls.
#[derive(Default)]
struct Fake {
    installed: Mutex<BTreeMap<String, (String, bool)>>,
    candidates: BTreeMap<String, String>,
    calls: Mutex<Vec<String>>,
    fail_transact: Option<String>,
}

#[async_trait::async_trait]
impl PackageManager for Fake {
    async fn query(&self, names: &[&str]) -> Result<BTreeMap<String, Installed>, PackageError> {
        let i = self.installed.lock().expect("lock");
        Ok(names
            .iter()
            .filter_map(|n| {
                i.get(*n).map(|(v, h)| {
                    let status = if *h { "hi" } else { "ii" };
                    (
                        (*n).to_owned(),
                        Installed {
                            status: status.into(),
                            version: v.clone(),
                        },
                    )
                })
            })
            .collect())
    }
    async fn candidates(
        &self,
        names: &[&str],
    ) -> Result<BTreeMap<String, Option<String>>, PackageError> {
        Ok(names
            .iter()
            .map(|n| ((*n).to_owned(), self.candidates.get(*n).cloned()))
            .collect())
    }
    async fn transact(&self, tx: &Transaction) -> Result<String, PackageError> {
        self.calls
            .lock()
            .expect("lock")
            .push(format!("apt-get install {}", tx.apt_args().join(" ")));
        if let Some(m) = &self.fail_transact {
            return Err(PackageError::Apt {
                action: "apt-get install".into(),
                message: m.clone(),
            });
        }
        let mut i = self.installed.lock().expect("lock");
        for (n, v) in &tx.install {
            if i.get(n).is_some_and(|(_, h)| *h) {
                return Err(PackageError::Apt {
                    action: "apt-get".into(),
                    message: "E: Held packages were changed".into(),
                });
            }
            let v = v
                .clone()
                .or_else(|| self.candidates.get(n).cloned())
                .unwrap_or_else(|| "1.0".into());
            i.insert(n.clone(), (v, false));
        }
        for n in &tx.remove {
            i.remove(n);
        }
        Ok("ok".into())
    }
    async fn set_hold(&self, names: &[&str], hold: bool) -> Result<(), PackageError> {
        self.calls.lock().expect("lock").push(format!(
            "apt-mark {} {}",
            if hold { "hold" } else { "unhold" },
            names.join(" ")
        ));
        let mut i = self.installed.lock().expect("lock");
        for n in names {
            if let Some(e) = i.get_mut(*n) {
                e.1 = hold;
            }
        }
        Ok(())
    }
    async fn update_source(&self, _f: &Path) -> Result<(), PackageError> {
        Ok(())
    }
}

fn pkg(json: serde_json::Value) -> PackageSpec {
    serde_json::from_value(json).expect("package spec")
}

fn fake(installed: &[(&str, &str, bool)], candidates: &[(&str, &str)]) -> Fake {
    Fake {
        installed: Mutex::new(
            installed
                .iter()
                .map(|(n, v, h)| ((*n).into(), ((*v).into(), *h)))
                .collect(),
        ),
        candidates: candidates
            .iter()
            .map(|(n, v)| ((*n).into(), (*v).into()))
            .collect(),
        ..Fake::default()
    }
}

#[tokio::test]
async fn all_changes_go_into_one_transaction() {
    let c = PackageConverger::new(fake(
        &[("old", "1", false), ("pinned", "1", false)],
        &[("new", "2"), ("lat", "5")],
    ));
    let specs = [
        pkg(serde_json::json!({"name": "new"})),
        pkg(serde_json::json!({"name": "old", "state": "absent"})),
        pkg(serde_json::json!({"name": "pinned", "version": "0.9"})),
        pkg(serde_json::json!({"name": "lat", "state": "latest", "hold": true})),
    ];
    let refs: Vec<&PackageSpec> = specs.iter().collect();
    let cx = PassContext::default();
    let results = c.apply_batch(&refs, &cx).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let calls = c.mgr.calls.lock().expect("lock").clone();
    assert_eq!(
        calls,
        [
            "apt-get install new pinned=0.9 lat old-",
            "apt-mark hold lat"
        ]
    );
    for s in &specs {
        assert_eq!(
            c.check(s, &cx).await.expect("check"),
            Check::InSync,
            "{}",
            s.name
        );
    }
    assert_eq!(
        c.installed_versions(),
        BTreeMap::from([
            ("lat".into(), "5".into()),
            ("new".into(), "2".into()),
            ("pinned".into(), "0.9".into())
        ])
    );
}

#[tokio::test]
async fn held_package_is_unheld_changed_and_held_again() {
    let c = PackageConverger::new(fake(&[("app", "1", true)], &[]));
    let s = pkg(serde_json::json!({"name": "app", "version": "2", "hold": true}));
    let cx = PassContext::default();
    assert_eq!(
        c.check(&s, &cx).await.expect("check"),
        Check::Drift {
            diff: "change app 1 -> 2".into()
        }
    );
    c.apply(&s, &cx).await.expect("apply");
    let calls = c.mgr.calls.lock().expect("lock").clone();
    assert_eq!(
        calls,
        [
            "apt-mark unhold app",
            "apt-get install app=2",
            "apt-mark hold app"
        ]
    );
    assert_eq!(c.check(&s, &cx).await.expect("check"), Check::InSync);
}

#[tokio::test]
async fn a_failed_transaction_fails_every_package_in_it_with_apts_message() {
    let mut f = fake(&[], &[]);
    f.fail_transact = Some("E: Unable to locate package nosuch".into());
    let c = PackageConverger::new(f);
    let specs = [
        pkg(serde_json::json!({"name": "nosuch"})),
        pkg(serde_json::json!({"name": "other"})),
    ];
    let refs: Vec<&PackageSpec> = specs.iter().collect();
    let results = c.apply_batch(&refs, &PassContext::default()).await;
    for r in results {
        let e = r.expect_err("fails").to_string();
        assert!(e.contains("E: Unable to locate package nosuch"), "{e}");
    }
}

#[tokio::test]
async fn latest_without_candidate_is_an_error_not_drift() {
    let c = PackageConverger::new(fake(&[], &[]));
    let s = pkg(serde_json::json!({"name": "ghost", "state": "latest"}));
    let e = c
        .check(&s, &PassContext::default())
        .await
        .expect_err("no candidate")
        .to_string();
    assert!(e.contains("package ghost"), "{e}");
}

#[test]
fn transaction_args_use_apt_suffixes() {
    let tx = Transaction {
        install: vec![("a".into(), Some("1:2.0-1".into()))],
        remove: vec!["b".into()],
    };
    assert_eq!(tx.apt_args(), ["a=1:2.0-1", "b-"]);
}
