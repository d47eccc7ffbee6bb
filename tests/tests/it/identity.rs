//! Every refusal of "Identity and security", against the real binaries.

use phoenix_ca::embedded::EmbeddedCa;
use phoenix_ca::{CertAuthority, IssueRequest};
use phoenix_pki::{San, keys};
use phoenix_proto::token::JoinToken;
use phoenix_tests::raw::{client_cert_verdict, session_attempt};
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

/// The hex serial of the leaf of `chain_pem`, as the coordinator names it.
fn serial(chain_pem: &str) -> String {
    let chain = phoenix_pki::x509::parse_chain(chain_pem, "chain").expect("chain");
    phoenix_pki::x509::inspect(&chain[0])
        .expect("inspect")
        .serial_hex
}

/// One coordinator log line saying a handshake was refused, and why.
fn refusal_logged(c: &Coordinator, reason: &str) -> Option<()> {
    c.log()
        .lines()
        .any(|l| l.contains("TLS handshake refused") && l.contains(reason))
        .then_some(())
}

/// `text` is `prefix`, a unix time, then `suffix`.
fn assert_between(text: &str, prefix: &str, suffix: &str) {
    let at = text
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(suffix));
    assert!(
        at.is_some_and(|t| t.parse::<u64>().is_ok()),
        "expected {prefix:?} <unix time> {suffix:?}, got {text:?}"
    );
}

/// The refusal of a revoked identity: the gRPC code, when, and what to do.
fn assert_revoked(err: &str, guest: u32) {
    assert_between(
        err,
        &format!("PermissionDenied: identity of guest {guest} was revoked at unix time "),
        &format!("; re-join with a new token (`phoenix token create --guest {guest}`)"),
    );
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
    assert_between(
        &stderr(&again),
        "error: coordinator refused enrollment: enroll refused: join token was already used at ",
        " (tokens are single-use; create a new one)\n",
    );

    let other = Agent::new(tmp.path(), 102).join(&c.token(101), &["--guest", "102"]);
    assert!(!other.status.success());
    assert_eq!(
        stderr(&other),
        "error: coordinator refused enrollment: enroll refused: join token is for guest 101, not guest 102\n"
    );

    let out = c.cli(&["token", "create", "--guest", "103", "--ttl", "1s"]);
    let short = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::thread::sleep(Duration::from_millis(2100));
    let expired = Agent::new(tmp.path(), 103).join(&short, &[]);
    assert!(!expired.status.success());
    assert_between(
        &stderr(&expired),
        "error: join token expired at unix time ",
        "; create a new one with `phoenix token create --guest <id>`\n",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_pins_the_ca_fingerprint_and_the_coordinator_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(&tmp.path().join("c"), &[]);
    let mut forged = JoinToken::decode(&c.token(104)).expect("token");
    forged.ca_fingerprint = "00".repeat(32);
    let out = Agent::new(tmp.path(), 104).join(&forged.encode(), &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!("error: connect to coordinator at {}: ", c.addr))
            && err.contains(&format!(
                "coordinator did not present the CA with fingerprint {}",
                "00".repeat(32)
            )),
        "{err}"
    );

    let mut forged = JoinToken::decode(&c.token(105)).expect("token");
    forged.trust_domain = "other.lab".to_string().try_into().expect("td");
    let out = Agent::new(tmp.path(), 105).join(&forged.encode(), &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!("error: connect to coordinator at {}: ", c.addr))
            && err.contains("certificate not valid for name \"coordinator.other.lab\""),
        "{err}"
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
    assert_eq!(
        err,
        "PermissionDenied: certificate is for guest 101 but Hello claims guest 102"
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
    session_attempt(&c.addr, SERVER, &rogue_chain, &rogue_key, &roots, 101)
        .await
        .expect_err("foreign CA");
    // TLS 1.3 refuses a client cert after the client's side of the handshake: a gRPC
    // client sees its call cancelled or its transport fail (a race with the reset); a
    // client that waits for the verdict gets the alert, and the coordinator logs why.
    assert_eq!(
        client_cert_verdict(&c.addr, SERVER, (&rogue_chain, &rogue_key, &roots)).await,
        Ok("received fatal alert: UnknownCA".to_string())
    );
    phoenix_tests::wait_for(
        Duration::from_secs(5),
        "the refusal in the coordinator log",
        || refusal_logged(&c, "UnknownIssuer"),
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
    assert_eq!(
        err,
        "PermissionDenied: certificate identity spiffe://phoenix.lab/coordinator is not an agent identity"
    );

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
    assert_eq!(
        err,
        "PermissionDenied: client certificate carries no identity in trust domain phoenix.lab"
    );

    // A rebuilt guest re-enrolls with a new token: the old identity is retired.
    let rebuilt = Agent::new(&tmp.path().join("rebuilt"), 101);
    assert!(rebuilt.join(&c.token(101), &[]).status.success());
    let err = session_attempt(&c.addr, SERVER, &chain, &key, &roots, 101)
        .await
        .expect_err("old identity");
    assert_eq!(
        err,
        format!(
            "PermissionDenied: certificate {} of guest 101 was replaced by a newer enrollment",
            serial(&chain)
        )
    );
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
    session_attempt(&c.addr, SERVER, &chain, &key, &roots, 106)
        .await
        .expect_err("expired");
    assert_eq!(
        client_cert_verdict(&c.addr, SERVER, (&chain, &key, &roots)).await,
        Ok("received fatal alert: CertificateExpired".to_string())
    );
    phoenix_tests::wait_for(
        Duration::from_secs(5),
        "the refusal in the coordinator log",
        || refusal_logged(&c, "certificate expired"),
    );
    a.start();
    // The agent names its certificate, why it cannot renew it, and the two commands.
    let advice = format!("identity certificate {} expired at ", serial(&chain));
    let log = phoenix_tests::wait_for(
        Duration::from_secs(15),
        "expiry advice in the agent log",
        || Some(a.log()).filter(|l| l.contains(&advice)),
    );
    assert!(
        log.contains("the CA does not renew expired certificates: on the host run `phoenix token create --guest 106`, then here `phoenix-agent join <token>`")
            && log.contains("this coordinator renews expired certificates for 0s at most"),
        "{log}"
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
    assert_revoked(&err, 108);
    let err = session_attempt(&c.addr, SERVER, &chain, &key, &roots, 108)
        .await
        .expect_err("session of a revoked identity");
    assert_revoked(&err, 108);
    let again = Agent::new(&tmp.path().join("again"), 108);
    assert!(again.join(&c.token(108), &[]).status.success());
    let (chain, key, roots) = identity(&again);
    session_attempt(&c.addr, SERVER, &chain, &key, &roots, 108)
        .await
        .expect("re-joined identity accepted");
}
