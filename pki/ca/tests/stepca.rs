//! The Step-CA client against a real step-ca (0.19, started by tests/setup/10-stepca.sh;
//! run with `tests/run-all.sh`, or source that setup and run `cargo test -p phoenix-ca
//! --test stepca`). Without the CA these tests print `SKIPPED` and pass, unless
//! PHOENIX_REQUIRE_ALL=1, where they fail.

use phoenix_ca::stepca::{
    ProvisionerKey, ProvisionerKeySource, RevokeAuth, StepCa, StepCaConfig, TokenRequest,
};
use phoenix_ca::{CaError, CertAuthority, IssueRequest};
use phoenix_pki::{San, keys, tls, x509};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

/// The PHOENIX_STEPCA_* variables of one CA (the shared one from the environment, or a
/// private one from its stepca.env).
#[derive(Clone)]
struct CaEnv(HashMap<String, String>);

impl CaEnv {
    fn shared(test: &str) -> Option<CaEnv> {
        let vars: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("PHOENIX_STEPCA_"))
            .collect();
        if vars.contains_key("PHOENIX_STEPCA_URL") {
            return Some(CaEnv(vars));
        }
        let reason = format!(
            "{test}: no step-ca (PHOENIX_STEPCA_URL unset; source tests/setup/10-stepca.sh)"
        );
        if std::env::var("PHOENIX_REQUIRE_ALL").as_deref() == Ok("1") {
            panic!("{reason}");
        }
        eprintln!("SKIPPED: {reason}");
        None
    }

    fn get(&self, key: &str) -> String {
        self.0
            .get(&format!("PHOENIX_STEPCA_{key}"))
            .cloned()
            .unwrap_or_else(|| panic!("PHOENIX_STEPCA_{key} missing"))
    }

    fn config(&self, key: ProvisionerKeySource) -> StepCaConfig {
        StepCaConfig {
            url: self.get("URL"),
            fingerprint: self.get("FINGERPRINT"),
            provisioner: self.get("PROVISIONER"),
            key,
        }
    }

    fn jwk(&self) -> ProvisionerKeySource {
        ProvisionerKeySource::Jwk(PathBuf::from(self.get("JWK")))
    }

    fn jwe(&self) -> ProvisionerKeySource {
        ProvisionerKeySource::EncryptedJwk {
            jwe: PathBuf::from(self.get("JWE")),
            password_file: PathBuf::from(self.get("PASSWORD_FILE")),
        }
    }

    async fn client(&self) -> StepCa {
        StepCa::connect(&self.config(self.jwk()))
            .await
            .expect("connect to step-ca")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.get("LOG")).unwrap_or_default()
    }

    fn ctl(&self, action: &str) {
        let status = Command::new("bash")
            .arg(self.get("CTL"))
            .arg(action)
            .arg(self.get("DIR"))
            .status()
            .expect("run ctl.sh");
        assert!(status.success(), "ctl.sh {action} failed");
    }
}

/// A step-ca of its own for tests that stop it; stopped and removed on drop.
struct PrivateCa {
    env: CaEnv,
    _dir: tempfile::TempDir,
}

impl PrivateCa {
    fn start(shared: &CaEnv) -> PrivateCa {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        let status = Command::new("bash")
            .arg(shared.get("INIT"))
            .arg(&ca_dir)
            .arg(shared.get("BIN"))
            .arg(shared.get("KEYTOOL"))
            .status()
            .expect("run init-ca.sh");
        assert!(status.success(), "init-ca.sh failed");
        let env = std::fs::read_to_string(ca_dir.join("stepca.env")).expect("read stepca.env");
        let vars = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let ca = PrivateCa {
            env: CaEnv(vars),
            _dir: dir,
        };
        ca.env.ctl("start");
        ca
    }
}

impl Drop for PrivateCa {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(self.env.get("CTL"))
            .arg("stop")
            .arg(self.env.get("DIR"))
            .status();
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}.phoenix.test",
        hex::encode(rand::random::<[u8; 4]>())
    )
}

/// A fresh key and a CSR for `cn` + `sans`, the way an agent makes them.
fn key_and_csr(cn: &str, sans: &[San]) -> (String, String) {
    let key = keys::generate().expect("key");
    let csr = keys::csr(&key, cn, sans).expect("csr");
    (key.serialize_pem(), csr)
}

async fn signed_identity(ca: &StepCa, cn: &str, ttl: Duration) -> (String, String) {
    let sans = [San::Dns(cn.to_string())];
    let (key, csr) = key_and_csr(cn, &sans);
    let ott = ca.sign_token(cn, &sans).expect("token");
    let signed = ca.sign(&csr, &ott, Some(ttl)).await.expect("sign");
    (signed.chain_pem, key)
}

fn spki(chain_pem: &str) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    let ders = x509::parse_chain(chain_pem, "chain").expect("chain");
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&ders[0]).expect("der");
    cert.public_key().raw.to_vec()
}

/// The CA answered `want_action` with `want_status`, reported as the variant that status
/// means (401/403 denied, any other 4xx refused).
fn assert_refused(err: CaError, want_action: &str, want_status: u16) {
    let got = match &err {
        CaError::Denied { action, status, .. } => ("denied", *action, *status),
        CaError::Refused { action, status, .. } => ("refused", *action, *status),
        other => panic!("expected the CA to refuse {want_action}, got: {other}"),
    };
    let kind = if matches!(want_status, 401 | 403) {
        "denied"
    } else {
        "refused"
    };
    assert_eq!(got, (kind, want_action, want_status), "{err}");
}

#[tokio::test]
async fn bootstrap_pins_the_root_by_fingerprint() {
    let Some(env) = CaEnv::shared("bootstrap") else {
        return;
    };
    let ca = env.client().await;
    let roots = ca.roots().await.expect("roots");
    let root_file = std::fs::read_to_string(env.get("ROOT")).expect("root file");
    let want = x509::parse_chain(&root_file, "root").expect("root");
    let got = x509::parse_chain(&roots, "roots").expect("roots");
    assert_eq!(got, want, "GET /roots is the CA's root");
    assert_eq!(x509::fingerprint(&got[0]), env.get("FINGERPRINT"));

    let mut wrong = env.config(env.jwk());
    wrong.fingerprint = "00".repeat(32);
    let err = StepCa::connect(&wrong)
        .await
        .expect_err("unknown fingerprint");
    assert_refused(err, "bootstrap", 404);
}

#[tokio::test]
async fn encrypted_and_plain_provisioner_keys_are_the_same_key() {
    let Some(env) = CaEnv::shared("provisioner key") else {
        return;
    };
    let name = env.get("PROVISIONER");
    let plain = ProvisionerKey::load(&name, &env.jwk()).expect("plain JWK");
    let decrypted = ProvisionerKey::load(&name, &env.jwe()).expect("decrypt step's JWE");
    assert_eq!(plain.kid, decrypted.kid);
    // The kid step's library wrote is the RFC 7638 thumbprint this crate computes.
    assert_eq!(plain.thumbprint(), plain.kid);

    let password = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(password.path(), "not the password\n").expect("write");
    let err = ProvisionerKey::load(
        &name,
        &ProvisionerKeySource::EncryptedJwk {
            jwe: PathBuf::from(env.get("JWE")),
            password_file: password.path().to_path_buf(),
        },
    )
    .expect_err("wrong password");
    assert!(err.to_string().contains("wrong password"), "{err}");

    // A client built from the encrypted key signs.
    let ca = StepCa::connect(&env.config(env.jwe()))
        .await
        .expect("connect");
    let cn = unique("jwe");
    signed_identity(&ca, &cn, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn issue_grants_exactly_the_requested_sans() {
    let Some(env) = CaEnv::shared("issue") else {
        return;
    };
    let ca = env.client().await;
    let cn = unique("agent");
    let sans = vec![
        San::Dns(cn.clone()),
        San::host("10.0.3.15"),
        San::Uri("spiffe://phoenix.test/guest/101".into()),
    ];
    let (_key, csr) = key_and_csr(&cn, &sans);
    let before = SystemTime::now();
    let issued = ca
        .issue(IssueRequest {
            csr_pem: csr,
            common_name: cn.clone(),
            sans: sans.clone(),
            ttl: Duration::from_secs(120),
        })
        .await
        .expect("issue");
    let chain = x509::parse_chain(&issued.chain_pem, "chain").expect("chain");
    assert_eq!(chain.len(), 2, "leaf + intermediate");
    let leaf = x509::inspect(&chain[0]).expect("leaf");
    assert_eq!(leaf.common_name, cn);
    assert_eq!(leaf.sans, sans);
    let lifetime = issued.not_after.duration_since(before).expect("future");
    assert!(
        (Duration::from_secs(115)..=Duration::from_secs(125)).contains(&lifetime),
        "not_after is about now + ttl, got {lifetime:?}"
    );
    tls::TrustStore::from_pem(&issued.roots_pem)
        .expect("roots")
        .verify_chain(&issued.chain_pem)
        .expect("chain verifies against the roots");

    // The CSR must agree with the grant: step-ca refuses a CSR naming other SANs.
    let (_key, other_csr) = key_and_csr(&cn, &[San::Dns("evil.example".into())]);
    let err = ca
        .issue(IssueRequest {
            csr_pem: other_csr,
            common_name: cn,
            sans,
            ttl: Duration::from_secs(120),
        })
        .await
        .expect_err("CSR with other SANs");
    assert_refused(err, "sign", 403);
}

#[tokio::test]
async fn renew_over_mtls_keeps_the_key_and_rekey_replaces_it() {
    let Some(env) = CaEnv::shared("renew/rekey") else {
        return;
    };
    let ca = env.client().await;
    let cn = unique("renew");
    let (chain, key) = signed_identity(&ca, &cn, Duration::from_secs(120)).await;
    let old = x509::inspect(&x509::parse_chain(&chain, "c").expect("c")[0]).expect("leaf");

    let renewed = ca.renew(&chain, &key).await.expect("renew over mTLS");
    assert_ne!(renewed.leaf.serial_hex, old.serial_hex, "new serial");
    assert_eq!(spki(&renewed.chain_pem), spki(&chain), "same key");
    assert_eq!(renewed.leaf.common_name, cn);
    assert_eq!(renewed.leaf.sans, old.sans);
    // step-ca keeps the lifetime (it re-backdates by its own minute).
    assert_eq!(renewed.leaf.lifetime(), old.lifetime());
    assert!(renewed.leaf.not_after > SystemTime::now());

    let new_key = keys::generate().expect("key");
    let csr = keys::csr(&new_key, &cn, &[]).expect("csr");
    let rekeyed = ca
        .rekey(&renewed.chain_pem, &key, &csr)
        .await
        .expect("rekey over mTLS");
    assert_ne!(spki(&rekeyed.chain_pem), spki(&chain), "new key");
    assert_eq!(
        spki(&rekeyed.chain_pem),
        rcgen::PublicKeyData::subject_public_key_info(&new_key),
        "the CSR's key"
    );
    assert_eq!(rekeyed.leaf.sans, old.sans, "same SANs");
    // The rekeyed identity works for the next renewal.
    ca.renew(&rekeyed.chain_pem, &new_key.serialize_pem())
        .await
        .expect("renew after rekey");
}

#[tokio::test]
async fn revoked_certificates_cannot_renew() {
    let Some(env) = CaEnv::shared("revoke") else {
        return;
    };
    let ca = env.client().await;

    // Revoked by itself, over mTLS.
    let (chain, key) = signed_identity(&ca, &unique("revoke-mtls"), Duration::from_secs(120)).await;
    let serial = x509::inspect(&x509::parse_chain(&chain, "c").expect("c")[0])
        .expect("leaf")
        .serial_hex;
    ca.revoke(
        &serial,
        "test",
        RevokeAuth::Mtls {
            chain_pem: &chain,
            key_pem: &key,
        },
    )
    .await
    .expect("revoke over mTLS");
    assert_refused(
        ca.renew(&chain, &key).await.expect_err("renew revoked"),
        "renew",
        401,
    );
    let csr = keys::csr(&keys::generate().expect("key"), "x", &[]).expect("csr");
    assert_refused(
        ca.rekey(&chain, &key, &csr)
            .await
            .expect_err("rekey revoked"),
        "rekey",
        401,
    );
    assert_refused(
        ca.renew_expired(&chain, &key)
            .await
            .expect_err("x5c renew revoked"),
        "renew after expiry",
        401,
    );

    // Revoked by the RA with a provisioner token.
    let (chain, key) = signed_identity(&ca, &unique("revoke-ott"), Duration::from_secs(120)).await;
    let serial = x509::inspect(&x509::parse_chain(&chain, "c").expect("c")[0])
        .expect("leaf")
        .serial_hex;
    ca.revoke(&serial, "test", RevokeAuth::Token)
        .await
        .expect("revoke with token");
    assert_refused(
        ca.renew(&chain, &key).await.expect_err("renew revoked"),
        "renew",
        401,
    );
    assert_refused(
        ca.revoke(&serial, "again", RevokeAuth::Token)
            .await
            .expect_err("revoke twice"),
        "revoke",
        400,
    );
    assert!(env.log().contains("certificate has been revoked"));
}

#[tokio::test]
async fn replayed_and_wrong_audience_tokens_are_refused() {
    let Some(env) = CaEnv::shared("token checks") else {
        return;
    };
    let ca = env.client().await;
    let cn = unique("token");
    let sans = [San::Dns(cn.clone())];
    let (_key, csr) = key_and_csr(&cn, &sans);

    let ott = ca.sign_token(&cn, &sans).expect("token");
    ca.sign(&csr, &ott, None).await.expect("first use");
    assert_refused(
        ca.sign(&csr, &ott, None).await.expect_err("replay"),
        "sign",
        401,
    );

    let sans_s = vec![cn.clone()];
    for audience in [
        "https://ca.example/1.0/sign".to_string(),
        ca.audience("revoke"),
    ] {
        let ott = ca
            .mint_token(&TokenRequest {
                subject: cn.clone(),
                sans: sans_s.clone(),
                audience: audience.clone(),
            })
            .expect("token");
        let err = ca.sign(&csr, &ott, None).await.expect_err(&audience);
        assert_refused(err, "sign", 401);
    }
    // 401 bodies are generic; the CA logs why.
    let log = env.log();
    assert!(log.contains("token already used"), "replay reason logged");
    assert!(
        log.contains("invalid audience (https://ca.example/1.0/sign)"),
        "foreign audience reason logged"
    );
    assert!(
        log.contains("invalid jwk token audience claim"),
        "revoke audience reason logged"
    );
}

#[tokio::test]
async fn an_expired_certificate_renews_with_an_x5c_token() {
    let Some(env) = CaEnv::shared("renew after expiry") else {
        return;
    };
    let ca = env.client().await;
    let cn = unique("expired");
    // 30 s: short enough to wait for, long enough (with the backdate) that step-ca's check
    // of the chain at NotAfter - 1m finds the leaf valid.
    let (chain, key) = signed_identity(&ca, &cn, Duration::from_secs(30)).await;
    let old = x509::inspect(&x509::parse_chain(&chain, "c").expect("c")[0]).expect("leaf");
    let wait = old
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        + Duration::from_secs(2);
    tokio::time::sleep(wait).await;
    assert!(SystemTime::now() > old.not_after, "the cert really expired");

    // An expired cert cannot authenticate over mTLS; the client says so instead of
    // reporting the closed connection step-ca's TLS 1.3 rejection looks like.
    match ca.renew(&chain, &key).await {
        Err(CaError::Expired {
            action: "renew",
            serial,
            ..
        }) => assert_eq!(serial, old.serial_hex),
        other => panic!("expected a refusal to present an expired cert, got {other:?}"),
    }
    let renewed = ca
        .renew_expired(&chain, &key)
        .await
        .expect("renew after expiry");
    assert_eq!(spki(&renewed.chain_pem), spki(&chain), "same key");
    assert_eq!(renewed.leaf.common_name, cn);
    assert!(renewed.leaf.not_after > SystemTime::now(), "valid again");
    // Back to normal renewal.
    ca.renew(&renewed.chain_pem, &key)
        .await
        .expect("mTLS renew of the renewed cert");
}

#[tokio::test]
async fn a_stopped_ca_fails_cleanly_and_signing_resumes_after_restart() {
    let Some(shared) = CaEnv::shared("CA restart") else {
        return;
    };
    let private = PrivateCa::start(&shared);
    let env = &private.env;
    let ca = env.client().await;
    let cn = unique("restart");
    let (chain, key) = signed_identity(&ca, &cn, Duration::from_secs(120)).await;
    let sans = [San::Dns(cn.clone())];
    let (_k, csr) = key_and_csr(&cn, &sans);
    let early_token = ca.sign_token(&cn, &sans).expect("token");

    env.ctl("stop");
    let t0 = Instant::now();
    let err = ca
        .sign(&csr, &ca.sign_token(&cn, &sans).expect("token"), None)
        .await
        .expect_err("CA down");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "fails fast, not after a hang"
    );
    // The first call may hit the pooled connection the CA just closed; either way the
    // error names the CA and the cause.
    match &err {
        CaError::Unreachable { url, action, .. } => {
            assert!(url.starts_with(&env.get("URL")), "{url}");
            assert_eq!(*action, "sign");
        }
        other => panic!("expected Unreachable, got {other}"),
    }
    match ca.renew(&chain, &key).await {
        Err(e @ CaError::Unreachable { .. }) => {
            assert!(e.to_string().contains("onnection refused"), "{e}")
        }
        other => panic!("expected connection refused, got {other:?}"),
    }
    // The held cert is untouched by the outage.
    let root = std::fs::read_to_string(env.get("ROOT")).expect("root");
    tls::TrustStore::from_pem(&root)
        .expect("roots")
        .verify_chain(&chain)
        .expect("still valid");

    // step-ca's iat check refuses tokens minted before it started: mint after.
    std::thread::sleep(Duration::from_millis(1100));
    env.ctl("start");
    assert_refused(
        ca.sign(&csr, &early_token, None)
            .await
            .expect_err("pre-restart token"),
        "sign",
        401,
    );
    let ott = ca.sign_token(&cn, &sans).expect("token");
    ca.sign(&csr, &ott, None).await.expect("sign after restart");
    ca.renew(&chain, &key).await.expect("renew after restart");
    assert!(
        env.log()
            .contains("token issued before the bootstrap of certificate authority")
    );
}

#[tokio::test]
async fn sign_without_not_after_takes_the_ca_default_lifetime() {
    let Some(env) = CaEnv::shared("default lifetime") else {
        return;
    };
    let ca = env.client().await;
    let cn = unique("plain");
    let sans = [San::Dns(cn.clone())];
    let (_key, csr) = key_and_csr(&cn, &sans);
    let signed = ca
        .sign(&csr, &ca.sign_token(&cn, &sans).expect("token"), None)
        .await
        .expect("sign");
    // Default lifetime from ca.json: 2 minutes (+1 minute backdate).
    assert_eq!(signed.leaf.lifetime(), Duration::from_secs(180));
}

#[tokio::test]
async fn the_coordinators_agent_grant_shape_is_accepted() {
    // The RA grants an agent CN guest-N plus its SPIFFE URI, while the agent's CSR names
    // only the CN: step-ca accepts a CSR without SANs and issues the token's SANs.
    let Some(env) = CaEnv::shared("agent grant shape") else {
        return;
    };
    let ca = env.client().await;
    let guest = 100_000 + u32::from(rand::random::<u16>());
    let cn = format!("guest-{guest}");
    let (_key, csr) = key_and_csr(&cn, &[]);
    let uri = San::Uri(format!("spiffe://phoenix.test/guest/{guest}"));
    let issued = ca
        .issue(IssueRequest {
            csr_pem: csr,
            common_name: cn.clone(),
            sans: vec![uri.clone()],
            ttl: Duration::from_secs(60),
        })
        .await
        .expect("issue agent identity");
    let leaf =
        x509::inspect(&x509::parse_chain(&issued.chain_pem, "c").expect("c")[0]).expect("leaf");
    assert_eq!((leaf.common_name, leaf.sans), (cn, vec![uri]));
}
