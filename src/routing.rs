//! What a request on a data listener gets: the decision, free of host calls.
//!
//! Redirect mode answers pushes with `307` to the owner; proxy mode names the owner for Envoy to
//! route to. Both answer lookups (`GET`), refuse paths pushgateway would refuse, and say `503`
//! when no member is known. A `DELETE` that reaches its owner also names every other pushgateway
//! that may hold a copy of the group (left there by a change of the member list), so the filter
//! deletes those copies before the client gets its answer.

use crate::config::Mode;
use crate::grouping_key::{GroupingKey, PathError};
use crate::members::{Member, MemberList};
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
    /// Proxy mode: route to this member.
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

/// A decision, plus the pushgateways a `DELETE` must also reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub decision: Decision,
    /// Where to send the same `DELETE` before the decision is carried out: empty unless the
    /// request is a `DELETE` of a valid group that has an owner.
    pub fanout: Vec<Member>,
}

/// Decides for `method` and the request target `path_and_query` (as received) on a data listener.
pub fn decide(mode: Mode, method: &str, path_and_query: &str, ring: &Ring) -> Decision {
    decide_with_owner(mode, method, path_and_query, ring).0
}

/// Like [`decide`], and for a `DELETE` that goes to its owner (307 or routed), the other
/// pushgateways of `list` that may hold the group: see [`delete_fanout_targets`]. `ring` must be
/// built from `list.members`.
pub fn plan(mode: Mode, method: &str, path_and_query: &str, ring: &Ring, list: &MemberList) -> Plan {
    let (decision, owner) = decide_with_owner(mode, method, path_and_query, ring);
    let fanout = match owner {
        Some(owner) if method == "DELETE" => delete_fanout_targets(list, owner),
        _ => Vec::new(),
    };
    Plan { decision, fanout }
}

/// Every pushgateway other than `owner` that may hold a copy of a group: the other ring members
/// (one may have owned the group before the list changed) and the draining ones (out of the ring,
/// still holding what was pushed to them).
pub fn delete_fanout_targets(list: &MemberList, owner: &Member) -> Vec<Member> {
    list.holders().filter(|m| *m != owner).cloned().collect()
}

/// The decision, and the owner when the request is a push (`PUT`, `POST`, `DELETE`) sent to it.
fn decide_with_owner<'r>(
    mode: Mode,
    method: &str,
    path_and_query: &str,
    ring: &'r Ring,
) -> (Decision, Option<&'r Member>) {
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
    let Some(owner) = ring.owner(hash) else {
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
    if is_lookup {
        // The Go original's lookup answer, kept byte for byte so scripts that parse it still work.
        let body = if method == "HEAD" {
            String::new()
        } else {
            format!("nextUrl:http://{}{path_and_query}", owner.as_str())
        };
        return reply(
            Reply::text(200, body).with_header("x-sharding-owner", owner.as_str()),
            Outcome::Lookup,
        );
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
    (decision, Some(owner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::members::MemberList;

    fn ring(members: &[&str]) -> Ring {
        Ring::new(&MemberList::new(1, members).unwrap().members, 500)
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
        let owner = r.owner(key.hash()).unwrap();
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
        let rep = reply(decide(Mode::Proxy, "PUT", "/metrics/job/j", &Ring::default()));
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
            assert_eq!(p.decision, decide(mode, "DELETE", path, &r), "{mode:?}");
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
}
