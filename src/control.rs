//! The member-list API served on the control listener: `PUT` and `GET /-/sharding/members`.
//!
//! Version rules (consul-sync relies on them; see "Version rules" in docs/reference.md):
//! - Nothing stored yet: the bootstrap list counts as version 0, so any update with a version of
//!   1 or more is taken. A restarted Envoy is therefore healed by the next push of any pusher.
//! - The same members as stored: `200`, nothing changes but a higher version is recorded. Two
//!   pushers that agree never conflict, whatever their versions.
//! - Different members: taken only with a version above the stored one, else `409` with the stored
//!   version. Pushers use the time they observed the list (Unix milliseconds), so the newest
//!   observation wins and a restarted pusher starts above what it sent before.
//!
//! Nothing is stored unless everything was valid; a refused update leaves the list as it was.

use crate::members::{Member, MemberDiff, MemberList, MAX_UPDATE_BYTES};
use crate::routing::Reply;
use crate::store::{bump_generation, load_members, SharedStore, StoreError, MEMBERS_KEY};
use serde_json::json;

pub const MEMBERS_PATH: &str = "/-/sharding/members";

/// What a control request did, for stats and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlOutcome {
    /// An update was stored; the diff and versions are for the info log.
    Accepted { old: MemberList, new: MemberList },
    /// The members were already in force.
    Unchanged,
    /// Refused (bad body, stale version, bad token); the text is for the warn log.
    Rejected(String),
    /// A read, or a path that is not the API.
    Read,
}

/// True when `path_and_query` names the members resource.
pub fn is_control_path(path_and_query: &str) -> bool {
    path_and_query.split('?').next() == Some(MEMBERS_PATH)
}

/// Serves one complete control request.
pub fn handle(
    method: &str,
    authorization: Option<&str>,
    body: &[u8],
    tokens: &[String],
    bootstrap: &MemberList,
    store: &mut dyn SharedStore,
) -> (Reply, ControlOutcome) {
    match method {
        "GET" | "HEAD" => match current(store, bootstrap) {
            Ok((list, _)) => (Reply::json(200, list.to_json()), ControlOutcome::Read),
            Err(e) => internal(e),
        },
        "PUT" => put(authorization, body, tokens, bootstrap, store),
        other => {
            let mut reply = error(
                405,
                format!("method {other} is not allowed on {MEMBERS_PATH}; allowed: GET, PUT"),
            );
            reply.headers.push("allow", "GET, PUT");
            (reply, ControlOutcome::Rejected(format!("method {other}")))
        }
    }
}

fn put(
    authorization: Option<&str>,
    body: &[u8],
    tokens: &[String],
    bootstrap: &MemberList,
    store: &mut dyn SharedStore,
) -> (Reply, ControlOutcome) {
    if let Err((reply, why)) = authorize(authorization, tokens) {
        return (reply, ControlOutcome::Rejected(why));
    }
    if body.len() > MAX_UPDATE_BYTES {
        let why = format!(
            "body is {} bytes; at most {MAX_UPDATE_BYTES} are accepted",
            body.len()
        );
        return (error(413, why.clone()), ControlOutcome::Rejected(why));
    }
    let new = match MemberList::from_json(body) {
        Ok(list) => list,
        Err(why) => return (error(400, why.clone()), ControlOutcome::Rejected(why)),
    };
    // A CAS loop: another worker's control request may store between our read and our write.
    for _ in 0..16 {
        let (old, cas) = match current(store, bootstrap) {
            Ok(v) => v,
            Err(e) => return internal(e),
        };
        let same_members = old.same_members(&new);
        if !same_members && new.version <= old.version {
            let why = format!(
                "version {} is not above the stored version {} and the members differ; send a higher version",
                new.version, old.version
            );
            let body = json!({"error": why, "version": old.version}).to_string();
            return (Reply::json(409, body), ControlOutcome::Rejected(why));
        }
        if same_members && new.version <= old.version {
            return (accepted(&old, false), ControlOutcome::Unchanged);
        }
        match store.set(MEMBERS_KEY, new.to_json().as_bytes(), cas) {
            Ok(()) => {}
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return internal(e),
        }
        if let Err(e) = bump_generation(store) {
            return internal(e);
        }
        let outcome = if same_members {
            ControlOutcome::Unchanged
        } else {
            ControlOutcome::Accepted {
                old,
                new: new.clone(),
            }
        };
        return (accepted(&new, !same_members), outcome);
    }
    internal(StoreError::CasMismatch)
}

/// Checks the bearer token of a request that needs one; the refusal and its reason otherwise.
pub(crate) fn authorize(authorization: Option<&str>, tokens: &[String]) -> Result<(), (Reply, String)> {
    if tokens.is_empty() {
        let why = "no control token is configured: set SHARDING_CONTROL_TOKEN for Envoy (or control_token in the plugin configuration)";
        return Err((unauthorized(why), why.to_owned()));
    }
    let presented = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    if !presented.is_some_and(|p| token_matches(p.as_bytes(), tokens)) {
        let why = "missing or wrong token: send Authorization: Bearer <token>";
        return Err((unauthorized(why), why.to_owned()));
    }
    Ok(())
}

/// The stored list, or the bootstrap list before the first update.
fn current(store: &dyn SharedStore, bootstrap: &MemberList) -> Result<(MemberList, Option<u32>), StoreError> {
    Ok(load_members(store)?.unwrap_or_else(|| (bootstrap.clone(), None)))
}

fn accepted(list: &MemberList, changed: bool) -> Reply {
    Reply::json(
        200,
        json!({"version": list.version, "count": list.len(), "changed": changed}).to_string(),
    )
}

pub(crate) fn error(status: u32, why: String) -> Reply {
    Reply::json(status, json!({ "error": why }).to_string())
}

fn unauthorized(why: &str) -> Reply {
    let mut reply = error(401, why.to_owned());
    reply.headers.push("www-authenticate", "Bearer");
    reply
}

fn internal(e: StoreError) -> (Reply, ControlOutcome) {
    let why = format!("could not store the member list: {e}; the stored list is unchanged");
    (error(500, why.clone()), ControlOutcome::Rejected(why))
}

/// True when `presented` equals one of `tokens`. Every token is compared, each in time that
/// depends only on the lengths, never on where the first differing byte is, so the answer's
/// timing does not lead a guesser byte by byte to a token.
pub fn token_matches(presented: &[u8], tokens: &[String]) -> bool {
    tokens.iter().fold(false, |found, t| {
        found | constant_time_eq(presented, t.as_bytes())
    })
}

fn constant_time_eq(presented: &[u8], token: &[u8]) -> bool {
    let mut diff = presented.len() ^ token.len();
    for (i, p) in presented.iter().enumerate() {
        let t = token.get(i).copied().unwrap_or(0);
        diff |= usize::from(p ^ t);
    }
    std::hint::black_box(diff) == 0
}

/// A log line for an accepted update: versions, counts and what changed.
pub fn describe(old: &MemberList, new: &MemberList) -> String {
    let beside = |what: &str, list: &[Member]| {
        if list.is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = list.iter().map(|m| m.as_str()).collect();
            format!(", {what} [{}]", names.join(","))
        }
    };
    let draining = beside("draining", &new.draining);
    let absent = beside("absent", &new.absent);
    format!(
        "member list version {} -> {}, {} -> {} members, {}{draining}{absent}{}",
        old.version,
        new.version,
        old.len(),
        new.len(),
        MemberDiff::between(&old.members, &new.members),
        describe_slots(old, new)
    )
}

/// The slots of `new` whose addresses differ from `old`'s (a promotion, a standby added or
/// removed), each with its addresses now; empty when none did.
fn describe_slots(old: &MemberList, new: &MemberList) -> String {
    let changed: Vec<String> = new
        .holders()
        .map(|slot| new.placement(slot))
        .filter(|p| {
            let before = old.placement(p.slot);
            (before.active, before.standby) != (p.active, p.standby)
        })
        .map(|p| p.to_string())
        .collect();
    if changed.is_empty() {
        String::new()
    } else {
        format!(", slots now [{}]", changed.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{load_generation, MemoryStore};

    const AUTH: Option<&str> = Some("Bearer t");

    fn tokens() -> Vec<String> {
        vec!["t".to_owned()]
    }

    fn boot() -> MemberList {
        MemberList::new(0, &["boot:1"]).unwrap()
    }

    fn put(store: &mut MemoryStore, body: &str) -> (Reply, ControlOutcome) {
        handle("PUT", AUTH, body.as_bytes(), &tokens(), &boot(), store)
    }

    fn stored(store: &MemoryStore) -> MemberList {
        load_members(store).unwrap().map(|(l, _)| l).unwrap_or_else(boot)
    }

    #[test]
    fn get_shows_bootstrap_then_updates() {
        let mut s = MemoryStore::default();
        let (r, _) = handle("GET", None, b"", &tokens(), &boot(), &mut s);
        assert_eq!(r.body, r#"{"version":0,"members":["boot:1"]}"#);
        put(&mut s, r#"{"version": 3, "members": ["b:1", "a:1"]}"#);
        let (r, _) = handle("GET", None, b"", &tokens(), &boot(), &mut s);
        assert_eq!(r.body, r#"{"version":3,"members":["a:1","b:1"]}"#);
    }

    #[test]
    fn accepted_update_raises_the_generation() {
        let mut s = MemoryStore::default();
        let (r, outcome) = put(&mut s, r#"{"version": 1, "members": ["a:1"]}"#);
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, r#"{"changed":true,"count":1,"version":1}"#)
        );
        assert!(matches!(outcome, ControlOutcome::Accepted { .. }));
        assert_eq!(load_generation(&s).unwrap(), 1);
    }

    #[test]
    fn version_rules() {
        let mut s = MemoryStore::default();
        put(&mut s, r#"{"version": 10, "members": ["a:1"]}"#);
        // Same members, lower version: in sync, nothing stored.
        let (r, o) = put(&mut s, r#"{"version": 5, "members": ["a:1"]}"#);
        assert_eq!((r.status, o), (200, ControlOutcome::Unchanged));
        assert_eq!(stored(&s).version, 10);
        // Same members, higher version: the version is recorded.
        let (r, o) = put(&mut s, r#"{"version": 11, "members": ["a:1"]}"#);
        assert_eq!((r.status, o), (200, ControlOutcome::Unchanged));
        assert_eq!(stored(&s).version, 11);
        // Different members, not newer: 409 naming the stored version, nothing stored.
        let (r, o) = put(&mut s, r#"{"version": 11, "members": ["b:1"]}"#);
        assert_eq!(r.status, 409);
        assert!(r.body.contains(r#""version":11"#), "{}", r.body);
        assert!(matches!(o, ControlOutcome::Rejected(_)));
        assert_eq!(stored(&s).members, MemberList::new(0, &["a:1"]).unwrap().members);
        // The same ring with another pushgateway absent is another list.
        let (r, _) = put(
            &mut s,
            r#"{"version": 11, "members": ["a:1"], "absent": ["b:1"]}"#,
        );
        assert_eq!(r.status, 409);
        let (r, o) = put(
            &mut s,
            r#"{"version": 12, "members": ["a:1"], "absent": ["b:1"]}"#,
        );
        assert_eq!(r.status, 200);
        assert!(
            matches!(o, ControlOutcome::Accepted { ref new, .. } if describe(&stored(&s), new).contains("absent [b:1]"))
        );
        assert_eq!(stored(&s).absent, MemberList::new(0, &["b:1"]).unwrap().members);
        // Empty list with a newer version is honest and taken.
        let (r, _) = put(&mut s, r#"{"version": 13, "members": []}"#);
        assert_eq!(r.status, 200);
        assert!(stored(&s).is_empty());
    }

    #[test]
    fn refusals_change_nothing() {
        let mut s = MemoryStore::default();
        put(&mut s, r#"{"version": 1, "members": ["a:1"]}"#);
        let before = stored(&s);
        let cases: [(Option<&str>, &str, u32, &str); 6] = [
            (
                None,
                r#"{"version": 2, "members": []}"#,
                401,
                "missing or wrong token",
            ),
            (
                Some("Bearer x"),
                r#"{"version": 2, "members": []}"#,
                401,
                "missing or wrong token",
            ),
            (
                AUTH,
                r#"{"version": 2, "members": ["a:1", "a:1"]}"#,
                400,
                "duplicates",
            ),
            (
                AUTH,
                r#"{"version": 2, "members": ["a:99999"]}"#,
                400,
                "members[0]",
            ),
            (AUTH, r#"{"version": "2", "members": []}"#, 400, "body is not"),
            (
                AUTH,
                r#"{"version": 2, "members": [], "x": 1}"#,
                400,
                "unknown field",
            ),
        ];
        for (auth, body, status, needle) in cases {
            let (r, _) = handle("PUT", auth, body.as_bytes(), &tokens(), &boot(), &mut s);
            assert_eq!(r.status, status, "{body}");
            assert!(r.body.contains(needle), "{body}: {}", r.body);
            assert_eq!(stored(&s), before);
        }
        let big = format!(
            r#"{{"version": 2, "members": [], "pad": "{}"}}"#,
            "x".repeat(MAX_UPDATE_BYTES)
        );
        let (r, _) = put(&mut s, &big);
        assert_eq!(r.status, 413);
        assert_eq!(stored(&s), before);
        assert_eq!(load_generation(&s).unwrap(), 1);
    }

    #[test]
    fn no_token_configured_refuses_updates() {
        let mut s = MemoryStore::default();
        let (r, _) = handle(
            "PUT",
            AUTH,
            br#"{"version":1,"members":[]}"#,
            &[],
            &boot(),
            &mut s,
        );
        assert_eq!(r.status, 401);
        assert!(r.body.contains("SHARDING_CONTROL_TOKEN"));
    }

    #[test]
    fn both_tokens_are_accepted_during_a_rotation() {
        let mut s = MemoryStore::default();
        let two = vec!["new-token".to_owned(), "old-token".to_owned()];
        let body = |v: u64| format!(r#"{{"version": {v}, "members": ["a:{v}"]}}"#);
        for (i, auth) in ["Bearer new-token", "Bearer old-token"].iter().enumerate() {
            let (r, _) = handle(
                "PUT",
                Some(auth),
                body(i as u64 + 1).as_bytes(),
                &two,
                &boot(),
                &mut s,
            );
            assert_eq!(r.status, 200, "{auth}: {}", r.body);
        }
        for auth in [
            "Bearer new-toke",
            "Bearer old-tokenx",
            "Bearer new-token,old-token",
            "Bearer ",
        ] {
            let (r, _) = handle("PUT", Some(auth), body(9).as_bytes(), &two, &boot(), &mut s);
            assert_eq!(r.status, 401, "{auth}");
        }
        assert_eq!(stored(&s).version, 2);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abc\0", b"abc"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn paths_and_methods() {
        assert!(is_control_path("/-/sharding/members"));
        assert!(is_control_path("/-/sharding/members?x=1"));
        assert!(!is_control_path("/-/sharding/members/x"));
        let (r, _) = handle(
            "DELETE",
            AUTH,
            b"",
            &tokens(),
            &boot(),
            &mut MemoryStore::default(),
        );
        assert_eq!(r.status, 405);
    }

    #[test]
    fn describe_names_versions_counts_and_diff() {
        let a = MemberList::new(1, &["a:1"]).unwrap();
        let b = MemberList::new(2, &["b:1", "a:1"]).unwrap();
        assert_eq!(
            describe(&a, &b),
            "member list version 1 -> 2, 1 -> 2 members, added [b:1] removed []"
        );
    }

    #[test]
    fn a_change_of_slots_is_a_change_of_the_list() {
        let mut s = MemoryStore::default();
        put(&mut s, r#"{"version": 10, "members": ["a:1", "b:1"]}"#);
        let promoted = r#""slots": {"a:1": {"active": "s:1", "standby": "a:1"}}"#;
        // Same members, other addresses: a list from before the promotion cannot undo it, and
        // the promotion itself needs a newer version.
        let (r, o) = put(
            &mut s,
            &format!(r#"{{"version": 10, "members": ["a:1", "b:1"], {promoted}}}"#),
        );
        assert_eq!(r.status, 409, "{}", r.body);
        assert!(matches!(o, ControlOutcome::Rejected(_)));
        let (r, o) = put(
            &mut s,
            &format!(r#"{{"version": 11, "members": ["a:1", "b:1"], {promoted}}}"#),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains(r#""changed":true"#), "{}", r.body);
        match o {
            ControlOutcome::Accepted { old, new } => assert_eq!(
                describe(&old, &new),
                "member list version 10 -> 11, 2 -> 2 members, added [] removed [], slots now [a:1 (active s:1, standby a:1)]"
            ),
            other => panic!("{other:?}"),
        }
        let (r, _) = put(&mut s, r#"{"version": 11, "members": ["a:1", "b:1"]}"#);
        assert_eq!(r.status, 409, "the list without the slot is another list");
        let (r, _) = handle("GET", None, b"", &tokens(), &boot(), &mut s);
        assert_eq!(
            r.body,
            r#"{"version":11,"members":["a:1","b:1"],"slots":{"a:1":{"active":"s:1","standby":"a:1"}}}"#
        );
        // The same slots again, at any version: in sync.
        let (r, o) = put(
            &mut s,
            &format!(r#"{{"version": 3, "members": ["b:1", "a:1"], {promoted}}}"#),
        );
        assert_eq!((r.status, o), (200, ControlOutcome::Unchanged));
    }
}
