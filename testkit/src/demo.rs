//! `scripts/demo.sh` run as users run it, on free loopback ports, with its children stopped by PID
//! when the test ends (also when it fails).

use crate::{free_port, http_get, repo_root, wait_until, Proc, TestDir};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

pub struct Demo {
    pub proc: Proc,
    pub dir: TestDir,
    pub pg_ports: Vec<u16>,
    /// Each pushgateway's standby, with `DEMO_STANDBYS=1`.
    pub standby_ports: Vec<u16>,
    pub redirect_port: u16,
    pub proxy_port: u16,
    pub prometheus_port: u16,
    pub sync_port: u16,
    /// VictoriaMetrics and the vmagents, with `DEMO_SCRAPERS=vmagent`.
    pub vm_port: u16,
    pub vmagent_ports: Vec<u16>,
}

impl Demo {
    /// Starts the demo (1 s checks and scrapes, plus `env`) and waits for its ready line.
    pub fn start(name: &str, env: &[(&str, &str)]) -> Demo {
        let dir = TestDir::new(name);
        let pg_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let standby_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let (redirect_port, proxy_port, prometheus_port, sync_port) =
            (free_port(), free_port(), free_port(), free_port());
        let vm_port = free_port();
        let vmagent_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut cmd = Command::new(repo_root().join("scripts/demo.sh"));
        cmd.env("DEMO_DIR", dir.join("demo"))
            .env("DEMO_DATA_ADDRESS", "127.0.0.1")
            .env("DEMO_CONSUL_PORT", free_port().to_string())
            .env("DEMO_CONSUL_SERVER_PORT", free_port().to_string())
            .env("DEMO_CONSUL_SERF_LAN_PORT", free_port().to_string())
            .env("DEMO_CONSUL_SERF_WAN_PORT", free_port().to_string())
            .env("DEMO_PUSHGATEWAY_PORTS", port_list(&pg_ports))
            .env("DEMO_STANDBY_PORTS", port_list(&standby_ports))
            .env("DEMO_REDIRECT_PORT", redirect_port.to_string())
            .env("DEMO_PROXY_PORT", proxy_port.to_string())
            .env("DEMO_CONTROL_PORT", free_port().to_string())
            .env("DEMO_ADMIN_PORT", free_port().to_string())
            .env("DEMO_CONSUL_SYNC_PORT", sync_port.to_string())
            .env("DEMO_PROMETHEUS_PORT", prometheus_port.to_string())
            .env("DEMO_VM_PORT", vm_port.to_string())
            .env("DEMO_VMAGENT_PORTS", port_list(&vmagent_ports))
            .env("DEMO_CHECK_INTERVAL", "1s")
            .env("DEMO_SCRAPE_INTERVAL", "1s");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn("demo", cmd, &dir);
        wait_until("the demo prints its ready line", Duration::from_secs(120), || {
            assert!(proc.is_running(), "the demo exited:\n{}", proc.log_tail(40));
            proc.log().contains("dynamic-sharding demo ready").then_some(())
        });
        Demo {
            proc,
            dir,
            pg_ports,
            standby_ports,
            redirect_port,
            proxy_port,
            prometheus_port,
            sync_port,
            vm_port,
            vmagent_ports,
        }
    }

    /// The demo's children, by name, from its pids file.
    pub fn children(&self) -> BTreeMap<String, i32> {
        std::fs::read_to_string(self.dir.join("demo/pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(n, p)| (n.to_owned(), p.parse().unwrap())))
            .collect()
    }

    /// Sends `sig` to the child called `name` (e.g. "consul-sync", "pushgateway-9091").
    pub fn signal(&self, name: &str, sig: Signal) {
        let pid = self.children()[name];
        kill(Pid::from_raw(pid), sig).unwrap();
    }

    /// `GET /api/v1/<path>` of the demo's Prometheus: its `data`.
    pub fn api(&self, path: &str) -> serde_json::Value {
        let url = format!("http://127.0.0.1:{}/api/v1/{path}", self.prometheus_port);
        let (status, body) = http_get(&url);
        assert_eq!(status, 200, "{url}: {body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["data"].clone()
    }

    /// Pushes `<metric> <i>` to the group `/metrics/job/<job>/group/g<i>` for each `i` below
    /// `groups`, through the redirect listener with Python's `requests` (it follows the 307 with
    /// the body), and asserts each was stored (200).
    pub fn push_groups(&self, job: &str, metric: &str, groups: usize) {
        let base = format!("http://127.0.0.1:{}", self.redirect_port);
        let pushes: Vec<serde_json::Value> = (0..groups)
            .map(|i| {
                serde_json::json!({"client": "requests", "base": base, "method": "PUT",
                    "path": format!("/metrics/job/{job}/group/g{i}"), "body": format!("{metric} {i}\n")})
            })
            .collect();
        for r in crate::envoy::run_python_clients(&pushes) {
            assert_eq!(r["status"], 200, "{r}");
        }
    }

    /// An instant query's result vector.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let data = self.api(&format!("query?query={}", crate::prometheus::encode(promql)));
        data["result"].as_array().cloned().unwrap_or_default()
    }
}

/// Ports as the demo's `*_PORTS` variables take them: separated by spaces.
fn port_list(ports: &[u16]) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(" ")
}

impl Drop for Demo {
    fn drop(&mut self) {
        let children = self.children();
        // A frozen process would not hear SIGTERM.
        for pid in children.values() {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGCONT);
        }
        self.proc.signal(Signal::SIGTERM);
        self.proc.wait_exit(Duration::from_secs(15));
        // Whatever the outcome of the test, nothing it started survives it.
        for pid in children.values() {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
}
