//! A `DELETE` that fans out: the per-worker bound on those in flight, and what it owes to the
//! pushgateways it could not reach (a tombstone, see [`crate::tombstones`]).
//!
//! Both are decided before any call is sent, so a `DELETE` that cannot keep its promise is
//! refused (`503`) while nothing has been deleted yet.

use crate::members::Member;
use crate::routing::{Reply, RETRY_AFTER_SECONDS};
use std::cell::{Cell, RefCell};

use super::FANOUT_TIMEOUT;

thread_local! {
    /// `DELETE`s of this worker (one thread: its listeners share the bound) whose calls are in
    /// flight.
    static IN_FLIGHT: Cell<u32> = const { Cell::new(0) };
    /// The places of `DELETE`s that ended with calls in flight, and until when (host clock,
    /// nanoseconds) each stays taken. Envoy does not cancel a call when the request that sent it
    /// goes away (measured: the calls of a "DELETE, close" loop piled up to the cluster's circuit
    /// breaker, and every later call failed at once), so the place is given back only when the
    /// call's timeout has passed.
    static ORPHANS: RefCell<Vec<(u64, FanoutSlot)>> = const { RefCell::new(Vec::new()) };
}

/// A place among the `DELETE`s in fan-out on this worker, given back when dropped.
#[derive(Debug)]
pub struct FanoutSlot(());

impl FanoutSlot {
    /// A place, unless `max` are taken at `now_ns` (the host clock).
    pub fn take(max: u32, now_ns: u64) -> Option<FanoutSlot> {
        release_orphans(now_ns);
        IN_FLIGHT.with(|n| {
            if n.get() >= max {
                return None;
            }
            n.set(n.get() + 1);
            Some(FanoutSlot(()))
        })
    }

    /// Keeps the place taken until `until_ns`: its calls are still in flight.
    pub fn keep_until(self, until_ns: u64) {
        ORPHANS.with(|o| o.borrow_mut().push((until_ns, self)));
    }

    /// Places taken on this worker.
    pub fn taken() -> u32 {
        IN_FLIGHT.with(Cell::get)
    }
}

/// Gives back the places whose calls have ended by `now_ns`.
fn release_orphans(now_ns: u64) {
    let expired: Vec<(u64, FanoutSlot)> = ORPHANS.with(|o| {
        let mut o = o.borrow_mut();
        let (expired, kept) = std::mem::take(&mut *o)
            .into_iter()
            .partition(|(t, _)| *t <= now_ns);
        *o = kept;
        expired
    });
    drop(expired);
}

impl Drop for FanoutSlot {
    fn drop(&mut self) {
        let _ = IN_FLIGHT.try_with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// What a `DELETE` that may leave a copy behind carries until it is answered.
#[derive(Debug)]
pub struct PendingDelete {
    /// The group, as `GroupingKey::to_path` writes it.
    pub group: String,
    /// When the `DELETE` arrived, Unix milliseconds by Envoy's clock.
    pub at_ms: u64,
    /// Pushgateways it has not reached: the absent ones, then every call that failed.
    pub unreached: Vec<Member>,
    /// Held while its calls are in flight.
    pub slot: Option<FanoutSlot>,
}

/// `503` with `Retry-After`: the client may send the same `DELETE` again later.
fn unavailable(retry_after: u32, body: String) -> Reply {
    let mut reply = Reply::text(503, body);
    reply.headers.push("retry-after", &retry_after.to_string());
    reply
}

/// The answer when `max` `DELETE`s are in fan-out on this worker already.
pub fn too_many(max: u32) -> Reply {
    let wait = FANOUT_TIMEOUT.as_secs() as u32;
    unavailable(
        wait,
        format!(
            "dynamic-sharding: {max} DELETEs are waiting for their calls to other pushgateways on this \
             worker already (max_delete_fanouts); nothing was deleted; retry after {wait} s\n"
        ),
    )
}

/// The answer when the tombstone list holds `held` of at most `max`.
pub fn tombstones_full(held: u64, max: u32) -> Reply {
    unavailable(
        RETRY_AFTER_SECONDS * 6,
        format!(
            "dynamic-sharding: {held} tombstones wait for consul-sync to collect them (max_tombstones {max}): \
             this DELETE could leave a copy of the group on a pushgateway it cannot reach with nothing to \
             remove it later, so nothing was deleted; retry later (is consul-sync running?)\n"
        ),
    )
}

/// The answer when the tombstone of a `DELETE` that did not reach `unreached` could not be
/// stored.
pub fn not_recorded(unreached: &[Member], why: &str) -> Reply {
    let names: Vec<&str> = unreached.iter().map(Member::as_str).collect();
    unavailable(
        RETRY_AFTER_SECONDS,
        format!(
            "dynamic-sharding: this DELETE did not reach pushgateway {} and its tombstone could not be \
             kept ({why}): a copy of the group may remain there; the owner's copy was not deleted; \
             retry the DELETE\n",
            names.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_thread_and_given_back_when_dropped() {
        let a = FanoutSlot::take(2, 0);
        let b = FanoutSlot::take(2, 0);
        assert!(a.is_some() && b.is_some());
        assert!(FanoutSlot::take(2, 0).is_none());
        let other_thread = std::thread::spawn(move || FanoutSlot::take(1, 0).is_some());
        assert!(other_thread.join().unwrap_or(false), "another worker has its own");
        drop(a);
        assert!(FanoutSlot::take(2, 0).is_some());
        drop(b);
        assert_eq!(FanoutSlot::taken(), 0);
    }

    #[test]
    fn a_slot_kept_for_calls_in_flight_comes_back_after_their_time() {
        if let Some(slot) = FanoutSlot::take(1, 0) {
            slot.keep_until(3_000);
        }
        assert!(FanoutSlot::take(1, 2_999).is_none());
        assert!(FanoutSlot::take(1, 3_000).is_some());
        assert_eq!(FanoutSlot::taken(), 0);
    }
}
