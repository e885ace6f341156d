//! An HA pair of Prometheus servers scraping the pushgateways: the shipped
//! `deploy/scraping/ha/prometheus.yml` run twice (replica `a` and `b`) by Prometheus 2.24.1 with
//! Consul discovery, over the real push side (Consul, consul-sync registering three pushgateways,
//! Envoy in proxy mode). Either server alone has every group once with its value, also while the
//! other is down and after it is back; the shipped alert rules load and evaluate on both. Every
//! pushgateway has a standby holding the same groups, which neither server scrapes.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;
use testkit::pipeline::{self, Pipeline};
use testkit::prometheus::{up_targets_of, Prometheus, PrometheusRun};
use testkit::{bin, free_port, poll_for, repo_root, shipped_file, TestDir};

const GROUPS: usize = 500;
const METRIC: &str = "scrape_ha_value";
/// The shipped alert rules' one group.
const RULE_GROUP: &str = "dynamic-sharding";

/// Scrapes every second: a scrape shows within a few seconds.
const CONVERGE: Duration = Duration::from_secs(60);

/// The shipped configuration for `replica` on this stack's ports, with 1 s intervals.
fn config(pipeline: &Pipeline, replica: &str) -> String {
    let rules = repo_root().join("deploy/prometheus/rules.yml");
    shipped_file(
        "deploy/scraping/ha/prometheus.yml",
        &[
            ("scrape_interval: 15s", "scrape_interval: 1s"),
            ("evaluation_interval: 15s", "evaluation_interval: 1s"),
            ("replica: a ", &format!("replica: {replica} ")),
            (
                "/opt/dynamic-sharding/prometheus/rules.yml",
                rules.to_str().unwrap(),
            ),
            (
                "server: 127.0.0.1:8500",
                &format!("server: {}", pipeline.consul.addr()),
            ),
            ("refresh_interval: 5s", "refresh_interval: 1s"),
            (
                "'127.0.0.1:9901'",
                &format!("'127.0.0.1:{}'", pipeline.envoy.ports.admin),
            ),
            ("'127.0.0.1:9294'", &format!("'{}'", pipeline.sync_addr())),
        ],
    )
}

/// Waits until `prometheus` has every group once with `value(i)`; panics with what differs.
fn wait_groups(prometheus: &Prometheus, name: &str, value: impl Fn(usize) -> f64) -> Duration {
    pipeline::wait_groups(&format!("Prometheus {name}"), CONVERGE, GROUPS, value, || {
        prometheus.query(METRIC)
    })
}

/// Waits until every shipped rule is loaded and has evaluated without error.
fn wait_rules_ok(prometheus: &Prometheus, name: &str) {
    let shipped = std::fs::read_to_string(repo_root().join("deploy/prometheus/rules.yml")).unwrap();
    let rules = shipped
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let mut last = Vec::new();
    let ok = poll_for(CONVERGE, || {
        last = prometheus.rules();
        let ok = last.len() == rules
            && last
                .iter()
                .all(|(g, _, health, _)| g == RULE_GROUP && health == "ok");
        ok.then_some(())
    });
    assert!(
        ok.is_some(),
        "Prometheus {name}: the shipped rules are not all healthy: {last:?}"
    );
}

#[test]
fn either_server_of_the_ha_pair_alone_has_every_group_once() {
    let dir = TestDir::new("scrape-ha");
    let pipeline = Pipeline::start_with_standbys(&dir, 3, 3);
    let runs: Vec<PrometheusRun> = ["a", "b"]
        .iter()
        .map(|replica| PrometheusRun {
            bin: "prometheus",
            config: config(&pipeline, replica),
            port: free_port(),
            agent: false,
        })
        .collect();
    // As users are told to check it (this also checks the rule file it names).
    let file = dir.write("prometheus-ha-a.yml", &runs[0].config);
    let out = Command::new(bin("promtool"))
        .arg("check")
        .arg("config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check config: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut a = Prometheus::start_with(&dir, &runs[0]);
    let b = Prometheus::start_with(&dir, &runs[1]);

    pipeline.push(METRIC, GROUPS, |i| i as f64);
    pipeline.assert_standbys_hold_their_actives_groups();
    let mut actives: Vec<String> = pipeline.pgs.iter().map(|p| p.addr()).collect();
    actives.sort();
    for (p, name) in [(&a, "a"), (&b, "b")] {
        let took = wait_groups(p, name, |i| i as f64);
        eprintln!("Prometheus {name}: {GROUPS} groups after {took:?}");
        wait_rules_ok(p, name);
        assert_eq!(
            up_targets_of(&p.url(), "pushgateway"),
            Some(actives.clone()),
            "Prometheus {name} must scrape the actives only, never a standby"
        );
    }

    // a stops: b alone follows new pushes.
    a.proc.stop();
    pipeline.push(METRIC, GROUPS, |i| (1000 + i) as f64);
    let took = wait_groups(&b, "b", |i| (1000 + i) as f64);
    eprintln!("Prometheus b alone: the new values after {took:?}");

    // a is back, on its storage: both have every group once with its latest value.
    let a = Prometheus::start_with(&dir, &runs[0]);
    for (p, name) in [(&a, "a"), (&b, "b")] {
        let took = wait_groups(p, name, |i| (1000 + i) as f64);
        eprintln!("Prometheus {name} after a's restart: latest values after {took:?}");
    }
    wait_rules_ok(&a, "a");
}
