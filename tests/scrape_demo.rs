//! `DEMO_SCRAPERS=vmagent ./build.sh demo`: the demo with three vmagents (one scrape cluster,
//! replication factor 2) writing into VictoriaMetrics instead of its Prometheus, run as users run
//! it on free loopback ports. Every pushed group shows once in VictoriaMetrics' query API, also
//! after a vmagent is killed, as the docs tell users to try.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use nix::sys::signal::Signal;
use std::time::{Duration, Instant};
use testkit::demo::Demo;
use testkit::pipeline::{check_groups, push_groups};
use testkit::poll_for;
use testkit::prometheus::query;

const GROUPS: usize = 300;
const METRIC: &str = "demo_vmagent_value";

fn wait_store(demo: &Demo, within: Duration, value: impl Fn(usize) -> f64) -> Duration {
    let vm = format!("http://127.0.0.1:{}", demo.vm_port);
    let start = Instant::now();
    let mut last = Err(String::new());
    let ok = poll_for(within, || {
        last = check_groups(&query(&vm, METRIC), GROUPS, &value);
        last.is_ok().then_some(())
    });
    assert!(
        ok.is_some(),
        "VictoriaMetrics after {within:?}: {}",
        last.unwrap_err()
    );
    start.elapsed()
}

#[test]
fn the_vmagent_demo_shows_every_group_once_also_after_a_vmagent_is_killed() {
    let mut demo = Demo::start("demo-vmagent", &[("DEMO_SCRAPERS", "vmagent")]);
    let children = demo.children();
    let mut names: Vec<&str> = children.keys().map(String::as_str).collect();
    names.retain(|n| !n.starts_with("pushgateway-"));
    let mut want: Vec<String> = ["consul", "consul-sync", "envoy", "victoria-metrics"]
        .iter()
        .map(|s| s.to_string())
        .chain(demo.vmagent_ports.iter().map(|p| format!("vmagent-{p}")))
        .collect();
    want.sort();
    assert_eq!(names, want, "vmagents and VictoriaMetrics instead of Prometheus");

    let base = format!("http://127.0.0.1:{}", demo.proxy_port);
    push_groups(&base, METRIC, GROUPS, |i| i as f64);
    let took = wait_store(&demo, Duration::from_secs(60), |i| i as f64);
    eprintln!("demo: {GROUPS} groups once in VictoriaMetrics after {took:?}");

    demo.signal(&format!("vmagent-{}", demo.vmagent_ports[0]), Signal::SIGKILL);
    push_groups(&base, METRIC, GROUPS, |i| (1000 + i) as f64);
    let took = wait_store(&demo, Duration::from_secs(30), |i| (1000 + i) as f64);
    eprintln!("demo: a vmagent killed; the new values once in VictoriaMetrics after {took:?}");
    assert!(
        demo.proc.is_running(),
        "a vmagent dying does not end the demo:\n{}",
        demo.proc.log_tail(20)
    );
    assert!(demo
        .proc
        .log()
        .contains("is gone; every pushgateway is still scraped by another vmagent"));
}
