//! The published member list and the rules that change it (no I/O, so it is tested directly).
//!
//! - The list changes when the set of members changes, never merely because Consul's index moved.
//! - Its version is the Unix time in milliseconds at which this process saw it, strictly
//!   increasing within the process ([`VersionClock`]), so a restarted consul-sync starts above
//!   what it sent before and the newest observation wins at the filter.
//! - Settling: right after registering, checks that have not run yet read as critical. Until
//!   every registered pushgateway passes or the settling time has passed, a list that lacks a
//!   registered pushgateway is held back, so a (re)start pushes neither an empty nor a partial
//!   list that would move groups twice.
//! - Pushgateways in `pushgateway.drain` leave the ring and travel beside it while they pass.
//! - Registered pushgateways that do not pass travel beside it as `absent`: a `DELETE` cannot
//!   reach them now, so it leaves a tombstone for each.

use crate::membership::versions::VersionClock;
use dynamic_sharding::members::{Member, MemberDiff, MemberList, MAX_MEMBERS};
use dynamic_sharding::ring::Ring;
use tokio::time::Instant;

/// What to do with one answer from Consul.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListUpdate {
    /// The members are the published ones: nothing to do.
    Unchanged,
    /// Settling: held back until `until` unless every registered pushgateway passes first.
    Hold { until: Instant },
    /// A new list to publish.
    Publish {
        old: Option<MemberList>,
        new: MemberList,
    },
}

/// The published list and the rules that change it; no I/O, so it is tested directly.
#[derive(Clone, Debug)]
pub struct PublishedList {
    published: Option<MemberList>,
    registered: Vec<Member>,
    /// Pushgateways to keep out of the ring (`pushgateway.drain`).
    drain: Vec<Member>,
    settle_until: Option<Instant>,
    clock: VersionClock,
}

impl PublishedList {
    pub fn new(registered: Vec<Member>) -> PublishedList {
        PublishedList {
            published: None,
            registered,
            drain: Vec::new(),
            settle_until: None,
            clock: VersionClock::default(),
        }
    }

    /// Sets the pushgateways to drain; the next [`PublishedList::observe`] applies them.
    pub fn set_drain(&mut self, mut drain: Vec<Member>) {
        drain.sort();
        self.drain = drain;
    }

    /// Sets the registered pushgateways (the settling waits for them).
    pub fn set_registered(&mut self, registered: Vec<Member>) {
        self.registered = registered;
    }

    /// Holds back lists lacking a registered pushgateway until `until`.
    pub fn settle_until(&mut self, until: Instant) {
        if !self.registered.is_empty() {
            self.settle_until = Some(until);
        }
    }

    pub fn published(&self) -> Option<&MemberList> {
        self.published.as_ref()
    }

    /// The published list again with a new version (`now_ms` or above): for an Envoy that refused
    /// it for another writer's higher version while it is still what Consul says.
    pub fn republish(&mut self, now_ms: u64) -> Option<MemberList> {
        let mut list = self.published.clone()?;
        list.version = self.clock.next(now_ms);
        self.published = Some(list.clone());
        Some(list)
    }

    /// Decides on the `passing` pushgateways (sorted, no duplicates) seen at `now` / `now_ms`:
    /// the ring is those not being drained; the draining ones that pass travel beside it.
    pub fn observe(&mut self, passing: Vec<Member>, now: Instant, now_ms: u64) -> ListUpdate {
        let (draining, members): (Vec<Member>, Vec<Member>) =
            passing.iter().cloned().partition(|m| self.drain.contains(m));
        let absent = self.absent(&passing);
        if self
            .published
            .as_ref()
            .is_some_and(|p| p.members == members && p.draining == draining && p.absent == absent)
        {
            return ListUpdate::Unchanged;
        }
        if let Some(until) = self.settle_until {
            let all_registered_pass = self.registered.iter().all(|m| passing.binary_search(m).is_ok());
            if now < until && !all_registered_pass {
                return ListUpdate::Hold { until };
            }
            self.settle_until = None;
        }
        let new = MemberList {
            version: self.clock.next(now_ms),
            members,
            draining,
            absent,
            ..MemberList::default()
        };
        let old = self.published.replace(new.clone());
        ListUpdate::Publish { old, new }
    }
}

impl PublishedList {
    /// The registered pushgateways not in `passing` (sorted), at most as many as a list takes.
    fn absent(&self, passing: &[Member]) -> Vec<Member> {
        let room = MAX_MEMBERS.saturating_sub(passing.len());
        let mut absent: Vec<Member> = self
            .registered
            .iter()
            .filter(|m| passing.binary_search(m).is_err())
            .take(room)
            .cloned()
            .collect();
        absent.sort();
        absent.dedup();
        absent
    }
}

/// Share of the hash space whose owner differs between two member sets (0.0 to 1.0), sampled
/// at 4096 evenly spaced points: what share of the groups a change moves.
pub fn moved_share(old: &[Member], new: &[Member], vnodes: u32) -> f64 {
    const SAMPLES: u64 = 4096;
    let (a, b) = (Ring::new(old, vnodes), Ring::new(new, vnodes));
    let step = u64::MAX / SAMPLES;
    let moved = (0..SAMPLES)
        .filter(|i| a.owner(i * step) != b.owner(i * step))
        .count();
    moved as f64 / SAMPLES as f64
}

fn join(members: &[Member]) -> String {
    members.iter().map(Member::as_str).collect::<Vec<_>>().join(",")
}

/// The log line of a change: versions, counts, what changed, old and new members.
pub fn describe_change(old: Option<&MemberList>, new: &MemberList, vnodes: u32) -> String {
    let empty = MemberList::default();
    let old = old.unwrap_or(&empty);
    let diff = MemberDiff::between(&old.members, &new.members);
    let moved = if old.members.is_empty() || new.members.is_empty() {
        String::new()
    } else {
        format!(
            ", about {:.0}% of groups move",
            100.0 * moved_share(&old.members, &new.members, vnodes)
        )
    };
    let draining = if old.draining == new.draining {
        String::new()
    } else {
        format!(
            ", draining [{}] (was [{}])",
            join(&new.draining),
            join(&old.draining)
        )
    };
    let absent = if old.absent == new.absent {
        String::new()
    } else {
        format!(", absent [{}] (was [{}])", join(&new.absent), join(&old.absent))
    };
    format!(
        "member list changed: version {}, {} -> {} members, {diff}{moved}{draining}{absent}; old [{}] new [{}]",
        new.version,
        old.len(),
        new.len(),
        join(&old.members),
        join(&new.members)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn m(list: &[&str]) -> Vec<Member> {
        let mut v: Vec<Member> = list.iter().map(|s| Member::parse(s).unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn only_a_change_of_members_publishes() {
        let now = Instant::now();
        let mut v = PublishedList::new(vec![]);
        let ListUpdate::Publish { old: None, new } = v.observe(m(&["a:1", "b:1"]), now, 10) else {
            unreachable!()
        };
        assert_eq!((new.version, new.len()), (10, 2));
        // Same members (e.g. Consul's index moved for another service): nothing.
        assert_eq!(v.observe(m(&["a:1", "b:1"]), now, 20), ListUpdate::Unchanged);
        let ListUpdate::Publish { old: Some(old), new } = v.observe(m(&["a:1"]), now, 20) else {
            unreachable!()
        };
        assert_eq!((old.version, new.version), (10, 20));
        // Nothing passing while Consul answers: the empty list is published.
        let ListUpdate::Publish { new, .. } = v.observe(vec![], now, 20) else {
            unreachable!()
        };
        assert!(new.is_empty());
        assert_eq!(new.version, 21);
        assert_eq!(v.published().map(|l| l.version), Some(21));
    }

    #[test]
    fn settling_holds_back_lists_missing_a_registered_pushgateway() {
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(5);
        let mut v = PublishedList::new(m(&["a:1", "b:1", "c:1"]));
        v.settle_until(until);
        assert_eq!(v.observe(vec![], t0, 1), ListUpdate::Hold { until });
        assert_eq!(v.observe(m(&["a:1", "b:1"]), t0, 1), ListUpdate::Hold { until });
        // All registered ones pass (others may too): published at once.
        let ListUpdate::Publish { new, .. } = v.observe(m(&["a:1", "b:1", "c:1", "x:1"]), t0, 2) else {
            unreachable!()
        };
        assert_eq!(new.len(), 4);
        // Settling is over: a loss is published at once.
        assert!(matches!(
            v.observe(m(&["a:1"]), t0, 3),
            ListUpdate::Publish { .. }
        ));

        // A pushgateway that really is down is published without it once the time is up.
        let mut v = PublishedList::new(m(&["a:1", "b:1"]));
        v.settle_until(until);
        assert!(matches!(v.observe(m(&["a:1"]), t0, 1), ListUpdate::Hold { .. }));
        let ListUpdate::Publish { new, .. } = v.observe(m(&["a:1"]), until, 1) else {
            unreachable!()
        };
        assert_eq!(new.members, m(&["a:1"]));
    }

    #[test]
    fn a_republished_list_keeps_its_members_and_gets_a_higher_version() {
        let now = Instant::now();
        let mut v = PublishedList::new(vec![]);
        assert_eq!(v.republish(5), None, "nothing to republish before the first list");
        assert!(matches!(
            v.observe(m(&["a:1"]), now, 10),
            ListUpdate::Publish { .. }
        ));
        // Another writer's version 1000 was seen: the list goes out again above it.
        let again = v.republish(1001).unwrap();
        assert_eq!((again.version, again.members.clone()), (1001, m(&["a:1"])));
        assert_eq!(v.published(), Some(&again));
        // The next observation starts above it, whatever the clock says.
        let ListUpdate::Publish { new, .. } = v.observe(m(&["a:1", "b:1"]), now, 20) else {
            unreachable!()
        };
        assert_eq!(new.version, 1002);
    }

    #[test]
    fn drained_pushgateways_leave_the_ring_but_stay_listed() {
        let now = Instant::now();
        let mut v = PublishedList::new(vec![]);
        assert!(matches!(
            v.observe(m(&["a:1", "b:1", "c:1"]), now, 1),
            ListUpdate::Publish { .. }
        ));
        v.set_drain(m(&["c:1", "z:1"]));
        let ListUpdate::Publish { new, .. } = v.observe(m(&["a:1", "b:1", "c:1"]), now, 2) else {
            unreachable!()
        };
        assert_eq!((new.members, new.draining), (m(&["a:1", "b:1"]), m(&["c:1"])));
        assert_eq!(
            v.observe(m(&["a:1", "b:1", "c:1"]), now, 3),
            ListUpdate::Unchanged
        );
        // A draining pushgateway that stops passing leaves the list altogether.
        let ListUpdate::Publish { new, .. } = v.observe(m(&["a:1", "b:1"]), now, 4) else {
            unreachable!()
        };
        assert!(new.draining.is_empty());
        v.set_drain(vec![]);
        let ListUpdate::Publish { new, .. } = v.observe(m(&["a:1", "b:1", "c:1"]), now, 5) else {
            unreachable!()
        };
        assert_eq!(
            new.members.len(),
            3,
            "an undrained pushgateway is back in the ring"
        );
    }

    #[test]
    fn settling_after_a_reset_keeps_the_published_list() {
        let t0 = Instant::now();
        let mut v = PublishedList::new(m(&["a:1", "b:1"]));
        assert!(matches!(
            v.observe(m(&["a:1", "b:1"]), t0, 1),
            ListUpdate::Publish { .. }
        ));
        v.settle_until(t0 + Duration::from_secs(5));
        // A Consul that forgot everything shows nothing passing: held, not published.
        assert!(matches!(v.observe(vec![], t0, 2), ListUpdate::Hold { .. }));
        assert_eq!(v.published().map(MemberList::len), Some(2));
        assert_eq!(v.observe(m(&["a:1", "b:1"]), t0, 3), ListUpdate::Unchanged);
    }

    #[test]
    fn registered_pushgateways_that_do_not_pass_are_listed_absent() {
        let now = Instant::now();
        let mut v = PublishedList::new(m(&["a:1", "b:1", "c:1"]));
        v.set_drain(m(&["c:1"]));
        let ListUpdate::Publish { new, .. } = v.observe(m(&["a:1", "b:1", "c:1", "x:1"]), now, 1) else {
            unreachable!()
        };
        assert!(new.absent.is_empty(), "{new:?}");
        // b dies: out of the ring, absent.
        let ListUpdate::Publish { new, .. } = v.observe(m(&["a:1", "c:1", "x:1"]), now, 2) else {
            unreachable!()
        };
        assert_eq!(
            (new.members, new.draining, new.absent),
            (m(&["a:1", "x:1"]), m(&["c:1"]), m(&["b:1"]))
        );
        // The draining one dies too: absent as well, still holding what it held.
        let ListUpdate::Publish { new, .. } = v.observe(m(&["a:1", "x:1"]), now, 3) else {
            unreachable!()
        };
        assert_eq!((new.draining, new.absent), (vec![], m(&["b:1", "c:1"])));
        // An unregistered one that stops passing is simply gone.
        let ListUpdate::Publish { new, .. } = v.observe(m(&["a:1"]), now, 4) else {
            unreachable!()
        };
        assert_eq!((new.members, new.absent), (m(&["a:1"]), m(&["b:1", "c:1"])));
        assert_eq!(v.observe(m(&["a:1"]), now, 5), ListUpdate::Unchanged);
    }

    #[test]
    fn no_registered_servers_means_no_settling() {
        let mut v = PublishedList::new(vec![]);
        v.settle_until(Instant::now() + Duration::from_secs(60));
        assert!(matches!(
            v.observe(vec![], Instant::now(), 1),
            ListUpdate::Publish { .. }
        ));
    }

    #[test]
    fn change_log_names_old_and_new_members_and_the_moved_share() {
        let old = MemberList {
            version: 1,
            members: m(&["a:1", "b:1", "c:1"]),
            ..MemberList::default()
        };
        let new = MemberList {
            version: 2,
            members: m(&["a:1", "b:1"]),
            absent: m(&["c:1"]),
            ..MemberList::default()
        };
        let line = describe_change(Some(&old), &new, 500);
        assert!(
            line.starts_with(
                "member list changed: version 2, 3 -> 2 members, added [] removed [c:1], about 3"
            ),
            "{line}"
        );
        assert!(
            line.ends_with("absent [c:1] (was []); old [a:1,b:1,c:1] new [a:1,b:1]"),
            "{line}"
        );
        let first = describe_change(None, &old, 500);
        assert!(
            first.contains("0 -> 3 members") && !first.contains("groups move"),
            "{first}"
        );
        let share = moved_share(&old.members, &new.members, 500);
        assert!((0.28..0.39).contains(&share), "{share}");
        assert_eq!(moved_share(&old.members, &old.members, 500), 0.0);
    }
}
