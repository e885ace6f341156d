//! A small typed client for the Consul HTTP calls consul-sync makes: register and deregister a
//! service, list the agent's services, read every instance of a service and its health with a
//! blocking query, hold a lease (a session and a KV key acquired with it), and read, write
//! (check-and-set) and delete keys of the KV store.
//!
//! Owns the wire format (registration body, health response, sessions) and the mapping of Consul's
//! answers to members. Basic auth and the ACL token are sent on every request when configured.

use crate::config::{BasicAuth, CheckConfig, ConsulConfig};
use crate::net::{self, NetError};
use base64::prelude::{Engine, BASE64_STANDARD};
use dynamic_sharding::members::Member;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Tag every registration carries, so Prometheus `consul_sd_configs` can select on it.
pub const TAG: &str = "dynamic-sharding";
/// `Meta` key naming what registered the service.
pub const META_MANAGED_BY: &str = "managed_by";
/// `Meta` key holding the member (`host:port`) the service is in the ring.
pub const META_MEMBER: &str = "member";

/// Time allowed to connect to Consul.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for a request that does not block.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes read of a health answer: 1,024 instances of a few KiB each fit many times over.
pub const MAX_HEALTH_BYTES: usize = 16 * 1024 * 1024;
/// Most bytes read of the agent's services, which hold a few KiB each, as health entries do.
pub const MAX_SERVICES_BYTES: usize = 16 * 1024 * 1024;
/// Most bytes read of a session or KV answer (a few hundred bytes).
const MAX_SMALL_BYTES: usize = 64 * 1024;

/// Most bytes read of a KV listing (the tombstones kept under one prefix).
pub const MAX_KV_BYTES: usize = 64 * 1024 * 1024;

/// One key of a KV listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    pub value: Vec<u8>,
    /// What a check-and-set of this key must name.
    pub modify_index: u64,
}

/// One entry of a `GET /v1/kv/...` answer; only what is used.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireKv {
    key: String,
    #[serde(default)]
    value: Option<String>,
    modify_index: u64,
    /// The session holding the key (a lock), if any.
    #[serde(default)]
    session: Option<String>,
}

/// The entries of a `GET /v1/kv/<prefix>?recurse` answer (values in base64).
pub fn kv_entries(body: &[u8]) -> Result<Vec<KvEntry>, String> {
    let wire: Vec<WireKv> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    wire.into_iter()
        .map(|w| {
            let value = match w.value {
                Some(v) => BASE64_STANDARD
                    .decode(v)
                    .map_err(|e| format!("key {}: value is not base64: {e}", w.key))?,
                None => Vec::new(),
            };
            Ok(KvEntry {
                key: w.key,
                value,
                modify_index: w.modify_index,
            })
        })
        .collect()
}

/// The instances of a service Consul shows, and the index to block on next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub instances: Instances,
    pub index: u64,
}

/// The instances of a service, as members, sorted, each once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Instances {
    /// Members with an instance whose checks all pass (what `?passing` would give).
    pub passing: Vec<Member>,
    /// Members with an instance in any state: registered, whether passing or not.
    pub present: Vec<Member>,
    /// Instances whose address was not a valid member, for a warning.
    pub skipped: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct ConsulClient {
    http: reqwest::Client,
    config: ConsulConfig,
}

/// `PUT /v1/agent/service/register` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Registration {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub check: RegistrationCheck,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RegistrationCheck {
    pub name: String,
    #[serde(rename = "HTTP")]
    pub http: String,
    /// `Authorization` for pushgateways behind basic auth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<CheckHeader>,
    pub interval: String,
    pub timeout: String,
    pub deregister_critical_service_after: String,
}

impl Registration {
    /// The registration of one pushgateway: ID `<host>_<port>` as the Go original, so its
    /// documented `.../v1/agent/service/deregister/1.1.1.1_9091` keeps working.
    pub fn for_member(member: &Member, service_name: &str, check: &CheckConfig) -> Registration {
        let address = member
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let go = |d: Duration| format!("{}ms", d.as_millis());
        Registration {
            id: format!("{address}_{}", member.port()),
            name: service_name.to_owned(),
            address,
            port: member.port(),
            tags: vec![TAG.to_owned()],
            meta: BTreeMap::from([
                (META_MANAGED_BY.to_owned(), "consul-sync".to_owned()),
                (META_MEMBER.to_owned(), member.to_string()),
            ]),
            check: RegistrationCheck {
                name: format!("pushgateway {member} /-/healthy"),
                http: format!("http://{member}/-/healthy"),
                header: check.auth.as_ref().map(|a| {
                    CheckHeader(BTreeMap::from([(
                        "Authorization".to_owned(),
                        vec![basic_auth_header(a)],
                    )]))
                }),
                interval: go(check.interval),
                timeout: go(check.timeout),
                deregister_critical_service_after: go(check.deregister_after),
            },
        }
    }
}

/// The headers of Consul's HTTP check (`Header`): they hold credentials, kept out of logs.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CheckHeader(BTreeMap<String, Vec<String>>);

impl std::fmt::Debug for CheckHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<set>")
    }
}

/// The `Authorization` value for `auth`.
fn basic_auth_header(auth: &BasicAuth) -> String {
    let pair = format!("{}:{}", auth.username, auth.password.as_deref().unwrap_or(""));
    format!("Basic {}", BASE64_STANDARD.encode(pair))
}

/// One service of `/v1/agent/services`; only what is used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentService {
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub meta: Option<BTreeMap<String, String>>,
}

impl AgentService {
    /// True when consul-sync registered it (its `managed_by` meta), so it may deregister it.
    pub fn managed_by_us(&self) -> bool {
        self.meta
            .as_ref()
            .and_then(|m| m.get(META_MANAGED_BY))
            .is_some_and(|v| v == "consul-sync")
    }
}

/// One entry of `/v1/health/service/<name>`; only what is used.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    #[serde(default)]
    node: HealthNode,
    service: HealthService,
    /// The node's checks and the service's: the instance passes when every one does.
    #[serde(default)]
    checks: Vec<HealthCheck>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthCheck {
    #[serde(default)]
    status: String,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthNode {
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthService {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
}

/// The passing members from a health response body (see [`instances_from_health`]), and the
/// instances skipped.
pub fn members_from_health(body: &[u8]) -> Result<(Vec<Member>, Vec<String>), String> {
    instances_from_health(body).map(|i| (i.passing, i.skipped))
}

/// Members from a health response body: the service address (the node's when empty, as Consul
/// means it) and port; an instance passes when all its checks (node and service) pass, as
/// `?passing` filters; a member passes when one of its instances does.
pub fn instances_from_health(body: &[u8]) -> Result<Instances, String> {
    let entries: Vec<HealthEntry> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut out = Instances::default();
    for e in entries {
        let host = if e.service.address.is_empty() {
            &e.node.address
        } else {
            &e.service.address
        };
        let addr = if host.contains(':') {
            format!("[{host}]:{}", e.service.port)
        } else {
            format!("{host}:{}", e.service.port)
        };
        match Member::parse(&addr) {
            Ok(m) => {
                if e.checks.iter().all(|c| c.status == "passing") {
                    out.passing.push(m.clone());
                }
                out.present.push(m);
            }
            Err(why) => out.skipped.push(format!("service {}: {why}", e.service.id)),
        }
    }
    for v in [&mut out.passing, &mut out.present] {
        v.sort();
        v.dedup();
    }
    Ok(out)
}

impl ConsulClient {
    pub fn new(config: ConsulConfig) -> Result<ConsulClient, reqwest::Error> {
        let http = net::client(CONNECT_TIMEOUT)?;
        Ok(ConsulClient { http, config })
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let mut req = req;
        if let Some(user) = &self.config.username {
            req = req.basic_auth(user, self.config.password.as_deref());
        }
        if let Some(token) = &self.config.token {
            req = req.header("X-Consul-Token", token);
        }
        req
    }

    /// Registers (or registers again, which Consul takes as an update that keeps check status).
    pub async fn register(&self, reg: &Registration) -> Result<(), NetError> {
        const WHAT: &str = "registering a service";
        let url = format!("{}/v1/agent/service/register", self.config.base_url);
        let body =
            serde_json::to_vec(reg).map_err(|e| NetError::bad_response(WHAT, &peer(&url), e.to_string()))?;
        let req = self
            .http
            .put(&url)
            .header("content-type", "application/json")
            .body(body)
            .timeout(REQUEST_TIMEOUT);
        self.send(WHAT, &url, req).await?;
        Ok(())
    }

    /// The services registered with this agent, by ID (`GET /v1/agent/services`).
    pub async fn agent_services(&self) -> Result<BTreeMap<String, AgentService>, NetError> {
        const WHAT: &str = "listing the agent's services";
        let url = format!("{}/v1/agent/services", self.config.base_url);
        let req = self.http.get(&url).timeout(REQUEST_TIMEOUT);
        let resp = self.send(WHAT, &url, req).await?;
        let body = net::read_limited(resp, MAX_SERVICES_BYTES)
            .await
            .map_err(|e| e.into_net(WHAT, &peer(&url)))?;
        serde_json::from_slice(&body).map_err(|e| NetError::bad_response(WHAT, &peer(&url), e.to_string()))
    }

    /// Removes a service (and its check) from this agent.
    pub async fn deregister(&self, id: &str) -> Result<(), NetError> {
        const WHAT: &str = "deregistering a service";
        let url = format!("{}/v1/agent/service/deregister/{id}", self.config.base_url);
        let req = self.http.put(&url).timeout(REQUEST_TIMEOUT);
        self.send(WHAT, &url, req).await?;
        Ok(())
    }

    /// Sends an authorized request; anything but `200` is an error naming `what` and the URL.
    async fn send(
        &self,
        what: &'static str,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, NetError> {
        net::send(what, &peer(url), self.authorize(req), &[200]).await
    }

    /// Every instance of `service` and its health. With `index > 0` this is a blocking query:
    /// Consul answers when the result may have changed or after `wait`.
    pub async fn health(&self, service: &str, index: u64, wait: Duration) -> Result<Health, NetError> {
        const WHAT: &str = "reading the service's health";
        let mut url = format!("{}/v1/health/service/{service}", self.config.base_url);
        let mut timeout = REQUEST_TIMEOUT;
        if index > 0 {
            url.push_str(&format!("?index={index}&wait={}ms", wait.as_millis()));
            // Consul adds up to wait/16 of jitter before it answers.
            timeout += wait + wait / 16;
        }
        let req = self.http.get(&url).timeout(timeout);
        let resp = self.send(WHAT, &url, req).await?;
        let bad = |why: String| NetError::bad_response(WHAT, &peer(&url), why);
        let Some(index) = consul_index(&resp) else {
            return Err(bad("no X-Consul-Index header".to_owned()));
        };
        let body = net::read_limited(resp, MAX_HEALTH_BYTES)
            .await
            .map_err(|e| bad(e.to_string()))?;
        let instances = instances_from_health(&body).map_err(bad)?;
        Ok(Health { instances, index })
    }
}

/// The `X-Consul-Index` of an answer.
fn consul_index(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// `PUT /v1/session/create` body: a session that releases its locks when it is invalidated.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SessionRequest<'a> {
    name: &'a str,
    #[serde(rename = "TTL")]
    ttl: String,
    lock_delay: String,
    behavior: &'static str,
}

#[derive(Deserialize)]
struct SessionCreated {
    #[serde(rename = "ID")]
    id: String,
}

/// A KV key as it stands: the session holding it, if any, and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvLock {
    pub session: Option<String>,
    pub value: String,
}

impl ConsulClient {
    /// A new session on this agent's node with `ttl` and `lock_delay` (its locks are released
    /// when it is invalidated); its ID.
    pub async fn create_session(
        &self,
        name: &str,
        ttl: Duration,
        lock_delay: Duration,
    ) -> Result<String, NetError> {
        const WHAT: &str = "creating a session";
        let url = format!("{}/v1/session/create", self.config.base_url);
        let body = SessionRequest {
            name,
            ttl: format!("{}s", ttl.as_secs()),
            lock_delay: format!("{}ms", lock_delay.as_millis()),
            behavior: "release",
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| NetError::bad_response(WHAT, &peer(&url), e.to_string()))?;
        let req = self.http.put(&url).body(body).timeout(REQUEST_TIMEOUT);
        let resp = self.send(WHAT, &url, req).await?;
        let body = self.small_body(WHAT, &url, resp).await?;
        serde_json::from_slice::<SessionCreated>(&body)
            .map(|s| s.id)
            .map_err(|e| NetError::bad_response(WHAT, &peer(&url), e.to_string()))
    }

    /// Renews session `id`; false when Consul no longer knows it (invalidated).
    pub async fn renew_session(&self, id: &str, timeout: Duration) -> Result<bool, NetError> {
        const WHAT: &str = "renewing the lease's session";
        let url = format!("{}/v1/session/renew/{id}", self.config.base_url);
        let req = self.http.put(&url).timeout(timeout);
        let resp = net::send(WHAT, &peer(&url), self.authorize(req), &[200, 404]).await?;
        Ok(resp.status() == 200)
    }

    /// Ends session `id`: its locks are released (and the lock delay starts).
    pub async fn destroy_session(&self, id: &str, timeout: Duration) -> Result<(), NetError> {
        const WHAT: &str = "ending the lease's session";
        let url = format!("{}/v1/session/destroy/{id}", self.config.base_url);
        let req = self.http.put(&url).timeout(timeout);
        self.send(WHAT, &url, req).await?;
        Ok(())
    }

    /// Acquires `key` with `session`, writing `value`: true when the session holds it (also
    /// when it held it already), false when another does or the lock delay is running.
    pub async fn acquire(
        &self,
        key: &str,
        session: &str,
        value: &str,
        timeout: Duration,
    ) -> Result<bool, NetError> {
        const WHAT: &str = "acquiring the lease";
        let url = format!("{}/v1/kv/{key}?acquire={session}", self.config.base_url);
        let req = self.http.put(&url).body(value.to_owned()).timeout(timeout);
        let resp = self.send(WHAT, &url, req).await?;
        let body = self.small_body(WHAT, &url, resp).await?;
        match body.trim_ascii() {
            b"true" => Ok(true),
            b"false" => Ok(false),
            other => Err(NetError::bad_response(
                WHAT,
                &peer(&url),
                format!("expected true or false, got {:?}", String::from_utf8_lossy(other)),
            )),
        }
    }

    /// The key as it stands, `None` when it does not exist.
    pub async fn lock(&self, key: &str, timeout: Duration) -> Result<Option<KvLock>, NetError> {
        const WHAT: &str = "reading the lease";
        let url = format!("{}/v1/kv/{key}", self.config.base_url);
        let req = self.http.get(&url).timeout(timeout);
        let resp = net::send(WHAT, &peer(&url), self.authorize(req), &[200, 404]).await?;
        if resp.status() == 404 {
            return Ok(None);
        }
        let body = self.small_body(WHAT, &url, resp).await?;
        let bad = |why: String| NetError::bad_response(WHAT, &peer(&url), why);
        let entries: Vec<WireKv> = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
        let Some(entry) = entries.into_iter().next() else {
            return Ok(None);
        };
        let value = match entry.value {
            Some(v) => {
                let bytes = BASE64_STANDARD
                    .decode(v)
                    .map_err(|e| bad(format!("the value: {e}")))?;
                String::from_utf8_lossy(&bytes).into_owned()
            }
            None => String::new(),
        };
        Ok(Some(KvLock {
            session: entry.session,
            value,
        }))
    }

    async fn small_body(
        &self,
        what: &'static str,
        url: &str,
        resp: reqwest::Response,
    ) -> Result<Vec<u8>, NetError> {
        net::read_limited(resp, MAX_SMALL_BYTES)
            .await
            .map_err(|e| e.into_net(what, &peer(url)))
    }
}

impl ConsulClient {
    /// Every key under `prefix` with its value (`GET /v1/kv/<prefix>?recurse`); none when the
    /// prefix holds nothing (Consul answers 404).
    pub async fn kv_list(&self, prefix: &str) -> Result<Vec<KvEntry>, NetError> {
        const WHAT: &str = "reading KV keys";
        let url = format!("{}/v1/kv/{prefix}?recurse", self.config.base_url);
        let req = self.authorize(self.http.get(&url).timeout(REQUEST_TIMEOUT));
        let resp = net::send(WHAT, &peer(&url), req, &[200, 404]).await?;
        if resp.status().as_u16() == 404 {
            return Ok(Vec::new());
        }
        let body = net::read_limited(resp, MAX_KV_BYTES)
            .await
            .map_err(|e| e.into_net(WHAT, &peer(&url)))?;
        kv_entries(&body).map_err(|why| NetError::bad_response(WHAT, &peer(&url), why))
    }

    /// Writes `key` if its modify index is still `cas` (0: only if it does not exist); false
    /// when another writer came first.
    pub async fn kv_put(&self, key: &str, value: Vec<u8>, cas: u64) -> Result<bool, NetError> {
        const WHAT: &str = "writing a KV key";
        let url = format!("{}/v1/kv/{key}?cas={cas}", self.config.base_url);
        let req = self.http.put(&url).body(value).timeout(REQUEST_TIMEOUT);
        self.kv_cas(WHAT, &url, req).await
    }

    /// Deletes `key` if its modify index is still `cas`; false when another writer came first.
    pub async fn kv_delete(&self, key: &str, cas: u64) -> Result<bool, NetError> {
        const WHAT: &str = "deleting a KV key";
        let url = format!("{}/v1/kv/{key}?cas={cas}", self.config.base_url);
        let req = self.http.delete(&url).timeout(REQUEST_TIMEOUT);
        self.kv_cas(WHAT, &url, req).await
    }

    /// A check-and-set call: Consul answers `true` or `false`.
    async fn kv_cas(
        &self,
        what: &'static str,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<bool, NetError> {
        let resp = self.send(what, url, req).await?;
        let body = net::read_limited(resp, 64)
            .await
            .map_err(|e| e.into_net(what, &peer(url)))?;
        match body.trim_ascii() {
            b"true" => Ok(true),
            b"false" => Ok(false),
            other => Err(NetError::bad_response(
                what,
                &peer(url),
                format!("expected true or false, got {:?}", String::from_utf8_lossy(other)),
            )),
        }
    }
}

/// Who an error names: Consul, and the URL asked.
fn peer(url: &str) -> String {
    format!("Consul at {url}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_matches_the_original_and_adds_what_prometheus_relabels_on() {
        let m = Member::parse("10.0.0.1:9091").unwrap();
        let mut check = CheckConfig {
            interval: Duration::from_secs(5),
            timeout: Duration::from_millis(2500),
            deregister_after: Duration::from_secs(600),
            auth: None,
        };
        let json = serde_json::to_value(Registration::for_member(&m, "pushgateway", &check)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "ID": "10.0.0.1_9091", "Name": "pushgateway", "Address": "10.0.0.1", "Port": 9091,
                "Tags": ["dynamic-sharding"],
                "Meta": {"managed_by": "consul-sync", "member": "10.0.0.1:9091"},
                "Check": {
                    "Name": "pushgateway 10.0.0.1:9091 /-/healthy",
                    "HTTP": "http://10.0.0.1:9091/-/healthy",
                    "Interval": "5000ms", "Timeout": "2500ms", "DeregisterCriticalServiceAfter": "600000ms"
                }
            })
        );
        let v6 = Registration::for_member(&Member::parse("[::1]:1").unwrap(), "p", &check);
        assert_eq!(
            (v6.id.as_str(), v6.address.as_str(), v6.check.http.as_str()),
            ("::1_1", "::1", "http://[::1]:1/-/healthy")
        );
        // Behind basic auth, Consul's check sends the credentials.
        check.auth = Some(BasicAuth {
            username: "sync".into(),
            password: Some("pushgateway-test-password".into()),
        });
        let json = serde_json::to_value(Registration::for_member(&m, "pushgateway", &check)).unwrap();
        assert_eq!(
            json["Check"]["Header"],
            serde_json::json!({"Authorization": ["Basic c3luYzpwdXNoZ2F0ZXdheS10ZXN0LXBhc3N3b3Jk"]})
        );
    }

    #[test]
    fn health_entries_become_sorted_members() {
        let body = br#"[
            {"Node": {"Address": "10.1.1.1"}, "Service": {"ID": "b", "Address": "10.0.0.2", "Port": 9091}},
            {"Node": {"Address": "10.1.1.1"}, "Service": {"ID": "node-addr", "Address": "", "Port": 9092}},
            {"Node": {"Address": "10.1.1.1"}, "Service": {"ID": "a", "Address": "10.0.0.1", "Port": 9091}},
            {"Node": {"Address": "10.1.1.1"}, "Service": {"ID": "dup", "Address": "10.0.0.1", "Port": 9091}},
            {"Node": {"Address": "10.1.1.1"}, "Service": {"ID": "v6", "Address": "::1", "Port": 1}},
            {"Node": {"Address": "10.1.1.1"}, "Service": {"ID": "bad", "Address": "10.0.0.3", "Port": 0}}
        ]"#;
        let (members, skipped) = members_from_health(body).unwrap();
        let got: Vec<&str> = members.iter().map(Member::as_str).collect();
        assert_eq!(
            got,
            ["10.0.0.1:9091", "10.0.0.2:9091", "10.1.1.1:9092", "[::1]:1"]
        );
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].starts_with("service bad:"), "{skipped:?}");
        assert_eq!(members_from_health(b"[]").unwrap().0, Vec::<Member>::new());
        assert!(members_from_health(b"{}").is_err());
    }

    #[test]
    fn an_instance_passes_when_every_check_does() {
        let body = br#"[
            {"Node": {"Address": "n"}, "Service": {"ID": "a", "Address": "10.0.0.1", "Port": 1},
             "Checks": [{"Status": "passing"}, {"Status": "passing"}]},
            {"Node": {"Address": "n"}, "Service": {"ID": "b", "Address": "10.0.0.2", "Port": 1},
             "Checks": [{"Status": "critical"}, {"Status": "passing"}]},
            {"Node": {"Address": "n"}, "Service": {"ID": "c", "Address": "10.0.0.3", "Port": 1},
             "Checks": [{"Status": "passing"}, {"Status": "warning"}]},
            {"Node": {"Address": "m"}, "Service": {"ID": "c-elsewhere", "Address": "10.0.0.3", "Port": 1},
             "Checks": [{"Status": "passing"}]}
        ]"#;
        let i = instances_from_health(body).unwrap();
        let names = |v: &[Member]| v.iter().map(|m| m.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(&i.passing),
            ["10.0.0.1:1", "10.0.0.3:1"],
            "a critical node or service check, or a warning, fails the instance; another passing \
             instance of the same member keeps it"
        );
        assert_eq!(names(&i.present), ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"]);
    }

    /// A one-connection HTTP server on loopback that answers every request with `head` and then
    /// `body_bytes` bytes of `fill` (or until the client goes away).
    fn serve_once(head: String, fill: u8, body_bytes: usize) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(head.as_bytes());
                let chunk = vec![fill; 64 * 1024];
                let mut sent = 0;
                while sent < body_bytes && s.write_all(&chunk).is_ok() {
                    sent += chunk.len();
                }
            }
        });
        format!("http://{addr}")
    }

    fn client(base_url: String) -> ConsulClient {
        ConsulClient::new(ConsulConfig {
            base_url,
            username: None,
            password: None,
            token: None,
        })
        .unwrap()
    }

    /// Answers of four times `limit` bytes, with the length announced and without: `call` must
    /// refuse each within seconds, naming the limit. Returns the errors.
    async fn huge_answers_refused<
        T: std::fmt::Debug,
        F: std::future::Future<Output = Result<T, NetError>>,
    >(
        limit: usize,
        call: impl Fn(ConsulClient) -> F,
    ) -> Vec<String> {
        let big = limit * 4;
        let mut errors = Vec::new();
        for head in [
            format!("HTTP/1.1 200 OK\r\nX-Consul-Index: 5\r\nContent-Length: {big}\r\n\r\n"),
            // No length announced: the limit is enforced while reading.
            "HTTP/1.1 200 OK\r\nX-Consul-Index: 5\r\nConnection: close\r\n\r\n".to_owned(),
        ] {
            let started = std::time::Instant::now();
            let err = call(client(serve_once(head, b' ', big))).await;
            let err = err.unwrap_err().to_string();
            assert!(err.contains(&format!("at most {limit} are read")), "{err}");
            assert!(started.elapsed() < Duration::from_secs(5));
            errors.push(err);
        }
        errors
    }

    #[test]
    fn kv_entries_decode_values_and_keep_the_index() {
        let body = br#"[
            {"Key": "a/1", "Value": "eyJ4IjoxfQ==", "ModifyIndex": 7, "Flags": 0},
            {"Key": "a/2", "Value": null, "ModifyIndex": 9}
        ]"#;
        let entries = kv_entries(body).unwrap();
        assert_eq!(
            entries,
            [
                KvEntry {
                    key: "a/1".into(),
                    value: br#"{"x":1}"#.to_vec(),
                    modify_index: 7
                },
                KvEntry {
                    key: "a/2".into(),
                    value: vec![],
                    modify_index: 9
                }
            ]
        );
        let err = kv_entries(br#"[{"Key": "a/1", "Value": "!!", "ModifyIndex": 1}]"#).unwrap_err();
        assert!(err.contains("key a/1: value is not base64"), "{err}");
    }

    #[tokio::test]
    async fn a_huge_kv_listing_is_refused_without_reading_it_all() {
        let list = |c: ConsulClient| async move { c.kv_list("dynamic-sharding/p/tombstones/").await };
        for err in huge_answers_refused(MAX_KV_BYTES, list).await {
            assert!(err.contains("reading KV keys"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_huge_answer_is_refused_without_reading_it_all() {
        let passing = |c: ConsulClient| async move { c.health("pushgateway", 0, Duration::ZERO).await };
        huge_answers_refused(MAX_HEALTH_BYTES, passing).await;
        let big = MAX_HEALTH_BYTES * 4;
        let head = format!("HTTP/1.1 500 Oops\r\nContent-Length: {big}\r\n\r\n");
        let err = client(serve_once(head, b'x', big))
            .health("pushgateway", 0, Duration::ZERO)
            .await;
        let err = err.unwrap_err().to_string();
        assert!(
            err.contains("answered 500") && err.contains("unreadable"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_huge_list_of_services_is_refused_without_reading_it_all() {
        let services = |c: ConsulClient| async move { c.agent_services().await };
        for err in huge_answers_refused(MAX_SERVICES_BYTES, services).await {
            assert!(err.contains("listing the agent's services"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_garbage_answer_is_an_error_naming_it() {
        let head = "HTTP/1.1 200 OK\r\nX-Consul-Index: 5\r\nContent-Length: 9\r\n\r\n".to_owned();
        let err = client(serve_once(head, b'#', 9))
            .health("pushgateway", 0, Duration::ZERO)
            .await;
        let err = err.unwrap_err().to_string();
        assert!(err.contains("unexpected answer"), "{err}");
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n".to_owned();
        let err = client(serve_once(head, b'[', 2))
            .health("pushgateway", 0, Duration::ZERO)
            .await;
        assert!(err.unwrap_err().to_string().contains("X-Consul-Index"));
    }
}
