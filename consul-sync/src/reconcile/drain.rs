//! The drains in progress: when each started, when its deadline passes, and when it is done.

use crate::status::{DrainState, DrainStatus};
use dynamic_sharding::members::Member;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The drains in progress: when each started, and which are done.
#[derive(Clone, Debug, Default)]
pub struct DrainTracker {
    entries: BTreeMap<Member, DrainStatus>,
}

impl DrainTracker {
    /// Follows the draining list: new ones start now, gone ones are forgotten (returned).
    pub fn follow(&mut self, draining: &[Member], now: f64, timeout: Duration) -> Vec<Member> {
        let gone: Vec<Member> = self
            .entries
            .keys()
            .filter(|m| !draining.contains(m))
            .cloned()
            .collect();
        for m in &gone {
            self.entries.remove(m);
        }
        for m in draining {
            let entry = self.entries.entry(m.clone()).or_insert_with(|| DrainStatus {
                pushgateway: m.to_string(),
                state: DrainState::Draining,
                since: now,
                deadline: now + timeout.as_secs_f64(),
                groups: None,
            });
            // A changed drain_timeout applies to drains under way.
            entry.deadline = entry.since + timeout.as_secs_f64();
        }
        gone
    }

    /// The draining pushgateways whose deadline has passed.
    pub fn expired(&self, now: f64) -> BTreeSet<Member> {
        self.entries
            .iter()
            .filter(|(_, s)| s.state == DrainState::Draining && now >= s.deadline)
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// Records how many groups `member` holds; returns its new state when it changed.
    pub fn observe(&mut self, member: &Member, groups: usize) -> Option<DrainState> {
        let entry = self.entries.get_mut(member)?;
        entry.groups = Some(groups);
        let state = if groups == 0 {
            DrainState::Drained
        } else {
            DrainState::Draining
        };
        (entry.state != state).then(|| {
            entry.state = state;
            state
        })
    }

    pub fn statuses(&self) -> Vec<DrainStatus> {
        self.entries.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Member {
        Member::parse(s).unwrap()
    }

    #[test]
    fn drains_start_once_expire_and_finish() {
        let mut t = DrainTracker::default();
        let d = m("d:1");
        assert!(t
            .follow(std::slice::from_ref(&d), 100.0, Duration::from_secs(60))
            .is_empty());
        t.follow(std::slice::from_ref(&d), 130.0, Duration::from_secs(60));
        assert_eq!(t.statuses()[0].since, 100.0, "a drain starts when first seen");
        assert!(t.expired(159.0).is_empty());
        assert_eq!(t.expired(160.0), BTreeSet::from([d.clone()]));
        assert_eq!(t.observe(&d, 3), None);
        assert_eq!(t.observe(&d, 0), Some(DrainState::Drained));
        assert!(t.expired(1000.0).is_empty(), "a drained one has nothing to move");
        assert_eq!(t.observe(&d, 1), Some(DrainState::Draining));
        assert_eq!(t.follow(&[], 200.0, Duration::from_secs(60)), vec![d]);
        assert!(t.statuses().is_empty());
    }
}
