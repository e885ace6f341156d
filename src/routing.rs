//! What a request on a data listener gets: the decision, free of host calls.
//!
//! The ring names the slot that owns a group; the slot's active address is where its writes go.
//! Redirect mode answers pushes with `307` to it; proxy mode names it for Envoy to route to. Both
//! answer lookups (`GET`), refuse paths pushgateway would refuse, and say `503` when no member is
//! known. A write (`PUT`, `POST`, `DELETE`) to a slot with a standby names the standby too, so the
//! filter sends it the same write before the client gets its answer. A `DELETE` that reaches its
//! owner also names every address of every other slot that may hold a copy of the group (left
//! there by a change of the member list), so the filter deletes those copies too.

use crate::config::Mode;
use crate::grouping_key::{GroupingKey, PathError};
use crate::members::{Member, MemberList, Placement};
use crate::request::header_map::ReplyHeaders;
use crate::ring::Ring;

/// Seconds a client is asked to wait when no member is known: about one health-check interval.
pub const RETRY_AFTER_SECONDS: u32 = 5;

const ALLOWED_METHODS: &str = "GET, HEAD, PUT, POST, DELETE";

/// A reply the filter sends itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: ReplyHeaders,
    pub body: String,
}

impl Reply {
    pub fn text(status: u32, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: ReplyHeaders::joined("content-type", &["text/plain; charset=utf-8"]),
            body: body.into(),
        }
    }

    pub fn json(status: u32, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: ReplyHeaders::joined("content-type", &["application/json"]),
            body: body.into(),
        }
    }

    fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push(name, value);
        self
    }
}

/// What the filter does with a data request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not a push path: on to the route.
    PassThrough,
    /// Answer with this reply. `outcome` is what to count.
    Reply { reply: Reply, outcome: Outcome },
    /// Proxy mode: route to this address (the owner slot's active).
    Route { owner: Member },
}

/// What a decision counts as, one counter each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Redirect,
    Lookup,
    BadRequest,
    NoMember,
    MethodNotAllowed,
}

/// A decision, plus the pushgateways a write must also reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub decision: Decision,
    /// Where to send the same `DELETE` before the decision is carried out: empty unless the
    /// request is a `DELETE` of a valid group that has an owner.
    pub fanout: Vec<Member>,
    /// The owner slot's standby, which gets the same write: `None` unless the request is a write
    /// (`PUT`, `POST`, `DELETE`) of a valid group to a slot that has a standby.
    pub replica: Option<Replica>,
}

/// Where a write is replicated: the standby's address, and the slot it stands by for (for logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    pub slot: Member,
    pub standby: Member,
}

/// Decides for `method` and the request target `path_and_query` (as received) on a data listener.
/// `ring` must be built from `list.members`.
pub fn decide(mode: Mode, method: &str, path_and_query: &str, ring: &Ring, list: &MemberList) -> Decision {
    decide_with_owner(mode, method, path_and_query, ring, list).0
}

/// Like [`decide`], and for a write that goes to its owner (307 or routed): the owner slot's
/// standby, and for a `DELETE` the other addresses of `list` that may hold the group (see
/// [`delete_fanout_targets`]).
pub fn plan(mode: Mode, method: &str, path_and_query: &str, ring: &Ring, list: &MemberList) -> Plan {
    let (decision, owner) = decide_with_owner(mode, method, path_and_query, ring, list);
    let Some(owner) = owner else {
        return Plan {
            decision,
            fanout: Vec::new(),
            replica: None,
        };
    };
    let fanout = if method == "DELETE" {
        delete_fanout_targets(list, owner.slot)
    } else {
        Vec::new()
    };
    let replica = owner.standby.map(|standby| Replica {
        slot: owner.slot.clone(),
        standby: standby.clone(),
    });
    Plan {
        decision,
        fanout,
        replica,
    }
}

/// Every address other than the owner slot's that may hold a copy of a group: the active and
/// standby of each other ring slot (one may have owned the group before the list changed) and of
/// each draining one (out of the ring, still holding what was pushed to it). The owner's standby
/// is not among them: it gets the `DELETE` as the owner's replica.
pub fn delete_fanout_targets(list: &MemberList, owner: &Member) -> Vec<Member> {
    list.holders()
        .filter(|slot| *slot != owner)
        .flat_map(|slot| {
            let p = list.placement(slot);
            std::iter::once(p.active).chain(p.standby)
        })
        .cloned()
        .collect()
}

/// The decision, and where the owner slot is served when the request is a write (`PUT`, `POST`,
/// `DELETE`) sent to it.
fn decide_with_owner<'r>(
    mode: Mode,
    method: &str,
    path_and_query: &str,
    ring: &'r Ring,
    list: &'r MemberList,
) -> (Decision, Option<Placement<'r>>) {
    let reply = |reply, outcome| (Decision::Reply { reply, outcome }, None);
    // Only the rare answers name the path alone.
    let path = || path_and_query.split('?').next().unwrap_or(path_and_query);
    let hash = match GroupingKey::hash_target(path_and_query) {
        Ok(hash) => hash,
        Err(PathError::NotPushPath) => return (Decision::PassThrough, None),
        Err(PathError::Invalid(why)) => {
            let path = path();
            return reply(
                Reply::text(400, format!("bad push path {path:?}: {why}\n")),
                Outcome::BadRequest,
            );
        }
    };
    let is_lookup = matches!(method, "GET" | "HEAD");
    if !is_lookup && !matches!(method, "PUT" | "POST" | "DELETE") {
        return reply(
            Reply::text(
                405,
                format!("method {method} is not allowed on a push path; allowed: {ALLOWED_METHODS}\n"),
            )
            .with_header("allow", ALLOWED_METHODS),
            Outcome::MethodNotAllowed,
        );
    }
    let Some(slot) = ring.owner(hash) else {
        // Rare: the key is built only to name it.
        let path = path();
        let group = GroupingKey::from_path(path).map_or_else(|_| format!("{path:?}"), |key| key.to_string());
        return reply(
            Reply::text(
                503,
                format!("no healthy pushgateway is known (the member list is empty); group {group} cannot be placed\n"),
            )
            .with_header("retry-after", &RETRY_AFTER_SECONDS.to_string()),
            Outcome::NoMember,
        );
    };
    // The one place the filter turns the owner slot into addresses.
    let placement = list.placement(slot);
    let owner = placement.active;
    if is_lookup {
        // The Go original's lookup answer, kept byte for byte so scripts that parse it still work.
        let body = if method == "HEAD" {
            String::new()
        } else {
            format!("nextUrl:http://{}{path_and_query}", owner.as_str())
        };
        let mut found = Reply::text(200, body).with_header("x-sharding-owner", owner.as_str());
        if slot != owner {
            found = found.with_header("x-sharding-slot", slot.as_str());
        }
        if let Some(standby) = placement.standby {
            found = found.with_header("x-sharding-standby", standby.as_str());
        }
        return reply(found, Outcome::Lookup);
    }
    let decision = match mode {
        Mode::Proxy => Decision::Route { owner: owner.clone() },
        Mode::Redirect | Mode::Control => Decision::Reply {
            reply: Reply {
                status: 307,
                // Written once, into the encoded map: this runs for every push.
                headers: ReplyHeaders::joined("location", &["http://", owner.as_str(), path_and_query]),
                body: String::new(),
            },
            outcome: Outcome::Redirect,
        },
    };
    (decision, Some(placement))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::members::MemberList;

    /// A list of `members` with the ring built from it.
    struct Routed {
        ring: Ring,
        list: MemberList,
    }

    fn ring(members: &[&str]) -> Routed {
        routed(MemberList::new(1, members).unwrap())
    }

    fn routed(list: MemberList) -> Routed {
        Routed {
            ring: Ring::new(&list.members, 500),
            list,
        }
    }

    fn decide(mode: Mode, method: &str, path: &str, r: &Routed) -> Decision {
        super::decide(mode, method, path, &r.ring, &r.list)
    }

    fn reply(d: Decision) -> Reply {
        match d {
            Decision::Reply { reply, .. } => reply,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
        r.headers.get(name)
    }

    #[test]
    fn pushes_are_redirected_to_the_owner_with_path_and_query() {
        let r = ring(&["a:1", "b:2", "c:3"]);
        let key = GroupingKey::from_path("/metrics/job/j/x/1").unwrap();
        let owner = r.ring.owner(key.hash()).unwrap();
        for method in ["PUT", "POST", "DELETE"] {
            let rep = reply(decide(Mode::Redirect, method, "/metrics/job/j/x/1?a=b", &r));
            assert_eq!(rep.status, 307);
            assert_eq!(
                header(&rep, "location"),
                Some(format!("http://{owner}/metrics/job/j/x/1?a=b").as_str())
            );
        }
        // Another spelling of the same group: same owner, own path kept.
        let rep = reply(decide(
            Mode::Redirect,
            "PUT",
            "/metrics/job@base64/ag/x@base64/MQ",
            &r,
        ));
        assert_eq!(
            header(&rep, "location"),
            Some(format!("http://{owner}/metrics/job@base64/ag/x@base64/MQ").as_str())
        );
    }

    #[test]
    fn get_is_the_go_originals_lookup() {
        let r = ring(&["a:1"]);
        let rep = reply(decide(Mode::Redirect, "GET", "/metrics/job/j", &r));
        assert_eq!(
            (rep.status, rep.body.as_str()),
            (200, "nextUrl:http://a:1/metrics/job/j")
        );
        let rep = reply(decide(Mode::Proxy, "HEAD", "/metrics/job/j", &r));
        assert_eq!((rep.status, rep.body.as_str()), (200, ""));
    }

    #[test]
    fn proxy_mode_routes_to_the_owner() {
        let r = ring(&["a:1", "b:2", "c:3"]);
        let owner = r
            .ring
            .owner(GroupingKey::from_path("/metrics/job/j").unwrap().hash())
            .unwrap()
            .clone();
        assert_eq!(
            decide(Mode::Proxy, "PUT", "/metrics/job/j/", &r),
            Decision::Route { owner }
        );
    }

    #[test]
    fn errors() {
        let r = ring(&["a:1"]);
        let rep = reply(decide(Mode::Redirect, "PUT", "/metrics/job/j/a", &r));
        assert_eq!(rep.status, 400);
        assert!(rep.body.contains("odd number of components"), "{}", rep.body);
        let rep = reply(decide(Mode::Redirect, "PATCH", "/metrics/job/j", &r));
        assert_eq!((rep.status, header(&rep, "allow")), (405, Some(ALLOWED_METHODS)));
        let rep = reply(decide(Mode::Proxy, "PUT", "/metrics/job/j", &ring(&[])));
        assert_eq!((rep.status, header(&rep, "retry-after")), (503, Some("5")));
        assert!(rep.body.contains("no healthy pushgateway is known"));
        assert_eq!(
            decide(Mode::Redirect, "PUT", "/api/v1/metrics", &r),
            Decision::PassThrough
        );
    }

    fn list(members: &[&str], draining: &[&str]) -> MemberList {
        MemberList::new(1, members)
            .and_then(|l| l.with_draining(draining))
            .unwrap()
    }

    fn names(members: &[Member]) -> Vec<&str> {
        members.iter().map(Member::as_str).collect()
    }

    #[test]
    fn fanout_targets_are_every_holder_but_the_owner() {
        let l = list(&["a:1", "b:2", "c:3"], &["d:4", "e:5"]);
        let owner = Member::parse("b:2").unwrap();
        assert_eq!(
            names(&delete_fanout_targets(&l, &owner)),
            ["a:1", "c:3", "d:4", "e:5"]
        );
        // A single member and nobody draining: no copy can be elsewhere.
        let l = list(&["a:1"], &[]);
        assert!(delete_fanout_targets(&l, &Member::parse("a:1").unwrap()).is_empty());
    }

    #[test]
    fn only_a_delete_that_reaches_its_owner_fans_out() {
        let l = list(&["a:1", "b:2", "c:3"], &["d:4"]);
        let r = Ring::new(&l.members, 500);
        let path = "/metrics/job/j/x/1?q=1";
        let owner = r
            .owner(GroupingKey::from_path("/metrics/job/j/x/1").unwrap().hash())
            .unwrap()
            .clone();
        let others: Vec<&str> = ["a:1", "b:2", "c:3", "d:4"]
            .into_iter()
            .filter(|m| *m != owner.as_str())
            .collect();
        for mode in [Mode::Redirect, Mode::Proxy] {
            let p = plan(mode, "DELETE", path, &r, &l);
            assert_eq!(names(&p.fanout), others, "{mode:?}");
            assert_eq!(
                p.decision,
                super::decide(mode, "DELETE", path, &r, &l),
                "{mode:?}"
            );
            for method in ["PUT", "POST", "GET", "HEAD", "PATCH"] {
                assert!(
                    plan(mode, method, path, &r, &l).fanout.is_empty(),
                    "{mode:?} {method}"
                );
            }
            // Refused, foreign or unplaceable requests reach no pushgateway at all.
            assert!(plan(mode, "DELETE", "/metrics/job/j/x", &r, &l).fanout.is_empty());
            assert!(plan(mode, "DELETE", "/api/v1/metrics", &r, &l).fanout.is_empty());
            let nobody = list(&[], &["d:4"]);
            let p = plan(mode, "DELETE", path, &Ring::default(), &nobody);
            assert_eq!((reply(p.decision).status, p.fanout.len()), (503, 0));
        }
    }

    // ---- slots: a slot served elsewhere than at its name, a standby ----

    /// Three slots: `a:1` promoted (served at `a2:1`, `a:1` its standby), `b:2` with a standby
    /// `b2:2`, `c:3` as before; `d:4` draining with a standby `d2:4`.
    fn with_slots() -> Routed {
        routed(
            MemberList::new(1, &["a:1", "b:2", "c:3"])
                .and_then(|l| l.with_draining(&["d:4"]))
                .and_then(|l| {
                    l.with_slots([
                        ("a:1", "a2:1", Some("a:1")),
                        ("b:2", "b:2", Some("b2:2")),
                        ("d:4", "d:4", Some("d2:4")),
                    ])
                })
                .unwrap(),
        )
    }

    /// A path of a group that slot `slot` owns.
    fn path_of(r: &Routed, slot: &str) -> String {
        (0..10_000)
            .map(|i| format!("/metrics/job/j{i}"))
            .find(|p| {
                r.ring
                    .owner(GroupingKey::from_path(p).unwrap().hash())
                    .unwrap()
                    .as_str()
                    == slot
            })
            .unwrap()
    }

    #[test]
    fn writes_go_to_the_owner_slots_active() {
        let r = with_slots();
        for (slot, active) in [("a:1", "a2:1"), ("b:2", "b:2"), ("c:3", "c:3")] {
            let path = path_of(&r, slot);
            for method in ["PUT", "POST", "DELETE"] {
                let rep = reply(decide(Mode::Redirect, method, &format!("{path}?x=1"), &r));
                assert_eq!(
                    header(&rep, "location"),
                    Some(format!("http://{active}{path}?x=1").as_str()),
                    "{slot} {method}"
                );
                assert_eq!(
                    decide(Mode::Proxy, method, &path, &r),
                    Decision::Route {
                        owner: Member::parse(active).unwrap()
                    },
                    "{slot} {method}"
                );
            }
        }
    }

    #[test]
    fn slots_do_not_move_groups() {
        // The same names with and without slots: every group is owned by the same slot.
        let plain = ring(&["a:1", "b:2", "c:3"]);
        let slotted = with_slots();
        for i in 0..2_000 {
            let hash = GroupingKey::from_path(&format!("/metrics/job/j{i}"))
                .unwrap()
                .hash();
            assert_eq!(plain.ring.owner(hash), slotted.ring.owner(hash));
        }
    }

    #[test]
    fn a_lookup_names_the_active_and_the_slot_where_they_differ() {
        let r = with_slots();
        let path = path_of(&r, "a:1");
        let rep = reply(decide(Mode::Redirect, "GET", &path, &r));
        assert_eq!(rep.body, format!("nextUrl:http://a2:1{path}"));
        assert_eq!(header(&rep, "x-sharding-owner"), Some("a2:1"));
        assert_eq!(header(&rep, "x-sharding-slot"), Some("a:1"));
        assert_eq!(header(&rep, "x-sharding-standby"), Some("a:1"));
        let path = path_of(&r, "b:2");
        let rep = reply(decide(Mode::Proxy, "HEAD", &path, &r));
        assert_eq!(header(&rep, "x-sharding-owner"), Some("b:2"));
        assert_eq!(header(&rep, "x-sharding-slot"), None);
        assert_eq!(header(&rep, "x-sharding-standby"), Some("b2:2"));
        let path = path_of(&r, "c:3");
        let rep = reply(decide(Mode::Proxy, "GET", &path, &r));
        assert_eq!(
            rep.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            ["content-type", "x-sharding-owner"]
        );
    }

    #[test]
    fn a_write_to_a_slot_with_a_standby_names_it() {
        let r = with_slots();
        for (slot, standby) in [("a:1", Some("a:1")), ("b:2", Some("b2:2")), ("c:3", None)] {
            let path = path_of(&r, slot);
            for mode in [Mode::Redirect, Mode::Proxy] {
                for method in ["PUT", "POST", "DELETE"] {
                    let p = plan(mode, method, &path, &r.ring, &r.list);
                    let expected = standby.map(|s| Replica {
                        slot: Member::parse(slot).unwrap(),
                        standby: Member::parse(s).unwrap(),
                    });
                    assert_eq!(p.replica, expected, "{slot} {mode:?} {method}");
                }
                // Lookups, refusals and foreign paths are not writes.
                for (method, path) in [
                    ("GET", path.as_str()),
                    ("HEAD", path.as_str()),
                    ("PATCH", path.as_str()),
                    ("PUT", "/metrics/job/j/odd"),
                    ("PUT", "/api/v1/metrics"),
                ] {
                    assert_eq!(
                        plan(mode, method, path, &r.ring, &r.list).replica,
                        None,
                        "{method} {path}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_delete_reaches_every_address_of_every_other_slot() {
        let r = with_slots();
        let targets = |slot: &str| {
            let path = path_of(&r, slot);
            let p = plan(Mode::Proxy, "DELETE", &path, &r.ring, &r.list);
            assert_eq!(
                p.fanout,
                delete_fanout_targets(&r.list, &Member::parse(slot).unwrap())
            );
            p.fanout.iter().map(|m| m.to_string()).collect::<Vec<_>>()
        };
        // The owner's standby is not among them: it gets the DELETE as the replica.
        assert_eq!(targets("a:1"), ["b:2", "b2:2", "c:3", "d:4", "d2:4"]);
        assert_eq!(targets("b:2"), ["a2:1", "a:1", "c:3", "d:4", "d2:4"]);
        assert_eq!(targets("c:3"), ["a2:1", "a:1", "b:2", "b2:2", "d:4", "d2:4"]);
    }
}
