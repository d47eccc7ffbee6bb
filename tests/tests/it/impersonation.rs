//! A guest must not become the coordinator (issue 9 §1), against the real binaries with the
//! embedded CA and with a real step-ca:
//! - a desired state declaring service certificates for `coordinator.<td>` or `*.<td>` is
//!   refused before anything is stored or pushed, naming the rule;
//! - a fake coordinator on the real coordinator's address, presenting a service
//!   certificate that the same CA correctly signed for `coordinator.<td>`, is refused by a
//!   real `phoenix-agent run`, which never applies the fake's state. The same fake with a
//!   certificate carrying the coordinator's URI is then obeyed: the refusal is the identity
//!   rule and nothing else.

use phoenix_ca::CertAuthority;
use phoenix_ca::stepca::{ProvisionerKeySource, StepCa as StepCaClient, StepCaConfig};
use phoenix_pki::San;
use phoenix_pki::tls::{self, IdentityStore, TrustStore};
use phoenix_proto::model::{self, GuestSpec};
use phoenix_proto::v1;
use phoenix_tests::spine::{Agent, Coordinator, files_spec, guest_status, write_spec};
use phoenix_tests::standin::{COORDINATOR, COORDINATOR_URI, Opening, StandIn, mint};
use phoenix_tests::stepca::StepCa;
use phoenix_tests::wait_for;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The two declarations the issue reports, on one guest.
fn impersonating_spec() -> serde_json::Value {
    json!({"resources": [
        {"kind": "cert", "name": "coord", "common_name": COORDINATOR,
         "cert_path": "/etc/ssl/coord.crt", "key_path": "/etc/ssl/coord.key"},
        {"kind": "cert", "name": "wild", "common_name": "gw.phoenix.lab", "sans": ["*.phoenix.lab"],
         "cert_path": "/etc/ssl/wild.crt", "key_path": "/etc/ssl/wild.key"}
    ]})
}

const COORD_RULE: &str = "guest 201: cert coord: refused: service certificate name \"coordinator.phoenix.lab\" is the reserved coordinator name coordinator.phoenix.lab (service certs may not carry identity names)";
const WILD_RULE: &str = "guest 201: cert wild: refused: service certificate name \"*.phoenix.lab\" covers the reserved coordinator name coordinator.phoenix.lab (service certs may not carry identity names)";

/// `phoenix apply` of the impersonating spec fails naming both rules, and guest 201 gets
/// no desired state.
fn apply_is_refused(c: &Coordinator, dir: &Path) {
    let file = dir.join("impersonate.json");
    write_spec(&file, &[(201, impersonating_spec())]);
    let out = c.cli(&["apply", "-f", file.to_str().expect("utf8"), "--no-wait"]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "apply accepted: {}",
        text(&out.stdout)
    );
    assert!(err.contains(COORD_RULE), "{err}");
    assert!(err.contains(WILD_RULE), "{err}");
    let wanted = guest_status(&c.status(), 201).map(|g| g["wanted_revision"].clone());
    assert!(
        wanted.as_ref().is_none_or(|w| w.as_u64().unwrap_or(0) == 0),
        "guest 201 got a desired state: {wanted:?}"
    );
}

/// Joins guest 202 to `c`, replaces `c` by a fake on its address presenting what the
/// signing path issued for a declared `coordinator.phoenix.lab` service certificate
/// (signed by `ca`, the coordinator's own CA), and checks the real agent refuses it.
async fn fake_coordinator_is_refused(c: &mut Coordinator, ca: &dyn CertAuthority, base: &Path) {
    let mut agent = Agent::new(base, 202);
    let joined = agent.join(&c.token(202), &[]);
    assert!(joined.status.success(), "{}", text(&joined.stderr));
    let victim = agent.root.join("pwned");
    let spec = files_spec(
        &agent.root,
        &[("pwned", "written on a fake coordinator's order")],
    );
    let json = GuestSpec::from_json(&serde_json::to_vec(&spec).expect("json"))
        .expect("spec")
        .to_json();
    let sessions = Arc::new(AtomicUsize::new(0));
    let fake = StandIn {
        opening: Opening::Push(v1::DesiredState {
            revision: 1_000_000,
            digest: model::digest(&json),
            spec_json: json,
            dry_run: false,
        }),
        openings: sessions.clone(),
    };

    let service = mint(ca, vec![San::Dns(COORDINATOR.into())]).await;
    let roots = ca.roots_pem().await.expect("roots");
    let addr = c.addr.clone();
    c.kill9();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .expect("take over the coordinator's address");
    let identity = IdentityStore::new(service);
    let cfg = tls::server_config(
        identity.clone(),
        TrustStore::from_pem(&roots).expect("trust"),
    )
    .expect("server config");
    let server = tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(
        v1::agent_server::AgentServer::new(fake),
        phoenix_pki::transport::tls_incoming(listener, cfg),
    ));

    agent.start();
    let refusal = format!(
        "(CN={COORDINATOR}, DNS:{COORDINATOR}) lacks the coordinator identity {COORDINATOR_URI}"
    );
    wait_for(Duration::from_secs(30), "the agent's refusal", || {
        agent.log().contains(&refusal).then_some(())
    });
    // Several attempts, none of which got as far as a session.
    wait_for(Duration::from_secs(30), "a second refused attempt", || {
        (agent.log().matches(&refusal).count() >= 2).then_some(())
    });
    assert_eq!(sessions.load(Ordering::SeqCst), 0, "{}", agent.log());
    assert!(!victim.exists(), "the fake's state was applied");

    // Control: the very same fake, now holding the coordinator's identity (which only the
    // coordinator's CA path issues), is obeyed — so the refusal above is the identity rule.
    identity.swap(
        mint(
            ca,
            vec![
                San::Dns(COORDINATOR.into()),
                San::Uri(COORDINATOR_URI.into()),
            ],
        )
        .await,
    );
    wait_for(Duration::from_secs(30), "the control state applied", || {
        std::fs::read_to_string(&victim).ok()
    });
    assert!(sessions.load(Ordering::SeqCst) >= 1);
    agent.kill9();
    server.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn declared_coordinator_names_are_refused_and_a_service_cert_cannot_be_the_coordinator() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = Coordinator::start(&tmp.path().join("c"), &[]);
    apply_is_refused(&c, tmp.path());

    // `phoenix validate` says the same offline, before anything reaches the daemon.
    let file = tmp.path().join("impersonate.json");
    let out = c.cli(&["validate", file.to_str().expect("utf8")]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "validate accepted: {}",
        text(&out.stdout)
    );
    assert!(err.contains(COORD_RULE) && err.contains(WILD_RULE), "{err}");
    let out = c.cli(&[
        "validate",
        file.to_str().expect("utf8"),
        "--trust-domain",
        "other.lab",
    ]);
    assert!(
        out.status.success(),
        "other trust domain: {}",
        text(&out.stderr)
    );

    // The coordinator's own CA, loaded from its state directory.
    let ca =
        phoenix_ca::embedded::EmbeddedCa::load_or_create(&c.dir.join("state/ca"), "phoenix.lab")
            .expect("coordinator's CA");
    fake_coordinator_is_refused(&mut c, &ca, tmp.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_step_ca_declared_coordinator_names_are_refused_and_a_service_cert_cannot_be_the_coordinator()
 {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(step) = StepCa::start(&tmp.path().join("ca")) else {
        return;
    };
    let args = step.serve_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = Coordinator::start(&tmp.path().join("c"), &args);
    apply_is_refused(&c, tmp.path());

    // The test is the RA here: the same provisioner the coordinator signs with.
    let ca = StepCaClient::connect(&StepCaConfig {
        url: step.get("PHOENIX_STEPCA_URL").into(),
        fingerprint: step.get("PHOENIX_STEPCA_FINGERPRINT").into(),
        provisioner: step.get("PHOENIX_STEPCA_PROVISIONER").into(),
        key: ProvisionerKeySource::EncryptedJwk {
            jwe: step.get("PHOENIX_STEPCA_JWE").into(),
            password_file: step.get("PHOENIX_STEPCA_PASSWORD_FILE").into(),
        },
    })
    .await
    .expect("step-ca client");
    fake_coordinator_is_refused(&mut c, &ca, tmp.path()).await;
}
