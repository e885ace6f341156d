//! The plugin configuration, as Envoy hands it to `on_configure`. Properties:
//! - an accepted configuration is within every documented bound (replication settings included);
//! - a refused one says so with the text "plugin configuration" and never contains the token
//!   from the environment.
#![no_main]

use dynamic_sharding::config::{Config, MAX_TOKENS, REPLICATION_BODY_LIMITS, REPLICATION_TIMEOUTS};
use dynamic_sharding::ring::Ring;
use libfuzzer_sys::fuzz_target;

const ENV_SECRET: &str = "env-secret-7f3a";

fuzz_target!(|data: &[u8]| {
    // The first byte picks what the environment variable holds: nothing, one token, two, or
    // three (refused).
    let Some((&selector, config)) = data.split_first() else {
        return;
    };
    let env_value = match selector % 4 {
        0 => None,
        1 => Some(ENV_SECRET.to_owned()),
        2 => Some(format!("{ENV_SECRET}-new,{ENV_SECRET}")),
        _ => Some(format!("{ENV_SECRET} a b")),
    };
    let env = |_: &str| env_value.clone();
    match Config::parse(config, env) {
        Ok(c) => {
            assert!((1..=10_000).contains(&c.vnodes));
            assert_eq!(c.bootstrap.version, 0);
            assert!(c.control_tokens.len() <= MAX_TOKENS);
            assert!(c
                .control_tokens
                .iter()
                .all(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic())));
            assert!(!c.destination_header.is_empty());
            let (min, max) = REPLICATION_BODY_LIMITS;
            assert!((min..=max).contains(&c.replication_body_limit));
            let (min, max) = REPLICATION_TIMEOUTS;
            assert!((min..=max).contains(&c.replication_timeout));
            assert!(!c.control_token_source.contains(ENV_SECRET));
            let ring = Ring::new(&c.bootstrap.members, c.vnodes.min(64));
            if let Some(owner) = ring.owner(dynamic_sharding::ring::xxh64(config)) {
                assert!(c.bootstrap.members.contains(owner));
            }
        }
        Err(e) => {
            assert!(e.starts_with("plugin configuration"), "{e}");
            // Quoting the configuration back is fine; the token from the environment never shows.
            if !config
                .windows(ENV_SECRET.len())
                .any(|w| w == ENV_SECRET.as_bytes())
            {
                assert!(!e.contains(ENV_SECRET), "the token leaked into: {e}");
            }
        }
    }
});
