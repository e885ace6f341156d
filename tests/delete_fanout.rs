//! A `DELETE` reaches every copy of its group: after a member-list change a group can have an old
//! copy on a pushgateway that no longer owns it (or one being drained); the filter deletes those
//! before the client gets its answer. Real Envoy (two workers), real pushgateways.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{expected_owner, send_on, stack, wait_stopped, Stack};
use std::io::BufReader;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use testkit::envoy::TEST_TOKEN;
use testkit::http_request;
use testkit::pushgateway::labels;

const CALLS: &str = "delete_fanout_calls_total";
const FAILURES: &str = "delete_fanout_failures_total";

/// The filter's bound on one fan-out call, plus room for a slow machine.
const FANOUT_BOUND: Duration = Duration::from_secs(6);

/// Puts a copy of `{job="<job>"}` on each of `on` (member addresses), straight to the pushgateway,
/// as the old owner and the new one would each hold one after a member-list change.
fn copies(s: &Stack, job: &str, on: &[&str]) {
    for addr in on {
        let pg = s.pgs.iter().find(|p| p.addr() == *addr).unwrap();
        assert_eq!(
            pg.push(&format!("/metrics/job/{job}"), &format!("{job} 1\n")),
            200
        );
    }
    let mut held = s.holders(&labels(&[("job", job)]));
    let mut want: Vec<String> = on.iter().map(|a| (*a).to_owned()).collect();
    held.sort();
    want.sort();
    assert_eq!(held, want);
}

/// A member that does not own `path` among `members`.
fn not_owner(members: &[String], path: &str) -> String {
    let owner = expected_owner(members, path);
    members.iter().find(|m| **m != owner).unwrap().clone()
}

/// `DELETE` on the redirect listener, then to the `Location`, as a client that follows 307 does.
/// Returns the holders seen between the two.
fn delete_following_redirect(s: &Stack, path: &str, owner: &str, job: &str) -> Vec<String> {
    let r = http_request("DELETE", &format!("{}{path}", s.envoy.redirect_url()), &[], b"");
    assert_eq!(r.status, 307, "{}", r.body);
    let location = r.header("location").unwrap().to_owned();
    assert_eq!(location, format!("http://{owner}{path}"));
    let between = s.holders(&labels(&[("job", job)]));
    assert_eq!(http_request("DELETE", &location, &[], b"").status, 202);
    between
}

#[test]
fn one_delete_removes_the_copy_on_a_former_owner_in_both_modes() {
    let s = stack("fanout-modes");
    let members = s.members();

    // Redirect mode: by the time the 307 arrives, only the owner's copy is left.
    let path = "/metrics/job/fanout_redirect";
    let owner = expected_owner(&members, path);
    let old = not_owner(&members, path);
    copies(&s, "fanout_redirect", &[&owner, &old]);
    let calls = s.envoy.stat(CALLS);
    let between = delete_following_redirect(&s, path, &owner, "fanout_redirect");
    assert_eq!(
        between,
        vec![owner.clone()],
        "the 307 came before the other copy was gone"
    );
    assert!(s.holders(&labels(&[("job", "fanout_redirect")])).is_empty());
    assert_eq!(s.envoy.stat(CALLS) - calls, 2, "one call per other member");

    // Proxy mode: one request, every copy gone when it is answered.
    let path = "/metrics/job/fanout_proxy";
    let owner = expected_owner(&members, path);
    let old = not_owner(&members, path);
    copies(&s, "fanout_proxy", &[&owner, &old]);
    let r = http_request("DELETE", &format!("{}{path}", s.envoy.proxy_url()), &[], b"");
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(s.holders(&labels(&[("job", "fanout_proxy")])).is_empty());
    assert_eq!(s.envoy.stat(CALLS) - calls, 4);
    assert_eq!(s.envoy.stat(FAILURES), 0);

    // The 307 sent after the fan-out keeps the connection open, also for a DELETE with a body
    // (answered once the body was read).
    let connections = s.envoy.envoy_stat("http.sharding_redirect.downstream_cx_total");
    let stream = TcpStream::connect(("127.0.0.1", s.envoy.ports.redirect)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut conn = BufReader::new(stream);
    let path = "/metrics/job/fanout_keepalive";
    let owner = expected_owner(&members, path);
    let old = not_owner(&members, path);
    for body in [&b""[..], b"ignored"] {
        copies(&s, "fanout_keepalive", &[&owner, &old]);
        let (status, headers) = send_on(&mut conn, "DELETE", path, body);
        assert_eq!(status, 307);
        assert!(!headers.iter().any(|(k, v)| k == "connection" && v == "close"));
        assert_eq!(
            s.holders(&labels(&[("job", "fanout_keepalive")])),
            vec![owner.clone()]
        );
        let pg = s.pgs.iter().find(|p| p.addr() == owner).unwrap();
        assert_eq!(
            http_request("DELETE", &format!("{}{path}", pg.url()), &[], b"").status,
            202
        );
    }
    assert_eq!(
        s.envoy.envoy_stat("http.sharding_redirect.downstream_cx_total") - connections,
        1,
        "both DELETEs on one connection"
    );

    // Pushes never fan out, on either listener.
    let calls = s.envoy.stat(CALLS);
    for (method, base) in [
        ("PUT", s.envoy.proxy_url()),
        ("POST", s.envoy.proxy_url()),
        ("PUT", s.envoy.redirect_url()),
        ("POST", s.envoy.redirect_url()),
    ] {
        let r = http_request(method, &format!("{base}/metrics/job/no_fanout"), &[], b"n 1\n");
        assert!(
            r.status == 200 || r.status == 307,
            "{method} {base}: {}",
            r.status
        );
    }
    assert_eq!(
        s.holders(&labels(&[("job", "no_fanout")])),
        vec![expected_owner(&members, "/metrics/job/no_fanout")]
    );
    assert_eq!(s.envoy.stat(CALLS), calls);

    // Under the names the README lists.
    let r = http_request(
        "GET",
        &format!("{}/stats/prometheus", s.envoy.admin_url()),
        &[],
        b"",
    );
    assert!(r
        .body
        .contains(&format!("dynamic_sharding_{CALLS}{{}} {calls}\n")));
    assert!(r.body.contains(&format!("dynamic_sharding_{FAILURES}{{}} 0\n")));
}

#[test]
fn a_copy_on_a_draining_pushgateway_is_deleted_too() {
    let s = stack("fanout-draining");
    let all = s.members();
    let path = "/metrics/job/fanout_draining";
    // The third pushgateway leaves the ring but still holds what was pushed to it.
    let draining = all[2].clone();
    let ring: Vec<String> = all[..2].to_vec();
    let body = serde_json::json!({"version": 2, "members": ring, "draining": [draining]}).to_string();
    let r = s.envoy.put_members_raw(Some(TEST_TOKEN), body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let owner = expected_owner(&ring, path);
    let calls = s.envoy.stat(CALLS);

    copies(&s, "fanout_draining", &[&owner, &draining]);
    let between = delete_following_redirect(&s, path, &owner, "fanout_draining");
    assert_eq!(between, vec![owner.clone()]);
    assert!(s.holders(&labels(&[("job", "fanout_draining")])).is_empty());

    copies(&s, "fanout_draining", &[&owner, &draining]);
    let r = http_request("DELETE", &format!("{}{path}", s.envoy.proxy_url()), &[], b"");
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(s.holders(&labels(&[("job", "fanout_draining")])).is_empty());
    // The other ring member and the draining one, twice.
    assert_eq!(s.envoy.stat(CALLS) - calls, 4);
    assert_eq!(s.envoy.stat(FAILURES), 0);
}

#[test]
fn a_dead_member_is_counted_and_does_not_hold_up_the_delete() {
    let mut s = stack("fanout-dead");
    let members = s.members();
    let path = "/metrics/job/fanout_dead";
    let owner = expected_owner(&members, path);
    let others: Vec<String> = members.iter().filter(|m| **m != owner).cloned().collect();
    let (dead, live) = (others[0].clone(), others[1].clone());
    let idx = s.pgs.iter().position(|p| p.addr() == dead).unwrap();
    s.pgs[idx].proc.kill();
    // The dead one is still in the member list (between two health checks).
    let live_pgs = |s: &Stack| -> Vec<String> {
        s.pgs
            .iter()
            .filter(|p| p.addr() != dead)
            .filter(|p| p.groups().contains(&labels(&[("job", "fanout_dead")])))
            .map(|p| p.addr())
            .collect()
    };

    for (mode, base) in [
        ("redirect", s.envoy.redirect_url()),
        ("proxy", s.envoy.proxy_url()),
    ] {
        for addr in [&owner, &live] {
            let pg = s.pgs.iter().find(|p| p.addr() == **addr).unwrap();
            assert_eq!(pg.push(path, "fanout_dead 1\n"), 200);
        }
        let failures = s.envoy.stat(FAILURES);
        let start = Instant::now();
        let r = http_request("DELETE", &format!("{base}{path}"), &[], b"");
        let took = start.elapsed();
        assert!(took < FANOUT_BOUND, "{mode}: the DELETE took {took:?}");
        if mode == "redirect" {
            assert_eq!(r.status, 307, "{}", r.body);
            assert_eq!(
                live_pgs(&s),
                vec![owner.clone()],
                "{mode}: the live copy survived"
            );
            let location = r.header("location").unwrap();
            assert_eq!(http_request("DELETE", location, &[], b"").status, 202);
        } else {
            assert_eq!(r.status, 202, "{}", r.body);
        }
        assert!(live_pgs(&s).is_empty(), "{mode}");
        assert_eq!(
            s.envoy.stat(FAILURES) - failures,
            1,
            "{mode}: the dead member's call"
        );
    }
    let log = s.envoy.proc.log();
    assert!(
        log.contains(&format!("DELETE fan-out to {dead} failed")),
        "the failure is logged with the member"
    );
}

/// A DELETE through `listener` (the data listener's URL) while a member that may hold a copy is
/// frozen: the filter waits for that call's 3 s timeout before the DELETE goes on (or the 307 is
/// sent), and no longer, whatever follows the headers.
fn a_frozen_member_holds_the_delete(
    name: &str,
    listener: fn(&Stack) -> String,
    headers: &[(&str, &str)],
    body: &[u8],
    status: u16,
) {
    let mut s = stack(name);
    let members = s.members();
    let path = "/metrics/job/fanout_frozen";
    let owner = expected_owner(&members, path);
    let frozen = not_owner(&members, path);
    copies(&s, "fanout_frozen", &[&owner]);
    let idx = s.pgs.iter().position(|p| p.addr() == frozen).unwrap();
    // Accepts connections (the kernel does) but never answers.
    s.pgs[idx].proc.freeze();
    wait_stopped(s.pgs[idx].proc.pid());
    let failures = s.envoy.stat(FAILURES);
    let calls = s.envoy.stat(CALLS);
    let start = Instant::now();
    let r = http_request("DELETE", &format!("{}{path}", listener(&s)), headers, body);
    let took = start.elapsed();
    let failed = s.envoy.stat(FAILURES) - failures;
    let called = s.envoy.stat(CALLS) - calls;
    s.pgs[idx].proc.thaw();
    assert_eq!(r.status, status, "{}", r.body);
    // The filter waited for the call's 3 s timeout, and no longer.
    assert!(
        took >= Duration::from_millis(2900) && took < FANOUT_BOUND,
        "the DELETE took {took:?} ({called} calls, {failed} failed); envoy log:\n{}",
        s.envoy.proc.log_tail(30)
    );
    assert_eq!(failed, 1);
    if status == 202 {
        assert!(s.holders(&labels(&[("job", "fanout_frozen")])).is_empty());
    }
}

#[test]
fn a_frozen_member_costs_the_delete_at_most_the_fanout_timeout() {
    a_frozen_member_holds_the_delete("fanout-frozen", |s| s.envoy.proxy_url(), &[], b"", 202);
}

/// A body (or a client that waits for `100 Continue`) must not let the DELETE past the fan-out:
/// the body arrives while the headers are held.
#[test]
fn a_delete_with_a_body_is_held_for_the_fanout_too() {
    a_frozen_member_holds_the_delete(
        "fanout-frozen-body",
        |s| s.envoy.proxy_url(),
        &[],
        b"ignored\n",
        202,
    );
    a_frozen_member_holds_the_delete(
        "fanout-frozen-expect",
        |s| s.envoy.redirect_url(),
        &[("expect", "100-continue")],
        b"ignored\n",
        307,
    );
}

#[test]
fn a_member_envoy_has_no_host_for_is_counted_and_the_filter_keeps_working() {
    let s = stack("fanout-nohost");
    let mut members = s.members();
    // ORIGINAL_DST takes an IP address only: for a DNS name Envoy's async client fails the call
    // before it starts.
    members.push("localhost:1".to_owned());
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    assert_eq!(s.envoy.put_members(2, &refs).status, 200);
    // The members' ports are random: take a job that a real pushgateway owns.
    let job = (0..100)
        .map(|i| format!("fanout_nohost_{i}"))
        .find(|job| expected_owner(&members, &format!("/metrics/job/{job}")) != "localhost:1")
        .unwrap();
    let path = &format!("/metrics/job/{job}");
    let owner = expected_owner(&members, path);
    let old = members
        .iter()
        .find(|m| **m != owner && *m != "localhost:1")
        .unwrap()
        .clone();
    for round in 0..3 {
        copies(&s, &job, &[&owner, &old]);
        let failures = s.envoy.stat(FAILURES);
        let between = delete_following_redirect(&s, path, &owner, &job);
        assert_eq!(between, vec![owner.clone()], "round {round}");
        assert_eq!(s.envoy.stat(FAILURES) - failures, 1, "round {round}");
    }
}
