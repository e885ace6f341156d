//! `POST /-/reload` against the real binary: it needs the reload token, refuses what a browser
//! marks as another site's request, and an unchanged file is a no-op (no reconcile round, no
//! registration), while a changed one is taken. A file refused at a reload leaves the running
//! configuration in place.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{serial, ConsulSync, SyncOptions};
use std::time::Duration;
use testkit::{http_request, wait_until, Consul, Pushgateway, TestDir};

#[test]
fn a_reload_needs_the_token_and_an_unchanged_one_does_nothing() {
    let _serial = serial();
    let dir = TestDir::new("reload");
    let pgs: Vec<Pushgateway> = (0..2).map(|_| Pushgateway::start(&dir)).collect();
    let consul = Consul::start(&dir);
    let options = SyncOptions::new(consul.addr(), vec![pgs[0].addr()]);
    let mut sync = ConsulSync::start(&dir, options.clone());
    wait_until("the first pushgateway is listed", Duration::from_secs(20), || {
        (sync.targets() == Some(vec![pgs[0].addr()])).then_some(())
    });
    let url = sync.url("/-/reload");
    let bearer = format!("Bearer {}", options.reload_token);
    let post = |headers: &[(&str, &str)]| http_request("POST", &url, headers, b"");

    // Anyone on the host (or a page in a browser) without the token.
    let r = post(&[]);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(post(&[("authorization", "Bearer guess")]).status, 401);
    for foreign in [
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let r = post(&[("authorization", &bearer), foreign]);
        assert_eq!(r.status, 403, "{foreign:?}: {}", r.body);
        assert!(r.body.contains("another site"), "{}", r.body);
    }

    // The file as it is: nothing happens (no round, no registration).
    let rounds = |s: &ConsulSync| s.metric("consul_sync_reconcile_duration_seconds_count");
    let registrations = |s: &ConsulSync| s.metric("consul_sync_consul_requests_total{kind=\"register\"}");
    wait_until("the first round is done", Duration::from_secs(10), || {
        (rounds(&sync) >= 1.0).then_some(())
    });
    let (rounds_before, registrations_before) = (rounds(&sync), registrations(&sync));
    let r = post(&[("authorization", &bearer)]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("unchanged"), "{}", r.body);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rounds(&sync), rounds_before, "an unchanged reload ran a round");
    assert_eq!(
        registrations(&sync),
        registrations_before,
        "an unchanged reload asked Consul"
    );
    assert_eq!(sync.metric("consul_sync_config_last_reload_successful"), 1.0);

    // A change is taken.
    let mut changed = options.clone();
    changed.servers.push(pgs[1].addr());
    let (status, body) = sync.reload(&dir, changed);
    assert_eq!(status, 200, "{body}");
    let mut both: Vec<String> = pgs.iter().map(Pushgateway::addr).collect();
    both.sort();
    wait_until(
        "the second pushgateway is listed",
        Duration::from_secs(20),
        || (sync.targets() == Some(both.clone())).then_some(()),
    );
    assert!(rounds(&sync) > rounds_before);
}

#[test]
fn a_reload_refused_for_the_standbys_service_name_keeps_the_running_configuration() {
    let dir = TestDir::new("reload-refused");
    let pgs: Vec<Pushgateway> = (0..2).map(|_| Pushgateway::start(&dir)).collect();
    let consul = Consul::start(&dir);
    let mut options = SyncOptions::new(consul.addr(), vec![pgs[0].addr()]);
    // 56 characters: it fits, but "<it>-standby" (64) does not.
    const SERVICE: &str = "pushgateways-of-the-metrics-platform-in-the-eu-west-zone";
    assert_eq!(SERVICE.len(), 56);
    options.service = SERVICE;
    let mut sync = ConsulSync::start(&dir, options.clone());
    wait_until("the pushgateway is listed", Duration::from_secs(20), || {
        (sync.targets() == Some(vec![pgs[0].addr()])).then_some(())
    });

    let mut changed = options.clone();
    changed.standbys = vec![(pgs[0].addr(), pgs[1].addr())];
    let (status, body) = sync.reload(&dir, changed);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("register_service_name")
            && body.contains(&format!(
                "\"{SERVICE}-standby\", 64 characters, above the limit of 63"
            )),
        "{body}"
    );
    assert_eq!(sync.metric("consul_sync_config_last_reload_successful"), 0.0);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sync.targets(), Some(vec![pgs[0].addr()]));
    assert!(
        consul.services(&format!("{SERVICE}-standby")).is_empty(),
        "nothing is registered under the name that does not fit"
    );
    assert_eq!(consul.passing_ids(SERVICE), vec![pgs[0].addr().replace(':', "_")]);
}
