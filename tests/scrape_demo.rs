//! `DEMO_SCRAPERS=vmagent ./build.sh demo`: the demo with three vmagents (one scrape cluster,
//! replication factor 2) writing into VictoriaMetrics instead of its Prometheus, run as users run
//! it on free loopback ports. Every pushed group shows once in VictoriaMetrics' query API, also
//! after a vmagent is killed, as the docs tell users to try.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use nix::sys::signal::Signal;
use std::time::Duration;
use testkit::demo::Demo;
use testkit::pipeline::{push_groups, wait_groups};
use testkit::poll_for;
use testkit::prometheus::query;

const GROUPS: usize = 300;
const METRIC: &str = "demo_vmagent_value";

fn wait_store(demo: &Demo, within: Duration, value: impl Fn(usize) -> f64) -> Duration {
    let vm = format!("http://127.0.0.1:{}", demo.vm_port);
    wait_groups("VictoriaMetrics", within, GROUPS, value, || query(&vm, METRIC))
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
    let said = poll_for(Duration::from_secs(10), || {
        let log = demo.proc.log();
        log.contains("is gone; every pushgateway is still scraped by another vmagent")
            .then_some(())
    });
    assert!(
        said.is_some(),
        "the demo says what a vmagent's death means:\n{}",
        demo.proc.log_tail(20)
    );
}
