//! consul-sync against a real Consul and real pushgateways (no Envoy): registration, health,
//! Consul outages, shutdown, and the refusal of a bad configuration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{serial, sorted, ConsulSync, SyncOptions};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::{poll_for, wait_until, Consul, Pushgateway, TestDir};

fn three_pushgateways(dir: &TestDir) -> Vec<Pushgateway> {
    (0..3).map(|_| Pushgateway::start(dir)).collect()
}

fn addrs(pgs: &[Pushgateway]) -> Vec<String> {
    sorted(pgs.iter().map(Pushgateway::addr).collect())
}

#[test]
fn registers_the_pushgateways_passing_with_the_original_ids() {
    let _serial = serial();
    let dir = TestDir::new("registers");
    let pgs = three_pushgateways(&dir);
    let consul = Consul::start(&dir);
    let sync = ConsulSync::start(&dir, SyncOptions::new(consul.addr(), addrs(&pgs)));

    let want_ids: Vec<String> = sorted(pgs.iter().map(|p| format!("127.0.0.1_{}", p.port)).collect());
    wait_until("Consul shows the three passing", Duration::from_secs(10), || {
        (consul.passing_ids("pushgateway") == want_ids).then_some(())
    });
    let services = consul.services("pushgateway");
    for s in &services {
        assert_eq!(s.address, "127.0.0.1");
        assert_eq!(s.id, format!("127.0.0.1_{}", s.port));
        assert_eq!(s.tags, ["dynamic-sharding"]);
        assert!(
            s.meta
                .contains(&("member".to_owned(), format!("127.0.0.1:{}", s.port))),
            "{s:?}"
        );
        assert!(
            s.meta
                .contains(&("managed_by".to_owned(), "consul-sync".to_owned())),
            "{s:?}"
        );
    }
    wait_until("the targets are the three", Duration::from_secs(5), || {
        (sync.targets() == Some(addrs(&pgs))).then_some(())
    });
    // No Envoy configured: ready once Consul was read.
    assert!(sync.ready());
    assert_eq!(sync.metric("consul_sync_members"), 3.0);
    assert_eq!(sync.metric("consul_sync_consul_up"), 1.0);
    assert!(sync.metric("consul_sync_consul_requests_total{kind=\"register\"}") >= 3.0);
    assert!(sync.metric("consul_sync_last_consul_sync_timestamp_seconds") > 1.6e9);
    let log = sync.proc.log();
    assert!(
        log.contains("member list changed") && log.contains("0 -> 3 members"),
        "{log}"
    );
}

#[test]
fn a_killed_pushgateway_leaves_the_targets_within_one_check_interval_plus_1s() {
    let _serial = serial();
    let dir = TestDir::new("killed");
    let mut pgs = three_pushgateways(&dir);
    let consul = Consul::start(&dir);
    let sync = ConsulSync::start(&dir, SyncOptions::new(consul.addr(), addrs(&pgs)));
    wait_until("the targets are the three", Duration::from_secs(10), || {
        (sync.targets() == Some(addrs(&pgs))).then_some(())
    });

    let mut victim = pgs.remove(1);
    let killed_at = Instant::now();
    victim.proc.kill();
    let live = addrs(&pgs);
    wait_until(
        "the killed pushgateway leaves the targets",
        Duration::from_secs(10),
        || (sync.targets() == Some(live.clone())).then_some(()),
    );
    let took = killed_at.elapsed();
    eprintln!("a killed pushgateway left the targets after {took:?}");
    // Check interval 1 s, plus 1 s.
    assert!(took <= Duration::from_secs(2), "took {took:?}");
    assert_eq!(sync.metric("consul_sync_members"), 2.0);
    assert_eq!(sync.metric("consul_sync_member_changes_total"), 1.0);
    assert!(sync.proc.log().contains(&format!("removed [{}]", victim.addr())));
}

#[test]
fn consul_down_for_10s_keeps_the_last_list_and_sync_catches_up_when_it_returns() {
    let _serial = serial();
    let dir = TestDir::new("consul-down");
    let mut pgs = three_pushgateways(&dir);
    let mut consul = Consul::start(&dir);
    let sync = ConsulSync::start(&dir, SyncOptions::new(consul.addr(), addrs(&pgs)));
    let all = addrs(&pgs);
    wait_until("the targets are the three", Duration::from_secs(10), || {
        (sync.targets() == Some(all.clone())).then_some(())
    });

    let ports = consul.ports;
    consul.stop();
    // A pushgateway dies while Consul is away: nobody can know until Consul is back.
    let victim = pgs.remove(0);
    drop(victim);
    let changed = poll_for(Duration::from_secs(10), || {
        (sync.targets() != Some(all.clone())).then_some(())
    });
    assert!(
        changed.is_none(),
        "the list changed while Consul was down: {:?}",
        sync.targets()
    );
    assert_eq!(sync.metric("consul_sync_consul_up"), 0.0);
    let errors = sync.metric("consul_sync_consul_errors_total{kind=\"health\"}");
    assert!(errors >= 2.0, "errors {errors}");
    // Backoff, not a spin: at most about one try per 100 ms at the very start, then slower.
    assert!(errors <= 30.0, "errors {errors} in 10 s");

    let consul = Consul::start_on(&dir, ports);
    let live = addrs(&pgs);
    wait_until(
        "consul-sync catches up after Consul returns",
        Duration::from_secs(20),
        || (sync.targets() == Some(live.clone())).then_some(()),
    );
    assert_eq!(sync.metric("consul_sync_consul_up"), 1.0);
    assert!(sync.proc.log().contains("answers again"));
    drop(consul);
}

#[test]
fn sigterm_stops_it_within_2s_and_leaves_the_registrations() {
    let _serial = serial();
    let dir = TestDir::new("sigterm");
    let pgs = three_pushgateways(&dir);
    let consul = Consul::start(&dir);
    let mut sync = ConsulSync::start(&dir, SyncOptions::new(consul.addr(), addrs(&pgs)));
    wait_until("the targets are the three", Duration::from_secs(10), || {
        (sync.targets() == Some(addrs(&pgs))).then_some(())
    });
    let (took, clean) = sync.stop_timed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(clean, "exit status not 0:\n{}", sync.proc.log_tail(20));
    assert_eq!(consul.passing_ids("pushgateway").len(), 3);

    // Also while Consul does not answer (a blocking query or a backoff in progress).
    let mut consul = consul;
    let mut sync = ConsulSync::start(&dir, SyncOptions::new(consul.addr(), addrs(&pgs)));
    consul.proc.freeze();
    std::thread::sleep(Duration::from_millis(500));
    let (took, clean) = sync.stop_timed();
    consul.proc.thaw();
    assert!(took < Duration::from_secs(2) && clean, "took {took:?}");
}

#[test]
fn nothing_passing_gives_the_empty_list() {
    let _serial = serial();
    let dir = TestDir::new("none-passing");
    let pgs = three_pushgateways(&dir);
    let consul = Consul::start(&dir);
    let sync = ConsulSync::start(&dir, SyncOptions::new(consul.addr(), addrs(&pgs)));
    wait_until("the targets are the three", Duration::from_secs(10), || {
        (sync.targets() == Some(addrs(&pgs))).then_some(())
    });
    drop(pgs);
    wait_until("the targets are empty", Duration::from_secs(10), || {
        (sync.targets() == Some(vec![])).then_some(())
    });
    assert_eq!(sync.metric("consul_sync_members"), 0.0);
}

#[test]
fn a_bad_configuration_is_refused_naming_file_key_and_line() {
    let dir = TestDir::new("bad-config");
    let path = dir.write(
        "bad.yml",
        "consul_server:\n  addr: localhost:8500\ncheck:\n  interval: fast\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_consul-sync"))
        .arg(format!("--config.file={}", path.display()))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for needle in [
        path.display().to_string().as_str(),
        "check.interval (line 4)",
        "invalid duration \"fast\"",
        "e.g. 500ms, 5s",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in {text}");
    }
    let missing = Command::new(env!("CARGO_BIN_EXE_consul-sync"))
        .arg(format!("--config.file={}", dir.join("nope.yml").display()))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn a_consul_that_lost_its_state_gets_the_registrations_again_and_the_list_never_empties() {
    let _serial = serial();
    let dir = TestDir::new("consul-reset");
    let pgs = three_pushgateways(&dir);
    let mut consul = Consul::start(&dir);
    let sync = ConsulSync::start(&dir, SyncOptions::new(consul.addr(), addrs(&pgs)));
    let all = addrs(&pgs);
    wait_until("the targets are the three", Duration::from_secs(10), || {
        (sync.targets() == Some(all.clone())).then_some(())
    });
    // Raise Consul's index well above what a fresh agent starts with.
    for i in 0..30 {
        let r = testkit::http_request("PUT", &format!("{}/v1/kv/bump{i}", consul.url()), &[], b"x");
        assert_eq!(r.status, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    let ports = consul.ports;
    consul.stop();
    std::fs::remove_dir_all(dir.join(format!("consul-data-{}", ports.http))).unwrap();
    let consul = Consul::start_on(&dir, ports);
    let want_ids: Vec<String> = sorted(pgs.iter().map(|p| format!("127.0.0.1_{}", p.port)).collect());
    let start = Instant::now();
    // Until the registrations are back and passing, the targets never change.
    while consul.passing_ids("pushgateway") != want_ids {
        assert_eq!(
            sync.targets(),
            Some(all.clone()),
            "the list changed while Consul had no registrations"
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not registered again:\n{}",
            sync.proc.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stable = poll_for(Duration::from_secs(3), || {
        (sync.targets() != Some(all.clone())).then_some(())
    });
    assert!(stable.is_none(), "targets changed to {:?}", sync.targets());
    assert!(
        sync.proc.log().contains("registering the pushgateways again"),
        "{}",
        sync.proc.log_tail(20)
    );
}
