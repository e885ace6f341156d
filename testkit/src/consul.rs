//! A real Consul agent: a single-node server on loopback, every port a free one.
//!
//! Not `-dev`: a dev agent keeps its state in memory, so a restarted one has forgotten every
//! registration, which no production agent does. This one keeps its state in a data folder inside
//! the [`TestDir`], so [`Consul::start_on`] after [`Consul::stop`] brings back the same catalog,
//! as a restarted production agent would. `raft_multiplier = 1` (dev mode's timing) makes it
//! elect itself leader in about a second.

use crate::{bin, free_port, try_http_get, wait_until, Proc, TestDir};
use std::process::Command;
use std::time::Duration;

/// How long Consul may take to start and elect itself.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);

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

pub struct Consul {
    pub proc: Proc,
    pub http_port: u16,
    pub ports: ConsulPorts,
}

impl Consul {
    /// Starts an agent on free ports and waits until it has a leader.
    pub fn start(dir: &TestDir) -> Consul {
        Consul::start_on(dir, ConsulPorts::free())
    }

    /// Starts an agent on `ports` with its data in `dir` (e.g. again after [`Consul::stop`]: it
    /// keeps its catalog) and waits until it has a leader.
    pub fn start_on(dir: &TestDir, ports: ConsulPorts) -> Consul {
        let data = dir.join(format!("consul-data-{}", ports.http));
        let config = dir.write(
            &format!("consul-{}.hcl", ports.http),
            "performance { raft_multiplier = 1 }\n",
        );
        let mut cmd = Command::new(bin("consul"));
        cmd.arg("agent")
            .arg("-server")
            .arg("-bootstrap-expect=1")
            .arg(format!("-data-dir={}", data.display()))
            .arg(format!("-config-file={}", config.display()))
            .arg(format!("-node=testkit-{}", ports.http))
            .args(["-client", "127.0.0.1", "-bind", "127.0.0.1"])
            .args(["-dns-port", "-1", "-grpc-port", "-1"])
            .arg(format!("-http-port={}", ports.http))
            .arg(format!("-server-port={}", ports.server))
            .arg(format!("-serf-lan-port={}", ports.serf_lan))
            .arg(format!("-serf-wan-port={}", ports.serf_wan))
            .arg("-log-level=info");
        let proc = Proc::spawn(&format!("consul-{}", ports.http), cmd, dir);
        let mut consul = Consul {
            proc,
            http_port: ports.http,
            ports,
        };
        let url = format!("{}/v1/status/leader", consul.url());
        wait_until(
            &format!("consul on port {} has a leader", ports.http),
            LEADER_TIMEOUT,
            || {
                if !consul.proc.is_running() {
                    panic!(
                        "consul on port {} exited:\n{}",
                        ports.http,
                        consul.proc.log_tail(30)
                    );
                }
                match try_http_get(&url) {
                    Ok((200, body)) if !body.trim().is_empty() && body.trim() != "\"\"" => Some(()),
                    _ => None,
                }
            },
        );
        // The leader is known before the catalog takes writes; wait until the node is in it.
        let nodes = format!("{}/v1/catalog/nodes", consul.url());
        wait_until(
            "consul lists its own node",
            LEADER_TIMEOUT,
            || match try_http_get(&nodes) {
                Ok((200, body)) if body.contains("testkit-") => Some(()),
                _ => None,
            },
        );
        consul
    }

    /// "127.0.0.1:<http port>", as consul-sync's `consul_server.addr`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// "http://127.0.0.1:<http port>".
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// SIGTERM and wait (the data folder stays for [`Consul::start_on`]).
    pub fn stop(&mut self) {
        self.proc.stop();
    }

    /// Every instance of `service` with its aggregated check status; empty when Consul does not
    /// answer.
    pub fn services(&self, service: &str) -> Vec<ConsulService> {
        let Ok((200, body)) = try_http_get(&format!("{}/v1/health/service/{service}", self.url())) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
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
