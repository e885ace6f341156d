//! Roles: which address of each slot with a standby is active, when a standby is promoted, and
//! what Consul's two services (the actives' and the standbys') say about each slot. Pure: the
//! watcher reads and writes the roles in Consul KV and feeds the answers in.
//!
//! A slot is a configured server: its name is what the ring hashes, and it never changes. With
//! `pushgateway.standbys` it has two addresses, the server and its standby; the roles say which
//! one is active. With no entry, the server (the slot's name) is active. The lease holder
//! promotes a slot's standby when the active fails its check and the standby passes; nothing
//! promotes back: a former active that returns stays the standby.

use crate::consul::Instances;
use dynamic_sharding::members::Member;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The roles as kept in Consul KV: each slot's active address where it is not the slot's name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roles(BTreeMap<Member, Member>);

#[derive(Serialize, Deserialize)]
struct WireRoles {
    /// Slot name -> its active address.
    active: BTreeMap<String, String>,
}

impl Roles {
    /// Decodes the KV value `{"active": {"<slot>": "<address>"}}`.
    pub fn decode(bytes: &[u8]) -> Result<Roles, String> {
        let wire: WireRoles = serde_json::from_slice(bytes)
            .map_err(|e| format!(r#"expected {{"active": {{"<slot>": "<host:port>"}}}}: {e}"#))?;
        let mut out = BTreeMap::new();
        for (slot, active) in wire.active {
            let name = Member::parse(&slot).map_err(|e| format!("active[{slot:?}]: {e}"))?;
            let addr = Member::parse(&active).map_err(|e| format!("active[{slot:?}]: {e}"))?;
            if name != addr {
                out.insert(name, addr);
            }
        }
        Ok(Roles(out))
    }

    pub fn encode(&self) -> Vec<u8> {
        let wire = WireRoles {
            active: self
                .0
                .iter()
                .map(|(s, a)| (s.to_string(), a.to_string()))
                .collect(),
        };
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Refuses `standbys` (a configuration's) when it changes or removes the standby of a slot
    /// served at its promoted standby while the slot stays in `configured` (its servers and
    /// drain): the slot would be served at its name again, which failed its check when the
    /// standby was promoted, and the groups the promoted one holds would leave the ring. A slot
    /// taken out of the configuration altogether takes its standby with it, as a server taken
    /// out does. Names each such slot and what is accepted.
    pub fn check_standbys(
        &self,
        standbys: &BTreeMap<Member, Member>,
        configured: &[Member],
    ) -> Result<(), String> {
        let broken: Vec<String> = self
            .0
            .iter()
            .filter(|(slot, active)| configured.contains(slot) && standbys.get(*slot) != Some(*active))
            .map(|(slot, active)| format!("'{slot}': '{active}'"))
            .collect();
        if broken.is_empty() {
            return Ok(());
        }
        Err(format!(
            "pushgateway.standbys must keep {}: each of these slots is served by its promoted standby, \
             and changing or removing that standby would make the slot's server active again (it failed \
             its check when the standby was promoted) and drop the groups the standby holds; a slot \
             keeps its two addresses, whichever of them is active; to retire such a slot, add its server \
             to pushgateway.drain with this entry kept, and once it is drained take the server out of \
             pushgateway.servers, pushgateway.drain and pushgateway.standbys in one reload",
            broken.join(", ")
        ))
    }

    /// The roles with `slot` served at `active`.
    pub fn with_active(&self, slot: &Member, active: &Member) -> Roles {
        let mut out = self.0.clone();
        if slot == active {
            out.remove(slot);
        } else {
            out.insert(slot.clone(), active.clone());
        }
        Roles(out)
    }
}

/// One slot with a standby, as the roles place it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotRoles {
    pub active: Member,
    pub standby: Member,
}

/// Which service an address is registered under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Active,
    Standby,
}

/// What the list needs of one slot with a standby.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotState {
    pub active: Member,
    pub standby: Member,
    /// The standby passes its check: only then is it published as the slot's standby.
    pub standby_passes: bool,
    /// The active passes its check. A slot whose standby alone passes is kept in the ring, but
    /// it has not settled: its active may be one whose first check has not run yet.
    pub active_passes: bool,
}

/// Every slot with a configured standby, by name, placed by the roles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotTable(BTreeMap<Member, SlotRoles>);

impl SlotTable {
    /// `standbys`: server -> standby (the configuration). A role naming an address that is neither
    /// the slot's name nor its configured standby (the standby was changed in the file) is
    /// ignored: the slot is served at its name.
    pub fn new(standbys: &BTreeMap<Member, Member>, roles: &Roles) -> SlotTable {
        SlotTable(
            standbys
                .iter()
                .map(|(name, standby)| {
                    let slot = match roles.0.get(name) {
                        Some(a) if a == standby => SlotRoles {
                            active: standby.clone(),
                            standby: name.clone(),
                        },
                        _ => SlotRoles {
                            active: name.clone(),
                            standby: standby.clone(),
                        },
                    };
                    (name.clone(), slot)
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, name: &Member) -> Option<&SlotRoles> {
        self.0.get(name)
    }

    /// The service `address` is to be registered under: the standbys' only while it stands by.
    pub fn role(&self, address: &Member) -> Role {
        if self.0.values().any(|s| s.standby == *address) {
            Role::Standby
        } else {
            Role::Active
        }
    }

    /// Where the slot named `name` is served now: its active (its name without a standby).
    pub fn active<'a>(&'a self, name: &'a Member) -> &'a Member {
        self.0.get(name).map_or(name, |s| &s.active)
    }

    /// The slot that `address` serves, by name.
    fn slot_of(&self, address: &Member) -> Option<&Member> {
        self.0
            .iter()
            .find(|(_, s)| s.active == *address || s.standby == *address)
            .map(|(n, _)| n)
    }

    /// The slots to promote (name, its new active): those whose active does not pass while their
    /// standby does. `passing`: every address passing in either service, sorted.
    pub fn promotions(&self, passing: &[Member]) -> Vec<(Member, Member)> {
        let passes = |m: &Member| passing.binary_search(m).is_ok();
        self.0
            .iter()
            .filter(|(_, s)| !passes(&s.active) && passes(&s.standby))
            .map(|(n, s)| (n.clone(), s.standby.clone()))
            .collect()
    }

    /// How many slots have an active that does not pass (whether or not their standby does).
    /// `passing`: every address passing in either service, sorted.
    pub fn failing(&self, passing: &[Member]) -> usize {
        self.0
            .values()
            .filter(|s| passing.binary_search(&s.active).is_err())
            .count()
    }

    /// What Consul says, by slot: the actives' service (`actives`) and the standbys'
    /// (`standbys`) merged, each slot with a standby listed under its name, passing when its
    /// active passes, or when only its standby does (the lease holder is promoting it: the slot
    /// stays in the ring meanwhile, so no group changes owner). Addresses of such slots never
    /// appear by themselves; any other instance of the actives' service is taken as it is.
    /// Also each such slot's state for the list.
    pub fn view(
        &self,
        actives: &Instances,
        standbys: &Instances,
    ) -> (Instances, BTreeMap<Member, SlotState>) {
        let merged = |a: &[Member], b: &[Member]| {
            let mut v: Vec<Member> = a.iter().chain(b).cloned().collect();
            v.sort();
            v.dedup();
            v
        };
        let passing = merged(&actives.passing, &standbys.passing);
        let present = merged(&actives.present, &standbys.present);
        let has = |v: &[Member], m: &Member| v.binary_search(m).is_ok();
        let mut out = Instances {
            passing: Vec::new(),
            present: Vec::new(),
            skipped: actives.skipped.clone(),
        };
        for m in &actives.passing {
            if self.slot_of(m).is_none() {
                out.passing.push(m.clone());
            }
        }
        for m in &actives.present {
            if self.slot_of(m).is_none() {
                out.present.push(m.clone());
            }
        }
        let mut states = BTreeMap::new();
        for (name, s) in &self.0 {
            let standby_passes = has(&passing, &s.standby);
            let active_passes = has(&passing, &s.active);
            if active_passes || standby_passes {
                out.passing.push(name.clone());
            }
            if has(&present, &s.active) || has(&present, &s.standby) {
                out.present.push(name.clone());
            }
            states.insert(
                name.clone(),
                SlotState {
                    active: s.active.clone(),
                    standby: s.standby.clone(),
                    standby_passes,
                    active_passes,
                },
            );
        }
        for v in [&mut out.passing, &mut out.present] {
            v.sort();
            v.dedup();
        }
        (out, states)
    }
}

/// Every address passing in either service, sorted.
pub fn passing_anywhere(actives: &Instances, standbys: &Instances) -> Vec<Member> {
    let mut v: Vec<Member> = actives.passing.iter().chain(&standbys.passing).cloned().collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Member {
        Member::parse(s).unwrap()
    }

    #[test]
    fn a_promoted_slots_standby_may_not_change() {
        let promoted = Roles::default().with_active(&m("a:1"), &m("s:1"));
        let keeps = BTreeMap::from([(m("a:1"), m("s:1")), (m("b:1"), m("t:1"))]);
        let configured = [m("a:1"), m("b:1")];
        assert_eq!(promoted.check_standbys(&keeps, &configured), Ok(()));
        for changed in [BTreeMap::from([(m("a:1"), m("u:1"))]), BTreeMap::new()] {
            let err = promoted.check_standbys(&changed, &configured).unwrap_err();
            assert!(
                err.contains("must keep 'a:1': 's:1'") && err.contains("to retire such a slot"),
                "{err}"
            );
        }
        // The slot taken out of servers and drain: its standby goes with it.
        assert_eq!(promoted.check_standbys(&BTreeMap::new(), &[m("b:1")]), Ok(()));
        // Nothing promoted: any standbys do.
        assert_eq!(
            Roles::default().check_standbys(&BTreeMap::new(), &configured),
            Ok(())
        );
    }

    fn ms(list: &[&str]) -> Vec<Member> {
        let mut v: Vec<Member> = list.iter().map(|s| m(s)).collect();
        v.sort();
        v
    }

    fn inst(passing: &[&str], critical: &[&str]) -> Instances {
        let mut present = ms(passing);
        present.extend(ms(critical));
        present.sort();
        Instances {
            passing: ms(passing),
            present,
            skipped: vec![],
        }
    }

    fn standbys() -> BTreeMap<Member, Member> {
        BTreeMap::from([(m("a:1"), m("a2:1")), (m("b:1"), m("b2:1"))])
    }

    #[test]
    fn roles_round_trip_and_drop_what_says_nothing() {
        let r = Roles::default().with_active(&m("a:1"), &m("a2:1"));
        let back = Roles::decode(&r.encode()).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            String::from_utf8(r.encode()).unwrap(),
            r#"{"active":{"a:1":"a2:1"}}"#
        );
        assert_eq!(r.with_active(&m("a:1"), &m("a:1")), Roles::default());
        assert_eq!(
            Roles::decode(br#"{"active": {"a:1": "a:1"}}"#).unwrap(),
            Roles::default()
        );
        let e = Roles::decode(b"[]").unwrap_err();
        assert!(e.contains(r#"expected {"active""#), "{e}");
        assert!(Roles::decode(br#"{"active": {"a:1": "x"}}"#)
            .unwrap_err()
            .contains("active[\"a:1\"]"));
    }

    #[test]
    fn the_configured_server_is_active_until_the_roles_say_otherwise() {
        let t = SlotTable::new(&standbys(), &Roles::default());
        assert_eq!(t.active(&m("a:1")), &m("a:1"));
        assert_eq!(t.role(&m("a2:1")), Role::Standby);
        assert_eq!(t.role(&m("a:1")), Role::Active);
        assert_eq!(t.active(&m("c:1")), &m("c:1"), "a slot without a standby");
        let promoted = Roles::default().with_active(&m("a:1"), &m("a2:1"));
        let t = SlotTable::new(&standbys(), &promoted);
        assert_eq!(t.active(&m("a:1")), &m("a2:1"));
        assert_eq!(
            (t.role(&m("a:1")), t.role(&m("a2:1"))),
            (Role::Standby, Role::Active)
        );
        // A role for a standby no longer configured is ignored.
        let stale = Roles::default().with_active(&m("a:1"), &m("old:1"));
        assert_eq!(SlotTable::new(&standbys(), &stale).active(&m("a:1")), &m("a:1"));
    }

    #[test]
    fn a_failed_active_with_a_passing_standby_is_promoted_and_never_back_by_itself() {
        let t = SlotTable::new(&standbys(), &Roles::default());
        assert!(t.promotions(&ms(&["a:1", "a2:1", "b:1", "b2:1"])).is_empty());
        assert_eq!(
            t.promotions(&ms(&["a2:1", "b:1", "b2:1"])),
            [(m("a:1"), m("a2:1"))]
        );
        assert!(
            t.promotions(&ms(&["b:1"])).is_empty(),
            "both down: nothing to promote to"
        );
        let promoted = SlotTable::new(&standbys(), &Roles::default().with_active(&m("a:1"), &m("a2:1")));
        // The former active returns: it stays the standby.
        assert!(promoted.promotions(&ms(&["a:1", "a2:1", "b:1"])).is_empty());
        // The promoted one fails in turn while the former active passes: promoted again.
        assert_eq!(promoted.promotions(&ms(&["a:1", "b:1"])), [(m("a:1"), m("a:1"))]);
    }

    #[test]
    fn a_slot_fails_while_its_active_does_not_pass_whatever_its_standby() {
        let t = SlotTable::new(&standbys(), &Roles::default());
        assert_eq!(t.failing(&ms(&["a:1", "a2:1", "b:1", "b2:1"])), 0);
        assert_eq!(t.failing(&ms(&["a2:1", "b:1"])), 1, "a's standby could take over");
        assert_eq!(t.failing(&ms(&["b2:1"])), 2, "a's standby is down too");
        // Once promoted, the slot's active is the former standby.
        let promoted = SlotTable::new(&standbys(), &Roles::default().with_active(&m("a:1"), &m("a2:1")));
        assert_eq!(promoted.failing(&ms(&["a2:1", "b:1"])), 0);
    }

    #[test]
    fn the_view_lists_slots_by_name_and_keeps_a_promotable_slot() {
        let t = SlotTable::new(&standbys(), &Roles::default());
        // a's active is dead, its standby passes; b's standby is down; x is someone else's.
        let actives = inst(&["b:1", "x:1"], &["a:1"]);
        let standby_service = inst(&["a2:1"], &["b2:1"]);
        let (view, states) = t.view(&actives, &standby_service);
        assert_eq!(view.passing, ms(&["a:1", "b:1", "x:1"]));
        assert_eq!(view.present, ms(&["a:1", "b:1", "x:1"]));
        assert_eq!(
            states[&m("b:1")],
            SlotState {
                active: m("b:1"),
                standby: m("b2:1"),
                standby_passes: false,
                active_passes: true,
            }
        );
        assert!(states[&m("a:1")].standby_passes);
        assert!(!states[&m("a:1")].active_passes);
        // Promoted: a2 is a's active even while it is still registered as a standby, and the
        // former active registered under the actives' service is not a member of its own.
        let t = SlotTable::new(&standbys(), &Roles::default().with_active(&m("a:1"), &m("a2:1")));
        let (view, states) = t.view(&inst(&["b:1", "a:1"], &[]), &inst(&["a2:1"], &[]));
        assert_eq!(view.passing, ms(&["a:1", "b:1"]));
        assert_eq!(states[&m("a:1")].active, m("a2:1"));
        // Both of a slot down: out.
        let (view, _) = t.view(&inst(&["b:1"], &["a:1"]), &inst(&[], &["a2:1"]));
        assert_eq!((view.passing, view.present), (ms(&["b:1"]), ms(&["a:1", "b:1"])));
    }
}
