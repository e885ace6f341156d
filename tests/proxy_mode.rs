//! Proxy mode in a real Envoy: clients that do not follow 307 (prometheus_client, curl without
//! -L) push through Envoy to the owner, and nobody can steer the proxy elsewhere.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{expected_owner, rss_kib, send_on, stack};
use serde_json::json;
use std::io::BufReader;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;
use testkit::envoy::run_python_clients;
use testkit::pushgateway::labels;
use testkit::{http_request, wait_until};

/// The path prometheus_client builds for a grouping key: a value with `/` goes as `@base64`.
fn client_path(job: &str, key: &[(&str, &str)]) -> String {
    let mut p = format!("/metrics/job/{job}");
    for (k, v) in key {
        if v.contains('/') {
            p.push_str(&format!("/{k}@base64/{}", common::base64_url(v.as_bytes())));
        } else {
            p.push_str(&format!("/{k}/{v}"));
        }
    }
    p
}

#[test]
fn prometheus_client_pushes_land_on_the_owner_and_delete_removes_them() {
    let s = stack("proxy-client");
    let base = s.envoy.proxy_url();
    let groups: Vec<(String, Vec<(&str, &str)>)> = vec![
        ("backup".into(), vec![("path", "/var/lib/data"), ("host", "db-1")]),
        ("etl".into(), vec![("stage", "load")]),
        ("nightly".into(), vec![]),
        ("report".into(), vec![("team", "infra"), ("region", "eu")]),
    ];
    let mut reqs = Vec::new();
    for (i, (job, key)) in groups.iter().enumerate() {
        let gk: serde_json::Map<String, serde_json::Value> =
            key.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        let client = if i % 2 == 0 { "push" } else { "pushadd" };
        reqs.push(
            json!({"client": client, "base": base, "job": job, "grouping_key": gk, "value": i as f64 + 0.5}),
        );
    }
    for r in run_python_clients(&reqs) {
        assert_eq!(r["ok"], true, "{r}");
    }
    let members = s.members();
    for (i, (job, key)) in groups.iter().enumerate() {
        let mut all = key.clone();
        all.push(("job", job));
        let group = labels(&all);
        let owner = expected_owner(&members, &client_path(job, key));
        assert_eq!(s.holders(&group), vec![owner.clone()], "{group:?}");
        let pg = s.pgs.iter().find(|p| p.addr() == owner).unwrap();
        assert_eq!(pg.metric_value(&group, "test_value"), Some(i as f64 + 0.5));
    }
    // delete_from_gateway through the proxy removes the group from its owner.
    let (job, key) = &groups[0];
    let gk: serde_json::Map<String, serde_json::Value> =
        key.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    let r = run_python_clients(&[json!({"client": "delete", "base": base, "job": job, "grouping_key": gk})]);
    assert_eq!(r[0]["ok"], true, "{}", r[0]);
    let mut all = key.clone();
    all.push(("job", job));
    assert!(s.holders(&labels(&all)).is_empty());
    assert!(s.envoy.stat("proxied_total") >= 5);
}

#[test]
fn requests_and_curl_without_follow_push_through_the_proxy() {
    let s = stack("proxy-curl");
    let path = "/metrics/job/curl/instance/a";
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
            "-X",
            "PUT",
            "--data-binary",
            "@-",
        ])
        .arg(format!("{}{path}", s.envoy.proxy_url()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"curl_metric 7\n")?;
            c.wait_with_output()
        })
        .expect("curl must be installed (apt-get install curl)");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let group = labels(&[("job", "curl"), ("instance", "a")]);
    assert_eq!(s.holders(&group), vec![expected_owner(&s.members(), path)]);

    let r = run_python_clients(&[
        json!({"client": "requests", "base": s.envoy.proxy_url(), "method": "POST", "path": "/metrics/job/req", "body": "r 1\n"}),
    ]);
    assert_eq!(r[0]["status"], 200, "{}", r[0]);
    assert_eq!(
        s.holders(&labels(&[("job", "req")])),
        vec![expected_owner(&s.members(), "/metrics/job/req")]
    );
}

#[test]
fn a_forged_destination_header_does_not_steer_the_proxy() {
    let s = stack("proxy-forged");
    let path = "/metrics/job/forged";
    let owner = expected_owner(&s.members(), path);
    let other = s.members().into_iter().find(|m| *m != owner).unwrap();
    let r = http_request(
        "PUT",
        &format!("{}{path}", s.envoy.proxy_url()),
        &[("x-sharding-destination", &other)],
        b"f 1\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(s.holders(&labels(&[("job", "forged")])), vec![owner]);
    // On a path the filter does not route, a forged header must not reach the owner cluster.
    let r = http_request(
        "GET",
        &format!("{}/api/v1/metrics", s.envoy.proxy_url()),
        &[("x-sharding-destination", &other)],
        b"",
    );
    assert_eq!(r.status, 404);
    // A bad push path is refused, not routed, even with the header.
    let r = http_request(
        "PUT",
        &format!("{}/metrics/job/x/odd", s.envoy.proxy_url()),
        &[("x-sharding-destination", &other)],
        b"f 1\n",
    );
    assert_eq!(r.status, 400);
}

#[test]
fn a_16_mib_push_streams_through_with_bounded_memory() {
    let s = stack("proxy-large");
    // Comment lines are valid exposition text that pushgateway parses and drops.
    let mut body = Vec::with_capacity(16 << 20);
    let line = format!("# {}\n", "x".repeat(1021));
    while body.len() + line.len() < (16 << 20) - 64 {
        body.extend_from_slice(line.as_bytes());
    }
    body.extend_from_slice(b"large_push_ok 1\n");
    let before = rss_kib(s.envoy.proc.pid());
    let r = http_request(
        "PUT",
        &format!("{}/metrics/job/large", s.envoy.proxy_url()),
        &[],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let group = labels(&[("job", "large")]);
    let owner = expected_owner(&s.members(), "/metrics/job/large");
    let pg = s.pgs.iter().find(|p| p.addr() == owner).unwrap();
    assert_eq!(pg.metric_value(&group, "large_push_ok"), Some(1.0));
    let grown = rss_kib(s.envoy.proc.pid()).saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "Envoy grew by {grown} KiB for a 16 MiB push: the body was held, not streamed"
    );
}

#[test]
fn keep_alive_on_both_sides() {
    let s = stack("proxy-keepalive");
    let stream = TcpStream::connect(("127.0.0.1", s.envoy.ports.proxy)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut conn = BufReader::new(stream);
    let up_before = s.envoy.envoy_stat("cluster.pushgateway_owner.upstream_cx_total");
    let closed_before = s
        .envoy
        .envoy_stat("cluster.pushgateway_owner.upstream_cx_destroy_remote");
    for i in 0..10 {
        let (status, headers) = send_on(
            &mut conn,
            "PUT",
            "/metrics/job/same_group",
            format!("v {i}\n").as_bytes(),
        );
        assert_eq!(status, 200);
        assert!(!headers.iter().any(|(k, v)| k == "connection" && v == "close"));
    }
    assert_eq!(s.envoy.envoy_stat("http.sharding_proxy.downstream_cx_total"), 1);
    let up = s.envoy.envoy_stat("cluster.pushgateway_owner.upstream_cx_total") - up_before;
    // A connection the pushgateway closed is not Envoy's to keep: each such close may cost one.
    let closed = s
        .envoy
        .envoy_stat("cluster.pushgateway_owner.upstream_cx_destroy_remote")
        - closed_before;
    assert!(
        up >= 1 && up <= 1 + closed,
        "ten pushes to one owner reuse one upstream connection: {up} opened, {closed} closed by the pushgateway"
    );
}

#[test]
fn a_dead_owner_gives_503_naming_it_until_the_list_drops_it() {
    let mut s = stack("proxy-dead");
    let path = "/metrics/job/dead_owner";
    let owner = expected_owner(&s.members(), path);
    let idx = s.pgs.iter().position(|p| p.addr() == owner).unwrap();
    s.pgs[idx].proc.kill();
    let r = http_request("PUT", &format!("{}{path}", s.envoy.proxy_url()), &[], b"d 1\n");
    assert_eq!(r.status, 503);
    assert!(r.body.contains(&owner), "the 503 names the member: {}", r.body);
    // No other pushgateway got the group.
    let group = labels(&[("job", "dead_owner")]);
    let alive: Vec<String> = s
        .pgs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != idx)
        .map(|(_, p)| p.addr())
        .collect();
    for p in s.pgs.iter().filter(|p| p.addr() != owner) {
        assert!(!p.groups().contains(&group));
    }
    // The member list drops it (as consul-sync would): the group goes to its new owner.
    let alive_refs: Vec<&str> = alive.iter().map(String::as_str).collect();
    assert_eq!(s.envoy.put_members(2, &alive_refs).status, 200);
    let new_owner = expected_owner(&alive, path);
    wait_until(
        "the proxy routes to the new owner",
        Duration::from_secs(5),
        || {
            let r = http_request("PUT", &format!("{}{path}", s.envoy.proxy_url()), &[], b"d 2\n");
            (r.status == 200).then_some(())
        },
    );
    let holders: Vec<String> = s
        .pgs
        .iter()
        .filter(|p| p.addr() != owner)
        .filter(|p| p.groups().contains(&group))
        .map(|p| p.addr())
        .collect();
    assert_eq!(holders, vec![new_owner]);
}
