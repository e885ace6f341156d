//! Slots with standbys: every write the filter routes to a slot also reaches the slot's standby,
//! before the client gets its answer, in redirect and in proxy mode; a standby that is down,
//! frozen or sent a body over the limit never fails the write, and is counted. Real Envoy (two
//! workers), real pushgateways.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{expected_owner, stack, wait_stopped, Stack};
use std::time::{Duration, Instant};
use testkit::envoy::TEST_TOKEN;
use testkit::pushgateway::labels;
use testkit::{http_request, Pushgateway};

const CALLS: &str = "replications_total";
const FAILURES: &str = "replication_failures_total";

/// The filter's default `replication_timeout`.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Three slots (the stack's pushgateways, by address) and two standbys: slot 0 and slot 1 have
/// one each, slot 2 has none.
struct Replicated {
    s: Stack,
    standbys: Vec<Pushgateway>,
}

impl Replicated {
    fn start(name: &str) -> Replicated {
        let s = stack(name);
        let standbys: Vec<Pushgateway> = (0..2).map(|_| Pushgateway::start(&s.dir)).collect();
        let r = Replicated { s, standbys };
        r.publish(2, &r.slots(false));
        r
    }

    fn slot(&self, i: usize) -> String {
        self.s.pgs[i].addr()
    }

    fn standby(&self, i: usize) -> String {
        self.standbys[i].addr()
    }

    /// Slots 0 and 1 with their standbys; with `promoted`, slot 0 served at its standby, its own
    /// address now the standby.
    fn slots(&self, promoted: bool) -> serde_json::Value {
        let (active0, standby0) = if promoted {
            (self.standby(0), self.slot(0))
        } else {
            (self.slot(0), self.standby(0))
        };
        serde_json::json!({
            self.slot(0): {"active": active0, "standby": standby0},
            self.slot(1): {"active": self.slot(1), "standby": self.standby(1)},
        })
    }

    fn publish(&self, version: u64, slots: &serde_json::Value) {
        let body = serde_json::json!({"version": version, "members": self.s.members(), "slots": slots});
        let r = self
            .s
            .envoy
            .put_members_raw(Some(TEST_TOKEN), body.to_string().as_bytes());
        assert_eq!(r.status, 200, "{}", r.body);
    }

    /// A job whose group slot `i` owns.
    fn job_of(&self, i: usize, prefix: &str) -> String {
        let members = self.s.members();
        (0..1000)
            .map(|n| format!("{prefix}_{n}"))
            .find(|job| expected_owner(&members, &format!("/metrics/job/{job}")) == self.slot(i))
            .unwrap()
    }

    /// Every pushgateway (slots, then standbys) that holds `{job="<job>"}`.
    fn holders(&self, job: &str) -> Vec<String> {
        let group = labels(&[("job", job)]);
        self.s
            .pgs
            .iter()
            .chain(&self.standbys)
            .filter(|p| p.groups().contains(&group))
            .map(Pushgateway::addr)
            .collect()
    }

    fn value_on(&self, addr: &str, job: &str, metric: &str) -> Option<f64> {
        let pg = self
            .s
            .pgs
            .iter()
            .chain(&self.standbys)
            .find(|p| p.addr() == addr)?;
        pg.metric_value(&labels(&[("job", job)]), metric)
    }

    /// `PUT` of `body` to `path` through the redirect listener: the 307 must name `active`;
    /// returns its `Location`.
    fn push_redirected(&self, path: &str, body: &[u8], active: &str) -> String {
        let resp = http_request(
            "PUT",
            &format!("{}{path}", self.s.envoy.redirect_url()),
            &[],
            body,
        );
        assert_eq!(resp.status, 307, "{}", resp.body);
        let location = format!("http://{active}{path}");
        assert_eq!(resp.header("location"), Some(location.as_str()));
        location
    }

    fn stats(&self) -> (u64, u64) {
        (self.s.envoy.stat(CALLS), self.s.envoy.stat(FAILURES))
    }
}

/// A push of `{job="<job>"}` with `<metric> <value>` in the protobuf delimited format, which a
/// pushgateway reads only with its content type.
fn protobuf_push(metric: &str, value: f64) -> Vec<u8> {
    let mut gauge = vec![0x09];
    gauge.extend_from_slice(&value.to_le_bytes());
    let mut family = vec![0x0a, metric.len() as u8];
    family.extend_from_slice(metric.as_bytes());
    family.extend_from_slice(&[0x18, 0x01, 0x22, gauge.len() as u8 + 2, 0x12, gauge.len() as u8]);
    family.extend_from_slice(&gauge);
    let mut body = vec![family.len() as u8];
    body.extend(family);
    body
}

const PROTOBUF: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

#[test]
fn a_push_in_each_mode_lands_on_the_active_and_the_standby() {
    let r = Replicated::start("replication-modes");
    let (active, standby) = (r.slot(0), r.standby(0));
    let before = r.stats();

    // Redirect mode: when the 307 arrives the standby holds the push already.
    let job = r.job_of(0, "rep_redirect");
    let path = format!("/metrics/job/{job}");
    let location = r.push_redirected(&path, b"rep_redirect 7\n", &active);
    assert_eq!(
        r.holders(&job),
        [standby.as_str()],
        "before the client follows the 307"
    );
    let followed = http_request("PUT", &location, &[], b"rep_redirect 7\n");
    assert_eq!(followed.status, 200);
    for addr in [&active, &standby] {
        assert_eq!(r.value_on(addr, &job, "rep_redirect"), Some(7.0), "{addr}");
    }

    // Proxy mode, and a body only its content type makes readable: both hold the same group.
    let job = r.job_of(0, "rep_proxy");
    let url = format!("{}/metrics/job/{job}", r.s.envoy.proxy_url());
    let resp = http_request(
        "PUT",
        &url,
        &[("content-type", PROTOBUF)],
        &protobuf_push("rep_proxy", 8.5),
    );
    assert_eq!(resp.status, 200, "{}", resp.body);
    for addr in [&active, &standby] {
        assert_eq!(r.value_on(addr, &job, "rep_proxy"), Some(8.5), "{addr}");
    }
    // The standby got exactly what the active got, push after push.
    let resp = http_request("POST", &url, &[], b"rep_proxy_more 9\n");
    assert_eq!(resp.status, 200, "{}", resp.body);
    for addr in [&active, &standby] {
        assert_eq!(r.value_on(addr, &job, "rep_proxy"), Some(8.5), "{addr}");
        assert_eq!(r.value_on(addr, &job, "rep_proxy_more"), Some(9.0), "{addr}");
    }

    // A slot without a standby: the push goes to its address only, nothing is replicated.
    let job = r.job_of(2, "rep_single");
    let resp = http_request(
        "PUT",
        &format!("{}/metrics/job/{job}", r.s.envoy.proxy_url()),
        &[],
        b"rep_single 1\n",
    );
    assert_eq!(resp.status, 200);
    assert_eq!(r.holders(&job), [r.slot(2)]);

    assert_eq!(r.stats(), (before.0 + 3, before.1));
    // A lookup names the standby too.
    let resp = http_request("GET", &format!("{}{path}", r.s.envoy.redirect_url()), &[], b"");
    assert_eq!(resp.header("x-sharding-owner"), Some(active.as_str()));
    assert_eq!(resp.header("x-sharding-standby"), Some(standby.as_str()));
    assert_eq!(resp.header("x-sharding-slot"), None);
    // Under the names the reference lists.
    let metrics = http_request(
        "GET",
        &format!("{}/stats/prometheus", r.s.envoy.admin_url()),
        &[],
        b"",
    );
    assert!(metrics
        .body
        .contains(&format!("dynamic_sharding_{CALLS}{{}} {}\n", before.0 + 3)));
    assert!(metrics
        .body
        .contains(&format!("dynamic_sharding_{FAILURES}{{}} {}\n", before.1)));
}

#[test]
fn a_promoted_slot_takes_its_writes_at_its_new_active_and_moves_no_group() {
    let r = Replicated::start("replication-promoted");
    let job = r.job_of(0, "rep_promoted");
    let path = format!("/metrics/job/{job}");
    r.publish(3, &r.slots(true));
    let (active, standby) = (r.standby(0), r.slot(0));

    r.push_redirected(&path, b"rep_promoted 1\n", &active);
    assert_eq!(r.holders(&job), [standby.as_str()]);
    let resp = http_request(
        "PUT",
        &format!("{}{path}", r.s.envoy.proxy_url()),
        &[],
        b"rep_promoted 2\n",
    );
    assert_eq!(resp.status, 200, "{}", resp.body);
    for addr in [&active, &standby] {
        assert_eq!(r.value_on(addr, &job, "rep_promoted"), Some(2.0), "{addr}");
    }
    let resp = http_request("GET", &format!("{}{path}", r.s.envoy.proxy_url()), &[], b"");
    assert_eq!(resp.body, format!("nextUrl:http://{active}{path}"));
    assert_eq!(resp.header("x-sharding-slot"), Some(standby.as_str()));
    // The control API shows the list as sent.
    let list = http_request(
        "GET",
        &format!("{}/-/sharding/members", r.s.envoy.control_url()),
        &[],
        b"",
    );
    assert_eq!(list.json()["slots"], r.slots(true));
    // A list from before the promotion, at the same version, is refused.
    let body = serde_json::json!({"version": 3, "members": r.s.members(), "slots": r.slots(false)});
    let refused =
        r.s.envoy
            .put_members_raw(Some(TEST_TOKEN), body.to_string().as_bytes());
    assert_eq!(refused.status, 409, "{}", refused.body);
}

#[test]
fn a_standby_down_or_frozen_does_not_fail_the_push_and_is_counted() {
    let mut r = Replicated::start("replication-down");
    let (slot, standby) = (r.slot(0), r.standby(0));
    r.standbys[0].proc.kill();
    for base in [r.s.envoy.redirect_url(), r.s.envoy.proxy_url()] {
        let job = r.job_of(0, "rep_down");
        let before = r.stats();
        let start = Instant::now();
        let resp = http_request("PUT", &format!("{base}/metrics/job/{job}"), &[], b"rep_down 1\n");
        assert!(
            resp.status == 307 || resp.status == 200,
            "{base}: {} {}",
            resp.status,
            resp.body
        );
        assert!(
            start.elapsed() < TIMEOUT,
            "{base}: a refused connection fails at once"
        );
        assert_eq!(r.stats(), (before.0 + 1, before.1 + 1), "{base}");
    }
    let log = r.s.envoy.proc.log();
    assert!(
        log.contains(&format!(
            "replication to standby {standby} of slot {slot} failed (status 503: upstream connect error"
        )),
        "{}",
        r.s.envoy.proc.log_tail(20)
    );

    // Frozen: it accepts the connection and never answers; the push waits for the timeout.
    let idx = 1;
    r.standbys[idx].proc.freeze();
    wait_stopped(r.standbys[idx].proc.pid());
    let mut took = Vec::new();
    for base in [r.s.envoy.redirect_url(), r.s.envoy.proxy_url()] {
        let job = r.job_of(1, "rep_frozen");
        let before = r.stats();
        let start = Instant::now();
        let resp = http_request(
            "PUT",
            &format!("{base}/metrics/job/{job}"),
            &[],
            b"rep_frozen 1\n",
        );
        took.push(start.elapsed());
        assert!(
            resp.status == 307 || resp.status == 200,
            "{base}: {} {}",
            resp.status,
            resp.body
        );
        assert_eq!(r.stats(), (before.0 + 1, before.1 + 1), "{base}");
    }
    r.standbys[idx].proc.thaw();
    for t in took {
        assert!(
            t >= TIMEOUT - Duration::from_millis(100) && t < TIMEOUT * 3,
            "the push took {t:?}; envoy log:\n{}",
            r.s.envoy.proc.log_tail(20)
        );
    }
    assert!(r
        .s
        .envoy
        .proc
        .log()
        .contains("failed (status 504: upstream request timeout)"));
}

#[test]
fn a_body_over_the_limit_is_pushed_but_not_replicated() {
    let r = Replicated::start("replication-large");
    // 1.5 MiB: one sample and a comment, over the default replication_body_limit of 1 MiB.
    let mut body = b"rep_large 3\n# ".to_vec();
    body.resize(1536 * 1024, b'x');
    body.push(b'\n');
    for base in [r.s.envoy.redirect_url(), r.s.envoy.proxy_url()] {
        let job = r.job_of(0, "rep_large");
        let url = format!("{base}/metrics/job/{job}");
        let before = r.stats();
        let resp = http_request("PUT", &url, &[], &body);
        assert!(
            resp.status == 307 || resp.status == 200,
            "{base}: {} {}",
            resp.status,
            resp.body
        );
        if let Some(location) = resp.header("location") {
            assert_eq!(http_request("PUT", location, &[], &body).status, 200);
        }
        assert_eq!(r.holders(&job), [r.slot(0)], "{base}");
        assert_eq!(r.value_on(&r.slot(0), &job, "rep_large"), Some(3.0));
        assert_eq!(r.stats(), (before.0 + 1, before.1 + 1), "{base}");
    }
    assert!(r
        .s
        .envoy
        .proc
        .log()
        .contains("(the body is over replication_body_limit (1048576 bytes))"));
    // A client that waits for `100 Continue` gets its 307 before it sends the body: counted.
    // (After a second: a worker logs one such warning a second per listener.)
    std::thread::sleep(Duration::from_millis(1100));
    let job = r.job_of(0, "rep_expect");
    let before = r.stats();
    let resp = http_request(
        "PUT",
        &format!("{}/metrics/job/{job}", r.s.envoy.redirect_url()),
        &[("expect", "100-continue")],
        b"rep_expect 1\n",
    );
    assert_eq!(resp.status, 307, "{}", resp.body);
    assert!(r.holders(&job).is_empty());
    assert_eq!(r.stats(), (before.0 + 1, before.1 + 1));
    assert!(r.s.envoy.proc.log().contains("Expect: 100-continue"));
    // At the limit it is replicated (a body of 1 MiB exactly).
    let mut body = b"rep_at_limit 4\n# ".to_vec();
    body.resize(1024 * 1024 - 1, b'x');
    body.push(b'\n');
    let job = r.job_of(0, "rep_at_limit");
    let resp = http_request(
        "PUT",
        &format!("{}/metrics/job/{job}", r.s.envoy.proxy_url()),
        &[],
        &body,
    );
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(r.holders(&job), [r.slot(0), r.standby(0)]);
}

#[test]
fn a_delete_reaches_the_active_and_the_standby_of_every_slot() {
    let r = Replicated::start("replication-delete");
    let job = r.job_of(0, "rep_delete");
    let path = format!("/metrics/job/{job}");
    let everywhere = || {
        for pg in r.s.pgs.iter().chain(&r.standbys) {
            assert_eq!(pg.push(&path, "rep_delete 1\n"), 200);
        }
        assert_eq!(r.holders(&job).len(), 5);
    };

    // Redirect: when the 307 arrives, only the active's copy is left for the client to delete.
    everywhere();
    let (calls, fanout) = (r.stats().0, r.s.envoy.stat("delete_fanout_calls_total"));
    let resp = http_request("DELETE", &format!("{}{path}", r.s.envoy.redirect_url()), &[], b"");
    assert_eq!(resp.status, 307, "{}", resp.body);
    assert_eq!(r.holders(&job), [r.slot(0)]);
    assert_eq!(
        http_request("DELETE", resp.header("location").unwrap(), &[], b"").status,
        202
    );
    assert!(r.holders(&job).is_empty());
    // The standby as the replica, the other slots' two and one addresses by the fan-out.
    assert_eq!(r.stats().0 - calls, 1);
    assert_eq!(r.s.envoy.stat("delete_fanout_calls_total") - fanout, 3);

    // Proxy: one request, every copy gone when it is answered.
    everywhere();
    let resp = http_request("DELETE", &format!("{}{path}", r.s.envoy.proxy_url()), &[], b"");
    assert_eq!(resp.status, 202, "{}", resp.body);
    assert!(r.holders(&job).is_empty());
    assert_eq!(r.stats().1, 0);
}
