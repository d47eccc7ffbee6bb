//! The renewal schedule as a fleet lives it, on a virtual clock: `phoenix_pki::rotation` is
//! pure (the caller passes `now`), so no timer is needed to replay days of lifetime in
//! microseconds. The unit tests in rotation.rs pin single values; these check what the
//! schedule promises over many samples and whole lifetimes.

use phoenix_pki::rotation::{renew_delay, retry_delay};
use phoenix_pki::x509::CertInfo;
use std::time::{Duration, SystemTime};

fn cert(lifetime: Duration) -> CertInfo {
    let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    CertInfo {
        common_name: "guest-101".into(),
        sans: Vec::new(),
        not_before,
        not_after: not_before + lifetime,
        serial_hex: "01".into(),
        fingerprint: String::new(),
        is_ca: false,
    }
}

const LIFETIMES: [Duration; 5] = [
    Duration::from_secs(15),
    Duration::from_secs(300),
    Duration::from_secs(3600),
    Duration::from_secs(24 * 3600),
    Duration::from_secs(90 * 24 * 3600),
];

#[test]
fn a_fleet_enrolled_together_renews_spread_over_the_jitter_window() {
    for lifetime in LIFETIMES {
        let c = cert(lifetime);
        let delays: Vec<Duration> = (0..1000).map(|_| renew_delay(&c, c.not_before)).collect();
        let (min, max) = (
            *delays.iter().min().expect("samples"),
            *delays.iter().max().expect("samples"),
        );
        // 2/3 of the lifetime ± 5 %.
        let (lo, hi) = (lifetime.mul_f64(0.6166), lifetime.mul_f64(0.7167));
        assert!(
            lo <= min && max <= hi,
            "{lifetime:?}: renewal due between {min:?} and {max:?}, outside {lo:?}..{hi:?}"
        );
        // 1000 uniform samples over a 10 % window cover well over half of it; a
        // schedule without jitter would put the whole fleet on one instant.
        assert!(
            max - min > lifetime.mul_f64(0.05),
            "{lifetime:?}: 1000 agents renew within {:?} of each other",
            max - min
        );
    }
}

#[test]
fn an_overdue_or_expired_certificate_is_renewed_at_once() {
    let c = cert(Duration::from_secs(3600));
    for now in [
        c.not_before + Duration::from_secs(2600),
        c.not_after,
        c.not_after + Duration::from_secs(86_400),
    ] {
        assert_eq!(renew_delay(&c, now), Duration::ZERO);
    }
    // A clock behind the CA's (not_before still ahead): the wait counts from not_before,
    // so renewal is not brought forward by the skew.
    let behind = c.not_before - Duration::from_secs(60);
    assert!(renew_delay(&c, behind) >= Duration::from_secs(60 + 2220));
}

/// From the latest jittered renewal point, failed renewals are retried with backoff until
/// the certificate expires: several attempts for every lifetime, and the last attempt
/// within a second of expiry, so a CA that comes back in time is always used.
#[test]
fn failed_renewals_keep_retrying_until_the_last_second() {
    for lifetime in LIFETIMES {
        let c = cert(lifetime);
        let mut now = c.not_before + lifetime.mul_f64(0.7167);
        let mut attempts = 0u32;
        let mut last = now;
        while now < c.not_after {
            last = now;
            let wait = retry_delay(
                attempts,
                c.not_after.duration_since(now).unwrap_or_default(),
            );
            assert!(wait >= Duration::from_secs(1), "{lifetime:?}: busy retry");
            assert!(wait <= Duration::from_secs(300), "{lifetime:?}: {wait:?}");
            attempts += 1;
            now += wait;
        }
        let gap = c.not_after.duration_since(last).unwrap_or_default();
        assert!(
            attempts >= 4,
            "{lifetime:?}: only {attempts} attempts before expiry"
        );
        assert!(
            gap <= Duration::from_secs(1),
            "{lifetime:?}: the last attempt came {gap:?} before expiry"
        );
    }
}
