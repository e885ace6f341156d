//! consul-sync's YAML configuration. Properties:
//! - an accepted file gives unique servers, valid durations and a token whenever Envoys are set;
//! - a refused file is an error naming the file, and never contains a secret that came from the
//!   environment or the token file (Consul ACL token, control token).
#![no_main]

use consul_sync::config::Config;
use libfuzzer_sys::fuzz_target;

const ENV_SECRET: &str = "consul-acl-secret-5c1d";
const FILE_SECRET: &str = "control-token-file-9b2e";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env =
        |k: &str| (k == "CONSUL_HTTP_TOKEN" || k == "SHARDING_CONTROL_TOKEN").then(|| ENV_SECRET.to_owned());
    let read_file = |_: &std::path::Path| Ok(format!("{FILE_SECRET}\n"));
    match Config::parse(text, "fuzz.yml", env, read_file) {
        Ok((c, _warnings)) => {
            for (i, a) in c.servers.iter().enumerate() {
                assert!(!c.servers[i + 1..].contains(a), "{a} listed twice");
            }
            assert!((1..=10_000).contains(&c.vnodes));
            assert!(!c.check.interval.is_zero() && !c.resync_interval.is_zero());
            if !c.envoy.control_urls.is_empty() {
                assert!(c.envoy.token.as_deref().is_some_and(|t| !t.is_empty()));
            }
            // A URL or name in the file may spell a secret itself; only secrets from elsewhere
            // must never show.
            if !text.contains(ENV_SECRET) && !text.contains(FILE_SECRET) {
                let shown = format!("{:?} {:?}", c.consul, c.envoy);
                assert!(
                    !shown.contains(ENV_SECRET) && !shown.contains(FILE_SECRET),
                    "{shown}"
                );
            }
        }
        Err(e) => {
            let e = e.to_string();
            assert!(e.starts_with("fuzz.yml"), "{e}");
            // Quoting the file back is fine; a secret from elsewhere must never show.
            if !text.contains(ENV_SECRET) && !text.contains(FILE_SECRET) {
                assert!(
                    !e.contains(ENV_SECRET) && !e.contains(FILE_SECRET),
                    "a secret leaked into: {e}"
                );
            }
        }
    }
});
