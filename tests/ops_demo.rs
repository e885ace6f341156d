//! The operations kit against the running demo (Consul, three pushgateways, Envoy, consul-sync,
//! Prometheus 2.24.1, on free loopback ports): the shipped alert rules load in Prometheus, fire
//! when a pushgateway, all of them, consul-sync or an Envoy fail, and resolve when they recover; every
//! query of the shipped Grafana dashboard returns data after some traffic.
//!
//! The rules run from a copy whose `for:` durations are 2 s, so the test takes seconds, not
//! minutes; everything else is the shipped file.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod markdown;

use nix::sys::signal::Signal;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use testkit::demo::Demo;
use testkit::{http_get, http_request, repo_root, wait_until, Pushgateway, TestDir};

/// `$__rate_interval` as Grafana would compute it here: 4 × the 1 s scrape interval, and more.
const RATE_INTERVAL: &str = "5s";

/// What these tests read from the demo's Prometheus.
trait Alerts {
    fn alerts(&self, state: &str) -> BTreeSet<String>;
    fn wait_firing(&self, alert: &str);
    fn wait_resolved(&self, alert: &str);
    fn query_range(&self, promql: &str, start: f64) -> Vec<(Value, Vec<f64>)>;
}

impl Alerts for Demo {
    /// The alerts in the given state ("firing" or "pending"), by name.
    fn alerts(&self, state: &str) -> BTreeSet<String> {
        self.api("alerts")["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == state)
            .map(|a| a["labels"]["alertname"].as_str().unwrap().to_owned())
            .collect()
    }

    fn wait_firing(&self, alert: &str) {
        wait_until(&format!("{alert} fires"), Duration::from_secs(90), || {
            self.alerts("firing").contains(alert).then_some(())
        });
    }

    fn wait_resolved(&self, alert: &str) {
        wait_until(&format!("{alert} resolves"), Duration::from_secs(60), || {
            let now: BTreeSet<String> = self
                .alerts("firing")
                .union(&self.alerts("pending"))
                .cloned()
                .collect();
            (!now.contains(alert)).then_some(())
        });
    }

    /// A range query as a Grafana panel runs it: the series and their values.
    fn query_range(&self, promql: &str, start: f64) -> Vec<(Value, Vec<f64>)> {
        let end = now();
        let path = format!(
            "query_range?query={}&start={start}&end={end}&step=1",
            testkit::prometheus::encode(promql)
        );
        self.api(&path)["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let values = s["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v[1].as_str().unwrap().parse::<f64>().unwrap())
                    .collect();
                (s["metric"].clone(), values)
            })
            .collect()
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The shipped rules with every `for:` at 2 s.
fn rules_for_test() -> (String, Vec<String>) {
    let shipped = std::fs::read_to_string(repo_root().join("deploy/prometheus/rules.yml")).unwrap();
    let mut names = Vec::new();
    let text: Vec<String> = shipped
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if let Some(name) = t.strip_prefix("- alert: ") {
                names.push(name.trim().to_owned());
            }
            match t.strip_prefix("for: ") {
                Some(_) => format!("{}for: 2s", &l[..l.len() - t.len()]),
                None => l.to_owned(),
            }
        })
        .collect();
    (text.join("\n") + "\n", names)
}

#[test]
fn alerts_fire_and_resolve_and_every_dashboard_query_has_data() {
    let (rules, names) = rules_for_test();
    let rules_dir = TestDir::new("ops-rules");
    let rules_path = rules_dir.write("rules.yml", &rules);
    let demo = Demo::start(
        "ops-alerts",
        &[
            ("DEMO_RULES_FILE", rules_path.to_str().unwrap()),
            ("DEMO_RECONCILE_INTERVAL", "2s"),
            ("DEMO_DRAIN_TIMEOUT", "2s"),
        ],
    );
    let start = now() - 5.0;

    // Every rule of the file is loaded, with a summary and a runbook entry that exists.
    let groups = demo.api("rules")["groups"].as_array().unwrap().clone();
    let loaded: Vec<&Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let loaded_names: Vec<String> = loaded
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(loaded_names, names, "Prometheus loaded every rule of rules.yml");
    for r in &loaded {
        assert_eq!(r["health"], "ok", "{r}");
        assert!(
            !r["annotations"]["summary"].as_str().unwrap_or("").is_empty(),
            "{r}"
        );
        let runbook = r["annotations"]["runbook"].as_str().unwrap_or("");
        let name = r["name"].as_str().unwrap();
        if let Err(e) = markdown::check_runbook(&repo_root(), name, runbook) {
            panic!("{e}");
        }
    }
    // Nothing fires on a healthy stack (a few evaluations, 1 s apart).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        demo.alerts("firing"),
        BTreeSet::new(),
        "a healthy stack fires nothing"
    );

    // Traffic of every outcome: redirect, proxied, 400.
    let redirect = format!("http://127.0.0.1:{}", demo.redirect_port);
    let proxy = format!("http://127.0.0.1:{}", demo.proxy_port);
    let push =
        |base: &str, path: &str| http_request("PUT", &format!("{base}{path}"), &[], b"ops_metric 1\n").status;
    for i in 0..30 {
        assert_eq!(push(&redirect, &format!("/metrics/job/ops/group/r{i}")), 307);
        assert_eq!(push(&proxy, &format!("/metrics/job/ops/group/p{i}")), 200);
        assert_eq!(push(&redirect, &format!("/metrics/job/ops/group/r{i}/odd")), 400);
    }

    // One pushgateway dies: the member-lost alert fires.
    let [a, b, c] = [demo.pg_ports[0], demo.pg_ports[1], demo.pg_ports[2]];
    demo.signal(&format!("pushgateway-{a}"), Signal::SIGKILL);
    demo.wait_firing("DynamicShardingMemberLost");
    // All of them: no healthy pushgateway, pushes get 503.
    demo.signal(&format!("pushgateway-{b}"), Signal::SIGKILL);
    demo.signal(&format!("pushgateway-{c}"), Signal::SIGKILL);
    // (Proxy mode answers 503 naming the dead owner before that; redirect mode says 307 to it.)
    wait_until("pushes get 503: no member", Duration::from_secs(20), || {
        (push(&redirect, "/metrics/job/ops/group/none") == 503).then_some(())
    });
    for _ in 0..10 {
        assert_eq!(push(&proxy, "/metrics/job/ops/group/none"), 503);
    }
    demo.wait_firing("DynamicShardingNoHealthyPushgateway");
    // They come back (still registered in Consul): both alerts resolve.
    let _back: Vec<Pushgateway> = [a, b, c]
        .iter()
        .map(|p| Pushgateway::start_on(&demo.dir, *p))
        .collect();
    demo.wait_resolved("DynamicShardingNoHealthyPushgateway");
    demo.wait_resolved("DynamicShardingMemberLost");

    // consul-sync hangs: it cannot be scraped, the down alert fires; it resumes, the alert resolves.
    demo.signal("consul-sync", Signal::SIGSTOP);
    demo.wait_firing("ConsulSyncDown");
    demo.signal("consul-sync", Signal::SIGCONT);
    demo.wait_resolved("ConsulSyncDown");

    // Envoy hangs: consul-sync's pushes to it fail, and after 3 resync intervals (30 s at the
    // demo's 10 s) the not-pushing alert fires; Envoy resumes, the next push lands, it resolves.
    demo.signal("envoy", Signal::SIGSTOP);
    demo.wait_firing("ConsulSyncNotPushing");
    demo.signal("envoy", Signal::SIGCONT);
    demo.wait_resolved("ConsulSyncNotPushing");
    // Up to six member changes happened: flapping may fire (its threshold is more than 6 an hour).
    let left: BTreeSet<String> = demo
        .alerts("firing")
        .into_iter()
        .filter(|a| a != "DynamicShardingMemberFlapping")
        .collect();
    assert_eq!(left, BTreeSet::new(), "all recovered");

    // Pushes after recovery, so the groups-per-pushgateway panel counts live groups.
    for i in 0..30 {
        assert_eq!(push(&proxy, &format!("/metrics/job/ops/group/after{i}")), 200);
    }
    std::thread::sleep(Duration::from_secs(3));

    // Every dashboard query, with its variables as Grafana fills them ("All" Envoys), over the
    // test's time range.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/grafana/dynamic-sharding.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    let mut max_of = BTreeMap::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let query = expr
                .replace("$__rate_interval", RATE_INTERVAL)
                .replace("$envoy", ".+");
            assert!(!query.contains('$'), "an unfilled variable in {query}");
            let series = demo.query_range(&query, start);
            let title = format!(
                "{} / {}",
                panel["title"].as_str().unwrap(),
                target["legendFormat"]
            );
            assert!(!series.is_empty(), "{title}: {query} returns no data");
            let max = series
                .iter()
                .flat_map(|(_, v)| v.iter().copied())
                .fold(f64::MIN, f64::max);
            max_of.insert(title, max);
            checked += 1;
        }
    }
    eprintln!("dashboard: {checked} queries returned data");
    eprintln!("dashboard maxima: {max_of:#?}");
    assert!(checked >= 10, "{checked}");
    // What the traffic and the failures above must show.
    for (title, at_least) in [
        ("Pushes per second by outcome / \"{{instance}} redirect\"", 0.1),
        ("Pushes per second by outcome / \"{{instance}} proxied\"", 0.1),
        ("Pushes per second by outcome / \"{{instance}} 400\"", 0.1),
        ("Pushes per second by outcome / \"{{instance}} 503\"", 0.1),
        ("Members over time / \"Envoy {{instance}}\"", 3.0),
        ("Member changes / \"{{instance}}\"", 1.0),
        ("Failover events / \"{{instance}} members lost\"", 1.0),
        (
            "Groups per pushgateway (balance) / \"{{pushgateway}} scraped\"",
            5.0,
        ),
        ("consul-sync push results / \"{{envoy}} {{result}}\"", 0.01),
    ] {
        let got = max_of
            .get(title)
            .unwrap_or_else(|| panic!("no panel {title}: {max_of:?}"));
        assert!(
            *got >= at_least,
            "{title}: max {got}, expected at least {at_least}"
        );
    }

    // A job pushes one group straight to two pushgateways, bypassing Envoy: the reconciler deletes
    // the older copy every round and it comes back, so the duplicate alert fires; the job stops,
    // the next round leaves one copy, and it resolves.
    let direct = |port: u16, v: u32| {
        http_request(
            "PUT",
            &format!("http://127.0.0.1:{port}/metrics/job/ops/group/bypass"),
            &[],
            format!("ops_metric {v}\n").as_bytes(),
        )
        .status
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bypass = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            let mut v = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < deadline {
                v += 1;
                assert_eq!(direct(a, v), 200);
                assert_eq!(direct(b, v), 200);
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    demo.wait_firing("DynamicShardingDuplicateGroups");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    bypass.join().unwrap();
    demo.wait_resolved("DynamicShardingDuplicateGroups");

    // A drain whose last group cannot move: its owner refuses the copy (the same metric name with
    // another type in another group there), so the drain outlives its deadline and the alert fires;
    // the conflicting group is deleted, the next round moves the group, and it resolves.
    let members: Vec<String> = [b, c].iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let ring = dynamic_sharding::ring::Ring::new(
        &dynamic_sharding::members::MemberList::new(0, &members)
            .unwrap()
            .members,
        500,
    );
    let stuck = "/metrics/job/ops/group/stuck";
    let key = dynamic_sharding::grouping_key::GroupingKey::from_path(stuck).unwrap();
    let owner = ring.owner(key.hash()).unwrap().to_string();
    let put = |url: String, body: &str| http_request("PUT", &url, &[], body.as_bytes()).status;
    assert_eq!(
        put(
            format!("http://127.0.0.1:{a}{stuck}"),
            "# TYPE ops_conflict gauge\nops_conflict 1\n"
        ),
        200
    );
    let blocker = format!("http://{owner}/metrics/job/ops/group/blocker");
    assert_eq!(
        put(blocker.clone(), "# TYPE ops_conflict counter\nops_conflict 1\n"),
        200
    );
    let config = demo.dir.join("demo/dynamic-sharding.yml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("  drain: []"), "{text}");
    std::fs::write(
        &config,
        text.replace("  drain: []", &format!("  drain: ['127.0.0.1:{a}']")),
    )
    .unwrap();
    demo.signal("consul-sync", Signal::SIGHUP);
    demo.wait_firing("DynamicShardingDrainPastDeadline");
    assert_eq!(http_request("DELETE", &blocker, &[], b"").status, 202);
    demo.wait_resolved("DynamicShardingDrainPastDeadline");
    let drains = http_get(&format!("http://127.0.0.1:{}/-/drain", demo.sync_port)).1;
    assert!(drains.contains("\"drained\""), "{drains}");
}
