//! Exponential backoff with jitter, for retries against Consul and each Envoy.
//!
//! "Equal jitter": the n-th delay is uniform in [e/2, e] with e = min(cap, base·2ⁿ), so a retry
//! never comes sooner than half the nominal delay (no spinning) and instances that failed together
//! spread out. The random source is a seeded SplitMix64, so tests can fix it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// First retry delay (before jitter).
pub const BASE: Duration = Duration::from_millis(200);
/// Longest delay between two attempts.
pub const CAP: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// The default schedule (200 ms doubling to 10 s), seeded from the clock.
    pub fn new() -> Backoff {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed);
        Backoff::with_seed(BASE, CAP, seed)
    }

    /// The default schedule with a lower cap (e.g. the resync interval, so retries are never
    /// rarer than resyncs).
    pub fn with_cap(cap: Duration) -> Backoff {
        let mut b = Backoff::new();
        b.cap = cap.clamp(BASE, CAP);
        b
    }

    pub fn with_seed(base: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
            rng: seed,
        }
    }

    /// The delay before the next attempt; each call doubles the nominal delay up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self
            .base
            .saturating_mul(1u32 << self.attempt.min(30))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = nominal / 2;
        let span = (nominal - half).as_nanos() as u64;
        let jitter = if span == 0 {
            0
        } else {
            self.next_u64() % (span + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failures since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    fn next_u64(&mut self) -> u64 {
        // SplitMix64.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_bounds_and_stop_at_the_cap() {
        for seed in [0u64, 1, 42, u64::MAX, 0xdead_beef] {
            let mut b = Backoff::with_seed(BASE, CAP, seed);
            for n in 0..40u32 {
                let nominal = BASE.saturating_mul(1 << n.min(30)).min(CAP);
                let d = b.next_delay();
                assert!(
                    d >= nominal / 2 && d <= nominal,
                    "seed {seed}, attempt {n}: {d:?} not in [{:?}, {nominal:?}]",
                    nominal / 2
                );
                assert!(d <= CAP && d >= BASE / 2);
            }
            assert_eq!(b.attempts(), 40);
            b.reset();
            assert!(b.next_delay() <= BASE);
        }
        let mut b = Backoff::with_cap(Duration::from_secs(2));
        assert!((0..20)
            .map(|_| b.next_delay())
            .all(|d| d <= Duration::from_secs(2)));
        let mut b = Backoff::with_cap(Duration::from_secs(60));
        assert!((0..20).map(|_| b.next_delay()).all(|d| d <= CAP));
    }

    #[test]
    fn jitter_spreads_instances_that_failed_together() {
        let delays: Vec<Duration> = (0..20)
            .map(|seed| Backoff::with_seed(BASE, CAP, seed).next_delay())
            .collect();
        let mut distinct = delays.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() >= 15, "{delays:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let a: Vec<Duration> = {
            let mut b = Backoff::with_seed(BASE, CAP, 7);
            (0..10).map(|_| b.next_delay()).collect()
        };
        let mut b = Backoff::with_seed(BASE, CAP, 7);
        assert!(a.iter().all(|d| *d == b.next_delay()));
    }
}
