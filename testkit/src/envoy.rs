//! Envoy with the sharding filter, started from the shipped `envoy/envoy.yaml`.
//!
//! The test config is the shipped file with only its ports, listen addresses (loopback), wasm path
//! (absolute), bootstrap members and vnodes replaced, so every test exercises the configuration
//! users run. Each replacement must hit, so a change in the shipped file's shape fails loudly here.

use crate::http::{try_http_request, HttpResponse};
use crate::{bin, free_port, repo_root, wait_until, Proc, TestDir};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The token tests use for the control API.
pub const TEST_TOKEN: &str = "test-token";

const SHIPPED_WASM: &str = "target/wasm32-wasip1/release/dynamic_sharding.wasm";

/// What to start Envoy with.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    /// Bootstrap members in the plugin configuration.
    pub members: Vec<String>,
    /// `SHARDING_CONTROL_TOKEN` for Envoy; `None` leaves it unset.
    pub token: Option<String>,
    pub concurrency: u32,
    pub vnodes: u32,
    /// More plugin settings for every filter instance, e.g. `"max_tombstones": 20`.
    pub plugin_settings: String,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            members: Vec::new(),
            token: Some(TEST_TOKEN.to_owned()),
            concurrency: 2,
            vnodes: 500,
            plugin_settings: String::new(),
        }
    }
}

/// The four ports of one Envoy.
#[derive(Clone, Copy, Debug)]
pub struct EnvoyPorts {
    pub redirect: u16,
    pub proxy: u16,
    pub control: u16,
    pub admin: u16,
}

impl EnvoyPorts {
    pub fn free() -> EnvoyPorts {
        EnvoyPorts {
            redirect: free_port(),
            proxy: free_port(),
            control: free_port(),
            admin: free_port(),
        }
    }
}

pub struct Envoy {
    pub proc: Proc,
    pub ports: EnvoyPorts,
    pub options: EnvoyOptions,
    pub config_path: PathBuf,
}

/// The filter built by `./build.sh` (or `cargo build --release --target wasm32-wasip1`).
pub fn wasm_path() -> PathBuf {
    let p = repo_root().join(SHIPPED_WASM);
    if !p.is_file() {
        panic!(
            "{} is missing: run ./build.sh (it runs cargo build --release --target wasm32-wasip1)",
            p.display()
        );
    }
    p
}

/// The shipped configuration rewritten for a test on loopback, by `scripts/render-envoy-config.py`
/// (the renderer the demo and the benchmarks use too).
pub fn render_config(options: &EnvoyOptions, ports: EnvoyPorts) -> String {
    let script = repo_root().join("scripts/render-envoy-config.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg("--ports")
        .arg(format!(
            "{},{},{},{}",
            ports.redirect, ports.proxy, ports.control, ports.admin
        ))
        .args(["--address", "127.0.0.1", "--wasm"])
        .arg(wasm_path())
        .arg("--members")
        .arg(options.members.join(","))
        .arg("--vnodes")
        .arg(options.vnodes.to_string())
        .output()
        .unwrap_or_else(|e| panic!("run {} (python3 must be installed): {e}", script.display()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("rendered config: {e}"));
    if options.plugin_settings.is_empty() {
        return config;
    }
    let vnodes = format!("\"vnodes\": {},", options.vnodes);
    assert_eq!(
        config.matches(&vnodes).count(),
        3,
        "the three filter configurations"
    );
    config.replace(&vnodes, &format!("{vnodes} {},", options.plugin_settings))
}

impl Envoy {
    /// Starts Envoy on free ports and waits until its control API answers.
    pub fn start(dir: &TestDir, options: EnvoyOptions) -> Envoy {
        Envoy::start_on(dir, options, EnvoyPorts::free())
    }

    /// Starts Envoy on the given ports (to restart one where it was).
    pub fn start_on(dir: &TestDir, options: EnvoyOptions, ports: EnvoyPorts) -> Envoy {
        let config_path = dir.write(
            &format!("envoy-{}.yaml", ports.admin),
            render_config(&options, ports),
        );
        let mut cmd = Command::new(bin("envoy"));
        cmd.arg("-c")
            .arg(&config_path)
            // Without this Envoy dies with the thread that spawned it (PR_SET_PDEATHSIG).
            .arg("--disable-hot-restart")
            .arg("--concurrency")
            .arg(options.concurrency.to_string())
            .arg("--log-level")
            .arg("warning")
            .arg("--component-log-level")
            .arg("wasm:info")
            .current_dir(repo_root());
        match &options.token {
            Some(t) => cmd.env("SHARDING_CONTROL_TOKEN", t),
            None => cmd.env_remove("SHARDING_CONTROL_TOKEN"),
        };
        let proc = Proc::spawn(&format!("envoy-{}", ports.admin), cmd, dir);
        let mut envoy = Envoy {
            proc,
            ports,
            options,
            config_path,
        };
        envoy.wait_ready();
        envoy
    }

    fn wait_ready(&mut self) {
        let url = format!("{}/-/sharding/members", self.control_url());
        let admin = format!("{}/ready", self.admin_url());
        let proc = &mut self.proc;
        wait_until(
            "envoy answers on its control and admin listeners",
            Duration::from_secs(20),
            || {
                assert!(proc.is_running(), "envoy exited:\n{}", proc.log_tail(40));
                let control = try_http_request("GET", &url, &[], b"").ok()?;
                let ready = try_http_request("GET", &admin, &[], b"").ok()?;
                (control.status == 200 && ready.status == 200).then_some(())
            },
        );
    }

    pub fn redirect_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.redirect)
    }

    pub fn proxy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.proxy)
    }

    pub fn control_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.control)
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.admin)
    }

    /// The member list in use: (version, members), from `GET /-/sharding/members`.
    pub fn members(&self) -> (u64, Vec<String>) {
        self.try_members().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The slots of the member list in use, from `GET /-/sharding/members`: slot name ->
    /// (active, standby); `None` while Envoy does not answer.
    pub fn try_slots(&self) -> Option<BTreeMap<String, (String, Option<String>)>> {
        let url = format!("{}/-/sharding/members", self.control_url());
        let r = try_http_request("GET", &url, &[], b"").ok()?;
        if r.status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        let mut out = BTreeMap::new();
        for (name, s) in v["slots"].as_object().into_iter().flatten() {
            let active = s["active"].as_str()?.to_owned();
            out.insert(name.clone(), (active, s["standby"].as_str().map(str::to_owned)));
        }
        Some(out)
    }

    pub fn try_members(&self) -> Result<(u64, Vec<String>), String> {
        let r = try_http_request(
            "GET",
            &format!("{}/-/sharding/members", self.control_url()),
            &[],
            b"",
        )?;
        if r.status != 200 {
            return Err(format!("GET members: {} {}", r.status, r.body));
        }
        let v: serde_json::Value = serde_json::from_str(&r.body).map_err(|e| format!("{e}: {}", r.body))?;
        let version = v["version"].as_u64().ok_or("no version")?;
        let members = v["members"]
            .as_array()
            .ok_or("no members")?
            .iter()
            .filter_map(|m| m.as_str().map(str::to_owned))
            .collect();
        Ok((version, members))
    }

    /// `PUT /-/sharding/members` with the test token.
    pub fn put_members(&self, version: u64, members: &[&str]) -> HttpResponse {
        let body = serde_json::json!({ "version": version, "members": members }).to_string();
        self.put_members_raw(Some(TEST_TOKEN), body.as_bytes())
    }

    /// `PUT /-/sharding/members` with any token and body.
    pub fn put_members_raw(&self, token: Option<&str>, body: &[u8]) -> HttpResponse {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        try_http_request(
            "PUT",
            &format!("{}/-/sharding/members", self.control_url()),
            &headers,
            body,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A stat of the filter (`dynamic_sharding.<name>`) from the admin endpoint; 0 when absent.
    pub fn stat(&self, name: &str) -> u64 {
        self.envoy_stat(&format!("wasmcustom.dynamic_sharding.{name}"))
    }

    /// Envoy's own stat (e.g. `http.sharding_redirect.downstream_cx_total`).
    pub fn envoy_stat(&self, full: &str) -> u64 {
        let url = format!("{}/stats?filter=^{}$", self.admin_url(), full.replace('.', "\\."));
        let r = try_http_request("GET", &url, &[], b"").unwrap_or_else(|e| panic!("{e}"));
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{full}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// The Python of `.deps/venv` (prometheus_client and requests), the real clients of the tests.
pub fn venv_python() -> PathBuf {
    let p = repo_root().join(".deps/venv/bin/python");
    if !p.is_file() {
        panic!(
            "{} is missing: run ./build.sh deps (it creates the venv with prometheus_client and requests)",
            p.display()
        );
    }
    p
}

/// Runs `tests/clients/push.py` with one JSON request per element; returns one JSON result each.
pub fn run_python_clients(requests: &[serde_json::Value]) -> Vec<serde_json::Value> {
    use std::io::Write;
    use std::process::Stdio;
    let script = repo_root().join("tests/clients/push.py");
    let mut child = Command::new(venv_python())
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", script.display()));
    let mut input = String::new();
    for r in requests {
        input.push_str(&r.to_string());
        input.push('\n');
    }
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("write to push.py: {e}"));
    }
    // Bounded: every client call has a 30 s timeout inside the script.
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("push.py: {e}"));
    assert!(
        out.status.success(),
        "push.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("push.py output {l:?}: {e}")))
        .collect();
    assert_eq!(
        results.len(),
        requests.len(),
        "push.py stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    results
}
