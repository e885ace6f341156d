//! The filter in a real Envoy (two workers) in front of three real pushgateways: what a pusher
//! sees in redirect mode, and what the control API does to every worker's member list.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{base64_url, expected_owner, send_on, stack};
use dynamic_sharding::members::MAX_UPDATE_BYTES;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::BufReader;
use std::net::TcpStream;
use std::time::Duration;
use testkit::envoy::{run_python_clients, TEST_TOKEN};
use testkit::http_request;
use testkit::pushgateway::labels;

/// Spellings of one group: plain, reordered, base64 (one with line breaks), percent-encoded.
fn spellings(i: usize) -> (BTreeMap<String, String>, Vec<String>) {
    let job = format!("batch-{i}");
    let inst = format!("host/{i}");
    let b64 = |s: &str| base64_url(s.as_bytes());
    let group = labels(&[("job", &job), ("instance", &inst), ("zone", "eu")]);
    let paths = vec![
        format!("/metrics/job/{job}/instance@base64/{}/zone/eu", b64(&inst)),
        format!(
            "/metrics/job@base64/{}/zone/eu/instance@base64/{}=",
            b64(&job),
            b64(&inst)
        ),
        // Percent-encoding, a dot segment and a doubled slash, all cleaned as pushgateway would.
        format!(
            "/metrics/./job/%62atch-{i}//zone/e%75/instance@base64/{}",
            b64(&inst)
        ),
        // Go's base64 decoder, so pushgateway, skips line breaks in the value.
        {
            let v = b64(&inst);
            format!(
                "/metrics/job/{job}/zone/eu/instance@base64/{}%0D%0A{}%0A",
                &v[..2],
                &v[2..]
            )
        },
    ];
    (group, paths)
}

#[test]
fn every_spelling_of_a_group_lands_on_its_owner_and_nowhere_else() {
    let s = stack("spellings");
    let mut requests = Vec::new();
    let mut groups = Vec::new();
    for i in 0..20 {
        let (group, paths) = spellings(i);
        for (k, path) in paths.iter().enumerate() {
            let method = if k == 1 { "POST" } else { "PUT" };
            let body = format!("pushed_value{{n=\"{k}\"}} {i}\n");
            requests.push(json!({"client": "requests", "base": s.envoy.redirect_url(), "method": method, "path": path, "body": body}));
        }
        groups.push((group, paths));
    }
    let results = run_python_clients(&requests);
    for r in &results {
        assert_eq!(r["status"], 200, "push failed: {r}");
    }
    let members = s.members();
    for (group, paths) in &groups {
        let owner = expected_owner(&members, &paths[0]);
        for p in paths {
            assert_eq!(expected_owner(&members, p), owner, "{p} names another group");
        }
        assert_eq!(s.holders(group), vec![owner.clone()], "group {group:?}");
    }
    // The 307s really went to more than one pushgateway.
    let used: std::collections::BTreeSet<String> = groups
        .iter()
        .map(|(_, p)| expected_owner(&members, &p[0]))
        .collect();
    assert!(used.len() > 1);
    assert!(s.envoy.stat("redirects_total") >= 80);
}

#[test]
fn delete_is_redirected_to_the_owner_and_removes_the_group() {
    let s = stack("delete");
    let path = "/metrics/job/cleanup/instance/a";
    let push = json!({"client": "requests", "base": s.envoy.redirect_url(), "method": "PUT", "path": path, "body": "x 1\n"});
    let del = json!({"client": "requests", "base": s.envoy.redirect_url(), "method": "DELETE", "path": "/metrics/job/cleanup/instance@base64/YQ"});
    let group = labels(&[("job", "cleanup"), ("instance", "a")]);
    let r = run_python_clients(&[push]);
    assert_eq!(r[0]["status"], 200);
    assert_eq!(s.holders(&group), vec![expected_owner(&s.members(), path)]);
    let r = run_python_clients(&[del]);
    assert_eq!(r[0]["status"], 202, "{}", r[0]);
    assert!(s.holders(&group).is_empty());
}

#[test]
fn lookup_bad_paths_and_foreign_paths() {
    let s = stack("lookup");
    let url = s.envoy.redirect_url();
    let r = http_request("GET", &format!("{url}/metrics/job/j/a/1"), &[], b"");
    let owner = expected_owner(&s.members(), "/metrics/job/j/a/1");
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, format!("nextUrl:http://{owner}/metrics/job/j/a/1").as_str())
    );

    let r = http_request("PUT", &format!("{url}/metrics/job/j/a"), &[], b"x 1\n");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("odd number of components"), "{}", r.body);
    assert_eq!(r.header("location"), None);
    let r = http_request("PUT", &format!("{url}/metrics/job/j/__x/1"), &[], b"x 1\n");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("improper label name \"__x\""), "{}", r.body);
    let r = http_request("PUT", &format!("{url}/metrics/job@base64/!!"), &[], b"x 1\n");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("base64"), "{}", r.body);

    let r = http_request("PATCH", &format!("{url}/metrics/job/j"), &[], b"");
    assert_eq!(
        (r.status, r.header("allow")),
        (405, Some("GET, HEAD, PUT, POST, DELETE"))
    );
    let r = http_request("GET", &format!("{url}/api/v1/metrics"), &[], b"");
    assert_eq!(r.status, 404);
    // The control API is not served on the data listener.
    let r = http_request("GET", &format!("{url}/-/sharding/members"), &[], b"");
    assert_eq!(r.status, 404);
    assert!(s.envoy.stat("bad_requests_total") >= 4);
    assert!(s.envoy.stat("lookups_total") >= 1);
    // Nothing reached any pushgateway.
    assert!(s.pgs.iter().all(|p| p.groups().is_empty()));
}

#[test]
fn pushes_with_bodies_keep_the_connection_alive() {
    let s = stack("keepalive");
    let before = s.envoy.envoy_stat("http.sharding_redirect.downstream_cx_total");
    let stream = TcpStream::connect(("127.0.0.1", s.envoy.ports.redirect)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut conn = BufReader::new(stream);
    let big = vec![b'#'; 300 * 1024];
    for (i, body) in [&b"a 1\n"[..], &b"b 2\n"[..], &big[..], &b"c 3\n"[..]]
        .iter()
        .enumerate()
    {
        let method = if i % 2 == 0 { "PUT" } else { "POST" };
        let (status, headers) = send_on(&mut conn, method, &format!("/metrics/job/ka/i/{i}"), body);
        assert_eq!(status, 307, "request {i}");
        assert!(
            !headers.iter().any(|(k, v)| k == "connection" && v == "close"),
            "request {i} closed: {headers:?}"
        );
        let location = headers
            .iter()
            .find(|(k, _)| k == "location")
            .map(|(_, v)| v.clone())
            .unwrap();
        let path = format!("/metrics/job/ka/i/{i}");
        assert_eq!(
            location,
            format!("http://{}{path}", expected_owner(&s.members(), &path))
        );
    }
    let after = s.envoy.envoy_stat("http.sharding_redirect.downstream_cx_total");
    assert_eq!(after - before, 1, "all four pushes on one connection");
}

#[test]
fn a_large_push_is_redirected_not_refused() {
    let s = stack("large");
    let body = vec![b'#'; 4 * 1024 * 1024];
    let r = http_request(
        "PUT",
        &format!("{}/metrics/job/big", s.envoy.redirect_url()),
        &[],
        &body,
    );
    assert_eq!(r.status, 307, "{}", r.body);
}

#[test]
fn member_updates_reach_both_workers() {
    let s = stack("update");
    let members = s.members();
    let paths: Vec<String> = (0..40).map(|i| format!("/metrics/job/w/i/{i}")).collect();
    let only_first = [members[0].clone()];
    let r = s.envoy.put_members(10, &[&members[0]]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), json!({"version": 10, "count": 1, "changed": true}));
    // Fresh connections spread over both workers; every one must use the new list at once.
    let worker_stat = |w: u32| {
        s.envoy.envoy_stat(&format!(
            "listener.127.0.0.1_{}.worker_{w}.downstream_cx_total",
            s.envoy.ports.redirect
        ))
    };
    let (w0, w1) = (worker_stat(0), worker_stat(1));
    // A new connection per push, so the pushes spread over both workers.
    let location_of = |p: &str| {
        let url = format!("{}{p}", s.envoy.redirect_url());
        let r = http_request("PUT", &url, &[("connection", "close")], b"x 1\n");
        assert_eq!(r.status, 307);
        r.header("location").unwrap().to_owned()
    };
    for p in &paths {
        assert_eq!(location_of(p), format!("http://{}{p}", only_first[0]));
    }
    assert!(
        worker_stat(0) > w0 && worker_stat(1) > w1,
        "both workers served requests"
    );
    // Back to three members: owners follow the ring again.
    let r = s
        .envoy
        .put_members(11, &members.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.status, 200);
    for p in &paths {
        assert_eq!(
            location_of(p),
            format!("http://{}{p}", expected_owner(&members, p))
        );
    }
    assert_eq!(
        s.envoy.members(),
        (11, {
            let mut m = members.clone();
            m.sort();
            m
        })
    );
    assert_eq!(s.envoy.stat("members"), 3);
    assert_eq!(s.envoy.stat("members_version"), 11);
}

#[test]
fn bad_updates_are_refused_and_change_nothing() {
    let s = stack("badupdates");
    assert_eq!(
        s.envoy.put_members(5, &["127.0.0.1:1", "127.0.0.1:2"]).status,
        200
    );
    let before = s.envoy.members();
    let lookup = |p: &str| http_request("GET", &format!("{}{p}", s.envoy.redirect_url()), &[], b"").body;
    let owner_before = lookup("/metrics/job/x");
    let cases: Vec<(Option<&str>, Vec<u8>, u16, &str)> = vec![
        (None, br#"{"version":6,"members":[]}"#.to_vec(), 401, "token"),
        (
            Some("forged-7f3a"),
            br#"{"version":6,"members":[]}"#.to_vec(),
            401,
            "token",
        ),
        (
            Some(TEST_TOKEN),
            br#"{"version":6,"members":["127.0.0.1"]}"#.to_vec(),
            400,
            "members[0]",
        ),
        (
            Some(TEST_TOKEN),
            br#"{"version":6,"members":["a:1","A:1"]}"#.to_vec(),
            400,
            "duplicates",
        ),
        (
            Some(TEST_TOKEN),
            br#"{"version":6,"members":["[::1:1"]}"#.to_vec(),
            400,
            "members[0]",
        ),
        (Some(TEST_TOKEN), br#"{"version":6}"#.to_vec(), 400, "members"),
        (
            Some(TEST_TOKEN),
            br#"{"version":6,"members":[],"x":1}"#.to_vec(),
            400,
            "unknown field",
        ),
        (Some(TEST_TOKEN), b"nonsense".to_vec(), 400, "body is not"),
        (
            Some(TEST_TOKEN),
            br#"{"version":4,"members":["127.0.0.1:3"]}"#.to_vec(),
            409,
            "not above the stored version 5",
        ),
        (
            Some(TEST_TOKEN),
            format!(
                r#"{{"version":6,"members":[],"pad":"{}"}}"#,
                "x".repeat(MAX_UPDATE_BYTES)
            )
            .into_bytes(),
            413,
            "262144",
        ),
    ];
    for (token, body, status, needle) in &cases {
        let r = s.envoy.put_members_raw(*token, body);
        assert_eq!(
            r.status,
            *status,
            "{}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
        assert!(r.body.contains(needle), "{status}: {}", r.body);
        assert_eq!(s.envoy.members(), before);
    }
    assert_eq!(lookup("/metrics/job/x"), owner_before);
    // Envoy's own output, without the harness's line that shows its environment.
    let log: String = s
        .envoy
        .proc
        .log()
        .lines()
        .filter(|l| !l.starts_with("---- testkit"))
        .collect();
    assert!(log.contains("member update refused"), "refusals are logged");
    assert!(
        !log.contains(TEST_TOKEN) && !log.contains("forged-7f3a"),
        "tokens never reach the log"
    );
    assert!(s.envoy.stat("member_updates_rejected_total") >= cases.len() as u64);
}

#[test]
fn empty_member_list_gives_503_with_retry_after() {
    let s = stack("empty");
    assert_eq!(s.envoy.put_members(1, &[]).status, 200);
    let r = http_request(
        "PUT",
        &format!("{}/metrics/job/j", s.envoy.redirect_url()),
        &[],
        b"x 1\n",
    );
    assert_eq!((r.status, r.header("retry-after")), (503, Some("5")));
    assert!(r.body.contains("no healthy pushgateway is known"), "{}", r.body);
    assert!(s.envoy.stat("no_member_total") >= 1);
}

#[test]
fn stats_are_exported_for_prometheus() {
    let s = stack("stats");
    http_request(
        "PUT",
        &format!("{}/metrics/job/j", s.envoy.redirect_url()),
        &[],
        b"x 1\n",
    );
    let r = http_request(
        "GET",
        &format!("{}/stats/prometheus", s.envoy.admin_url()),
        &[],
        b"",
    );
    for name in [
        "redirects_total",
        "proxied_total",
        "lookups_total",
        "bad_requests_total",
        "no_member_total",
        "member_updates_accepted_total",
        "member_updates_rejected_total",
        "members",
        "members_version",
    ] {
        assert!(
            r.body
                .lines()
                .any(|l| l.starts_with(&format!("dynamic_sharding_{name}{{}} "))),
            "{name} missing from /stats/prometheus"
        );
    }
    assert!(
        r.body.contains("dynamic_sharding_redirects_total{} 1\n"),
        "one redirect counted"
    );
    assert!(r.body.contains("dynamic_sharding_members{} 3\n"));
}

#[test]
fn expect_100_continue_gets_the_redirect_before_the_body_is_sent() {
    use std::io::{BufRead, Write};
    let s = stack("expect");
    let mut stream = TcpStream::connect(("127.0.0.1", s.envoy.ports.redirect)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = "PUT /metrics/job/huge HTTP/1.1\r\nhost: t\r\ncontent-length: 16777216\r\nexpect: 100-continue\r\n\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    // Not one byte of the 16 MiB body is sent: the answer must come anyway, and be the redirect.
    let mut conn = BufReader::new(stream);
    let mut status = String::new();
    conn.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 307"), "{status}");
    let owner = expected_owner(&s.members(), "/metrics/job/huge");
    let mut location = None;
    for _ in 0..20 {
        let mut line = String::new();
        conn.read_line(&mut line).unwrap();
        if let Some(v) = line.strip_prefix("location: ") {
            location = Some(v.trim().to_owned());
        }
        if line.trim().is_empty() {
            break;
        }
    }
    assert_eq!(location, Some(format!("http://{owner}/metrics/job/huge")));
}

#[test]
fn a_bad_plugin_configuration_stops_envoy_naming_the_field() {
    let dir = testkit::TestDir::new("badconfig");
    let options = testkit::envoy::EnvoyOptions {
        members: vec!["127.0.0.1:1".into()],
        ..Default::default()
    };
    let good = testkit::envoy::render_config(&options, testkit::envoy::EnvoyPorts::free());
    for (from, to, needle) in [
        (r#""vnodes": 500"#, r#""vnodes": 0"#, "field `vnodes`"),
        (
            r#""mode": "proxy""#,
            r#""mode": "proxy", "members_typo": []"#,
            "unknown field `members_typo`",
        ),
        (r#""127.0.0.1:1""#, r#""127.0.0.1""#, "field `members`"),
    ] {
        let bad = good.replacen(from, to, 1);
        assert_ne!(bad, good);
        let path = dir.write("bad.yaml", &bad);
        let out = std::process::Command::new(testkit::bin("envoy"))
            .args(["--mode", "validate", "--disable-hot-restart", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "Envoy accepted {to}");
        assert!(log.contains(needle), "{needle} not in the log:\n{log}");
    }
}
