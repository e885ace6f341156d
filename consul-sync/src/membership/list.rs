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
//! - Missing: Consul showing none of the registered pushgateways, in any state, is not "none
//!   passes" but a Consul that does not know them (an agent that lost its state or is leaving
//!   the cluster, a token without `service:read`, which reads `200 []`): the list stays.
//! - Suspicious removals: a change that takes two or more pushgateways out at once, or the last
//!   one, or any within `hold` after Consul came back (from an outage, a reset or showing none of
//!   them; a restarted agent's checks start critical), is not believed at once: the removed ones
//!   are probed ([`ListUpdate::Probe`]), and those that answer are held in the list for `hold`
//!   while Consul's checks catch up. Each is held once: if its hold runs out before it passes
//!   again, it leaves. A single pushgateway removed otherwise leaves at once: a dead one must
//!   leave fast.
//! - Pushgateways in `pushgateway.drain` leave the ring and travel beside it while they pass.
//! - Registered pushgateways that do not pass travel beside it as `absent`: a `DELETE` cannot
//!   reach them now, so it leaves a tombstone for each.
//! - Slots with a standby ([`SlotState`], from [`super::roles`]) are observed by name; the list's
//!   `slots` says where each is served. A standby is published only while it passes: one that is
//!   down costs the filter nothing then (no write waits for it), a `DELETE` leaves a tombstone for
//!   it (it is `absent`, unless it is the slot's own name), and the repair copies what it missed
//!   once it is back.

use crate::consul::Instances;
use crate::membership::roles::SlotState;
use crate::membership::versions::VersionClock;
use dynamic_sharding::members::{Member, MemberDiff, MemberList, Slot, MAX_MEMBERS};
use dynamic_sharding::ring::Ring;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;

/// What to do with one answer from Consul.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListUpdate {
    /// The members are the published ones: nothing to do.
    Unchanged,
    /// Settling: held back until `until` unless every registered pushgateway passes first.
    Hold { until: Instant },
    /// Consul shows none of the registered pushgateways: the published list stays.
    Missing,
    /// Consul took these out in a way that is suspicious: probe them, then decide with
    /// [`PublishedList::observe_probed`].
    Probe { removed: Vec<Member> },
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
    /// How long a pushgateway that answers is kept against Consul's word, and how long removals
    /// stay suspicious after Consul came back.
    hold: Duration,
    /// Until when every removal is suspicious.
    suspect_until: Option<Instant>,
    /// Pushgateways kept against Consul's word because they answered, and until when.
    held: BTreeMap<Member, Instant>,
    /// Pushgateways whose hold ran out: not held again before they pass again.
    spent: BTreeSet<Member>,
    /// Holds that ran out since the last [`PublishedList::take_expired`].
    expired: Vec<Member>,
    /// Consul showed none of the registered pushgateways at the last answer.
    missing: bool,
    /// The slots with a standby, by name: where each is served and whether its standby passes.
    slots: BTreeMap<Member, SlotState>,
    clock: VersionClock,
}

impl PublishedList {
    /// `hold`: how long a pushgateway that answers a probe stays against Consul's word.
    pub fn new(registered: Vec<Member>, hold: Duration) -> PublishedList {
        PublishedList {
            published: None,
            registered,
            drain: Vec::new(),
            settle_until: None,
            hold,
            suspect_until: None,
            held: BTreeMap::new(),
            spent: BTreeSet::new(),
            expired: Vec::new(),
            missing: false,
            slots: BTreeMap::new(),
            clock: VersionClock::default(),
        }
    }

    /// Sets the pushgateways to drain; the next [`PublishedList::observe`] applies them.
    pub fn set_drain(&mut self, mut drain: Vec<Member>) {
        drain.sort();
        self.drain = drain;
    }

    /// Sets the slots with a standby; the next [`PublishedList::observe`] applies them.
    pub fn set_slots(&mut self, slots: BTreeMap<Member, SlotState>) {
        self.slots = slots;
    }

    /// Sets the registered pushgateways (the settling waits for them).
    pub fn set_registered(&mut self, registered: Vec<Member>) {
        self.registered = registered;
    }

    /// Sets how long a pushgateway that answers is held (the check settings changed).
    pub fn set_hold(&mut self, hold: Duration) {
        self.hold = hold;
    }

    /// Holds back lists lacking a registered pushgateway until `until`.
    pub fn settle_until(&mut self, until: Instant) {
        if !self.registered.is_empty() {
            self.settle_until = Some(until);
        }
    }

    /// Consul came back (from an outage or a reset): every removal until `now + hold` is
    /// suspicious.
    pub fn suspect_from(&mut self, now: Instant) {
        let until = now + self.hold;
        self.suspect_until = Some(self.suspect_until.map_or(until, |t| t.max(until)));
    }

    /// Whether Consul's word is in doubt at `now`: settling, or just back from an outage. No
    /// standby is promoted then (a restarted agent's checks start critical).
    pub fn in_doubt(&self, now: Instant) -> bool {
        self.settle_until.is_some_and(|t| now < t) || self.suspect_until.is_some_and(|t| now < t)
    }

    pub fn published(&self) -> Option<&MemberList> {
        self.published.as_ref()
    }

    /// Whether Consul lacks some registered pushgateway altogether (they need registering).
    pub fn lacks_registered(&self, consul: &Instances) -> bool {
        self.registered
            .iter()
            .any(|m| consul.present.binary_search(m).is_err())
    }

    /// The pushgateways held in the list against Consul's word.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// When the first hold runs out: the answer must be looked at again then.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.held.values().min().copied()
    }

    /// The pushgateways whose hold ran out since the last call.
    pub fn take_expired(&mut self) -> Vec<Member> {
        std::mem::take(&mut self.expired)
    }

    /// The published list again with a new version (`now_ms` or above): for an Envoy that refused
    /// it for another writer's higher version while it is still what Consul says.
    pub fn republish(&mut self, now_ms: u64) -> Option<MemberList> {
        let mut list = self.published.clone()?;
        list.version = self.clock.next(now_ms);
        self.published = Some(list.clone());
        Some(list)
    }

    /// Decides on what Consul shows at `now` / `now_ms`: the ring is the passing pushgateways
    /// (and the held ones) not being drained; the draining ones travel beside it.
    pub fn observe(&mut self, consul: &Instances, now: Instant, now_ms: u64) -> ListUpdate {
        let missing = self.published.is_some()
            && !self.registered.is_empty()
            && !self
                .registered
                .iter()
                .any(|m| consul.present.binary_search(m).is_ok());
        if missing {
            self.missing = true;
            return ListUpdate::Missing;
        }
        if std::mem::take(&mut self.missing) {
            self.suspect_from(now);
        }
        self.decide(consul, None, now, now_ms)
    }

    /// Decides after a [`ListUpdate::Probe`]: of the removed pushgateways, `alive` answered and
    /// are held (unless their hold already ran out once).
    pub fn observe_probed(
        &mut self,
        consul: &Instances,
        alive: &[Member],
        now: Instant,
        now_ms: u64,
    ) -> ListUpdate {
        self.decide(consul, Some(alive), now, now_ms)
    }

    fn decide(
        &mut self,
        consul: &Instances,
        probed: Option<&[Member]>,
        now: Instant,
        now_ms: u64,
    ) -> ListUpdate {
        let passing = &consul.passing;
        let passes = |m: &Member| passing.binary_search(m).is_ok();
        let ended: Vec<Member> = self
            .held
            .iter()
            .filter(|(m, until)| passes(m) || now >= **until)
            .map(|(m, _)| m.clone())
            .collect();
        for m in ended {
            self.held.remove(&m);
            if !passes(&m) {
                self.spent.insert(m.clone());
                self.expired.push(m);
            }
        }
        self.spent.retain(|m| !passes(m));
        for m in probed.unwrap_or_default() {
            if !self.spent.contains(m) {
                self.held.insert(m.clone(), now + self.hold);
            }
        }
        let mut effective: Vec<Member> = passing.iter().chain(self.held.keys()).cloned().collect();
        effective.sort();
        effective.dedup();
        let (draining, members): (Vec<Member>, Vec<Member>) =
            effective.iter().cloned().partition(|m| self.drain.contains(m));
        let (slots, absent) = self.placed(&members, &draining, &effective);
        if self.published.as_ref().is_some_and(|p| {
            p.members == members && p.draining == draining && p.absent == absent && p.slots == slots
        }) {
            return ListUpdate::Unchanged;
        }
        if let Some(until) = self.settle_until {
            // A slot passes by its active here: one listed only because its standby passes (as
            // when the standby's first check ran before the active's) has not settled, and a
            // promotion after settling would demote a live active.
            let all_registered_pass = self.registered.iter().all(|m| {
                effective.binary_search(m).is_ok() && self.slots.get(m).is_none_or(|s| s.active_passes)
            });
            if now < until && !all_registered_pass {
                return ListUpdate::Hold { until };
            }
            self.settle_until = None;
        }
        if probed.is_none() {
            if let Some(removed) = self.suspicious_removal(&effective, &consul.present, now) {
                return ListUpdate::Probe { removed };
            }
        }
        let new = MemberList {
            version: self.clock.next(now_ms),
            members,
            draining,
            absent,
            slots,
        };
        let old = self.published.replace(new.clone());
        ListUpdate::Publish { old, new }
    }

    /// The removed pushgateways to probe, when going from the published list to `effective`
    /// removes them suspiciously; those whose hold already ran out are not probed again. A
    /// registered pushgateway gone from Consul altogether (deregistered by hand: the registrar
    /// registers it again) is suspicious alone.
    fn suspicious_removal(
        &self,
        effective: &[Member],
        present: &[Member],
        now: Instant,
    ) -> Option<Vec<Member>> {
        let published = self.published.as_ref()?;
        let before: Vec<&Member> = published.holders().collect();
        let removed: Vec<&Member> = before
            .iter()
            .copied()
            .filter(|m| effective.binary_search(m).is_err())
            .collect();
        let unregistered = removed
            .iter()
            .any(|m| self.registered.contains(m) && present.binary_search(m).is_err());
        let suspicious = removed.len() >= 2
            || (!removed.is_empty() && removed.len() == before.len())
            || (!removed.is_empty() && self.suspect_until.is_some_and(|t| now < t))
            || unregistered;
        let to_probe: Vec<Member> = removed
            .into_iter()
            .filter(|m| !self.spent.contains(*m))
            .cloned()
            .collect();
        (suspicious && !to_probe.is_empty()).then_some(to_probe)
    }
}

impl PublishedList {
    /// The `slots` of the holders (`members` and `draining`) and the `absent` addresses: every
    /// address of a registered slot not in `listed` (the passing and the held ones, by name;
    /// sorted), and each listed slot's standby that does not pass (unless it is the slot's name),
    /// at most as many as a list takes.
    fn placed(
        &self,
        members: &[Member],
        draining: &[Member],
        listed: &[Member],
    ) -> (BTreeMap<Member, Slot>, Vec<Member>) {
        let mut slots = BTreeMap::new();
        let mut absent: Vec<Member> = Vec::new();
        for name in members.iter().chain(draining) {
            let Some(s) = self.slots.get(name) else { continue };
            let standby = s.standby_passes.then(|| s.standby.clone());
            if !s.standby_passes && s.standby != *name {
                absent.push(s.standby.clone());
            }
            if s.active != *name || standby.is_some() {
                slots.insert(
                    name.clone(),
                    Slot {
                        active: s.active.clone(),
                        standby,
                    },
                );
            }
        }
        for name in self
            .registered
            .iter()
            .filter(|m| listed.binary_search(m).is_err())
        {
            match self.slots.get(name) {
                Some(s) => absent.extend([s.active.clone(), s.standby.clone()]),
                None => absent.push(name.clone()),
            }
        }
        absent.sort();
        absent.dedup();
        absent.truncate(MAX_MEMBERS.saturating_sub(listed.len()));
        (slots, absent)
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
    let slots = if old.slots == new.slots {
        String::new()
    } else {
        let placed: Vec<String> = new
            .slots
            .keys()
            .map(|name| new.placement(name).to_string())
            .collect();
        format!(", slots [{}]", placed.join(", "))
    };
    format!(
        "member list changed: version {}, {} -> {} members, {diff}{moved}{draining}{absent}{slots}; old [{}] new [{}]",
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

    const HOLD: Duration = Duration::from_secs(10);

    fn m(list: &[&str]) -> Vec<Member> {
        let mut v: Vec<Member> = list.iter().map(|s| Member::parse(s).unwrap()).collect();
        v.sort();
        v
    }

    /// Consul's answer: `passing` pass, `critical` are there and fail.
    fn consul(passing: &[&str], critical: &[&str]) -> Instances {
        let mut present = m(passing);
        present.extend(m(critical));
        present.sort();
        Instances {
            passing: m(passing),
            present,
            skipped: vec![],
        }
    }

    /// Everything passing.
    fn pass(passing: &[&str]) -> Instances {
        consul(passing, &[])
    }

    fn published(update: ListUpdate) -> MemberList {
        match update {
            ListUpdate::Publish { new, .. } => new,
            other => panic!("expected a new list, got {other:?}"),
        }
    }

    #[test]
    fn only_a_change_of_members_publishes() {
        let now = Instant::now();
        let mut v = PublishedList::new(vec![], HOLD);
        let ListUpdate::Publish { old: None, new } = v.observe(&pass(&["a:1", "b:1"]), now, 10) else {
            unreachable!()
        };
        assert_eq!((new.version, new.len()), (10, 2));
        // Same members (e.g. Consul's index moved for another service): nothing.
        assert_eq!(v.observe(&pass(&["a:1", "b:1"]), now, 20), ListUpdate::Unchanged);
        // One pushgateway out: published at once.
        let ListUpdate::Publish { old: Some(old), new } = v.observe(&pass(&["a:1"]), now, 20) else {
            unreachable!()
        };
        assert_eq!((old.version, new.version), (10, 20));
        // Nothing passing while Consul answers: the last one is probed first, and when it does
        // not answer, the empty list is published.
        let none = consul(&[], &["a:1", "b:1"]);
        assert_eq!(
            v.observe(&none, now, 21),
            ListUpdate::Probe { removed: m(&["a:1"]) }
        );
        let new = published(v.observe_probed(&none, &[], now, 21));
        assert!(new.is_empty());
        assert_eq!(new.version, 21);
        assert_eq!(v.published().map(|l| l.version), Some(21));
    }

    #[test]
    fn settling_holds_back_lists_missing_a_registered_pushgateway() {
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(5);
        let mut v = PublishedList::new(m(&["a:1", "b:1", "c:1"]), HOLD);
        v.settle_until(until);
        assert_eq!(v.observe(&pass(&[]), t0, 1), ListUpdate::Hold { until });
        assert_eq!(
            v.observe(&consul(&["a:1", "b:1"], &["c:1"]), t0, 1),
            ListUpdate::Hold { until }
        );
        // All registered ones pass (others may too): published at once.
        let new = published(v.observe(&pass(&["a:1", "b:1", "c:1", "x:1"]), t0, 2));
        assert_eq!(new.len(), 4);
        // Settling is over: a loss is published at once.
        published(v.observe(&consul(&["a:1", "b:1", "c:1"], &["x:1"]), t0, 3));

        // A pushgateway that really is down is published without it once the time is up.
        let mut v = PublishedList::new(m(&["a:1", "b:1"]), HOLD);
        v.settle_until(until);
        let down = consul(&["a:1"], &["b:1"]);
        assert!(matches!(v.observe(&down, t0, 1), ListUpdate::Hold { .. }));
        assert_eq!(published(v.observe(&down, until, 1)).members, m(&["a:1"]));
    }

    #[test]
    fn settling_waits_for_a_slots_active_not_only_its_standby() {
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(5);
        let a = Member::parse("a:1").unwrap();
        let state = |active_passes: bool| SlotState {
            active: a.clone(),
            standby: Member::parse("a2:1").unwrap(),
            standby_passes: true,
            active_passes,
        };
        let mut v = PublishedList::new(m(&["a:1", "b:1"]), HOLD);
        v.settle_until(until);
        // The standby's first check ran before its active's: the view lists the slot as passing.
        v.set_slots(BTreeMap::from([(a.clone(), state(false))]));
        assert_eq!(
            v.observe(&pass(&["a:1", "b:1"]), t0, 1),
            ListUpdate::Hold { until }
        );
        assert!(v.in_doubt(t0), "no promotion before the active's first check");
        v.set_slots(BTreeMap::from([(a.clone(), state(true))]));
        published(v.observe(&pass(&["a:1", "b:1"]), t0, 2));
        assert!(!v.in_doubt(t0));
    }

    #[test]
    fn a_consul_that_shows_none_of_the_registered_pushgateways_changes_nothing() {
        let t0 = Instant::now();
        let mut v = PublishedList::new(m(&["a:1", "b:1"]), HOLD);
        published(v.observe(&pass(&["a:1", "b:1", "x:1"]), t0, 1));
        // An agent that left the cluster, or a token without service:read: `[]`, or only
        // what others registered.
        assert_eq!(v.observe(&pass(&[]), t0, 2), ListUpdate::Missing);
        assert_eq!(v.observe(&pass(&["x:1"]), t0, 2), ListUpdate::Missing);
        assert_eq!(v.published().map(MemberList::len), Some(3));
        // Back, with its checks critical at first: one missing pushgateway is suspicious now.
        let back = consul(&["a:1", "x:1"], &["b:1"]);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            v.observe(&back, t1, 3),
            ListUpdate::Probe { removed: m(&["b:1"]) }
        );
        // It answers: held, nothing changes.
        assert_eq!(
            v.observe_probed(&back, &m(&["b:1"]), t1, 3),
            ListUpdate::Unchanged
        );
        assert_eq!(v.held(), 1);
        assert_eq!(v.next_deadline(), Some(t1 + HOLD));
        // Its check passes: no longer held.
        assert_eq!(
            v.observe(&pass(&["a:1", "b:1", "x:1"]), t1, 4),
            ListUpdate::Unchanged
        );
        assert_eq!(v.held(), 0);
        // Without registered pushgateways there is nothing to miss.
        let mut v = PublishedList::new(vec![], HOLD);
        published(v.observe(&pass(&["x:1"]), t0, 1));
        assert!(matches!(v.observe(&pass(&[]), t0, 2), ListUpdate::Probe { .. }));
    }

    #[test]
    fn two_removed_at_once_are_probed_and_those_that_answer_held_once() {
        let t0 = Instant::now();
        let mut v = PublishedList::new(m(&["a:1", "b:1", "c:1"]), HOLD);
        published(v.observe(&pass(&["a:1", "b:1", "c:1"]), t0, 1));
        // A restarted agent: every check critical at first.
        let restarted = consul(&["a:1"], &["b:1", "c:1"]);
        assert_eq!(
            v.observe(&restarted, t0, 2),
            ListUpdate::Probe {
                removed: m(&["b:1", "c:1"])
            }
        );
        // b answers, c is dead: c leaves at once, b stays.
        let new = published(v.observe_probed(&restarted, &m(&["b:1"]), t0, 2));
        assert_eq!(new.members, m(&["a:1", "b:1"]));
        // Within the hold, Consul's word on b changes nothing.
        let later = t0 + HOLD - Duration::from_millis(1);
        assert_eq!(v.observe(&restarted, later, 3), ListUpdate::Unchanged);
        // The hold runs out while b still fails: it leaves, and is not held again.
        let new = published(v.observe(&restarted, t0 + HOLD, 4));
        assert_eq!(new.members, m(&["a:1"]));
        assert_eq!(v.take_expired(), m(&["b:1"]));
        assert_eq!(v.held(), 0);
        // Once it passed again it may be held again.
        published(v.observe(&pass(&["a:1", "b:1", "c:1"]), t0 + HOLD, 5));
        assert!(matches!(
            v.observe(&restarted, t0 + HOLD, 6),
            ListUpdate::Probe { .. }
        ));
    }

    #[test]
    fn a_registered_pushgateway_gone_from_consul_is_probed_alone() {
        let t0 = Instant::now();
        let mut v = PublishedList::new(m(&["a:1", "b:1", "c:1"]), HOLD);
        published(v.observe(&pass(&["a:1", "b:1", "c:1"]), t0, 1));
        // Deregistered by hand: it will be registered again, so it is asked first.
        let gone = pass(&["a:1", "b:1"]);
        assert!(v.lacks_registered(&gone));
        assert_eq!(
            v.observe(&gone, t0, 2),
            ListUpdate::Probe { removed: m(&["c:1"]) }
        );
        // One that is there and fails leaves at once.
        let failing = consul(&["a:1", "b:1"], &["c:1"]);
        assert!(!v.lacks_registered(&failing));
        published(v.observe(&failing, t0, 3));
    }

    #[test]
    fn after_consul_came_back_even_one_removal_is_probed() {
        let t0 = Instant::now();
        let mut v = PublishedList::new(m(&["a:1", "b:1", "c:1"]), HOLD);
        published(v.observe(&pass(&["a:1", "b:1", "c:1"]), t0, 1));
        let one_down = consul(&["a:1", "b:1"], &["c:1"]);
        v.suspect_from(t0);
        assert_eq!(
            v.observe(&one_down, t0, 2),
            ListUpdate::Probe { removed: m(&["c:1"]) }
        );
        // Past the suspicion, one removal is believed at once.
        let mut v = PublishedList::new(m(&["a:1", "b:1", "c:1"]), HOLD);
        published(v.observe(&pass(&["a:1", "b:1", "c:1"]), t0, 1));
        v.suspect_from(t0);
        published(v.observe(&one_down, t0 + HOLD, 2));
    }

    #[test]
    fn a_republished_list_keeps_its_members_and_gets_a_higher_version() {
        let now = Instant::now();
        let mut v = PublishedList::new(vec![], HOLD);
        assert_eq!(v.republish(5), None, "nothing to republish before the first list");
        published(v.observe(&pass(&["a:1"]), now, 10));
        // Another writer's version 1000 was seen: the list goes out again above it.
        let again = v.republish(1001).unwrap();
        assert_eq!((again.version, again.members.clone()), (1001, m(&["a:1"])));
        assert_eq!(v.published(), Some(&again));
        // The next observation starts above it, whatever the clock says.
        assert_eq!(
            published(v.observe(&pass(&["a:1", "b:1"]), now, 20)).version,
            1002
        );
    }

    #[test]
    fn drained_pushgateways_leave_the_ring_but_stay_listed() {
        let now = Instant::now();
        let mut v = PublishedList::new(vec![], HOLD);
        published(v.observe(&pass(&["a:1", "b:1", "c:1"]), now, 1));
        v.set_drain(m(&["c:1", "z:1"]));
        let new = published(v.observe(&pass(&["a:1", "b:1", "c:1"]), now, 2));
        assert_eq!((new.members, new.draining), (m(&["a:1", "b:1"]), m(&["c:1"])));
        assert_eq!(
            v.observe(&pass(&["a:1", "b:1", "c:1"]), now, 3),
            ListUpdate::Unchanged
        );
        // A draining pushgateway that stops passing leaves the list altogether.
        let new = published(v.observe(&consul(&["a:1", "b:1"], &["c:1"]), now, 4));
        assert!(new.draining.is_empty());
        v.set_drain(vec![]);
        let new = published(v.observe(&pass(&["a:1", "b:1", "c:1"]), now, 5));
        assert_eq!(
            new.members.len(),
            3,
            "an undrained pushgateway is back in the ring"
        );
    }

    #[test]
    fn settling_after_a_reset_keeps_the_published_list() {
        let t0 = Instant::now();
        let mut v = PublishedList::new(m(&["a:1", "b:1"]), HOLD);
        published(v.observe(&pass(&["a:1", "b:1"]), t0, 1));
        v.settle_until(t0 + Duration::from_secs(5));
        // A Consul that forgot everything shows them critical: held, not published.
        let reset = consul(&[], &["a:1", "b:1"]);
        assert!(matches!(v.observe(&reset, t0, 2), ListUpdate::Hold { .. }));
        assert_eq!(v.published().map(MemberList::len), Some(2));
        assert_eq!(v.observe(&pass(&["a:1", "b:1"]), t0, 3), ListUpdate::Unchanged);
    }

    #[test]
    fn registered_pushgateways_that_do_not_pass_are_listed_absent() {
        let now = Instant::now();
        let mut v = PublishedList::new(m(&["a:1", "b:1", "c:1"]), HOLD);
        v.set_drain(m(&["c:1"]));
        let new = published(v.observe(&pass(&["a:1", "b:1", "c:1", "x:1"]), now, 1));
        assert!(new.absent.is_empty(), "{new:?}");
        // b dies: out of the ring, absent.
        let new = published(v.observe(&consul(&["a:1", "c:1", "x:1"], &["b:1"]), now, 2));
        assert_eq!(
            (new.members, new.draining, new.absent),
            (m(&["a:1", "x:1"]), m(&["c:1"]), m(&["b:1"]))
        );
        // The draining one dies too: absent as well, still holding what it held.
        let new = published(v.observe(&consul(&["a:1", "x:1"], &["b:1", "c:1"]), now, 3));
        assert_eq!((new.draining, new.absent), (vec![], m(&["b:1", "c:1"])));
        // An unregistered one that stops passing is simply gone.
        let new = published(v.observe(&consul(&["a:1"], &["b:1", "c:1"]), now, 4));
        assert_eq!((new.members, new.absent), (m(&["a:1"]), m(&["b:1", "c:1"])));
        assert_eq!(
            v.observe(&consul(&["a:1"], &["b:1", "c:1"]), now, 5),
            ListUpdate::Unchanged
        );
    }

    #[test]
    fn a_held_pushgateway_is_in_the_ring_not_absent() {
        let now = Instant::now();
        let mut v = PublishedList::new(m(&["a:1", "b:1", "c:1"]), HOLD);
        published(v.observe(&pass(&["a:1", "b:1", "c:1"]), now, 1));
        let critical = consul(&["a:1"], &["b:1", "c:1"]);
        assert!(matches!(v.observe(&critical, now, 2), ListUpdate::Probe { .. }));
        // b answered its probe, c did not: b stays a member, only c is absent.
        let new = published(v.observe_probed(&critical, &m(&["b:1"]), now, 3));
        assert_eq!((new.members, new.absent), (m(&["a:1", "b:1"]), m(&["c:1"])));
    }

    #[test]
    fn slots_carry_their_active_and_a_passing_standby_only() {
        let now = Instant::now();
        let state = |active: &str, standby: &str, passes: bool| SlotState {
            active: Member::parse(active).unwrap(),
            standby: Member::parse(standby).unwrap(),
            standby_passes: passes,
            active_passes: true,
        };
        let mut v = PublishedList::new(m(&["a:1", "b:1", "c:1"]), HOLD);
        v.set_slots(BTreeMap::from([
            (Member::parse("a:1").unwrap(), state("a:1", "a2:1", true)),
            (Member::parse("b:1").unwrap(), state("b:1", "b2:1", false)),
        ]));
        let new = published(v.observe(&pass(&["a:1", "b:1", "c:1"]), now, 1));
        let a = Member::parse("a:1").unwrap();
        assert_eq!(new.placement(&a).standby.map(Member::as_str), Some("a2:1"));
        assert!(!new.slots.contains_key(&Member::parse("b:1").unwrap()));
        assert_eq!(
            new.absent,
            m(&["b2:1"]),
            "a DELETE leaves a tombstone for the down standby"
        );
        // Promoted: same ring, a served at a2, its former active down (it is a's name: not absent).
        v.set_slots(BTreeMap::from([(a.clone(), state("a2:1", "a:1", false))]));
        let promoted = published(v.observe(&pass(&["a:1", "b:1", "c:1"]), now, 2));
        assert_eq!(promoted.members, new.members, "no group changes owner");
        assert_eq!(promoted.placement(&a).active.as_str(), "a2:1");
        assert_eq!(promoted.placement(&a).standby, None);
        assert!(promoted.absent.is_empty());
        let wire = serde_json::to_vec(&promoted).unwrap();
        assert_eq!(
            MemberList::from_json(&wire).unwrap(),
            promoted,
            "the filter takes it"
        );
        // The former active is back: it is the standby.
        v.set_slots(BTreeMap::from([(a.clone(), state("a2:1", "a:1", true))]));
        let back = published(v.observe(&pass(&["a:1", "b:1", "c:1"]), now, 3));
        assert_eq!(back.placement(&a).standby.map(Member::as_str), Some("a:1"));
        // The whole slot down: both of its addresses are absent.
        let down = published(v.observe(&consul(&["b:1", "c:1"], &["a:1"]), now, 4));
        assert_eq!(
            (down.members, down.absent),
            (m(&["b:1", "c:1"]), m(&["a2:1", "a:1"]))
        );
    }

    #[test]
    fn no_registered_servers_means_no_settling() {
        let mut v = PublishedList::new(vec![], HOLD);
        v.settle_until(Instant::now() + Duration::from_secs(60));
        published(v.observe(&pass(&[]), Instant::now(), 1));
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
