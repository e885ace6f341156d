//! Whether this consul-sync may act on the pushgateways now: delete, move and copy groups, apply
//! drains, deregister services.
//!
//! Several consul-syncs may watch one Consul (for availability); each pushes the same member lists
//! to the Envoys, which is harmless, but two that delete copies from their own reads can together
//! delete every copy of a group. So only the holder of a lease in Consul acts. The task that holds
//! the lease records every renewal here; whoever acts asks [`Leadership::may_act`] right before
//! each write. A holder acts only while its last renewal is younger than half the lease's TTL by
//! its own clock: Consul invalidates a session no sooner than its TTL after the last renewal
//! (and another holder waits the lock delay on top), so a holder that was frozen or cut off stops
//! acting before another can take over.
//!
//! The clock is `CLOCK_BOOTTIME`: monotonic, and it counts the time a host spent suspended (a
//! paused virtual machine, a suspended laptop), which `Instant` does not.

use nix::time::{clock_gettime, ClockId};
use std::sync::Mutex;
use std::time::Duration;

/// A reading of the boot clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Moment(Duration);

impl Moment {
    /// Now, or `None` if the clock cannot be read (then nobody may act).
    pub fn now() -> Option<Moment> {
        let t = clock_gettime(ClockId::CLOCK_BOOTTIME).ok()?;
        let secs = u64::try_from(t.tv_sec()).ok()?;
        let nanos = u32::try_from(t.tv_nsec()).ok()?;
        Some(Moment(Duration::new(secs, nanos)))
    }
}

impl std::ops::Add<Duration> for Moment {
    type Output = Moment;
    fn add(self, d: Duration) -> Moment {
        Moment(self.0.saturating_add(d))
    }
}

#[derive(Debug, Default)]
pub struct Leadership {
    /// Until when the last renewal lets this consul-sync act; `None` while it holds no lease.
    fresh_until: Mutex<Option<Moment>>,
    /// Who holds the lease, as the key's value said at the last look (`None`: nobody, or not
    /// known yet).
    holder: Mutex<Option<String>>,
}

impl Leadership {
    /// Not holding the lease (yet).
    pub fn new() -> Leadership {
        Leadership::default()
    }

    /// The lease was acquired or renewed at `at` (read before the request was sent) for `ttl`.
    pub fn renewed(&self, at: Moment, ttl: Duration) {
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
        Moment::now().is_some_and(|now| self.may_act_at(now))
    }

    fn may_act_at(&self, now: Moment) -> bool {
        self.fresh_until
            .lock()
            .map(|f| f.is_some_and(|until| now < until))
            .unwrap_or(false)
    }

    /// Records who holds the lease (the key's value), as last seen.
    pub fn set_holder(&self, holder: Option<String>) {
        if let Ok(mut h) = self.holder.lock() {
            *h = holder;
        }
    }

    /// Who holds the lease, as last seen.
    pub fn holder(&self) -> Option<String> {
        self.holder.lock().ok().and_then(|h| h.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acts_only_within_half_the_ttl_of_the_last_renewal() {
        let l = Leadership::new();
        let t0 = Moment::now().unwrap();
        let ms = Duration::from_millis;
        assert!(!l.may_act_at(t0), "no lease, no action");
        l.renewed(t0, Duration::from_secs(10));
        assert!(l.may_act_at(t0 + ms(4_999)));
        assert!(
            !l.may_act_at(t0 + Duration::from_secs(5)),
            "a stale renewal stops it"
        );
        l.renewed(t0 + Duration::from_secs(4), Duration::from_secs(10));
        assert!(l.may_act_at(t0 + Duration::from_secs(8)));
        l.lost();
        assert!(!l.may_act_at(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn the_boot_clock_moves_forward() {
        let a = Moment::now().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(Moment::now().unwrap() >= a + Duration::from_millis(5));
    }
}
