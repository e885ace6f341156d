//! The configuration file (`dynamic-sharding.yml`): a superset of the Go original's keys.
//!
//! Owns parsing and every check of what a user can write. Values that can be checked alone are
//! checked while the YAML is read, so a refusal names the key, the line and what is accepted;
//! checks that need two keys (a server entry and the default port) name the key and the entry.

use dynamic_sharding::members::Member;
use dynamic_sharding::ring::{validate_vnodes, DEFAULT_VNODES};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG_FILE: &str = "dynamic-sharding.yml";
pub const DEFAULT_CONSUL_ADDR: &str = "localhost:8500";
pub const DEFAULT_SERVICE_NAME: &str = "pushgateway";
pub const DEFAULT_PUSHGATEWAY_PORT: u16 = 9091;
pub const DEFAULT_HTTP_LISTEN_ADDR: &str = "127.0.0.1:9294";
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_DEREGISTER_AFTER: Duration = Duration::from_secs(600);
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(10);
/// How often the reconciler reads every pushgateway's groups when nothing else triggers it.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a draining pushgateway keeps the groups nobody pushed elsewhere before they are
/// moved to their owners: long enough for jobs that push hourly to move them themselves.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);
/// Environment variable for the Consul ACL token when `consul_server.token` is not set.
pub const CONSUL_TOKEN_ENV: &str = "CONSUL_HTTP_TOKEN";
/// Environment variable for the Envoy control token when `envoy.token_file` is not set.
pub const CONTROL_TOKEN_ENV: &str = "SHARDING_CONTROL_TOKEN";

/// Consul clamps `DeregisterCriticalServiceAfter` below this to this.
const CONSUL_MIN_DEREGISTER: Duration = Duration::from_secs(60);
/// Consul clamps check intervals below this to this.
const CONSUL_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// A refused configuration. The text names the file, the key (and line when known) and what
/// is accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

/// The checked configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub consul: ConsulConfig,
    /// Consul service name of every pushgateway (`register_service_name`).
    pub service_name: String,
    /// The pushgateways to register, canonical `host:port`, in file order, no duplicates.
    pub servers: Vec<Member>,
    /// Where consul-sync's own HTTP endpoint listens (`host:port`).
    pub http_listen_addr: String,
    pub check: CheckConfig,
    pub envoy: EnvoyConfig,
    /// Every Envoy gets the list again this often, so a restarted Envoy is healed.
    pub resync_interval: Duration,
    /// Virtual nodes per member; must equal the filter's: the reconciler places groups with it.
    pub vnodes: u32,
    /// Pushgateways to take out of the ring (`pushgateway.drain`): they keep being registered and
    /// scraped, their groups move to their owners at their next push, the rest at the deadline.
    pub drain: Vec<Member>,
    /// The reconciler reads every pushgateway this often, and after every member change.
    pub reconcile_interval: Duration,
    /// How long a drain waits for groups to be pushed elsewhere before it moves the rest.
    pub drain_timeout: Duration,
    /// The file it was read from: a reload reads it again.
    pub source: Option<PathBuf>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct ConsulConfig {
    /// `http://host:port`, no trailing slash.
    pub base_url: String,
    /// HTTP basic auth, sent when a username is set.
    pub username: Option<String>,
    pub password: Option<String>,
    /// ACL token (`X-Consul-Token`).
    pub token: Option<String>,
}

// Secrets stay out of logs and panics.
impl fmt::Debug for ConsulConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulConfig")
            .field("base_url", &self.base_url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub deregister_after: Duration,
}

#[derive(Clone, PartialEq, Eq)]
pub struct EnvoyConfig {
    /// Base URLs (`http://host:port`, no trailing slash) of each Envoy's control listener.
    pub control_urls: Vec<String>,
    /// Bearer token for the control API; required when there is a control URL.
    pub token: Option<String>,
}

impl fmt::Debug for EnvoyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvoyConfig")
            .field("control_urls", &self.control_urls)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

// ---- the file as written ------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    consul_server: RawConsul,
    #[serde(default)]
    register_service_name: Option<ServiceName>,
    #[serde(default)]
    pushgateway: RawPushgateway,
    #[serde(default)]
    http_listen_addr: Option<ListenAddr>,
    #[serde(default)]
    check: RawCheck,
    #[serde(default)]
    envoy: RawEnvoy,
    #[serde(default)]
    resync_interval: Option<Dur>,
    #[serde(default)]
    vnodes: Option<Vnodes>,
    #[serde(default)]
    reconcile_interval: Option<Dur>,
    #[serde(default)]
    drain_timeout: Option<Dur>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsul {
    #[serde(default)]
    addr: Option<ConsulAddr>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPushgateway {
    #[serde(default)]
    port: Option<Port>,
    #[serde(default)]
    servers: Option<Vec<String>>,
    #[serde(default)]
    drain: Option<Vec<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    #[serde(default)]
    interval: Option<Dur>,
    #[serde(default)]
    timeout: Option<Dur>,
    #[serde(default)]
    deregister_after: Option<Dur>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvoy {
    #[serde(default)]
    control_urls: Option<Vec<ControlUrl>>,
    #[serde(default)]
    token_file: Option<PathBuf>,
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
struct Dur(Duration);

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

#[derive(Clone, Copy, Debug)]
struct Port(u16);

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
struct Vnodes(u32);

impl<'de> Deserialize<'de> for Vnodes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        let v = u32::try_from(v).unwrap_or(u32::MAX);
        validate_vnodes(v).map(Vnodes).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug)]
struct ServiceName(String);

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |s| {
            let ok = !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if ok {
                Ok(ServiceName(s.to_owned()))
            } else {
                Err(format!(
                    "invalid service name {s:?}: expected 1 to 63 letters, digits, '-' or '_' (a DNS-compatible Consul service name)"
                ))
            }
        })
    }
}

/// `host:port` or `:port` (all interfaces, the Go original's form).
#[derive(Clone, Debug)]
struct ListenAddr {
    addr: String,
    all_interfaces: bool,
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, parse_listen_addr)
    }
}

fn parse_listen_addr(s: &str) -> Result<ListenAddr, String> {
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
struct ConsulAddr(String);

impl<'de> Deserialize<'de> for ConsulAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, parse_consul_addr).map(ConsulAddr)
    }
}

fn parse_consul_addr(s: &str) -> Result<String, String> {
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
struct ControlUrl(String);

impl<'de> Deserialize<'de> for ControlUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, parse_control_url).map(ControlUrl)
    }
}

fn parse_control_url(s: &str) -> Result<String, String> {
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

/// The entries of `pushgateway.<field>`, each parsed and listed once; an error names the entry,
/// its line and what is accepted.
fn pushgateway_list(
    text: &str,
    field: &str,
    entries: Option<Vec<String>>,
    port: u16,
) -> Result<Vec<Member>, String> {
    let mut out: Vec<Member> = Vec::new();
    for (i, entry) in entries.unwrap_or_default().iter().enumerate() {
        let key = format!("pushgateway.{field}[{i}]");
        let at = locate(text, &key)
            .map(|l| format!(" (line {l})"))
            .unwrap_or_default();
        let m = parse_server(entry, port).map_err(|e| format!("{key}{at}: {e}"))?;
        if let Some(j) = out.iter().position(|s| *s == m) {
            return Err(format!(
                "{key}{at}: {entry:?} is {m}, the same pushgateway as pushgateway.{field}[{j}]; list each once"
            ));
        }
        out.push(m);
    }
    Ok(out)
}

/// Deserializes the file; an error names the key (full path), the line and what is accepted.
fn read_raw(text: &str) -> Result<RawConfig, String> {
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
fn locate(text: &str, path: &str) -> Option<usize> {
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

/// A warning for the log, found while loading (the configuration is still accepted).
pub type Warning = String;

impl Config {
    /// Reads and checks `path`; the environment supplies tokens not in the file.
    pub fn load(path: &Path) -> Result<(Config, Vec<Warning>), ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let read_file = |p: &Path| std::fs::read_to_string(p).map_err(|e| e.to_string());
        let (mut config, warnings) = Config::parse(&text, &file, |k| std::env::var(k).ok(), read_file)?;
        config.source = Some(path.to_path_buf());
        Ok((config, warnings))
    }

    /// Refuses a reloaded configuration that changes what only a restart can change: the Consul
    /// connection, the service name, the endpoint's address, the Envoys and the resync interval.
    /// Everything else (servers, drain, checks, reconcile_interval, drain_timeout, vnodes) is
    /// taken live.
    pub fn check_reload(&self, new: &Config) -> Result<(), String> {
        let mut changed = Vec::new();
        if self.consul != new.consul {
            changed.push("consul_server");
        }
        if self.service_name != new.service_name {
            changed.push("register_service_name");
        }
        if self.http_listen_addr != new.http_listen_addr {
            changed.push("http_listen_addr");
        }
        if self.envoy != new.envoy {
            changed.push("envoy");
        }
        if self.resync_interval != new.resync_interval {
            changed.push("resync_interval");
        }
        if changed.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} changed; a reload takes pushgateway.*, check.*, reconcile_interval, drain_timeout and vnodes, \
                 the rest needs a restart of consul-sync; nothing was changed",
                changed.join(", ")
            ))
        }
    }

    /// Checks the YAML `text` of `file`. `env` reads an environment variable, `read_file` the
    /// token file; both are parameters so tests need neither.
    pub fn parse(
        text: &str,
        file: &str,
        env: impl Fn(&str) -> Option<String>,
        read_file: impl Fn(&Path) -> Result<String, String>,
    ) -> Result<(Config, Vec<Warning>), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            file: file.to_owned(),
            message,
        };
        // An empty file is all defaults, as serde would refuse the missing mapping.
        let raw = read_raw(text).map_err(invalid)?;
        let mut warnings = Vec::new();

        let port = raw.pushgateway.port.map_or(DEFAULT_PUSHGATEWAY_PORT, |p| p.0);
        let servers = pushgateway_list(text, "servers", raw.pushgateway.servers, port).map_err(invalid)?;
        let drain = pushgateway_list(text, "drain", raw.pushgateway.drain, port).map_err(invalid)?;
        for (i, m) in drain.iter().enumerate() {
            if !servers.contains(m) {
                warnings.push(format!(
                    "pushgateway.drain[{i}]: {m} is not in pushgateway.servers; it is drained while it is registered in Consul (consul-sync keeps it registered if it registered it), and not registered anew"
                ));
            }
        }
        if servers.is_empty() {
            warnings.push(
                "pushgateway.servers is empty: nothing is registered; the member list is whatever Consul shows passing".to_owned(),
            );
        }

        let check = CheckConfig {
            interval: raw.check.interval.map_or(DEFAULT_CHECK_INTERVAL, |d| d.0),
            timeout: raw.check.timeout.map_or(DEFAULT_CHECK_TIMEOUT, |d| d.0),
            deregister_after: raw
                .check
                .deregister_after
                .map_or(DEFAULT_DEREGISTER_AFTER, |d| d.0),
        };
        if check.interval < CONSUL_MIN_INTERVAL {
            warnings.push(format!(
                "check.interval {:?} is below 1s; Consul runs checks at most once a second",
                check.interval
            ));
        }
        if check.deregister_after < CONSUL_MIN_DEREGISTER {
            warnings.push(format!(
                "check.deregister_after {:?} is below 1m; Consul raises it to 1m (and reaps every 30s)",
                check.deregister_after
            ));
        }

        let http_listen_addr = match raw.http_listen_addr {
            Some(l) => {
                if l.all_interfaces {
                    warnings.push(format!(
                        "http_listen_addr {:?} listens on all interfaces; it now serves consul-sync's /metrics, /-/ready and \
                         /prometheus/targets, not the push endpoint (pushes go to Envoy)",
                        l.addr.trim_start_matches("0.0.0.0")
                    ));
                }
                l.addr
            }
            None => DEFAULT_HTTP_LISTEN_ADDR.to_owned(),
        };

        let control_urls: Vec<String> = raw
            .envoy
            .control_urls
            .unwrap_or_default()
            .into_iter()
            .map(|u| u.0)
            .collect();
        for (i, u) in control_urls.iter().enumerate() {
            if let Some(j) = control_urls[..i].iter().position(|v| v == u) {
                return Err(invalid(format!(
                    "envoy.control_urls[{i}]: {u:?} repeats envoy.control_urls[{j}]; list each once"
                )));
            }
        }
        let token = match &raw.envoy.token_file {
            Some(p) => {
                let t = read_file(p)
                    .map_err(|e| invalid(format!("envoy.token_file: cannot read {}: {e}", p.display())))?;
                let t = t.trim().to_owned();
                if t.is_empty() {
                    return Err(invalid(format!(
                        "envoy.token_file: {} is empty; it must hold the control token",
                        p.display()
                    )));
                }
                Some(t)
            }
            None => env(CONTROL_TOKEN_ENV)
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty()),
        };
        if !control_urls.is_empty() && token.is_none() {
            return Err(invalid(format!(
                "envoy.control_urls is set but there is no control token: set envoy.token_file or the {CONTROL_TOKEN_ENV} \
                 environment variable to the token Envoy's filter was given"
            )));
        }
        if control_urls.is_empty() {
            warnings.push(
                "envoy.control_urls is empty: the member list is only served on /prometheus/targets"
                    .to_owned(),
            );
        }

        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        let consul = ConsulConfig {
            base_url: match raw.consul_server.addr {
                Some(a) => a.0,
                None => parse_consul_addr(DEFAULT_CONSUL_ADDR).map_err(invalid)?,
            },
            username: nonempty(raw.consul_server.username),
            password: nonempty(raw.consul_server.password),
            token: nonempty(raw.consul_server.token).or_else(|| nonempty(env(CONSUL_TOKEN_ENV))),
        };
        if consul.password.is_some() && consul.username.is_none() {
            return Err(invalid(
                "consul_server.password is set without consul_server.username; set both for basic auth"
                    .into(),
            ));
        }

        let config = Config {
            consul,
            service_name: raw
                .register_service_name
                .map_or_else(|| DEFAULT_SERVICE_NAME.to_owned(), |n| n.0),
            servers,
            http_listen_addr,
            check,
            envoy: EnvoyConfig { control_urls, token },
            resync_interval: raw.resync_interval.map_or(DEFAULT_RESYNC_INTERVAL, |d| d.0),
            vnodes: raw.vnodes.map_or(DEFAULT_VNODES, |v| v.0),
            drain,
            reconcile_interval: raw.reconcile_interval.map_or(DEFAULT_RECONCILE_INTERVAL, |d| d.0),
            drain_timeout: raw.drain_timeout.map_or(DEFAULT_DRAIN_TIMEOUT, |d| d.0),
            source: None,
        };
        Ok((config, warnings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL: &str = "consul_server:
  addr: localhost:8500
  username:
  password:
register_service_name: pushgateway
pushgateway:
  port: 9091
  servers:
    - 1.1.1.1
    - 2.2.2.2
http_listen_addr: :9292
";

    fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<(Config, Vec<Warning>), String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::parse(
            text,
            "test.yml",
            |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            |p| {
                if p == Path::new("/tok") {
                    Ok("file-token\n".into())
                } else {
                    Err("No such file".into())
                }
            },
        )
        .map_err(|e| e.to_string())
    }

    fn parse(text: &str) -> Result<(Config, Vec<Warning>), String> {
        parse_env(text, &[])
    }

    fn refused(text: &str) -> String {
        match parse(text) {
            Err(e) => e,
            Ok((c, _)) => unreachable!("accepted: {c:?}"),
        }
    }

    #[test]
    fn the_original_sample_is_accepted_as_is() {
        let (c, warnings) = parse(ORIGINAL).unwrap();
        assert_eq!(c.consul.base_url, "http://localhost:8500");
        assert_eq!(
            (c.consul.username.as_deref(), c.consul.password.as_deref()),
            (None, None)
        );
        assert_eq!(c.service_name, "pushgateway");
        let servers: Vec<&str> = c.servers.iter().map(Member::as_str).collect();
        assert_eq!(servers, ["1.1.1.1:9091", "2.2.2.2:9091"]);
        assert_eq!(c.http_listen_addr, "0.0.0.0:9292");
        assert!(warnings
            .iter()
            .any(|w| w.contains("\":9292\" listens on all interfaces") && w.contains("not the push")));
        assert_eq!(
            c.check,
            CheckConfig {
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
                deregister_after: Duration::from_secs(600)
            }
        );
        assert_eq!(c.resync_interval, Duration::from_secs(10));
        assert_eq!(c.vnodes, 500);
        assert!(c.envoy.control_urls.is_empty());
    }

    #[test]
    fn the_shipped_sample_is_accepted() {
        let text = include_str!("../dynamic-sharding.yml");
        let (c, _) = parse_env(text, &[(CONTROL_TOKEN_ENV, "t")]).unwrap();
        assert_eq!(c.envoy.control_urls, ["http://127.0.0.1:9293"]);
        assert_eq!(c.http_listen_addr, DEFAULT_HTTP_LISTEN_ADDR);
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let (c, _) = parse("").unwrap();
        assert_eq!(c.consul.base_url, "http://localhost:8500");
        assert_eq!(c.http_listen_addr, "127.0.0.1:9294");
        assert!(c.servers.is_empty());
    }

    #[test]
    fn new_keys() {
        let text = "consul_server: {addr: 'http://127.0.0.1:8600/', username: u, password: p, token: abc}
pushgateway:
  servers: [a.example:9100, 10.0.0.1, '::1', '[::2]:7']
check: {interval: 1s, timeout: 500ms, deregister_after: 30s}
envoy:
  control_urls: [http://127.0.0.1:9293/, 'http://envoy-2:9293']
  token_file: /tok
resync_interval: 1m
vnodes: 100
";
        let (c, warnings) = parse_env(text, &[(CONTROL_TOKEN_ENV, "env-token")]).unwrap();
        assert_eq!(c.consul.base_url, "http://127.0.0.1:8600");
        assert_eq!(c.consul.token.as_deref(), Some("abc"));
        let servers: Vec<&str> = c.servers.iter().map(Member::as_str).collect();
        assert_eq!(
            servers,
            ["a.example:9100", "10.0.0.1:9091", "[::1]:9091", "[::2]:7"]
        );
        assert_eq!(c.check.timeout, Duration::from_millis(500));
        assert_eq!(
            c.envoy.control_urls,
            ["http://127.0.0.1:9293", "http://envoy-2:9293"]
        );
        assert_eq!(
            c.envoy.token.as_deref(),
            Some("file-token"),
            "the token file wins over the environment"
        );
        assert_eq!(c.resync_interval, Duration::from_secs(60));
        assert_eq!(c.vnodes, 100);
        assert!(
            warnings.iter().any(|w| w.contains("raises it to 1m")),
            "{warnings:?}"
        );
        // Secrets never reach Debug output.
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("abc") && !debug.contains("file-token") && debug.contains("<set>"),
            "{debug}"
        );
    }

    #[test]
    fn drain_and_reconcile_keys() {
        let text = "pushgateway:\n  servers: [a:1, b:1, c:1]\n  drain: [c:1, 'D']\nreconcile_interval: 5s\ndrain_timeout: 2m\n";
        let (c, warnings) = parse(text).unwrap();
        let drain: Vec<&str> = c.drain.iter().map(Member::as_str).collect();
        assert_eq!(drain, ["c:1", "d:9091"]);
        assert_eq!(c.reconcile_interval, Duration::from_secs(5));
        assert_eq!(c.drain_timeout, Duration::from_secs(120));
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("pushgateway.drain[1]") && w.contains("not in pushgateway.servers")),
            "{warnings:?}"
        );
        let (c, _) = parse("").unwrap();
        assert_eq!(
            (c.reconcile_interval, c.drain_timeout, c.drain.len()),
            (DEFAULT_RECONCILE_INTERVAL, DEFAULT_DRAIN_TIMEOUT, 0)
        );
        let e = refused("pushgateway:\n  drain:\n    - a:1\n    - A:1\n");
        assert!(
            e.contains("pushgateway.drain[1] (line 4)") && e.contains("list each once"),
            "{e}"
        );
        let e = refused("drain_timeout: never\n");
        assert!(
            e.contains("drain_timeout (line 1)") && e.contains("invalid duration"),
            "{e}"
        );
    }

    #[test]
    fn reloads_take_the_pushgateways_and_refuse_the_rest() {
        let (old, _) = parse("pushgateway: {servers: [a:1]}\n").unwrap();
        let (new, _) =
            parse("pushgateway: {servers: [a:1, b:1], drain: [a:1]}\ncheck: {interval: 2s}\n").unwrap();
        assert_eq!(old.check_reload(&new), Ok(()));
        let (new, _) = parse("consul_server: {addr: 'x:1'}\nhttp_listen_addr: '127.0.0.1:1'\n").unwrap();
        let e = old.check_reload(&new).unwrap_err();
        assert!(
            e.contains("consul_server, http_listen_addr changed") && e.contains("nothing was changed"),
            "{e}"
        );
    }

    #[test]
    fn tokens_from_the_environment() {
        let text = "envoy: {control_urls: ['http://127.0.0.1:1']}";
        let (c, _) = parse_env(text, &[(CONTROL_TOKEN_ENV, " t1 "), (CONSUL_TOKEN_ENV, "t2")]).unwrap();
        assert_eq!(
            (c.envoy.token.as_deref(), c.consul.token.as_deref()),
            (Some("t1"), Some("t2"))
        );
        let e = parse(text).unwrap_err();
        assert!(
            e.contains("no control token") && e.contains("envoy.token_file") && e.contains(CONTROL_TOKEN_ENV),
            "{e}"
        );
    }

    #[test]
    fn refusals_name_file_key_line_and_what_is_accepted() {
        for (text, needles) in [
            // Unknown keys, at every level.
            (
                "consul_server:\n  adr: x:1\n",
                &[
                    "test.yml",
                    "consul_server",
                    "unknown field `adr`",
                    "expected one of `addr`",
                    "(line 2)",
                ][..],
            ),
            (
                "pushgatway: {}\n",
                &["unknown field `pushgatway`", "register_service_name", "(line 1)"],
            ),
            (
                "check:\n  intervall: 5s\n",
                &[
                    "check",
                    "unknown field `intervall`",
                    "deregister_after",
                    "(line 2)",
                ],
            ),
            // Bad durations.
            (
                "check:\n  interval: 5\n",
                &[
                    "check.interval",
                    "invalid duration \"5\"",
                    "e.g. 500ms, 5s",
                    "(line 2)",
                ],
            ),
            (
                "check:\n  timeout: 0s\n",
                &["check.timeout", "above zero", "(line 2)"],
            ),
            (
                "\nresync_interval: soon\n",
                &["resync_interval", "invalid duration", "(line 2)"],
            ),
            // Bad addresses.
            (
                "http_listen_addr: localhost\n",
                &[
                    "http_listen_addr",
                    "missing :port",
                    "expected host:port",
                    "(line 1)",
                ],
            ),
            (
                "http_listen_addr: ':99999'\n",
                &["http_listen_addr", "0 to 65535", "(line 1)"],
            ),
            (
                "consul_server: {addr: 'https://c:8500'}\n",
                &[
                    "consul_server.addr (line 1)",
                    "HTTPS is not supported",
                    "expected host:port",
                ],
            ),
            (
                "consul_server: {addr: 'c'}\n",
                &["consul_server.addr", "missing :port", "expected host:port"],
            ),
            (
                "envoy: {control_urls: ['127.0.0.1:9293']}\n",
                &["envoy.control_urls", "expected the base URL", "(line 1)"],
            ),
            (
                "envoy: {control_urls: ['https://e:1']}\n",
                &["envoy.control_urls", "only http://"],
            ),
            (
                "pushgateway:\n  servers: ['a b']\n",
                &["pushgateway.servers[0]", "\"a b\"", "expected host"],
            ),
            (
                "pushgateway:\n  servers: ['h:0']\n",
                &["pushgateway.servers[0]", "1 to 65535"],
            ),
            (
                "pushgateway:\n  servers: [h, 'H:9091']\n",
                &[
                    "pushgateway.servers[1]",
                    "same pushgateway as pushgateway.servers[0]",
                ],
            ),
            (
                "pushgateway:\n  port: 70000\n",
                &["pushgateway.port", "expected 1 to 65535", "(line 2)"],
            ),
            // Other values.
            ("vnodes: 0\n", &["vnodes", "expected 1 to 10000", "(line 1)"]),
            (
                "register_service_name: 'a/b'\n",
                &["register_service_name", "letters, digits", "(line 1)"],
            ),
            (
                "envoy: {control_urls: ['http://e:1'], token_file: /nope}\n",
                &["envoy.token_file", "cannot read /nope"],
            ),
            (
                "consul_server: {password: p}\n",
                &["consul_server.password", "without consul_server.username"],
            ),
            ("- a\n", &["test.yml", "expected struct"]),
            // Lines of block-style entries are found exactly.
            (
                "pushgateway:\n  port: 9091\n  servers:\n    - a:1\n    - b:1\n    - 'c d'\n",
                &["pushgateway.servers[2] (line 6)", "\"c d\""],
            ),
            (
                "consul_server:\n  addr: a:1\ncheck:\n  timeout: 1s\n  interval: 1x\n",
                &["check.interval (line 5)"],
            ),
        ] {
            let e = refused(text);
            for n in needles {
                assert!(e.contains(n), "{text:?}: {e:?} lacks {n:?}");
            }
        }
    }

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
