//! The repair of a slot's standby from its active (pure, tested directly): what to copy to the
//! standby and what to delete from it so that it holds what the active holds, from one read of
//! each. The active is the truth while it lives.
//!
//! - A group the standby lacks, or holds older than the active's copy by more than [`LEAD`], is
//!   copied from the active (as a drain's move is, but the active keeps its copy).
//! - A group the standby holds and the active does not is deleted from the standby, once the
//!   standby's copy is older than [`LEAD`] before the active was read: the filter writes the
//!   standby first, so a younger one may be a push still on its way to the active.
//! - A standby copy newer than the active's by more than [`LEAD`] is left alone while it may be a
//!   write on its way to the active: stamped less than [`GRACE`] before the active was read. One
//!   stamped earlier is not (a former active's write applied late, or a redirect a client never
//!   followed): the active's copy replaces it ([`MoveKind::Replace`]), unless it is the copy the
//!   repair itself made of the active's unchanged copy.
//! - Where the clocks of the two could reverse the order, nothing is copied (as in the plan).
//! - A group copied to the standby whose active copy has changed since, stamped no later than the
//!   copy's end (as far as the active's clock can tell), is copied again
//!   ([`MoveKind::Recopy`]), whatever the standby's stamp: that push may have reached the standby
//!   before the copy, which then replaced it with the older content and a stamp newer than the
//!   push's. So is one copied over a newer standby copy whose active copy has changed while the
//!   standby still holds the copy: the replaced write may have reached the active after it.
//!
//! The repair's copies are remembered ([`Copied`]) until the active's copy of the group changes or
//! goes: a copy is stamped at its own time, newer than the active's, and would otherwise be
//! replaced again each round.

use super::clock::{order_holds, Clocks};
use super::exposition::Stamps;
use super::plan::{Delete, Holdings, Move, MoveKind};
use dynamic_sharding::grouping_key::GroupingKey;
use dynamic_sharding::members::Member;
use std::collections::HashMap;

/// How much earlier than the active's copy the standby's copy of the same push may be stamped
/// without being a difference. The filter writes the standby before the active (in redirect mode
/// the client follows the redirect only after the standby answered), so the standby's stamp
/// precedes the active's by the time that write takes to reach the active: milliseconds in
/// proxy mode, a client's round trip in redirect mode. The two clocks may also differ by up to a
/// second before the `Date` header can show it ([`clock`](super::clock)); a larger skew, once
/// seen, is accounted for by [`order_holds`]. A second covers both; a push missed by the standby
/// more than a second after the one before it is a difference.
pub const LEAD: f64 = 1.0;

/// How long before the active's read a standby copy newer than the active's must have been
/// stamped to be no write on its way to the active. The write's way: in proxy mode the filter
/// writes the active as soon as the standby answered (milliseconds); in redirect mode the client
/// follows the `307` only after the standby answered (its round trip, a new connection at worst).
/// Plus a second of clock difference the `Date` headers cannot show, as in [`LEAD`]. A write
/// slower than that is replaced on the standby, then reaches the active after the copy and is
/// copied again (as a [`MoveKind::Recopy`]): late, not lost.
pub const GRACE: f64 = 3.0;

/// How much older than the source's copy the destination's must be for a copy of `kind` to
/// replace it.
pub fn lead(kind: MoveKind) -> f64 {
    match kind {
        MoveKind::Drain | MoveKind::Recopy | MoveKind::Replace => 0.0,
        MoveKind::Repair => LEAD,
    }
}

/// A repair copy made to a standby: the stamps of the active's copy it was made from, when its
/// writes started and ended (Unix seconds, consul-sync's clock), and whether it replaced a standby
/// copy newer than the active's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Copied {
    pub from: Stamps,
    pub start: f64,
    pub done: f64,
    pub replaced: bool,
}

/// What to do to one slot's standby, and what was found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlotPlan {
    /// Copies from the active to the standby.
    pub copies: Vec<Move>,
    /// The standby's copies of groups the active does not hold.
    pub deletes: Vec<Delete>,
    /// Groups the standby lacks, holds older, or holds extra: `copies` and `deletes`, and the
    /// copies the clocks keep from being made.
    pub differences: usize,
    /// Copies not planned because the clocks could reverse the order of the two stamps.
    pub clock_refusals: usize,
    /// Of `copies`, those over a standby copy newer than the active's ([`MoveKind::Replace`]).
    pub replaced: usize,
    /// The remembered copies still to remember: those of groups whose active copy is unchanged,
    /// and those copied again now.
    pub remembered: HashMap<GroupingKey, Copied>,
}

/// Plans the repair of `standby` from `active`, read as `on_active` and `on_standby`, the active's
/// read having started at `read_at` (Unix seconds, consul-sync's clock). `copied` are the copies
/// the repair made to the standby that are still remembered.
pub fn plan_repair(
    active: &Member,
    standby: &Member,
    on_active: &Holdings,
    on_standby: &Holdings,
    copied: &HashMap<GroupingKey, Copied>,
    read_at: f64,
    clocks: &Clocks,
) -> SlotPlan {
    let mut out = SlotPlan::default();
    // The most the active's clock may be ahead of ours: a push it stamped later than a copy
    // ended, by its clock, by more than that came after the copy (and so reached the standby
    // after it). Unknown before a read: the Date header's resolution.
    let ahead_of_us = clocks.get(active).map_or(LEAD, |o| o.high.max(0.0));
    // The standby's clock minus ours lies in [low, high]; unknown before a read: a second either
    // way.
    let (low, high) = clocks.get(standby).map_or((-LEAD, LEAD), |o| (o.low, o.high));
    // The standby's clock minus ours, once a skew is seen (else trusted to be 0): its stamps, on
    // our clock, are at most their value minus that.
    let ahead = clocks.get(standby).filter(|o| o.seen()).map_or(0.0, |o| o.low);
    for (key, a) in on_active {
        let mut kind = MoveKind::Repair;
        let mut replaces = None;
        let last = copied.get(key);
        if let Some(s) = on_standby.get(key) {
            // The standby's copy may be the remembered copy: stamped while it was written.
            let ours =
                last.is_some_and(|c| s.latest() >= c.start + low - LEAD && s.latest() <= c.done + high);
            // The standby's stamp does not tell: the copy may have landed after the push reached
            // both, and the standby's stamp is then the copy's, newer than the push's.
            let raced = last.is_some_and(|c| {
                c.from != *a && (a.latest() <= c.done + ahead_of_us || (c.replaced && ours))
            });
            if raced {
                kind = MoveKind::Recopy;
            } else if a.latest() <= s.latest() + LEAD {
                // The same push, a push on its way to the active, the remembered copy, or a
                // write the active never got and that is no longer on its way.
                let mine = ours && last.is_some_and(|c| c.from == *a);
                let late = s.latest() > a.latest() + LEAD
                    && s.latest() - ahead + GRACE < read_at
                    && order_holds(clocks, standby, s.latest(), active, a.latest() + LEAD);
                if mine || !late {
                    if let Some(c) = last.filter(|c| c.from == *a) {
                        out.remembered.insert(key.clone(), *c);
                    }
                    continue;
                }
                kind = MoveKind::Replace;
                replaces = Some(*s);
                out.replaced += 1;
            }
            out.differences += 1;
            if kind != MoveKind::Replace
                && !order_holds(clocks, active, a.latest(), standby, s.latest() + LEAD)
            {
                out.clock_refusals += 1;
                if let Some(c) = last.filter(|_| raced) {
                    out.remembered.insert(key.clone(), *c);
                }
                continue;
            }
        } else {
            out.differences += 1;
        }
        if let Some(c) = last.filter(|_| kind == MoveKind::Recopy) {
            // Until the copy again is made.
            out.remembered.insert(key.clone(), *c);
        }
        out.copies.push(Move {
            from: active.clone(),
            to: standby.clone(),
            key: key.clone(),
            copy: *a,
            kind,
            replaces,
        });
    }
    for (key, s) in on_standby {
        if on_active.contains_key(key) || s.latest() - ahead + LEAD >= read_at {
            continue;
        }
        out.differences += 1;
        out.deletes.push(Delete {
            holder: standby.clone(),
            key: key.clone(),
            copy: *s,
            keeper: active.clone(),
            kept: None,
        });
    }
    out.copies.sort_by(|a, b| a.key.labels().cmp(b.key.labels()));
    out.deletes.sort_by(|a, b| a.key.labels().cmp(b.key.labels()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::clock::Reading;

    fn m(s: &str) -> Member {
        Member::parse(s).unwrap()
    }

    fn k(job: &str) -> GroupingKey {
        GroupingKey::from_path(&format!("/metrics/job/{job}")).unwrap()
    }

    fn held(groups: &[(&str, f64)]) -> Holdings {
        groups
            .iter()
            .map(|(j, t)| {
                (
                    k(j),
                    Stamps {
                        push: *t,
                        failure: 0.0,
                    },
                )
            })
            .collect()
    }

    fn jobs_copied(p: &SlotPlan) -> Vec<String> {
        p.copies.iter().map(|c| c.key.to_path()).collect()
    }

    fn jobs_deleted(p: &SlotPlan) -> Vec<String> {
        p.deletes.iter().map(|d| d.key.to_path()).collect()
    }

    const NOW: f64 = 1000.0;

    fn none() -> HashMap<GroupingKey, Copied> {
        HashMap::new()
    }

    #[test]
    fn a_standby_gets_what_it_lacks_and_what_it_holds_older() {
        let (a, s) = (m("a:1"), m("s:1"));
        let on_active = held(&[
            ("missing", 900.0),
            ("older", 950.0),
            ("same", 950.0),
            ("lead", 950.0),
        ]);
        let on_standby = held(&[("older", 940.0), ("same", 950.0), ("lead", 949.5)]);
        let p = plan_repair(&a, &s, &on_active, &on_standby, &none(), NOW, &Clocks::default());
        assert_eq!(
            jobs_copied(&p),
            ["/metrics/job/missing", "/metrics/job/older"],
            "a copy stamped less than LEAD before the active's is the same push"
        );
        assert!(p
            .copies
            .iter()
            .all(|c| c.from == a && c.to == s && c.kind == MoveKind::Repair));
        assert_eq!(
            p.copies[1].copy,
            Stamps {
                push: 950.0,
                failure: 0.0
            }
        );
        assert!(p.deletes.is_empty());
        assert_eq!(p.differences, 2);
    }

    #[test]
    fn a_newer_copy_on_the_standby_is_left_alone_while_it_may_be_on_its_way() {
        let (a, s) = (m("a:1"), m("s:1"));
        let p = plan_repair(
            &a,
            &s,
            &held(&[("g", 900.0)]),
            &held(&[("g", NOW - GRACE + 0.5)]),
            &none(),
            NOW,
            &Clocks::default(),
        );
        assert_eq!(p, SlotPlan::default());
    }

    #[test]
    fn a_newer_copy_stamped_well_before_the_read_is_replaced() {
        let (a, s) = (m("a:1"), m("s:1"));
        // A former active's write applied when it woke, at 990: newer than the active's push of
        // 900, and no write on its way to the active ten seconds later.
        let on_standby = held(&[("late", 990.0), ("same", 900.5), ("fresh", NOW - 1.0)]);
        let on_active = held(&[("late", 900.0), ("same", 900.0), ("fresh", 900.0)]);
        let p = plan_repair(&a, &s, &on_active, &on_standby, &none(), NOW, &Clocks::default());
        assert_eq!(jobs_copied(&p), ["/metrics/job/late"]);
        let c = &p.copies[0];
        assert_eq!(
            (c.kind, c.replaces),
            (MoveKind::Replace, Some(on_standby[&k("late")]))
        );
        assert_eq!(c.copy, on_active[&k("late")]);
        assert_eq!((p.differences, p.replaced), (1, 1));
    }

    #[test]
    fn the_repairs_own_copy_is_not_replaced_until_the_active_changes() {
        let (a, s) = (m("a:1"), m("s:1"));
        let from = held(&[("g", 900.0)])[&k("g")];
        let copy = Copied {
            from,
            start: 950.0,
            done: 950.1,
            replaced: true,
        };
        let copied = HashMap::from([(k("g"), copy)]);
        let plan = |active: f64, standby: f64, copied: &HashMap<GroupingKey, Copied>| {
            plan_repair(
                &a,
                &s,
                &held(&[("g", active)]),
                &held(&[("g", standby)]),
                copied,
                NOW,
                &Clocks::default(),
            )
        };
        // The copy, stamped by the standby at 950.05 from the active's 900.
        let p = plan(900.0, 950.05, &copied);
        assert!(p.copies.is_empty());
        assert_eq!(
            p.remembered, copied,
            "remembered while the active's copy is unchanged"
        );
        // Forgotten (a restart), it is copied once more.
        assert_eq!(plan(900.0, 950.05, &none()).replaced, 1);
        // Written after the copy: a late write again.
        let p = plan(900.0, 960.0, &copied);
        assert_eq!(p.copies[0].kind, MoveKind::Replace);
        // The active pushed since, the standby too: the same push, the copy forgotten.
        let p = plan(980.0, 979.9, &copied);
        assert!(p.copies.is_empty() && p.remembered.is_empty());
    }

    #[test]
    fn a_write_reaching_the_active_after_it_was_replaced_is_copied_again() {
        let (a, s) = (m("a:1"), m("s:1"));
        let mut clocks = Clocks::default();
        // The active's clock is known to within [-0.01, 0.05] of ours.
        for (sent, date) in [(NOW, NOW), (NOW + 0.95, NOW)] {
            clocks.record(
                &a,
                &Reading {
                    sent,
                    answered: sent + 0.01,
                    date,
                },
            );
        }
        let copy = |replaced| Copied {
            from: held(&[("g", 900.0)])[&k("g")],
            start: 950.0,
            done: 950.1,
            replaced,
        };
        // The standby still holds the copy (its clock a little ahead); the replaced write reached
        // the active 0.7 s after the copy ended: less than LEAD after the standby's stamp.
        let plan = |c: Copied| {
            plan_repair(
                &a,
                &s,
                &held(&[("g", 950.8)]),
                &held(&[("g", 950.3)]),
                &HashMap::from([(k("g"), c)]),
                NOW,
                &clocks,
            )
        };
        let p = plan(copy(true));
        assert_eq!(jobs_copied(&p), ["/metrics/job/g"]);
        assert_eq!(p.copies[0].kind, MoveKind::Recopy);
        assert!(
            plan(copy(false)).copies.is_empty(),
            "after an ordinary copy, a push that late reached the standby after it"
        );
    }

    #[test]
    fn a_failed_push_on_the_active_is_a_difference() {
        let (a, s) = (m("a:1"), m("s:1"));
        let mut on_active = held(&[("g", 900.0)]);
        on_active.insert(
            k("g"),
            Stamps {
                push: 900.0,
                failure: 950.0,
            },
        );
        let p = plan_repair(
            &a,
            &s,
            &on_active,
            &held(&[("g", 900.0)]),
            &none(),
            NOW,
            &Clocks::default(),
        );
        assert_eq!(jobs_copied(&p), ["/metrics/job/g"]);
        assert!(p.copies[0].copy.last_push_failed());
    }

    #[test]
    fn extra_groups_go_from_the_standby_unless_they_may_be_on_their_way() {
        let (a, s) = (m("a:1"), m("s:1"));
        let on_standby = held(&[("old", 900.0), ("fresh", NOW - LEAD / 2.0), ("both", 900.0)]);
        let p = plan_repair(
            &a,
            &s,
            &held(&[("both", 900.0)]),
            &on_standby,
            &none(),
            NOW,
            &Clocks::default(),
        );
        assert_eq!(
            jobs_deleted(&p),
            ["/metrics/job/old"],
            "a copy younger than LEAD may be a push the active has not received yet"
        );
        let d = &p.deletes[0];
        assert_eq!((&d.holder, &d.keeper, d.kept), (&s, &a, None));
        assert!(p.copies.is_empty());
    }

    #[test]
    fn a_standby_clock_seen_behind_makes_its_stamps_younger() {
        let (a, s) = (m("a:1"), m("s:1"));
        let mut clocks = Clocks::default();
        // The standby's clock is 10 s behind ours.
        clocks.record(
            &s,
            &Reading {
                sent: NOW,
                answered: NOW + 0.01,
                date: NOW - 10.0,
            },
        );
        let p = plan_repair(
            &a,
            &s,
            &Holdings::new(),
            &held(&[("g", NOW - 10.0)]),
            &none(),
            NOW,
            &clocks,
        );
        assert!(
            p.deletes.is_empty(),
            "stamped now by our clock: may be on its way to the active"
        );
        let p = plan_repair(
            &a,
            &s,
            &Holdings::new(),
            &held(&[("g", NOW - 10.0)]),
            &none(),
            NOW + 5.0,
            &clocks,
        );
        assert_eq!(jobs_deleted(&p), ["/metrics/job/g"]);
    }

    #[test]
    fn copies_the_clocks_could_reverse_are_not_made() {
        let (a, s) = (m("a:1"), m("s:1"));
        let mut clocks = Clocks::default();
        // The active's clock is 10 s ahead of the standby's.
        for (member, date) in [(&a, NOW + 10.0), (&s, NOW)] {
            clocks.record(
                member,
                &Reading {
                    sent: NOW,
                    answered: NOW + 0.01,
                    date,
                },
            );
        }
        let p = plan_repair(
            &a,
            &s,
            &held(&[("g", 955.0)]),
            &held(&[("g", 950.0)]),
            &none(),
            NOW,
            &clocks,
        );
        assert!(p.copies.is_empty());
        assert_eq!((p.differences, p.clock_refusals), (1, 1));
    }
}

#[cfg(test)]
mod raced {
    use super::*;

    #[test]
    fn a_group_pushed_while_it_was_copied_is_copied_again() {
        let (a, s) = (Member::parse("a:1").unwrap(), Member::parse("s:1").unwrap());
        let g = GroupingKey::from_path("/metrics/job/g").unwrap();
        let at = |push| Stamps { push, failure: 0.0 };
        // Last round copied g as pushed at 900, the copy ending at 950.2 (the standby's stamp).
        let recent = HashMap::from([(
            g.clone(),
            Copied {
                from: at(900.0),
                start: 950.0,
                done: 950.2,
                replaced: false,
            },
        )]);
        let plan = |active: f64, standby: f64| {
            let on_active: Holdings = HashMap::from([(g.clone(), at(active))]);
            let on_standby: Holdings = HashMap::from([(g.clone(), at(standby))]);
            plan_repair(
                &a,
                &s,
                &on_active,
                &on_standby,
                &recent,
                1000.0,
                &Clocks::default(),
            )
        };
        // A push reached the active 0.3 s after the copy ended: it may have reached the standby
        // before the copy, which holds the copy's stamp.
        let p = plan(950.5, 950.2);
        assert_eq!(p.copies.len(), 1);
        assert_eq!(p.copies[0].kind, MoveKind::Recopy);
        assert_eq!(lead(MoveKind::Recopy), 0.0);
        // No push since the copy, or one long after it (it reached the standby after the copy).
        assert!(plan(900.0, 950.2).copies.is_empty());
        assert!(plan(990.0, 989.9).copies.is_empty());
        assert_eq!(
            plan(950.4, 950.6).copies.len(),
            1,
            "the push may have reached both before the copy landed, stamped after the push"
        );
        // Without the copy last round, the two are the same push.
        let on_active: Holdings = HashMap::from([(g.clone(), at(950.5))]);
        let on_standby: Holdings = HashMap::from([(g.clone(), at(950.2))]);
        let p = plan_repair(
            &a,
            &s,
            &on_active,
            &on_standby,
            &HashMap::new(),
            1000.0,
            &Clocks::default(),
        );
        assert!(p.copies.is_empty());
    }
}
