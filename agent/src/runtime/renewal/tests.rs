//! The renewal schedule in tokio's paused time, against a fake coordinator.

use super::*;
use phoenix_proto::model::GuestId;
use std::sync::Mutex;
use tokio::time::Instant;

const LIFETIME: Duration = Duration::from_secs(300);

/// A coordinator that answers each renewal from `answers` (then succeeds), on a clock
/// that follows tokio's paused one.
struct Fake {
    start: Instant,
    epoch: SystemTime,
    cert: Mutex<CertInfo>,
    answers: Mutex<Vec<tonic::Code>>,
    calls: Mutex<Vec<(&'static str, Duration)>>,
}

fn cert(serial: u32, not_before: SystemTime) -> CertInfo {
    CertInfo {
        common_name: "guest-7".into(),
        sans: Vec::new(),
        not_before,
        not_after: not_before + LIFETIME,
        serial_hex: format!("{serial:02x}"),
        fingerprint: String::new(),
        is_ca: false,
    }
}

impl Fake {
    fn new(answers: &[tonic::Code]) -> Fake {
        let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        Fake {
            start: Instant::now(),
            epoch,
            cert: Mutex::new(cert(1, epoch)),
            answers: Mutex::new(answers.iter().rev().copied().collect()),
            calls: Mutex::new(Vec::new()),
        }
    }
    fn answer(&self, what: &'static str) -> Result<(), RenewError> {
        self.calls
            .lock()
            .expect("lock")
            .push((what, self.start.elapsed()));
        match self.answers.lock().expect("lock").pop() {
            Some(code) => Err(RenewError::Rpc(tonic::Status::new(code, "no"))),
            None => {
                let mut c = self.cert.lock().expect("lock");
                let serial = u32::from_str_radix(&c.serial_hex, 16).expect("hex") + 1;
                *c = cert(serial, self.now());
                Ok(())
            }
        }
    }
    fn calls(&self) -> Vec<(&'static str, u64)> {
        self.calls
            .lock()
            .expect("lock")
            .iter()
            .map(|(w, d)| (*w, d.as_secs()))
            .collect()
    }
}

#[async_trait::async_trait]
impl Renewer for Fake {
    fn now(&self) -> SystemTime {
        self.epoch + self.start.elapsed()
    }
    fn current(&self) -> CertInfo {
        self.cert.lock().expect("lock").clone()
    }
    async fn renew(&self) -> Result<(), RenewError> {
        self.answer("renew")
    }
    async fn renew_expired(&self) -> Result<(), RenewError> {
        self.answer("renew_expired")
    }
    fn guest(&self) -> Option<GuestId> {
        GuestId::try_from(7u32).ok()
    }
}

async fn run_for(fake: &Fake, d: Duration) -> watch::Receiver<String> {
    let (tx, rx) = watch::channel(String::new());
    let _ = tokio::time::timeout(d, schedule(fake, &tx)).await;
    rx
}

#[tokio::test(start_paused = true)]
async fn renews_at_two_thirds_of_each_lifetime_and_publishes_the_serial() {
    let fake = Fake::new(&[]);
    let published = run_for(&fake, Duration::from_secs(440)).await;
    let calls = fake.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    // 2/3 of 300 s ± 5 % jitter, each measured from the certificate in use.
    assert!((185..=215).contains(&calls[0].1), "{calls:?}");
    assert!(
        (185..=215).contains(&(calls[1].1 - calls[0].1)),
        "{calls:?}"
    );
    assert_eq!(*published.borrow(), "03");
}

#[tokio::test(start_paused = true)]
async fn failed_renewals_retry_quickly_without_waiting_for_the_next_schedule() {
    let fake = Fake::new(&[tonic::Code::Unavailable, tonic::Code::Unavailable]);
    let published = run_for(&fake, Duration::from_secs(230)).await;
    let calls = fake.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    let first = calls[0].1;
    assert_eq!(
        calls.iter().map(|c| c.1 - first).collect::<Vec<_>>(),
        [0, 1, 3],
        "1 s, then 2 s backoff"
    );
    assert_eq!(*published.borrow(), "02");
}

#[tokio::test(start_paused = true)]
async fn a_refused_identity_waits_long_then_renews_the_expired_one_with_proof() {
    let fake = Fake::new(&[tonic::Code::PermissionDenied]);
    run_for(&fake, Duration::from_secs(600)).await;
    let calls = fake.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].0, "renew");
    // No hammering after a refusal: the next try is 300 s later, past expiry.
    assert_eq!(calls[1].1 - calls[0].1, 300, "{calls:?}");
    assert_eq!(calls[1].0, "renew_expired");
}
