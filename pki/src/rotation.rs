//! When to renew: at about 2/3 of the lifetime, jittered so a fleet enrolled together does
//! not renew together, clamped so renewal never starts later than a safety margin before
//! expiry and never "in the past". Pure functions: tests pass the clock in.

use crate::x509::CertInfo;
use std::time::{Duration, SystemTime};

/// Fraction of the lifetime at which renewal is due, before jitter.
const RENEW_FRACTION: f64 = 2.0 / 3.0;
/// ± this fraction of the lifetime.
const JITTER_FRACTION: f64 = 0.05;
/// Renewal never starts later than this fraction of the lifetime before expiry.
const MIN_REMAINING_FRACTION: f64 = 0.15;

/// The instant renewal is due, for a jitter sample `jitter` in [-1, 1].
pub fn renew_at(not_before: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let secs = lifetime.as_secs_f64();
    let jitter = jitter.clamp(-1.0, 1.0);
    let offset = secs * (RENEW_FRACTION + JITTER_FRACTION * jitter);
    let latest = secs * (1.0 - MIN_REMAINING_FRACTION);
    not_before + Duration::from_secs_f64(offset.min(latest).max(0.0))
}

/// How long to sleep before renewing `cert`, seen at `now`; zero when overdue.
pub fn renew_delay(cert: &CertInfo, now: SystemTime) -> Duration {
    let jitter: f64 = rand::Rng::random_range(&mut rand::rng(), -1.0..=1.0);
    renew_at(cert.not_before, cert.not_after, jitter)
        .duration_since(now)
        .unwrap_or_default()
}

/// Exponential backoff for failed renewals: 1 s doubling, capped at 1/10 of the remaining
/// lifetime (so several attempts fit before expiry) and at 5 minutes.
pub fn retry_delay(attempt: u32, remaining: Duration) -> Duration {
    let base = Duration::from_secs(1u64 << attempt.min(16));
    let cap = (remaining / 10).clamp(Duration::from_secs(1), Duration::from_secs(300));
    base.min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn renews_at_two_thirds_with_bounded_jitter() {
        assert_eq!(renew_at(t(0), t(300), 0.0), t(200));
        assert_eq!(renew_at(t(0), t(300), 1.0), t(215));
        assert_eq!(renew_at(t(0), t(300), -1.0), t(185));
        // Out-of-range jitter is clamped, never beyond 85 % of the lifetime.
        assert_eq!(renew_at(t(0), t(300), 9.0), t(215));
    }

    #[test]
    fn retry_backoff_is_capped_by_remaining_lifetime() {
        assert_eq!(
            retry_delay(0, Duration::from_secs(3600)),
            Duration::from_secs(1)
        );
        assert_eq!(
            retry_delay(3, Duration::from_secs(3600)),
            Duration::from_secs(8)
        );
        assert_eq!(
            retry_delay(20, Duration::from_secs(3600)),
            Duration::from_secs(300)
        );
        assert_eq!(
            retry_delay(20, Duration::from_secs(60)),
            Duration::from_secs(6)
        );
        assert_eq!(retry_delay(20, Duration::ZERO), Duration::from_secs(1));
    }
}
