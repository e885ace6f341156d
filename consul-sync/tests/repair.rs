//! The reconciler with slots, against real pushgateways, Consul and (where writes must flow
//! through the filter) Envoy: a standby that was down comes back and is repaired within one
//! reconcile interval; a copy on another slot's active is a duplicate, the standby's is not; a
//! draining slot empties both its addresses; pushes through Envoy while a repair runs are never
//! lost or overwritten with older data; a late stale write on the standby is replaced once, and
//! the repair's own copy is left alone after.
//!
//! Each test runs the reconciler in-process on the member list (with slots) a watcher would
//! publish, as `reconcile.rs` does for the lease, so it sets the slots exactly; `standbys.rs`
//! covers slots as consul-sync publishes them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/reconciling.rs"]
mod reconciling;

use dynamic_sharding::grouping_key::GroupingKey;
use dynamic_sharding::members::{Member, MemberList};
use dynamic_sharding::ring::Ring;
use reconciling::Reconciling;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use testkit::envoy::{Envoy, EnvoyOptions, TEST_TOKEN};
use testkit::{free_port, http_request, wait_until, Consul, Pushgateway, TestDir};

type Labels = BTreeMap<String, String>;

/// What one pushgateway holds of one group: the value of its metric and its push time.
#[derive(Clone, Debug, PartialEq)]
struct Held {
    value: Option<f64>,
    push: f64,
}

fn number(v: &serde_json::Value) -> Option<f64> {
    v["metrics"][0]["value"].as_str()?.parse().ok()
}

/// Every group `pg` holds.
fn held(pg: &Pushgateway) -> BTreeMap<Labels, Held> {
    let mut out = BTreeMap::new();
    for g in pg.api_groups() {
        let labels: Labels = testkit::group_labels(&g);
        let value = g
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.ends_with("_value"))
            .find_map(|(_, f)| number(f));
        let push = number(&g["push_time_seconds"]).unwrap_or(0.0);
        out.insert(labels, Held { value, push });
    }
    out
}

fn group(job: &str) -> Labels {
    Labels::from([("job".to_owned(), job.to_owned())])
}

fn path(job: &str) -> String {
    format!("/metrics/job/{job}")
}

/// Pushes `<job>_value <value>` to `pg` directly.
fn push(pg: &Pushgateway, job: &str, value: f64) {
    let status = pg.push(&path(job), &format!("{job}_value {value}\n"));
    // 202 without the consistency check.
    assert!(matches!(status, 200 | 202), "push of {job}: {status}");
}

/// As the filter writes a slot: the standby first, then the active.
fn push_both(standby: &Pushgateway, active: &Pushgateway, job: &str, value: f64) {
    push(standby, job, value);
    push(active, job, value);
}

fn delete(pg: &Pushgateway, job: &str) {
    let r = http_request("DELETE", &format!("{}{}", pg.url(), path(job)), &[], b"");
    assert_eq!(r.status, 202, "{}", r.body);
}

/// A job whose group slot `slot` owns among `slots` (500 virtual nodes, as the filter).
fn job_owned_by(slots: &[String], slot: &str, prefix: &str) -> String {
    let names: Vec<Member> = slots.iter().map(|s| Member::parse(s).unwrap()).collect();
    let ring = Ring::new(&names, 500);
    (0..10_000)
        .map(|i| format!("{prefix}_{i}"))
        .find(|job| {
            let key = GroupingKey::from_path(&path(job)).unwrap();
            ring.owner(key.hash()).map(Member::as_str) == Some(slot)
        })
        .unwrap()
}

/// The reconciler, holding the lease, with consul-sync's configuration `yaml` and Consul.
fn reconcile(consul: &Consul, yaml: &str, list: MemberList) -> Reconciling {
    let r = Reconciling::start(
        &format!("consul_server:\n  addr: {}\n{yaml}", consul.addr()),
        list,
    );
    r.take_lease();
    r
}

/// A list of `members` (slot names) and `draining`, with `slots` as (name, active, standby).
fn list(members: &[&str], draining: &[&str], slots: &[(&str, &str, Option<&str>)]) -> MemberList {
    MemberList::new(1, members)
        .unwrap()
        .with_draining(draining)
        .unwrap()
        .with_slots(slots.iter().copied())
        .unwrap()
}

#[test]
fn a_standby_that_was_down_comes_back_and_is_repaired_within_one_interval() {
    let dir = TestDir::new("repair-standby-back");
    let consul = Consul::start(&dir);
    let active = Pushgateway::start(&dir);
    let port = free_port();
    let persistence = dir.join("standby.db");
    let mut standby = Pushgateway::start_persistent(&dir, port, Some(&persistence));
    // Before it goes down, the standby got every write the active got.
    for job in ["keep", "gone", "older"] {
        push_both(&standby, &active, job, 1.0);
    }
    let keep_on_standby = held(&standby)[&group("keep")].clone();
    // A clean stop writes its persistence file: it comes back with these copies.
    standby.proc.stop();
    // While it is down: a new group, a newer push, a client's DELETE, on the active only.
    std::thread::sleep(Duration::from_millis(1200));
    push(&active, "new", 1.0);
    push(&active, "older", 2.0);
    delete(&active, "gone");

    let slot = active.addr();
    let r = reconcile(
        &consul,
        "reconcile_interval: 2s\n",
        list(&[&slot], &[], &[(&slot, &slot, Some(&standby.addr()))]),
    );
    r.wait_rounds(1.0);
    let down = r.slot(&slot).unwrap();
    assert!(!down.in_sync && down.differs_since.is_some(), "{down:?}");
    assert!(r.metric("consul_sync_repair_errors_total{kind=\"read\"}") >= 1.0);
    let on_active = held(&active);

    let standby = Pushgateway::start_persistent(&dir, port, Some(&persistence));
    let back = r.rounds();
    wait_until(
        "the standby holds what the active holds",
        r.interval * 3 + Duration::from_secs(20),
        || {
            let s = held(&standby);
            (s.keys().eq(on_active.keys()) && s.iter().all(|(g, h)| on_active[g].value == h.value))
                .then_some(())
        },
    );
    // Within one reconcile interval: by the first round that started after it was back (a round
    // already running may have found it down). Counted in rounds, not seconds: this machine is noisy.
    let took = r.rounds() - back;
    assert!(took <= 2.0, "repaired {took} rounds after it came back");
    assert_eq!(held(&active), on_active, "the active was written to");
    let s = held(&standby);
    assert_eq!(
        s[&group("keep")],
        keep_on_standby,
        "a copy equal to the active's is left as it was (with its true push time)"
    );
    assert_eq!(
        r.metric("consul_sync_repaired_groups_total"),
        3.0,
        "new and older copied, gone deleted: the standby came back with its old copies"
    );
    r.wait_rounds(1.0);
    let up = r.slot(&slot).unwrap();
    assert!(up.in_sync && up.differs_since.is_none(), "{up:?}");
    assert_eq!(r.metric("consul_sync_repair_oldest_difference_seconds"), 0.0);
}

#[test]
fn a_copy_on_another_slots_active_is_a_duplicate_the_standbys_is_not() {
    let dir = TestDir::new("repair-one-copy");
    let consul = Consul::start(&dir);
    let (a, sa, b) = (
        Pushgateway::start(&dir),
        Pushgateway::start(&dir),
        Pushgateway::start(&dir),
    );
    let names = vec![a.addr(), b.addr()];
    let g = job_owned_by(&names, &a.addr(), "dup");
    let h = job_owned_by(&names, &a.addr(), "stale");
    // An older copy of g on slot b's active; then g pushed through the filter to slot a.
    push(&b, &g, 1.0);
    // h's copy on the standby is older than the active's: a write it missed.
    push(&sa, &h, 1.0);
    std::thread::sleep(Duration::from_millis(1200));
    push_both(&sa, &a, &g, 2.0);
    push(&a, &h, 2.0);
    let g_on_standby = held(&sa)[&group(&g)].clone();

    let r = reconcile(
        &consul,
        "reconcile_interval: 1s\n",
        list(
            &[&a.addr(), &b.addr()],
            &[],
            &[(&a.addr(), &a.addr(), Some(&sa.addr()))],
        ),
    );
    wait_until("the duplicate on b goes", Duration::from_secs(20), || {
        (!held(&b).contains_key(&group(&g))).then_some(())
    });
    wait_until("the standby gets h's newer copy", Duration::from_secs(20), || {
        (held(&sa)[&group(&h)].value == Some(2.0)).then_some(())
    });
    r.wait_rounds(2.0);
    assert_eq!(
        held(&sa).get(&group(&g)),
        Some(&g_on_standby),
        "the standby's copy of its slot's group is its replica: neither deleted nor copied again"
    );
    assert_eq!(held(&a)[&group(&g)].value, Some(2.0));
    assert_eq!(r.metric("consul_sync_reconcile_deleted_copies_total"), 1.0);
    assert!(r.slot(&a.addr()).unwrap().in_sync);
}

#[test]
fn a_draining_slot_drains_as_one() {
    let dir = TestDir::new("repair-drain-slot");
    let consul = Consul::start(&dir);
    let (d, sd, b, sb) = (
        Pushgateway::start(&dir),
        Pushgateway::start(&dir),
        Pushgateway::start(&dir),
        Pushgateway::start(&dir),
    );
    let jobs: Vec<String> = (0..20).map(|i| format!("drained_{i}")).collect();
    for job in &jobs {
        push_both(&sd, &d, job, 1.0);
    }
    // The standby also holds a group its active lost (a DELETE that reached only the active).
    push(&sd, "leftover", 1.0);
    let r = reconcile(
        &consul,
        &format!(
            "pushgateway:\n  servers: ['{}', '{}']\n  drain: ['{}']\nreconcile_interval: 1s\ndrain_timeout: 2s\n",
            d.addr(),
            b.addr(),
            d.addr()
        ),
        list(
            &[&b.addr()],
            &[&d.addr()],
            &[
                (&d.addr(), &d.addr(), Some(&sd.addr())),
                (&b.addr(), &b.addr(), Some(&sb.addr())),
            ],
        ),
    );
    wait_until(
        "the slot's two addresses are empty",
        Duration::from_secs(30),
        || (held(&d).is_empty() && held(&sd).is_empty()).then_some(()),
    );
    wait_until(
        "the owner slot's standby is repaired",
        Duration::from_secs(20),
        || (held(&sb).len() == jobs.len()).then_some(()),
    );
    let on_b = held(&b);
    assert_eq!(on_b.len(), jobs.len());
    assert!(jobs.iter().all(|j| on_b[&group(j)].value == Some(1.0)));
    r.wait_rounds(1.0);
    let drains = r.drains.lock().unwrap().clone();
    assert_eq!(drains.len(), 1);
    assert_eq!(
        serde_json::to_value(&drains[0]).unwrap()["state"],
        "drained",
        "{drains:?}"
    );
}

#[test]
fn pushes_through_envoy_while_a_repair_runs_are_never_lost_or_overwritten() {
    const GROUPS: usize = 600;
    let dir = TestDir::new("repair-under-pushes");
    let consul = Consul::start(&dir);
    let active = Pushgateway::start_unchecked(&dir);
    let standby = Pushgateway::start_unchecked(&dir);
    let slot = active.addr();
    let envoy = Envoy::start(
        &dir,
        EnvoyOptions {
            members: vec![slot.clone()],
            ..EnvoyOptions::default()
        },
    );
    let body = serde_json::json!({
        "version": 2,
        "members": [slot],
        "slots": {slot.clone(): {"active": slot, "standby": standby.addr()}},
    });
    let r = envoy.put_members_raw(Some(TEST_TOKEN), body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    // The standby was empty when these were pushed: all of them are to repair.
    let jobs: Vec<String> = (0..GROUPS).map(|i| format!("bulk_{i:04}")).collect();
    for job in &jobs {
        push(&active, job, 0.0);
    }

    // From the start of the repair, each group is pushed again through Envoy, in the order the
    // repair copies them, over and over: first pushes land among the repair's copies.
    let stop = AtomicBool::new(false);
    let last_acked = std::thread::scope(|s| {
        let pusher = s.spawn(|| {
            let mut acked: BTreeMap<String, f64> = BTreeMap::new();
            let mut value = 0.0;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                value += 1.0;
                for job in &jobs {
                    let url = format!("{}{}", envoy.proxy_url(), path(job));
                    let r = http_request("PUT", &url, &[], format!("{job}_value {value}\n").as_bytes());
                    if r.status < 300 {
                        acked.insert(job.clone(), value);
                    }
                }
            }
            acked
        });
        let r = reconcile(
            &consul,
            "reconcile_interval: 1s\n",
            list(&[&slot], &[], &[(&slot, &slot, Some(&standby.addr()))]),
        );
        r.wait_rounds(2.0);
        stop.store(true, Ordering::Relaxed);
        let acked = pusher.join().unwrap();
        // Two rounds after the last push repair what raced with it.
        r.wait_rounds(2.0);
        acked
    });
    assert_eq!(last_acked.len(), GROUPS, "every group took pushes through Envoy");
    let (on_active, on_standby) = (held(&active), held(&standby));
    let wrong: Vec<String> = jobs
        .iter()
        .filter(|j| {
            let want = Some(last_acked[*j]);
            on_active[&group(j)].value != want || on_standby.get(&group(j)).and_then(|h| h.value) != want
        })
        .map(|j| {
            format!(
                "{j}: last acknowledged {}, active {:?}, standby {:?}",
                last_acked[j],
                on_active[&group(j)].value,
                on_standby.get(&group(j)).map(|h| h.value)
            )
        })
        .collect();
    assert_eq!(
        envoy.stat("replication_failures_total"),
        0,
        "every push reached the standby through the filter: what differs is the repair's doing"
    );
    assert!(wrong.is_empty(), "{} groups differ: {wrong:#?}", wrong.len());
    assert!(on_active.keys().eq(on_standby.keys()));
}

#[test]
fn a_former_active_returning_as_the_standby_ends_holding_the_actives_groups() {
    let dir = TestDir::new("repair-former-active");
    let consul = Consul::start(&dir);
    let (port, persistence) = (free_port(), dir.join("former.db"));
    let mut former = Pushgateway::start_persistent(&dir, port, Some(&persistence));
    let (promoted, other) = (Pushgateway::start(&dir), Pushgateway::start(&dir));
    // The slot is named by the former active's address; it was promoted away from: the slot is
    // served by `promoted` now, with `former` as its standby.
    let slot = former.addr();
    let names = vec![slot.clone(), other.addr()];
    let (kept, newer, gone) = (
        job_owned_by(&names, &slot, "kept"),
        job_owned_by(&names, &slot, "newer"),
        job_owned_by(&names, &slot, "gone"),
    );
    // An older copy of the slot's group on the other slot's active.
    push(&other, &kept, 0.5);
    std::thread::sleep(Duration::from_millis(50));
    for job in [&kept, &newer, &gone] {
        push_both(&promoted, &former, job, 1.0);
    }
    former.proc.stop();
    std::thread::sleep(Duration::from_millis(1200));
    // After the promotion, with the former active down.
    push(&promoted, &newer, 2.0);
    delete(&promoted, &gone);
    let on_promoted = held(&promoted);

    let r = reconcile(
        &consul,
        "reconcile_interval: 1s\n",
        list(
            &[&slot, &other.addr()],
            &[],
            &[(&slot, &promoted.addr(), Some(&slot))],
        ),
    );
    wait_until(
        "the other slot's older copy goes",
        Duration::from_secs(20),
        || (!held(&other).contains_key(&group(&kept))).then_some(()),
    );
    let former = Pushgateway::start_persistent(&dir, port, Some(&persistence));
    let back = r.rounds();
    wait_until(
        "the former active is repaired",
        r.interval * 4 + Duration::from_secs(20),
        || {
            let f = held(&former);
            (f.keys().eq(on_promoted.keys()) && f.iter().all(|(g, h)| on_promoted[g].value == h.value))
                .then_some(())
        },
    );
    let took = r.rounds() - back;
    assert!(took <= 2.0, "repaired {took} rounds after it came back");
    assert_eq!(
        held(&promoted),
        on_promoted,
        "the active (served at another address than the slot's name) is never written"
    );
    r.wait_rounds(1.0);
    assert!(r.slot(&slot).unwrap().in_sync);
}

#[test]
fn a_late_stale_write_on_the_standby_is_replaced_once_and_the_copy_left_alone() {
    let dir = TestDir::new("repair-late-write");
    let consul = Consul::start(&dir);
    let (active, standby) = (Pushgateway::start(&dir), Pushgateway::start(&dir));
    push_both(&standby, &active, "late", 2.0);
    push_both(&standby, &active, "same", 2.0);
    // A write the standby applies late (a former active woken from a freeze): an older value,
    // stamped after the active's last push.
    std::thread::sleep(Duration::from_millis(1500));
    push(&standby, "late", 1.0);
    let late = held(&standby)[&group("late")].clone();
    let on_active = held(&active);
    assert!(late.push > on_active[&group("late")].push + 1.0, "{late:?}");

    let slot = active.addr();
    let r = reconcile(
        &consul,
        "reconcile_interval: 1s\n",
        list(&[&slot], &[], &[(&slot, &slot, Some(&standby.addr()))]),
    );
    let started = r.rounds();
    wait_until(
        "the standby holds the active's value again",
        Duration::from_secs(30),
        || (held(&standby)[&group("late")].value == Some(2.0)).then_some(()),
    );
    // Left alone for GRACE (3 s) after its stamp, as a write that may be on its way: at most the
    // rounds of that, and one more.
    let took = r.rounds() - started;
    assert!(took <= 6.0, "replaced {took} rounds after the reconciler started");
    assert_eq!(r.metric("consul_sync_repaired_groups_total"), 1.0);
    let same = held(&standby)[&group("same")].clone();
    // The copy is stamped at its own time, newer than the active's: it is known for the copy.
    r.wait_rounds(5.0);
    assert_eq!(
        r.metric("consul_sync_repaired_groups_total"),
        1.0,
        "the repair's own copy was copied again"
    );
    let s = held(&standby);
    assert_eq!(s[&group("late")].value, Some(2.0));
    assert_eq!(s[&group("same")], same, "the same push on both is never copied");
    assert_eq!(held(&active), on_active, "the active was written to");
    assert!(r.slot(&slot).unwrap().in_sync);
}
