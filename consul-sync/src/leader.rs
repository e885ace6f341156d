//! Whether this consul-sync may act on the pushgateways now: delete, move and copy groups, apply
//! drains, deregister services.
//!
//! Several consul-syncs may watch one Consul (for availability); each pushes the same member lists
//! to the Envoys, which is harmless, but two that delete copies from their own reads can together
//! delete every copy of a group. So only the holder of a lease in Consul acts. The task that holds
//! the lease records every renewal here; whoever acts asks [`Leadership::may_act`] right before
//! each write. A holder acts only while its last renewal is younger than half the lease's TTL by
//! its own monotonic clock: Consul invalidates a session no sooner than its TTL after the last
//! renewal, so a holder that was frozen or cut off stops acting before another can take over.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Leadership {
    /// Until when the last renewal lets this consul-sync act; `None` while it holds no lease.
    fresh_until: Mutex<Option<Instant>>,
}

impl Leadership {
    /// Not holding the lease (yet).
    pub fn new() -> Leadership {
        Leadership::default()
    }

    /// The lease was acquired or renewed at `at` (taken before the request was sent) for `ttl`.
    pub fn renewed(&self, at: Instant, ttl: Duration) {
        if let Ok(mut f) = self.fresh_until.lock() {
            *f = Some(at + ttl / 2);
        }
    }

    /// The lease is gone (released, lost, or another consul-sync holds it).
    pub fn lost(&self) {
        if let Ok(mut f) = self.fresh_until.lock() {
            *f = None;
        }
    }

    /// True while the last renewal is fresh enough to act on.
    pub fn may_act(&self) -> bool {
        self.may_act_at(Instant::now())
    }

    fn may_act_at(&self, now: Instant) -> bool {
        self.fresh_until
            .lock()
            .map(|f| f.is_some_and(|until| now < until))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acts_only_within_half_the_ttl_of_the_last_renewal() {
        let l = Leadership::new();
        let t0 = Instant::now();
        assert!(!l.may_act_at(t0), "no lease, no action");
        l.renewed(t0, Duration::from_secs(10));
        assert!(l.may_act_at(t0 + Duration::from_millis(4_999)));
        assert!(
            !l.may_act_at(t0 + Duration::from_secs(5)),
            "a stale renewal stops it"
        );
        l.renewed(t0 + Duration::from_secs(4), Duration::from_secs(10));
        assert!(l.may_act_at(t0 + Duration::from_secs(8)));
        l.lost();
        assert!(!l.may_act_at(t0 + Duration::from_secs(5)));
    }
}
