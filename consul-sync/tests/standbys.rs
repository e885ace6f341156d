//! Standbys (`pushgateway.standbys`) as a user sees them, with real Consul, Envoy (proxy mode) and
//! four pushgateways: two slots, each with a standby. A killed active's slot is served by its
//! promoted standby within about a check interval, holding every group with its original push
//! time; Consul's pushgateway service (what Prometheus scrapes) lists only actives, before and
//! after; the former active, restarted empty, becomes the standby, is repaired to hold the
//! active's groups, and is not promoted back. Only the lease holder promotes, the other
//! consul-sync follows the roles, and a consul-sync started anew keeps them. A standby added by a
//! reload joins its slot and is filled. A standby that cannot be one is refused at start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{sorted, ConsulSync, SyncOptions};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::envoy::{Envoy, EnvoyOptions};
use testkit::{http_request, wait_until, Consul, Pushgateway, TestDir};

type Labels = BTreeMap<String, String>;

/// Each group `pg` holds, with its push time.
fn push_times(pg: &Pushgateway) -> BTreeMap<Labels, f64> {
    pg.api_groups()
        .into_iter()
        .map(|g| {
            let labels: Labels = testkit::group_labels(&g);
            let push = g["push_time_seconds"]["metrics"][0]["value"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            (labels, push)
        })
        .collect()
}

/// Envoy's slots: name -> (active, standby).
fn envoy_slots(envoy: &Envoy) -> Option<BTreeMap<String, (String, Option<String>)>> {
    envoy.try_slots()
}

/// The Consul service ID of a pushgateway address.
fn id(addr: &str) -> String {
    addr.replace(':', "_")
}

fn slot(active: &str, standby: Option<&str>) -> (String, Option<String>) {
    (active.to_owned(), standby.map(str::to_owned))
}

#[test]
fn a_killed_active_is_replaced_by_its_standby_which_keeps_the_slot() {
    let dir = TestDir::new("standbys-failover");
    let mut pgs: Vec<Pushgateway> = (0..4).map(|_| Pushgateway::start(&dir)).collect();
    let consul = Consul::start(&dir);
    let envoy = Envoy::start(&dir, EnvoyOptions::default());
    let (a, a2, b, b2) = (pgs[0].addr(), pgs[1].addr(), pgs[2].addr(), pgs[3].addr());
    let mut options = SyncOptions::new(consul.addr(), vec![a.clone(), b.clone()]);
    options.standbys = vec![(a.clone(), a2.clone()), (b.clone(), b2.clone())];
    options.control_urls = vec![envoy.control_url()];
    options.reconcile = "2s";
    let mut sync = ConsulSync::start(&dir, options.clone());
    // A second consul-sync: whichever does not hold the lease only reads the roles.
    let other = ConsulSync::start(&dir, options.clone());
    let both_slots = BTreeMap::from([(a.clone(), slot(&a, Some(&a2))), (b.clone(), slot(&b, Some(&b2)))]);
    wait_until(
        "Envoy has both slots with their standbys",
        Duration::from_secs(20),
        || (envoy_slots(&envoy)? == both_slots).then_some(()),
    );
    assert_eq!(envoy.members().1, sorted(vec![a.clone(), b.clone()]));
    assert_eq!(consul.passing_ids("pushgateway"), sorted(vec![id(&a), id(&b)]));
    assert_eq!(
        consul.passing_ids("pushgateway-standby"),
        sorted(vec![id(&a2), id(&b2)])
    );
    assert_eq!(sync.targets(), Some(sorted(vec![a.clone(), b.clone()])));

    // Groups through Envoy: each lands on its slot's active and standby.
    let proxy = envoy.proxy_url();
    for i in 0..40 {
        let r = http_request(
            "PUT",
            &format!("{proxy}/metrics/job/sb{i}"),
            &[],
            format!("sb_value {i}\n").as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let on_a = push_times(&pgs[0]);
    assert!(!on_a.is_empty() && on_a.len() < 40, "{}", on_a.len());
    let on_a2 = push_times(&pgs[1]);
    assert_eq!(
        on_a2.keys().collect::<Vec<_>>(),
        on_a.keys().collect::<Vec<_>>(),
        "the standby took every write of its slot"
    );
    let job_of_a = on_a.keys().next().unwrap()["job"].clone();

    // The active dies.
    pgs[0].proc.kill();
    let killed = Instant::now();
    let promoted = BTreeMap::from([(a.clone(), slot(&a2, None)), (b.clone(), slot(&b, Some(&b2)))]);
    wait_until(
        "Envoy serves slot a at its standby",
        Duration::from_secs(10),
        || (envoy_slots(&envoy)? == promoted).then_some(()),
    );
    let took = killed.elapsed();
    eprintln!("slot a served at its standby {took:?} after the kill");
    // A check interval (1 s), Consul's sync, then one read of the roles.
    assert!(took < Duration::from_secs(5), "the promotion took {took:?}");
    let r = http_request(
        "PUT",
        &format!("{proxy}/metrics/job/{job_of_a}"),
        &[],
        b"sb_value 1000\n",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let pushed = Labels::from([("job".to_owned(), job_of_a.clone())]);
    assert_eq!(
        pgs[1].metric_value(&pushed, "sb_value"),
        Some(1000.0),
        "served by the promoted one"
    );
    assert_eq!(
        envoy.members().1,
        sorted(vec![a.clone(), b.clone()]),
        "the ring is unchanged"
    );
    // Every group the dead one held is on the promoted one, not pushed again.
    let after = push_times(&pgs[1]);
    for (labels, push) in &on_a2 {
        if labels["job"] == job_of_a {
            continue;
        }
        assert_eq!(after.get(labels), Some(push), "{labels:?}");
        assert!((push - on_a[labels]).abs() < 1.0, "{labels:?}");
    }
    assert_eq!(after.len(), on_a.len());
    assert!(pgs[0].proc.try_exit().is_some());

    // Consul: only actives under the pushgateway service, the former active under the standbys'.
    wait_until(
        "the promoted one is registered as the active",
        Duration::from_secs(10),
        || {
            let ids: Vec<String> = consul.services("pushgateway").into_iter().map(|s| s.id).collect();
            assert!(
                !(ids.contains(&id(&a)) && ids.contains(&id(&a2))),
                "both copies of slot a under the pushgateway service: {ids:?}"
            );
            (ids == sorted(vec![id(&a2), id(&b)])).then_some(())
        },
    );
    let standby_ids: Vec<String> = consul
        .services("pushgateway-standby")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(standby_ids, sorted(vec![id(&a), id(&b2)]));
    let actives = Some(sorted(vec![a2.clone(), b.clone()]));
    assert_eq!(sync.targets(), actives);
    wait_until(
        "the other consul-sync lists the promoted one",
        Duration::from_secs(5),
        || (other.targets() == actives).then_some(()),
    );
    let promotions = |syncs: &[&ConsulSync]| -> f64 {
        syncs
            .iter()
            .map(|s| s.metric("consul_sync_slot_promotions_total"))
            .sum()
    };
    assert_eq!(
        promotions(&[&sync, &other]),
        1.0,
        "only the lease holder promotes"
    );
    let (roles, _) = consul.kv("dynamic-sharding/pushgateway/roles").unwrap();
    assert_eq!(roles, format!(r#"{{"active":{{"{a}":"{a2}"}}}}"#));

    // The former active comes back empty: it is the standby, repaired, never promoted back.
    let port = pgs[0].port;
    pgs[0] = Pushgateway::start_on(&dir, port);
    let returned = BTreeMap::from([(a.clone(), slot(&a2, Some(&a))), (b.clone(), slot(&b, Some(&b2)))]);
    wait_until(
        "the former active is slot a's standby",
        Duration::from_secs(15),
        || (envoy_slots(&envoy)? == returned).then_some(()),
    );
    assert_eq!(
        consul.passing_ids("pushgateway-standby"),
        sorted(vec![id(&a), id(&b2)])
    );
    wait_until(
        "the repair fills the former active",
        Duration::from_secs(20),
        || {
            let want: Vec<Labels> = push_times(&pgs[1]).into_keys().collect();
            (push_times(&pgs[0]).into_keys().collect::<Vec<_>>() == want).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(envoy_slots(&envoy), Some(returned.clone()), "never promoted back");
    assert_eq!(consul.passing_ids("pushgateway"), sorted(vec![id(&a2), id(&b)]));
    assert_eq!(promotions(&[&sync, &other]), 1.0);

    // The roles survive a restart: a consul-sync started anew serves slot a at a2 from the start.
    sync.proc.stop();
    let mut restarted = ConsulSync::start(&dir, options.clone());
    wait_until(
        "the restarted consul-sync lists the actives",
        Duration::from_secs(15),
        || (restarted.targets() == actives).then_some(()),
    );
    assert!(
        !restarted.proc.log().contains("promoted"),
        "{}",
        restarted.proc.log_tail(20)
    );
    assert_eq!(consul.passing_ids("pushgateway"), sorted(vec![id(&a2), id(&b)]));
    assert_eq!(
        consul.passing_ids("pushgateway-standby"),
        sorted(vec![id(&a), id(&b2)])
    );
    assert_eq!(envoy_slots(&envoy), Some(returned.clone()));

    // Giving the promoted slot another standby would serve it at its server again (it died) and
    // drop what a2 holds: refused, nothing changes.
    let mut changed = options;
    changed.standbys = vec![(a.clone(), "127.0.0.1:1".to_owned()), (b.clone(), b2.clone())];
    let (status, body) = restarted.reload(&dir, changed);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(&format!("must keep '{a}': '{a2}'")), "{body}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(envoy_slots(&envoy), Some(returned));
    assert_eq!(consul.passing_ids("pushgateway"), sorted(vec![id(&a2), id(&b)]));
}

#[test]
fn a_standby_added_by_a_reload_joins_its_slot_and_is_filled() {
    let dir = TestDir::new("standbys-reload");
    let pgs: Vec<Pushgateway> = (0..3).map(|_| Pushgateway::start(&dir)).collect();
    let consul = Consul::start(&dir);
    let envoy = Envoy::start(&dir, EnvoyOptions::default());
    let (a, b, a2) = (pgs[0].addr(), pgs[1].addr(), pgs[2].addr());
    let mut options = SyncOptions::new(consul.addr(), vec![a.clone(), b.clone()]);
    options.control_urls = vec![envoy.control_url()];
    options.reconcile = "2s";
    let mut sync = ConsulSync::start(&dir, options.clone());
    wait_until("Envoy has both", Duration::from_secs(20), || {
        (envoy.try_members().ok()?.1 == sorted(vec![a.clone(), b.clone()])).then_some(())
    });
    assert_eq!(envoy_slots(&envoy), Some(BTreeMap::new()), "no standby, no slots");
    for i in 0..20 {
        let url = format!("{}/metrics/job/rl{i}", envoy.proxy_url());
        let r = http_request("PUT", &url, &[], format!("rl_value {i}\n").as_bytes());
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let on_a: Vec<Labels> = push_times(&pgs[0]).into_keys().collect();
    assert!(!on_a.is_empty());

    options.standbys = vec![(a.clone(), a2.clone())];
    let (status, body) = sync.reload(&dir, options);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("standbys [{a}: {a2}]")), "{body}");
    wait_until("the standby is in its slot", Duration::from_secs(15), || {
        (envoy_slots(&envoy)? == BTreeMap::from([(a.clone(), slot(&a, Some(&a2)))])).then_some(())
    });
    assert_eq!(consul.passing_ids("pushgateway-standby"), vec![id(&a2)]);
    assert_eq!(consul.passing_ids("pushgateway"), sorted(vec![id(&a), id(&b)]));
    assert_eq!(sync.targets(), Some(sorted(vec![a.clone(), b.clone()])));
    wait_until(
        "the repair fills the new standby",
        Duration::from_secs(20),
        || (push_times(&pgs[2]).into_keys().collect::<Vec<_>>() == on_a).then_some(()),
    );
}

#[test]
fn a_standby_that_is_also_a_server_is_refused_at_start() {
    let dir = TestDir::new("standbys-config");
    let config = dir.write(
        "dynamic-sharding.yml",
        "pushgateway:\n  servers: ['127.0.0.1:9091', '127.0.0.1:9092']\n  standbys:\n    '127.0.0.1:9091': '127.0.0.1:9092'\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_consul-sync"))
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("pushgateway.standbys[\"127.0.0.1:9091\"] (line 3)")
            && err.contains("the standby 127.0.0.1:9092 is also in pushgateway.servers"),
        "{err}"
    );
}
