//! Golden vectors: the owners the ring gives, pinned, and checked alike natively and on wasm32
//! (`cargo test --target wasm32-unknown-unknown --test golden`, run by wasm-bindgen-test under
//! Node). The filter (wasm) and consul-sync (native) must place every group on the same member,
//! and an upgrade must not move groups: a changed vector means every user's groups would move.
//!
//! Regenerate only on purpose: `GOLDEN_REGENERATE=1 cargo test --test golden`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use dynamic_sharding::grouping_key::GroupingKey;
use dynamic_sharding::members::{Member, MemberList};
use dynamic_sharding::ring::{xxh64, Ring};
use serde_json::{json, Value};

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const VECTORS: &str = include_str!("golden_vectors.json");

const MEMBER_SETS: &[&[&str]] = &[
    &["127.0.0.1:9091", "127.0.0.1:9092", "127.0.0.1:9093"],
    &[
        "pushgw-a.example:9091",
        "pushgw-b.example:9091",
        "[2001:db8::1]:9091",
        "10.1.2.3:80",
        "pgw:1",
    ],
    &["only:1"],
];

const PATHS: &[&str] = &[
    "/metrics/job/j",
    "/metrics/job/j/a/1",
    "/metrics/job/j/b/2/a/1",
    "/metrics/job/node_exporter/instance/host-17",
    "/metrics/job@base64/YmFja3Vw/instance@base64/L3Zhci9kYXRh",
    "/metrics/job/%E2%9C%93/x/y",
    "/metrics/job/nightly/env/prod/region/eu-west-1/shard/42",
];

fn compute() -> Value {
    let xxh: Vec<Value> = ["", "a", "abc", "dynamic-sharding"]
        .iter()
        .map(|s| json!({"input": s, "xxh64": format!("{:016x}", xxh64(s.as_bytes()))}))
        .collect();
    let mut cases = Vec::new();
    for members in MEMBER_SETS {
        for vnodes in [1u32, 500, 2000] {
            let list = MemberList::new(0, members).unwrap();
            let ring = Ring::new(&list.members, vnodes);
            let owners: Vec<Value> = PATHS
                .iter()
                .map(|p| {
                    let key = GroupingKey::from_path(p).unwrap();
                    json!({"path": p, "key_hash": format!("{:016x}", key.hash()), "owner": ring.owner(key.hash()).unwrap().as_str()})
                })
                .collect();
            cases.push(
                json!({"members": members, "vnodes": vnodes, "points": ring.points(), "owners": owners}),
            );
        }
    }
    json!({"xxh64": xxh, "cases": cases})
}

#[test]
fn xxh64_matches_the_reference_implementation() {
    // Published XXH64 values (seed 0), independent of this crate.
    assert_eq!(xxh64(b""), 0xef46_db37_51d8_e999);
    assert_eq!(xxh64(b"a"), 0xd24e_c4f1_a98c_6e5b);
    assert_eq!(xxh64(b"abc"), 0x44bc_2cf5_ad77_0999);
}

#[test]
fn owners_match_the_golden_vectors() {
    let computed = compute();
    #[cfg(not(target_arch = "wasm32"))]
    if std::env::var_os("GOLDEN_REGENERATE").is_some() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden_vectors.json");
        std::fs::write(path, serde_json::to_string_pretty(&computed).unwrap() + "\n").unwrap();
        return;
    }
    let pinned: Value = serde_json::from_str(VECTORS).unwrap();
    let (pinned_cases, computed_cases) = (
        pinned["cases"].as_array().unwrap(),
        computed["cases"].as_array().unwrap(),
    );
    assert_eq!(pinned_cases.len(), computed_cases.len());
    for (p, c) in pinned_cases.iter().zip(computed_cases) {
        assert_eq!(
            p, c,
            "ring of {} with {} vnodes differs",
            p["members"], p["vnodes"]
        );
    }
    assert_eq!(pinned["xxh64"], computed["xxh64"]);
}

/// A list whose slots all have a standby, and whose first slot was promoted (served at its
/// standby), places every group on the same slot as the pinned vectors: the ring hashes slot
/// names only, so standbys and promotions move no group.
#[test]
fn slots_with_standbys_and_promotions_keep_the_golden_owners() {
    let pinned: Value = serde_json::from_str(VECTORS).unwrap();
    for case in pinned["cases"].as_array().unwrap() {
        let members: Vec<&str> = case["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        let standbys: Vec<String> = (0..members.len())
            .map(|i| format!("standby-{i}.example:9091"))
            .collect();
        let list = MemberList::new(1, &members)
            .and_then(|l| {
                l.with_slots(members.iter().zip(&standbys).enumerate().map(|(i, (m, s))| {
                    if i == 0 {
                        (*m, s.as_str(), Some(*m))
                    } else {
                        (*m, *m, Some(s.as_str()))
                    }
                }))
            })
            .unwrap();
        let ring = Ring::new(&list.members, case["vnodes"].as_u64().unwrap() as u32);
        for owner in case["owners"].as_array().unwrap() {
            let key = GroupingKey::from_path(owner["path"].as_str().unwrap()).unwrap();
            let slot = ring.owner(key.hash()).unwrap();
            assert_eq!(slot.as_str(), owner["owner"], "{}", owner["path"]);
            let placed = list.placement(slot);
            let expected_active = if *slot == Member::parse(members[0]).unwrap() {
                "standby-0.example:9091".to_owned()
            } else {
                slot.to_string()
            };
            assert_eq!(placed.active.as_str(), expected_active);
        }
    }
}
