//! A real Prometheus: 2.24.1 (built with Consul discovery) scraping the passing pushgateways of a
//! test Consul every second, as docs/production.md tells users to configure it (`honor_labels`, passing
//! instances only, and a `pushgateway` target label so that a second copy of a group shows as a
//! second series); or either version with a configuration of the test's, also in agent mode.
//! Also the readers of the Prometheus HTTP API that vmagent and VictoriaMetrics share.

use crate::{bin, free_port, try_http_get, wait_until, Proc, TestDir};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// How long a Prometheus may take to answer `/-/ready` (the current one replays its WAL first).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One series of an instant query: its labels and value.
pub type Sample = (serde_json::Map<String, serde_json::Value>, f64);

/// One series of a range-vector query (`metric[5m]`): its labels and its raw samples, (Unix
/// seconds, value), oldest first.
pub type Series = (serde_json::Map<String, serde_json::Value>, Vec<(f64, f64)>);

/// What [`Prometheus::start_with`] runs.
#[derive(Clone, Debug)]
pub struct PrometheusRun {
    /// "prometheus" (2.24.1: Consul discovery) or "prometheus-current" (2.42: HTTP discovery,
    /// agent mode, no Consul discovery); see [`crate::bin`].
    pub bin: &'static str,
    /// The configuration file's text.
    pub config: String,
    /// Its listen port; the same port again finds the same storage (a restart).
    pub port: u16,
    /// `--enable-feature=agent`: scrape and remote-write only, no queries.
    pub agent: bool,
}

pub struct Prometheus {
    pub proc: Proc,
    pub port: u16,
}

impl Prometheus {
    /// Starts one that discovers `service` in the Consul at `consul_addr` and waits until ready.
    pub fn start(dir: &TestDir, consul_addr: &str, service: &str) -> Prometheus {
        let port = free_port();
        let config = dir.write(
            &format!("prometheus-{port}.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: pushgateway\n    honor_labels: true\n    scrape_timeout: 1s\n\
                 \x20   consul_sd_configs:\n      - server: {consul_addr}\n        services: [{service}]\n        refresh_interval: 1s\n\
                 \x20   relabel_configs:\n      - source_labels: [__meta_consul_health]\n        regex: passing\n        action: keep\n\
                 \x20     - source_labels: [__address__]\n        target_label: pushgateway\n"
            ),
        );
        let data = dir.join(format!("prometheus-data-{port}"));
        let mut cmd = Command::new(bin("prometheus"));
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        Prometheus::spawn(dir, cmd, port)
    }

    /// Starts `run` and waits until ready. Its configuration file is `prometheus-<port>.yml` in
    /// `dir`, its storage `prometheus-data-<port>/`.
    pub fn start_with(dir: &TestDir, run: &PrometheusRun) -> Prometheus {
        let port = run.port;
        let config = dir.write(&format!("prometheus-{port}.yml"), &run.config);
        let data = Prometheus::data_dir(dir, port);
        let mut cmd = Command::new(bin(run.bin));
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        if run.agent {
            cmd.arg("--enable-feature=agent")
                .arg(format!("--storage.agent.path={}", data.display()));
        } else {
            cmd.arg(format!("--storage.tsdb.path={}", data.display()));
        }
        Prometheus::spawn(dir, cmd, port)
    }

    /// Where [`Prometheus::start_with`] keeps the storage of the one on `port`.
    pub fn data_dir(dir: &TestDir, port: u16) -> PathBuf {
        dir.join(format!("prometheus-data-{port}"))
    }

    fn spawn(dir: &TestDir, cmd: Command, port: u16) -> Prometheus {
        let proc = Proc::spawn(&format!("prometheus-{port}"), cmd, dir);
        let mut p = Prometheus { proc, port };
        let url = format!("{}/-/ready", p.url());
        wait_until("prometheus is ready", READY_TIMEOUT, || {
            assert!(p.proc.is_running(), "prometheus exited:\n{}", p.proc.log_tail(20));
            matches!(try_http_get(&url), Ok((200, _))).then_some(())
        });
        p
    }

    /// "http://127.0.0.1:<port>".
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The result vector of an instant query: (labels, value) per series; empty on any error.
    pub fn query(&self, promql: &str) -> Vec<Sample> {
        query(&self.url(), promql)
    }

    /// The series of a range-vector query (`metric[5m]`) with their raw samples, as scraped;
    /// empty on any error.
    pub fn query_samples(&self, promql: &str) -> Vec<Series> {
        results(&self.url(), promql)
            .iter()
            .filter_map(|r| {
                let labels = r["metric"].as_object()?.clone();
                let samples = r["values"]
                    .as_array()?
                    .iter()
                    .filter_map(|s| Some((s[0].as_f64()?, s[1].as_str()?.parse().ok()?)))
                    .collect();
                Some((labels, samples))
            })
            .collect()
    }

    /// Every rule of every loaded rule group: (group, rule name, health, last error), from
    /// `/api/v1/rules`; empty on any error.
    pub fn rules(&self) -> Vec<(String, String, String, String)> {
        let Ok((200, body)) = try_http_get(&format!("{}/api/v1/rules", self.url())) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        let mut out = Vec::new();
        for g in v["data"]["groups"].as_array().into_iter().flatten() {
            for r in g["rules"].as_array().into_iter().flatten() {
                out.push((
                    text(&g["name"]),
                    text(&r["name"]),
                    text(&r["health"]),
                    text(&r["lastError"]),
                ));
            }
        }
        out
    }

    /// The addresses of the pushgateways it scrapes and finds up.
    pub fn up_targets(&self) -> Vec<String> {
        self.instances("up{job=\"pushgateway\"} == 1")
    }

    /// The addresses of the pushgateways among its active targets (`/api/v1/targets`), up or
    /// not: what it scrapes now, as its discovery last told it; empty on any error.
    pub fn scraped_targets(&self) -> Vec<String> {
        let Ok((200, body)) = try_http_get(&format!("{}/api/v1/targets?state=active", self.url())) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let mut t: Vec<String> = v["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["labels"]["job"] == "pushgateway")
            .filter_map(|t| t["labels"]["instance"].as_str().map(str::to_owned))
            .collect();
        t.sort();
        t
    }

    /// The sorted `instance` labels of what `promql` yields.
    fn instances(&self, promql: &str) -> Vec<String> {
        let mut t: Vec<String> = self
            .query(promql)
            .into_iter()
            .filter_map(|(l, _)| l.get("instance")?.as_str().map(str::to_owned))
            .collect();
        t.sort();
        t
    }
}

/// An instant query against any Prometheus-compatible API at `base` (Prometheus,
/// VictoriaMetrics): (labels, value) per series; empty on any error.
pub fn query(base: &str, promql: &str) -> Vec<Sample> {
    results(base, promql)
        .iter()
        .filter_map(|r| {
            let labels = r["metric"].as_object()?.clone();
            let value = r["value"][1].as_str()?.parse().ok()?;
            Some((labels, value))
        })
        .collect()
}

/// The `result` list of a query at `base`; empty on any error.
fn results(base: &str, promql: &str) -> Vec<serde_json::Value> {
    let url = format!("{base}/api/v1/query?query={}", encode(promql));
    let Ok((200, body)) = try_http_get(&url) else {
        return Vec::new();
    };
    let mut v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    match v["data"]["result"].take() {
        serde_json::Value::Array(results) => results,
        _ => Vec::new(),
    }
}

/// The `host:port` of every target of `job` that the scraper at `base` (Prometheus, also in agent
/// mode, or vmagent) scrapes and finds up, from its own `/api/v1/targets`, sorted; `None` when it
/// does not answer.
pub fn up_targets_of(base: &str, job: &str) -> Option<Vec<String>> {
    let Ok((200, body)) = try_http_get(&format!("{base}/api/v1/targets")) else {
        return None;
    };
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let mut out: Vec<String> = v["data"]["activeTargets"]
        .as_array()?
        .iter()
        .filter(|t| t["labels"]["job"] == job && t["health"] == "up")
        .filter_map(|t| {
            let url = t["scrapeUrl"].as_str()?;
            let rest = url.split_once("://").map_or(url, |(_, r)| r);
            Some(rest.split('/').next()?.to_owned())
        })
        .collect();
    out.sort();
    Some(out)
}

/// Percent-encodes a query parameter.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
