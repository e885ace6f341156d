//! Membership changes with real Consul, pushgateways, Envoy (2 workers), consul-sync and
//! Prometheus: scale out, drain, a restart with persistence, a deregistered pushgateway coming
//! back, pushes during all of it, and groups whose labels need `@base64`. Each test asserts what a
//! user sees: which pushgateways hold each group, with which value, and what Prometheus shows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{sorted, ConsulSync, SyncOptions};
use dynamic_sharding::grouping_key::GroupingKey;
use dynamic_sharding::members::MemberList;
use dynamic_sharding::ring::Ring;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::envoy::{Envoy, EnvoyOptions};
use testkit::{free_port, poll_for, try_http_request, wait_until, Consul, Prometheus, Pushgateway, TestDir};

/// Reconcile interval of these tests.
const RECONCILE: Duration = Duration::from_secs(2);
const RECONCILE_STR: &str = "2s";

type Labels = BTreeMap<String, String>;

/// Everything one test runs. Fields drop in order: processes first, the folder last.
struct Stack {
    prometheus: Option<Prometheus>,
    sync: Option<ConsulSync>,
    envoy: Envoy,
    consul: Consul,
    pgs: Vec<Pushgateway>,
    dir: TestDir,
}

impl Stack {
    /// `n` pushgateways (the first `registered` in consul-sync's servers), Consul, Envoy, and
    /// consul-sync once every registered one is in Envoy's list.
    fn start(name: &str, n: usize, registered: usize, prometheus: bool) -> Stack {
        let dir = TestDir::new(name);
        let pgs: Vec<Pushgateway> = (0..n).map(|_| Pushgateway::start(&dir)).collect();
        Stack::assemble(dir, pgs, registered, prometheus, |_| {})
    }

    /// The stack around pushgateways already started in `dir`; `tweak` adjusts consul-sync's
    /// configuration before it starts.
    fn assemble(
        dir: TestDir,
        pgs: Vec<Pushgateway>,
        registered: usize,
        prometheus: bool,
        tweak: impl FnOnce(&mut SyncOptions),
    ) -> Stack {
        let consul = Consul::start(&dir);
        let envoy = Envoy::start(&dir, EnvoyOptions::default());
        let mut s = Stack {
            prometheus: None,
            sync: None,
            envoy,
            consul,
            pgs,
            dir,
        };
        let servers: Vec<String> = s.pgs[..registered].iter().map(Pushgateway::addr).collect();
        let mut options = s.options(servers.clone());
        tweak(&mut options);
        let sync = ConsulSync::start(&s.dir, options);
        s.sync = Some(sync);
        s.wait_ring(&sorted(servers), &[], "Envoy has the registered pushgateways");
        if prometheus {
            s.prometheus = Some(Prometheus::start(&s.dir, &s.consul.addr(), "pushgateway"));
        }
        s
    }

    fn options(&self, servers: Vec<String>) -> SyncOptions {
        let mut o = SyncOptions::new(self.consul.addr(), servers);
        o.control_urls = vec![self.envoy.control_url()];
        o.reconcile = RECONCILE_STR;
        o
    }

    fn sync(&mut self) -> &mut ConsulSync {
        self.sync.as_mut().unwrap()
    }

    /// Rewrites consul-sync's configuration and reloads it; the reload must be accepted.
    fn reload(&mut self, options: SyncOptions) {
        let (status, body) = self.sync.as_mut().unwrap().reload(&self.dir, options);
        assert_eq!(status, 200, "reload refused: {body}");
    }

    /// Envoy's current list: (members, draining), sorted.
    fn ring_members(&self) -> Option<(Vec<String>, Vec<String>)> {
        let r = try_http_request(
            "GET",
            &format!("{}/-/sharding/members", self.envoy.control_url()),
            &[],
            b"",
        )
        .ok()?;
        let v = r.json();
        let list = |k: &str| {
            sorted(
                v[k].as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m.as_str().map(str::to_owned))
                    .collect(),
            )
        };
        Some((list("members"), list("draining")))
    }

    fn wait_ring(&self, members: &[String], draining: &[String], what: &str) -> Duration {
        let start = Instant::now();
        wait_until(what, Duration::from_secs(30), || {
            (self.ring_members() == Some((members.to_vec(), draining.to_vec()))).then_some(())
        });
        start.elapsed()
    }

    /// The owner of `labels` on Envoy's current ring, computed with the filter's code.
    fn owner(&self, ring: &Ring, labels: &Labels) -> String {
        let key = GroupingKey::from_labels(labels.clone()).unwrap();
        ring.owner(key.hash()).unwrap().to_string()
    }

    fn ring(&self) -> Ring {
        let (members, _) = self.ring_members().unwrap();
        Ring::new(&MemberList::new(0, &members).unwrap().members, 500)
    }

    /// Every group every (running) pushgateway holds: labels → [(pushgateway, value of `metric`)].
    fn copies(&self, metric: &str) -> BTreeMap<Labels, Vec<(String, f64)>> {
        let mut out: BTreeMap<Labels, Vec<(String, f64)>> = BTreeMap::new();
        for pg in &self.pgs {
            let Ok(r) = try_http_request("GET", &format!("{}/api/v1/metrics", pg.url()), &[], b"") else {
                continue;
            };
            if r.status != 200 {
                continue;
            }
            for g in r.json()["data"].as_array().into_iter().flatten() {
                let labels: Labels = testkit::group_labels(g);
                let value = g[metric]["metrics"][0]["value"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                out.entry(labels).or_default().push((pg.addr(), value));
            }
        }
        out
    }

    /// Waits until every group in `want` (labels → value) has exactly one copy, on its owner
    /// when `on_owner`, holding that value, and no other group exists. Returns the time taken.
    fn wait_one_copy_each(
        &self,
        metric: &str,
        want: &BTreeMap<Labels, f64>,
        on_owner: bool,
        timeout: Duration,
    ) -> Duration {
        let start = Instant::now();
        let mut last = String::new();
        let done = poll_for(timeout, || {
            let copies = self.copies(metric);
            let ring = self.ring();
            let mut problems = Vec::new();
            for (labels, value) in want {
                match copies.get(labels).map(Vec::as_slice) {
                    Some([(pg, v)]) => {
                        if v != value {
                            problems.push(format!("{labels:?} on {pg} holds {v}, want {value}"));
                        } else if on_owner && *pg != self.owner(&ring, labels) {
                            problems.push(format!("{labels:?} on {pg}, not on its owner"));
                        }
                    }
                    Some(many) => problems.push(format!("{labels:?} has copies {many:?}")),
                    None => problems.push(format!("{labels:?} is lost")),
                }
            }
            for labels in copies.keys().filter(|l| !want.contains_key(*l)) {
                problems.push(format!("unexpected group {labels:?}"));
            }
            if problems.is_empty() {
                return Some(());
            }
            last = format!(
                "{} problems, e.g. {:?}",
                problems.len(),
                &problems[..problems.len().min(5)]
            );
            std::thread::sleep(Duration::from_millis(200));
            None
        });
        assert!(done.is_some(), "after {timeout:?}: {last}");
        start.elapsed()
    }

    /// Waits until Prometheus shows each group of `want` once, with its value.
    fn wait_prometheus_once_each(&self, metric: &str, want: &BTreeMap<Labels, f64>, timeout: Duration) {
        let prom = self.prometheus.as_ref().unwrap();
        let mut last = String::new();
        let done = poll_for(timeout, || {
            let series = prom.query(metric);
            let mut seen: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for (labels, v) in &series {
                let i = labels.get("i").and_then(|x| x.as_str()).unwrap_or("?").to_owned();
                seen.entry(i).or_default().push(*v);
            }
            let bad: Vec<String> = want
                .iter()
                .filter_map(|(labels, value)| {
                    let got = seen.get(&labels["i"]);
                    (got != Some(&vec![*value]))
                        .then(|| format!("i={} shows {got:?}, want [{value}]", labels["i"]))
                })
                .collect();
            if bad.is_empty() && series.len() == want.len() {
                return Some(());
            }
            last = format!(
                "{} series for {} groups; {:?}",
                series.len(),
                want.len(),
                &bad[..bad.len().min(5)]
            );
            std::thread::sleep(Duration::from_millis(500));
            None
        });
        assert!(done.is_some(), "Prometheus after {timeout:?}: {last}");
    }
}

/// Pushes through Envoy's proxy listener, the way a client that ignores 307 does.
fn push(envoy: &Envoy, path: &str, body: &str) -> u16 {
    try_http_request(
        "PUT",
        &format!("{}{path}", envoy.proxy_url()),
        &[],
        body.as_bytes(),
    )
    .map(|r| r.status)
    .unwrap_or(0)
}

fn group(job: &str, i: usize) -> (String, Labels) {
    let labels = Labels::from([
        ("job".to_owned(), job.to_owned()),
        ("i".to_owned(), i.to_string()),
    ]);
    (format!("/metrics/job/{job}/i/{i}"), labels)
}

/// Pushes `metric = value` to groups `0..n` of `job` on 4 threads; every push must succeed.
fn push_all(envoy: &Envoy, job: &str, metric: &str, n: usize, value: f64) -> BTreeMap<Labels, f64> {
    let url = envoy.proxy_url();
    std::thread::scope(|s| {
        for t in 0..4 {
            let url = url.clone();
            s.spawn(move || {
                for i in (t..n).step_by(4) {
                    let (path, _) = group(job, i);
                    let body = format!("{metric} {value}\n");
                    let status = try_http_request("PUT", &format!("{url}{path}"), &[], body.as_bytes())
                        .map(|r| r.status)
                        .unwrap_or(0);
                    assert!(status == 200 || status == 202, "push {path}: {status}");
                }
            });
        }
    });
    (0..n).map(|i| (group(job, i).1, value)).collect()
}

#[test]
fn scale_out_keeps_one_copy_per_group_and_the_newest_value() {
    const N: usize = 2000;
    let mut s = Stack::start("scale-out", 4, 3, true);
    let four: Vec<String> = s.pgs.iter().map(Pushgateway::addr).collect();
    let want = push_all(&s.envoy, "scale", "scale_value", N, 1.0);
    s.wait_one_copy_each("scale_value", &want, true, Duration::from_secs(10));
    s.wait_prometheus_once_each("scale_value", &want, Duration::from_secs(30));

    // Scale out live: a 4th in servers, then a reload.
    let options = s.options(four.clone());
    s.reload(options);
    let took = s.wait_ring(&sorted(four.clone()), &[], "Envoy has the 4th pushgateway");
    eprintln!("reload -> Envoy routes to the 4th: {took:?}");
    // Nothing pushed yet: every group still has its one copy (now often on a non-owner), and
    // Prometheus still shows all of them with their values.
    s.wait_one_copy_each("scale_value", &want, false, Duration::from_secs(5));
    wait_until("Prometheus scrapes the 4th", Duration::from_secs(30), || {
        (s.prometheus.as_ref().unwrap().up_targets().len() == 4).then_some(())
    });
    s.wait_prometheus_once_each("scale_value", &want, Duration::from_secs(10));
    let metrics = s.sync().metrics_text();
    assert!(
        metrics.contains("consul_sync_reconcile_misplaced_groups ")
            && !metrics.contains("consul_sync_reconcile_misplaced_groups 0\n"),
        "after a scale-out some groups sit on a non-owner:\n{metrics}"
    );

    // Every job pushes again: a quarter lands on the 4th, and their old copies must go.
    let want = push_all(&s.envoy, "scale", "scale_value", N, 2.0);
    let pushed = Instant::now();
    let took = s.wait_one_copy_each(
        "scale_value",
        &want,
        true,
        RECONCILE * 2 + Duration::from_secs(20),
    );
    let since_push = pushed.elapsed();
    eprintln!("re-push -> one copy per group, each on its owner: {took:?}");
    assert!(
        since_push <= RECONCILE * 2 + Duration::from_secs(3),
        "converged {since_push:?} after the re-push; want within two reconcile intervals ({:?}) plus 3 s of slack",
        RECONCILE * 2
    );
    s.wait_prometheus_once_each("scale_value", &want, Duration::from_secs(15));
    let per_pg: Vec<usize> = s.pgs.iter().map(|p| p.groups().len()).collect();
    assert!(
        per_pg.iter().all(|n| *n > N / 8),
        "the 4th took its share: {per_pg:?}"
    );
    assert!(s.sync().metric("consul_sync_reconcile_deleted_copies_total") >= 1.0);
}

#[test]
fn a_drain_under_load_empties_the_pushgateway_and_loses_nothing() {
    const N: usize = 400;
    const HOT: usize = 40;
    let mut s = Stack::start("drain", 4, 4, true);
    let all: Vec<String> = s.pgs.iter().map(Pushgateway::addr).collect();
    let mut want = push_all(&s.envoy, "drain", "drain_value", N, 1.0);
    s.wait_one_copy_each("drain_value", &want, true, Duration::from_secs(10));

    // A pusher keeps pushing the first HOT groups with increasing values.
    let stop = Arc::new(AtomicBool::new(false));
    let last: Arc<Mutex<BTreeMap<usize, f64>>> = Arc::default();
    let pusher = {
        let (stop, last, url) = (stop.clone(), last.clone(), s.envoy.proxy_url());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut v = 10.0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                for i in 0..HOT {
                    let (path, _) = group("drain", i);
                    let body = format!("drain_value {v}\n");
                    if let Ok(r) = try_http_request("PUT", &format!("{url}{path}"), &[], body.as_bytes()) {
                        if r.status == 200 || r.status == 202 {
                            last.lock().unwrap().insert(i, v);
                        }
                    }
                }
                v += 1.0;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    // Drain the pushgateway that holds the most groups, with a short deadline.
    let victim = s
        .pgs
        .iter()
        .max_by_key(|p| p.groups().len())
        .map(Pushgateway::addr)
        .unwrap();
    let mut options = s.options(all.clone());
    options.drain = vec![victim.clone()];
    options.drain_timeout = "4s";
    s.reload(options);
    let rest: Vec<String> = sorted(all.iter().filter(|a| **a != victim).cloned().collect());
    s.wait_ring(
        &rest,
        std::slice::from_ref(&victim),
        "the victim leaves the ring but stays listed",
    );
    let drained_after = Instant::now();
    wait_until(
        "consul-sync reports the drain done",
        Duration::from_secs(40),
        || {
            let (status, body) = testkit::http_get(&s.sync.as_ref().unwrap().url("/-/drain"));
            assert_eq!(status, 200);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            (v["drains"][0]["state"] == "drained" && v["drains"][0]["groups"] == 0).then_some(())
        },
    );
    eprintln!("drain start -> drained: {:?}", drained_after.elapsed());
    stop.store(true, Ordering::Relaxed);
    pusher.join().unwrap();
    for (i, v) in last.lock().unwrap().iter() {
        want.insert(group("drain", *i).1, *v);
    }
    let victim_pg = s.pgs.iter().find(|p| p.addr() == victim).unwrap();
    assert_eq!(
        victim_pg.groups().len(),
        0,
        "the drained pushgateway holds nothing"
    );
    // Nothing lost, one copy each (the drained one is still scraped: no group shows twice).
    s.wait_one_copy_each(
        "drain_value",
        &want,
        false,
        RECONCILE * 2 + Duration::from_secs(10),
    );
    s.wait_prometheus_once_each("drain_value", &want, Duration::from_secs(15));
    let sync = s.sync();
    assert!(
        sync.metric("consul_sync_drain_moved_groups_total") >= 1.0,
        "groups nobody pushed were moved"
    );
    assert_eq!(
        sync.metric(&format!("consul_sync_drain_state{{pushgateway=\"{victim}\"}}")),
        2.0
    );
    assert!(
        sync.proc.log().contains("is drained"),
        "the log says it is drained"
    );
    // It can be stopped with nothing lost.
    let idx = s.pgs.iter().position(|p| p.addr() == victim).unwrap();
    s.pgs[idx].proc.stop();
    s.wait_one_copy_each("drain_value", &want, false, Duration::from_secs(5));
}

#[test]
fn a_pushgateway_back_with_old_persisted_copies_never_wins_over_newer_pushes() {
    const N: usize = 300;
    let dir = TestDir::new("persistence");
    let file = dir.join("pg0.persistence");
    let port0 = free_port();
    let pg0 = Pushgateway::start_persistent(&dir, port0, Some(&file));
    let pgs = vec![pg0, Pushgateway::start(&dir), Pushgateway::start(&dir)];
    let mut s = Stack::assemble(dir, pgs, 3, false, |_| {});
    let all: Vec<String> = s.pgs.iter().map(Pushgateway::addr).collect();
    let mut want = push_all(&s.envoy, "persist", "persist_value", N, 1.0);
    s.wait_one_copy_each("persist_value", &want, true, Duration::from_secs(10));
    let on_pg0: Vec<Labels> = s.pgs[0].groups().into_iter().collect();
    assert!(!on_pg0.is_empty());
    // Give the persistence file a moment, then stop pg0 for longer than the check interval.
    std::thread::sleep(Duration::from_millis(1500));
    s.pgs[0].proc.stop();
    let rest: Vec<String> = sorted(all[1..].to_vec());
    s.wait_ring(&rest, &[], "pg0 leaves the ring");
    // Its jobs push again meanwhile: the groups land on the survivors with a newer value.
    for labels in &on_pg0 {
        let path = format!("/metrics/job/persist/i/{}", labels["i"]);
        assert_eq!(push(&s.envoy, &path, "persist_value 2\n"), 200, "{path}");
        want.insert(labels.clone(), 2.0);
    }
    // pg0 comes back with its persisted (older) copies and is the owner again.
    s.pgs[0] = Pushgateway::start_persistent(&s.dir, port0, Some(&file));
    assert!(
        !s.pgs[0].groups().is_empty(),
        "pg0 came back with its persisted groups"
    );
    s.wait_ring(&sorted(all.clone()), &[], "pg0 is back in the ring");
    // The newest copy wins: value 2 everywhere it was pushed, never the persisted 1.
    let took = s.wait_one_copy_each(
        "persist_value",
        &want,
        false,
        RECONCILE * 2 + Duration::from_secs(10),
    );
    eprintln!("pg0 back -> one copy per group, newest kept: {took:?}");
}

#[test]
fn a_deregistered_pushgateway_is_admitted_again_when_it_comes_back() {
    let dir = TestDir::new("deregistered");
    let pgs: Vec<Pushgateway> = (0..3).map(|_| Pushgateway::start(&dir)).collect();
    let mut s = Stack::assemble(dir, pgs, 3, false, |o| o.deregister_after = "1m");
    let all: Vec<String> = sorted(s.pgs.iter().map(Pushgateway::addr).collect());
    let members = |s: &Stack| s.ring_members().map(|(m, _)| m).unwrap_or_default();
    let port = s.pgs[2].port;
    let id = format!("127.0.0.1_{port}");
    s.pgs[2].proc.kill();
    // Consul reaps it 60 to 90 s after it went critical; consul-sync, seeing it gone, registers it
    // again at once (the gap is too short to poll for: the metric says it happened).
    let start = Instant::now();
    let again = "consul_sync_registrations_total{reason=\"missing\"}";
    wait_until(
        "Consul deregisters the dead pushgateway and consul-sync registers it again",
        Duration::from_secs(150),
        || (s.sync.as_ref().unwrap().metric(again) >= 1.0).then_some(()),
    );
    eprintln!(
        "killed -> deregistered by Consul, registered again: {:?}",
        start.elapsed()
    );
    assert!(s.consul.services("pushgateway").iter().any(|svc| svc.id == id));
    let others: Vec<String> = all
        .iter()
        .filter(|m| **m != format!("127.0.0.1:{port}"))
        .cloned()
        .collect();
    assert_eq!(members(&s), others, "a dead pushgateway is out of the ring");
    // Back, with no restart of consul-sync.
    s.pgs[2] = Pushgateway::start_on(&s.dir, port);
    let back = Instant::now();
    wait_until("Envoy has the three again", Duration::from_secs(30), || {
        (members(&s) == all).then_some(())
    });
    let took = back.elapsed();
    eprintln!("restarted -> in Envoy's list: {took:?}");
    // One check interval (1 s) plus one reconcile interval (the registrar's sweep), plus 2 s for
    // Consul's first check run and the push to Envoy.
    assert!(
        took <= Duration::from_secs(1) + RECONCILE + Duration::from_secs(2),
        "re-admitted after {took:?}"
    );
    let sync = s.sync();
    assert!(sync.proc.log().contains("registered 127.0.0.1:"));
}

#[test]
fn pushes_during_scale_out_drain_and_restart_end_with_the_last_value_everywhere() {
    const N: usize = 200;
    let mut s = Stack::start("concurrency", 4, 3, false);
    let four: Vec<String> = s.pgs.iter().map(Pushgateway::addr).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let last: Arc<Mutex<BTreeMap<usize, f64>>> = Arc::default();
    let rounds_after_stop = Arc::new(Mutex::new(0usize));
    let pusher = {
        let (stop, last, url, rounds) = (
            stop.clone(),
            last.clone(),
            s.envoy.proxy_url(),
            rounds_after_stop.clone(),
        );
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(180);
            let mut v = 1.0;
            while Instant::now() < deadline {
                if stop.load(Ordering::Relaxed) {
                    let mut r = rounds.lock().unwrap();
                    if *r >= 2 {
                        break;
                    }
                    *r += 1;
                }
                for i in 0..N {
                    let (path, _) = group("conc", i);
                    let body = format!("conc_value {v}\n");
                    if let Ok(r) = try_http_request("PUT", &format!("{url}{path}"), &[], body.as_bytes()) {
                        if r.status == 200 || r.status == 202 {
                            last.lock().unwrap().insert(i, v);
                        }
                    }
                }
                v += 1.0;
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    // Add the 4th.
    let options = s.options(four.clone());
    s.reload(options);
    s.wait_ring(&sorted(four.clone()), &[], "the 4th joins");
    std::thread::sleep(RECONCILE);
    // Drain the first.
    let mut options = s.options(four.clone());
    options.drain = vec![four[0].clone()];
    options.drain_timeout = "3s";
    s.reload(options);
    s.wait_ring(
        &sorted(four[1..].to_vec()),
        std::slice::from_ref(&four[0]),
        "the first drains",
    );
    std::thread::sleep(RECONCILE);
    // Restart the second (no persistence: its groups come back with the next pushes).
    let port = s.pgs[1].port;
    s.pgs[1].proc.stop();
    s.wait_ring(
        &sorted(four[2..].to_vec()),
        std::slice::from_ref(&four[0]),
        "the second is down",
    );
    s.pgs[1] = Pushgateway::start_on(&s.dir, port);
    s.wait_ring(
        &sorted(four[1..].to_vec()),
        std::slice::from_ref(&four[0]),
        "the second is back",
    );
    // Two more full rounds of pushes, then the pusher stops.
    stop.store(true, Ordering::Relaxed);
    pusher.join().unwrap();
    let want: BTreeMap<Labels, f64> = last
        .lock()
        .unwrap()
        .iter()
        .map(|(i, v)| (group("conc", *i).1, *v))
        .collect();
    assert_eq!(want.len(), N);
    let took = s.wait_one_copy_each(
        "conc_value",
        &want,
        false,
        RECONCILE * 3 + Duration::from_secs(15),
    );
    eprintln!("pushes stopped -> one copy per group with its last value: {took:?}");
}

#[test]
fn groups_with_awkward_labels_are_reconciled_and_deleted_exactly() {
    let s = Stack::start("awkward", 2, 2, false);
    let pgs = &s.pgs;
    let values = [
        "a/b", "50%", "ü✓", "", ".", "..", "x y", "q\"uote", "tab\tbed", "=", "@base64",
    ];
    // Two copies of each group, one per pushgateway; the second push is the newer one.
    let mut want: BTreeMap<Labels, (String, f64)> = BTreeMap::new();
    for (i, v) in values.iter().enumerate() {
        let labels = Labels::from([
            ("job".to_owned(), "awk/ward".to_owned()),
            ("v".to_owned(), (*v).to_owned()),
            ("n".to_owned(), i.to_string()),
        ]);
        let path = GroupingKey::from_labels(labels.clone()).unwrap().to_path();
        let (older, newer) = if i % 2 == 0 {
            (&pgs[0], &pgs[1])
        } else {
            (&pgs[1], &pgs[0])
        };
        assert_eq!(older.push(&path, "awk_value 1\n"), 200, "{path}");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(newer.push(&path, "awk_value 2\n"), 200, "{path}");
        want.insert(labels, (newer.addr(), 2.0));
    }
    // A neighbour that must survive: same job, no `v` label.
    let neighbour = Labels::from([("job".to_owned(), "awk/ward".to_owned())]);
    assert_eq!(
        pgs[0].push("/metrics/job@base64/YXdrL3dhcmQ", "awk_value 3\n"),
        200
    );
    want.insert(neighbour, (pgs[0].addr(), 3.0));
    let values: BTreeMap<Labels, f64> = want.iter().map(|(l, (_, v))| (l.clone(), *v)).collect();
    s.wait_one_copy_each(
        "awk_value",
        &values,
        false,
        RECONCILE * 2 + Duration::from_secs(10),
    );
    let copies = s.copies("awk_value");
    for (labels, (pg, _)) in &want {
        assert_eq!(
            copies[labels][0].0, *pg,
            "{labels:?}: the newer copy is the one kept"
        );
    }
}

#[test]
fn one_delete_removes_a_group_left_on_its_former_owner_by_a_scale_out() {
    const N: usize = 200;
    let mut s = Stack::start("delete-after-scale-out", 4, 3, false);
    let four: Vec<String> = s.pgs.iter().map(Pushgateway::addr).collect();
    let want = push_all(&s.envoy, "del", "del_value", N, 1.0);
    s.wait_one_copy_each("del_value", &want, true, Duration::from_secs(10));
    let options = s.options(four.clone());
    s.reload(options);
    s.wait_ring(&sorted(four.clone()), &[], "the 4th joins");
    // No re-push: the groups the 4th now owns still sit on their former owners.
    let ring = s.ring();
    let moved: Vec<Labels> = want
        .keys()
        .filter(|l| s.owner(&ring, l) == four[3])
        .cloned()
        .collect();
    assert!(moved.len() >= 4, "only {} groups moved to the 4th", moved.len());
    let calls_before = s.envoy.stat("delete_fanout_calls_total");
    for (n, labels) in moved.iter().take(4).enumerate() {
        let path = format!("/metrics/job/del/i/{}", labels["i"]);
        let holder_before = s.copies("del_value")[labels][0].0.clone();
        assert_ne!(holder_before, four[3]);
        if n % 2 == 0 {
            // Redirect mode, followed as a client does.
            let r =
                try_http_request("DELETE", &format!("{}{path}", s.envoy.redirect_url()), &[], b"").unwrap();
            assert_eq!(r.status, 307);
            let location = r.header("location").unwrap().to_owned();
            assert!(location.contains(&four[3]), "{location}");
            let r = try_http_request("DELETE", &location, &[], b"").unwrap();
            assert_eq!(r.status, 202);
        } else {
            let r = try_http_request("DELETE", &format!("{}{path}", s.envoy.proxy_url()), &[], b"").unwrap();
            assert_eq!(r.status, 202);
        }
        assert!(
            !s.copies("del_value").contains_key(labels),
            "{labels:?} still held after one DELETE (was on {holder_before})"
        );
    }
    assert_eq!(s.envoy.stat("delete_fanout_calls_total"), calls_before + 4 * 3);
    assert_eq!(s.envoy.stat("delete_fanout_failures_total"), 0);
    // The reconciler does not bring them back, and every other group keeps its one copy.
    std::thread::sleep(RECONCILE + Duration::from_millis(500));
    let rest: BTreeMap<Labels, f64> = want
        .iter()
        .filter(|(l, _)| !moved[..4].contains(l))
        .map(|(l, v)| (l.clone(), *v))
        .collect();
    s.wait_one_copy_each("del_value", &rest, false, Duration::from_secs(5));
}
