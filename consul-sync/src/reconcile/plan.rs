//! The plan of one reconcile round (pure, tested directly): which copies to delete, which groups
//! to move at a drain deadline, from what every readable pushgateway holds.
//!
//! The rule is over slots: a slot holds what its active holds, and a group belongs to the active
//! of its owner slot ([`Owners`]). A standby's copies are its slot's replica, not copies in this
//! sense: they are kept equal to the active's by [`repair`](super::repair), never planned here.
//!
//! - A group with more than one copy keeps the one with the newest metrics (then the later failed
//!   push); every other copy is deleted if the kept one covers it ([`Stamps::covered_by`]). A copy
//!   that recorded a failed push after the kept copy's activity stays beside it: the failure is
//!   news alerts read, and the kept copy holds the last metrics that were acknowledged, so neither
//!   may go (both stay until the job pushes again). Equal stamps keep the owner's copy, else the
//!   copy on the member that sorts first, so two consul-syncs agree.
//! - A delete whose order the pushgateways' clocks could reverse (a skew seen in their `Date`
//!   headers, [`clock`](super::clock)) is not planned: both copies stay until the group is pushed
//!   again.
//! - A group whose only copy sits on a non-owner stays there (one copy, its true push time) until
//!   its job pushes again; that push goes to the owner and makes the old copy the older one.
//! - A draining pushgateway past its deadline: its newest copies move to their owners, but only
//!   in a round that read every holder: a copy on an unreadable one may be newer.
//! - A planned delete is made only if a second read still shows what was planned ([`still_valid`]).

use super::clock::{order_holds, Clocks};
use super::exposition::Stamps;
use dynamic_sharding::grouping_key::GroupingKey;
use dynamic_sharding::members::{Member, MemberList};
use dynamic_sharding::ring::Ring;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The groups one pushgateway holds and when each last changed there.
pub type Holdings = HashMap<GroupingKey, Stamps>;

/// Where the ring puts each group: the active address of its owner slot.
pub struct Owners<'l> {
    ring: Ring,
    list: &'l MemberList,
}

impl<'l> Owners<'l> {
    pub fn new(list: &'l MemberList, vnodes: u32) -> Owners<'l> {
        Owners {
            ring: Ring::new(&list.members, vnodes),
            list,
        }
    }

    /// The address that holds `key` when all is in place.
    pub fn of(&self, key: &GroupingKey) -> Option<&Member> {
        let slot = self.ring.owner(key.hash())?;
        Some(self.list.placement(slot).active)
    }
}

/// Takes the standbys' holdings out of `holdings` (read by address) and returns them: what is left
/// is what each slot's active holds, the input of [`plan`].
pub fn split_standbys(
    list: &MemberList,
    holdings: &mut BTreeMap<Member, Holdings>,
) -> BTreeMap<Member, Holdings> {
    list.holders()
        .filter_map(|slot| list.placement(slot).standby)
        .filter_map(|standby| holdings.remove_entry(standby))
        .collect()
}

/// A copy to delete, with what was read when it was planned.
#[derive(Clone, Debug, PartialEq)]
pub struct Delete {
    pub holder: Member,
    pub key: GroupingKey,
    pub copy: Stamps,
    /// Where the newest copy is kept, and its stamps; with no stamps, `keeper` is the active of
    /// the slot whose standby `holder` is, and must still not hold the group.
    pub keeper: Member,
    pub kept: Option<Stamps>,
}

/// A group to copy from one pushgateway to another, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Move {
    pub from: Member,
    pub to: Member,
    pub key: GroupingKey,
    pub copy: Stamps,
    pub kind: MoveKind,
    /// For a [`MoveKind::Replace`], the destination's copy it replaces: the copy is made only if
    /// that is still what the destination holds.
    pub replaces: Option<Stamps>,
}

/// Why a group is copied, which decides what happens to the source's copy and how much older
/// the destination's copy must be to be replaced ([`lead`](super::repair::lead)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveKind {
    /// From a draining slot's active past its deadline to the group's owner; the source's copy
    /// goes after.
    Drain,
    /// From a slot's active to its standby; the active keeps its copy.
    Repair,
    /// A repair again, of a group pushed while its last repair copy was being made: that push may
    /// have reached the standby before the copy, which then overwrote it with the older content.
    Recopy,
    /// A repair over a standby copy newer than the active's that is no write on its way to the
    /// active: one stamped well before the active was read (a former active's late write).
    Replace,
}

impl MoveKind {
    /// True for a copy to a standby (the source keeps its copy).
    pub fn is_repair(self) -> bool {
        self != MoveKind::Drain
    }
}

/// What one round will do, and what it saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoundPlan {
    pub deletes: Vec<Delete>,
    pub moves: Vec<Move>,
    /// Distinct groups over all pushgateways read.
    pub groups: usize,
    /// Groups with more than one copy.
    pub duplicates: usize,
    /// Those groups, to tell the ones that last from one round to the next.
    pub duplicated: Vec<GroupingKey>,
    /// Groups whose newest copy is not on their owner.
    pub misplaced: usize,
    /// Moves not planned because a holder could not be read this round.
    pub held_moves: usize,
    /// Deletes and moves not planned because the clocks could reverse the order they rest on.
    pub clock_refusals: Vec<Delete>,
    /// Copies kept beside the kept one because they recorded a later failed push.
    pub kept_failures: usize,
}

/// Plans a round over what each readable slot's active holds (by address). `expired` are the
/// actives of draining slots past their deadline; `all_read` says whether every active was read;
/// `clocks` bound how far each pushgateway's clock is from ours.
pub fn plan(
    holdings: &BTreeMap<Member, Holdings>,
    owners: &Owners,
    expired: &BTreeSet<Member>,
    all_read: bool,
    clocks: &Clocks,
) -> RoundPlan {
    let mut copies: HashMap<&GroupingKey, Vec<(&Member, Stamps)>> = HashMap::new();
    for (holder, groups) in holdings {
        for (key, stamps) in groups {
            copies.entry(key).or_default().push((holder, *stamps));
        }
    }
    let mut out = RoundPlan {
        groups: copies.len(),
        ..RoundPlan::default()
    };
    for (key, mut list) in copies {
        let owner = owners.of(key);
        // Newest first; among equal times the owner, then the member that sorts first.
        list.sort_by(|a, b| {
            b.1.cmp_holding(&a.1)
                .then_with(|| (Some(b.0) == owner).cmp(&(Some(a.0) == owner)))
                .then_with(|| a.0.cmp(b.0))
        });
        let (keeper, kept) = list[0];
        if list.len() > 1 {
            out.duplicates += 1;
            out.duplicated.push(key.clone());
        }
        if owner.is_some_and(|o| o != keeper) {
            out.misplaced += 1;
        }
        let mut moving_to = match owner {
            Some(o) if o != keeper && expired.contains(keeper) => Some(o),
            _ => None,
        };
        if moving_to.is_some() && !all_read {
            out.held_moves += 1;
            moving_to = None;
        }
        if let Some(to) = moving_to {
            // The move replaces the owner's older copy: that order must hold too.
            let replaced = list.iter().find(|(m, _)| *m == to);
            match replaced {
                // A failure alone on the owner is carried over by the move, not replaced.
                Some((_, o)) if o.push > 0.0 && !order_holds(clocks, keeper, kept.push, to, o.push) => {
                    out.clock_refusals.push(Delete {
                        holder: to.clone(),
                        key: key.clone(),
                        copy: *o,
                        keeper: keeper.clone(),
                        kept: Some(kept),
                    });
                    moving_to = None;
                }
                _ => out.moves.push(Move {
                    from: keeper.clone(),
                    to: to.clone(),
                    key: key.clone(),
                    copy: kept,
                    kind: MoveKind::Drain,
                    replaces: None,
                }),
            }
        }
        for (holder, copy) in &list[1..] {
            // The copy moved to the owner replaces the owner's older one: deleting that one
            // could delete the moved copy.
            if moving_to == Some(*holder) {
                continue;
            }
            if !copy.covered_by(&kept) {
                out.kept_failures += 1;
                continue;
            }
            let delete = Delete {
                holder: (*holder).clone(),
                key: key.clone(),
                copy: *copy,
                keeper: keeper.clone(),
                kept: Some(kept),
            };
            if order_holds(clocks, keeper, kept.latest(), holder, copy.latest()) {
                out.deletes.push(delete);
            } else {
                out.clock_refusals.push(delete);
            }
        }
    }
    let by_holder = |a: &Delete, b: &Delete| (&a.holder, a.key.labels()).cmp(&(&b.holder, b.key.labels()));
    out.deletes.sort_by(by_holder);
    out.clock_refusals.sort_by(by_holder);
    out.moves
        .sort_by(|a, b| (&a.from, &a.key.labels()).cmp(&(&b.from, &b.key.labels())));
    out.duplicated.sort_by(|a, b| a.labels().cmp(b.labels()));
    out
}

/// True when a planned delete still holds after the holder was read again (`holder`) and the
/// keeper was read (`kept`): the copy is unchanged (no push, no failed push arrived meanwhile) and
/// the keeper still covers all it held when planned, or, for a standby's extra copy, the keeper
/// (its active) was read and still does not hold the group.
pub fn still_valid(d: &Delete, holder: &Holdings, kept: &BTreeMap<Member, Holdings>) -> bool {
    let copy = holder.get(&d.key);
    let keeper = kept.get(&d.keeper);
    copy == Some(&d.copy)
        && match d.kept {
            Some(planned) => keeper
                .and_then(|h| h.get(&d.key))
                .is_some_and(|k| planned.covered_by(k)),
            None => keeper.is_some_and(|h| !h.contains_key(&d.key)),
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Member {
        Member::parse(s).unwrap()
    }

    fn k(path: &str) -> GroupingKey {
        GroupingKey::from_path(path).unwrap()
    }

    fn pushed(push: f64) -> Stamps {
        Stamps { push, failure: 0.0 }
    }

    fn holdings(entries: &[(&str, &[(&str, f64)])]) -> BTreeMap<Member, Holdings> {
        entries
            .iter()
            .map(|(member, groups)| {
                (
                    m(member),
                    groups.iter().map(|(p, t)| (k(p), pushed(*t))).collect(),
                )
            })
            .collect()
    }

    /// Plans with every holder read and no clock skew seen.
    fn plan_read(h: &BTreeMap<Member, Holdings>, owners: &Owners, expired: &BTreeSet<Member>) -> RoundPlan {
        plan(h, owners, expired, true, &Clocks::default())
    }

    /// A list of slots served at their names, without standbys.
    fn list(members: &[&str]) -> MemberList {
        MemberList::new(1, members).unwrap()
    }

    /// A path whose group belongs to the address `owner`.
    fn owned_by(owners: &Owners, owner: &str, tag: &str) -> String {
        (0..10_000)
            .map(|i| format!("/metrics/job/{tag}/i/{i}"))
            .find(|p| owners.of(&k(p)) == Some(&m(owner)))
            .unwrap()
    }

    #[test]
    fn the_newest_copy_is_kept_wherever_it_is() {
        let list = list(&["a:1", "b:1"]);
        let ring = Owners::new(&list, 50);
        let g = owned_by(&ring, "a:1", "g");
        // The owner's copy is the older one: it goes, the newer copy on b stays.
        let h = holdings(&[("a:1", &[(&g, 10.0)]), ("b:1", &[(&g, 20.0)])]);
        let p = plan_read(&h, &ring, &BTreeSet::new());
        assert_eq!(
            p.deletes,
            vec![Delete {
                holder: m("a:1"),
                key: k(&g),
                copy: pushed(10.0),
                keeper: m("b:1"),
                kept: Some(pushed(20.0))
            }]
        );
        assert_eq!((p.groups, p.duplicates, p.misplaced), (1, 1, 1));
        // Then the job pushes again (to its owner): b's copy is now the older one.
        let h = holdings(&[("a:1", &[(&g, 30.0)]), ("b:1", &[(&g, 20.0)])]);
        let p = plan_read(&h, &ring, &BTreeSet::new());
        assert_eq!(p.deletes.len(), 1);
        assert_eq!((p.deletes[0].holder.as_str(), p.misplaced), ("b:1", 0));
    }

    #[test]
    fn a_single_copy_on_a_non_owner_stays() {
        let list = list(&["a:1", "b:1"]);
        let ring = Owners::new(&list, 50);
        let g = owned_by(&ring, "a:1", "g");
        let h = holdings(&[("a:1", &[]), ("b:1", &[(&g, 20.0)])]);
        let p = plan_read(&h, &ring, &BTreeSet::new());
        assert!(p.deletes.is_empty() && p.moves.is_empty());
        assert_eq!((p.groups, p.duplicates, p.misplaced), (1, 0, 1));
    }

    #[test]
    fn ties_keep_the_owner_then_the_first_member() {
        let list = list(&["a:1", "b:1", "c:1"]);
        let ring = Owners::new(&list, 50);
        let g = owned_by(&ring, "b:1", "g");
        let h = holdings(&[
            ("a:1", &[(&g, 5.0)]),
            ("b:1", &[(&g, 5.0)]),
            ("c:1", &[(&g, 5.0)]),
        ]);
        let p = plan_read(&h, &ring, &BTreeSet::new());
        let deleted: Vec<&str> = p.deletes.iter().map(|d| d.holder.as_str()).collect();
        assert_eq!(deleted, ["a:1", "c:1"]);
        // Without the owner among the copies, the first member wins.
        let h = holdings(&[("a:1", &[(&g, 5.0)]), ("c:1", &[(&g, 5.0)])]);
        let p = plan_read(&h, &ring, &BTreeSet::new());
        assert_eq!(p.deletes[0].holder.as_str(), "c:1");
    }

    #[test]
    fn expired_drains_move_their_newest_copies_to_the_owner() {
        let list = list(&["a:1", "b:1"]);
        let ring = Owners::new(&list, 50);
        let g = owned_by(&ring, "a:1", "g");
        let only = owned_by(&ring, "b:1", "only");
        // d drains: its copy of g is the newest (a holds an older one), `only` lives on d alone.
        let h = holdings(&[
            ("a:1", &[(&g, 1.0)]),
            ("b:1", &[]),
            ("d:1", &[(&g, 2.0), (&only, 3.0)]),
        ]);
        let none = plan_read(&h, &ring, &BTreeSet::new());
        assert!(none.moves.is_empty(), "before the deadline nothing moves");
        assert_eq!(none.deletes.len(), 1, "the older copy on a goes");
        let p = plan_read(&h, &ring, &BTreeSet::from([m("d:1")]));
        let moves: BTreeSet<(&str, &str, String)> = p
            .moves
            .iter()
            .map(|x| (x.from.as_str(), x.to.as_str(), x.key.to_path()))
            .collect();
        assert_eq!(
            moves,
            BTreeSet::from([
                ("d:1", "a:1", k(&g).to_path()),
                ("d:1", "b:1", k(&only).to_path())
            ])
        );
        assert!(
            p.deletes.is_empty(),
            "the owner's older copy is replaced by the move, not deleted: {:?}",
            p.deletes
        );
    }

    #[test]
    fn deletes_are_checked_against_a_second_read() {
        let d = Delete {
            holder: m("a:1"),
            key: k("/metrics/job/j"),
            copy: pushed(10.0),
            keeper: m("b:1"),
            kept: Some(pushed(20.0)),
        };
        let valid = |fresh: &BTreeMap<Member, Holdings>| {
            still_valid(&d, fresh.get(&m("a:1")).unwrap_or(&Holdings::new()), fresh)
        };
        let ok = holdings(&[
            ("a:1", &[("/metrics/job/j", 10.0)]),
            ("b:1", &[("/metrics/job/j", 25.0)]),
        ]);
        assert!(valid(&ok));
        let mut failed_meanwhile = ok.clone();
        failed_meanwhile.get_mut(&m("a:1")).unwrap().insert(
            k("/metrics/job/j"),
            Stamps {
                push: 10.0,
                failure: 30.0,
            },
        );
        assert!(!valid(&failed_meanwhile), "a failed push arrived meanwhile");
        for (what, fresh) in [
            (
                "pushed meanwhile",
                holdings(&[
                    ("a:1", &[("/metrics/job/j", 30.0)]),
                    ("b:1", &[("/metrics/job/j", 20.0)]),
                ]),
            ),
            (
                "already gone",
                holdings(&[("a:1", &[]), ("b:1", &[("/metrics/job/j", 20.0)])]),
            ),
            (
                "keeper gone",
                holdings(&[("a:1", &[("/metrics/job/j", 10.0)]), ("b:1", &[])]),
            ),
            (
                "keeper unreadable",
                holdings(&[("a:1", &[("/metrics/job/j", 10.0)])]),
            ),
        ] {
            assert!(!valid(&fresh), "{what}");
        }
    }

    /// Slot a:1 is served by a2:1 with standby as:1; slot b:1 by itself with standby bs:1.
    fn slotted() -> MemberList {
        list(&["a:1", "b:1"])
            .with_slots([("a:1", "a2:1", Some("as:1")), ("b:1", "b:1", Some("bs:1"))])
            .unwrap()
    }

    #[test]
    fn a_standbys_copy_is_not_a_duplicate_another_slots_is() {
        let slots = slotted();
        let owners = Owners::new(&slots, 50);
        let g = owned_by(&owners, "a2:1", "g");
        assert!(
            (0..200).all(|i| {
                let o = owners.of(&k(&format!("/metrics/job/x/i/{i}"))).unwrap();
                o == &m("a2:1") || o == &m("b:1")
            }),
            "a group belongs to its slot's active, never to a slot name or a standby"
        );
        // Every address holds g: the active of its slot, its standby, the other slot's two.
        let mut h = holdings(&[
            ("a2:1", &[(&g, 20.0)]),
            ("as:1", &[(&g, 20.0)]),
            ("b:1", &[(&g, 10.0)]),
            ("bs:1", &[(&g, 10.0)]),
        ]);
        let standbys = split_standbys(&slots, &mut h);
        assert_eq!(standbys.keys().collect::<Vec<_>>(), [&m("as:1"), &m("bs:1")]);
        let p = plan_read(&h, &owners, &BTreeSet::new());
        let deleted: Vec<&str> = p.deletes.iter().map(|d| d.holder.as_str()).collect();
        assert_eq!(deleted, ["b:1"], "the copy on the other slot's active goes");
        assert_eq!((p.groups, p.duplicates, p.misplaced), (1, 1, 0));
        // Its own standby alone beside it: one copy, in place.
        let mut h = holdings(&[("a2:1", &[(&g, 20.0)]), ("as:1", &[(&g, 19.5)]), ("b:1", &[])]);
        split_standbys(&slots, &mut h);
        let p = plan_read(&h, &owners, &BTreeSet::new());
        assert!(p.deletes.is_empty());
        assert_eq!((p.groups, p.duplicates, p.misplaced), (1, 0, 0));
    }

    #[test]
    fn a_draining_slot_moves_from_its_active_to_the_owners_active() {
        let slots = list(&["a:1"])
            .with_draining(&["d:1"])
            .unwrap()
            .with_slots([("a:1", "a2:1", Some("as:1")), ("d:1", "d2:1", Some("ds:1"))])
            .unwrap();
        let owners = Owners::new(&slots, 50);
        let g = k("/metrics/job/g");
        let mut h = holdings(&[
            ("a2:1", &[]),
            ("as:1", &[]),
            ("d2:1", &[("/metrics/job/g", 5.0)]),
            ("ds:1", &[("/metrics/job/g", 5.0)]),
        ]);
        split_standbys(&slots, &mut h);
        let p = plan_read(&h, &owners, &BTreeSet::from([m("d2:1")]));
        assert_eq!(
            p.moves,
            vec![Move {
                from: m("d2:1"),
                to: m("a2:1"),
                key: g,
                copy: pushed(5.0),
                kind: MoveKind::Drain,
                replaces: None,
            }]
        );
        assert!(p.deletes.is_empty());
    }

    #[test]
    fn planning_is_deterministic_over_many_groups() {
        let members: Vec<Member> = (1..=4).map(|i| m(&format!("p{i}:1"))).collect();
        let names: Vec<&str> = members[..3].iter().map(Member::as_str).collect();
        let slots = list(&names);
        let ring = Owners::new(&slots, 500);
        let mut h: BTreeMap<Member, Holdings> =
            members.iter().map(|x| (x.clone(), Holdings::new())).collect();
        for i in 0..2000 {
            let key = k(&format!("/metrics/job/j/i/{i}"));
            let owner = ring.of(&key).unwrap().clone();
            h.get_mut(&owner).unwrap().insert(key.clone(), pushed(i as f64));
            if i % 4 == 0 {
                // A newer copy on p4 for a quarter of them.
                h.get_mut(&members[3])
                    .unwrap()
                    .insert(key, pushed(i as f64 + 0.5));
            }
        }
        let p = plan_read(&h, &ring, &BTreeSet::new());
        assert_eq!((p.groups, p.duplicates, p.misplaced), (2000, 500, 500));
        assert!(p
            .deletes
            .iter()
            .all(|d| d.keeper == members[3] && d.holder != members[3]));
        assert_eq!(p, plan_read(&h, &ring, &BTreeSet::new()));
    }

    /// A group whose copies on `a:1` and `b:1` carry these stamps.
    fn two_copies(g: &str, a: Stamps, b: Stamps) -> BTreeMap<Member, Holdings> {
        BTreeMap::from([
            (m("a:1"), Holdings::from([(k(g), a)])),
            (m("b:1"), Holdings::from([(k(g), b)])),
        ])
    }

    #[test]
    fn a_later_failed_push_never_deletes_the_last_acknowledged_metrics() {
        let list = list(&["a:1", "b:1"]);
        let ring = Owners::new(&list, 50);
        let g = owned_by(&ring, "a:1", "g");
        let failed_only = Stamps {
            push: 0.0,
            failure: 30.0,
        };
        // The owner recorded only a failed push; b holds the metrics pushed at 20: both stay.
        let p = plan_read(
            &two_copies(&g, failed_only, pushed(20.0)),
            &ring,
            &BTreeSet::new(),
        );
        assert!(p.deletes.is_empty(), "{:?}", p.deletes);
        assert_eq!((p.kept_failures, p.duplicates), (1, 1));
        // Older metrics with a later failure: both stay too, whichever member holds which.
        let older_failed = Stamps {
            push: 10.0,
            failure: 30.0,
        };
        let p = plan_read(
            &two_copies(&g, pushed(20.0), older_failed),
            &ring,
            &BTreeSet::new(),
        );
        assert!(p.deletes.is_empty(), "{:?}", p.deletes);
        // A failure older than the kept metrics is covered: that copy goes.
        let stale_failure = Stamps {
            push: 10.0,
            failure: 15.0,
        };
        let p = plan_read(
            &two_copies(&g, pushed(20.0), stale_failure),
            &ring,
            &BTreeSet::new(),
        );
        assert_eq!(p.deletes.len(), 1);
        assert_eq!((p.deletes[0].holder.as_str(), p.kept_failures), ("b:1", 0));
        // And a copy with newer metrics and a later failure covers an older plain one.
        let p = plan_read(
            &two_copies(&g, older_failed, pushed(5.0)),
            &ring,
            &BTreeSet::new(),
        );
        assert_eq!(p.deletes.len(), 1);
        assert_eq!(p.deletes[0].holder.as_str(), "b:1");
    }

    #[test]
    fn a_drain_moves_past_an_owners_failed_push() {
        let list = list(&["a:1", "b:1"]);
        let ring = Owners::new(&list, 50);
        let g = owned_by(&ring, "a:1", "g");
        // The owner recorded a failed push (a move's PUT refused, say); the drain holds the metrics.
        let h = BTreeMap::from([
            (
                m("a:1"),
                Holdings::from([(
                    k(&g),
                    Stamps {
                        push: 0.0,
                        failure: 30.0,
                    },
                )]),
            ),
            (m("b:1"), Holdings::new()),
            (m("d:1"), Holdings::from([(k(&g), pushed(20.0))])),
        ]);
        let p = plan_read(&h, &ring, &BTreeSet::from([m("d:1")]));
        assert!(
            p.deletes.is_empty(),
            "the drain's metrics are not deleted: {:?}",
            p.deletes
        );
        assert_eq!(p.moves.len(), 1);
        assert_eq!((p.moves[0].from.as_str(), p.moves[0].to.as_str()), ("d:1", "a:1"));
    }
}
