//! The grouping-key parser against the real pushgateway 1.5.1: for every path of a corpus, the
//! parser accepts exactly what pushgateway accepts, and names the group pushgateway stores.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use dynamic_sharding::grouping_key::{GroupingKey, PathError, EMPTY_INSTANCE};
use std::collections::BTreeMap;
use testkit::{http_request, Pushgateway, TestDir};

const CORPUS: &[&str] = &[
    "/metrics/job/j",
    "/metrics/job/j/",
    "/metrics/job/j/a/1",
    "/metrics/job/j/b/2/a/1",
    "/metrics/job/j/a/1/",
    "/metrics/job/j/a",
    "/metrics/job/j/a/",
    "/metrics/job/j/a/1/a/2",
    "/metrics/job/j/job/k",
    "/metrics/job@base64/ag",
    "/metrics/job@base64/ag==",
    "/metrics/job@base64/=",
    "/metrics/job@base64/!!",
    "/metrics/job/j/a@base64/MQ",
    "/metrics/job/j/a@base64/MQ==",
    "/metrics/job/j/a@base64/=",
    "/metrics/job/j/a@base64/Pj4-",
    "/metrics/job/j/a@base64/Pj4+",
    "/metrics/job/j/a@base64/A",
    "/metrics/job/j/a@base64/YQ%3D%3D",
    "/metrics/job/j/a%2Fb",
    "/metrics/job/j/a%2F1",
    "/metrics/job/j%20k/x/%E2%9C%93",
    "/metrics/job/j/1a/x",
    "/metrics/job/j/__a/x",
    "/metrics/job/j/a-b/x",
    "/metrics/job/j/_a/x",
    "/metrics/job/j/a@base64@base64/x",
    "/metrics/job//j",
    "/metrics/job/j//a/1",
    "/metrics/./job/j/a/1",
    "/metrics/job/x/../j/a/1",
];

/// What pushgateway did with a PUT of a valid body to `path`: `Some(labels)` when it stored a
/// group, `None` when it refused the path. Follows its 301 for unclean paths, as clients do.
fn pushgateway_verdict(pg: &Pushgateway, path: &str) -> Option<BTreeMap<String, String>> {
    pg.wipe();
    let mut url = format!("{}{path}", pg.url());
    for _ in 0..3 {
        let r = http_request("PUT", &url, &[], b"corpus_metric 1\n");
        match r.status {
            200 => {
                let groups = pg.groups();
                assert_eq!(groups.len(), 1, "{path}: {groups:?}");
                return groups.into_iter().next();
            }
            301 => {
                let loc = r.header("location").unwrap();
                url = if loc.starts_with("http") {
                    loc.to_owned()
                } else {
                    format!("{}{loc}", pg.url())
                };
            }
            400 => return None,
            other => panic!("{path}: pushgateway answered {other}: {}", r.body),
        }
    }
    panic!("{path}: redirect loop");
}

#[test]
fn parser_agrees_with_pushgateway_on_every_path_of_the_corpus() {
    let dir = TestDir::new("parser-corpus");
    let pg = Pushgateway::start(&dir);
    for path in CORPUS {
        let ours = GroupingKey::from_path(path);
        let theirs = pushgateway_verdict(&pg, path);
        match (ours, theirs) {
            (Ok(key), Some(group)) => {
                let ours: BTreeMap<String, String> = key.labels().iter().cloned().collect();
                assert_eq!(ours, group, "{path}: different group");
            }
            (Err(PathError::Invalid(_)), None) => {}
            (ours, theirs) => panic!("{path}: parser says {ours:?}, pushgateway says {theirs:?}"),
        }
    }
}

/// An explicitly empty `instance` poisons pushgateway 1.5.1 (it gives every group without an
/// instance `instance=""`): the push is refused, its group stays, and every later push of any
/// group is refused. The parser refuses the path, so the filter never forwards it.
#[test]
fn an_empty_instance_poisons_pushgateway_and_the_parser_refuses_it() {
    let dir = TestDir::new("parser-empty-instance");
    let pg = Pushgateway::start(&dir);
    let poison = "/metrics/job/j/instance@base64/=";
    assert_eq!(
        GroupingKey::from_path(poison),
        Err(PathError::Invalid(EMPTY_INSTANCE.to_owned()))
    );
    assert_eq!(pg.push("/metrics/job/j", "a 1\n"), 200);
    assert_eq!(pg.push(poison, "b 1\n"), 400);
    assert_eq!(
        pg.push("/metrics/job/unrelated", "c 1\n"),
        400,
        "pushgateway is poisoned"
    );
    let (status, _) = testkit::http_get(&format!("{}/metrics", pg.url()));
    assert_eq!(status, 500, "its /metrics fails too");
    // The same group spelled without the instance is what pushers mean; it parses.
    assert!(GroupingKey::from_path("/metrics/job/j").is_ok());
}

/// An `@base64` job that does not decode leaves pushgateway 1.5.1's lock of that route held:
/// the push gets 400, and every later push with an `@base64` job (same method, no labels) hangs
/// without an answer. Found by the differential test. The parser refuses the path, so the
/// filter never forwards it.
#[test]
fn a_bad_base64_job_hangs_pushgateway_and_the_parser_refuses_it() {
    use std::io::{BufRead, BufReader, Write};
    let dir = TestDir::new("parser-base64-job-hang");
    let pg = Pushgateway::start(&dir);
    let bad = "/metrics/job@base64/!!";
    assert!(matches!(GroupingKey::from_path(bad), Err(PathError::Invalid(why)) if why.contains("job")));
    assert_eq!(
        pg.push("/metrics/job@base64/YQ", "a 1\n"),
        200,
        "before: answered"
    );
    assert_eq!(pg.push(bad, "b 1\n"), 400);
    // After it, no answer within 3 s (the test client would wait 10 s).
    let mut s = std::net::TcpStream::connect(("127.0.0.1", pg.port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    s.write_all(b"PUT /metrics/job@base64/YQ HTTP/1.1\r\nHost: pg\r\nContent-Length: 4\r\n\r\nc 1\n")
        .unwrap();
    let mut line = String::new();
    let answered = BufReader::new(s)
        .read_line(&mut line)
        .map(|n| n > 0)
        .unwrap_or(false);
    assert!(
        !answered,
        "pushgateway answered after a bad @base64 job: {line:?}"
    );
}
