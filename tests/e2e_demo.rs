//! The whole stack as the demo runs it (Consul, three pushgateways, Envoy with the filter,
//! consul-sync, Prometheus with Consul discovery), on free loopback ports: what a user sees in
//! Prometheus, and that the demo leaves nothing behind.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use nix::sys::signal::Signal;
use serde_json::json;
use std::time::Duration;
use testkit::demo::Demo;
use testkit::envoy::run_python_clients;
use testkit::{http_get, http_request, poll_for, wait_until};

fn alive(pid: i32) -> bool {
    // A zombie is gone for our purposes; /proc/<pid>/stat's third field is the state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn demo_becomes_ready_and_sigterm_leaves_no_process_behind() {
    let mut demo = Demo::start("demo-lifecycle", &[]);
    let children = demo.children();
    assert_eq!(
        children.len(),
        7,
        "consul, 3 pushgateways, envoy, consul-sync, prometheus: {children:?}"
    );
    assert!(children.values().all(|p| alive(*p)));
    let (status, _) = http_get(&format!("http://127.0.0.1:{}/-/ready", demo.sync_port));
    assert_eq!(status, 200);
    demo.proc.signal(Signal::SIGTERM);
    let exit = demo
        .proc
        .wait_exit(Duration::from_secs(15))
        .expect("the demo stops within 15 s of SIGTERM");
    assert!(exit.success(), "{exit:?}\n{}", demo.proc.log_tail(20));
    let left: Vec<_> = children.iter().filter(|(_, p)| alive(**p)).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn prometheus_sees_each_group_once_and_follows_a_failover() {
    let demo = Demo::start("demo-e2e", &[]);
    let base = format!("http://127.0.0.1:{}", demo.redirect_port);
    demo.push_groups("e2e", "e2e_value", 200);
    // Exactly one series per group, from the owner, with the pushed value.
    let series = wait_until(
        "Prometheus has scraped 200 groups",
        Duration::from_secs(60),
        || {
            let s = demo.query("e2e_value");
            (s.len() >= 200).then_some(s)
        },
    );
    assert_eq!(series.len(), 200, "one series per group, no copies");
    for s in &series {
        let group = s["metric"]["group"].as_str().unwrap();
        let i: f64 = group.trim_start_matches('g').parse().unwrap();
        assert_eq!(s["value"][1].as_str().unwrap().parse::<f64>().unwrap(), i);
        let lookup = http_request("GET", &format!("{base}/metrics/job/e2e/group/{group}"), &[], b"").body;
        let owner = lookup
            .trim_start_matches("nextUrl:http://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        assert_eq!(
            s["metric"]["pushgateway"].as_str(),
            Some(owner.as_str()),
            "{group} scraped from its owner"
        );
    }

    // Kill the owner of g7, push g7 again: it goes to a live member and Prometheus shows one series.
    let lookup = http_request("GET", &format!("{base}/metrics/job/e2e/group/g7"), &[], b"").body;
    let owner_port: u16 = lookup
        .split(':')
        .nth(3)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(demo.pg_ports.contains(&owner_port));
    let pid = demo.children()[&format!("pushgateway-{owner_port}")];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let push = json!({"client": "requests", "base": base, "method": "PUT", "path": "/metrics/job/e2e/group/g7", "body": "e2e_value 700\n"});
    wait_until(
        "the push of g7 reaches a live pushgateway",
        Duration::from_secs(15),
        || {
            let r = &run_python_clients(std::slice::from_ref(&push))[0];
            (r["status"] == 200).then_some(())
        },
    );
    let after = poll_for(Duration::from_secs(60), || {
        let s = demo.query("e2e_value{group=\"g7\"}");
        (s.len() == 1 && s[0]["value"][1] == "700").then_some(s)
    });
    let s = after.unwrap_or_else(|| panic!("g7: {:?}", demo.query("e2e_value{group=\"g7\"}")));
    assert_ne!(s[0]["metric"]["pushgateway"], format!("127.0.0.1:{owner_port}"));
}
