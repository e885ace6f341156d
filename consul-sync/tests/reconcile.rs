//! The reconciler's edges with real pushgateways, Consul and consul-sync: a drain deadline racing
//! fresh pushes, client deletes and failed pushes; a push during a slow read; a pushgateway whose
//! clock runs ahead; a draining pushgateway that fails a check; an owner's failed push; and
//! pushgateways behind basic auth. Each test asserts what a user would see on the pushgateways.
//!
//! A skewed or slow pushgateway is a real one behind a fault-injection front (`common/front.rs`):
//! libfaketime cannot move a Go program's clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/front.rs"]
mod front;
#[path = "common/reconciling.rs"]
mod reconciling;

use common::{sorted, ConsulSync, SyncOptions};
use dynamic_sharding::grouping_key::GroupingKey;
use dynamic_sharding::members::{Member, MemberList};
use dynamic_sharding::ring::Ring;
use front::Front;
use reconciling::Reconciling;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use testkit::pushgateway::{BASIC_AUTH_HEADER, BASIC_AUTH_PASSWORD, BASIC_AUTH_USER};
use testkit::{http_request, wait_until, Consul, Pushgateway, TestDir};

type Labels = BTreeMap<String, String>;

/// What one pushgateway holds of one group.
#[derive(Clone, Debug, PartialEq)]
struct Held {
    /// The first sample of the group's own metric (not pushgateway's push times).
    value: Option<f64>,
    push: f64,
    failure: f64,
    last_push_successful: bool,
}

fn labels(job: &str, i: &str) -> Labels {
    Labels::from([("job".to_owned(), job.to_owned()), ("i".to_owned(), i.to_owned())])
}

fn path(l: &Labels) -> String {
    GroupingKey::from_labels(l.clone()).unwrap().to_path()
}

/// The member that owns `l` on the ring of `members` (500 virtual nodes, as the filter).
fn owner(members: &[String], l: &Labels) -> String {
    let members: Vec<Member> = members.iter().map(|m| Member::parse(m).unwrap()).collect();
    let ring = Ring::new(&members, 500);
    let key = GroupingKey::from_labels(l.clone()).unwrap();
    ring.owner(key.hash()).unwrap().to_string()
}

/// A push that pushgateway refuses (a sample with a timestamp): it records the time of the failed
/// push in the group, as a job's push that failed its checks does.
const FAILING_BODY: &str = "failing_push 1 1000\n";

fn request(pg: &Pushgateway, method: &str, path: &str, body: &str, auth: bool) -> u16 {
    let headers: &[(&str, &str)] = if auth {
        &[("authorization", BASIC_AUTH_HEADER)]
    } else {
        &[]
    };
    http_request(method, &format!("{}{path}", pg.url()), headers, body.as_bytes()).status
}

/// Every group `pg` holds.
fn held(pg: &Pushgateway, auth: bool) -> BTreeMap<Labels, Held> {
    let headers: &[(&str, &str)] = if auth {
        &[("authorization", BASIC_AUTH_HEADER)]
    } else {
        &[]
    };
    let r = http_request("GET", &format!("{}/api/v1/metrics", pg.url()), headers, b"");
    assert_eq!(r.status, 200, "{}", r.body);
    let mut out = BTreeMap::new();
    for g in r.json()["data"].as_array().into_iter().flatten() {
        let labels: Labels = testkit::group_labels(g);
        let number = |family: &serde_json::Value| {
            family["metrics"][0]["value"]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
        };
        let mut value = None;
        for (name, family) in g.as_object().unwrap() {
            if ![
                "labels",
                "last_push_successful",
                "push_time_seconds",
                "push_failure_time_seconds",
            ]
            .contains(&name.as_str())
            {
                value = value.or_else(|| number(family));
            }
        }
        out.insert(
            labels,
            Held {
                value,
                push: number(&g["push_time_seconds"]).unwrap_or(0.0),
                failure: number(&g["push_failure_time_seconds"]).unwrap_or(0.0),
                last_push_successful: g["last_push_successful"].as_bool().unwrap_or(true),
            },
        );
    }
    out
}

/// Consul, consul-sync and the pushgateways of one test. Fields drop in order: processes first,
/// the folder last.
struct Cluster {
    sync: ConsulSync,
    _consul: Consul,
    dir: TestDir,
}

impl Cluster {
    /// Consul and a consul-sync over `servers` (no Envoy: the reconciler works from the list
    /// consul-sync publishes), with `tweak` applied to its configuration.
    fn start(dir: TestDir, servers: &[String], tweak: impl FnOnce(&mut SyncOptions)) -> Cluster {
        let consul = Consul::start(&dir);
        let mut options = SyncOptions::new(consul.addr(), servers.to_vec());
        options.reconcile = "1s";
        tweak(&mut options);
        let sync = ConsulSync::start(&dir, options);
        Cluster {
            sync,
            _consul: consul,
            dir,
        }
    }

    fn rounds(&self) -> f64 {
        self.sync.metric("consul_sync_reconcile_duration_seconds_count")
    }

    /// Waits until `n` more reconcile rounds have ended.
    fn wait_rounds(&self, n: f64, timeout: Duration) {
        let start = self.rounds();
        wait_until(&format!("{n} more reconcile rounds"), timeout, || {
            (self.rounds() >= start + n).then_some(())
        });
    }

    /// The drain of `pushgateway` as `/-/drain` shows it.
    fn drain(&self, pushgateway: &str) -> Option<serde_json::Value> {
        let (status, body) = testkit::http_get(&self.sync.url("/-/drain"));
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["drains"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["pushgateway"] == pushgateway)
            .cloned()
    }
}

#[test]
fn a_drain_deadline_move_keeps_fresh_pushes_client_deletes_and_failed_pushes() {
    const BULK: usize = 1500;
    const HOT: usize = 10;
    const GONE: usize = 5;
    let dir = TestDir::new("drain-move-races");
    let members: Vec<Pushgateway> = (0..3).map(|_| Pushgateway::start(&dir)).collect();
    let member_addrs = sorted(members.iter().map(Pushgateway::addr).collect());
    // The draining one takes pushes fast (no consistency check) so the test loads it quickly.
    let drained = Pushgateway::start_unchecked(&dir);
    // Every group sits on the draining pushgateway, as pushed there before the drain. The groups
    // the test races with sort last, so the drain moves them last.
    let bulk: Vec<Labels> = (0..BULK).map(|i| labels("mv", &format!("{i:05}"))).collect();
    let hot: Vec<Labels> = (0..HOT).map(|k| labels("mv", &format!("zzz-hot-{k}"))).collect();
    let gone: Vec<Labels> = (0..GONE)
        .map(|k| labels("mv", &format!("zzz-gone-{k}")))
        .collect();
    let failed = labels("mv", "zzz-failed");
    let never = labels("mv", "zzz-never");
    std::thread::scope(|s| {
        for t in 0..4 {
            let (all, drained) = (&bulk, &drained);
            s.spawn(move || {
                for l in all.iter().skip(t).step_by(4) {
                    assert!(request(drained, "PUT", &path(l), "mv_value 1\n", false) < 300);
                }
            });
        }
    });
    for l in hot.iter().chain(&gone).chain([&failed]) {
        assert!(request(&drained, "PUT", &path(l), "mv_value 1\n", false) < 300);
    }
    // Its last push failed; and one whose only push failed (push time 0).
    std::thread::sleep(Duration::from_millis(50));
    request(&drained, "PUT", &path(&failed), FAILING_BODY, false);
    request(&drained, "PUT", &path(&never), FAILING_BODY, false);
    let total = BULK + HOT + GONE + 2;
    wait_until(
        "the draining pushgateway holds every group",
        Duration::from_secs(60),
        || (held(&drained, false).len() == total).then_some(()),
    );
    let servers: Vec<String> = member_addrs.iter().cloned().chain([drained.addr()]).collect();
    let c = Cluster::start(dir, &servers, |o| {
        o.drain = vec![drained.addr()];
        o.drain_timeout = "3s";
        o.reconcile = "2s";
    });

    // The deadline passes; the moves start: groups leave the draining pushgateway.
    wait_until(
        "the moves at the drain deadline begin",
        Duration::from_secs(60),
        || (held(&drained, false).len() < total).then_some(()),
    );
    // Right then, jobs push their hot groups to their owners, and a client deletes some groups
    // (a DELETE reaches every pushgateway that may hold the group: here the draining one).
    for l in &hot {
        let to = members
            .iter()
            .find(|p| p.addr() == owner(&member_addrs, l))
            .unwrap();
        assert_eq!(request(to, "PUT", &path(l), "mv_value 2\n", false), 200);
    }
    for l in &gone {
        assert_eq!(request(&drained, "DELETE", &path(l), "", false), 202);
    }
    wait_until("the drain ends", Duration::from_secs(60), || {
        c.drain(&drained.addr())
            .is_some_and(|d| d["state"] == "drained")
            .then_some(())
    });

    let mut everywhere: BTreeMap<Labels, Vec<(String, Held)>> = BTreeMap::new();
    for pg in members.iter().chain([&drained]) {
        for (l, h) in held(pg, false) {
            everywhere.entry(l).or_default().push((pg.addr(), h));
        }
    }
    let only = |l: &Labels| -> Held {
        let copies = everywhere.get(l).cloned().unwrap_or_default();
        assert_eq!(copies.len(), 1, "{l:?}: one copy wanted, found {copies:?}");
        assert_eq!(copies[0].0, owner(&member_addrs, l), "{l:?} is on its owner");
        copies[0].1.clone()
    };
    for l in &hot {
        assert_eq!(
            only(l).value,
            Some(2.0),
            "{l:?}: the push to its owner during the drain was overwritten by the drained copy"
        );
    }
    for l in &gone {
        assert!(
            !everywhere.contains_key(l),
            "{l:?} was deleted by a client during the drain and came back: {:?}",
            everywhere[l]
        );
    }
    let f = only(&failed);
    assert!(
        !f.last_push_successful && f.failure > f.push && f.push > 0.0 && f.value == Some(1.0),
        "a group whose last push failed shows it on its owner: {f:?}"
    );
    let n = only(&never);
    assert!(
        !n.last_push_successful && n.push == 0.0 && n.failure > 0.0,
        "a group never pushed successfully shows it on its owner: {n:?}"
    );
    for l in &bulk {
        assert_eq!(only(l).value, Some(1.0), "{l:?}");
    }
    assert!(c.sync.metric("consul_sync_drain_moved_groups_total") >= BULK as f64);
}

#[test]
fn no_drain_move_while_a_newer_copy_may_sit_on_an_unreadable_pushgateway() {
    let dir = TestDir::new("unreadable-holder");
    let (a, c, drained) = (
        Pushgateway::start(&dir),
        Pushgateway::start(&dir),
        Pushgateway::start(&dir),
    );
    // c passes its check but its /metrics cannot be read.
    let unreadable = Front::start(&c.addr(), 0.0);
    unreadable.fail_metrics(true);
    let members = sorted(vec![a.addr(), unreadable.addr()]);
    // A group a owns; c holds its newest copy (pushed there when c owned it, or by an Envoy that
    // had not yet taken a new list), the draining one an older copy.
    let g = (0..1000)
        .map(|i| labels("ur", &i.to_string()))
        .find(|l| owner(&members, l) == a.addr())
        .unwrap();
    assert_eq!(request(&drained, "PUT", &path(&g), "ur_value 1\n", false), 200);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(request(&c, "PUT", &path(&g), "ur_value 2\n", false), 200);
    let servers = vec![a.addr(), unreadable.addr(), drained.addr()];
    let cluster = Cluster::start(dir, &servers, |o| {
        o.drain = vec![drained.addr()];
        o.drain_timeout = "1s";
    });
    // Past the deadline, rounds that cannot read c.
    std::thread::sleep(Duration::from_secs(2));
    cluster.wait_rounds(3.0, Duration::from_secs(30));
    // c is readable again: whatever was done meanwhile, the newest push must be what is left.
    unreadable.fail_metrics(false);
    wait_until("the drain ends", Duration::from_secs(30), || {
        cluster
            .drain(&drained.addr())
            .is_some_and(|d| d["state"] == "drained")
            .then_some(())
    });
    cluster.wait_rounds(2.0, Duration::from_secs(20));
    let left: Vec<(String, Option<f64>)> = [&a, &c, &drained]
        .iter()
        .filter_map(|p| held(p, false).get(&g).map(|h| (p.addr(), h.value)))
        .collect();
    assert_eq!(
        left,
        vec![(c.addr(), Some(2.0))],
        "the drained older copy was moved while a newer one sat on an unreadable pushgateway"
    );
    assert!(
        cluster
            .sync
            .metric("consul_sync_drain_skipped_moves_total{reason=\"unreadable\"}")
            >= 1.0
    );
}

#[test]
fn a_push_during_a_slow_read_of_another_pushgateway_is_not_deleted() {
    let dir = TestDir::new("delete-window");
    let pgs: Vec<Pushgateway> = (0..3).map(|_| Pushgateway::start(&dir)).collect();
    let (a, b, c) = (&pgs[0], &pgs[1], &pgs[2]);
    let slow = Front::start(&c.addr(), 0.0);
    let g = labels("window", "g");
    let h = labels("window", "h");
    // a's copy of g is the older one (kept on b); b's copy of h is the older one (kept on c, which
    // is read through the slow front).
    assert_eq!(request(a, "PUT", &path(&g), "window_value 1\n", false), 200);
    assert_eq!(request(b, "PUT", &path(&h), "window_value 1\n", false), 200);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(request(b, "PUT", &path(&g), "window_value 2\n", false), 200);
    assert_eq!(request(c, "PUT", &path(&h), "window_value 2\n", false), 200);
    slow.delay_metrics(Duration::from_secs(4));
    let servers = vec![a.addr(), b.addr(), slow.addr()];
    let cluster = Cluster::start(dir, &servers, |o| o.reconcile = "60s");
    // The first round reads the three (4 s for the slow one) and plans both deletes; the reads
    // made before deleting reach the slow one again.
    wait_until("the reads before the deletes", Duration::from_secs(40), || {
        (slow.metrics_reads() >= 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    // Meanwhile g's job pushes to a (its owner back from an outage, or an Envoy that has not yet
    // taken a new list): a's copy is now the newest.
    let pushed = Instant::now();
    assert_eq!(request(a, "PUT", &path(&g), "window_value 3\n", false), 200);
    cluster.wait_rounds(1.0, Duration::from_secs(30));
    eprintln!("round ended {:?} after the push", pushed.elapsed());
    assert_eq!(
        held(a, false).get(&g).and_then(|x| x.value),
        Some(3.0),
        "the push that landed while the round read the slow pushgateway was deleted"
    );
    assert!(
        !held(b, false).contains_key(&h),
        "b's older copy of h goes (its keeper was read, slowly)"
    );
}

#[test]
fn a_pushgateway_whose_clock_runs_ahead_never_makes_the_newer_copy_go() {
    const AHEAD: f64 = 30.0;
    let dir = TestDir::new("clock-skew");
    let right = Pushgateway::start(&dir);
    let skewed = Pushgateway::start(&dir);
    let ahead = Front::start(&skewed.addr(), AHEAD);
    let g = labels("skew", "g");
    // The skewed one gets the older push; its clock stamps it 30 s in the future.
    assert_eq!(request(&skewed, "PUT", &path(&g), "skew_value 1\n", false), 200);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(request(&right, "PUT", &path(&g), "skew_value 2\n", false), 200);
    let servers = vec![right.addr(), ahead.addr()];
    let c = Cluster::start(dir, &servers, |_| {});
    let skew = |m: &str| {
        c.sync.metric(&format!(
            "consul_sync_pushgateway_clock_skew_seconds{{pushgateway=\"{m}\"}}"
        ))
    };
    c.wait_rounds(3.0, Duration::from_secs(30));
    assert_eq!(
        held(&right, false).get(&g).and_then(|x| x.value),
        Some(2.0),
        "the truly newer copy was deleted because the other pushgateway's clock runs ahead"
    );
    assert!(
        held(&skewed, false).contains_key(&g),
        "the older copy stays too while the clocks could reverse the order (both are kept)"
    );
    let s = skew(&ahead.addr());
    assert!(
        (AHEAD - 1.5..=AHEAD + 1.5).contains(&s),
        "skew of the one ahead: {s}"
    );
    let r = skew(&right.addr());
    assert!((-1.5..=1.5).contains(&r), "skew of the right one: {r}");
    assert!(c.sync.metric("consul_sync_reconcile_clock_refusals_total") >= 1.0);
    assert!(
        c.sync.proc.log().contains("clock"),
        "the refusal is logged:\n{}",
        c.sync.proc.log_tail(20)
    );
}

#[test]
fn a_draining_pushgateway_that_fails_a_check_keeps_its_deadline() {
    let dir = TestDir::new("drain-deadline");
    let file = dir.join("draining.persistence");
    let port = testkit::free_port();
    let mut pgs = [
        Pushgateway::start(&dir),
        Pushgateway::start(&dir),
        Pushgateway::start_persistent(&dir, port, Some(&file)),
    ];
    let draining = pgs[2].addr();
    // It holds a group, so the drain is under way until its deadline.
    assert_eq!(
        request(&pgs[2], "PUT", &path(&labels("dl", "g")), "dl_value 1\n", false),
        200
    );
    let servers: Vec<String> = pgs.iter().map(Pushgateway::addr).collect();
    let c = Cluster::start(dir, &servers, |o| {
        o.drain = vec![draining.clone()];
        o.drain_timeout = "10m";
    });
    let before = wait_until("the drain is under way", Duration::from_secs(20), || {
        c.drain(&draining).filter(|d| d["state"] == "draining")
    });
    // It restarts: its check fails, it leaves the passing list, then comes back.
    pgs[2].proc.stop();
    wait_until(
        "the restarting one leaves the list",
        Duration::from_secs(20),
        || {
            c.sync
                .targets()
                .is_some_and(|t| !t.contains(&draining))
                .then_some(())
        },
    );
    c.wait_rounds(2.0, Duration::from_secs(20));
    pgs[2] = Pushgateway::start_persistent(&c.dir, port, Some(&file));
    wait_until("it is back in the list", Duration::from_secs(20), || {
        c.sync
            .targets()
            .is_some_and(|t| t.contains(&draining))
            .then_some(())
    });
    c.wait_rounds(2.0, Duration::from_secs(20));
    let after = c.drain(&draining).expect("the drain is still listed");
    assert_eq!(
        (&after["since"], &after["deadline"]),
        (&before["since"], &before["deadline"]),
        "one failed check restarted the drain"
    );
}

#[test]
fn an_owners_failed_push_and_an_older_copy_elsewhere_both_stay() {
    let dir = TestDir::new("failed-push");
    let pgs: Vec<Pushgateway> = (0..2).map(|_| Pushgateway::start(&dir)).collect();
    let addrs = sorted(pgs.iter().map(Pushgateway::addr).collect());
    let g = (0..1000)
        .map(|i| labels("fp", &i.to_string()))
        .find(|l| owner(&addrs, l) == pgs[0].addr())
        .unwrap();
    let (own, other) = (&pgs[0], &pgs[1]);
    // An older successful push on a non-owner, then the job's push to its owner fails: the
    // metrics on `other` are the last that were acknowledged, the owner's copy the news that the
    // push failed. Neither may go.
    assert_eq!(request(other, "PUT", &path(&g), "fp_value 1\n", false), 200);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(request(own, "PUT", &path(&g), FAILING_BODY, false), 400);
    let c = Cluster::start(dir, &addrs, |_| {});
    wait_until("both pushgateways are members", Duration::from_secs(20), || {
        (c.sync.targets() == Some(addrs.clone())).then_some(())
    });
    c.wait_rounds(2.0, Duration::from_secs(20));
    let acked = held(other, false).get(&g).and_then(|h| h.value);
    assert_eq!(acked, Some(1.0), "the last acknowledged metrics were deleted");
    let failed = held(own, false).get(&g).cloned();
    assert!(
        failed.is_some_and(|h| h.failure > 0.0 && !h.last_push_successful),
        "the owner's failed push was deleted"
    );
    // The job's next push to its owner succeeds: now one copy is newest in every respect.
    assert_eq!(request(own, "PUT", &path(&g), "fp_value 2\n", false), 200);
    wait_until("the older copy is deleted", Duration::from_secs(20), || {
        (!held(other, false).contains_key(&g)).then_some(())
    });
    assert_eq!(held(own, false).get(&g).and_then(|h| h.value), Some(2.0));
}

#[test]
fn pushgateways_behind_basic_auth_are_checked_and_reconciled() {
    let dir = TestDir::new("basic-auth");
    let pgs: Vec<Pushgateway> = (0..2).map(|_| Pushgateway::start_basic_auth(&dir)).collect();
    let addrs = sorted(pgs.iter().map(Pushgateway::addr).collect());
    let g = labels("auth", "g");
    assert_eq!(request(&pgs[0], "PUT", &path(&g), "auth_value 1\n", true), 200);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(request(&pgs[1], "PUT", &path(&g), "auth_value 2\n", true), 200);
    let c = Cluster::start(dir, &addrs, |o| {
        o.auth = Some((BASIC_AUTH_USER.to_owned(), BASIC_AUTH_PASSWORD.to_owned()));
    });
    wait_until(
        "Consul's checks pass with the credentials",
        Duration::from_secs(20),
        || (c.sync.targets() == Some(addrs.clone())).then_some(()),
    );
    wait_until("the older copy is deleted", Duration::from_secs(20), || {
        (!held(&pgs[0], true).contains_key(&g)).then_some(())
    });
    assert_eq!(held(&pgs[1], true).get(&g).and_then(|h| h.value), Some(2.0));
    assert!(
        !c.sync.proc.log().contains(BASIC_AUTH_PASSWORD),
        "the password is never logged"
    );
}

#[test]
fn nothing_is_written_without_the_lease() {
    let dir = TestDir::new("lease");
    let pgs: Vec<Pushgateway> = (0..2).map(|_| Pushgateway::start(&dir)).collect();
    let addrs = sorted(pgs.iter().map(Pushgateway::addr).collect());
    let g = labels("lease", "g");
    assert_eq!(request(&pgs[0], "PUT", &path(&g), "lease_value 1\n", false), 200);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(request(&pgs[1], "PUT", &path(&g), "lease_value 2\n", false), 200);
    // The reconciler alone, on the list a watcher would publish.
    let r = Reconciling::start("reconcile_interval: 200ms\n", MemberList::new(1, &addrs).unwrap());
    wait_until("three rounds without the lease", Duration::from_secs(20), || {
        (r.rounds() >= 3.0).then_some(())
    });
    assert!(
        held(&pgs[0], false).contains_key(&g),
        "a consul-sync that does not hold the lease deleted a copy"
    );
    // Given the lease, it acts.
    r.take_lease();
    wait_until("the older copy is deleted", Duration::from_secs(20), || {
        (!held(&pgs[0], false).contains_key(&g)).then_some(())
    });
}
