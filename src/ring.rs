//! The consistent-hash ring that maps a group to its owner.
//!
//! Owns the placement rule, which the filter and consul-sync must compute bit for bit alike:
//! each member contributes `vnodes` points, point `i` of member `m` sits at
//! `XXH64(seed 0, be32(len(m)) ‖ m ‖ be32(i))`; a key is owned by the first point at or after its
//! hash, wrapping to the first point. Members are sorted before the points are made and equal
//! hashes keep the point of the smaller member, so neither input order nor collisions change the
//! ring. Everything hashed has a fixed width, so 32-bit wasm and 64-bit hosts agree.

use crate::grouping_key::push_len_prefixed;
use crate::members::Member;
use twox_hash::XxHash64;

/// Points per member unless configured: σ/μ of the load is about 1/√500 ≈ 4.5%.
pub const DEFAULT_VNODES: u32 = 500;
/// Accepted range of `vnodes`.
pub const MIN_VNODES: u32 = 1;
pub const MAX_VNODES: u32 = 10_000;

/// XXH64 with seed 0, the hash of keys and points.
pub fn xxh64(bytes: &[u8]) -> u64 {
    XxHash64::oneshot(0, bytes)
}

/// Checks a configured `vnodes` value, naming the accepted range.
pub fn validate_vnodes(vnodes: u32) -> Result<u32, String> {
    if (MIN_VNODES..=MAX_VNODES).contains(&vnodes) {
        Ok(vnodes)
    } else {
        Err(format!(
            "vnodes {vnodes} is out of range: expected {MIN_VNODES} to {MAX_VNODES}"
        ))
    }
}

/// An immutable ring. Build a new one when the members change, or derive it from the last one
/// with [`Ring::rebuilt`], which rehashes only the members that joined.
#[derive(Clone, Debug, Default)]
pub struct Ring {
    /// The points as (hash, index into `members`), sorted: equal hashes (collisions) in the order
    /// of their owners, so the first of them belongs to the member that sorts first.
    points: Vec<(u64, u32)>,
    members: Vec<Member>,
    /// Points per member, after clamping.
    vnodes: u32,
}

/// Appends the hashes of one member's points (`vnodes` of them) to a buffer.
type PointsOf<'a> = dyn FnMut(&Member, u32, &mut Vec<u64>) + 'a;

/// The placement rule: XXH64 of `be32(len(m)) ‖ m ‖ be32(i)` for `i` in `0..vnodes`.
fn member_points(member: &Member, vnodes: u32, out: &mut Vec<u64>) {
    let mut buf = Vec::with_capacity(member.as_str().len() + 8);
    push_len_prefixed(&mut buf, member.as_str().as_bytes());
    let prefix = buf.len();
    buf.extend_from_slice(&[0; 4]);
    for i in 0..vnodes {
        if let Some(tail) = buf.get_mut(prefix..) {
            tail.copy_from_slice(&i.to_be_bytes());
        }
        out.push(XxHash64::oneshot(0, &buf));
    }
}

impl Ring {
    /// Builds the ring of `members` (any order, duplicates ignored) with `vnodes` points each.
    /// `vnodes` outside 1..=10,000 is clamped; validate configuration with [`validate_vnodes`].
    pub fn new(members: &[Member], vnodes: u32) -> Ring {
        Ring::build(members, vnodes, &mut member_points)
    }

    /// The ring of `members` with this ring's placement rule, reusing the points of the members
    /// both rings have: only the members that joined are hashed, and the rest is one merge, so
    /// one member joining or leaving costs a pass over the points instead of a sort. Equal to
    /// `Ring::new(members, vnodes)` in every point; with another `vnodes` it is that.
    pub fn rebuilt(&self, members: &[Member], vnodes: u32) -> Ring {
        self.rebuilt_with(members, vnodes, &mut member_points)
    }

    fn build(members: &[Member], vnodes: u32, points_of: &mut PointsOf) -> Ring {
        let empty = Ring {
            vnodes: vnodes.clamp(MIN_VNODES, MAX_VNODES),
            ..Ring::default()
        };
        empty.rebuilt_with(members, vnodes, points_of)
    }

    fn rebuilt_with(&self, members: &[Member], vnodes: u32, points_of: &mut PointsOf) -> Ring {
        let vnodes = vnodes.clamp(MIN_VNODES, MAX_VNODES);
        if vnodes != self.vnodes && !self.members.is_empty() {
            return Ring::build(members, vnodes, points_of);
        }
        let mut members = members.to_vec();
        members.sort();
        members.dedup();

        // Old member index -> new one (u32::MAX: gone), and the members that joined. Both lists
        // are sorted, so the mapping keeps the order: the kept points stay sorted.
        let mut renumber = vec![u32::MAX; self.members.len()];
        let mut joined = Vec::new();
        let mut old = self.members.iter().enumerate().peekable();
        for (idx, member) in members.iter().enumerate() {
            while old.next_if(|(_, m)| *m < member).is_some() {}
            match old.next_if(|(_, m)| *m == member) {
                Some((o, _)) => {
                    if let Some(slot) = renumber.get_mut(o) {
                        *slot = idx as u32;
                    }
                }
                None => joined.push((idx as u32, member)),
            }
        }

        // The joined members' points, sorted by (hash, member) as the ring orders collisions.
        let mut fresh = Vec::with_capacity(joined.len() * vnodes as usize);
        let mut scratch = Vec::with_capacity(vnodes as usize);
        for (idx, member) in joined {
            scratch.clear();
            points_of(member, vnodes, &mut scratch);
            fresh.extend(scratch.iter().map(|h| (*h, idx)));
        }
        fresh.sort_unstable();

        // Merge them with the kept points, renumbered (none in a first build: then they are the
        // ring). `u32::MAX` indexes no member, so `END` sorts after every real point.
        const END: (u64, u32) = (u64::MAX, u32::MAX);
        let points = if renumber.iter().all(|i| *i == u32::MAX) {
            fresh
        } else {
            let mut points = Vec::with_capacity(members.len() * vnodes as usize);
            let mut fresh = fresh.into_iter();
            let mut next = fresh.next().unwrap_or(END);
            for (hash, old) in &self.points {
                let idx = renumber.get(*old as usize).copied().unwrap_or(u32::MAX);
                if idx == u32::MAX {
                    continue;
                }
                while next < (*hash, idx) {
                    points.push(next);
                    next = fresh.next().unwrap_or(END);
                }
                points.push((*hash, idx));
            }
            if next != END {
                points.push(next);
                points.extend(fresh);
            }
            points
        };
        Ring {
            points,
            members,
            vnodes,
        }
    }

    /// The owner of a key hash, or `None` for an empty ring.
    pub fn owner(&self, hash: u64) -> Option<&Member> {
        let i = self.points.partition_point(|p| p.0 < hash);
        let (_, idx) = self.points.get(i).or_else(|| self.points.first())?;
        self.members.get(*idx as usize)
    }

    /// The members, sorted.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Number of distinct points (a collision counts once: its first owner holds it).
    pub fn points(&self) -> usize {
        let next = self.points.iter().skip(1);
        let collisions = self.points.iter().zip(next).filter(|(a, b)| a.0 == b.0).count();
        self.points.len() - collisions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grouping_key::GroupingKey;
    use std::collections::HashMap;

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member::parse(&format!("10.0.{}.{}:9091", i / 250, i % 250 + 1)).unwrap())
            .collect()
    }

    /// Deterministic key hashes: grouping keys of realistic shape, so the test covers the real
    /// key encoding and not just uniformly random integers.
    fn key_hashes(n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| {
                GroupingKey::from_path(&format!("/metrics/job/batch_{}/instance/host-{}", i % 97, i))
                    .unwrap()
                    .hash()
            })
            .collect()
    }

    fn load(ring: &Ring, keys: &[u64]) -> HashMap<Member, usize> {
        let mut counts = HashMap::new();
        for k in keys {
            *counts.entry(ring.owner(*k).unwrap().clone()).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn empty_ring_has_no_owner() {
        assert_eq!(Ring::new(&[], DEFAULT_VNODES).owner(42), None);
    }

    #[test]
    fn lookup_wraps_to_the_first_point() {
        let ring = Ring::new(&members(3), 10);
        let (last, last_owner) = *ring.points.last().unwrap();
        let (first, first_owner) = ring.points[0];
        let first_member = ring.members.get(first_owner as usize);
        assert_ne!(first_member, ring.members.get(last_owner as usize));
        assert_eq!(ring.owner(last + 1), first_member);
        assert_eq!(ring.owner(u64::MAX), first_member);
        assert_eq!(ring.owner(first), first_member);
        assert_eq!(ring.owner(0), first_member);
    }

    /// The placement rule written out plainly, as the module documentation states it.
    #[test]
    fn points_follow_the_documented_rule() {
        let m = members(2);
        let ring = Ring::new(&m, 3);
        let mut expected: Vec<(u64, u32)> = Vec::new();
        for (idx, member) in m.iter().enumerate() {
            for i in 0u32..3 {
                let mut bytes = (member.as_str().len() as u32).to_be_bytes().to_vec();
                bytes.extend_from_slice(member.as_str().as_bytes());
                bytes.extend_from_slice(&i.to_be_bytes());
                expected.push((xxh64(&bytes), idx as u32));
            }
        }
        expected.sort();
        assert_eq!(ring.points, expected);
    }

    #[test]
    fn balance_within_1_2_of_mean_at_default_vnodes() {
        let keys = key_hashes(1_000_000);
        for n in [3usize, 5, 10, 25, 50, 100] {
            let ring = Ring::new(&members(n), DEFAULT_VNODES);
            let counts = load(&ring, &keys);
            assert_eq!(counts.len(), n, "every member owns some keys");
            let mean = keys.len() as f64 / n as f64;
            let max = *counts.values().max().unwrap() as f64;
            assert!(max / mean <= 1.20, "{n} members: max/mean {:.3}", max / mean);
        }
    }

    #[test]
    fn adding_a_member_moves_only_its_share_and_only_onto_it() {
        let keys = key_hashes(200_000);
        for n in [3usize, 10, 50] {
            let all = members(n + 1);
            let before = Ring::new(&all[..n], DEFAULT_VNODES);
            let after = Ring::new(&all, DEFAULT_VNODES);
            let newcomer = &all[n];
            let mut moved = 0usize;
            for k in &keys {
                let (a, b) = (before.owner(*k).unwrap(), after.owner(*k).unwrap());
                if a != b {
                    assert_eq!(b, newcomer, "a key moved between two old members");
                    moved += 1;
                }
            }
            let limit = 1.2 / (n as f64 + 1.0);
            let share = moved as f64 / keys.len() as f64;
            assert!(share <= limit, "{n}+1 members: moved {share:.4} > {limit:.4}");
            assert!(moved > 0);
        }
    }

    #[test]
    fn removing_a_member_moves_only_the_keys_it_owned() {
        let keys = key_hashes(100_000);
        let all = members(10);
        let before = Ring::new(&all, DEFAULT_VNODES);
        let gone = &all[4];
        let rest: Vec<Member> = all.iter().filter(|m| *m != gone).cloned().collect();
        let after = Ring::new(&rest, DEFAULT_VNODES);
        for k in &keys {
            let (a, b) = (before.owner(*k).unwrap(), after.owner(*k).unwrap());
            if a != gone {
                assert_eq!(a, b, "a key not owned by the removed member moved");
            } else {
                assert_ne!(b, gone);
            }
        }
    }

    #[test]
    fn member_order_and_duplicates_do_not_change_the_ring() {
        let mut m = members(7);
        let a = Ring::new(&m, 50);
        m.reverse();
        m.push(m[0].clone());
        let b = Ring::new(&m, 50);
        assert_eq!((a.points, a.members), (b.points, b.members));
    }

    #[test]
    fn collisions_go_to_the_member_that_sorts_first() {
        // Every point of every member at the same two hashes: a total collision.
        let m = members(3);
        let mut reversed = m.clone();
        reversed.reverse();
        let ring = Ring::build(&reversed, 2, &mut collide);
        assert_eq!(ring.points(), 2);
        assert_eq!(ring.owner(50), Some(&m[0]));
        assert_eq!(ring.owner(150), Some(&m[0]));
        assert_eq!(ring.owner(250), Some(&m[0]), "wraps to the first point");
    }

    /// Every member's points at the same hashes `100 * (i + 1)`: a total collision.
    fn collide(_: &Member, vnodes: u32, out: &mut Vec<u64>) {
        out.extend((0..vnodes).map(|i| 100 * (i as u64 + 1)));
    }

    /// Points from a tiny hash space, so that collisions between members are common.
    fn crowded(member: &Member, vnodes: u32, out: &mut Vec<u64>) {
        let m = xxh64(member.as_str().as_bytes());
        out.extend((0..vnodes).map(|i| (m ^ i as u64).wrapping_mul(0x9E37_79B9) % 64));
    }

    fn same(a: &Ring, b: &Ring) -> bool {
        a.points == b.points && a.members == b.members && a.vnodes == b.vnodes
    }

    /// Deriving a ring from the last one gives, point for point, the ring built from scratch:
    /// members joining, leaving, both at once, all replaced, none left, another vnodes; with real
    /// hashes and with a crowded hash space where most points collide.
    #[test]
    fn a_rebuilt_ring_equals_a_new_one() {
        let pool = members(40);
        // A small deterministic generator (xorshift), so failures reproduce.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for points_of in [member_points as fn(&Member, u32, &mut Vec<u64>), crowded, collide] {
            let mut ring = Ring::build(&[], 20, &mut { points_of });
            for step in 0..300 {
                let chosen: Vec<Member> = match step % 25 {
                    0 => Vec::new(),
                    1 => pool.clone(),
                    _ => {
                        let mask = next();
                        let keep = 1 + next() % 3; // 1/3, 1/2 or all of the pool's candidates
                        pool.iter()
                            .enumerate()
                            .filter(|(i, _)| mask >> (i % 64) & 1 == 1 && next() % keep == 0)
                            .map(|(_, m)| m.clone())
                            .collect()
                    }
                };
                let vnodes = if step % 50 == 49 { 7 } else { 20 };
                let mut shuffled = chosen.clone();
                shuffled.reverse();
                let rebuilt = ring.rebuilt_with(&shuffled, vnodes, &mut { points_of });
                let fresh = Ring::build(&chosen, vnodes, &mut { points_of });
                assert!(same(&rebuilt, &fresh), "step {step}: {} members", chosen.len());
                for h in (0..200u64).chain((0..200).map(|_| next())) {
                    assert_eq!(rebuilt.owner(h), fresh.owner(h));
                }
                ring = rebuilt;
            }
        }
    }

    /// The ring the filter derives after one member joins owns every key as consul-sync's fresh
    /// ring does, at the default vnodes.
    #[test]
    fn one_member_joining_or_leaving_is_a_merge() {
        let all = members(101);
        let before = Ring::new(&all[..100], DEFAULT_VNODES);
        let joined = before.rebuilt(&all, DEFAULT_VNODES);
        assert!(same(&joined, &Ring::new(&all, DEFAULT_VNODES)));
        let left = joined.rebuilt(&all[1..], DEFAULT_VNODES);
        assert!(same(&left, &Ring::new(&all[1..], DEFAULT_VNODES)));
        assert_eq!(left.points(), 100 * DEFAULT_VNODES as usize);
    }

    #[test]
    fn vnodes_are_validated() {
        assert!(validate_vnodes(0).unwrap_err().contains("expected 1 to 10000"));
        assert!(validate_vnodes(10_001).is_err());
        assert_eq!(validate_vnodes(1), Ok(1));
        assert_eq!(Ring::new(&members(2), 3).points(), 6);
    }
}
