//! Capped full-jitter exponential backoff (AWS architecture blog, "Exponential Backoff
//! And Jitter"): attempt n waits a uniform sample of [0, min(cap, base·2ⁿ)], so a fleet
//! that lost the coordinator together does not come back together. One type for every
//! retry in the agent: sessions, renewals, failed passes, enrollment.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// Attempts since the last success (the next `next()` is for attempt `attempt() + 1`).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Upper bound of the wait for attempt `n` (0-based): base·2ⁿ, capped.
    pub fn ceiling(&self, n: u32) -> Duration {
        self.base.saturating_mul(1u32 << n.min(20)).min(self.max)
    }

    /// The wait before the next attempt, given a uniform sample `u` in [0, 1].
    pub fn next_with(&mut self, u: f64) -> Duration {
        let cap = self.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        cap.mul_f64(u.clamp(0.0, 1.0))
    }

    pub fn next_delay(&mut self) -> Duration {
        self.next_with(rand::Rng::random_range(&mut rand::rng(), 0.0..=1.0))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let b = Backoff::new(ms(500), Duration::from_secs(30));
        let caps: Vec<Duration> = (0..9).map(|n| b.ceiling(n)).collect();
        assert_eq!(
            caps,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000].map(ms)
        );
        // Huge attempt counts neither overflow nor exceed the cap.
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_spans_zero_to_the_ceiling_and_reset_starts_over() {
        let mut b = Backoff::new(ms(100), ms(1000));
        assert_eq!(b.next_with(1.0), ms(100));
        assert_eq!(b.next_with(0.5), ms(100));
        assert_eq!(b.next_with(0.0), Duration::ZERO);
        assert_eq!(b.attempt(), 3);
        b.reset();
        assert_eq!(b.next_with(1.0), ms(100));
        // Out-of-range samples are clamped, never beyond the ceiling.
        assert_eq!(b.next_with(7.0), ms(200));
    }
}
