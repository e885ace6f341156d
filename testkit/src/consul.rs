//! A real Consul agent on loopback, every port a free one: a single-node server, or a client
//! agent joined to one (as production runs it: consul-sync talks to its local client agent), with
//! ACLs or without.
//!
//! Not `-dev`: a dev agent keeps its state in memory, so a restarted one has forgotten every
//! registration, which no production agent does. Each agent keeps its state in a data folder
//! inside the [`TestDir`], so [`Consul::restart`] (or [`Consul::start_on`] after [`Consul::stop`])
//! brings back the same services and catalog, as a restarted production agent would.
//! `raft_multiplier = 1` (dev mode's timing) makes a server elect itself leader in about a second.
//!
//! With [`ConsulOptions::acl_token`], ACLs are on with `default_policy = "deny"` and that token is
//! the bootstrap (management) token and every agent's own; [`Consul::create_token`] makes tokens
//! with given rules, [`Consul::set_rules`] changes them (a token that loses its rights).

use crate::{bin, free_port, try_http_request, wait_until, HttpResponse, Proc, TestDir};
use std::process::Command;
use std::time::Duration;

/// How long Consul may take to start and elect itself.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping agent may take: a client agent leaves the cluster first (about 5 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The ports one Consul agent listens on (DNS and gRPC are off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsulPorts {
    pub http: u16,
    pub server: u16,
    pub serf_lan: u16,
    pub serf_wan: u16,
}

impl ConsulPorts {
    pub fn free() -> ConsulPorts {
        ConsulPorts {
            http: free_port(),
            server: free_port(),
            serf_lan: free_port(),
            serf_wan: free_port(),
        }
    }
}

/// One service instance as `/v1/health/service/<name>` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsulService {
    pub id: String,
    pub address: String,
    pub port: u16,
    /// The aggregated status of its checks: "passing", "warning" or "critical".
    pub status: String,
    pub tags: Vec<String>,
    pub meta: Vec<(String, String)>,
}

/// How an agent runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsulOptions {
    /// ACLs on, `default_policy = "deny"`, with this bootstrap (management) token, which is also
    /// every agent's own token. `None`: no ACLs.
    pub acl_token: Option<String>,
    /// A client agent joined to the server whose Serf LAN port this is; `None`: a server.
    pub join: Option<u16>,
}

/// A token made by [`Consul::create_token`]: its secret and the policy that holds its rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclToken {
    pub secret: String,
    pub policy_id: String,
    pub policy_name: String,
}

pub struct Consul {
    pub proc: Proc,
    pub http_port: u16,
    pub ports: ConsulPorts,
    pub options: ConsulOptions,
}

impl Consul {
    /// Starts a server on free ports and waits until it has a leader.
    pub fn start(dir: &TestDir) -> Consul {
        Consul::start_on(dir, ConsulPorts::free())
    }

    /// Starts a server on `ports` with its data in `dir` (e.g. again after [`Consul::stop`]: it
    /// keeps its catalog) and waits until it has a leader.
    pub fn start_on(dir: &TestDir, ports: ConsulPorts) -> Consul {
        Consul::start_with(dir, ports, ConsulOptions::default())
    }

    /// Starts a server with ACLs on (`default_policy = "deny"`), `token` its bootstrap token.
    pub fn start_with_acl(dir: &TestDir, token: &str) -> Consul {
        let options = ConsulOptions {
            acl_token: Some(token.to_owned()),
            join: None,
        };
        Consul::start_with(dir, ConsulPorts::free(), options)
    }

    /// Starts a client agent joined to `server` (with the server's ACL settings) and waits until
    /// it knows the leader and its node is in the catalog.
    pub fn start_client(dir: &TestDir, server: &Consul) -> Consul {
        let options = ConsulOptions {
            acl_token: server.options.acl_token.clone(),
            join: Some(server.ports.serf_lan),
        };
        Consul::start_with(dir, ConsulPorts::free(), options)
    }

    /// Starts an agent on `ports` with its data in `dir` and waits until it knows the leader and
    /// its node is in the catalog.
    pub fn start_with(dir: &TestDir, ports: ConsulPorts, options: ConsulOptions) -> Consul {
        let data = dir.join(format!("consul-data-{}", ports.http));
        let config = dir.write(&format!("consul-{}.hcl", ports.http), agent_config(&options));
        let node = format!("testkit-{}", ports.http);
        let mut cmd = Command::new(bin("consul"));
        cmd.arg("agent")
            .arg(format!("-data-dir={}", data.display()))
            .arg(format!("-config-file={}", config.display()))
            .arg(format!("-node={node}"))
            .args(["-client", "127.0.0.1", "-bind", "127.0.0.1"])
            .args(["-dns-port", "-1", "-grpc-port", "-1"])
            .arg(format!("-http-port={}", ports.http))
            .arg(format!("-serf-lan-port={}", ports.serf_lan))
            // Debug, so that a failed test's log shows each check's runs and results ("Check
            // status updated"), not only their failures and the syncs of a changed status.
            .arg("-log-level=debug");
        match options.join {
            None => {
                cmd.arg("-server")
                    .arg("-bootstrap-expect=1")
                    .arg(format!("-server-port={}", ports.server))
                    .arg(format!("-serf-wan-port={}", ports.serf_wan));
            }
            Some(serf_lan) => {
                cmd.arg(format!("-retry-join=127.0.0.1:{serf_lan}"));
            }
        }
        let proc = Proc::spawn(&format!("consul-{}", ports.http), cmd, dir);
        let mut consul = Consul {
            proc,
            http_port: ports.http,
            ports,
            options,
        };
        wait_until(
            &format!("consul on port {} knows the leader", ports.http),
            LEADER_TIMEOUT,
            || {
                if !consul.proc.is_running() {
                    panic!(
                        "consul on port {} exited:\n{}",
                        ports.http,
                        consul.proc.log_tail(30)
                    );
                }
                match consul.try_request("GET", "/v1/status/leader", b"") {
                    Ok(r) if r.status == 200 && !r.body.trim().is_empty() && r.body.trim() != "\"\"" => {
                        Some(())
                    }
                    _ => None,
                }
            },
        );
        // The leader is known before the catalog takes writes; wait until the node is in it.
        wait_until(
            &format!("consul lists the node {node}"),
            LEADER_TIMEOUT,
            || match consul.try_request("GET", "/v1/catalog/nodes", b"") {
                Ok(r) if r.status == 200 && r.body.contains(&format!("\"{node}\"")) => Some(()),
                _ => None,
            },
        );
        consul
    }

    /// Stops it ([`Consul::stop`]) and starts it again on the same ports with the same data.
    pub fn restart(&mut self, dir: &TestDir) {
        self.stop();
        *self = Consul::start_with(dir, self.ports, self.options.clone());
    }

    /// "127.0.0.1:<http port>", as consul-sync's `consul_server.addr`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// "http://127.0.0.1:<http port>".
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// SIGTERM and wait for it to exit, as a service manager stops it (a client agent leaves the
    /// cluster first); SIGKILL after 15 s. The data folder stays for a start on the same ports.
    pub fn stop(&mut self) {
        self.proc.signal(nix::sys::signal::Signal::SIGTERM);
        if self.proc.wait_exit(STOP_TIMEOUT).is_none() {
            self.proc.kill();
        }
    }

    /// A request to its HTTP API with the bootstrap token when ACLs are on; `Err` when it did
    /// not answer.
    pub fn try_request(&self, method: &str, path: &str, body: &[u8]) -> Result<HttpResponse, String> {
        let url = format!("{}{path}", self.url());
        match &self.options.acl_token {
            Some(t) => try_http_request(method, &url, &[("X-Consul-Token", t)], body),
            None => try_http_request(method, &url, &[], body),
        }
    }

    /// Like [`Consul::try_request`], and the answer must be `200`.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> HttpResponse {
        let r = self
            .try_request(method, path, body)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
        r
    }

    /// A new token whose policy (named `name`) holds `rules` (HCL); needs ACLs on.
    pub fn create_token(&self, name: &str, rules: &str) -> AclToken {
        let policy = serde_json::json!({ "Name": name, "Rules": rules }).to_string();
        let policy = self.request("PUT", "/v1/acl/policy", policy.as_bytes()).json();
        let policy_id = policy["ID"].as_str().unwrap().to_owned();
        let token = serde_json::json!({ "Description": name, "Policies": [{ "ID": policy_id }] });
        let token = self
            .request("PUT", "/v1/acl/token", token.to_string().as_bytes())
            .json();
        AclToken {
            secret: token["SecretID"].as_str().unwrap().to_owned(),
            policy_id,
            policy_name: name.to_owned(),
        }
    }

    /// Replaces the rules of `token`'s policy: its rights change at once.
    pub fn set_rules(&self, token: &AclToken, rules: &str) {
        let policy = serde_json::json!({ "Name": token.policy_name, "Rules": rules }).to_string();
        self.request(
            "PUT",
            &format!("/v1/acl/policy/{}", token.policy_id),
            policy.as_bytes(),
        );
    }

    /// The value of the KV key `key` and the session holding it (`None` when the key is absent).
    pub fn kv(&self, key: &str) -> Option<(String, Option<String>)> {
        let r = self.try_request("GET", &format!("/v1/kv/{key}"), b"").ok()?;
        if r.status != 200 {
            return None;
        }
        let session = r.json()[0]["Session"].as_str().map(str::to_owned);
        // `?raw` gives the value as stored, without base64.
        let value = self
            .try_request("GET", &format!("/v1/kv/{key}?raw"), b"")
            .ok()?
            .body;
        Some((value, session))
    }

    /// Every instance of `service` with its aggregated check status; empty when Consul does not
    /// answer.
    pub fn services(&self, service: &str) -> Vec<ConsulService> {
        let Ok(r) = self.try_request("GET", &format!("/v1/health/service/{service}"), b"") else {
            return Vec::new();
        };
        if r.status != 200 {
            return Vec::new();
        }
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        let mut out = Vec::new();
        for entry in v.as_array().into_iter().flatten() {
            let svc = &entry["Service"];
            let statuses: Vec<&str> = entry["Checks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["Status"].as_str())
                .collect();
            let status = if statuses.contains(&"critical") {
                "critical"
            } else if statuses.contains(&"warning") {
                "warning"
            } else {
                "passing"
            };
            out.push(ConsulService {
                id: svc["ID"].as_str().unwrap_or_default().to_owned(),
                address: svc["Address"].as_str().unwrap_or_default().to_owned(),
                port: svc["Port"].as_u64().unwrap_or_default() as u16,
                status: status.to_owned(),
                tags: svc["Tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect(),
                meta: svc["Meta"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect(),
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The IDs of the passing instances of `service`, sorted.
    pub fn passing_ids(&self, service: &str) -> Vec<String> {
        self.services(service)
            .into_iter()
            .filter(|s| s.status == "passing")
            .map(|s| s.id)
            .collect()
    }
}

/// The agent's configuration file.
fn agent_config(options: &ConsulOptions) -> String {
    let mut hcl = String::from("performance { raft_multiplier = 1 }\nprimary_datacenter = \"dc1\"\n");
    if let Some(token) = &options.acl_token {
        let master = if options.join.is_none() {
            format!("master = \"{token}\"\n    ")
        } else {
            String::new()
        };
        hcl.push_str(&format!(
            "acl {{\n  enabled = true\n  default_policy = \"deny\"\n  down_policy = \"extend-cache\"\n  \
             tokens {{\n    {master}agent = \"{token}\"\n  }}\n}}\n"
        ));
    }
    hcl
}
