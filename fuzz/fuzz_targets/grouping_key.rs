//! The grouping-key parser on any path. Properties, beyond "never panics":
//! - a parsed key, re-encoded to its canonical path, parses back to the same key;
//! - its labels, as pushgateway would list them, give the same key again;
//! - labels are sorted, unique, valid names, with a non-empty job and never an empty instance;
//! - a refused push path says why;
//! - hashing the path without building the key (the filter's request path) gives the key's hash,
//!   or the same error, and so does hashing it as a request target with a query after it.
#![no_main]

use dynamic_sharding::grouping_key::{GroupingKey, PathError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Envoy hands the filter the path as a string; bytes that are not UTF-8 never reach it.
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = GroupingKey::from_path(path);
    let hash = parsed.as_ref().map(GroupingKey::hash).map_err(Clone::clone);
    assert_eq!(GroupingKey::hash_path(path), hash, "{path:?}: hash_path");
    if !path.contains('?') {
        assert_eq!(
            GroupingKey::hash_target(&format!("{path}?x=/%zz/..")),
            hash,
            "{path:?}: hash_target"
        );
    }
    match parsed {
        Ok(key) => check_key(path, &key),
        Err(PathError::Invalid(why)) => assert!(!why.is_empty(), "{path:?}: empty reason"),
        Err(PathError::NotPushPath) => {}
    }
});

fn check_key(path: &str, key: &GroupingKey) {
    let canonical = key.to_path();
    assert_eq!(
        GroupingKey::from_path(&canonical).as_ref(),
        Ok(key),
        "{path:?} -> {canonical:?} does not parse back"
    );
    // The canonical path is its own canonical path.
    assert_eq!(
        GroupingKey::from_path(&canonical).map(|k| k.to_path()),
        Ok(canonical.clone())
    );
    let labels = key.labels();
    assert_eq!(
        GroupingKey::from_labels(labels.iter().rev().cloned()).as_ref(),
        Ok(key),
        "{path:?}: labels {labels:?} name another key"
    );
    assert!(
        labels.windows(2).all(|w| w[0].0 < w[1].0),
        "{path:?}: {labels:?} unsorted or duplicate"
    );
    assert!(
        labels.iter().any(|(n, v)| n == "job" && !v.is_empty()),
        "{path:?}: no job in {labels:?}"
    );
    assert!(
        !labels.iter().any(|(n, v)| n == "instance" && v.is_empty()),
        "{path:?}: empty instance accepted"
    );
    for (name, _) in labels {
        let mut b = name.bytes();
        let first = b.next().unwrap_or(b'0');
        assert!(
            (first.is_ascii_alphabetic() || first == b'_')
                && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
                && !name.starts_with("__"),
            "{path:?}: bad label name {name:?}"
        );
    }
    assert_eq!(key.hash(), dynamic_sharding::ring::xxh64(&key.canonical_bytes()));
}
