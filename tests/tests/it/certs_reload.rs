//! A cert whose renewal restarts a container (`container_restart`, what the compiler emits
//! for `docker restart <name>` hooks), against the private Docker engine of
//! tests/setup/20-docker.sh, through the agent's `CertConverger` and `DockerEngine`.

// In tests a panic is the failure report.
#![allow(clippy::unwrap_used)]

use phoenix_agent::certs::{CertConverger, CertSigner, SignError, SignedCert};
use phoenix_agent::exec::ProcessRunner;
use phoenix_agent::reconcile::{Converge, PassContext};
use phoenix_agent::systemd::Systemctl;
use phoenix_ca::embedded::EmbeddedCa;
use phoenix_ca::{CertAuthority, IssueRequest};
use phoenix_pki::San;
use phoenix_proto::model::{AbsPath, CertSpec, FileMode, Reload};
use phoenix_tests::stacks::{DockerEnv, Teardown};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Signs in process with an embedded CA: the coordinator's signing path is tested in
/// tests/tests/it/certs.rs; here the point is what happens after the files are written.
struct LocalCa(EmbeddedCa);

#[async_trait::async_trait]
impl CertSigner for LocalCa {
    async fn sign(
        &self,
        csr_pem: String,
        common_name: String,
        sans: Vec<String>,
        ttl: u64,
    ) -> Result<SignedCert, SignError> {
        let req = IssueRequest {
            csr_pem,
            common_name: common_name.clone(),
            sans: sans.iter().map(|s| San::host(s)).collect(),
            ttl: Duration::from_secs(ttl),
        };
        let issued = self.0.issue(req).await.map_err(|e| SignError::Refused {
            common_name,
            message: e.to_string(),
        })?;
        Ok(SignedCert {
            chain_pem: issued.chain_pem,
            roots_pem: issued.roots_pem,
        })
    }
}

fn converger(dir: &Path, env: &DockerEnv) -> CertConverger {
    let ca = EmbeddedCa::load_or_create(&dir.join("ca"), "test").unwrap();
    CertConverger::new(
        vec![dir.to_path_buf()],
        Arc::new(LocalCa(ca)),
        // Never called: the spec only restarts containers.
        Arc::new(Systemctl::new(ProcessRunner::default())),
        Some(env.engine()),
    )
}

fn cert(dir: &Path, container: &str) -> CertSpec {
    let p = |n: &str| AbsPath::try_from(dir.join(n).display().to_string()).unwrap();
    CertSpec {
        name: "portainer".parse().unwrap(),
        common_name: "portainer.lab".into(),
        sans: vec![],
        cert_path: p("certs/portainer.crt"),
        key_path: p("certs/portainer.key"),
        chain_path: None,
        ca_path: None,
        owner: None,
        group: None,
        mode: FileMode::try_from("0644".to_string()).unwrap(),
        key_mode: FileMode::try_from("0600".to_string()).unwrap(),
        ttl_seconds: 3600,
        reload: vec![Reload::ContainerRestart(container.parse().unwrap())],
        depends_on: vec![],
    }
}

#[tokio::test]
async fn a_new_cert_restarts_its_container_and_a_missing_one_fails_before_writing() {
    let Some(env) = DockerEnv::get() else { return };
    let name = "phx-certs-reload-web";
    let _teardown = Teardown {
        env: env.clone(),
        stack: "phx-certs-reload".into(),
        extra: vec![name.into()],
    };
    let _ = env.docker_raw(&["rm", "-f", name]);
    env.docker(&[
        "run",
        "-d",
        "--stop-timeout",
        "1",
        "--name",
        name,
        &env.image,
        "sleep",
        "3600",
    ]);
    let started_at = || env.docker(&["inspect", "-f", "{{.State.StartedAt}}", name]);
    let before = started_at();

    let dir = tempfile::tempdir().unwrap();
    let conv = converger(dir.path(), &env);
    let spec = cert(dir.path(), name);
    conv.validate(&spec).unwrap();
    let cx = PassContext::default();
    let done = conv.apply(&spec, &cx).await.unwrap();
    assert!(
        done.contains(&format!("restart container {name}")),
        "{done}"
    );
    assert_ne!(started_at(), before, "the container was restarted");
    assert_eq!(
        env.docker(&["inspect", "-f", "{{.State.Running}}", name]),
        "true"
    );
    assert!(spec.key_path.as_path().exists() && spec.cert_path.as_path().exists());

    // The container a cert must restart is gone: the cert fails naming it, and no key or
    // certificate is written (the service would not pick them up).
    let other = tempfile::tempdir().unwrap();
    let conv = converger(other.path(), &env);
    let missing = cert(other.path(), "phx-certs-reload-missing");
    conv.validate(&missing).unwrap();
    let err = conv.apply(&missing, &cx).await.unwrap_err().to_string();
    assert!(
        err.contains("cert portainer: reload container phx-certs-reload-missing")
            && err.contains("No such container"),
        "{err}"
    );
    assert!(!missing.key_path.as_path().exists() && !missing.cert_path.as_path().exists());
}

/// A cert whose reload names a service that fails to reload (here: its `ExecReload` fails
/// while a flag file exists) keeps a persisted "reload pending" mark, and the agent retries
/// the reload on later passes until it succeeds, without issuing a new certificate. Real
/// coordinator, real agent and real systemd in the guest.
#[test]
fn a_failed_cert_reload_stays_pending_and_is_retried_until_it_succeeds() {
    use phoenix_tests::guest::Guest;
    use phoenix_tests::spine::{Coordinator, converged, write_spec};
    use phoenix_tests::wait_for;

    let tmp = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let Some(g) = Guest::boot_on("reload-pending", &[], "host") else {
        return;
    };
    let token = c.token(402);
    g.ok(&format!(
        "phoenix-agent --state-dir /var/lib/phoenix-agent join '{token}'"
    ));
    g.ok("touch /etc/phoenix-reload-broken");
    g.ok("nohup phoenix-agent --state-dir /var/lib/phoenix-agent run --file-root /etc --drift-interval 3 >/var/log/phoenix-agent.log 2>&1 &");
    let spec = serde_json::json!({"resources": [
        {"kind": "service", "name": "fake-web.service", "state": "running", "enabled": true,
         "unit": {"description": "stands in for nginx", "exec_start": ["/bin/sleep", "infinity"],
                  "exec_reload": ["/bin/sh", "-c",
                      "test ! -e /etc/phoenix-reload-broken && echo reload >> /etc/phoenix-reloads"]}},
        {"kind": "cert", "name": "gw", "common_name": "gw.lab",
         "cert_path": "/etc/ssl/phoenix/gw.crt", "key_path": "/etc/ssl/phoenix/gw.key",
         "ttl_seconds": 3600,
         "reload": [{"service_reload": "fake-web.service"}],
         "depends_on": ["service:fake-web.service"]}
    ]});
    let file = tmp.path().join("spec.json");
    write_spec(&file, &[(402, spec)]);
    let out = c.cli(&["apply", "-f", file.to_str().unwrap(), "--timeout", "60s"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "the reload failed: {text}");
    let status = phoenix_tests::spine::guest_status(&c.status(), 402).unwrap();
    let reason = status["last_report"]["results"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["resource"] == "cert:gw"))
        .map(|r| r["message"].to_string())
        .unwrap_or_default();
    assert!(
        reason.contains("reload fake-web.service") && reason.contains("reload pending"),
        "{reason}"
    );
    let cert = || g.ok("sha256sum /etc/ssl/phoenix/gw.crt");
    let issued = cert();
    let pending = || {
        g.ok("cat /var/lib/phoenix-agent/owned.json")
            .contains("\"reload_pending\"")
    };
    assert!(pending(), "the mark is persisted");

    // Later passes retry it while the cause is there…
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        g.ok("cat /etc/phoenix-reloads 2>/dev/null | wc -l"),
        "0",
        "still failing"
    );
    assert!(pending());
    // …and once the service can reload, the reload happens once, with the same certificate.
    g.ok("rm /etc/phoenix-reload-broken");
    wait_for(Duration::from_secs(60), "the pending reload to run", || {
        (g.ok("cat /etc/phoenix-reloads 2>/dev/null | wc -l") == "1").then_some(())
    });
    wait_for(Duration::from_secs(30), "the guest to converge", || {
        converged(&c.status(), 402).then_some(())
    });
    assert_eq!(cert(), issued, "no new certificate for a retried reload");
    assert!(!pending(), "the mark is cleared");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        g.ok("wc -l < /etc/phoenix-reloads"),
        "1",
        "reloaded once, not on every pass"
    );
}
