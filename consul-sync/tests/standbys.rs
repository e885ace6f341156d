//! Standbys (`pushgateway.standbys`) as a user sees them, with real Consul, Envoy (proxy mode) and
//! four pushgateways: two slots, each with a standby. A killed active's slot is served by its
//! promoted standby within about a check interval, holding every group with its original push
//! time; Consul's pushgateway service (what Prometheus scrapes) lists only actives, before and
//! after; the former active, restarted empty, becomes the standby, is repaired to hold the
//! active's groups, and is not promoted back. Only the lease holder promotes, the other
//! consul-sync follows the roles, and a consul-sync started anew keeps them. A standby added by a
//! reload joins its slot and is filled. A slot added to a ring of slots and a plain member, then
//! a slot and the plain member drained, while every group keeps being pushed through Envoy: each
//! group ends on one slot (its active and standby alike), with its last acknowledged value. A
//! slot whose server died is drained at its promoted standby and taken out of the file. A
//! standby that cannot be one is refused at start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{sorted, ConsulSync, SyncOptions};
use dynamic_sharding::grouping_key::GroupingKey;
use dynamic_sharding::members::Member;
use dynamic_sharding::ring::{Ring, DEFAULT_VNODES};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use testkit::envoy::{Envoy, EnvoyOptions};
use testkit::{http_request, poll_for, wait_until, Consul, Pushgateway, TestDir};

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

/// Pushes `body` to `job`'s group through Envoy's proxy port at `proxy`; it must be taken.
fn put(proxy: &str, job: &str, body: &str) {
    let r = http_request("PUT", &format!("{proxy}/metrics/job/{job}"), &[], body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
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
        put(&proxy, &format!("sb{i}"), &format!("sb_value {i}\n"));
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

/// The groups of the mixed scale-out test, as the pusher left them: per job, the value of its last
/// acknowledged push and of its last push sent (a push that failed may still have landed).
struct Pushed {
    acked: BTreeMap<String, f64>,
    sent: BTreeMap<String, f64>,
}

/// Pushes `mx_value <n>` to every job through Envoy's proxy port, `n` growing by one per pass,
/// until `stop` (or a minute); counts the passes in `passes`.
fn push_passes(proxy: &str, jobs: &[String], first: f64, stop: &AtomicBool, passes: &AtomicU64) -> Pushed {
    let mut pushed = Pushed {
        acked: BTreeMap::new(),
        sent: BTreeMap::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut value = first;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        value += 1.0;
        for job in jobs {
            pushed.sent.insert(job.clone(), value);
            let url = format!("{proxy}/metrics/job/{job}");
            let body = format!("mx_value {value}\n");
            if testkit::try_http_request("PUT", &url, &[], body.as_bytes()).is_ok_and(|r| r.status == 200) {
                pushed.acked.insert(job.clone(), value);
            }
        }
        passes.fetch_add(1, Ordering::Relaxed);
    }
    pushed
}

/// Each job's `mx_value` on `pg`.
fn mx_values(pg: &Pushgateway) -> BTreeMap<String, f64> {
    pg.api_groups()
        .into_iter()
        .filter_map(|g| {
            let job = testkit::group_labels(&g).get("job")?.clone();
            let value = g["mx_value"]["metrics"][0]["value"].as_str()?.parse().ok()?;
            Some((job, value))
        })
        .collect()
}

/// What is wrong with where the jobs' groups are: each must be on its ring owner among
/// `members`, at the slot's active and standby (as `slots` name them) with one value, not older
/// than its last acknowledged push, and on no other of `watched` (every pushgateway that is a
/// member, a standby or draining).
fn misplaced(
    jobs: &[String],
    members: &[String],
    slots: &BTreeMap<String, (String, Option<String>)>,
    watched: &[&Pushgateway],
    pushed: &Pushed,
) -> Vec<String> {
    let names: Vec<Member> = members.iter().map(|m| Member::parse(m).unwrap()).collect();
    let ring = Ring::new(&names, DEFAULT_VNODES);
    let held: BTreeMap<String, BTreeMap<String, f64>> =
        watched.iter().map(|pg| (pg.addr(), mx_values(pg))).collect();
    let mut wrong = Vec::new();
    for job in jobs {
        let key = GroupingKey::from_path(&format!("/metrics/job/{job}")).unwrap();
        let owner = ring.owner(key.hash()).unwrap().as_str().to_owned();
        let want: Vec<String> = match slots.get(&owner) {
            Some((active, standby)) => std::iter::once(active.clone()).chain(standby.clone()).collect(),
            None => vec![owner.clone()],
        };
        let on: BTreeMap<&String, f64> = held
            .iter()
            .filter_map(|(addr, values)| Some((addr, *values.get(job)?)))
            .collect();
        let (acked, sent) = (pushed.acked[job], pushed.sent[job]);
        let right = sorted(want.clone()) == on.keys().map(|a| (*a).clone()).collect::<Vec<_>>()
            && on
                .values()
                .all(|v| *v >= acked && *v <= sent && Some(v) == on.values().next());
        if !right {
            wrong.push(format!(
                "{job}: owner {owner}, want it on {want:?} with {acked}..={sent}, held {on:?}"
            ));
        }
    }
    wrong
}

#[test]
fn a_slot_added_to_and_drained_from_a_mixed_ring_under_pushes_keeps_one_copy_per_group() {
    let dir = TestDir::new("standbys-mixed-scale");
    // a, b: slots with standbys a2, b2; c: a plain member; d with standby d2: the slot added.
    let pgs: Vec<Pushgateway> = (0..7).map(|_| Pushgateway::start(&dir)).collect();
    let [pa, pa2, pb, pb2, pc, pd, pd2] = [0, 1, 2, 3, 4, 5, 6].map(|i| &pgs[i]);
    let [a, a2, b, b2, c, d, d2] = [pa, pa2, pb, pb2, pc, pd, pd2].map(Pushgateway::addr);
    let consul = Consul::start(&dir);
    let envoy = Envoy::start(&dir, EnvoyOptions::default());
    let mut options = SyncOptions::new(consul.addr(), vec![a.clone(), b.clone(), c.clone()]);
    options.standbys = vec![(a.clone(), a2.clone()), (b.clone(), b2.clone())];
    options.control_urls = vec![envoy.control_url()];
    options.reconcile = "2s";
    let mut sync = ConsulSync::start(&dir, options.clone());
    let two_slots = BTreeMap::from([(a.clone(), slot(&a, Some(&a2))), (b.clone(), slot(&b, Some(&b2)))]);
    wait_until(
        "Envoy has two slots and a plain member",
        Duration::from_secs(20),
        || {
            (envoy_slots(&envoy)? == two_slots
                && envoy.try_members().ok()?.1 == sorted(vec![a.clone(), b.clone(), c.clone()]))
            .then_some(())
        },
    );

    let jobs: Vec<String> = (0..60).map(|i| format!("mx{i:02}")).collect();
    let proxy = envoy.proxy_url();
    let passes = AtomicU64::new(0);
    // Passes of every job once the pusher has seen the list `after` asked for.
    let passes_after = |n: u64| {
        let start = passes.load(Ordering::Relaxed);
        wait_until(
            &format!("{n} more passes of pushes"),
            Duration::from_secs(30),
            || (passes.load(Ordering::Relaxed) >= start + n).then_some(()),
        );
    };

    // Scale out by one slot while every job keeps pushing.
    let stop = AtomicBool::new(false);
    let out_slots = BTreeMap::from([
        (a.clone(), slot(&a, Some(&a2))),
        (b.clone(), slot(&b, Some(&b2))),
        (d.clone(), slot(&d, Some(&d2))),
    ]);
    let four = sorted(vec![a.clone(), b.clone(), c.clone(), d.clone()]);
    let pushed = std::thread::scope(|s| {
        let pusher = s.spawn(|| push_passes(&proxy, &jobs, 0.0, &stop, &passes));
        passes_after(2);
        options.servers.push(d.clone());
        options.standbys.push((d.clone(), d2.clone()));
        let (status, body) = sync.reload(&dir, options.clone());
        assert_eq!(status, 200, "{body}");
        wait_until(
            "Envoy has the new slot with its standby",
            Duration::from_secs(20),
            || (envoy_slots(&envoy)? == out_slots && envoy.try_members().ok()?.1 == four).then_some(()),
        );
        passes_after(3);
        stop.store(true, Ordering::Relaxed);
        pusher.join().unwrap()
    });
    assert_eq!(
        pushed.acked.len(),
        jobs.len(),
        "every job had a push acknowledged"
    );
    let watched = [pa, pa2, pb, pb2, pc, pd, pd2];
    let wrong = poll_for(Duration::from_secs(20), || {
        let wrong = misplaced(&jobs, &four, &out_slots, &watched, &pushed);
        wrong.is_empty().then_some(())
    });
    assert!(
        wrong.is_some(),
        "after the scale-out: {:#?}",
        misplaced(&jobs, &four, &out_slots, &watched, &pushed)
    );
    let on_d = mx_values(pd);
    assert!(!on_d.is_empty(), "the new slot owns groups");
    assert_eq!(
        mx_values(pd2),
        on_d,
        "the new slot's standby holds its active's groups"
    );
    assert_eq!(
        sync.targets(),
        Some(four.clone()),
        "HTTP SD lists the actives only"
    );
    assert_eq!(
        consul.passing_ids("pushgateway"),
        sorted(four.iter().map(|m| id(m)).collect())
    );
    assert_eq!(
        consul.passing_ids("pushgateway-standby"),
        sorted(vec![id(&a2), id(&b2), id(&d2)])
    );

    // Scale in: drain the plain member and slot b, which keeps its standby while it drains (Envoy
    // lists it beside the ring, for a DELETE to reach both of its addresses).
    options.drain = vec![b.clone(), c.clone()];
    let in_slots = out_slots.clone();
    let left = sorted(vec![a.clone(), d.clone()]);
    let first = pushed.sent.values().copied().fold(0.0, f64::max);
    stop.store(false, Ordering::Relaxed);
    let pushed = std::thread::scope(|s| {
        let pusher = s.spawn(|| push_passes(&proxy, &jobs, first, &stop, &passes));
        passes_after(1);
        let (status, body) = sync.reload(&dir, options.clone());
        assert_eq!(status, 200, "{body}");
        wait_until(
            "Envoy's ring has the two slots left",
            Duration::from_secs(20),
            || (envoy_slots(&envoy)? == in_slots && envoy.try_members().ok()?.1 == left).then_some(()),
        );
        passes_after(3);
        stop.store(true, Ordering::Relaxed);
        pusher.join().unwrap()
    });
    let watched = [pa, pa2, pb, pb2, pc, pd, pd2];
    let wrong = poll_for(Duration::from_secs(20), || {
        misplaced(&jobs, &left, &in_slots, &watched, &pushed)
            .is_empty()
            .then_some(())
    });
    assert!(
        wrong.is_some(),
        "after the drain: {:#?}",
        misplaced(&jobs, &left, &in_slots, &watched, &pushed)
    );
    assert!(mx_values(pb).is_empty() && mx_values(pb2).is_empty() && mx_values(pc).is_empty());
    wait_until("both drains say drained", Duration::from_secs(20), || {
        let (status, body) = testkit::http_get(&sync.url("/-/drain"));
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let states: Vec<(String, String)> = v["drains"]
            .as_array()?
            .iter()
            .map(|d| {
                (
                    d["pushgateway"].as_str().unwrap_or("").to_owned(),
                    d["state"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let want = sorted(vec![b.clone(), c.clone()]);
        (sorted(
            states
                .iter()
                .filter(|(_, s)| s == "drained")
                .map(|(p, _)| p.clone())
                .collect(),
        ) == want)
            .then_some(())
    });
    assert_eq!(
        sync.targets(),
        Some(four.clone()),
        "draining pushgateways are scraped until they are removed"
    );
    assert_eq!(
        consul.passing_ids("pushgateway-standby"),
        sorted(vec![id(&a2), id(&b2), id(&d2)])
    );
}

#[test]
fn a_promoted_slot_is_drained_and_retired() {
    let dir = TestDir::new("standbys-retire-promoted");
    let mut pgs: Vec<Pushgateway> = (0..4).map(|_| Pushgateway::start(&dir)).collect();
    let (a, a2, b, b2) = (pgs[0].addr(), pgs[1].addr(), pgs[2].addr(), pgs[3].addr());
    let consul = Consul::start(&dir);
    let envoy = Envoy::start(&dir, EnvoyOptions::default());
    let mut options = SyncOptions::new(consul.addr(), vec![a.clone(), b.clone()]);
    options.standbys = vec![(a.clone(), a2.clone()), (b.clone(), b2.clone())];
    options.control_urls = vec![envoy.control_url()];
    options.reconcile = "2s";
    options.drain_timeout = "3s";
    let mut sync = ConsulSync::start(&dir, options.clone());
    let both_slots = BTreeMap::from([(a.clone(), slot(&a, Some(&a2))), (b.clone(), slot(&b, Some(&b2)))]);
    wait_until("Envoy has both slots", Duration::from_secs(20), || {
        (envoy_slots(&envoy)? == both_slots).then_some(())
    });
    let proxy = envoy.proxy_url();
    let jobs: Vec<String> = (0..40).map(|i| format!("rt{i:02}")).collect();
    for (i, job) in jobs.iter().enumerate() {
        put(&proxy, job, &format!("mx_value {i}\n"));
    }
    let on_a = mx_values(&pgs[0]);
    assert!(!on_a.is_empty() && on_a.len() < jobs.len(), "{}", on_a.len());

    // Slot a's server dies for good: its standby is promoted.
    pgs[0].proc.kill();
    wait_until("slot a is served at its standby", Duration::from_secs(10), || {
        (envoy_slots(&envoy)?.get(&a)? == &slot(&a2, None)).then_some(())
    });

    // Retire slot a as it is: drained at its promoted standby, its standby entry kept.
    options.drain = vec![a.clone()];
    let (status, body) = sync.reload(&dir, options.clone());
    assert_eq!(status, 200, "{body}");
    wait_until("slot a leaves the ring", Duration::from_secs(10), || {
        (envoy.try_members().ok()?.1 == vec![b.clone()]).then_some(())
    });
    wait_until("slot a is drained", Duration::from_secs(30), || {
        let (status, body) = testkit::http_get(&sync.url("/-/drain"));
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["drains"]
            .as_array()?
            .iter()
            .any(|d| d["pushgateway"] == a.as_str() && d["state"] == "drained")
            .then_some(())
    });
    assert!(
        mx_values(&pgs[1]).is_empty(),
        "the promoted standby holds nothing"
    );
    assert!(
        sync.proc
            .log()
            .contains(&format!("pushgateway {a} is drained with its standby {a2}")),
        "{}",
        sync.proc.log_tail(20)
    );
    let want: BTreeMap<String, f64> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.clone(), i as f64))
        .collect();
    wait_until(
        "slot b holds every group, at both addresses",
        Duration::from_secs(20),
        || (mx_values(&pgs[2]) == want && mx_values(&pgs[3]) == want).then_some(()),
    );

    // Then it is stopped and taken out of the file altogether.
    pgs[1].proc.stop();
    options.servers = vec![b.clone()];
    options.drain = Vec::new();
    options.standbys = vec![(b.clone(), b2.clone())];
    let (status, body) = sync.reload(&dir, options.clone());
    assert_eq!(status, 200, "{body}");
    wait_until("only slot b is registered", Duration::from_secs(15), || {
        (consul
            .services("pushgateway")
            .into_iter()
            .map(|s| s.id)
            .collect::<Vec<_>>()
            == vec![id(&b)]
            && consul
                .services("pushgateway-standby")
                .into_iter()
                .map(|s| s.id)
                .collect::<Vec<_>>()
                == vec![id(&b2)])
        .then_some(())
    });
    assert_eq!(sync.targets(), Some(vec![b.clone()]));
    assert_eq!(
        envoy_slots(&envoy),
        Some(BTreeMap::from([(b.clone(), slot(&b, Some(&b2)))]))
    );
    assert_eq!(envoy.members().1, vec![b.clone()]);
}
