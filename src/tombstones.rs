//! Tombstones: the `DELETE`s that did not reach every pushgateway that may hold a copy of their
//! group, kept in Envoy shared data until consul-sync has them, and the part of the control API
//! that hands them over.
//!
//! A copy left on a pushgateway that a `DELETE` could not reach (its call failed, or it was
//! registered but not passing) is a single copy the reconciler never deletes, and a pushgateway
//! that was down comes back with it from its persistence file. The filter records, per group, the
//! time of the `DELETE` (Envoy's clock, Unix milliseconds) and the pushgateways not reached;
//! consul-sync collects them (`GET /-/sharding/tombstones`), keeps them in Consul and
//! acknowledges them (`POST /-/sharding/tombstones/ack`), and deletes the group on each of those
//! pushgateways once it is readable, unless its copy there is newer than the `DELETE`.
//!
//! Bounds: at most the configured number of tombstones (the `DELETE` that could need one more
//! is refused before anything is deleted, see `request`), at most [`MAX_STORED_BYTES`] stored,
//! answers of at most [`MAX_PAGE_BYTES`] (and at least one tombstone), acknowledgements in a body
//! of at most [`MAX_ACK_BYTES`].

use crate::control::{self, authorize};
use crate::members::Member;
use crate::routing::Reply;
use crate::store::{SharedStore, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Shared-data key of the stored tombstones.
pub const TOMBSTONES_KEY: &str = "dynamic_sharding.tombstones";
/// `GET`: the tombstones not yet acknowledged.
pub const TOMBSTONES_PATH: &str = "/-/sharding/tombstones";
/// `POST {"ids": [...]}`: forget these, consul-sync has them.
pub const ACK_PATH: &str = "/-/sharding/tombstones/ack";
/// Default of the plugin setting `max_tombstones`.
pub const DEFAULT_MAX_TOMBSTONES: u32 = 10_000;
/// Largest `max_tombstones` accepted.
pub const MAX_MAX_TOMBSTONES: u32 = 100_000;
/// Most bytes of stored tombstones; a `DELETE` whose tombstone would not fit is answered `503`.
pub const MAX_STORED_BYTES: usize = 16 * 1024 * 1024;
/// A `GET` answer holds tombstones up to this size (at least one), and says whether more wait.
pub const MAX_PAGE_BYTES: usize = 64 * 1024;
/// Largest acknowledgement body accepted: the ids of a page, with room to spare.
pub const MAX_ACK_BYTES: usize = 64 * 1024;

/// One group's `DELETE`s that did not reach every pushgateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tombstone {
    /// Changes whenever the tombstone does, so an acknowledgement of an older state of it
    /// forgets nothing.
    pub id: u64,
    /// The group, as [`crate::grouping_key::GroupingKey::to_path`] writes it.
    pub group: String,
    /// When the newest of those `DELETE`s arrived, Unix milliseconds by Envoy's clock.
    pub at_ms: u64,
    /// The pushgateways not reached, sorted.
    pub pushgateways: Vec<Member>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    next_id: u64,
    tombstones: Vec<Tombstone>,
}

fn load(store: &dyn SharedStore) -> Result<(Stored, Option<u32>), StoreError> {
    match store.get(TOMBSTONES_KEY)? {
        (Some(bytes), cas) => {
            let stored = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Host(format!("stored tombstones unreadable: {e}")))?;
            Ok((stored, cas))
        }
        (None, cas) => Ok((Stored::default(), cas)),
    }
}

/// Writes `stored` if the key is still at `cas`; `Ok(false)` when another worker wrote first.
fn save(store: &mut dyn SharedStore, stored: &Stored, cas: Option<u32>) -> Result<bool, StoreError> {
    let bytes = serde_json::to_vec(stored).map_err(|e| StoreError::Host(e.to_string()))?;
    match store.set(TOMBSTONES_KEY, &bytes, cas) {
        Ok(()) => Ok(true),
        Err(StoreError::CasMismatch) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The tombstones stored now.
pub fn count(store: &dyn SharedStore) -> Result<usize, StoreError> {
    Ok(load(store)?.0.tombstones.len())
}

/// Records that a `DELETE` of `group` at `at_ms` did not reach `unreached`: merged into the
/// group's tombstone if it has one (the later time, every pushgateway of both: a `DELETE` asks
/// for every copy older than itself to go), else a new one. Returns how many are stored now.
/// Refused, with the reason, when the stored tombstones would exceed [`MAX_STORED_BYTES`].
pub fn record(
    store: &mut dyn SharedStore,
    group: &str,
    at_ms: u64,
    unreached: &[Member],
) -> Result<usize, String> {
    // A CAS loop: another worker may record or forget between our read and our write.
    for _ in 0..16 {
        let (mut stored, cas) = load(store).map_err(|e| e.to_string())?;
        stored.next_id += 1;
        let id = stored.next_id;
        match stored.tombstones.iter_mut().find(|t| t.group == group) {
            Some(t) => {
                t.id = id;
                t.at_ms = t.at_ms.max(at_ms);
                t.pushgateways.extend(unreached.iter().cloned());
                t.pushgateways.sort();
                t.pushgateways.dedup();
            }
            None => {
                let mut pushgateways = unreached.to_vec();
                pushgateways.sort();
                pushgateways.dedup();
                stored.tombstones.push(Tombstone {
                    id,
                    group: group.to_owned(),
                    at_ms,
                    pushgateways,
                });
            }
        }
        let size = serde_json::to_vec(&stored).map_or(usize::MAX, |b| b.len());
        if size > MAX_STORED_BYTES {
            return Err(format!(
                "the stored tombstones would take {size} bytes, over the {MAX_STORED_BYTES} bytes kept"
            ));
        }
        if save(store, &stored, cas).map_err(|e| e.to_string())? {
            return Ok(stored.tombstones.len());
        }
    }
    Err("the tombstones kept changing under 16 tries".to_owned())
}

/// What a tombstone request did, for stats and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TombstoneOutcome {
    /// A read; `held` tombstones are stored.
    Read { held: usize },
    /// An acknowledgement forgot `forgotten`; `held` are left.
    Acknowledged { forgotten: usize, held: usize },
    /// Refused; the text is for the warn log.
    Rejected(String),
}

/// True when `path_and_query` names a tombstone resource.
pub fn is_tombstones_path(path_and_query: &str) -> bool {
    matches!(path_and_query.split('?').next(), Some(TOMBSTONES_PATH | ACK_PATH))
}

/// Serves one complete request on a tombstone path; `now_ms` is Envoy's clock, sent along so
/// that consul-sync can place the tombstones' times on its own.
pub fn handle(
    method: &str,
    path_and_query: &str,
    authorization: Option<&str>,
    body: &[u8],
    tokens: &[String],
    store: &mut dyn SharedStore,
    now_ms: u64,
) -> (Reply, TombstoneOutcome) {
    if let Err((reply, why)) = authorize(authorization, tokens) {
        return (reply, TombstoneOutcome::Rejected(why));
    }
    let path = path_and_query.split('?').next().unwrap_or(path_and_query);
    match (path, method) {
        (TOMBSTONES_PATH, "GET") => match load(store) {
            Ok((stored, _)) => (
                page(&stored.tombstones, now_ms),
                TombstoneOutcome::Read {
                    held: stored.tombstones.len(),
                },
            ),
            Err(e) => internal(e),
        },
        (ACK_PATH, "POST") => acknowledge(body, store),
        (_, other) => {
            let allowed = if path == TOMBSTONES_PATH { "GET" } else { "POST" };
            let mut reply = control::error(
                405,
                format!("method {other} is not allowed on {path}; allowed: {allowed}"),
            );
            reply.headers.push("allow", allowed);
            (
                reply,
                TombstoneOutcome::Rejected(format!("method {other} on {path}")),
            )
        }
    }
}

/// The oldest tombstones (by id) that fit in [`MAX_PAGE_BYTES`], at least one.
fn page(tombstones: &[Tombstone], now_ms: u64) -> Reply {
    let mut sorted: Vec<&Tombstone> = tombstones.iter().collect();
    sorted.sort_by_key(|t| t.id);
    let mut size = 0;
    let mut taken = Vec::new();
    for t in sorted {
        let entry = serde_json::to_value(t).unwrap_or_default();
        size += entry.to_string().len() + 1;
        if !taken.is_empty() && size > MAX_PAGE_BYTES {
            break;
        }
        taken.push(entry);
    }
    let more = taken.len() < tombstones.len();
    Reply::json(
        200,
        json!({"now_ms": now_ms, "tombstones": taken, "more": more}).to_string(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ack {
    ids: Vec<u64>,
}

fn acknowledge(body: &[u8], store: &mut dyn SharedStore) -> (Reply, TombstoneOutcome) {
    if body.len() > MAX_ACK_BYTES {
        let why = format!(
            "body is {} bytes; at most {MAX_ACK_BYTES} are accepted",
            body.len()
        );
        return (control::error(413, why.clone()), TombstoneOutcome::Rejected(why));
    }
    let ack: Ack = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(e) => {
            let why = format!(r#"body is not {{"ids": [<unsigned integer>, ...]}}: {e}"#);
            return (control::error(400, why.clone()), TombstoneOutcome::Rejected(why));
        }
    };
    for _ in 0..16 {
        let (mut stored, cas) = match load(store) {
            Ok(v) => v,
            Err(e) => return internal(e),
        };
        let before = stored.tombstones.len();
        stored.tombstones.retain(|t| !ack.ids.contains(&t.id));
        let (forgotten, held) = (before - stored.tombstones.len(), stored.tombstones.len());
        if forgotten == 0 {
            return (
                acknowledged(0, held),
                TombstoneOutcome::Acknowledged { forgotten, held },
            );
        }
        match save(store, &stored, cas) {
            Ok(true) => {
                return (
                    acknowledged(forgotten, held),
                    TombstoneOutcome::Acknowledged { forgotten, held },
                )
            }
            Ok(false) => continue,
            Err(e) => return internal(e),
        }
    }
    internal(StoreError::CasMismatch)
}

fn acknowledged(forgotten: usize, held: usize) -> Reply {
    Reply::json(200, json!({"forgotten": forgotten, "held": held}).to_string())
}

fn internal(e: StoreError) -> (Reply, TombstoneOutcome) {
    let why = format!("could not read or store the tombstones: {e}; they are unchanged");
    (control::error(500, why.clone()), TombstoneOutcome::Rejected(why))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    const AUTH: Option<&str> = Some("Bearer t");

    fn tokens() -> Vec<String> {
        vec!["t".to_owned()]
    }

    fn m(list: &[&str]) -> Vec<Member> {
        list.iter().map(|s| Member::parse(s).unwrap()).collect()
    }

    fn get(store: &mut MemoryStore) -> serde_json::Value {
        let (r, _) = handle("GET", TOMBSTONES_PATH, AUTH, b"", &tokens(), store, 42);
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str(&r.body).unwrap()
    }

    fn ack(store: &mut MemoryStore, body: &str) -> (Reply, TombstoneOutcome) {
        handle("POST", ACK_PATH, AUTH, body.as_bytes(), &tokens(), store, 42)
    }

    #[test]
    fn a_group_has_one_tombstone_with_every_pushgateway_and_the_latest_time() {
        let mut s = MemoryStore::default();
        assert_eq!(record(&mut s, "/metrics/job/a", 1_000, &m(&["b:1"])), Ok(1));
        assert_eq!(record(&mut s, "/metrics/job/b", 1_500, &m(&["c:1"])), Ok(2));
        assert_eq!(record(&mut s, "/metrics/job/a", 900, &m(&["c:1", "b:1"])), Ok(2));
        let v = get(&mut s);
        assert_eq!(
            v,
            json!({"now_ms": 42, "more": false, "tombstones": [
                {"id": 2, "group": "/metrics/job/b", "at_ms": 1500, "pushgateways": ["c:1"]},
                {"id": 3, "group": "/metrics/job/a", "at_ms": 1000, "pushgateways": ["b:1", "c:1"]},
            ]})
        );
    }

    #[test]
    fn an_acknowledgement_forgets_only_what_it_names_as_it_was() {
        let mut s = MemoryStore::default();
        record(&mut s, "/metrics/job/a", 1, &m(&["b:1"])).unwrap();
        record(&mut s, "/metrics/job/b", 1, &m(&["b:1"])).unwrap();
        // consul-sync read ids 1 and 2; a DELETE of group a failed again meanwhile.
        record(&mut s, "/metrics/job/a", 2, &m(&["c:1"])).unwrap();
        let (r, o) = ack(&mut s, r#"{"ids": [1, 2, 77]}"#);
        assert_eq!((r.status, r.body.as_str()), (200, r#"{"forgotten":1,"held":1}"#));
        assert_eq!(
            o,
            TombstoneOutcome::Acknowledged {
                forgotten: 1,
                held: 1
            }
        );
        let left = &get(&mut s)["tombstones"];
        assert_eq!(
            left[0]["group"], "/metrics/job/a",
            "its new state was not acknowledged"
        );
        // Acknowledging again is harmless.
        let (r, _) = ack(&mut s, r#"{"ids": [1, 2]}"#);
        assert_eq!(r.body, r#"{"forgotten":0,"held":1}"#);
    }

    #[test]
    fn answers_are_pages_of_the_oldest() {
        let mut s = MemoryStore::default();
        let long = format!("/metrics/job/{}", "x".repeat(MAX_PAGE_BYTES));
        record(&mut s, &long, 1, &m(&["b:1"])).unwrap();
        record(&mut s, "/metrics/job/short", 1, &m(&["b:1"])).unwrap();
        let v = get(&mut s);
        assert_eq!(v["tombstones"].as_array().unwrap().len(), 1, "one, however long");
        assert_eq!(v["more"], true);
        ack(&mut s, r#"{"ids": [1]}"#);
        let v = get(&mut s);
        assert_eq!(v["tombstones"][0]["group"], "/metrics/job/short");
        assert_eq!(v["more"], false);
    }

    #[test]
    fn the_stored_size_is_bounded() {
        let mut s = MemoryStore::default();
        let huge = format!("/metrics/job/{}", "x".repeat(MAX_STORED_BYTES));
        let err = record(&mut s, &huge, 1, &m(&["b:1"])).unwrap_err();
        assert!(err.contains("over the 16777216 bytes kept"), "{err}");
        assert_eq!(count(&s), Ok(0), "nothing stored");
    }

    #[test]
    fn refusals_name_the_problem_and_change_nothing() {
        let mut s = MemoryStore::default();
        record(&mut s, "/metrics/job/a", 1, &m(&["b:1"])).unwrap();
        let big = format!(r#"{{"ids": [{}1]}}"#, "1, ".repeat(MAX_ACK_BYTES / 3));
        for (method, path, auth, body, status, needle) in [
            ("GET", TOMBSTONES_PATH, None, "", 401, "missing or wrong token"),
            (
                "GET",
                TOMBSTONES_PATH,
                Some("Bearer x"),
                "",
                401,
                "missing or wrong token",
            ),
            (
                "POST",
                ACK_PATH,
                None,
                r#"{"ids": [1]}"#,
                401,
                "missing or wrong token",
            ),
            ("POST", ACK_PATH, AUTH, r#"{"ids": [-1]}"#, 400, "expected u64"),
            (
                "POST",
                ACK_PATH,
                AUTH,
                r#"{"ids": [1], "x": 1}"#,
                400,
                "unknown field `x`",
            ),
            ("POST", ACK_PATH, AUTH, r#"[1]"#, 400, "body is not"),
            ("POST", ACK_PATH, AUTH, big.as_str(), 413, "at most 65536"),
            ("DELETE", TOMBSTONES_PATH, AUTH, "", 405, "allowed: GET"),
            ("GET", ACK_PATH, AUTH, "", 405, "allowed: POST"),
        ] {
            let (r, o) = handle(method, path, auth, body.as_bytes(), &tokens(), &mut s, 1);
            assert_eq!(r.status, status, "{method} {path} {body:.40}: {}", r.body);
            assert!(r.body.contains(needle), "{method} {path}: {}", r.body);
            assert!(matches!(o, TombstoneOutcome::Rejected(_)));
            assert_eq!(count(&s), Ok(1));
        }
        let (r, _) = handle("GET", TOMBSTONES_PATH, AUTH, b"", &[], &mut s, 1);
        assert_eq!(r.status, 401, "no token configured: nobody reads them");
    }

    #[test]
    fn paths() {
        assert!(is_tombstones_path("/-/sharding/tombstones"));
        assert!(is_tombstones_path("/-/sharding/tombstones?x"));
        assert!(is_tombstones_path("/-/sharding/tombstones/ack"));
        assert!(!is_tombstones_path("/-/sharding/tombstones/x"));
        assert!(!is_tombstones_path("/-/sharding/members"));
    }

    #[test]
    fn an_unreadable_store_is_an_error_not_a_panic() {
        let mut s = MemoryStore::default();
        s.set(TOMBSTONES_KEY, b"{", None).unwrap();
        assert!(record(&mut s, "/metrics/job/a", 1, &[])
            .unwrap_err()
            .contains("unreadable"));
        let (r, _) = handle("GET", TOMBSTONES_PATH, AUTH, b"", &tokens(), &mut s, 1);
        assert_eq!(r.status, 500);
    }
}
