//! Decision logic with an in-process CA as signer and a recording service manager. The
//! proof against the real coordinator and systemd is tests/tests/it/certs.rs.

use super::*;
use crate::systemd::{ServiceError, UnitStatus};
use phoenix_ca::embedded::EmbeddedCa;
use phoenix_ca::{CertAuthority, IssueRequest};
use phoenix_proto::model::FileMode;
use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;
use std::time::Duration;

struct CaSigner(EmbeddedCa);

#[async_trait::async_trait]
impl CertSigner for CaSigner {
    async fn sign(
        &self,
        csr_pem: String,
        common_name: String,
        sans: Vec<String>,
        ttl: u64,
    ) -> Result<SignedCert, SignError> {
        let issued = self
            .0
            .issue(IssueRequest {
                csr_pem,
                common_name: common_name.clone(),
                sans: sans.iter().map(|s| San::host(s)).collect(),
                ttl: Duration::from_secs(ttl),
            })
            .await
            .map_err(|e| SignError::Refused {
                common_name,
                message: e.to_string(),
            })?;
        Ok(SignedCert {
            chain_pem: issued.chain_pem,
            roots_pem: issued.roots_pem,
        })
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

#[async_trait::async_trait]
impl ServiceManager for Recorder {
    async fn status(&self, _unit: &str) -> Result<UnitStatus, ServiceError> {
        Ok(UnitStatus::default())
    }
    async fn daemon_reload(&self) -> Result<(), ServiceError> {
        Ok(())
    }
    async fn control(&self, verb: Verb, unit: &str) -> Result<(), ServiceError> {
        self.0
            .lock()
            .expect("lock")
            .push(format!("{verb:?} {unit}"));
        Ok(())
    }
    async fn recent_log(&self, _unit: &str) -> String {
        String::new()
    }
}

fn spec(root: &Path) -> CertSpec {
    let p = |n: &str| AbsPath::try_from(root.join(n).display().to_string()).expect("abs");
    CertSpec {
        name: "web".parse().expect("name"),
        common_name: "gw.lab".into(),
        sans: vec!["10.0.0.153".into()],
        cert_path: p("ssl/gw.crt"),
        key_path: p("ssl/gw.key"),
        chain_path: None,
        ca_path: Some(p("ssl/ca.crt")),
        owner: None,
        group: None,
        mode: FileMode::try_from("0644".to_string()).expect("mode"),
        key_mode: FileMode::try_from("0640".to_string()).expect("mode"),
        ttl_seconds: 3600,
        reload: vec![Reload::ServiceReload(
            "nginx.service".parse().expect("unit"),
        )],
        depends_on: vec![],
    }
}

#[tokio::test]
async fn issues_then_stays_in_sync_and_fixes_modes_without_reissuing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = EmbeddedCa::load_or_create(&dir.path().join("ca"), "test").expect("ca");
    let rec = Arc::new(Recorder::default());
    let conv = CertConverger::new(
        vec![dir.path().to_path_buf()],
        Arc::new(CaSigner(ca)),
        rec.clone(),
        None,
    );
    let s = spec(dir.path());
    let cx = PassContext::default();
    conv.validate(&s).expect("valid");
    assert!(matches!(
        conv.check(&s, &cx).await.expect("check"),
        Check::Drift { .. }
    ));
    conv.apply(&s, &cx).await.expect("issue");
    assert_eq!(*rec.0.lock().expect("lock"), ["Reload nginx.service"]);
    assert_eq!(conv.check(&s, &cx).await.expect("check"), Check::InSync);
    let key = s.key_path.as_path();
    assert_eq!(
        std::fs::metadata(key).expect("key").permissions().mode() & 0o777,
        0o640
    );
    let serial = std::fs::read(s.cert_path.as_path()).expect("cert");

    // Someone loosens the key: fixed, same certificate, no reload.
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    match conv.check(&s, &cx).await.expect("check") {
        Check::Drift { diff } => assert!(
            diff.contains("mode 0644 → 0640") && !diff.contains("PRIVATE"),
            "{diff}"
        ),
        Check::InSync => panic!("mode drift missed"),
    }
    conv.apply(&s, &cx).await.expect("fix");
    assert_eq!(std::fs::read(s.cert_path.as_path()).expect("cert"), serial);
    assert_eq!(
        rec.0.lock().expect("lock").len(),
        1,
        "no reload for a mode fix"
    );

    // A declared SAN change reissues and reloads once more.
    let mut s2 = s.clone();
    s2.sans.push("gw2.lab".into());
    conv.apply(&s2, &cx).await.expect("reissue");
    assert_eq!(rec.0.lock().expect("lock").len(), 2);
    assert_eq!(conv.check(&s2, &cx).await.expect("check"), Check::InSync);
}

#[tokio::test]
async fn a_certificate_from_the_wrong_ca_is_not_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = EmbeddedCa::load_or_create(&dir.path().join("ca"), "test").expect("ca");
    struct Liar(CaSigner, String);
    #[async_trait::async_trait]
    impl CertSigner for Liar {
        async fn sign(
            &self,
            c: String,
            n: String,
            s: Vec<String>,
            t: u64,
        ) -> Result<SignedCert, SignError> {
            let mut signed = self.0.sign(c, n, s, t).await?;
            signed.roots_pem = self.1.clone();
            Ok(signed)
        }
    }
    let other = EmbeddedCa::load_or_create(&dir.path().join("other"), "other").expect("ca");
    let rec = Arc::new(Recorder::default());
    let conv = CertConverger::new(
        vec![dir.path().to_path_buf()],
        Arc::new(Liar(CaSigner(ca), other.root_pem().to_string())),
        rec.clone(),
        None,
    );
    let s = spec(dir.path());
    let err = conv
        .apply(&s, &PassContext::default())
        .await
        .expect_err("must refuse");
    assert!(err.to_string().contains("rejected before writing"), "{err}");
    assert!(!s.key_path.as_path().exists() && !s.cert_path.as_path().exists());
    assert!(rec.0.lock().expect("lock").is_empty());
}

#[test]
fn a_container_restart_on_a_host_without_an_engine_fails_validation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = EmbeddedCa::load_or_create(&dir.path().join("ca"), "test").expect("ca");
    let conv = CertConverger::new(
        vec![dir.path().to_path_buf()],
        Arc::new(CaSigner(ca)),
        Arc::new(Recorder::default()),
        None,
    );
    let mut s = spec(dir.path());
    s.reload = vec![Reload::ContainerRestart(
        "portainer_server".parse().expect("container"),
    )];
    let err = conv.validate(&s).expect_err("refused").to_string();
    assert!(
        err.contains("cert web: reload container portainer_server")
            && err.contains("no usable container engine"),
        "{err}"
    );
}
