//! The plugin configuration: parsed once, in `on_configure`, into typed values.
//!
//! Unknown fields and bad values are refused with the field named, so a typo fails Envoy's start
//! instead of silently running with a default.

use crate::members::MemberList;
use crate::ring::{validate_vnodes, DEFAULT_VNODES};
use crate::tombstones::{DEFAULT_MAX_TOMBSTONES, MAX_MAX_TOMBSTONES};
use serde::Deserialize;
use std::time::Duration;

/// Environment variable read for the control token unless `control_token_env` names another.
pub const DEFAULT_TOKEN_ENV: &str = "SHARDING_CONTROL_TOKEN";
/// Request header that carries the owner to Envoy's ORIGINAL_DST cluster in proxy mode.
pub const DEFAULT_DESTINATION_HEADER: &str = "x-sharding-destination";

/// Largest body copied for a slot's standby unless configured: every push of the usual size,
/// and at most this much wasm memory per push in flight.
pub const DEFAULT_REPLICATION_BODY_LIMIT: usize = 1024 * 1024;
/// Accepted range of `replication_body_limit`, in bytes.
pub const REPLICATION_BODY_LIMITS: (usize, usize) = (1024, 16 * 1024 * 1024);
/// Longest a write waits for its standby's answer unless configured: a pushgateway answers a
/// push in milliseconds, a dead one is refused at once; this bounds a frozen one.
pub const DEFAULT_REPLICATION_TIMEOUT: Duration = Duration::from_secs(2);
/// Accepted range of `replication_timeout`.
pub const REPLICATION_TIMEOUTS: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(30));

/// What a listener's filter instance does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Answer pushes with `307` to the owner.
    #[default]
    Redirect,
    /// Route pushes to the owner through Envoy (`destination_header` + ORIGINAL_DST cluster).
    Proxy,
    /// Serve the member-list API (`/-/sharding/members`); put it on a loopback listener.
    Control,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    mode: Mode,
    #[serde(default = "default_vnodes")]
    vnodes: u32,
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    control_token: Option<String>,
    #[serde(default = "default_token_env")]
    control_token_env: String,
    #[serde(default = "default_destination_header")]
    destination_header: String,
    #[serde(default)]
    replication_body_limit: Option<usize>,
    #[serde(default)]
    replication_timeout: Option<String>,
    #[serde(default = "default_max_delete_fanouts")]
    max_delete_fanouts: u32,
    #[serde(default = "default_max_tombstones")]
    max_tombstones: u32,
}

fn default_vnodes() -> u32 {
    DEFAULT_VNODES
}
fn default_token_env() -> String {
    DEFAULT_TOKEN_ENV.to_owned()
}
fn default_destination_header() -> String {
    DEFAULT_DESTINATION_HEADER.to_owned()
}
fn default_max_delete_fanouts() -> u32 {
    DEFAULT_MAX_DELETE_FANOUTS
}
fn default_max_tombstones() -> u32 {
    DEFAULT_MAX_TOMBSTONES
}

/// Default of `max_delete_fanouts`: far above what honest clients keep in flight (a `DELETE`
/// waits at most 3 s), low enough that a flood costs each pushgateway at most this many
/// calls per worker at once.
pub const DEFAULT_MAX_DELETE_FANOUTS: u32 = 64;
/// Largest `max_delete_fanouts` accepted.
pub const MAX_MAX_DELETE_FANOUTS: u32 = 10_000;

/// The compiled configuration every request context shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub mode: Mode,
    pub vnodes: u32,
    /// Members used until the first accepted update (version 0).
    pub bootstrap: MemberList,
    /// Bearer tokens accepted on `PUT /-/sharding/members`: one, or two during a rotation (see
    /// [`parse_tokens`]); none refuses every update.
    pub control_tokens: Vec<String>,
    /// Where the token came from, for the log line (never the token itself).
    pub control_token_source: String,
    pub destination_header: String,
    /// Bytes of a write's body copied for its slot's standby; a longer body is not replicated.
    pub replication_body_limit: usize,
    /// Longest a write's answer waits for its standby.
    pub replication_timeout: Duration,
    /// `DELETE`s whose fan-out may be in flight at once on one worker; more are answered `503`.
    pub max_delete_fanouts: u32,
    /// Tombstones kept for consul-sync; a `DELETE` that could need one more is answered `503`.
    pub max_tombstones: u32,
}

impl Config {
    /// Parses the plugin configuration. An empty configuration means all defaults. `env` reads
    /// an environment variable (the wasm VM's, as Envoy's `environment_variables` set it).
    pub fn parse(bytes: &[u8], env: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let raw: RawConfig = if bytes.iter().all(u8::is_ascii_whitespace) {
            serde_json::from_str("{}").map_err(|e| e.to_string())?
        } else {
            serde_json::from_slice(bytes).map_err(|e| {
                format!(
                    "plugin configuration: {e}; accepted fields: mode (redirect|proxy|control), vnodes, members, \
                     control_token, control_token_env, destination_header, replication_body_limit, \
                     replication_timeout, max_delete_fanouts, max_tombstones"
                )
            })?
        };
        let vnodes =
            validate_vnodes(raw.vnodes).map_err(|e| format!("plugin configuration: field `vnodes`: {e}"))?;
        let bootstrap = MemberList::new(0, &raw.members)
            .map_err(|e| format!("plugin configuration: field `members`: {e}"))?;
        let destination_header = raw.destination_header.to_ascii_lowercase();
        if !is_header_name(&destination_header)
            || matches!(destination_header.as_str(), "host" | "authorization")
        {
            return Err(format!(
                "plugin configuration: field `destination_header`: {:?} is not usable; expected a lower-case \
                 header name of letters, digits and '-', such as {DEFAULT_DESTINATION_HEADER}",
                raw.destination_header
            ));
        }
        let within = |field: &str, value: u32, max: u32| {
            if (1..=max).contains(&value) {
                Ok(value)
            } else {
                Err(format!(
                    "plugin configuration: field `{field}`: {value} is out of range; expected 1 to {max}"
                ))
            }
        };
        let max_delete_fanouts = within(
            "max_delete_fanouts",
            raw.max_delete_fanouts,
            MAX_MAX_DELETE_FANOUTS,
        )?;
        let max_tombstones = within("max_tombstones", raw.max_tombstones, MAX_MAX_TOMBSTONES)?;
        let (control_tokens, control_token_source) = match raw.control_token {
            Some(t) => {
                let tokens = parse_tokens(&t)
                    .map_err(|e| format!("plugin configuration: field `control_token`: {e}"))?;
                if tokens.is_empty() {
                    return Err(
                        "plugin configuration: field `control_token`: empty; omit it to use the environment"
                            .into(),
                    );
                }
                (tokens, "plugin configuration".to_owned())
            }
            None => {
                let source = format!("environment variable {}", raw.control_token_env);
                let tokens = match env(&raw.control_token_env) {
                    Some(t) => {
                        parse_tokens(&t).map_err(|e| format!("plugin configuration: {source}: {e}"))?
                    }
                    None => Vec::new(),
                };
                (tokens, source)
            }
        };
        let replication_body_limit = match raw.replication_body_limit {
            None => DEFAULT_REPLICATION_BODY_LIMIT,
            Some(n) if (REPLICATION_BODY_LIMITS.0..=REPLICATION_BODY_LIMITS.1).contains(&n) => n,
            Some(n) => {
                return Err(format!(
                    "plugin configuration: field `replication_body_limit`: {n} is out of range; expected bytes from {} to {} (1 KiB to 16 MiB)",
                    REPLICATION_BODY_LIMITS.0, REPLICATION_BODY_LIMITS.1
                ))
            }
        };
        let replication_timeout = match raw.replication_timeout {
            None => DEFAULT_REPLICATION_TIMEOUT,
            Some(t) => parse_timeout(&t)
                .map_err(|e| format!("plugin configuration: field `replication_timeout`: {e}"))?,
        };
        Ok(Config {
            mode: raw.mode,
            vnodes,
            bootstrap,
            control_tokens,
            control_token_source,
            destination_header,
            replication_body_limit,
            replication_timeout,
            max_delete_fanouts,
            max_tombstones,
        })
    }
}

/// A `replication_timeout` such as `"2s"` or `"500ms"`, within [`REPLICATION_TIMEOUTS`].
fn parse_timeout(value: &str) -> Result<Duration, String> {
    let (min, max) = REPLICATION_TIMEOUTS;
    let accepted = format!(
        "expected a duration from {} to {}, such as \"2s\" or \"500ms\"",
        humantime::format_duration(min),
        humantime::format_duration(max)
    );
    let d = humantime::parse_duration(value.trim())
        .map_err(|e| format!("{value:?} is not a duration ({e}); {accepted}"))?;
    if d < min || d > max {
        return Err(format!("{value:?} is out of range; {accepted}"));
    }
    Ok(d)
}

/// Most tokens accepted at once: the new one and the old one, during a rotation.
pub const MAX_TOKENS: usize = 2;

/// The tokens in a `control_token` value: one, or two separated by a comma or white space while
/// a rotation is under way (both are accepted). Surrounding white space is ignored. Errors never
/// contain the value, as it is a secret.
pub fn parse_tokens(value: &str) -> Result<Vec<String>, String> {
    let tokens: Vec<String> = value
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if tokens.len() > MAX_TOKENS {
        return Err(format!(
            "{} tokens given; at most {MAX_TOKENS} (the new and the old one, separated by a comma, during a rotation)",
            tokens.len()
        ));
    }
    if let Some(i) = tokens
        .iter()
        .position(|t| !t.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(format!(
            "token {} of {} has a character that is not printable ASCII; a bearer token is sent in a header",
            i + 1,
            tokens.len()
        ));
    }
    Ok(tokens)
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn empty_configuration_means_defaults() {
        let c = Config::parse(b"", no_env).unwrap();
        assert_eq!(c.mode, Mode::Redirect);
        assert_eq!(c.vnodes, 500);
        assert!(c.bootstrap.is_empty());
        assert!(c.control_tokens.is_empty());
        assert_eq!(c.destination_header, "x-sharding-destination");
        assert_eq!(c.replication_body_limit, 1024 * 1024);
        assert_eq!(c.replication_timeout, Duration::from_secs(2));
        assert_eq!((c.max_delete_fanouts, c.max_tombstones), (64, 10_000));
    }

    #[test]
    fn replication_settings() {
        let c = Config::parse(
            br#"{"mode":"proxy","replication_body_limit":4096,"replication_timeout":" 750ms "}"#,
            no_env,
        )
        .unwrap();
        assert_eq!(c.replication_body_limit, 4096);
        assert_eq!(c.replication_timeout, Duration::from_millis(750));
        for (json, needle) in [
            (
                &br#"{"replication_body_limit":1023}"#[..],
                "field `replication_body_limit`: 1023 is out of range; expected bytes from 1024 to 16777216",
            ),
            (
                br#"{"replication_body_limit":16777217}"#,
                "field `replication_body_limit`: 16777217 is out of range",
            ),
            (br#"{"replication_body_limit":-1}"#, "replication_body_limit"),
            (br#"{"replication_body_limit":"1MiB"}"#, "invalid type: string"),
            (
                br#"{"replication_timeout":"2"}"#,
                "field `replication_timeout`: \"2\" is not a duration",
            ),
            (
                br#"{"replication_timeout":"5ms"}"#,
                "field `replication_timeout`: \"5ms\" is out of range; expected a duration from 10ms to 30s",
            ),
            (br#"{"replication_timeout":"31s"}"#, "\"31s\" is out of range"),
            (br#"{"replication_timeout":2}"#, "invalid type: integer"),
        ] {
            let err = Config::parse(json, no_env).unwrap_err();
            assert!(err.contains(needle), "{}: {err}", String::from_utf8_lossy(json));
        }
        assert!(Config::parse(
            br#"{"replication_body_limit":16777216,"replication_timeout":"30s"}"#,
            no_env
        )
        .is_ok());
        assert!(Config::parse(
            br#"{"replication_body_limit":1024,"replication_timeout":"10ms"}"#,
            no_env
        )
        .is_ok());
    }

    #[test]
    fn full_configuration() {
        let c = Config::parse(
            br#"{"mode":"proxy","vnodes":100,"members":["b:1","a:1"],"control_token":"s3cret","destination_header":"X-Owner",
                 "max_delete_fanouts":8,"max_tombstones":50}"#,
            no_env,
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Proxy);
        assert_eq!(c.vnodes, 100);
        assert_eq!(
            c.bootstrap.members.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
            ["a:1", "b:1"]
        );
        assert_eq!(c.bootstrap.version, 0);
        assert_eq!(c.control_tokens, ["s3cret"]);
        assert_eq!(c.destination_header, "x-owner");
        assert_eq!((c.max_delete_fanouts, c.max_tombstones), (8, 50));
    }

    #[test]
    fn token_from_the_environment() {
        let env = |k: &str| (k == "MY_TOKEN").then(|| " t0k \n".to_owned());
        let c = Config::parse(br#"{"mode":"control","control_token_env":"MY_TOKEN"}"#, env).unwrap();
        assert_eq!(c.control_tokens, ["t0k"]);
        assert_eq!(c.control_token_source, "environment variable MY_TOKEN");
        let c = Config::parse(br#"{"mode":"control"}"#, |k| {
            (k == DEFAULT_TOKEN_ENV).then(|| "x".into())
        })
        .unwrap();
        assert_eq!(c.control_tokens, ["x"]);
        let c = Config::parse(br#"{"mode":"control"}"#, |_| Some("  ".into())).unwrap();
        assert!(c.control_tokens.is_empty(), "a blank variable is no token");
    }

    #[test]
    fn two_tokens_during_a_rotation() {
        let env = |_: &str| Some("new-1, old-0\n".to_owned());
        let c = Config::parse(br#"{"mode":"control"}"#, env).unwrap();
        assert_eq!(c.control_tokens, ["new-1", "old-0"]);
        let c = Config::parse(br#"{"control_token":"a b"}"#, no_env).unwrap();
        assert_eq!(c.control_tokens, ["a", "b"]);
        let secret = "s3cret-\u{e9}";
        let three = |_: &str| Some("a,b,c".to_owned());
        for (json, env, needle) in [
            (
                &br#"{"mode":"control"}"#[..],
                &three as &dyn Fn(&str) -> Option<String>,
                "3 tokens given",
            ),
            (
                br#"{"control_token":"a,b,c"}"#,
                &no_env,
                "field `control_token`: 3 tokens given",
            ),
            (
                br#"{"control_token":" , "}"#,
                &no_env,
                "field `control_token`: empty",
            ),
        ] {
            let err = Config::parse(json, env).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
        let err = Config::parse(b"{}", |_| Some(secret.to_owned())).unwrap_err();
        assert!(
            err.contains("not printable ASCII") && !err.contains("s3cret"),
            "{err}"
        );
    }

    #[test]
    fn refusals_name_the_field() {
        for (json, needle) in [
            (&br#"{"mode":"round-robin"}"#[..], "unknown variant `round-robin`"),
            (br#"{"vnode":5}"#, "unknown field `vnode`"),
            (br#"{"vnodes":0}"#, "field `vnodes`"),
            (br#"{"vnodes":20000}"#, "expected 1 to 10000"),
            (br#"{"members":["nope"]}"#, "field `members`: members[0]"),
            (
                br#"{"destination_header":"bad header"}"#,
                "field `destination_header`",
            ),
            (br#"{"destination_header":"host"}"#, "field `destination_header`"),
            (br#"{"control_token":""}"#, "field `control_token`"),
            (
                br#"{"max_delete_fanouts":0}"#,
                "field `max_delete_fanouts`: 0 is out of range; expected 1 to 10000",
            ),
            (
                br#"{"max_tombstones":100001}"#,
                "field `max_tombstones`: 100001 is out of range; expected 1 to 100000",
            ),
            (b"[1]", "accepted fields"),
        ] {
            let err = Config::parse(json, no_env).unwrap_err();
            assert!(err.contains(needle), "{}: {err}", String::from_utf8_lossy(json));
        }
    }
}
