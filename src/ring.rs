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
use std::hash::Hasher;
use twox_hash::XxHash64;

/// Points per member unless configured: σ/μ of the load is about 1/√500 ≈ 4.5%.
pub const DEFAULT_VNODES: u32 = 500;
/// Accepted range of `vnodes`.
pub const MIN_VNODES: u32 = 1;
pub const MAX_VNODES: u32 = 10_000;

/// XXH64 with seed 0, the hash of keys and points.
pub fn xxh64(bytes: &[u8]) -> u64 {
    let mut h = XxHash64::with_seed(0);
    h.write(bytes);
    h.finish()
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

/// An immutable ring. Build a new one when the members change.
#[derive(Clone, Debug, Default)]
pub struct Ring {
    /// Sorted by hash; the `u32` indexes `members`.
    points: Vec<(u64, u32)>,
    members: Vec<Member>,
}

impl Ring {
    /// Builds the ring of `members` (any order, duplicates ignored) with `vnodes` points each.
    /// `vnodes` outside 1..=10,000 is clamped; validate configuration with [`validate_vnodes`].
    pub fn new(members: &[Member], vnodes: u32) -> Ring {
        let mut buf = Vec::with_capacity(64);
        Ring::with_point_hash(members, vnodes, |member, i| {
            buf.clear();
            push_len_prefixed(&mut buf, member.as_str().as_bytes());
            buf.extend_from_slice(&i.to_be_bytes());
            xxh64(&buf)
        })
    }

    /// The ring with an injected point hash, so tests can place points where they want them.
    fn with_point_hash(
        members: &[Member],
        vnodes: u32,
        mut point_hash: impl FnMut(&Member, u32) -> u64,
    ) -> Ring {
        let vnodes = vnodes.clamp(MIN_VNODES, MAX_VNODES);
        let mut members = members.to_vec();
        members.sort();
        members.dedup();
        let mut points = Vec::with_capacity(members.len() * vnodes as usize);
        for (idx, member) in members.iter().enumerate() {
            for i in 0..vnodes {
                points.push((point_hash(member, i), idx as u32));
            }
        }
        // Sorting by (hash, member index) then keeping the first of equal hashes gives collisions
        // to the member that sorts first, whatever order the caller used.
        points.sort_unstable();
        points.dedup_by_key(|p| p.0);
        Ring { points, members }
    }

    /// The owner of a key hash, or `None` for an empty ring.
    pub fn owner(&self, hash: u64) -> Option<&Member> {
        if self.points.is_empty() {
            return None;
        }
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

    /// Number of points, after collisions were resolved.
    pub fn points(&self) -> usize {
        self.points.len()
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
        let last = ring.points.last().unwrap();
        let first = ring.points.first().unwrap();
        assert_eq!(ring.owner(last.0 + 1), ring.members.get(first.1 as usize));
        assert_eq!(ring.owner(u64::MAX), ring.members.get(first.1 as usize));
        assert_eq!(ring.owner(first.0), ring.members.get(first.1 as usize));
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
        assert_eq!(a.points, b.points);
        assert_eq!(a.members, b.members);
    }

    #[test]
    fn collisions_go_to_the_member_that_sorts_first() {
        // Every point of every member at the same two hashes: a total collision.
        let m = members(3);
        let mut reversed = m.clone();
        reversed.reverse();
        let ring = Ring::with_point_hash(&reversed, 2, |_, i| 100 * (i as u64 + 1));
        assert_eq!(ring.points(), 2);
        assert_eq!(ring.owner(50), Some(&m[0]));
        assert_eq!(ring.owner(150), Some(&m[0]));
        assert_eq!(ring.owner(250), Some(&m[0]), "wraps to the first point");
    }

    #[test]
    fn vnodes_are_validated() {
        assert!(validate_vnodes(0).unwrap_err().contains("expected 1 to 10000"));
        assert!(validate_vnodes(10_001).is_err());
        assert_eq!(validate_vnodes(1), Ok(1));
        assert_eq!(Ring::new(&members(2), 3).points(), 6);
    }
}
