//! A `DELETE` reaches every copy of its group: after a member-list change a group can have an old
//! copy on a pushgateway that no longer owns it (or one being drained); the filter deletes those
//! before the client gets its answer. Real Envoy (two workers), real pushgateways.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{expected_owner, rss_kib, send_on, stack, wait_stopped, Stack};
use std::io::BufReader;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use testkit::envoy::TEST_TOKEN;
use testkit::pushgateway::labels;
use testkit::{http_request, wait_until};

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

/// Freezes the pushgateway `addr` (it accepts connections, the kernel does, but never answers);
/// returns its index.
fn freeze(s: &mut Stack, addr: &str) -> usize {
    let idx = s.pgs.iter().position(|p| p.addr() == addr).unwrap();
    s.pgs[idx].proc.freeze();
    wait_stopped(s.pgs[idx].proc.pid());
    idx
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

    // Under the names docs/reference.md lists.
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
    let idx = freeze(&mut s, &frozen);
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

// ---- tombstones: a DELETE that did not reach every copy ----

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap()
}

/// `GET /-/sharding/tombstones` with the token.
fn tombstones(s: &Stack) -> serde_json::Value {
    let auth = format!("Bearer {TEST_TOKEN}");
    let url = format!("{}/-/sharding/tombstones", s.envoy.control_url());
    let r = http_request("GET", &url, &[("authorization", &auth)], b"");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

#[test]
fn a_delete_that_misses_a_pushgateway_leaves_a_tombstone_that_consul_sync_collects() {
    let mut s = stack("tombstone-dead");
    let members = s.members();
    // Spelled otherwise than the canonical path the tombstone names.
    let path = "/metrics/job/tombstone_dead/zone/eu/instance@base64/YQ";
    let owner = expected_owner(&members, path);
    let dead = not_owner(&members, path);
    let idx = s.pgs.iter().position(|p| p.addr() == dead).unwrap();
    s.pgs[idx].proc.kill();

    let before = unix_millis();
    let r = http_request("DELETE", &format!("{}{path}", s.envoy.redirect_url()), &[], b"");
    let after = unix_millis();
    assert_eq!(r.status, 307, "the client gets its usual answer: {}", r.body);
    assert_eq!(
        r.header("location"),
        Some(format!("http://{owner}{path}").as_str())
    );
    let t = tombstones(&s);
    let list = t["tombstones"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{t}");
    assert_eq!(list[0]["group"], "/metrics/job/tombstone_dead/instance/a/zone/eu");
    assert_eq!(list[0]["pushgateways"], serde_json::json!([dead]));
    let at = list[0]["at_ms"].as_u64().unwrap();
    assert!((before..=after).contains(&at), "{before} <= {at} <= {after}");
    let now = t["now_ms"].as_u64().unwrap();
    assert!(now >= after && now <= unix_millis(), "Envoy's clock: {now}");
    assert_eq!(t["more"], false);
    assert_eq!(s.envoy.stat("tombstones"), 1);

    // The same group through the proxy listener: one tombstone, the later time.
    let r = http_request("DELETE", &format!("{}{path}", s.envoy.proxy_url()), &[], b"");
    assert_eq!(r.status, 202, "{}", r.body);
    let t = tombstones(&s);
    let list = t["tombstones"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{t}");
    assert!(list[0]["at_ms"].as_u64().unwrap() >= at);
    assert_eq!(s.envoy.stat("tombstones_recorded_total"), 2);

    // Only with the token; an acknowledgement forgets it.
    let url = |p: &str| format!("{}/-/sharding/tombstones{p}", s.envoy.control_url());
    assert_eq!(http_request("GET", &url(""), &[], b"").status, 401);
    let auth = format!("Bearer {TEST_TOKEN}");
    let ack = serde_json::json!({"ids": [list[0]["id"]]}).to_string();
    let r = http_request("POST", &url("/ack"), &[("authorization", &auth)], ack.as_bytes());
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"forgotten":1,"held":0}"#));
    assert_eq!(tombstones(&s)["tombstones"], serde_json::json!([]));
    assert_eq!(s.envoy.stat("tombstones"), 0);
    assert_eq!(s.envoy.stat("tombstones_acknowledged_total"), 1);
    let log = s.envoy.proc.log();
    assert!(
        log.contains(&format!("DELETE fan-out to {dead} failed"))
            && log.contains("a tombstone keeps the DELETE"),
        "{}",
        s.envoy.proc.log_tail(20)
    );
}

#[test]
fn an_absent_pushgateway_gets_a_tombstone_and_no_call() {
    let s = stack("tombstone-absent");
    let all = s.members();
    let path = "/metrics/job/tombstone_absent";
    let (ring, absent) = (all[..2].to_vec(), all[2].clone());
    let body = serde_json::json!({"version": 2, "members": ring, "absent": [absent]}).to_string();
    let r = s.envoy.put_members_raw(Some(TEST_TOKEN), body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let owner = expected_owner(&ring, path);
    copies(&s, "tombstone_absent", &[&owner, &absent]);
    let calls = s.envoy.stat(CALLS);
    let r = http_request("DELETE", &format!("{}{path}", s.envoy.proxy_url()), &[], b"");
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        s.envoy.stat(CALLS) - calls,
        1,
        "only the other ring member is called"
    );
    assert_eq!(
        s.holders(&labels(&[("job", "tombstone_absent")])),
        vec![absent.clone()],
        "the absent one was not reached"
    );
    let t = tombstones(&s);
    assert_eq!(t["tombstones"][0]["group"], "/metrics/job/tombstone_absent");
    assert_eq!(t["tombstones"][0]["pushgateways"], serde_json::json!([absent]));
}

#[test]
fn a_full_tombstone_list_refuses_a_delete_before_anything_is_deleted() {
    let s = stack_with("tombstone-full", 2, r#""max_tombstones": 20"#);
    let all = s.members();
    let (ring, absent) = (all[..2].to_vec(), all[2].clone());
    let body = serde_json::json!({"version": 2, "members": ring, "absent": [absent]}).to_string();
    assert_eq!(
        s.envoy.put_members_raw(Some(TEST_TOKEN), body.as_bytes()).status,
        200
    );
    // 20 groups, each DELETEd once with a pushgateway absent.
    let mut conn = BufReader::new(TcpStream::connect(("127.0.0.1", s.envoy.ports.redirect)).unwrap());
    conn.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for i in 0..20 {
        let (status, _) = send_on(&mut conn, "DELETE", &format!("/metrics/job/full_{i}"), b"");
        assert_eq!(status, 307, "DELETE {i}");
    }
    assert_eq!(s.envoy.stat("tombstones"), 20);
    let path = "/metrics/job/tombstone_full";
    let owner = expected_owner(&ring, path);
    let other = ring.iter().find(|m| **m != owner).unwrap().clone();
    copies(&s, "tombstone_full", &[&owner, &other]);
    let calls = s.envoy.stat(CALLS);
    for base in [s.envoy.redirect_url(), s.envoy.proxy_url()] {
        let r = http_request("DELETE", &format!("{base}{path}"), &[], b"");
        assert_eq!(r.status, 503, "{base}: {}", r.body);
        assert!(
            r.body.contains("max_tombstones 20") && r.body.contains("nothing was deleted"),
            "{}",
            r.body
        );
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(s.envoy.stat(CALLS), calls, "no call was made");
    let mut held = s.holders(&labels(&[("job", "tombstone_full")]));
    held.sort();
    let mut both = vec![owner, other];
    both.sort();
    assert_eq!(held, both, "nothing was deleted");
    assert_eq!(s.envoy.stat("tombstones_full_total"), 2);
    // Pushes are not held up.
    let r = http_request(
        "PUT",
        &format!("{}{path}", s.envoy.proxy_url()),
        &[],
        b"tombstone_full 2\n",
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The shipped `max_delete_fanouts`.
const MAX_FANOUTS: usize = 64;

/// The three pushgateways and an Envoy with `concurrency` workers and more plugin `settings`.
fn stack_with(name: &str, concurrency: u32, settings: &str) -> Stack {
    let dir = testkit::TestDir::new(name);
    let pgs: Vec<testkit::Pushgateway> = (0..3).map(|_| testkit::Pushgateway::start(&dir)).collect();
    let envoy = testkit::envoy::Envoy::start(
        &dir,
        testkit::envoy::EnvoyOptions {
            members: pgs.iter().map(|p| p.addr()).collect(),
            concurrency,
            plugin_settings: settings.to_owned(),
            ..Default::default()
        },
    );
    Stack { dir, pgs, envoy }
}

/// The three pushgateways and an Envoy with one worker (the bound is per worker).
fn one_worker_stack(name: &str) -> Stack {
    stack_with(name, 1, "")
}

#[test]
fn more_delete_fanouts_than_the_bound_are_refused_with_retry_after() {
    let mut s = one_worker_stack("fanout-bound");
    let members = s.members();
    let path = "/metrics/job/fanout_bound";
    let frozen = not_owner(&members, path);
    let idx = freeze(&mut s, &frozen);
    let url = format!("{}{path}", s.envoy.proxy_url());
    let calls = s.envoy.stat(CALLS);
    let waiting: Vec<_> = (0..MAX_FANOUTS)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || http_request("DELETE", &url, &[], b"").status)
        })
        .collect();
    // Every one of them is waiting for the frozen pushgateway.
    wait_until("the DELETEs fan out", Duration::from_secs(5), || {
        (s.envoy.stat(CALLS) - calls >= 2 * MAX_FANOUTS as u64).then_some(())
    });
    for base in [s.envoy.proxy_url(), s.envoy.redirect_url()] {
        let r = http_request("DELETE", &format!("{base}{path}"), &[], b"");
        assert_eq!(r.status, 503, "{base}: {}", r.body);
        assert_eq!(r.header("retry-after"), Some("3"));
        assert!(
            r.body.contains("max_delete_fanouts") && r.body.contains("nothing was deleted"),
            "{}",
            r.body
        );
    }
    assert_eq!(
        s.envoy.stat(CALLS) - calls,
        2 * MAX_FANOUTS as u64,
        "the refused ones sent nothing"
    );
    assert_eq!(s.envoy.stat("delete_fanout_limited_total"), 2);
    for w in waiting {
        assert_eq!(w.join().unwrap(), 202, "each waiting DELETE ends as usual");
    }
    s.pgs[idx].proc.thaw();
    // Their places are free again.
    let r = http_request("DELETE", &url, &[], b"");
    assert_eq!(r.status, 202, "{}", r.body);
}

/// `n` times: a `DELETE` whose fan-out waits for a frozen pushgateway, and the client closes the
/// connection at once. Paced so that Envoy holds at most about 50 of those connections at once:
/// otherwise its memory follows the size of the burst.
fn delete_and_close(s: &Stack, path: &str, n: usize) {
    use std::io::Write;
    let request = format!("DELETE {path} HTTP/1.1\r\nhost: leak\r\ncontent-length: 0\r\n\r\n");
    for i in 0..n {
        let mut c = TcpStream::connect(("127.0.0.1", s.envoy.ports.redirect)).unwrap();
        c.write_all(request.as_bytes()).unwrap();
        drop(c);
        if i % 50 == 49 {
            wait_until("Envoy closed them", Duration::from_secs(10), || {
                let open = s.envoy.envoy_stat("http.sharding_redirect.downstream_cx_active");
                (open < 50).then_some(())
            });
        }
    }
}

#[test]
fn a_loop_of_delete_and_close_against_a_frozen_member_leaves_envoy_bounded_and_alive() {
    let mut s = one_worker_stack("fanout-leak");
    let members = s.members();
    let path = "/metrics/job/fanout_leak";
    let owner = expected_owner(&members, path);
    let frozen = not_owner(&members, path);
    let idx = freeze(&mut s, &frozen);
    let pid = s.envoy.proc.pid();
    let calls = s.envoy.stat(CALLS);
    // Warm up: Envoy's pools and the VM's heap reach their working size; then two more rounds.
    let mut rss = Vec::new();
    for _ in 0..3 {
        delete_and_close(&s, path, 2_000);
        std::thread::sleep(FANOUT_BOUND);
        rss.push(rss_kib(pid));
    }
    let (fanned_out, refused) = (
        (s.envoy.stat(CALLS) - calls) / 2,
        s.envoy.stat("delete_fanout_limited_total"),
    );
    println!(
        "envoy RSS after each 2,000 DELETE-and-close: {rss:?} KiB; {fanned_out} fanned out, {refused} refused at the bound"
    );
    assert!(fanned_out + refused >= 5_700, "most DELETEs reached the filter");
    assert!(
        rss[2] < rss[0] + 8 * 1024,
        "Envoy's memory grew from {} to {} KiB over 4,000 DELETE-and-close",
        rss[0],
        rss[2]
    );
    // The VM is alive: every request is answered as before.
    s.pgs[idx].proc.thaw();
    // The thawed pushgateway still reads the DELETEs queued in its sockets while it was frozen
    // (Envoy gave up on them): let it, or they delete the copies pushed next.
    std::thread::sleep(Duration::from_secs(2));
    copies(&s, "fanout_leak", &[&owner, &frozen]);
    let r = http_request("DELETE", &format!("{}{path}", s.envoy.proxy_url()), &[], b"");
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(s.holders(&labels(&[("job", "fanout_leak")])).is_empty());
    let r = http_request("PUT", &format!("{}{path}", s.envoy.redirect_url()), &[], b"x 1\n");
    assert_eq!(r.status, 307);
    assert_eq!(s.envoy.stat("host_errors_total"), 0);
    assert!(s.envoy.proc.is_running());
}
