//! `pushgateway.servers` against real Consul, Envoy and pushgateways: a DNS name becomes its
//! address (Envoy routes to addresses only), a name that does not resolve is refused at start, and
//! a pushgateway deregistered by hand (the Go original's scale-in) is registered again, without
//! leaving the list, with a warning that says what to do instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{serial, sorted, ConsulSync, SyncOptions};
use std::process::Command;
use std::time::Duration;
use testkit::envoy::{Envoy, EnvoyOptions};
use testkit::{http_request, wait_until, Consul, Pushgateway, TestDir};

#[test]
fn a_name_in_servers_becomes_its_address_in_envoy() {
    let _serial = serial();
    let dir = TestDir::new("servers-names");
    let pg = Pushgateway::start(&dir);
    let consul = Consul::start(&dir);
    let envoy = Envoy::start(&dir, EnvoyOptions::default());
    let mut options = SyncOptions::new(consul.addr(), vec![format!("localhost:{}", pg.port)]);
    options.control_urls = vec![envoy.control_url()];
    let sync = ConsulSync::start(&dir, options);
    wait_until("Envoy has the pushgateway", Duration::from_secs(20), || {
        (envoy.try_members().ok()?.1 == vec![pg.addr()]).then_some(())
    });
    // Proxy mode reaches it: Envoy's cluster routes to addresses only.
    let r = http_request(
        "PUT",
        &format!("{}/metrics/job/named", envoy.proxy_url()),
        &[],
        b"named_value 1\n",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(pg.groups().len(), 1);
    let ids: Vec<String> = consul.services("pushgateway").into_iter().map(|s| s.id).collect();
    assert_eq!(ids, [format!("127.0.0.1_{}", pg.port)]);
    assert!(
        sync.proc
            .log()
            .contains(&format!("localhost resolves to {}", pg.addr())),
        "{}",
        sync.proc.log_tail(20)
    );
}

#[test]
fn a_name_that_does_not_resolve_is_refused_at_start() {
    let dir = TestDir::new("servers-unresolved");
    let config = dir.write(
        "dynamic-sharding.yml",
        "pushgateway:\n  servers:\n    - 127.0.0.1:9091\n    - pg-2.invalid\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_consul-sync"))
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("pushgateway.servers[1] (line 4)") && err.contains("pg-2.invalid does not resolve"),
        "{err}"
    );
}

#[test]
fn a_pushgateway_deregistered_by_hand_is_registered_again_with_a_warning() {
    let _serial = serial();
    let dir = TestDir::new("servers-by-hand");
    let pgs: Vec<Pushgateway> = (0..2).map(|_| Pushgateway::start(&dir)).collect();
    let consul = Consul::start(&dir);
    let all = sorted(pgs.iter().map(Pushgateway::addr).collect());
    let mut options = SyncOptions::new(consul.addr(), all.clone());
    options.reconcile = "2s";
    let sync = ConsulSync::start(&dir, options);
    wait_until("both are listed", Duration::from_secs(20), || {
        (sync.targets() == Some(all.clone())).then_some(())
    });
    // The Go original's documented scale-in.
    let id = format!("127.0.0.1_{}", pgs[1].port);
    consul.request("PUT", &format!("/v1/agent/service/deregister/{id}"), b"");
    let mut lists = Vec::new();
    wait_until("it is registered again", Duration::from_secs(20), || {
        lists.push(sync.targets());
        consul.passing_ids("pushgateway").contains(&id).then_some(())
    });
    // Nor did it leave the list meanwhile (its groups would have moved twice).
    for _ in 0..20 {
        lists.push(sync.targets());
        std::thread::sleep(Duration::from_millis(100));
    }
    let lacking: Vec<_> = lists.iter().filter(|l| **l != Some(all.clone())).collect();
    assert!(lacking.is_empty(), "lists without it: {lacking:?}");
    let log = sync.proc.log();
    let line = log
        .lines()
        .find(|l| l.contains(" WARN ") && l.contains(&id))
        .unwrap_or_else(|| panic!("no warning names {id}:\n{log}"));
    assert!(
        line.contains("deregistered") && line.contains("drain it"),
        "{line}"
    );
}
