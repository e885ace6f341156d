//! The plan of one reconcile round (pure, tested directly): which copies to delete, which groups
//! to move at a drain deadline, from what every readable pushgateway holds.
//!
//! - A group with more than one copy keeps the newest; every other copy is deleted. Equal push
//!   times keep the owner's copy, else the copy on the member that sorts first, so two
//!   consul-syncs agree.
//! - A group whose only copy sits on a non-owner stays there (one copy, its true push time) until
//!   its job pushes again; that push goes to the owner and makes the old copy the older one.
//! - A draining pushgateway past its deadline: its newest copies move to their owners.
//! - A planned delete is made only if a second read still shows what was planned ([`still_valid`]).

use dynamic_sharding::grouping_key::GroupingKey;
use dynamic_sharding::members::Member;
use dynamic_sharding::ring::Ring;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The groups one pushgateway holds and their push times (Unix seconds).
pub type Holdings = HashMap<GroupingKey, f64>;

/// A copy to delete, with what was read when it was planned.
#[derive(Clone, Debug, PartialEq)]
pub struct Delete {
    pub holder: Member,
    pub key: GroupingKey,
    pub push_time: f64,
    /// Where the newest copy is kept, and its push time.
    pub keeper: Member,
    pub keeper_time: f64,
}

/// A group to copy from a draining pushgateway past its deadline to its owner.
#[derive(Clone, Debug, PartialEq)]
pub struct Move {
    pub from: Member,
    pub to: Member,
    pub key: GroupingKey,
    pub push_time: f64,
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
}

/// Plans a round over what each readable pushgateway holds. `expired` are the draining
/// pushgateways past their deadline.
pub fn plan(holdings: &BTreeMap<Member, Holdings>, ring: &Ring, expired: &BTreeSet<Member>) -> RoundPlan {
    let mut copies: HashMap<&GroupingKey, Vec<(&Member, f64)>> = HashMap::new();
    for (holder, groups) in holdings {
        for (key, time) in groups {
            copies.entry(key).or_default().push((holder, *time));
        }
    }
    let mut out = RoundPlan {
        groups: copies.len(),
        ..RoundPlan::default()
    };
    for (key, mut list) in copies {
        let owner = ring.owner(key.hash());
        // Newest first; among equal times the owner, then the member that sorts first.
        list.sort_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then_with(|| (Some(b.0) == owner).cmp(&(Some(a.0) == owner)))
                .then_with(|| a.0.cmp(b.0))
        });
        let (keeper, keeper_time) = list[0];
        if list.len() > 1 {
            out.duplicates += 1;
            out.duplicated.push(key.clone());
        }
        if owner.is_some_and(|o| o != keeper) {
            out.misplaced += 1;
        }
        let moving_to = match owner {
            Some(o) if o != keeper && expired.contains(keeper) => Some(o),
            _ => None,
        };
        if let Some(to) = moving_to {
            out.moves.push(Move {
                from: keeper.clone(),
                to: to.clone(),
                key: key.clone(),
                push_time: keeper_time,
            });
        }
        for (holder, time) in &list[1..] {
            // The copy moved to the owner replaces the owner's older one: deleting that one
            // could delete the moved copy.
            if moving_to == Some(*holder) {
                continue;
            }
            out.deletes.push(Delete {
                holder: (*holder).clone(),
                key: key.clone(),
                push_time: *time,
                keeper: keeper.clone(),
                keeper_time,
            });
        }
    }
    out.deletes
        .sort_by(|a, b| (&a.holder, &a.key.labels()).cmp(&(&b.holder, &b.key.labels())));
    out.moves
        .sort_by(|a, b| (&a.from, &a.key.labels()).cmp(&(&b.from, &b.key.labels())));
    out.duplicated.sort_by(|a, b| a.labels().cmp(b.labels()));
    out
}

/// True when a planned delete still holds after a second read: the copy is unchanged (no push
/// arrived meanwhile) and the keeper still has a copy at least as new as planned.
pub fn still_valid(d: &Delete, fresh: &BTreeMap<Member, Holdings>) -> bool {
    let copy = fresh.get(&d.holder).and_then(|h| h.get(&d.key));
    let kept = fresh.get(&d.keeper).and_then(|h| h.get(&d.key));
    copy.is_some_and(|t| *t == d.push_time) && kept.is_some_and(|t| *t >= d.keeper_time)
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

    fn holdings(entries: &[(&str, &[(&str, f64)])]) -> BTreeMap<Member, Holdings> {
        entries
            .iter()
            .map(|(member, groups)| (m(member), groups.iter().map(|(p, t)| (k(p), *t)).collect()))
            .collect()
    }

    /// A path whose group `owner` owns on `ring`.
    fn owned_by(ring: &Ring, owner: &str, tag: &str) -> String {
        (0..10_000)
            .map(|i| format!("/metrics/job/{tag}/i/{i}"))
            .find(|p| ring.owner(k(p).hash()) == Some(&m(owner)))
            .unwrap()
    }

    #[test]
    fn the_newest_copy_is_kept_wherever_it_is() {
        let ring = Ring::new(&[m("a:1"), m("b:1")], 50);
        let g = owned_by(&ring, "a:1", "g");
        // The owner's copy is the older one: it goes, the newer copy on b stays.
        let h = holdings(&[("a:1", &[(&g, 10.0)]), ("b:1", &[(&g, 20.0)])]);
        let p = plan(&h, &ring, &BTreeSet::new());
        assert_eq!(
            p.deletes,
            vec![Delete {
                holder: m("a:1"),
                key: k(&g),
                push_time: 10.0,
                keeper: m("b:1"),
                keeper_time: 20.0
            }]
        );
        assert_eq!((p.groups, p.duplicates, p.misplaced), (1, 1, 1));
        // Then the job pushes again (to its owner): b's copy is now the older one.
        let h = holdings(&[("a:1", &[(&g, 30.0)]), ("b:1", &[(&g, 20.0)])]);
        let p = plan(&h, &ring, &BTreeSet::new());
        assert_eq!(p.deletes.len(), 1);
        assert_eq!((p.deletes[0].holder.as_str(), p.misplaced), ("b:1", 0));
    }

    #[test]
    fn a_single_copy_on_a_non_owner_stays() {
        let ring = Ring::new(&[m("a:1"), m("b:1")], 50);
        let g = owned_by(&ring, "a:1", "g");
        let h = holdings(&[("a:1", &[]), ("b:1", &[(&g, 20.0)])]);
        let p = plan(&h, &ring, &BTreeSet::new());
        assert!(p.deletes.is_empty() && p.moves.is_empty());
        assert_eq!((p.groups, p.duplicates, p.misplaced), (1, 0, 1));
    }

    #[test]
    fn ties_keep_the_owner_then_the_first_member() {
        let ring = Ring::new(&[m("a:1"), m("b:1"), m("c:1")], 50);
        let g = owned_by(&ring, "b:1", "g");
        let h = holdings(&[
            ("a:1", &[(&g, 5.0)]),
            ("b:1", &[(&g, 5.0)]),
            ("c:1", &[(&g, 5.0)]),
        ]);
        let p = plan(&h, &ring, &BTreeSet::new());
        let deleted: Vec<&str> = p.deletes.iter().map(|d| d.holder.as_str()).collect();
        assert_eq!(deleted, ["a:1", "c:1"]);
        // Without the owner among the copies, the first member wins.
        let h = holdings(&[("a:1", &[(&g, 5.0)]), ("c:1", &[(&g, 5.0)])]);
        let p = plan(&h, &ring, &BTreeSet::new());
        assert_eq!(p.deletes[0].holder.as_str(), "c:1");
    }

    #[test]
    fn expired_drains_move_their_newest_copies_to_the_owner() {
        let ring = Ring::new(&[m("a:1"), m("b:1")], 50);
        let g = owned_by(&ring, "a:1", "g");
        let only = owned_by(&ring, "b:1", "only");
        // d drains: its copy of g is the newest (a holds an older one), `only` lives on d alone.
        let h = holdings(&[
            ("a:1", &[(&g, 1.0)]),
            ("b:1", &[]),
            ("d:1", &[(&g, 2.0), (&only, 3.0)]),
        ]);
        let none = plan(&h, &ring, &BTreeSet::new());
        assert!(none.moves.is_empty(), "before the deadline nothing moves");
        assert_eq!(none.deletes.len(), 1, "the older copy on a goes");
        let p = plan(&h, &ring, &BTreeSet::from([m("d:1")]));
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
            push_time: 10.0,
            keeper: m("b:1"),
            keeper_time: 20.0,
        };
        let ok = holdings(&[
            ("a:1", &[("/metrics/job/j", 10.0)]),
            ("b:1", &[("/metrics/job/j", 25.0)]),
        ]);
        assert!(still_valid(&d, &ok));
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
            assert!(!still_valid(&d, &fresh), "{what}");
        }
    }

    #[test]
    fn planning_is_deterministic_over_many_groups() {
        let members: Vec<Member> = (1..=4).map(|i| m(&format!("p{i}:1"))).collect();
        let ring = Ring::new(&members[..3], 500);
        let mut h: BTreeMap<Member, Holdings> =
            members.iter().map(|x| (x.clone(), Holdings::new())).collect();
        for i in 0..2000 {
            let key = k(&format!("/metrics/job/j/i/{i}"));
            let owner = ring.owner(key.hash()).unwrap().clone();
            h.get_mut(&owner).unwrap().insert(key.clone(), i as f64);
            if i % 4 == 0 {
                // A newer copy on p4 for a quarter of them.
                h.get_mut(&members[3]).unwrap().insert(key, i as f64 + 0.5);
            }
        }
        let p = plan(&h, &ring, &BTreeSet::new());
        assert_eq!((p.groups, p.duplicates, p.misplaced), (2000, 500, 500));
        assert!(p
            .deletes
            .iter()
            .all(|d| d.keeper == members[3] && d.holder != members[3]));
        assert_eq!(p, plan(&h, &ring, &BTreeSet::new()));
    }
}
