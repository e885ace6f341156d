//! The configuration file (`dynamic-sharding.yml`): a superset of the Go original's keys.
//!
//! Owns parsing and every check of what a user can write. Values that can be checked alone are
//! checked while the YAML is read ([`file`]), so a refusal names the key, the line and what is
//! accepted; checks that need two keys (a server entry and the default port) are made here, one
//! section of the file at a time, and name the key and the entry.

mod file;

pub use file::{parse_duration, parse_server};

use dynamic_sharding::members::Member;
use dynamic_sharding::ring::DEFAULT_VNODES;
use file::{
    locate, parse_consul_addr, read_raw, ListenAddr, RawCheck, RawConsul, RawEnvoy, RawLease, RawPushgateway,
    MAX_SERVICE_NAME_LEN,
};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG_FILE: &str = "dynamic-sharding.yml";
pub const DEFAULT_CONSUL_ADDR: &str = "localhost:8500";
pub const DEFAULT_SERVICE_NAME: &str = "pushgateway";
/// What the standbys' Consul service name adds to `register_service_name`.
const STANDBY_SERVICE_SUFFIX: &str = "-standby";
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
/// How long a tombstone waits for its pushgateways to be readable again: long enough for one
/// that was down over a weekend to come back and lose the groups deleted meanwhile.
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(3 * 24 * 3600);
/// Environment variable for the Consul ACL token when `consul_server.token` is not set.
pub const CONSUL_TOKEN_ENV: &str = "CONSUL_HTTP_TOKEN";
/// Environment variable for the Envoy control token when `envoy.token_file` is not set.
pub const CONTROL_TOKEN_ENV: &str = "SHARDING_CONTROL_TOKEN";
/// Environment variable for the reload token when `reload_token_file` is not set.
pub const RELOAD_TOKEN_ENV: &str = "CONSUL_SYNC_RELOAD_TOKEN";
/// The lease's session TTL: Consul's least. A holder acts only within half of it after a renewal.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// Consul's own default lock delay: after a holder's session is invalidated, nobody may take the
/// lease for this long, so writes it sent just before end first.
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);

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
    /// Each server's standby (`pushgateway.standbys`): a pushgateway of its own, not in `servers`
    /// or `drain`, standing by for one server that is not draining.
    pub standbys: BTreeMap<Member, Member>,
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
    /// How long a tombstone (a `DELETE` that did not reach a pushgateway) is kept waiting for
    /// that pushgateway to be readable.
    pub tombstone_ttl: Duration,
    /// The lease in Consul: only its holder deletes, moves and deregisters.
    pub lease: LeaseConfig,
    /// Bearer token `POST /-/reload` must carry; without one, reloads come only from SIGHUP.
    pub reload_token: Option<Secret>,
    /// The file it was read from: a reload reads it again.
    pub source: Option<PathBuf>,
}

/// `lease`: a Consul session with this TTL and lock delay, and the KV key acquired with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    pub key: String,
    pub ttl: Duration,
    pub lock_delay: Duration,
}

/// A secret: compared and used, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<set>")
    }
}

impl Config {
    /// The Consul service the standbys are registered under while they stand by: not the
    /// pushgateways' own, so no Prometheus configuration that scrapes that one scrapes them.
    pub fn standby_service_name(&self) -> String {
        format!("{}{STANDBY_SERVICE_SUFFIX}", self.service_name)
    }

    /// The configured slots by name: `pushgateway.servers` and `pushgateway.drain`.
    pub fn slot_names(&self) -> Vec<Member> {
        self.servers.iter().chain(&self.drain).cloned().collect()
    }

    /// The Consul KV key holding which address of each slot is active.
    pub fn roles_key(&self) -> String {
        format!("dynamic-sharding/{}/roles", self.service_name)
    }

    /// The credentials every request to a pushgateway carries, if they need any.
    pub fn pushgateway_auth(&self) -> Option<&BasicAuth> {
        self.check.auth.as_ref()
    }
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub deregister_after: Duration,
    /// The pushgateways' basic-auth credentials (`pushgateway.username`, `pushgateway.password`):
    /// Consul's check sends them, and so does the reconciler ([`Config::pushgateway_auth`]).
    pub auth: Option<BasicAuth>,
}

/// HTTP basic-auth credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: Option<String>,
}

// The password stays out of logs and panics.
impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .finish()
    }
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
        let (mut config, mut warnings) = Config::parse(&text, &file, |k| std::env::var(k).ok(), read_file)?;
        let (servers, drain) =
            resolved_pushgateways(&config, &text, &mut warnings, resolve_host).map_err(|message| {
                ConfigError::Invalid {
                    file: file.clone(),
                    message,
                }
            })?;
        let standbys = resolved_standbys(&config, &servers, &drain, &text, resolve_host)
            .map_err(|message| ConfigError::Invalid { file, message })?;
        config.servers = servers;
        config.drain = drain;
        config.standbys = standbys;
        config.source = Some(path.to_path_buf());
        Ok((config, warnings))
    }

    /// Refuses a reloaded configuration that changes what only a restart can change: the Consul
    /// connection, the service name, the endpoint's address, the Envoys, the resync interval and
    /// the lease. Everything else (servers, drain, checks, reconcile_interval, drain_timeout,
    /// tombstone_ttl, vnodes, the reload token) is taken live.
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
        if self.lease != new.lease {
            changed.push("lease");
        }
        if changed.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} changed; a reload takes pushgateway.*, check.*, reconcile_interval, drain_timeout, tombstone_ttl, \
                 vnodes and reload_token_file, the rest needs a restart of consul-sync; nothing was changed",
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
        let mut raw = read_raw(text).map_err(invalid)?;
        let mut warnings = Vec::new();
        let auth = pushgateway_auth(raw.pushgateway.username.take(), raw.pushgateway.password.take())
            .map_err(invalid)?;
        let (servers, drain, standbys) =
            pushgateways(text, raw.pushgateway, &mut warnings).map_err(invalid)?;
        let check = check(raw.check, auth, &mut warnings);
        let http_listen_addr = listen_addr(raw.http_listen_addr, &mut warnings);
        let envoy = envoy(raw.envoy, &env, &read_file, &mut warnings).map_err(invalid)?;
        let consul = consul(raw.consul_server, &env).map_err(invalid)?;
        let service_name = raw
            .register_service_name
            .map_or_else(|| DEFAULT_SERVICE_NAME.to_owned(), |n| n.0);
        standby_service_name_fits(text, &service_name, &standbys).map_err(invalid)?;
        let lease = lease(raw.lease, &service_name);
        let reload_token = reload_token(raw.reload_token_file, &env, &read_file).map_err(invalid)?;
        let config = Config {
            consul,
            service_name,
            servers,
            standbys,
            http_listen_addr,
            check,
            envoy,
            resync_interval: raw.resync_interval.map_or(DEFAULT_RESYNC_INTERVAL, |d| d.0),
            vnodes: raw.vnodes.map_or(DEFAULT_VNODES, |v| v.0),
            drain,
            reconcile_interval: raw.reconcile_interval.map_or(DEFAULT_RECONCILE_INTERVAL, |d| d.0),
            drain_timeout: raw.drain_timeout.map_or(DEFAULT_DRAIN_TIMEOUT, |d| d.0),
            tombstone_ttl: raw.tombstone_ttl.map_or(DEFAULT_TOMBSTONE_TTL, |d| d.0),
            lease,
            reload_token,
            source: None,
        };
        Ok((config, warnings))
    }
}

/// `pushgateway.servers`, `drain` and `standbys` (server -> standby).
type Pushgateways = (Vec<Member>, Vec<Member>, BTreeMap<Member, Member>);

/// `pushgateway`: the servers to register, the ones to drain and the servers' standbys.
fn pushgateways(
    text: &str,
    raw: RawPushgateway,
    warnings: &mut Vec<Warning>,
) -> Result<Pushgateways, String> {
    let port = raw.port.map_or(DEFAULT_PUSHGATEWAY_PORT, |p| p.0);
    let servers = pushgateway_list(text, "servers", raw.servers, port)?;
    let drain = pushgateway_list(text, "drain", raw.drain, port)?;
    let at = locate(text, "pushgateway.standbys")
        .map(|l| format!(" (line {l})"))
        .unwrap_or_default();
    let mut pairs = Vec::new();
    for (server, standby) in raw.standbys.unwrap_or_default() {
        let key = format!("pushgateway.standbys[{server:?}]{at}");
        let s = parse_server(&server, port).map_err(|e| format!("{key}: {e}"))?;
        let b = parse_server(&standby, port).map_err(|e| format!("{key}: the standby: {e}"))?;
        pairs.push((server, s, b));
    }
    let standbys = checked_standbys(&servers, &drain, &pairs, &at)?;
    warnings.extend(drain_outside_servers(&servers, &drain));
    if servers.is_empty() {
        warnings.push(
            "pushgateway.servers is empty: nothing is registered; the member list is whatever Consul shows passing".to_owned(),
        );
    }
    Ok((servers, drain, standbys))
}

/// `pushgateway.standbys` checked against the servers and drain: each standby stands by for one
/// server (a draining one too: a slot drains as one, at whichever address is active), and is a
/// pushgateway of its own (in neither list, the standby of no other server). `pairs` are (the key as written, the server, its standby); `at` says where
/// the key is.
fn checked_standbys(
    servers: &[Member],
    drain: &[Member],
    pairs: &[(String, Member, Member)],
    at: &str,
) -> Result<BTreeMap<Member, Member>, String> {
    let mut out: BTreeMap<Member, Member> = BTreeMap::new();
    for (written, server, standby) in pairs {
        let key = format!("pushgateway.standbys[{written:?}]{at}");
        if !servers.contains(server) {
            return Err(format!(
                "{key}: {server} is not in pushgateway.servers; a standby stands by for a server: add {server} to \
                 servers or remove this entry"
            ));
        }
        for (list, name) in [(servers, "servers"), (drain, "drain")] {
            if list.contains(standby) {
                return Err(format!(
                    "{key}: the standby {standby} is also in pushgateway.{name}; a standby is a pushgateway of its \
                     own, in neither servers nor drain"
                ));
            }
        }
        if let Some((other, _)) = out.iter().find(|(_, s)| *s == standby) {
            return Err(format!(
                "{key}: {standby} is already the standby of {other}; each server needs a standby of its own"
            ));
        }
        if out.insert(server.clone(), standby.clone()).is_some() {
            return Err(format!(
                "{key}: names {server} again (written another way); each server may have one standby"
            ));
        }
    }
    Ok(out)
}

/// `pushgateway.standbys` with every DNS name resolved as the servers' are, checked again against
/// the resolved servers and drain (two names may be one address).
fn resolved_standbys(
    config: &Config,
    servers: &[Member],
    drain: &[Member],
    text: &str,
    resolve: impl Fn(&str) -> Result<Vec<IpAddr>, String>,
) -> Result<BTreeMap<Member, Member>, String> {
    let at = locate(text, "pushgateway.standbys")
        .map(|l| format!(" (line {l})"))
        .unwrap_or_default();
    let mut pairs = Vec::new();
    for (server, standby) in &config.standbys {
        let key = format!("pushgateway.standbys[{:?}]{at}", server.as_str());
        let s = resolve_member(server, &resolve).map_err(|e| format!("{key}: {e}"))?;
        let b = resolve_member(standby, &resolve).map_err(|e| format!("{key}: the standby: {e}"))?;
        pairs.push((server.to_string(), s, b));
    }
    checked_standbys(servers, drain, &pairs, &at)
}

/// With standbys, `<register_service_name>-standby` is a Consul service name too, and must fit
/// where the pushgateways' own does: in one DNS label.
fn standby_service_name_fits(
    text: &str,
    service_name: &str,
    standbys: &BTreeMap<Member, Member>,
) -> Result<(), String> {
    let name = format!("{service_name}{STANDBY_SERVICE_SUFFIX}");
    if standbys.is_empty() || name.len() <= MAX_SERVICE_NAME_LEN {
        return Ok(());
    }
    let line = |key: &str| {
        locate(text, key)
            .map(|l| format!(" (line {l})"))
            .unwrap_or_default()
    };
    Err(format!(
        "register_service_name{}: with pushgateway.standbys{} the standbys are registered in Consul as {name:?}, \
         {} characters, above the limit of {MAX_SERVICE_NAME_LEN} for a DNS-compatible service name; \
         expected a register_service_name of at most {} characters",
        line("register_service_name"),
        line("pushgateway.standbys"),
        name.len(),
        MAX_SERVICE_NAME_LEN - STANDBY_SERVICE_SUFFIX.len(),
    ))
}

/// `lease`: the key defaults to one per service name, so consul-syncs of different services do
/// not share it.
fn lease(raw: RawLease, service_name: &str) -> LeaseConfig {
    LeaseConfig {
        key: raw
            .key
            .map_or_else(|| format!("dynamic-sharding/{service_name}/lease"), |k| k.0),
        ttl: raw.ttl.map_or(DEFAULT_LEASE_TTL, |t| t.0),
        lock_delay: raw.lock_delay.map_or(DEFAULT_LOCK_DELAY, |d| d.0),
    }
}

/// `reload_token_file`, else the environment; none means `POST /-/reload` is refused.
fn reload_token(
    file: Option<PathBuf>,
    env: &impl Fn(&str) -> Option<String>,
    read_file: &impl Fn(&Path) -> Result<String, String>,
) -> Result<Option<Secret>, String> {
    match file {
        Some(p) => {
            let t =
                read_file(&p).map_err(|e| format!("reload_token_file: cannot read {}: {e}", p.display()))?;
            let t = t.trim();
            if t.is_empty() {
                return Err(format!(
                    "reload_token_file: {} is empty; it must hold the token POST /-/reload is to carry",
                    p.display()
                ));
            }
            Ok(Some(Secret(t.to_owned())))
        }
        None => Ok(env(RELOAD_TOKEN_ENV)
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .map(Secret)),
    }
}

/// The addresses a host name resolves to (the system's resolver).
fn resolve_host(host: &str) -> Result<Vec<IpAddr>, String> {
    (host, 0)
        .to_socket_addrs()
        .map(|addrs| addrs.map(|a| a.ip()).collect())
        .map_err(|e| e.to_string())
}

/// `pushgateway.servers` and `drain` with every DNS name replaced by its address: Envoy routes
/// (proxy mode, the `DELETE` fan-out) to IP addresses only, so a member must be one. A name must
/// resolve to exactly one IPv4 address, or to none and exactly one IPv6 address (`localhost`'s
/// `127.0.0.1` and `::1` give `127.0.0.1`); each resolution is noted in `warnings`. Entries that
/// become the same address are refused, as the same entry twice is.
fn resolved_pushgateways(
    config: &Config,
    text: &str,
    warnings: &mut Vec<Warning>,
    resolve: impl Fn(&str) -> Result<Vec<IpAddr>, String>,
) -> Result<(Vec<Member>, Vec<Member>), String> {
    let mut lists = Vec::new();
    for (field, entries) in [("servers", &config.servers), ("drain", &config.drain)] {
        let mut out: Vec<Member> = Vec::new();
        for (i, m) in entries.iter().enumerate() {
            let key = format!("pushgateway.{field}[{i}]");
            let at = locate(text, &key)
                .map(|l| format!(" (line {l})"))
                .unwrap_or_default();
            let resolved = resolve_member(m, &resolve).map_err(|e| format!("{key}{at}: {e}"))?;
            if &resolved != m {
                warnings.push(format!(
                    "{key}: {} resolves to {resolved}: that address is the member (names are resolved at start and at \
                     every reload)",
                    m.host()
                ));
            }
            if let Some(j) = out.iter().position(|s| *s == resolved) {
                return Err(format!(
                    "{key}{at}: {m} is {resolved}, the same pushgateway as pushgateway.{field}[{j}]; list each once"
                ));
            }
            out.push(resolved);
        }
        lists.push(out);
    }
    let drain = lists.pop().unwrap_or_default();
    let servers = lists.pop().unwrap_or_default();
    warnings.retain(|w| !w.contains("is not in pushgateway.servers"));
    warnings.extend(drain_outside_servers(&servers, &drain));
    Ok((servers, drain))
}

/// `m` with its host replaced by the one address it resolves to (as it is when an address).
fn resolve_member(
    m: &Member,
    resolve: &impl Fn(&str) -> Result<Vec<IpAddr>, String>,
) -> Result<Member, String> {
    let host = m.host();
    if host.starts_with('[') || host.parse::<IpAddr>().is_ok() {
        return Ok(m.clone());
    }
    let addrs = resolve(host)
        .map_err(|e| format!("{host} does not resolve ({e}); expected a name with one address"))?;
    let v4: Vec<IpAddr> = addrs.iter().copied().filter(IpAddr::is_ipv4).collect();
    let v6: Vec<IpAddr> = addrs.iter().copied().filter(IpAddr::is_ipv6).collect();
    let pick = match (v4.as_slice(), v6.as_slice()) {
        ([one], _) | ([], [one]) => *one,
        ([], []) => {
            return Err(format!(
                "{host} resolves to no address; expected a name with one address, or an address"
            ))
        }
        _ => {
            let mut all = if v4.is_empty() { v6 } else { v4 };
            all.sort();
            all.dedup();
            let all: Vec<String> = all.iter().map(IpAddr::to_string).collect();
            return Err(format!(
                "{host} resolves to several addresses ({}): each pushgateway is one member; list the addresses you \
                 mean instead",
                all.join(", ")
            ));
        }
    };
    let addr = match pick {
        IpAddr::V4(a) => format!("{a}:{}", m.port()),
        IpAddr::V6(a) => format!("[{a}]:{}", m.port()),
    };
    Member::parse(&addr)
}

/// A warning for each draining pushgateway that is not in `servers`.
fn drain_outside_servers(servers: &[Member], drain: &[Member]) -> Vec<Warning> {
    drain
        .iter()
        .enumerate()
        .filter(|(_, m)| !servers.contains(m))
        .map(|(i, m)| {
            format!(
                "pushgateway.drain[{i}]: {m} is not in pushgateway.servers; it is drained while it is registered in Consul \
                 (consul-sync keeps it registered if it registered it), and not registered anew"
            )
        })
        .collect()
}

/// `pushgateway.username` and `password`: both, or a username alone, or neither.
fn pushgateway_auth(username: Option<String>, password: Option<String>) -> Result<Option<BasicAuth>, String> {
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    match (nonempty(username), nonempty(password)) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(
            "pushgateway.password is set without pushgateway.username; set both for basic auth to the pushgateways"
                .into(),
        ),
        (Some(u), _) if u.contains(':') => Err(format!(
            "pushgateway.username {u:?} holds ':', which HTTP basic auth cannot carry; expected a name without ':'"
        )),
        (Some(username), password) => Ok(Some(BasicAuth { username, password })),
    }
}

/// `check`: what Consul will do with it is warned about.
fn check(raw: RawCheck, auth: Option<BasicAuth>, warnings: &mut Vec<Warning>) -> CheckConfig {
    let check = CheckConfig {
        interval: raw.interval.map_or(DEFAULT_CHECK_INTERVAL, |d| d.0),
        timeout: raw.timeout.map_or(DEFAULT_CHECK_TIMEOUT, |d| d.0),
        deregister_after: raw.deregister_after.map_or(DEFAULT_DEREGISTER_AFTER, |d| d.0),
        auth,
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
    check
}

/// `http_listen_addr`: the Go original's `:port` is taken, and warned about.
fn listen_addr(raw: Option<ListenAddr>, warnings: &mut Vec<Warning>) -> String {
    let Some(l) = raw else {
        return DEFAULT_HTTP_LISTEN_ADDR.to_owned();
    };
    if l.all_interfaces {
        warnings.push(format!(
            "http_listen_addr {:?} listens on all interfaces; it now serves consul-sync's /metrics, /-/ready and \
             /prometheus/targets, not the push endpoint (pushes go to Envoy)",
            l.addr.trim_start_matches("0.0.0.0")
        ));
    }
    l.addr
}

/// `envoy`: the control URLs, each once, and the token they need.
fn envoy(
    raw: RawEnvoy,
    env: &impl Fn(&str) -> Option<String>,
    read_file: &impl Fn(&Path) -> Result<String, String>,
    warnings: &mut Vec<Warning>,
) -> Result<EnvoyConfig, String> {
    let control_urls: Vec<String> = raw
        .control_urls
        .unwrap_or_default()
        .into_iter()
        .map(|u| u.0)
        .collect();
    for (i, u) in control_urls.iter().enumerate() {
        if let Some(j) = control_urls[..i].iter().position(|v| v == u) {
            return Err(format!(
                "envoy.control_urls[{i}]: {u:?} repeats envoy.control_urls[{j}]; list each once"
            ));
        }
    }
    let token = match &raw.token_file {
        Some(p) => {
            let t =
                read_file(p).map_err(|e| format!("envoy.token_file: cannot read {}: {e}", p.display()))?;
            let t = t.trim().to_owned();
            if t.is_empty() {
                return Err(format!(
                    "envoy.token_file: {} is empty; it must hold the control token",
                    p.display()
                ));
            }
            Some(t)
        }
        None => env(CONTROL_TOKEN_ENV)
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty()),
    };
    if !control_urls.is_empty() && token.is_none() {
        return Err(format!(
            "envoy.control_urls is set but there is no control token: set envoy.token_file or the {CONTROL_TOKEN_ENV} \
             environment variable to the token Envoy's filter was given"
        ));
    }
    if control_urls.is_empty() {
        warnings.push(
            "envoy.control_urls is empty: the member list is only served on /prometheus/targets".to_owned(),
        );
    }
    Ok(EnvoyConfig { control_urls, token })
}

/// `consul_server`: the address, basic auth (both or neither) and the ACL token.
fn consul(raw: RawConsul, env: &impl Fn(&str) -> Option<String>) -> Result<ConsulConfig, String> {
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    let consul = ConsulConfig {
        base_url: match raw.addr {
            Some(a) => a.0,
            None => parse_consul_addr(DEFAULT_CONSUL_ADDR)?,
        },
        username: nonempty(raw.username),
        password: nonempty(raw.password),
        token: nonempty(raw.token).or_else(|| nonempty(env(CONSUL_TOKEN_ENV))),
    };
    if consul.password.is_some() && consul.username.is_none() {
        return Err(
            "consul_server.password is set without consul_server.username; set both for basic auth".into(),
        );
    }
    Ok(consul)
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
                deregister_after: Duration::from_secs(600),
                auth: None
            }
        );
        assert_eq!(c.resync_interval, Duration::from_secs(10));
        assert_eq!(c.vnodes, 500);
        assert!(c.envoy.control_urls.is_empty());
    }

    #[test]
    fn the_shipped_sample_is_accepted() {
        let text = include_str!("../../dynamic-sharding.yml");
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
    fn pushgateway_credentials() {
        let (c, _) = parse("pushgateway:\n  username: sync\n  password: s3cret\n").unwrap();
        let auth = c.pushgateway_auth().unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.password.as_deref()),
            ("sync", Some("s3cret"))
        );
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret") && debug.contains("<set>"), "{debug}");
        assert_eq!(
            parse("pushgateway: {username: ''}\n")
                .unwrap()
                .0
                .pushgateway_auth(),
            None
        );
        let e = refused("pushgateway:\n  password: p\n");
        assert!(
            e.contains("pushgateway.password") && e.contains("without pushgateway.username"),
            "{e}"
        );
        let e = refused("pushgateway: {username: 'a:b', password: p}\n");
        assert!(
            e.contains("pushgateway.username") && e.contains("without ':'"),
            "{e}"
        );
        // A reload takes new credentials.
        let (new, _) = parse("pushgateway: {username: other}\n").unwrap();
        assert_eq!(c.check_reload(&new), Ok(()));
    }

    #[test]
    fn drain_and_reconcile_keys() {
        let text = "pushgateway:\n  servers: [a:1, b:1, c:1]\n  drain: [c:1, 'D']\nreconcile_interval: 5s\ndrain_timeout: 2m\n\
                    tombstone_ttl: 1d\n";
        let (c, warnings) = parse(text).unwrap();
        assert_eq!(c.tombstone_ttl, Duration::from_secs(24 * 3600));
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
            (
                c.reconcile_interval,
                c.drain_timeout,
                c.tombstone_ttl,
                c.drain.len()
            ),
            (
                DEFAULT_RECONCILE_INTERVAL,
                DEFAULT_DRAIN_TIMEOUT,
                DEFAULT_TOMBSTONE_TTL,
                0
            )
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
    fn lease_keys() {
        let (c, _) = parse("register_service_name: pg2\n").unwrap();
        assert_eq!(
            c.lease,
            LeaseConfig {
                key: "dynamic-sharding/pg2/lease".to_owned(),
                ttl: DEFAULT_LEASE_TTL,
                lock_delay: DEFAULT_LOCK_DELAY,
            },
            "one lease per service name by default"
        );
        let (c, _) = parse("lease: {key: ops/ds.lease, ttl: 30s, lock_delay: 0s}\n").unwrap();
        assert_eq!(
            (c.lease.key.as_str(), c.lease.ttl, c.lease.lock_delay),
            ("ops/ds.lease", Duration::from_secs(30), Duration::ZERO)
        );
        for (text, needles) in [
            ("lease: {ttl: 5s}\n", &["lease.ttl", "10s to 24h"][..]),
            ("lease: {lock_delay: 2m}\n", &["lease.lock_delay", "0s to 60s"]),
            ("lease: {key: '/abs'}\n", &["lease.key", "segments of letters"]),
            ("lease: {key: 'a//b'}\n", &["lease.key"]),
            (
                "lease: {ttl: 10s, renew: 1s}\n",
                &["lease", "unknown field `renew`"],
            ),
        ] {
            let e = refused(text);
            for n in needles {
                assert!(e.contains(n), "{text:?}: {e:?} lacks {n:?}");
            }
        }
        let (old, _) = parse("").unwrap();
        let (new, _) = parse("lease: {ttl: 20s}\n").unwrap();
        assert!(old.check_reload(&new).unwrap_err().contains("lease changed"));
    }

    #[test]
    fn the_reload_token_from_a_file_or_the_environment() {
        let (c, _) = parse("reload_token_file: /tok\n").unwrap();
        assert_eq!(c.reload_token.as_ref().map(Secret::expose), Some("file-token"));
        assert!(!format!("{c:?}").contains("file-token"), "never in Debug");
        let (c, _) = parse_env("", &[(RELOAD_TOKEN_ENV, " r1 ")]).unwrap();
        assert_eq!(c.reload_token.as_ref().map(Secret::expose), Some("r1"));
        let (c, _) = parse("").unwrap();
        assert_eq!(c.reload_token, None, "no token: reloads over HTTP are off");
        let e = refused("reload_token_file: /nope\n");
        assert!(e.contains("reload_token_file: cannot read /nope"), "{e}");
        // A new token is taken by a reload.
        let (new, _) = parse("reload_token_file: /tok\n").unwrap();
        assert_eq!(c.check_reload(&new), Ok(()));
    }

    /// Servers, drain, warnings.
    type Resolved = (Vec<String>, Vec<String>, Vec<Warning>);

    /// The servers and drain of `text` resolved with a fixed table of names.
    fn resolved(text: &str) -> Result<Resolved, String> {
        let (c, mut warnings) = parse(text)?;
        let table = |host: &str| -> Result<Vec<IpAddr>, String> {
            let ips: &[&str] = match host {
                "pg-1.example" => &["10.0.0.1"],
                "localhost" => &["::1", "127.0.0.1"],
                "v6.example" => &["fd00::7"],
                "rr.example" => &["10.0.0.9", "10.0.0.8"],
                "none.example" => &[],
                _ => return Err("Name or service not known".to_owned()),
            };
            Ok(ips.iter().map(|ip| ip.parse().unwrap()).collect())
        };
        let (servers, drain) = resolved_pushgateways(&c, text, &mut warnings, table)?;
        let names = |v: Vec<Member>| v.iter().map(|m| m.to_string()).collect();
        Ok((names(servers), names(drain), warnings))
    }

    #[test]
    fn standbys_stand_by_for_servers() {
        let text = "pushgateway:\n  port: 9091\n  servers: [10.0.0.1, 10.0.0.2]\n  standbys:\n    10.0.0.1: 10.0.1.1\n    '10.0.0.2:9091': '10.0.1.2:9092'\n";
        let (c, _) = parse(text).unwrap();
        let pairs: Vec<(&str, &str)> = c.standbys.iter().map(|(s, b)| (s.as_str(), b.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("10.0.0.1:9091", "10.0.1.1:9091"),
                ("10.0.0.2:9091", "10.0.1.2:9092")
            ]
        );
        assert!(parse("pushgateway: {servers: [a:1]}\n")
            .unwrap()
            .0
            .standbys
            .is_empty());
        let base = "pushgateway:\n  servers: ['a:1', 'b:1']\n  drain: ['b:1', 'd:1']\n  standbys:\n";
        for (entries, needles) in [
            (
                "    'x:1': 's:1'\n",
                &[
                    "pushgateway.standbys[\"x:1\"] (line 4)",
                    "x:1 is not in pushgateway.servers",
                    "add x:1",
                ][..],
            ),
            (
                "    'a:1': 'b:1'\n",
                &[
                    "the standby b:1 is also in pushgateway.servers",
                    "a pushgateway of its own",
                ],
            ),
            (
                "    'a:1': 'd:1'\n",
                &["the standby d:1 is also in pushgateway.drain"],
            ),
            (
                "    'a:1': 'a:1'\n",
                &["the standby a:1 is also in pushgateway.servers"],
            ),
            (
                "    'a:1': 'h:x'\n",
                &["pushgateway.standbys[\"a:1\"]", "the standby", "port"],
            ),
            (
                "    'a:1': ''\n",
                &["pushgateway.standbys[\"a:1\"]", "the standby"],
            ),
            ("    'a:1': ['s:1']\n", &["pushgateway.standbys", "string"]),
        ] {
            let e = refused(&format!("{base}{entries}"));
            for n in needles {
                assert!(e.contains(n), "{entries:?}: {e:?} lacks {n:?}");
            }
        }
        // A draining server keeps its standby: the slot drains as one.
        let (c, _) = parse(&format!("{base}    'b:1': 's:1'\n")).unwrap();
        assert_eq!(
            c.standbys.get(&Member::parse("b:1").unwrap()),
            Some(&Member::parse("s:1").unwrap())
        );
        let e =
            refused("pushgateway:\n  servers: ['a:1', 'c:1']\n  standbys: {'a:1': 's:1', 'c:1': 's:1'}\n");
        assert!(
            e.contains("s:1 is already the standby of a:1") && e.contains("a standby of its own"),
            "{e}"
        );
    }

    #[test]
    fn the_standbys_service_name_must_fit_a_dns_label_too() {
        let name = |n: usize| "p".repeat(n);
        let with_standbys = |n: usize| {
            format!(
                "register_service_name: {}\npushgateway:\n  servers: ['a:1']\n  standbys:\n    'a:1': 's:1'\n",
                name(n)
            )
        };
        let (c, _) = parse(&with_standbys(55)).unwrap();
        assert_eq!(c.standby_service_name().len(), 63);
        let e = refused(&with_standbys(56));
        for n in [
            "register_service_name (line 1)",
            "pushgateway.standbys (line 4)",
            &format!("\"{}-standby\"", name(56)),
            "64 characters",
            "limit of 63",
            "at most 55 characters",
        ] {
            assert!(e.contains(n), "{e:?} lacks {n:?}");
        }
        // Without standbys there is no such service: the name may use all 63 characters.
        parse(&format!("register_service_name: {}\n", name(63))).unwrap();
        parse(&format!(
            "register_service_name: {}\npushgateway:\n  standbys: {{}}\n",
            name(63)
        ))
        .unwrap();
    }

    #[test]
    fn standbys_are_resolved_and_checked_again() {
        let c = |text: &str| {
            let (c, mut warnings) = parse(text)?;
            let table = |host: &str| -> Result<Vec<IpAddr>, String> {
                match host {
                    "pg-1.example" => Ok(vec!["10.0.0.1".parse().unwrap()]),
                    "sb-1.example" => Ok(vec!["10.0.1.1".parse().unwrap()]),
                    _ => Err("Name or service not known".to_owned()),
                }
            };
            let (servers, drain) = resolved_pushgateways(&c, text, &mut warnings, table)?;
            resolved_standbys(&c, &servers, &drain, text, table)
        };
        let ok =
            c("pushgateway: {servers: [pg-1.example], standbys: {pg-1.example: sb-1.example}}\n").unwrap();
        let pairs: Vec<(String, String)> = ok.iter().map(|(s, b)| (s.to_string(), b.to_string())).collect();
        assert_eq!(pairs, [("10.0.0.1:9091".to_owned(), "10.0.1.1:9091".to_owned())]);
        // Written apart, one address once resolved.
        let e = c("pushgateway: {servers: [pg-1.example, 10.0.0.2], standbys: {10.0.0.2: 10.0.0.1}}\n")
            .unwrap_err();
        assert!(
            e.contains("the standby 10.0.0.1:9091 is also in pushgateway.servers"),
            "{e}"
        );
        let e =
            c("pushgateway: {servers: [pg-1.example], standbys: {pg-1.example: nx.example}}\n").unwrap_err();
        assert!(e.contains("the standby: nx.example does not resolve"), "{e}");
    }

    #[test]
    fn dns_names_become_their_one_address() {
        let (servers, drain, warnings) = resolved(
            "pushgateway:\n  servers: [pg-1.example, 'localhost:9092', 'v6.example:1', 10.0.0.5]\n  drain: [pg-1.example]\n",
        )
        .unwrap();
        assert_eq!(
            servers,
            ["10.0.0.1:9091", "127.0.0.1:9092", "[fd00::7]:1", "10.0.0.5:9091"]
        );
        assert_eq!(drain, ["10.0.0.1:9091"], "drained as the same member");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("pushgateway.servers[0]: pg-1.example resolves to 10.0.0.1:9091")),
            "{warnings:?}"
        );
        assert!(
            !warnings.iter().any(|w| w.contains("not in pushgateway.servers")),
            "{warnings:?}"
        );
        for (text, needles) in [
            (
                "pushgateway:\n  servers:\n    - a.example\n",
                &[
                    "pushgateway.servers[0] (line 3)",
                    "a.example does not resolve",
                    "Name or service not known",
                ][..],
            ),
            (
                "pushgateway: {servers: [none.example]}\n",
                &["pushgateway.servers[0]", "resolves to no address"],
            ),
            (
                "pushgateway: {servers: [rr.example]}\n",
                &[
                    "resolves to several addresses (10.0.0.8, 10.0.0.9)",
                    "list the addresses",
                ],
            ),
            (
                "pushgateway: {servers: [10.0.0.1, pg-1.example]}\n",
                &[
                    "pushgateway.servers[1]",
                    "is 10.0.0.1:9091",
                    "same pushgateway as pushgateway.servers[0]",
                ],
            ),
        ] {
            let e = resolved(text).unwrap_err();
            for n in needles {
                assert!(e.contains(n), "{text:?}: {e:?} lacks {n:?}");
            }
        }
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
}
