//! A `DELETE` through Envoy that cannot reach a pushgateway leaves a tombstone; consul-sync keeps
//! it in Consul and deletes the group on that pushgateway once it is back, unless its copy there
//! was pushed after the `DELETE`. Real Consul, Envoy, pushgateways (one with a persistence file)
//! and consul-sync.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{sorted, ConsulSync, Stack};
use dynamic_sharding::grouping_key::GroupingKey;
use dynamic_sharding::members::MemberList;
use dynamic_sharding::ring::Ring;
use std::time::Duration;
use testkit::envoy::{Envoy, EnvoyOptions, TEST_TOKEN};
use testkit::{free_port, http_request, wait_until, Consul, Pushgateway, TestDir};

/// Three pushgateways, the third keeping its groups in a file; Consul; Envoy; one consul-sync
/// that reconciles every second, whose list Envoy has taken.
fn stack(name: &str, tombstone_ttl: &'static str) -> Stack {
    stack_with(name, tombstone_ttl, |_| {})
}

/// [`stack`], calling `before_sync` once Consul runs and before consul-sync starts.
fn stack_with(name: &str, tombstone_ttl: &'static str, before_sync: impl FnOnce(&Consul)) -> Stack {
    let dir = TestDir::new(name);
    let store = dir.join("pushgateway-3.store");
    let pgs = vec![
        Pushgateway::start(&dir),
        Pushgateway::start(&dir),
        Pushgateway::start_persistent(&dir, free_port(), Some(&store)),
    ];
    let consul = Consul::start(&dir);
    let envoy = Envoy::start(
        &dir,
        EnvoyOptions {
            members: pgs.iter().map(Pushgateway::addr).collect(),
            ..Default::default()
        },
    );
    let mut s = Stack {
        syncs: Vec::new(),
        envoy,
        consul,
        pgs,
        dir,
    };
    before_sync(&s.consul);
    let mut options = s.options();
    options.reconcile = "1s";
    options.tombstone_ttl = tombstone_ttl;
    options.extra_yaml = "lease: {ttl: 10s, lock_delay: 1s}\n".to_owned();
    s.syncs.push(ConsulSync::start(&s.dir, options));
    let all = s.all();
    wait_until("Envoy has consul-sync's list", Duration::from_secs(20), || {
        let (version, members) = s.envoy.try_members().ok()?;
        (version > 0 && sorted(members) == all).then_some(())
    });
    s
}

/// A push path of `tag` whose owner among `members` is not `not`.
fn owned_elsewhere(members: &[String], not: &str, tag: &str) -> String {
    let list = MemberList::new(0, members).unwrap();
    let ring = Ring::new(&list.members, 500);
    (0..100)
        .map(|i| format!("/metrics/job/{tag}/instance/i{i}"))
        .find(|p| {
            ring.owner(GroupingKey::from_path(p).unwrap().hash())
                .unwrap()
                .as_str()
                != not
        })
        .unwrap()
}

/// The tombstones an Envoy still holds.
fn in_envoy(s: &Stack) -> usize {
    let auth = format!("Bearer {TEST_TOKEN}");
    let url = format!("{}/-/sharding/tombstones", s.envoy.control_url());
    let r = http_request("GET", &url, &[("authorization", &auth)], b"");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["tombstones"].as_array().unwrap().len()
}

/// Kills the third pushgateway and `DELETE`s `paths` through Envoy while it is down: each is
/// answered as usual, and their tombstones end up in Consul.
fn delete_while_down(s: &mut Stack, paths: &[&str]) {
    s.pgs[2].proc.kill();
    for path in paths {
        let r = http_request("DELETE", &format!("{}{path}", s.envoy.proxy_url()), &[], b"");
        assert_eq!(r.status, 202, "{path}: {}", r.body);
    }
    let sync = &s.syncs[0];
    wait_until(
        "consul-sync keeps the tombstones",
        Duration::from_secs(20),
        || (sync.metric("consul_sync_tombstones") == paths.len() as f64 && in_envoy(s) == 0).then_some(()),
    );
}

fn group(path: &str) -> std::collections::BTreeMap<String, String> {
    let key = GroupingKey::from_path(path).unwrap();
    key.labels().iter().cloned().collect()
}

#[test]
fn a_copy_on_a_pushgateway_that_was_down_during_the_delete_goes_when_it_is_back() {
    let mut s = stack("tombstone-back", "72h");
    let back = s.pgs[2].addr();
    let all = s.all();
    // Copies the third pushgateway holds without owning their groups, as after a member change.
    let old = owned_elsewhere(&all, &back, "tomb_old");
    let renewed = owned_elsewhere(&all, &back, "tomb_renewed");
    for path in [&old, &renewed] {
        assert_eq!(s.pgs[2].push(path, "tomb 1\n"), 200);
    }
    // In its file (written every second), and pushed well before the DELETE by any clock.
    std::thread::sleep(Duration::from_millis(2_500));
    let deleted = std::time::Instant::now();
    delete_while_down(&mut s, &[&old, &renewed]);

    // Back with its file, while consul-sync is frozen: the copies are back too.
    s.syncs[0].proc.freeze();
    let port = s.pgs[2].port;
    s.pgs[2] = Pushgateway::start_persistent(&s.dir, port, Some(&s.dir.join("pushgateway-3.store")));
    let held = s.pgs[2].groups();
    assert!(
        held.contains(&group(&old)) && held.contains(&group(&renewed)),
        "{held:?}"
    );
    // One group is pushed there again, well after the DELETE by any clock: that copy stays.
    std::thread::sleep(Duration::from_millis(2_500).saturating_sub(deleted.elapsed()));
    assert_eq!(s.pgs[2].push(&renewed, "tomb 2\n"), 200);
    s.syncs[0].proc.thaw();

    let sync = &s.syncs[0];
    wait_until("the old copy is deleted", Duration::from_secs(30), || {
        (!s.pgs[2].groups().contains(&group(&old))).then_some(())
    });
    wait_until("the tombstones are done", Duration::from_secs(10), || {
        (sync.metric("consul_sync_tombstones") == 0.0).then_some(())
    });
    assert_eq!(
        s.pgs[2].metric_value(&group(&renewed), "tomb"),
        Some(2.0),
        "the copy pushed after the DELETE stays"
    );
    assert_eq!(
        sync.metric("consul_sync_tombstones_closed_total{result=\"deleted\"}"),
        1.0
    );
    assert_eq!(
        sync.metric("consul_sync_tombstones_closed_total{result=\"newer\"}"),
        1.0
    );
    assert_eq!(sync.metric("consul_sync_tombstones_collected_total"), 2.0);
    let log = sync.proc.log();
    assert!(
        log.contains(&format!(
            "applied the tombstone of {} on pushgateway {back}",
            GroupingKey::from_path(&old).unwrap().to_path()
        )),
        "{}",
        sync.proc.log_tail(30)
    );
    // Nobody else holds either group: the DELETEs reached the other two.
    for pg in &s.pgs[..2] {
        let held = pg.groups();
        assert!(
            !held.contains(&group(&old)) && !held.contains(&group(&renewed)),
            "{held:?}"
        );
    }
}

#[test]
fn a_tombstone_whose_pushgateway_stays_away_expires_logged_and_counted() {
    let mut s = stack("tombstone-expired", "4s");
    let all = s.all();
    let path = owned_elsewhere(&all, &s.pgs[2].addr(), "tomb_expired");
    delete_while_down(&mut s, &[&path]);
    let sync = &s.syncs[0];
    wait_until("the tombstone expires", Duration::from_secs(20), || {
        (sync.metric("consul_sync_tombstones") == 0.0).then_some(())
    });
    assert_eq!(
        sync.metric("consul_sync_tombstones_closed_total{result=\"expired\"}"),
        1.0
    );
    let log = sync.proc.log();
    assert!(
        log.contains("expired (tombstone_ttl 4s) before pushgateway") && log.contains(&s.pgs[2].addr()),
        "{}",
        sync.proc.log_tail(30)
    );
}

/// The lease's key, held by a session of the test's own: consul-sync is a follower.
const LEASE_KEY: &str = "dynamic-sharding/pushgateway/lease";

#[test]
fn a_consul_sync_without_the_lease_leaves_the_tombstones_in_envoy() {
    let session = std::cell::RefCell::new(String::new());
    let mut s = stack_with("tombstone-follower", "72h", |consul| {
        let r = consul.request(
            "PUT",
            "/v1/session/create",
            br#"{"Name": "other", "LockDelay": "1s"}"#,
        );
        let id = r.json()["ID"].as_str().unwrap().to_owned();
        let r = consul.request(
            "PUT",
            &format!("/v1/kv/{LEASE_KEY}?acquire={id}"),
            b"another consul-sync",
        );
        assert_eq!(r.body.trim(), "true");
        *session.borrow_mut() = id;
    });
    let all = s.all();
    let path = owned_elsewhere(&all, &s.pgs[2].addr(), "tomb_follower");
    s.pgs[2].proc.kill();
    let r = http_request("DELETE", &format!("{}{path}", s.envoy.proxy_url()), &[], b"");
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(in_envoy(&s), 1);
    // Several rounds as a follower: nothing taken from Envoy, nothing written to Consul.
    let sync = &s.syncs[0];
    let rounds = || sync.metric("consul_sync_reconcile_duration_seconds_count");
    let start = rounds();
    wait_until("three rounds", Duration::from_secs(30), || {
        (rounds() >= start + 3.0).then_some(())
    });
    assert_eq!(sync.metric("consul_sync_leader"), 0.0);
    assert_eq!(
        in_envoy(&s),
        1,
        "a follower acknowledged a tombstone it did not store"
    );
    let keys = s
        .consul
        .try_request("GET", "/v1/kv/dynamic-sharding/pushgateway/tombstones/?keys", b"")
        .unwrap();
    assert_eq!(keys.status, 404, "a follower wrote tombstones: {}", keys.body);
    assert_eq!(sync.metric("consul_sync_tombstones_collected_total"), 0.0);
    // The other's session ends: after the lock delay this one holds the lease and takes them.
    let id = session.borrow().clone();
    s.consul.request("PUT", &format!("/v1/session/destroy/{id}"), b"");
    wait_until(
        "the new holder keeps the tombstone",
        Duration::from_secs(30),
        || (sync.metric("consul_sync_tombstones") == 1.0 && in_envoy(&s) == 0).then_some(()),
    );
    assert_eq!(sync.metric("consul_sync_leader"), 1.0);
}
