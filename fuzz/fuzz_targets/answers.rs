//! What consul-sync decodes from others: Consul's health answer, the Envoy control API's answer,
//! and pushgateway's list of groups (`/api/v1/metrics`, read to reconcile groups). Properties:
//! - members from Consul are valid, sorted, unique, and the ring over them owns every hash with
//!   one of them;
//! - a control-API answer is classified by its status alone (200 accepted, 409 conflict, other
//!   4xx but 429 refused, the rest failed), whatever the body;
//! - every group pushgateway lists that names a key has a push path naming the same key;
//! - the reconciler's reading of `/metrics` (push times) gives the same groups however the body is
//!   cut into chunks, only finite push times, and keys whose push path names them again;
//! - a group read from `/api/v1/metrics` renders to text-format lines that each start with a
//!   metric name or `#`, so a copy never pushes a broken body.
#![no_main]

use consul_sync::consul::members_from_health;
use consul_sync::membership::envoy::{classify, PushOutcome};
use consul_sync::reconcile::exposition::{parse_api_groups, PushTimeReader};
use dynamic_sharding::grouping_key::GroupingKey;
use dynamic_sharding::members::Member;
use dynamic_sharding::ring::Ring;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 5 {
        0 => consul_health(body),
        1 => control_answer(selector, body),
        2 => pushgateway_groups(body),
        3 => push_times(selector, body),
        _ => rendered_copies(body),
    }
});

fn consul_health(body: &[u8]) {
    let Ok((members, _skipped)) = members_from_health(body) else {
        return;
    };
    assert!(
        members.windows(2).all(|w| w[0] < w[1]),
        "unsorted or duplicate: {members:?}"
    );
    for m in &members {
        assert_eq!(Member::parse(m.as_str()).as_ref(), Ok(m), "not canonical: {m}");
    }
    let ring = Ring::new(&members, 8);
    match ring.owner(dynamic_sharding::ring::xxh64(body)) {
        Some(owner) => assert!(members.contains(owner)),
        None => assert!(members.is_empty()),
    }
}

fn control_answer(selector: u8, body: &[u8]) {
    let statuses = [200u16, 409, 400, 401, 413, 429, 500, 503, 204, 302];
    // The selector is 1 mod 5 here: dividing by 5 reaches every status.
    let status = statuses[usize::from(selector / 5) % statuses.len()];
    let text = String::from_utf8_lossy(body);
    let outcome = classify(status, &text);
    match status {
        200 => assert!(matches!(outcome, PushOutcome::Accepted { .. })),
        409 => assert!(matches!(outcome, PushOutcome::Conflict { .. })),
        400 | 401 | 413 => assert!(matches!(outcome, PushOutcome::Refused { status: s, .. } if s == status)),
        // Retried: throttled, a server error, or an answer the API never gives.
        _ => assert!(matches!(outcome, PushOutcome::Failed(_))),
    }
}

fn pushgateway_groups(body: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let Some(groups) = v.get("data").and_then(|d| d.as_array()) else {
        return;
    };
    for g in groups {
        let Some(labels) = g.get("labels").and_then(|l| l.as_object()) else {
            continue;
        };
        let pairs = labels
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()));
        if let Ok(key) = GroupingKey::from_labels(pairs) {
            assert_eq!(
                GroupingKey::from_path(&key.to_path()).as_ref(),
                Ok(&key),
                "{}",
                key.to_path()
            );
        }
    }
}

fn push_times(selector: u8, body: &[u8]) {
    let mut whole = PushTimeReader::default();
    whole.feed(body);
    let whole = whole.finish();
    let mut cut = PushTimeReader::default();
    for chunk in body.chunks(usize::from(selector / 5) + 1) {
        cut.feed(chunk);
    }
    assert_eq!(cut.finish(), whole, "chunking changed what was read");
    for (key, time) in &whole.groups {
        assert!(
            time.push.is_finite() && time.failure.is_finite(),
            "{key}: {time:?}"
        );
        assert_eq!(GroupingKey::from_path(&key.to_path()).as_ref(), Ok(key));
    }
}

fn rendered_copies(body: &[u8]) {
    let Ok((groups, _skipped)) = parse_api_groups(body) else {
        return;
    };
    for g in groups {
        for line in g.to_text().lines() {
            let first = line.bytes().next();
            assert!(
                first.is_some_and(|b| b == b'#' || b.is_ascii_alphabetic() || b == b'_' || b == b':'),
                "{}: line {line:?}",
                g.key
            );
        }
    }
}
