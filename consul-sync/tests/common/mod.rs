//! What consul-sync's integration tests share: the real `consul-sync` binary with a written
//! configuration, and readers of its endpoint.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use testkit::envoy::{Envoy, EnvoyOptions};
use testkit::{free_port, try_http_get, wait_until, Consul, Proc, Pushgateway, TestDir};

/// Timing tests hold this so they do not compete for the 2 cores with each other.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Three pushgateways, Consul, Envoy and the consul-syncs a test starts. Fields drop in order:
/// processes first, the folder last. Each test file adds the methods it needs.
pub struct Stack {
    pub syncs: Vec<ConsulSync>,
    pub envoy: Envoy,
    pub consul: Consul,
    pub pgs: Vec<Pushgateway>,
    pub dir: TestDir,
}

impl Stack {
    /// Everything but consul-sync. Envoy's bootstrap list is the three pushgateways when
    /// `bootstrap`, else empty (then only consul-sync gives it members).
    pub fn start_without_sync(name: &str, bootstrap: bool) -> Stack {
        let dir = TestDir::new(name);
        let pgs: Vec<Pushgateway> = (0..3).map(|_| Pushgateway::start(&dir)).collect();
        let consul = Consul::start(&dir);
        let members = if bootstrap {
            pgs.iter().map(Pushgateway::addr).collect()
        } else {
            Vec::new()
        };
        let envoy = Envoy::start(
            &dir,
            EnvoyOptions {
                members,
                ..Default::default()
            },
        );
        Stack {
            syncs: Vec::new(),
            envoy,
            consul,
            pgs,
            dir,
        }
    }

    /// consul-sync's settings for this stack: its Consul, all three pushgateways, its Envoy.
    pub fn options(&self) -> SyncOptions {
        let mut o = SyncOptions::new(self.consul.addr(), self.all());
        o.control_urls = vec![self.envoy.control_url()];
        o
    }

    /// The addresses of the pushgateways at `idx`, sorted.
    pub fn addrs(&self, idx: &[usize]) -> Vec<String> {
        sorted(idx.iter().map(|i| self.pgs[*i].addr()).collect())
    }

    /// The addresses of all the pushgateways, sorted.
    pub fn all(&self) -> Vec<String> {
        sorted(self.pgs.iter().map(Pushgateway::addr).collect())
    }
}

/// What goes into the configuration file.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    pub consul_addr: String,
    /// `consul_server.token`.
    pub consul_token: Option<String>,
    pub servers: Vec<String>,
    pub control_urls: Vec<String>,
    pub token: String,
    pub interval: &'static str,
    pub timeout: &'static str,
    pub resync: &'static str,
    pub service: &'static str,
    pub deregister_after: &'static str,
    pub reconcile: &'static str,
    pub drain_timeout: &'static str,
    pub drain: Vec<String>,
    /// The token `POST /-/reload` needs (`reload_token_file`).
    pub reload_token: String,
    /// Top-level YAML appended as it is (e.g. `lease: {...}`).
    pub extra_yaml: String,
    pub tombstone_ttl: &'static str,
    /// `pushgateway.username` and `pushgateway.password`, for pushgateways behind basic auth.
    pub auth: Option<(String, String)>,
    /// `pushgateway.standbys`: (server, its standby).
    pub standbys: Vec<(String, String)>,
}

impl SyncOptions {
    pub fn new(consul_addr: String, servers: Vec<String>) -> SyncOptions {
        SyncOptions {
            consul_addr,
            consul_token: None,
            servers,
            control_urls: Vec::new(),
            token: testkit::envoy::TEST_TOKEN.to_owned(),
            interval: "1s",
            timeout: "1s",
            resync: "2s",
            service: "pushgateway",
            deregister_after: "10m",
            reconcile: "30s",
            drain_timeout: "1h",
            drain: Vec::new(),
            reload_token: "reload-test-token".to_owned(),
            extra_yaml: String::new(),
            tombstone_ttl: "72h",
            auth: None,
            standbys: Vec::new(),
        }
    }

    fn yaml(&self, http_port: u16, token_file: &str, reload_token_file: &str) -> String {
        let list = |v: &[String]| v.iter().map(|s| format!("\n    - '{s}'")).collect::<String>();
        let or_empty = |v: &[String]| if v.is_empty() { " []".to_owned() } else { list(v) };
        let consul_token = self
            .consul_token
            .as_ref()
            .map(|t| format!("\n  token: '{t}'"))
            .unwrap_or_default();
        let mut auth = match &self.auth {
            Some((user, password)) => format!("  username: '{user}'\n  password: '{password}'\n"),
            None => String::new(),
        };
        if !self.standbys.is_empty() {
            auth.push_str("  standbys:\n");
            for (server, standby) in &self.standbys {
                auth.push_str(&format!("    '{server}': '{standby}'\n"));
            }
        }
        format!(
            "consul_server:\n  addr: {}{consul_token}\nregister_service_name: {}\npushgateway:\n  servers:{}\n  drain:{}\n{auth}\
             http_listen_addr: 127.0.0.1:{http_port}\ncheck:\n  interval: {}\n  timeout: {}\n  deregister_after: {}\n\
             envoy:\n  control_urls:{}\n  token_file: {token_file}\nresync_interval: {}\n\
             reconcile_interval: {}\ndrain_timeout: {}\ntombstone_ttl: {}\nreload_token_file: {reload_token_file}\n{}",
            self.consul_addr,
            self.service,
            or_empty(&self.servers),
            or_empty(&self.drain),
            self.interval,
            self.timeout,
            self.deregister_after,
            or_empty(&self.control_urls),
            self.resync,
            self.reconcile,
            self.drain_timeout,
            self.tombstone_ttl,
            self.extra_yaml,
        )
    }
}

/// The `consul-sync` binary, running.
pub struct ConsulSync {
    pub proc: Proc,
    pub http_port: u16,
    pub options: SyncOptions,
}

impl ConsulSync {
    pub fn start(dir: &TestDir, options: SyncOptions) -> ConsulSync {
        ConsulSync::start_on(dir, options, free_port())
    }

    /// Starts it with its endpoint on `http_port` and waits until `/-/healthy` answers.
    pub fn start_on(dir: &TestDir, options: SyncOptions, http_port: u16) -> ConsulSync {
        ConsulSync::start_with_env(dir, options, http_port, &[])
    }

    /// Starts it with extra environment variables (e.g. `LD_PRELOAD` of libfaketime).
    pub fn start_with_env(
        dir: &TestDir,
        options: SyncOptions,
        http_port: u16,
        env: &[(&str, &str)],
    ) -> ConsulSync {
        let config = write_config(dir, &options, http_port);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_consul-sync"));
        cmd.arg(format!("--config.file={}", config.display()))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn(&format!("consul-sync-{http_port}"), cmd, dir);
        let url = format!("http://127.0.0.1:{http_port}/-/healthy");
        wait_until("consul-sync answers /-/healthy", Duration::from_secs(10), || {
            assert!(proc.is_running(), "consul-sync exited:\n{}", proc.log_tail(30));
            matches!(try_http_get(&url), Ok((200, _))).then_some(())
        });
        ConsulSync {
            proc,
            http_port,
            options,
        }
    }

    /// Writes `options` over its configuration file and asks it to reload (`POST /-/reload`
    /// with the reload token); returns the answer's status and body.
    pub fn reload(&mut self, dir: &TestDir, options: SyncOptions) -> (u16, String) {
        write_config(dir, &options, self.http_port);
        let auth = format!("Bearer {}", self.options.reload_token);
        self.options = options;
        let r = testkit::http_request("POST", &self.url("/-/reload"), &[("authorization", &auth)], b"");
        (r.status, r.body)
    }

    /// Starts one whose clock runs 60 s ahead (libfaketime), on a free port.
    pub fn start_ahead(dir: &TestDir, options: SyncOptions) -> ConsulSync {
        let lib = testkit::faketime_lib();
        ConsulSync::start_with_env(
            dir,
            options,
            free_port(),
            &[("LD_PRELOAD", lib.to_str().unwrap()), ("FAKETIME", "+60s")],
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// The targets of `/prometheus/targets`, or `None` before the first list (503).
    pub fn targets(&self) -> Option<Vec<String>> {
        let (status, body) = try_http_get(&self.url("/prometheus/targets")).ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut t: Vec<String> = v[0]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect();
        t.sort();
        Some(t)
    }

    pub fn metrics_text(&self) -> String {
        let (status, body) = testkit::http_get(&self.url("/metrics"));
        assert_eq!(status, 200);
        body
    }

    /// The value of the series `series` (name with labels, exactly as exposed), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.metrics_text();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub fn ready(&self) -> bool {
        matches!(try_http_get(&self.url("/-/ready")), Ok((200, _)))
    }

    /// SIGTERM; returns how long it took to exit and whether it exited cleanly.
    pub fn stop_timed(&mut self) -> (Duration, bool) {
        let start = Instant::now();
        let status = self.proc.stop();
        (start.elapsed(), status.success())
    }
}

/// Writes the configuration file of the consul-sync on `http_port` (and its token files).
fn write_config(dir: &TestDir, options: &SyncOptions, http_port: u16) -> std::path::PathBuf {
    let token_file = dir.write("control-token", &options.token);
    let reload_token_file = dir.write(&format!("reload-token-{http_port}"), &options.reload_token);
    dir.write(
        &format!("consul-sync-{http_port}.yml"),
        options.yaml(
            http_port,
            &token_file.display().to_string(),
            &reload_token_file.display().to_string(),
        ),
    )
}

/// The real Unix time in milliseconds (what a consul-sync whose clock is right uses as version).
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Sorted copy.
pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}
