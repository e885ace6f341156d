//! The demo with a standby for each pushgateway (`DEMO_STANDBYS=1`): an active killed with
//! SIGKILL loses nothing Prometheus shows, the slot without its standby raises
//! `DynamicShardingSlotUnprotected`, and the alert resolves once the killed one is back as the
//! slot's standby and repaired.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use nix::sys::signal::Signal;
use std::process::Command;
use std::time::Duration;
use testkit::demo::Demo;
use testkit::{bin, wait_until, Proc};

const GROUPS: usize = 30;
const ALERT: &str = "DynamicShardingSlotUnprotected";

/// The value of a query that yields one number (`None` when it yields nothing).
fn scalar(demo: &Demo, promql: &str) -> Option<f64> {
    let r = demo.query(promql);
    r.first()
        .map(|s| s["value"][1].as_str().unwrap().parse().unwrap())
}

fn firing(demo: &Demo, alert: &str) -> bool {
    demo.api("alerts")["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["labels"]["alertname"] == alert && a["state"] == "firing")
}

/// Every pushed group once, with its value, none from `gone`.
fn every_group_once(demo: &Demo, gone: &str) -> bool {
    let series = demo.query("standby_value");
    let mut groups: Vec<&str> = series
        .iter()
        .map(|s| s["metric"]["group"].as_str().unwrap())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    series.len() == GROUPS
        && groups.len() == GROUPS
        && series.iter().all(|s| {
            let i: f64 = s["metric"]["group"]
                .as_str()
                .unwrap()
                .trim_start_matches('g')
                .parse()
                .unwrap();
            s["metric"]["pushgateway"] != gone && s["value"][1].as_str().unwrap().parse::<f64>().unwrap() == i
        })
}

#[test]
fn a_killed_active_loses_no_group_and_its_unprotected_slot_alerts_until_it_returns() {
    // Three reconcile intervals (the alert's threshold) are 6 s here.
    let demo = Demo::start(
        "demo-standbys",
        &[("DEMO_STANDBYS", "1"), ("DEMO_RECONCILE_INTERVAL", "2s")],
    );
    demo.push_groups("standby", "standby_value", GROUPS);
    wait_until("Prometheus has every group once", Duration::from_secs(30), || {
        every_group_once(&demo, "").then_some(())
    });
    assert!(!firing(&demo, ALERT), "every standby holds what its active holds");

    let port = demo.pg_ports[0];
    let killed = format!("127.0.0.1:{port}");
    demo.signal(&format!("pushgateway-{port}"), Signal::SIGKILL);
    wait_until(
        "the standby is promoted and Prometheus has every group once, none from the killed active",
        Duration::from_secs(30),
        || {
            (scalar(&demo, "consul_sync_slot_promotions_total") == Some(1.0)
                && every_group_once(&demo, &killed))
            .then_some(())
        },
    );
    wait_until(&format!("{ALERT} fires"), Duration::from_secs(30), || {
        firing(&demo, ALERT).then_some(())
    });
    assert_eq!(scalar(&demo, "consul_sync_slots_unprotected"), Some(1.0));
    assert_eq!(
        scalar(&demo, "consul_sync_slots_active_failing"),
        Some(0.0),
        "the promotion replaced the failing active"
    );

    // The killed one returns, empty: it is the slot's standby now and the repair fills it.
    let mut cmd = Command::new(bin("pushgateway"));
    cmd.arg(format!("--web.listen-address={killed}"))
        .arg("--persistence.file=");
    let _back = Proc::spawn("pushgateway-back", cmd, &demo.dir);
    wait_until(&format!("{ALERT} resolves"), Duration::from_secs(30), || {
        (!firing(&demo, ALERT) && scalar(&demo, "consul_sync_slots_unprotected") == Some(0.0)).then_some(())
    });
    assert!(
        every_group_once(&demo, &killed),
        "the returned standby is not scraped"
    );
}
