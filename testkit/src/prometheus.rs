//! A real Prometheus (2.24.1, built with Consul discovery) scraping the passing pushgateways of a
//! test Consul every second, as the README tells users to configure it: `honor_labels`, passing
//! instances only, and a `pushgateway` target label so that a second copy of a group shows as a
//! second series.

use crate::{bin, free_port, try_http_get, wait_until, Proc, TestDir};
use std::process::Command;
use std::time::Duration;

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
        let proc = Proc::spawn(&format!("prometheus-{port}"), cmd, dir);
        let mut p = Prometheus { proc, port };
        let url = format!("http://127.0.0.1:{port}/-/ready");
        wait_until("prometheus is ready", Duration::from_secs(30), || {
            assert!(p.proc.is_running(), "prometheus exited:\n{}", p.proc.log_tail(20));
            matches!(try_http_get(&url), Ok((200, _))).then_some(())
        });
        p
    }

    /// The result vector of an instant query: (labels, value) per series; empty on any error.
    pub fn query(&self, promql: &str) -> Vec<(serde_json::Map<String, serde_json::Value>, f64)> {
        let url = format!(
            "http://127.0.0.1:{}/api/v1/query?query={}",
            self.port,
            encode(promql)
        );
        let Ok((200, body)) = try_http_get(&url) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let labels = r["metric"].as_object()?.clone();
                let value = r["value"][1].as_str()?.parse().ok()?;
                Some((labels, value))
            })
            .collect()
    }

    /// The addresses of the pushgateways it scrapes and finds up.
    pub fn up_targets(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .query("up{job=\"pushgateway\"} == 1")
            .into_iter()
            .filter_map(|(l, _)| l.get("instance")?.as_str().map(str::to_owned))
            .collect();
        t.sort();
        t
    }
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
