//! Every refusal of "Identity and security", against the real binaries.

use phoenix_ca::embedded::EmbeddedCa;
use phoenix_ca::{CertAuthority, IssueRequest};
use phoenix_pki::{San, keys};
use phoenix_proto::token::JoinToken;
use phoenix_tests::raw::session_attempt;
use phoenix_tests::spine::{Agent, Coordinator};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const SERVER: &str = "coordinator.phoenix.lab";

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// (chain, key, roots) of an enrolled agent.
fn identity(a: &Agent) -> (String, String, String) {
    let s = a.state();
    (
        read(&s.join("cert.pem")),
        read(&s.join("key.pem")),
        read(&s.join("roots.pem")),
    )
}

async fn issue(ca: &EmbeddedCa, uri: &str, ttl: Duration) -> (String, String) {
    issue_sans(ca, "x", vec![San::Uri(uri.into())], ttl).await
}

async fn issue_sans(ca: &EmbeddedCa, cn: &str, sans: Vec<San>, ttl: Duration) -> (String, String) {
    let key = keys::generate().expect("key");
    let csr = keys::csr(&key, "x", &[]).expect("csr");
    let issued = ca
        .issue(IssueRequest {
            csr_pem: csr,
            common_name: cn.into(),
            sans,
            ttl,
        })
        .await
        .expect("issue");
    (issued.chain_pem, key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread")]
async fn join_tokens_are_single_use_expiring_and_guest_bound() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);

    let a = Agent::new(tmp.path(), 101);
    let token = c.token(101);
    assert!(a.join(&token, &[]).status.success());
    // Key and state are private.
    let mode = std::fs::metadata(a.state().join("key.pem"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mode = std::fs::metadata(a.state())
        .expect("dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);

    let again = Agent::new(&tmp.path().join("again"), 101).join(&token, &[]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already used"),
        "{}",
        stderr(&again)
    );

    let other = Agent::new(tmp.path(), 102).join(&c.token(101), &["--guest", "102"]);
    assert!(!other.status.success());
    assert!(
        stderr(&other).contains("is for guest 101, not guest 102"),
        "{}",
        stderr(&other)
    );

    let out = c.cli(&["token", "create", "--guest", "103", "--ttl", "1s"]);
    let short = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::thread::sleep(Duration::from_millis(2100));
    let expired = Agent::new(tmp.path(), 103).join(&short, &[]);
    assert!(!expired.status.success());
    assert!(stderr(&expired).contains("expired"), "{}", stderr(&expired));
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_pins_the_ca_fingerprint_and_the_coordinator_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let mut forged = JoinToken::decode(&c.token(104)).expect("token");
    forged.ca_fingerprint = "00".repeat(32);
    let out = Agent::new(tmp.path(), 104).join(&forged.encode(), &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("did not present the CA with fingerprint"),
        "{}",
        stderr(&out)
    );

    let mut forged = JoinToken::decode(&c.token(105)).expect("token");
    forged.trust_domain = "other.lab".to_string().try_into().expect("td");
    let out = Agent::new(tmp.path(), 105).join(&forged.encode(), &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("certificate not valid for name \"coordinator.other.lab\""),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_refuses_wrong_identities() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let a = Agent::new(tmp.path(), 101);
    assert!(a.join(&c.token(101), &[]).status.success());
    let (chain, key, roots) = identity(&a);

    // The genuine identity works, so the refusals below are about the identity alone.
    session_attempt(&c.addr, SERVER, &chain, &key, &roots, 101)
        .await
        .expect("own identity accepted");

    let err = session_attempt(&c.addr, SERVER, &chain, &key, &roots, 102)
        .await
        .expect_err("Hello for another guest");
    assert!(
        err.contains("PermissionDenied") && err.contains("claims guest 102"),
        "{err}"
    );

    // Same URI, signed by a CA the coordinator does not trust.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = EmbeddedCa::load_or_create(other_dir.path(), "rogue").expect("ca");
    let (rogue_chain, rogue_key) = issue(
        &other,
        "spiffe://phoenix.lab/guest/101",
        Duration::from_secs(600),
    )
    .await;
    let err = session_attempt(&c.addr, SERVER, &rogue_chain, &rogue_key, &roots, 101)
        .await
        .expect_err("foreign CA");
    // TLS 1.3 refuses a client cert after the client's side of the handshake: the client
    // sees its call cancelled or its transport fail (a race), the coordinator logs why.
    assert!(
        err.contains("Cancelled") || err.contains("transport error"),
        "{err}"
    );
    phoenix_tests::wait_for(
        Duration::from_secs(5),
        "the refusal in the coordinator log",
        || {
            let log = c.log();
            (log.contains("TLS handshake refused") && log.contains("UnknownIssuer")).then_some(())
        },
    );

    // A cert from the right CA carrying the coordinator's role.
    let ours = EmbeddedCa::load_or_create(&c.dir.join("state/ca"), "phoenix.lab").expect("ca");
    let (coord_chain, coord_key) = issue(
        &ours,
        "spiffe://phoenix.lab/coordinator",
        Duration::from_secs(600),
    )
    .await;
    let err = session_attempt(&c.addr, SERVER, &coord_chain, &coord_key, &roots, 101)
        .await
        .expect_err("coordinator role");
    assert!(err.contains("not an agent identity"), "{err}");

    // A cert from the right CA shaped like a service certificate for the guest's own
    // name: no guest URI, so no agent identity, whatever its names say.
    let (svc_chain, svc_key) = issue_sans(
        &ours,
        "guest-101",
        vec![San::Dns("guest-101".into()), San::Dns(SERVER.into())],
        Duration::from_secs(600),
    )
    .await;
    let err = session_attempt(&c.addr, SERVER, &svc_chain, &svc_key, &roots, 101)
        .await
        .expect_err("service-shaped cert");
    assert!(
        err.contains("PermissionDenied")
            && err.contains("client certificate carries no identity in trust domain phoenix.lab"),
        "{err}"
    );

    // A rebuilt guest re-enrolls with a new token: the old identity is retired.
    let rebuilt = Agent::new(&tmp.path().join("rebuilt"), 101);
    assert!(rebuilt.join(&c.token(101), &[]).status.success());
    let err = session_attempt(&c.addr, SERVER, &chain, &key, &roots, 101)
        .await
        .expect_err("old identity");
    assert!(err.contains("replaced by a newer enrollment"), "{err}");
    let (chain2, key2, roots2) = identity(&rebuilt);
    session_attempt(&c.addr, SERVER, &chain2, &key2, &roots2, 101)
        .await
        .expect("new identity accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_agent_certificate_is_refused_and_the_agent_says_what_to_do() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(
        &tmp.path().join("c"),
        &["--agent-cert-ttl", "2s", "--renew-after-expiry", "0s"],
    );
    let mut a = Agent::new(tmp.path(), 106);
    assert!(a.join(&c.token(106), &[]).status.success());
    let (chain, key, roots) = identity(&a);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let err = session_attempt(&c.addr, SERVER, &chain, &key, &roots, 106)
        .await
        .expect_err("expired");
    assert!(
        err.contains("Cancelled") || err.contains("transport error"),
        "{err}"
    );
    phoenix_tests::wait_for(
        Duration::from_secs(5),
        "the refusal in the coordinator log",
        || {
            let log = c.log();
            (log.contains("TLS handshake refused") && log.contains("certificate expired"))
                .then_some(())
        },
    );
    a.start();
    phoenix_tests::wait_for(
        Duration::from_secs(15),
        "expiry advice in the agent log",
        || {
            a.log()
                .contains("phoenix token create --guest 106")
                .then_some(())
        },
    );
}

#[test]
fn agent_expired_while_offline_recovers_by_itself() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &["--agent-cert-ttl", "5s"]);
    phoenix_tests::spine::expired_while_offline_recovers(&c, tmp.path(), 107);
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_identity_cannot_renew_or_connect_until_it_rejoins() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let a = Agent::new(tmp.path(), 108);
    assert!(a.join(&c.token(108), &[]).status.success());
    let (chain, key, roots) = identity(&a);
    phoenix_tests::raw::renew_attempt(&c.addr, SERVER, &chain, &key, &roots)
        .await
        .expect("renewal before revocation");
    let out = c.cli(&["revoke", "--guest", "108"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The renewal above made a new serial current; the old one is still the previous
    // serial until revoked, and revocation covers both.
    let err = phoenix_tests::raw::renew_attempt(&c.addr, SERVER, &chain, &key, &roots)
        .await
        .expect_err("renewal of a revoked identity");
    assert!(err.contains("revoked"), "{err}");
    let err = session_attempt(&c.addr, SERVER, &chain, &key, &roots, 108)
        .await
        .expect_err("session of a revoked identity");
    assert!(err.contains("revoked"), "{err}");
    let again = Agent::new(&tmp.path().join("again"), 108);
    assert!(again.join(&c.token(108), &[]).status.success());
    let (chain, key, roots) = identity(&again);
    session_attempt(&c.addr, SERVER, &chain, &key, &roots, 108)
        .await
        .expect("re-joined identity accepted");
}
