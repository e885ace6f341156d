//! The configuration file as written: its keys (unknown ones refused), each value that can be
//! checked alone checked while the YAML is read, and where a key stands in the text, so that
//! every refusal names its line and says what is accepted.

use dynamic_sharding::members::Member;
use dynamic_sharding::ring::validate_vnodes;
use serde::{Deserialize, Deserializer};
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) consul_server: RawConsul,
    pub(super) register_service_name: Option<ServiceName>,
    pub(super) pushgateway: RawPushgateway,
    pub(super) http_listen_addr: Option<ListenAddr>,
    pub(super) check: RawCheck,
    pub(super) envoy: RawEnvoy,
    pub(super) resync_interval: Option<Dur>,
    pub(super) vnodes: Option<Vnodes>,
    pub(super) reconcile_interval: Option<Dur>,
    pub(super) drain_timeout: Option<Dur>,
    pub(super) tombstone_ttl: Option<Dur>,
    pub(super) lease: RawLease,
    pub(super) reload_token_file: Option<PathBuf>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLease {
    pub(super) key: Option<LeaseKey>,
    pub(super) ttl: Option<LeaseTtl>,
    pub(super) lock_delay: Option<LockDelay>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConsul {
    pub(super) addr: Option<ConsulAddr>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) token: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPushgateway {
    pub(super) port: Option<Port>,
    pub(super) servers: Option<Vec<String>>,
    pub(super) drain: Option<Vec<String>>,
    /// Server → its standby, as written.
    pub(super) standbys: Option<std::collections::BTreeMap<String, String>>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCheck {
    pub(super) interval: Option<Dur>,
    pub(super) timeout: Option<Dur>,
    pub(super) deregister_after: Option<Dur>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawEnvoy {
    pub(super) control_urls: Option<Vec<ControlUrl>>,
    pub(super) token_file: Option<PathBuf>,
}

/// Deserializes the file; an error names the key (full path), the line and what is accepted.
pub(super) fn read_raw(text: &str) -> Result<RawConfig, String> {
    // An empty file is all defaults; serde would refuse the missing mapping.
    let text = if text.trim().is_empty() { "{}" } else { text };
    let de = serde_norway::Deserializer::from_str(text);
    serde_path_to_error::deserialize::<_, RawConfig>(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // The parser's position is where the enclosing mapping starts; the key's own line is
        // more useful, so find it in the text when the file is in block style.
        let line = locate(text, &path).or_else(|| inner.location().map(|l| l.line()));
        let mut message = inner.to_string();
        if let Some(cut) = message.rfind(" at line ") {
            message.truncate(cut);
        }
        // serde_norway prefixes the path of the enclosing mapping itself; the full path replaces it.
        if let Some(rest) = message.strip_prefix(&format!("{}: ", parent_path(&path))) {
            message = rest.to_owned();
        }
        let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
        if path == "." || path.is_empty() {
            format!("{message}{at}")
        } else {
            format!("{path}{at}: {message}")
        }
    })
}

fn parent_path(path: &str) -> &str {
    path.rfind(['.', '[']).map_or("", |i| &path[..i])
}

/// The 1-based line of `path` (`a.b[2].c`) in block-style YAML, if it can be found.
pub(super) fn locate(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut at: Option<usize> = None;
    let mut min_indent = 0usize;
    for seg in path.split('.') {
        let (key, index) = match seg.split_once('[') {
            Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        if !key.is_empty() {
            let from = at.map_or(0, |a| a + 1);
            let found = (from..lines.len()).find(|&i| {
                let l = lines[i];
                let body = l.trim_start().trim_start_matches("- ").trim_start();
                indent(l) >= min_indent
                    && (body.starts_with(&format!("{key}:")) || body.starts_with(&format!("{key} :")))
            })?;
            min_indent = indent(lines[found]) + 1;
            at = Some(found);
        }
        if let Some(n) = index {
            let start = at.map_or(0, |a| a + 1);
            let items: Vec<usize> = (start..lines.len())
                .take_while(|&i| {
                    lines[i].trim().is_empty() || indent(lines[i]) >= min_indent.saturating_sub(1)
                })
                .filter(|&i| lines[i].trim_start().starts_with("- "))
                .collect();
            if let Some(&i) = items.get(n) {
                at = Some(i);
                min_indent = indent(lines[i]) + 1;
            }
        }
    }
    at.map(|a| a + 1)
}

// ---- values checked while reading, so errors carry the line ------------------------------------

/// Deserializes a string and checks it with `check`, whose error says what is accepted.
fn checked<'de, D: Deserializer<'de>, T>(
    d: D,
    check: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    check(&s).map_err(serde::de::Error::custom)
}

/// A positive duration written like `500ms`, `5s`, `1m`, `1h30m`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dur(pub(super) Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, parse_duration).map(Dur)
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const ACCEPTED: &str = "expected a positive number with a unit, e.g. 500ms, 5s, 1m, 1h30m";
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}); {ACCEPTED}"))?;
    if d.is_zero() {
        return Err(format!("invalid duration {s:?}: must be above zero; {ACCEPTED}"));
    }
    Ok(d)
}

/// A session TTL as Consul takes it: 10s to 24h.
#[derive(Clone, Copy, Debug)]
pub(super) struct LeaseTtl(pub(super) Duration);

impl<'de> Deserialize<'de> for LeaseTtl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |s| {
            let ttl = parse_duration(s)?;
            if ttl < Duration::from_secs(10) || ttl > Duration::from_secs(86_400) {
                return Err(format!(
                    "{s:?} is out of range: Consul takes a session TTL from 10s to 24h"
                ));
            }
            Ok(LeaseTtl(ttl))
        })
    }
}

/// A session lock delay as Consul takes it: 0s to 60s.
#[derive(Clone, Copy, Debug)]
pub(super) struct LockDelay(pub(super) Duration);

impl<'de> Deserialize<'de> for LockDelay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |s| {
            let delay = if s.trim() == "0" || s.trim() == "0s" {
                Duration::ZERO
            } else {
                parse_duration(s)?
            };
            if delay > Duration::from_secs(60) {
                return Err(format!(
                    "{s:?} is out of range: Consul takes a lock delay from 0s to 60s"
                ));
            }
            Ok(LockDelay(delay))
        })
    }
}

/// A Consul KV key: segments of letters, digits, `-`, `_` and `.` joined by `/`.
#[derive(Clone, Debug)]
pub(super) struct LeaseKey(pub(super) String);

impl<'de> Deserialize<'de> for LeaseKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |s| {
            let ok = !s.is_empty()
                && s.len() <= 256
                && s.split('/').all(|seg| {
                    !seg.is_empty()
                        && seg != "."
                        && seg != ".."
                        && seg
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                });
            if ok {
                Ok(LeaseKey(s.to_owned()))
            } else {
                Err(format!(
                    "invalid key {s:?}: expected a Consul KV key, segments of letters, digits, '-', '_' or '.' \
                     joined by '/' (e.g. dynamic-sharding/pushgateway/lease)"
                ))
            }
        })
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Port(pub(super) u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        match u16::try_from(v) {
            Ok(p) if p != 0 => Ok(Port(p)),
            _ => Err(serde::de::Error::custom(format!(
                "port {v} is out of range: expected 1 to 65535"
            ))),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Vnodes(pub(super) u32);

impl<'de> Deserialize<'de> for Vnodes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        let v = u32::try_from(v).unwrap_or(u32::MAX);
        validate_vnodes(v).map(Vnodes).map_err(serde::de::Error::custom)
    }
}

/// The longest Consul service name: one DNS label, so that Consul's DNS interface can serve it.
pub(super) const MAX_SERVICE_NAME_LEN: usize = 63;

#[derive(Clone, Debug)]
pub(super) struct ServiceName(pub(super) String);

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |s| {
            let ok = !s.is_empty()
                && s.len() <= MAX_SERVICE_NAME_LEN
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if ok {
                Ok(ServiceName(s.to_owned()))
            } else {
                Err(format!(
                    "invalid service name {s:?}: expected 1 to {MAX_SERVICE_NAME_LEN} letters, digits, '-' or '_' (a DNS-compatible Consul service name)"
                ))
            }
        })
    }
}

/// `host:port` or `:port` (all interfaces, the Go original's form).
#[derive(Clone, Debug)]
pub(super) struct ListenAddr {
    pub(super) addr: String,
    pub(super) all_interfaces: bool,
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, parse_listen_addr)
    }
}

pub(super) fn parse_listen_addr(s: &str) -> Result<ListenAddr, String> {
    let bad = |why: &str| {
        format!("invalid listen address {s:?}: {why}; expected host:port (e.g. 127.0.0.1:9294, [::1]:9294) or :port for all interfaces")
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("missing :port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
    if host.is_empty() {
        return Ok(ListenAddr {
            addr: format!("0.0.0.0:{port}"),
            all_interfaces: true,
        });
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<Ipv6Addr>()
            .map_err(|_| bad("not an IPv6 address between [ and ]"))?;
    } else if host.contains(':') || host.contains('/') || host.contains(' ') {
        return Err(bad(
            "the host is neither a name, an IPv4 address nor a bracketed IPv6 address",
        ));
    }
    Ok(ListenAddr {
        addr: s.to_owned(),
        all_interfaces: false,
    })
}

/// Consul's HTTP address: `host:port` as the original, or `http://host:port`.
#[derive(Clone, Debug)]
pub(super) struct ConsulAddr(pub(super) String);

impl<'de> Deserialize<'de> for ConsulAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, parse_consul_addr).map(ConsulAddr)
    }
}

pub(super) fn parse_consul_addr(s: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!("invalid Consul address {s:?}: {why}; expected host:port (e.g. localhost:8500) or http://host:port")
    };
    if s.starts_with("https://") {
        return Err(bad(
            "HTTPS is not supported; use plain HTTP to the local Consul agent",
        ));
    }
    let rest = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
    if rest.contains("://") || rest.contains('/') {
        return Err(bad("only a scheme and an address are allowed, no path"));
    }
    let member = Member::parse(rest).map_err(|e| bad(&e))?;
    Ok(format!("http://{member}"))
}

/// An Envoy control listener's base URL.
#[derive(Clone, Debug)]
pub(super) struct ControlUrl(pub(super) String);

impl<'de> Deserialize<'de> for ControlUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, parse_control_url).map(ControlUrl)
    }
}

pub(super) fn parse_control_url(s: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!("invalid control URL {s:?}: {why}; expected the base URL of an Envoy control listener, e.g. http://127.0.0.1:9293")
    };
    let url = reqwest::Url::parse(s).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "http" {
        return Err(bad(
            "only http:// is supported (the control listener is on loopback or a private network)",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(bad("no query, fragment or user allowed"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// A `pushgateway.servers` entry: `host`, `host:port`, `[v6]:port` or a bare IPv6 address.
pub fn parse_server(entry: &str, default_port: u16) -> Result<Member, String> {
    let entry = entry.trim();
    if let Ok(m) = Member::parse(entry) {
        return Ok(m);
    }
    let with_port = if entry.parse::<Ipv6Addr>().is_ok() {
        format!("[{entry}]:{default_port}")
    } else {
        format!("{entry}:{default_port}")
    };
    Member::parse(&with_port).map_err(|_| match Member::parse(entry) {
        Err(e) if entry.contains(':') => e,
        _ => format!(
            "{entry:?} is not a pushgateway address: expected host (port from pushgateway.port), host:port, or [IPv6]:port"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_entries() {
        assert_eq!(
            parse_server("Host.Example", 1).unwrap().as_str(),
            "host.example:1"
        );
        assert_eq!(parse_server("fe80::1", 2).unwrap().as_str(), "[fe80::1]:2");
        assert!(parse_server("h:x", 1).unwrap_err().contains("port"));
    }
}
