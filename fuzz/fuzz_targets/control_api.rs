//! The whole control-API handler over an in-memory store, on a sequence of requests. Properties:
//! - a refused update (any status but 200) leaves the stored list and the generation untouched;
//! - an accepted update puts exactly the list sent in force (members, draining, absent, slots),
//!   at a version never lower than before;
//! - a wrong or missing token is always 401, whatever the body;
//! - the owner on the ring of the stored list is always one of its members, served at an address
//!   of the list, with a standby (if any) that is another address;
//! - no address of the stored list is there twice (serving two slots, one slot twice, or also
//!   absent).
#![no_main]

use dynamic_sharding::control::handle;
use dynamic_sharding::members::MemberList;
use dynamic_sharding::ring::Ring;
use dynamic_sharding::store::{load_generation, load_members, MemoryStore, SharedStore, MEMBERS_KEY};
use libfuzzer_sys::fuzz_target;

const TOKENS: [&str; 2] = ["new-token", "old-token"];

fuzz_target!(|data: &[u8]| {
    let tokens: Vec<String> = TOKENS.iter().map(|t| (*t).to_owned()).collect();
    let Ok(bootstrap) = MemberList::new(0, &["boot:9091"]) else {
        return;
    };
    let mut store = MemoryStore::default();
    // Requests are separated by 0xFF, which valid JSON never holds; the first byte of each
    // picks the method and the credentials, the rest is the body.
    for request in data.split(|b| *b == 0xFF).take(16) {
        let Some((&selector, body)) = request.split_first() else {
            continue;
        };
        let method = ["PUT", "PUT", "PUT", "GET", "DELETE", "POST"][usize::from(selector % 6)];
        let auth = match (selector / 6) % 5 {
            0 | 1 => Some("Bearer new-token"),
            2 => Some("Bearer old-token"),
            3 => None,
            _ => Some("Bearer old-token "),
        };
        let before = store.get(MEMBERS_KEY).map(|(v, _)| v).ok().flatten();
        let before_generation = load_generation(&store).unwrap_or(u64::MAX);
        let before_list = load_members(&store)
            .ok()
            .flatten()
            .map(|(l, _)| l)
            .unwrap_or_else(|| bootstrap.clone());
        let (reply, _) = handle(method, auth, body, &tokens, &bootstrap, &mut store);
        let after = store.get(MEMBERS_KEY).map(|(v, _)| v).ok().flatten();
        let generation = load_generation(&store).unwrap_or(u64::MAX);
        if auth.is_none() && method == "PUT" {
            assert_eq!(reply.status, 401);
        }
        if reply.status != 200 || method != "PUT" {
            assert_eq!(
                after, before,
                "{method} answered {} but changed the list",
                reply.status
            );
            assert_eq!(generation, before_generation);
        } else {
            let Ok(sent) = MemberList::from_json(body) else {
                panic!("200 for a body MemberList::from_json refuses: {}", reply.body);
            };
            // The list in force: an update equal to the bootstrap list at version 0 is a 200
            // that stores nothing.
            let now = load_members(&store)
                .ok()
                .flatten()
                .map(|(l, _)| l)
                .unwrap_or_else(|| bootstrap.clone());
            assert!(now.same_members(&sent), "in force {now:?} for sent {sent:?}");
            assert!(now.version >= before_list.version);
            if !before_list.same_members(&sent) {
                assert!(
                    sent.version > before_list.version,
                    "a different list at a version not above"
                );
                assert!(generation > before_generation);
            }
        }
        let list = load_members(&store)
            .ok()
            .flatten()
            .map(|(l, _)| l)
            .unwrap_or_else(|| bootstrap.clone());
        let ring = Ring::new(&list.members, 16);
        let hash = dynamic_sharding::ring::xxh64(body);
        match ring.owner(hash) {
            Some(owner) => {
                assert!(list.members.contains(owner), "owner {owner} is not a member");
                let placed = list.placement(owner);
                assert!(
                    list.addresses().any(|a| a == placed.active),
                    "{placed} outside the list"
                );
                assert_ne!(placed.standby, Some(placed.active), "{placed}");
            }
            None => assert!(list.members.is_empty(), "no owner on a ring of members"),
        }
        let mut addresses: Vec<_> = list.addresses().chain(&list.absent).collect();
        let all = addresses.len();
        addresses.sort();
        addresses.dedup();
        assert_eq!(addresses.len(), all, "an address twice in {list:?}");
    }
});
