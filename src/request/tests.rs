//! The request rules, one test each, through the [`FakeHost`] double.

use super::testing::{Done, FakeHost, Sent};
use super::*;
use crate::config::Config;
use crate::members::{Member, MemberList};
use crate::store::{bump_generation, SharedStore, MEMBERS_KEY};
use std::time::Duration;

const DEST: &str = "x-sharding-destination";
const TOKEN: &str = "s3cret";
const MEMBERS: [&str; 3] = ["10.0.0.1:9091", "10.0.0.2:9091", "10.0.0.3:9091"];
const PATH: &str = "/metrics/job/j/instance/i";

type TestListener = Rc<Listener<FakeHost>>;

fn listener(mode: &str, members: &[&str]) -> TestListener {
    let json = serde_json::json!({ "mode": mode, "members": members, "control_token": TOKEN });
    let config = Config::parse(json.to_string().as_bytes(), |_| None).unwrap();
    Rc::new(Listener::start(config, FakeHost::default()))
}

fn request(l: &TestListener, headers: &[(&str, &str)]) -> Request<FakeHost> {
    l.host().set_headers(headers);
    Request::new(Rc::clone(l))
}

fn push<'a>(method: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (":method", method),
        (":path", path),
        (":authority", "sharding.example"),
        (":scheme", "http"),
    ]
}

/// The member `path`'s group belongs to, by the listener's own ring.
fn owner(l: &TestListener, path: &str) -> String {
    let view = l.view().unwrap();
    match routing::decide(Mode::Proxy, "PUT", path, view.ring(), view.list()) {
        Decision::Route { owner } => owner.to_string(),
        other => panic!("no owner for {path}: {other:?}"),
    }
}

fn location(reply: &Reply) -> Option<&str> {
    reply.headers.get("location")
}

/// Stores `list` as the control listener of another worker would, and counts it.
fn publish(host: &FakeHost, list: &MemberList) {
    store(host, list);
    host.add_to_stat(Stat::UpdatesAccepted, 1);
}

/// Stores `list` (without counting it).
fn store(host: &FakeHost, list: &MemberList) {
    let mut shared = host.shared.borrow_mut();
    shared
        .store
        .set(MEMBERS_KEY, list.to_json().as_bytes(), None)
        .unwrap();
    bump_generation(&mut shared.store).unwrap();
}

/// Where a push of `PATH` is redirected to now.
fn redirected_to(l: &TestListener) -> String {
    request(l, &push("PUT", PATH)).on_headers(true);
    let replies = l.host().replies();
    let url = location(&replies[0]).unwrap();
    url.strip_prefix("http://")
        .and_then(|u| u.strip_suffix(PATH))
        .unwrap()
        .to_owned()
}

fn reads(host: &FakeHost) -> usize {
    host.shared.borrow().reads.get()
}

/// Asserts that a warning or an error containing `text` was logged.
fn assert_warned(host: &FakeHost, text: &str) {
    let logs = warnings(host);
    assert!(
        logs.iter().any(|m| m.contains(text)),
        "no warning with {text:?} in {logs:?}"
    );
}

fn warnings(host: &FakeHost) -> Vec<String> {
    host.logs()
        .into_iter()
        .filter(|(level, _)| *level <= log::Level::Warn)
        .map(|(_, m)| m)
        .collect()
}

// ---- data listeners: what is answered, when ----

#[test]
fn proxy_mode_removes_a_destination_header_the_client_sent_before_anything_else() {
    let l = listener("proxy", &MEMBERS);
    let mut headers = push("PUT", PATH);
    headers.push((DEST, "evil.example:80"));
    let mut r = request(&l, &headers);
    assert_eq!(r.on_headers(true), Action::Continue);
    let owner = owner(&l, PATH);
    assert_eq!(
        l.host().take(),
        [
            Done::RemoveHeader(DEST.into()),
            Done::SetHeader(DEST.into(), owner.clone())
        ]
    );
    assert_eq!(l.host().header(DEST), Some(owner));

    // Not sent: nothing to remove, and no host call to find that out.
    request(&l, &push("PUT", PATH)).on_headers(true);
    assert!(!l.host().take().contains(&Done::RemoveHeader(DEST.into())));
    // Even on a path this filter does not handle, the client may not name the destination.
    let mut foreign = push("GET", "/api/v1/metrics");
    foreign.push((DEST, "evil.example:80"));
    assert_eq!(request(&l, &foreign).on_headers(true), Action::Continue);
    assert_eq!(l.host().take(), [Done::RemoveHeader(DEST.into())]);
}

#[test]
fn redirect_mode_leaves_the_destination_header_alone() {
    let l = listener("redirect", &MEMBERS);
    let mut headers = push("PUT", PATH);
    headers.push((DEST, "evil.example:80"));
    request(&l, &headers).on_headers(true);
    let done = l.host().take();
    assert!(
        matches!(done.as_slice(), [Done::Reply(r)] if r.status == 307),
        "{done:?}"
    );
}

#[test]
fn a_request_without_method_or_path_goes_on_untouched() {
    let l = listener("redirect", &MEMBERS);
    let mut r = request(&l, &[(":path", PATH)]);
    assert_eq!(r.on_headers(false), Action::Continue);
    assert_eq!(r.on_body(10, true), Action::Continue);
    assert_eq!(l.host().take(), []);
    assert_eq!(l.host().stat_value(Stat::Redirects), 0);
}

#[test]
fn a_foreign_path_passes_through_untouched() {
    let l = listener("redirect", &MEMBERS);
    let mut r = request(&l, &push("GET", "/api/v1/metrics"));
    assert_eq!(r.on_headers(false), Action::Continue);
    assert_eq!(r.on_body(10, false), Action::Continue);
    assert_eq!(r.on_trailers(), Action::Continue);
    assert_eq!(l.host().take(), []);
    let counted: u64 = Stat::ALL
        .iter()
        .filter(|s| !s.is_gauge())
        .map(|s| l.host().stat_value(*s))
        .sum();
    assert_eq!(counted, 0);
}

#[test]
fn a_push_with_a_body_is_answered_at_its_end_and_its_chunks_are_dropped() {
    let l = listener("redirect", &MEMBERS);
    let mut r = request(&l, &push("PUT", "/metrics/job/j?x=1"));
    // The headers go on to the buffer filter; the answer waits for the body.
    assert_eq!(r.on_headers(false), Action::Continue);
    assert_eq!(l.host().take(), []);
    assert_eq!(r.on_body(5, false), Action::Continue);
    assert_eq!(r.on_body(0, false), Action::Continue);
    assert_eq!(r.on_body(7, false), Action::Continue);
    assert_eq!(l.host().take(), [Done::DropBody(5), Done::DropBody(7)]);
    assert_eq!(r.on_body(3, true), Action::Pause);
    let replies = l.host().replies();
    let owner = owner(&l, "/metrics/job/j");
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].status, 307);
    let expected = format!("http://{owner}/metrics/job/j?x=1");
    assert_eq!(location(&replies[0]), Some(expected.as_str()));
    assert_eq!(l.host().stat_value(Stat::Redirects), 1);
}

#[test]
fn a_push_without_a_body_is_answered_at_once() {
    let l = listener("redirect", &MEMBERS);
    let mut r = request(&l, &push("POST", PATH));
    assert_eq!(r.on_headers(true), Action::Pause);
    assert_eq!(l.host().replies().len(), 1);
}

#[test]
fn proxy_mode_answers_at_once_even_with_a_body_coming() {
    let l = listener("proxy", &MEMBERS);
    // A refused path and a lookup: both answered from the headers.
    for (method, path, status) in [("PUT", "/metrics/job/j/odd", 400), ("GET", PATH, 200)] {
        let mut r = request(&l, &push(method, path));
        assert_eq!(r.on_headers(false), Action::Pause, "{method} {path}");
        let replies = l.host().replies();
        assert_eq!(replies.len(), 1, "{method} {path}");
        assert_eq!(replies[0].status, status);
        assert_eq!(r.on_body(4, true), Action::Continue, "answered already");
        assert_eq!(l.host().take(), []);
    }
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let l = listener("redirect", &MEMBERS);
    let mut headers = push("PUT", PATH);
    headers.push(("expect", "100-Continue"));
    let mut r = request(&l, &headers);
    assert_eq!(r.on_headers(false), Action::Pause);
    assert_eq!(l.host().replies().len(), 1);
    // Any other expectation is not one: the answer waits for the body.
    let mut headers = push("PUT", PATH);
    headers.push(("expect", "something-else"));
    assert_eq!(request(&l, &headers).on_headers(false), Action::Continue);
    assert_eq!(l.host().take(), []);
}

#[test]
fn trailers_end_a_body_the_answer_waited_for() {
    let l = listener("redirect", &MEMBERS);
    let mut r = request(&l, &push("PUT", PATH));
    r.on_headers(false);
    r.on_body(4, false);
    l.host().take();
    assert_eq!(r.on_trailers(), Action::Pause);
    assert_eq!(l.host().replies().len(), 1);
    assert_eq!(r.on_trailers(), Action::Continue, "answered once");
    assert_eq!(l.host().take(), []);
}

#[test]
fn a_body_chunk_that_cannot_be_dropped_is_answered_500_once() {
    let l = listener("redirect", &MEMBERS);
    l.host().fail("drop_request_body", 2);
    let mut r = request(&l, &push("PUT", PATH));
    r.on_headers(false);
    assert_eq!(r.on_body(4, false), Action::Pause);
    let replies = l.host().replies();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].status, 500);
    assert!(replies[0].body.contains("internal error"), "{}", replies[0].body);
    assert_eq!(l.host().stat_value(Stat::HostErrors), 1);
    // The 307 that waited is gone: nothing more is sent at the end of the body.
    assert_eq!(r.on_body(4, true), Action::Continue);
    assert_eq!(l.host().take(), []);
}

#[test]
fn proxy_mode_routes_a_push_to_its_owner() {
    let l = listener("proxy", &MEMBERS);
    let mut r = request(&l, &push("PUT", PATH));
    assert_eq!(r.on_headers(false), Action::Continue);
    assert_eq!(l.host().take(), [Done::SetHeader(DEST.into(), owner(&l, PATH))]);
    assert_eq!(l.host().stat_value(Stat::Proxied), 1);
    assert_eq!(r.on_body(4, true), Action::Continue, "the body goes upstream");
    assert_eq!(l.host().take(), []);
}

#[test]
fn each_answer_is_counted_by_what_it_was() {
    let l = listener("redirect", &MEMBERS);
    for (method, path) in [
        ("PUT", PATH),
        ("GET", PATH),
        ("HEAD", PATH),
        ("PUT", "/metrics/job/j/odd"),
        ("PATCH", PATH),
    ] {
        request(&l, &push(method, path)).on_headers(true);
    }
    let h = l.host();
    assert_eq!(
        [
            Stat::Redirects,
            Stat::Lookups,
            Stat::BadRequests,
            Stat::NoMember,
            Stat::Proxied
        ]
        .map(|s| h.stat_value(s)),
        [1, 2, 2, 0, 0]
    );
    let empty = listener("redirect", &[]);
    request(&empty, &push("PUT", PATH)).on_headers(true);
    assert_eq!(empty.host().replies()[0].status, 503);
    assert_eq!(empty.host().stat_value(Stat::NoMember), 1);
}

#[test]
fn a_host_error_on_the_request_path_is_answered_500_and_counted() {
    for (mode, call) in [
        ("redirect", "request_headers"),
        ("proxy", "set_request_header"),
        ("control", "request_headers"),
    ] {
        let l = listener(mode, &MEMBERS);
        l.host().fail(call, 2);
        let headers = match mode {
            "control" => push("GET", control::MEMBERS_PATH),
            _ => push("PUT", PATH),
        };
        assert_eq!(request(&l, &headers).on_headers(false), Action::Pause, "{mode}");
        let replies = l.host().replies();
        assert_eq!(replies.len(), 1, "{mode}");
        assert_eq!(replies[0].status, 500, "{mode}");
        assert_eq!(l.host().stat_value(Stat::HostErrors), 1, "{mode}");
        assert_warned(l.host(), call);
    }
}

#[test]
fn a_reply_that_cannot_be_sent_is_counted_and_logged() {
    let l = listener("redirect", &MEMBERS);
    l.host().fail("send_reply", 2);
    assert_eq!(request(&l, &push("PUT", PATH)).on_headers(true), Action::Pause);
    assert_eq!(l.host().stat_value(Stat::HostErrors), 1);
    assert_warned(l.host(), "could not send the 307 reply");
}

// ---- the member list: catching up with updates ----

#[test]
fn an_update_counted_on_any_worker_is_used_by_the_next_request() {
    let l = listener("redirect", &["10.0.0.1:9091"]);
    assert_eq!(redirected_to(&l), "10.0.0.1:9091");
    publish(l.host(), &MemberList::new(7, &["10.9.9.9:9091"]).unwrap());
    assert_eq!(redirected_to(&l), "10.9.9.9:9091");
    // The change is logged and shown in the gauges.
    assert_eq!(l.host().stat_value(Stat::Members), 1);
    assert_eq!(l.host().stat_value(Stat::MembersVersion), 7);
    let logs = l.host().logs();
    assert!(
        logs.iter()
            .any(|(_, m)| m.contains("worker now uses member list version 7")),
        "{logs:?}"
    );
}

#[test]
fn the_member_list_is_read_only_when_the_update_count_moved() {
    let l = listener("redirect", &MEMBERS);
    request(&l, &push("PUT", PATH)).on_headers(true);
    let before = reads(l.host());
    for _ in 0..3 {
        request(&l, &push("PUT", PATH)).on_headers(true);
    }
    assert_eq!(reads(l.host()), before, "no update: no shared-data read");
    l.host().add_to_stat(Stat::UpdatesAccepted, 1);
    request(&l, &push("PUT", PATH)).on_headers(true);
    assert!(reads(l.host()) > before);
}

#[test]
fn an_unreadable_update_count_reads_the_member_list_every_time() {
    let l = listener("redirect", &["10.0.0.1:9091"]);
    l.host().fail("stat", 2);
    assert_eq!(redirected_to(&l), "10.0.0.1:9091");
    // Stored but, as far as this worker can tell, not counted: found all the same.
    store(l.host(), &MemberList::new(7, &["10.9.9.9:9091"]).unwrap());
    assert_eq!(redirected_to(&l), "10.9.9.9:9091");
}

#[test]
fn a_member_list_that_could_not_be_read_is_read_again_by_the_next_request() {
    let l = listener("redirect", &["10.0.0.1:9091"]);
    publish(l.host(), &MemberList::new(7, &["10.9.9.9:9091"]).unwrap());
    l.host().shared.borrow_mut().broken = true;
    // The request is still answered, with the list the worker had.
    assert_eq!(redirected_to(&l), "10.0.0.1:9091");
    assert_eq!(l.host().stat_value(Stat::HostErrors), 1);
    assert_warned(l.host(), "keeping the current one");
    // The count has not moved since, but the update was never read: it is now.
    l.host().shared.borrow_mut().broken = false;
    assert_eq!(redirected_to(&l), "10.9.9.9:9091");
}

#[test]
fn start_reads_the_stored_list_and_sets_the_gauges() {
    let l = listener("redirect", &MEMBERS);
    assert_eq!(l.host().stat_value(Stat::Members), 3, "bootstrap members");
    assert_eq!(l.host().stat_value(Stat::MembersVersion), 0);
    // A listener started after an update (a new worker, a reloaded configuration) uses it.
    let config = l.config.clone();
    let host = FakeHost::default();
    publish(&host, &MemberList::new(9, &["10.9.9.9:9091"]).unwrap());
    let later = Rc::new(Listener::start(config, host));
    assert_eq!(later.host().stat_value(Stat::Members), 1);
    assert_eq!(later.host().stat_value(Stat::MembersVersion), 9);
    assert_eq!(owner(&later, PATH), "10.9.9.9:9091");
}

#[test]
fn the_tick_refreshes_data_listeners_only() {
    for (mode, refreshed) in [("redirect", true), ("proxy", true), ("control", false)] {
        let l = listener(mode, &MEMBERS);
        publish(l.host(), &MemberList::new(7, &["10.9.9.9:9091"]).unwrap());
        let before = reads(l.host());
        l.tick();
        assert_eq!(reads(l.host()) > before, refreshed, "{mode}");
        assert_eq!(
            l.host().stat_value(Stat::MembersVersion) == 7,
            refreshed,
            "{mode}"
        );
    }
}

#[test]
fn a_control_listener_without_a_token_warns_at_start() {
    let config = Config::parse(br#"{"mode": "control"}"#, |_| None).unwrap();
    let l = Listener::start(config, FakeHost::default());
    assert_warned(l.host(), "every member update will be refused");
}

// ---- DELETE: the copies elsewhere go first ----

/// A redirect or proxy listener whose list has the three members and one draining pushgateway.
fn with_draining(mode: &str) -> TestListener {
    let l = listener(mode, &MEMBERS);
    let list = MemberList::new(1, &MEMBERS)
        .and_then(|m| m.with_draining(&["10.0.0.9:9091"]))
        .unwrap();
    publish(l.host(), &list);
    l
}

/// Every holder but `path`'s owner.
fn others(l: &TestListener, path: &str) -> Vec<String> {
    let owner = owner(l, path);
    MEMBERS
        .iter()
        .chain(&["10.0.0.9:9091"])
        .filter(|m| **m != owner)
        .map(|m| (*m).to_owned())
        .collect()
}

fn answer(l: &TestListener, r: &mut Request<FakeHost>, call: &Sent, status: &str) {
    l.host().set_response(&[(":status", status)]);
    r.on_call_response(call.token, 1);
}

#[test]
fn a_delete_goes_to_every_other_holder_with_only_the_headers_it_needs() {
    let l = with_draining("redirect");
    let path = "/metrics/job/j/instance/i?x=1";
    let mut headers = push("DELETE", path);
    headers.extend([
        ("authorization", "Basic dTpw"),
        ("cookie", "c=1"),
        (DEST, "evil:1"),
    ]);
    let mut r = request(&l, &headers);
    assert_eq!(r.on_headers(true), Action::Pause);
    let sent = l.host().sent();
    let targets = others(&l, PATH);
    assert_eq!(sent.len(), targets.len());
    for (call, member) in sent.iter().zip(&targets) {
        assert_eq!(call.cluster, FANOUT_CLUSTER);
        assert_eq!(call.timeout, FANOUT_TIMEOUT);
        let expected: Vec<(String, String)> = [
            (":method", "DELETE"),
            (":path", path),
            (":authority", member.as_str()),
            (":scheme", "http"),
            (DEST, member.as_str()),
            ("authorization", "Basic dTpw"),
        ]
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(call.headers, expected);
    }
    assert_eq!(l.host().stat_value(Stat::FanoutCalls), targets.len() as u64);
    // Without credentials, none are made up.
    request(&l, &push("DELETE", PATH)).on_headers(true);
    let sent = l.host().sent();
    assert!(!sent.is_empty() && sent.iter().all(|c| c.header("authorization").is_none()));
}

#[test]
fn only_a_delete_fans_out() {
    let l = with_draining("redirect");
    for method in ["PUT", "POST", "GET"] {
        request(&l, &push(method, PATH)).on_headers(true);
        assert_eq!(l.host().sent(), [], "{method}");
    }
}

#[test]
fn a_redirected_delete_is_answered_only_after_every_call_answered() {
    let l = with_draining("redirect");
    let mut r = request(&l, &push("DELETE", PATH));
    assert_eq!(r.on_headers(true), Action::Pause);
    let sent = l.host().sent();
    assert!(sent.len() >= 2);
    // Answers come in any order; the 307 waits for the last.
    for call in sent.iter().skip(1).rev() {
        answer(&l, &mut r, call, "202");
        assert_eq!(l.host().take(), [], "answered before the last call");
    }
    answer(&l, &mut r, &sent[0], "202");
    let replies = l.host().replies();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].status, 307);
    assert_eq!(l.host().stat_value(Stat::FanoutFailures), 0);
}

#[test]
fn a_proxied_delete_goes_on_to_its_owner_only_after_every_call_answered() {
    let l = with_draining("proxy");
    let mut r = request(&l, &push("DELETE", PATH));
    assert_eq!(r.on_headers(false), Action::Pause, "held, body included");
    let done = l.host().take();
    assert!(done.contains(&Done::SetHeader(DEST.into(), owner(&l, PATH))));
    let sent: Vec<Sent> = done
        .into_iter()
        .filter_map(|d| match d {
            Done::Call(s) => Some(s),
            _ => None,
        })
        .collect();
    for call in &sent[1..] {
        answer(&l, &mut r, call, "202");
    }
    assert_eq!(l.host().take(), []);
    answer(&l, &mut r, &sent[0], "202");
    assert_eq!(l.host().take(), [Done::Resume]);
}

#[test]
fn a_call_that_fails_is_counted_and_logged_and_holds_nothing_up() {
    let l = with_draining("redirect");
    let mut r = request(&l, &push("DELETE", PATH));
    r.on_headers(true);
    let sent = l.host().sent();
    assert_eq!(sent.len(), 3);
    answer(&l, &mut r, &sent[0], "500");
    r.on_call_response(sent[1].token, 0);
    assert_eq!(l.host().stat_value(Stat::FanoutFailures), 2);
    let logs = warnings(l.host());
    let failed = |member: &str, what: &str| {
        logs.iter().any(|m| {
            m.contains(&format!("DELETE fan-out to {member} failed ({what})"))
                && m.contains("a tombstone keeps the DELETE")
        })
    };
    let member = |call: &Sent| call.header(DEST).unwrap().to_owned();
    assert!(failed(&member(&sent[0]), "status 500"), "{logs:?}");
    assert!(failed(&member(&sent[1]), "no answer"), "{logs:?}");
    answer(&l, &mut r, &sent[2], "202");
    assert_eq!(l.host().replies().len(), 1, "the client still gets its answer");
}

#[test]
fn every_2xx_answer_is_a_success_and_nothing_else_is() {
    for (status, failed) in [
        ("200", false),
        ("202", false),
        ("299", false),
        ("199", true),
        ("300", true),
        ("404", true),
        ("garbage", true),
    ] {
        let l = with_draining("redirect");
        let mut r = request(&l, &push("DELETE", PATH));
        r.on_headers(true);
        let sent = l.host().sent();
        answer(&l, &mut r, &sent[0], status);
        assert_eq!(
            l.host().stat_value(Stat::FanoutFailures),
            u64::from(failed),
            "status {status}"
        );
    }
}

#[test]
fn an_unknown_or_repeated_token_changes_nothing() {
    let l = with_draining("redirect");
    let mut r = request(&l, &push("DELETE", PATH));
    r.on_headers(true);
    let sent = l.host().sent();
    l.host().set_response(&[(":status", "500")]);
    r.on_call_response(9999, 1);
    answer(&l, &mut r, &sent[0], "202");
    answer(&l, &mut r, &sent[0], "202");
    answer(&l, &mut r, &sent[1], "202");
    assert_eq!(l.host().take(), [], "one call is still in flight");
    assert_eq!(l.host().stat_value(Stat::FanoutFailures), 0);
    answer(&l, &mut r, &sent[2], "202");
    assert_eq!(l.host().replies().len(), 1);
}

#[test]
fn calls_answered_before_the_body_ended_let_the_answer_go_at_its_end() {
    let l = with_draining("redirect");
    let mut r = request(&l, &push("DELETE", PATH));
    assert_eq!(r.on_headers(false), Action::Continue);
    let sent = l.host().sent();
    for call in &sent {
        answer(&l, &mut r, call, "202");
    }
    assert_eq!(l.host().take(), [], "nothing to answer before the body ended");
    assert_eq!(r.on_body(4, true), Action::Pause);
    assert_eq!(l.host().replies().len(), 1);
}

#[test]
fn calls_in_flight_at_the_end_of_the_body_hold_the_answer() {
    let l = with_draining("redirect");
    let mut r = request(&l, &push("DELETE", PATH));
    r.on_headers(false);
    let sent = l.host().sent();
    assert_eq!(r.on_body(4, true), Action::Pause);
    // Nothing is held while the answer waits: the last chunk too is dropped.
    assert_eq!(l.host().take(), [Done::DropBody(4)]);
    for call in &sent {
        answer(&l, &mut r, call, "202");
    }
    assert_eq!(l.host().replies().len(), 1);
}

#[test]
fn a_call_the_host_refuses_is_counted_and_holds_nothing_up() {
    for (status, why) in [
        (
            host::INTERNAL_FAILURE,
            "cluster pushgateway_owner found no host for it",
        ),
        (host::BAD_ARGUMENT, "cluster pushgateway_owner is not configured"),
        (7, "host call dispatch_http_call failed with status 7"),
    ] {
        let l = with_draining("proxy");
        l.host().fail("dispatch_http_call", status);
        let mut r = request(&l, &push("DELETE", PATH));
        // Nothing in flight: on to the owner now, with no resume call.
        assert_eq!(r.on_headers(false), Action::Continue, "{why}");
        assert_eq!(l.host().take(), [Done::SetHeader(DEST.into(), owner(&l, PATH))]);
        assert_eq!(l.host().stat_value(Stat::FanoutCalls), 3);
        assert_eq!(l.host().stat_value(Stat::FanoutFailures), 3);
        let logs = warnings(l.host());
        assert_eq!(logs.iter().filter(|m| m.contains(why)).count(), 3, "{logs:?}");
    }
}

#[test]
fn a_delete_that_cannot_go_on_after_its_calls_is_counted_and_logged() {
    let l = with_draining("proxy");
    l.host().fail("resume_request", 2);
    let mut r = request(&l, &push("DELETE", PATH));
    r.on_headers(true);
    for call in l.host().sent() {
        answer(&l, &mut r, &call, "202");
    }
    assert_eq!(l.host().stat_value(Stat::HostErrors), 1);
    assert_warned(l.host(), "could not resume the request after its calls");
}

#[test]
fn answers_after_the_request_was_refused_do_nothing() {
    let l = with_draining("proxy");
    l.host().fail("set_request_header", 2);
    let mut r = request(&l, &push("DELETE", PATH));
    assert_eq!(r.on_headers(false), Action::Pause);
    let done = l.host().take();
    let replies: Vec<&Done> = done.iter().filter(|d| matches!(d, Done::Reply(_))).collect();
    assert_eq!(replies.len(), 1);
    for d in &done {
        if let Done::Call(call) = d {
            answer(&l, &mut r, call, "202");
        }
    }
    assert_eq!(l.host().take(), [], "no second answer, no resume");
}

// ---- replication: every write to a slot with a standby reaches the standby too ----

/// The three slots of [`MEMBERS`]: the first promoted (served at `10.0.1.1`, its old address now
/// its standby), the second with a standby at `10.0.1.2`, the third without one; and a draining
/// slot with a standby.
fn slotted_list() -> MemberList {
    MemberList::new(2, &MEMBERS)
        .and_then(|l| l.with_draining(&["10.0.0.9:9091"]))
        .and_then(|l| {
            l.with_slots([
                ("10.0.0.1:9091", "10.0.1.1:9091", Some("10.0.0.1:9091")),
                ("10.0.0.2:9091", "10.0.0.2:9091", Some("10.0.1.2:9091")),
                ("10.0.0.9:9091", "10.0.0.9:9091", Some("10.0.1.9:9091")),
            ])
        })
        .unwrap()
}

/// A data listener routing with [`slotted_list`], replication settings in `extra` (JSON fields).
fn slotted(mode: &str, extra: serde_json::Value) -> TestListener {
    let mut json = serde_json::json!({ "mode": mode, "members": MEMBERS, "control_token": TOKEN });
    if let (Some(config), Some(extra)) = (json.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    let config = Config::parse(json.to_string().as_bytes(), |_| None).unwrap();
    let l = Rc::new(Listener::start(config, FakeHost::default()));
    publish(l.host(), &slotted_list());
    l
}

/// A push path of a group that slot `slot` owns.
fn owned_by(l: &TestListener, slot: &str) -> String {
    let view = l.view().unwrap();
    (0..10_000)
        .map(|i| format!("/metrics/job/r{i}/instance/i"))
        .find(|p| {
            let hash = crate::grouping_key::GroupingKey::from_path(p).unwrap().hash();
            view.ring().owner(hash).unwrap().as_str() == slot
        })
        .unwrap()
}

/// Slot `10.0.0.2:9091`: served at its name, standby `10.0.1.2:9091`.
const SLOT: &str = "10.0.0.2:9091";
const STANDBY: &str = "10.0.1.2:9091";

fn calls_of(done: &[Done]) -> Vec<Sent> {
    done.iter()
        .filter_map(|d| match d {
            Done::Call(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// Asserts that a push whose body ended with `end` went on as an unreplicated one: nothing of
/// its body read, no call, and its 307 sent (redirect) or its body on to the active (proxy).
fn went_on_uncopied(host: &FakeHost, mode: &str, end: Action) {
    let done = host.take();
    assert!(
        !done
            .iter()
            .any(|d| matches!(d, Done::Call(_) | Done::ReadBody { .. })),
        "{mode}: {done:?}"
    );
    match mode {
        "redirect" => {
            assert_eq!(end, Action::Pause);
            assert!(done
                .iter()
                .any(|d| matches!(d, Done::Reply(r) if r.status == 307)));
        }
        _ => assert_eq!(end, Action::Continue),
    }
}

fn replication_stats(l: &TestListener) -> (u64, u64) {
    (
        l.host().stat_value(Stat::Replications),
        l.host().stat_value(Stat::ReplicationFailures),
    )
}

#[test]
fn a_redirected_push_is_copied_to_the_standby_before_its_307() {
    let l = slotted("redirect", serde_json::json!({}));
    let path = format!("{}?x=1", owned_by(&l, SLOT));
    let mut headers = push("PUT", &path);
    headers.extend([
        ("content-type", "text/plain; version=0.0.4"),
        ("authorization", "Basic dTpw"),
        ("cookie", "c=1"),
    ]);
    let mut r = request(&l, &headers);
    assert_eq!(r.on_headers(false), Action::Continue);
    assert_eq!(l.host().take(), []);
    // Each chunk is read, then dropped as before.
    *l.host().body.borrow_mut() = b"m 1\n".to_vec();
    assert_eq!(r.on_body(4, false), Action::Continue);
    assert_eq!(
        l.host().take(),
        [Done::ReadBody { start: 0, max: 4 }, Done::DropBody(4)]
    );
    *l.host().body.borrow_mut() = b"n 2\n".to_vec();
    assert_eq!(r.on_body(4, true), Action::Pause);
    let done = l.host().take();
    let calls = calls_of(&done);
    assert_eq!(calls.len(), 1, "{done:?}");
    assert!(!done.iter().any(|d| matches!(d, Done::Reply(_))), "the 307 waits");
    assert_eq!(done.last(), Some(&Done::DropBody(4)), "nothing held meanwhile");
    let call = &calls[0];
    assert_eq!(call.cluster, FANOUT_CLUSTER);
    assert_eq!(call.timeout, Duration::from_secs(2));
    assert_eq!(call.body, b"m 1\nn 2\n");
    let expected: Vec<(String, String)> = [
        (":method", "PUT"),
        (":path", path.as_str()),
        (":authority", STANDBY),
        (":scheme", "http"),
        (DEST, STANDBY),
        ("content-type", "text/plain; version=0.0.4"),
        ("authorization", "Basic dTpw"),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(call.headers, expected);
    answer(&l, &mut r, call, "200");
    let replies = l.host().replies();
    assert_eq!(replies.len(), 1);
    assert_eq!(
        location(&replies[0]),
        Some(format!("http://{SLOT}{path}").as_str())
    );
    assert_eq!(replication_stats(&l), (1, 0));
}

#[test]
fn a_push_goes_to_the_active_of_a_promoted_slot_and_its_copy_to_the_old_active() {
    let l = slotted("redirect", serde_json::json!({}));
    let path = owned_by(&l, "10.0.0.1:9091");
    let mut r = request(&l, &push("POST", &path));
    assert_eq!(r.on_headers(true), Action::Pause);
    let calls = l.host().sent();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].header(DEST), Some("10.0.0.1:9091"));
    assert_eq!(calls[0].header(":method"), Some("POST"));
    assert!(calls[0].body.is_empty());
    answer(&l, &mut r, &calls[0], "202");
    let replies = l.host().replies();
    assert_eq!(
        location(&replies[0]),
        Some(format!("http://10.0.1.1:9091{path}").as_str())
    );
    // Proxy mode routes it there too.
    let l = slotted("proxy", serde_json::json!({}));
    request(&l, &push("PUT", &path)).on_headers(false);
    assert_eq!(
        l.host().take(),
        [Done::SetHeader(DEST.into(), "10.0.1.1:9091".into())]
    );
}

#[test]
fn a_slot_without_a_standby_costs_a_push_nothing_more() {
    for mode in ["redirect", "proxy"] {
        let l = slotted(mode, serde_json::json!({}));
        let path = owned_by(&l, "10.0.0.3:9091");
        let mut r = request(&l, &push("PUT", &path));
        r.on_headers(false);
        r.on_body(4, false);
        let end = r.on_body(4, true);
        went_on_uncopied(l.host(), mode, end);
        assert_eq!(replication_stats(&l), (0, 0), "{mode}");
    }
}

#[test]
fn a_proxied_push_ends_at_the_active_only_after_the_standby_answered() {
    let l = slotted("proxy", serde_json::json!({}));
    let path = owned_by(&l, SLOT);
    let mut r = request(&l, &push("PUT", &path));
    assert_eq!(r.on_headers(false), Action::Continue, "streams to the active");
    assert_eq!(l.host().take(), [Done::SetHeader(DEST.into(), SLOT.into())]);
    *l.host().body.borrow_mut() = b"m 1\n".to_vec();
    assert_eq!(r.on_body(4, false), Action::Continue, "on to the active");
    assert_eq!(l.host().take(), [Done::ReadBody { start: 0, max: 4 }]);
    *l.host().body.borrow_mut() = b"n 2\n".to_vec();
    assert_eq!(r.on_body(4, true), Action::Pause, "the end of the body waits");
    let calls = l.host().sent();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body, b"m 1\nn 2\n");
    assert_eq!(calls[0].header(DEST), Some(STANDBY));
    answer(&l, &mut r, &calls[0], "202");
    assert_eq!(l.host().take(), [Done::Resume]);
    assert_eq!(replication_stats(&l), (1, 0));
}

#[test]
fn a_proxied_push_holds_the_chunk_that_completes_its_declared_length() {
    let l = slotted("proxy", serde_json::json!({}));
    let path = owned_by(&l, SLOT);
    let mut headers = push("PUT", &path);
    headers.push(("content-length", "8"));
    let mut r = request(&l, &headers);
    assert_eq!(r.on_headers(false), Action::Continue);
    *l.host().body.borrow_mut() = b"m 1\n".to_vec();
    assert_eq!(r.on_body(4, false), Action::Continue);
    *l.host().body.borrow_mut() = b"n 2\n".to_vec();
    // The active would answer on these bytes alone: they wait for the standby.
    assert_eq!(r.on_body(4, false), Action::Pause);
    let calls = calls_of(&l.host().take());
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body, b"m 1\nn 2\n");
    // What comes while they are held is held too, and not copied again.
    assert_eq!(r.on_body(8, true), Action::Pause);
    assert_eq!(r.on_trailers(), Action::Pause);
    assert_eq!(l.host().take(), []);
    answer(&l, &mut r, &calls[0], "200");
    assert_eq!(l.host().take(), [Done::Resume]);
    // After the resume, anything later goes on untouched.
    assert_eq!(r.on_body(0, true), Action::Continue);
    assert_eq!(l.host().take(), []);
    assert_eq!(replication_stats(&l), (1, 0));
}

#[test]
fn a_body_less_proxied_write_goes_on_once_the_standby_answered() {
    let l = slotted("proxy", serde_json::json!({}));
    let path = owned_by(&l, SLOT);
    let mut r = request(&l, &push("PUT", &path));
    assert_eq!(r.on_headers(true), Action::Pause);
    let done = l.host().take();
    let calls = calls_of(&done);
    assert_eq!(calls.len(), 1, "{done:?}");
    r.on_call_response(calls[0].token, 0);
    assert_eq!(l.host().take(), [Done::Resume]);
    assert_eq!(replication_stats(&l), (1, 1));
}

#[test]
fn a_standby_that_fails_does_not_fail_the_push() {
    for (status, body, reason) in [
        (Some("500"), "", "(status 500)"),
        (
            Some("400"),
            "text format parsing error in line 1: invalid metric name\nmore",
            "(status 400: text format parsing error in line 1: invalid metric name)",
        ),
        // What Envoy answers itself when replication_timeout passed.
        (
            Some("504"),
            "upstream request timeout",
            "(status 504: upstream request timeout)",
        ),
        (None, "", "(no answer)"),
    ] {
        for mode in ["redirect", "proxy"] {
            let l = slotted(mode, serde_json::json!({}));
            let path = owned_by(&l, SLOT);
            let mut r = request(&l, &push("PUT", &path));
            r.on_headers(false);
            r.on_body(4, true);
            let calls = l.host().sent();
            *l.host().response_body.borrow_mut() = body.as_bytes().to_vec();
            match status {
                Some(s) => answer(&l, &mut r, &calls[0], s),
                None => r.on_call_response(calls[0].token, 0),
            }
            let done = l.host().take();
            let carried_on = match mode {
                "redirect" => matches!(done.as_slice(), [Done::Reply(r)] if r.status == 307),
                _ => done == [Done::Resume],
            };
            assert!(carried_on, "{mode} {reason}: {done:?}");
            assert_eq!(replication_stats(&l), (1, 1), "{mode} {reason}");
            assert_warned(
                l.host(),
                &format!("replication to standby {STANDBY} of slot {SLOT} failed {reason}"),
            );
        }
    }
}

#[test]
fn a_body_over_the_limit_is_not_copied_and_the_push_goes_on() {
    for mode in ["redirect", "proxy"] {
        let l = slotted(mode, serde_json::json!({"replication_body_limit": 1024}));
        let path = owned_by(&l, SLOT);
        let mut r = request(&l, &push("PUT", &path));
        r.on_headers(false);
        *l.host().body.borrow_mut() = vec![b'#'; 1000];
        r.on_body(1000, false);
        l.host().take();
        // The chunk that takes it over the limit is not read, nor any after it.
        r.on_body(25, false);
        let end = r.on_body(4, true);
        went_on_uncopied(l.host(), mode, end);
        assert_eq!(replication_stats(&l), (1, 1), "{mode}");
        assert_warned(l.host(), "the body is over replication_body_limit (1024 bytes)");
    }
}

#[test]
fn a_declared_length_over_the_limit_reads_nothing() {
    let l = slotted("proxy", serde_json::json!({"replication_body_limit": 1024}));
    let path = owned_by(&l, SLOT);
    let mut headers = push("PUT", &path);
    headers.push(("content-length", "1025"));
    let mut r = request(&l, &headers);
    r.on_headers(false);
    assert_eq!(r.on_body(4, false), Action::Continue);
    assert_eq!(r.on_body(4, true), Action::Continue);
    assert_eq!(l.host().take(), [Done::SetHeader(DEST.into(), SLOT.into())]);
    assert_eq!(replication_stats(&l), (1, 1));
}

#[test]
fn a_client_answered_before_its_body_is_a_failed_replication() {
    let l = slotted("redirect", serde_json::json!({}));
    let path = owned_by(&l, SLOT);
    let mut headers = push("PUT", &path);
    headers.push(("expect", "100-continue"));
    let mut r = request(&l, &headers);
    assert_eq!(r.on_headers(false), Action::Pause);
    let done = l.host().take();
    assert!(
        matches!(done.as_slice(), [Done::Reply(r)] if r.status == 307),
        "{done:?}"
    );
    assert_eq!(replication_stats(&l), (1, 1));
    assert_warned(l.host(), "Expect: 100-continue");
}

#[test]
fn a_call_the_host_refuses_is_a_failed_replication() {
    for mode in ["redirect", "proxy"] {
        let l = slotted(mode, serde_json::json!({}));
        l.host().fail("dispatch_http_call", host::INTERNAL_FAILURE);
        let path = owned_by(&l, SLOT);
        let mut r = request(&l, &push("PUT", &path));
        r.on_headers(false);
        let end = r.on_body(4, true);
        // Nothing in flight: the push goes on at once.
        match mode {
            "redirect" => assert_eq!(l.host().replies()[0].status, 307),
            _ => assert_eq!(end, Action::Continue),
        }
        assert_eq!(replication_stats(&l), (1, 1), "{mode}");
        assert_warned(l.host(), "(cluster pushgateway_owner found no host for it)");
    }
}

#[test]
fn a_body_that_cannot_be_read_is_a_failed_replication() {
    let l = slotted("proxy", serde_json::json!({}));
    l.host().fail("request_body", 2);
    let path = owned_by(&l, SLOT);
    let mut r = request(&l, &push("PUT", &path));
    r.on_headers(false);
    assert_eq!(r.on_body(4, true), Action::Continue);
    assert_eq!(replication_stats(&l), (1, 1));
    assert_eq!(
        l.host().stat_value(Stat::HostErrors),
        0,
        "the push itself is fine"
    );
    assert_warned(l.host(), "the body could not be read");
}

#[test]
fn trailers_end_a_body_that_is_being_copied() {
    for mode in ["redirect", "proxy"] {
        let l = slotted(mode, serde_json::json!({}));
        let path = owned_by(&l, SLOT);
        let mut r = request(&l, &push("PUT", &path));
        r.on_headers(false);
        r.on_body(4, false);
        l.host().take();
        assert_eq!(r.on_trailers(), Action::Pause, "{mode}");
        let calls = l.host().sent();
        assert_eq!(calls.len(), 1, "{mode}");
        answer(&l, &mut r, &calls[0], "200");
        let done = l.host().take();
        match mode {
            "redirect" => assert!(matches!(done.as_slice(), [Done::Reply(r)] if r.status == 307)),
            _ => assert_eq!(done, [Done::Resume]),
        }
        assert_eq!(r.on_trailers(), Action::Continue, "{mode}: once");
    }
}

#[test]
fn a_push_answered_500_sends_no_copy() {
    let l = slotted("redirect", serde_json::json!({}));
    l.host().fail("drop_request_body", 2);
    let path = owned_by(&l, SLOT);
    let mut r = request(&l, &push("PUT", &path));
    r.on_headers(false);
    assert_eq!(r.on_body(4, false), Action::Pause);
    assert_eq!(l.host().replies()[0].status, 500);
    assert_eq!(r.on_body(4, true), Action::Continue);
    assert_eq!(l.host().take(), []);
    assert_eq!(replication_stats(&l), (0, 0));
}

#[test]
fn lookups_and_refused_writes_are_not_copied() {
    for mode in ["redirect", "proxy"] {
        let l = slotted(mode, serde_json::json!({}));
        let path = owned_by(&l, SLOT);
        for (method, p) in [
            ("GET", path.as_str()),
            ("HEAD", path.as_str()),
            ("PUT", "/metrics/job/j/odd"),
        ] {
            let mut r = request(&l, &push(method, p));
            r.on_headers(true);
            assert_eq!(l.host().sent(), [], "{mode} {method} {p}");
        }
        assert_eq!(replication_stats(&l), (0, 0));
    }
}

#[test]
fn a_delete_reaches_the_standby_and_every_address_of_the_other_slots() {
    for mode in ["redirect", "proxy"] {
        let l = slotted(mode, serde_json::json!({}));
        let path = owned_by(&l, SLOT);
        let mut r = request(&l, &push("DELETE", &path));
        assert_eq!(r.on_headers(true), Action::Pause);
        let calls = calls_of(&l.host().take());
        let mut reached: Vec<&str> = calls.iter().map(|c| c.header(DEST).unwrap()).collect();
        reached.sort_unstable();
        assert_eq!(
            reached,
            [
                "10.0.0.1:9091",
                "10.0.0.3:9091",
                "10.0.0.9:9091",
                "10.0.1.1:9091",
                "10.0.1.2:9091",
                "10.0.1.9:9091"
            ],
            "{mode}"
        );
        assert!(calls.iter().all(|c| c.header(":method") == Some("DELETE")));
        assert_eq!(l.host().stat_value(Stat::FanoutCalls), 5, "{mode}");
        assert_eq!(replication_stats(&l), (1, 0), "{mode}");
        for call in &calls[..calls.len() - 1] {
            answer(&l, &mut r, call, "202");
        }
        assert_eq!(l.host().take(), [], "{mode}: waits for every call");
        answer(&l, &mut r, &calls[calls.len() - 1], "202");
        let done = l.host().take();
        match mode {
            "redirect" => assert!(matches!(done.as_slice(), [Done::Reply(r)] if r.status == 307)),
            _ => assert_eq!(done, [Done::Resume]),
        }
    }
}

// ---- DELETE: what it owes to the pushgateways it did not reach ----

/// The tombstones held, as `GET /-/sharding/tombstones` shows them.
fn held(l: &TestListener) -> Vec<crate::tombstones::Tombstone> {
    let mut stored = l.host().shared.borrow_mut();
    let (reply, _) = crate::tombstones::handle(
        "GET",
        crate::tombstones::TOMBSTONES_PATH,
        Some("Bearer s3cret"),
        b"",
        &[TOKEN.to_owned()],
        &mut *stored,
        0,
    );
    let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    serde_json::from_value(v["tombstones"].clone()).unwrap()
}

fn members(list: &[&str]) -> Vec<Member> {
    list.iter().map(|m| Member::parse(m).unwrap()).collect()
}

#[test]
fn a_call_that_fails_leaves_a_tombstone_and_the_client_its_answer() {
    let l = with_draining("redirect");
    l.host().now.set(1_700_000_000_123_456_789);
    let mut r = request(&l, &push("DELETE", "/metrics/job/j/instance@base64/aQ?x"));
    r.on_headers(true);
    let sent = l.host().sent();
    answer(&l, &mut r, &sent[0], "503");
    r.on_call_response(sent[1].token, 0);
    answer(&l, &mut r, &sent[2], "202");
    let replies = l.host().replies();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].status, 307);
    let t = held(&l);
    assert_eq!(t.len(), 1);
    assert_eq!(
        t[0].group, "/metrics/job/j/instance/i",
        "canonical, without the query"
    );
    assert_eq!(t[0].at_ms, 1_700_000_000_123);
    let mut failed = members(&[sent[0].header(DEST).unwrap(), sent[1].header(DEST).unwrap()]);
    failed.sort();
    assert_eq!(t[0].pushgateways, failed);
    assert_eq!(l.host().stat_value(Stat::TombstonesRecorded), 1);
    assert_eq!(l.host().stat_value(Stat::Tombstones), 1);
}

#[test]
fn a_delete_that_reaches_every_copy_leaves_no_tombstone() {
    let l = with_draining("proxy");
    let mut r = request(&l, &push("DELETE", PATH));
    r.on_headers(true);
    for call in l.host().sent() {
        answer(&l, &mut r, &call, "202");
    }
    assert_eq!(l.host().take(), [Done::Resume]);
    assert_eq!(held(&l), []);
    drop(r);
    assert_eq!(held(&l), [], "nor when it ends");
}

/// A listener whose list has the three members and `absent` registered but not passing.
fn with_absent(mode: &str, settings: &str, absent: &[&str]) -> TestListener {
    let json =
        format!(r#"{{"mode": "{mode}", "members": {MEMBERS:?}, "control_token": "{TOKEN}"{settings}}}"#);
    let config = Config::parse(json.as_bytes(), |_| None).unwrap();
    let l = Rc::new(Listener::start(config, FakeHost::default()));
    let list = MemberList::new(1, &MEMBERS)
        .and_then(|m| m.with_absent(absent))
        .unwrap();
    publish(l.host(), &list);
    l
}

#[test]
fn an_absent_pushgateway_gets_a_tombstone_without_a_call() {
    // One member: no call at all, the answer at once.
    let l = with_absent("proxy", "", &["10.0.0.8:9091"]);
    let one = MemberList::new(2, &["10.0.0.1:9091"])
        .and_then(|m| m.with_absent(&["10.0.0.8:9091"]))
        .unwrap();
    publish(l.host(), &one);
    let mut r = request(&l, &push("DELETE", PATH));
    assert_eq!(r.on_headers(true), Action::Continue);
    assert_eq!(
        l.host().take(),
        [Done::SetHeader(DEST.into(), "10.0.0.1:9091".into())]
    );
    let t = held(&l);
    assert_eq!((t.len(), &t[0].pushgateways), (1, &members(&["10.0.0.8:9091"])));
    // With calls: the absent one is not called, and is in the tombstone with any that failed.
    let l = with_absent("redirect", "", &["10.0.0.8:9091"]);
    let mut r = request(&l, &push("DELETE", PATH));
    r.on_headers(true);
    let sent = l.host().sent();
    assert_eq!(sent.len(), 2, "the other two members");
    answer(&l, &mut r, &sent[0], "500");
    answer(&l, &mut r, &sent[1], "202");
    let mut expected = members(&["10.0.0.8:9091", sent[0].header(DEST).unwrap()]);
    expected.sort();
    assert_eq!(held(&l)[0].pushgateways, expected);
    // Pushes and lookups owe nothing.
    for method in ["PUT", "GET"] {
        request(&l, &push(method, "/metrics/job/other")).on_headers(true);
    }
    assert_eq!(held(&l).len(), 1);
}

#[test]
fn a_full_tombstone_list_refuses_the_delete_before_any_call() {
    let l = with_absent("proxy", r#", "max_tombstones": 2"#, &["10.0.0.8:9091"]);
    for (i, status) in [(0, 202), (1, 202)] {
        let mut r = request(&l, &push("DELETE", &format!("/metrics/job/g{i}")));
        r.on_headers(true);
        for call in l.host().sent() {
            answer(&l, &mut r, &call, &status.to_string());
        }
    }
    assert_eq!(l.host().stat_value(Stat::Tombstones), 2);
    l.host().take();
    for mode in ["proxy", "redirect"] {
        let l2 = Rc::new(Listener::start(
            Config::parse(
                format!(r#"{{"mode": "{mode}", "members": {MEMBERS:?}, "max_tombstones": 2}}"#).as_bytes(),
                |_| None,
            )
            .unwrap(),
            FakeHost::default(),
        ));
        l2.host().add_to_stat(Stat::Tombstones, 2);
        let mut r = request(&l2, &push("DELETE", PATH));
        assert_eq!(r.on_headers(false), Action::Pause);
        let done = l2.host().take();
        let [Done::Reply(reply)] = done.as_slice() else {
            panic!("{mode}: expected only a reply, got {done:?}");
        };
        assert_eq!(reply.status, 503);
        assert!(reply.body.contains("max_tombstones 2"), "{}", reply.body);
        assert_eq!(reply.headers.get("retry-after"), Some("30"));
        assert_eq!(l2.host().stat_value(Stat::TombstonesFull), 1);
        assert_eq!(l2.host().stat_value(Stat::FanoutCalls), 0);
    }
    // A DELETE that cannot leave anything behind (one member, nobody absent) still goes.
    let l3 = listener("proxy", &["10.0.0.1:9091"]);
    l3.host().add_to_stat(Stat::Tombstones, 1_000_000);
    assert_eq!(
        request(&l3, &push("DELETE", PATH)).on_headers(true),
        Action::Continue
    );
}

#[test]
fn a_tombstone_that_cannot_be_kept_turns_the_answer_into_a_503_naming_the_pushgateway() {
    for mode in ["redirect", "proxy"] {
        let l = with_draining(mode);
        let mut r = request(&l, &push("DELETE", PATH));
        r.on_headers(true);
        let sent = l.host().sent();
        l.host().shared.borrow_mut().broken = true;
        answer(&l, &mut r, &sent[0], "500");
        answer(&l, &mut r, &sent[1], "202");
        answer(&l, &mut r, &sent[2], "202");
        let done = l.host().take();
        let [Done::Reply(reply)] = done.as_slice() else {
            panic!("{mode}: expected only a reply (no 307, no resume), got {done:?}");
        };
        assert_eq!(reply.status, 503, "{mode}");
        let missed = sent[0].header(DEST).unwrap();
        assert!(
            reply
                .body
                .contains(&format!("did not reach pushgateway {missed}"))
                && reply.body.contains("retry the DELETE"),
            "{}",
            reply.body
        );
        assert_eq!(l.host().stat_value(Stat::HostErrors), 1);
    }
}

#[test]
fn failed_replications_are_warned_about_at_most_once_a_second() {
    let l = slotted("redirect", serde_json::json!({}));
    l.host().fail("dispatch_http_call", host::INTERNAL_FAILURE);
    let path = owned_by(&l, SLOT);
    let push_once = |at_ms: u64| {
        l.host().now.set(at_ms * 1_000_000);
        request(&l, &push("PUT", &path)).on_headers(true);
    };
    let lines = || {
        warnings(l.host())
            .into_iter()
            .filter(|m| m.starts_with("replication to standby"))
            .collect::<Vec<_>>()
    };
    push_once(5_000);
    push_once(5_400);
    push_once(5_999);
    assert_eq!(lines().len(), 1);
    push_once(6_000);
    let logged = lines();
    assert_eq!(logged.len(), 2);
    assert!(
        logged[1].ends_with("(2 more replication failures since the last such line)"),
        "{logged:?}"
    );
    assert!(!logged[0].contains("more replication failures"));
    // Every one is counted.
    assert_eq!(replication_stats(&l), (4, 4));
}

#[test]
fn fanouts_beyond_the_bound_of_a_worker_are_refused_and_places_come_back() {
    let l = with_absent("redirect", r#", "max_delete_fanouts": 2"#, &[]);
    let proxy = with_absent("proxy", r#", "max_delete_fanouts": 2"#, &[]);
    let mut first = request(&l, &push("DELETE", PATH));
    first.on_headers(true);
    let first_calls = l.host().sent();
    let mut second = request(&proxy, &push("DELETE", PATH));
    second.on_headers(true);
    proxy.host().take();
    // A third on this worker, through either listener, is refused before any call.
    for listener in [&l, &proxy] {
        let mut third = request(listener, &push("DELETE", PATH));
        assert_eq!(third.on_headers(true), Action::Pause);
        let done = listener.host().take();
        let [Done::Reply(reply)] = done.as_slice() else {
            panic!("expected only a reply, got {done:?}");
        };
        assert_eq!(reply.status, 503);
        assert_eq!(reply.headers.get("retry-after"), Some("3"));
        assert!(
            reply.body.contains("2 DELETEs are waiting") && reply.body.contains("max_delete_fanouts"),
            "{}",
            reply.body
        );
        assert_eq!(listener.host().stat_value(Stat::DeleteFanoutLimited), 1);
    }
    // The first is answered: its place is free.
    for call in &first_calls {
        answer(&l, &mut first, call, "202");
    }
    assert_eq!(l.host().replies().len(), 1);
    let mut again = request(&l, &push("DELETE", PATH));
    again.on_headers(true);
    assert_eq!(l.host().sent().len(), 2, "it fans out");
    // A request that ends with its calls in flight (its client went away) frees its place
    // once those calls' timeout has passed: Envoy lets them run.
    l.host().now.set(1_000);
    drop(second);
    drop(again);
    assert_eq!(delete::FanoutSlot::taken(), 2);
    l.host().now.set(1_000 + FANOUT_TIMEOUT.as_nanos() as u64);
    // Pushes are never held up by the bound.
    let mut a = request(&l, &push("DELETE", PATH));
    a.on_headers(true);
    let mut b = request(&l, &push("DELETE", PATH));
    b.on_headers(true);
    let mut put = request(&l, &push("PUT", PATH));
    put.on_headers(true);
    assert_eq!(
        l.host().replies().iter().map(|r| r.status).collect::<Vec<_>>(),
        [307]
    );
}

#[test]
fn a_delete_whose_client_went_away_leaves_a_tombstone_for_the_calls_in_flight() {
    let l = with_draining("redirect");
    let mut r = request(&l, &push("DELETE", PATH));
    r.on_headers(true);
    let sent = l.host().sent();
    answer(&l, &mut r, &sent[0], "202");
    drop(r);
    let t = held(&l);
    assert_eq!(t.len(), 1);
    let mut in_flight = members(&[sent[1].header(DEST).unwrap(), sent[2].header(DEST).unwrap()]);
    in_flight.sort();
    assert_eq!(t[0].pushgateways, in_flight);
    assert_eq!(delete::FanoutSlot::taken(), 1, "until the calls' timeout");
}

// ---- DELETE to a slot with a standby: the standby is one more pushgateway to reach ----

/// A listener whose list has one slot, [`SLOT`], with the standby [`STANDBY`]: a `DELETE` has
/// nothing to fan out to, only its copy for the standby.
fn one_slot_with_a_standby(mode: &str, settings: &str) -> TestListener {
    let json = format!(r#"{{"mode": "{mode}", "members": [], "control_token": "{TOKEN}"{settings}}}"#);
    let config = Config::parse(json.as_bytes(), |_| None).unwrap();
    let l = Rc::new(Listener::start(config, FakeHost::default()));
    let list = MemberList::new(1, &[SLOT])
        .and_then(|m| m.with_slots([(SLOT, SLOT, Some(STANDBY))]))
        .unwrap();
    publish(l.host(), &list);
    l
}

#[test]
fn a_delete_the_standby_did_not_take_leaves_a_tombstone_for_it() {
    for mode in ["redirect", "proxy"] {
        for failure in ["503", "no answer"] {
            let l = slotted(mode, serde_json::json!({}));
            let path = owned_by(&l, SLOT);
            let mut r = request(&l, &push("DELETE", &path));
            r.on_headers(true);
            for call in calls_of(&l.host().take()) {
                match (call.header(DEST), failure) {
                    (Some(STANDBY), "no answer") => r.on_call_response(call.token, 0),
                    (Some(STANDBY), status) => answer(&l, &mut r, &call, status),
                    _ => answer(&l, &mut r, &call, "202"),
                }
            }
            let done = l.host().take();
            match mode {
                "redirect" => assert!(
                    matches!(done.as_slice(), [Done::Reply(r)] if r.status == 307),
                    "{done:?}"
                ),
                _ => assert_eq!(done, [Done::Resume]),
            }
            let t = held(&l);
            assert_eq!(t.len(), 1, "{mode} {failure}");
            assert_eq!(t[0].pushgateways, members(&[STANDBY]), "{mode} {failure}");
            assert_eq!(replication_stats(&l), (1, 1));
            assert_eq!(l.host().stat_value(Stat::FanoutFailures), 0);
        }
    }
}

#[test]
fn a_delete_whose_copy_cannot_be_sent_leaves_a_tombstone_for_the_standby() {
    // Nothing else to reach: the refusal is the only debt, settled at once.
    let l = one_slot_with_a_standby("proxy", "");
    l.host().fail("dispatch_http_call", host::INTERNAL_FAILURE);
    let mut r = request(&l, &push("DELETE", PATH));
    assert_eq!(r.on_headers(true), Action::Continue);
    assert_eq!(held(&l)[0].pushgateways, members(&[STANDBY]));
    // Proxy mode with a body: the copy is sent (or not) only at its end, after the fan-out
    // answered; the tombstone waits for it.
    let l = slotted("proxy", serde_json::json!({}));
    let path = owned_by(&l, SLOT);
    let mut headers = push("DELETE", &path);
    headers.push(("content-length", "2000000"));
    let mut r = request(&l, &headers);
    assert_eq!(r.on_headers(false), Action::Pause);
    for call in calls_of(&l.host().take()) {
        answer(&l, &mut r, &call, "202");
    }
    assert!(l.host().take().contains(&Done::Resume));
    assert_eq!(held(&l), [], "the copy is still to be sent");
    assert_eq!(r.on_body(2_000_000, true), Action::Continue);
    assert_eq!(held(&l)[0].pushgateways, members(&[STANDBY]));
    assert_eq!(replication_stats(&l), (1, 1));
}

#[test]
fn the_copy_for_the_standby_takes_no_place_under_the_fanout_bound() {
    // The only place of this worker is taken by a DELETE in fan-out.
    let busy = with_absent("redirect", r#", "max_delete_fanouts": 1"#, &[]);
    let mut first = request(&busy, &push("DELETE", PATH));
    first.on_headers(true);
    assert_eq!(delete::FanoutSlot::taken(), 1);
    for mode in ["redirect", "proxy"] {
        let l = one_slot_with_a_standby(mode, r#", "max_delete_fanouts": 1"#);
        let mut r = request(&l, &push("DELETE", PATH));
        assert_eq!(r.on_headers(true), Action::Pause, "{mode}: waits for the standby");
        let calls = calls_of(&l.host().take());
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].header(DEST), Some(STANDBY));
        assert_eq!(l.host().stat_value(Stat::DeleteFanoutLimited), 0);
        // Its client goes away: the standby may not have the DELETE.
        drop(r);
        assert_eq!(held(&l)[0].pushgateways, members(&[STANDBY]), "{mode}");
        assert_eq!(delete::FanoutSlot::taken(), 1, "{mode}: no place of its own");
    }
}

#[test]
fn a_full_tombstone_list_refuses_a_delete_to_a_slot_with_a_standby() {
    for mode in ["redirect", "proxy"] {
        let l = one_slot_with_a_standby(mode, r#", "max_tombstones": 2"#);
        l.host().add_to_stat(Stat::Tombstones, 2);
        let mut r = request(&l, &push("DELETE", PATH));
        assert_eq!(r.on_headers(true), Action::Pause);
        let done = l.host().take();
        let [Done::Reply(reply)] = done.as_slice() else {
            panic!("{mode}: expected only a reply, got {done:?}");
        };
        assert_eq!(reply.status, 503, "{mode}");
        assert!(reply.body.contains("max_tombstones 2"), "{}", reply.body);
        assert_eq!(replication_stats(&l), (0, 0), "{mode}: nothing sent");
        // Pushes to it owe no tombstone: they go on.
        request(&l, &push("PUT", PATH)).on_headers(true);
        assert_eq!(replication_stats(&l), (1, 0), "{mode}");
    }
}

// ---- the control listener ----

fn control_put(l: &TestListener, token: &str) -> Request<FakeHost> {
    let auth = format!("Bearer {token}");
    let mut headers = push("PUT", control::MEMBERS_PATH);
    headers.push(("authorization", auth.as_str()));
    request(l, &headers)
}

fn body_of(l: &TestListener, list: &MemberList) -> usize {
    let json = list.to_json().into_bytes();
    let len = json.len();
    *l.host().body.borrow_mut() = json;
    len
}

#[test]
fn other_paths_on_the_control_listener_go_on_untouched() {
    let l = listener("control", &MEMBERS);
    let mut r = request(&l, &push("PUT", PATH));
    assert_eq!(r.on_headers(false), Action::Continue);
    assert_eq!(r.on_body(10, true), Action::Continue);
    assert_eq!(l.host().take(), []);
}

#[test]
fn a_control_read_without_a_body_is_answered_at_once() {
    let l = listener("control", &MEMBERS);
    let mut r = request(&l, &push("GET", "/-/sharding/members?pretty"));
    assert_eq!(r.on_headers(true), Action::Pause);
    let replies = l.host().replies();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].status, 200);
    let list = MemberList::from_json(replies[0].body.as_bytes()).unwrap();
    assert_eq!(list, MemberList::new(0, &MEMBERS).unwrap());
}

#[test]
fn a_control_update_is_served_once_its_whole_body_is_buffered() {
    let l = listener("control", &MEMBERS);
    let list = MemberList::new(5, &["10.9.9.9:9091"]).unwrap();
    let size = body_of(&l, &list);
    let mut r = control_put(&l, TOKEN);
    assert_eq!(r.on_headers(false), Action::Continue);
    assert_eq!(r.on_body(size / 2, false), Action::Pause, "Envoy keeps buffering");
    assert_eq!(l.host().take(), []);
    assert_eq!(r.on_body(size, true), Action::Pause);
    let done = l.host().take();
    assert_eq!(done[0], Done::ReadBody { start: 0, max: size });
    assert!(
        matches!(&done[1..], [Done::Reply(r)] if r.status == 200),
        "{done:?}"
    );
    let h = l.host();
    assert_eq!(h.stat_value(Stat::UpdatesAccepted), 1);
    assert_eq!(
        (h.stat_value(Stat::Members), h.stat_value(Stat::MembersVersion)),
        (1, 5)
    );
    assert!(h
        .logs()
        .iter()
        .any(|(_, m)| m.contains("member list version 0 -> 5")));
    // Stored for every worker: a data listener on this store would now route with it.
    let stored = crate::store::load_members(&h.shared.borrow().store).unwrap();
    assert_eq!(stored.map(|(l, _)| l), Some(list));
}

#[test]
fn a_control_body_over_the_limit_is_refused_413() {
    let l = listener("control", &MEMBERS);
    let mut r = control_put(&l, TOKEN);
    r.on_headers(false);
    assert_eq!(r.on_body(MAX_UPDATE_BYTES + 1, false), Action::Pause);
    let replies = l.host().replies();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].status, 413);
    assert!(
        replies[0]
            .body
            .contains(&format!("body is over {MAX_UPDATE_BYTES} bytes")),
        "{}",
        replies[0].body
    );
    assert_eq!(l.host().stat_value(Stat::UpdatesRejected), 1);
    assert_eq!(
        r.on_body(MAX_UPDATE_BYTES + 2, true),
        Action::Continue,
        "answered already"
    );
    assert_eq!(l.host().take(), []);
    // At the limit it is read.
    let list = MemberList::new(5, &["10.9.9.9:9091"]).unwrap();
    body_of(&l, &list);
    let mut r = control_put(&l, TOKEN);
    r.on_headers(false);
    r.on_body(MAX_UPDATE_BYTES, true);
    assert_eq!(l.host().replies()[0].status, 200);
}

#[test]
fn a_tombstone_acknowledgement_has_its_own_smaller_limit() {
    let l = listener("control", &MEMBERS);
    let auth = format!("Bearer {TOKEN}");
    let mut ack = push("POST", "/-/sharding/tombstones/ack");
    ack.push(("authorization", auth.as_str()));
    let mut r = request(&l, &ack);
    r.on_headers(false);
    assert_eq!(
        r.on_body(crate::tombstones::MAX_ACK_BYTES + 1, false),
        Action::Pause
    );
    let replies = l.host().replies();
    assert_eq!(replies[0].status, 413);
    assert!(
        replies[0].body.contains("body is over 65536 bytes"),
        "{}",
        replies[0].body
    );
    assert_eq!(
        l.host().stat_value(Stat::UpdatesRejected),
        0,
        "not a member update"
    );
    assert_warned(l.host(), "tombstone request refused (413)");
    // A member update of that size is read.
    let mut r = control_put(&l, TOKEN);
    r.on_headers(false);
    assert_eq!(
        r.on_body(crate::tombstones::MAX_ACK_BYTES + 1, false),
        Action::Pause
    );
    assert_eq!(l.host().replies(), []);
}

#[test]
fn a_control_body_ended_by_trailers_is_read_whole() {
    let l = listener("control", &MEMBERS);
    let size = body_of(&l, &MemberList::new(5, &["10.9.9.9:9091"]).unwrap());
    let mut r = control_put(&l, TOKEN);
    r.on_headers(false);
    assert_eq!(r.on_body(size, false), Action::Pause);
    assert_eq!(r.on_trailers(), Action::Pause);
    let done = l.host().take();
    assert_eq!(
        done[0],
        Done::ReadBody {
            start: 0,
            max: MAX_UPDATE_BYTES + 1
        }
    );
    assert!(
        matches!(&done[1..], [Done::Reply(r)] if r.status == 200),
        "{done:?}"
    );
    assert_eq!(r.on_trailers(), Action::Continue, "served once");
}

#[test]
fn a_refused_update_is_counted_and_logged() {
    let l = listener("control", &MEMBERS);
    let size = body_of(&l, &MemberList::new(5, &["10.9.9.9:9091"]).unwrap());
    let mut r = control_put(&l, "wrong");
    r.on_headers(false);
    r.on_body(size, true);
    assert_eq!(l.host().replies()[0].status, 401);
    assert_eq!(l.host().stat_value(Stat::UpdatesRejected), 1);
    assert_eq!(l.host().stat_value(Stat::UpdatesAccepted), 0);
    assert_warned(l.host(), "member update refused (401)");
}

#[test]
fn an_update_with_the_members_in_force_counts_as_accepted() {
    let l = listener("control", &MEMBERS);
    let size = body_of(&l, &MemberList::new(5, &MEMBERS).unwrap());
    let mut r = control_put(&l, TOKEN);
    r.on_headers(false);
    r.on_body(size, true);
    assert_eq!(l.host().replies()[0].status, 200);
    // Counted, so every worker's next request re-reads the (new version of the) list.
    assert_eq!(l.host().stat_value(Stat::UpdatesAccepted), 1);
}

#[test]
fn a_control_body_that_cannot_be_read_is_answered_500() {
    let l = listener("control", &MEMBERS);
    l.host().fail("request_body", 2);
    let mut r = control_put(&l, TOKEN);
    r.on_headers(false);
    assert_eq!(r.on_body(10, true), Action::Pause);
    let replies = l.host().replies();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].status, 500);
    assert_eq!(l.host().stat_value(Stat::HostErrors), 1);
}

#[test]
fn the_control_listener_hands_tombstones_over_and_forgets_the_acknowledged() {
    let data = with_draining("redirect");
    let mut r = request(&data, &push("DELETE", PATH));
    r.on_headers(true);
    for call in data.host().sent() {
        answer(&data, &mut r, &call, "500");
    }
    // The control listener of the same worker, on the same shared data.
    let config = Config::parse(
        format!(r#"{{"mode": "control", "control_token": "{TOKEN}"}}"#).as_bytes(),
        |_| None,
    )
    .unwrap();
    let host = FakeHost::default();
    std::mem::swap(
        &mut *host.shared.borrow_mut(),
        &mut *data.host().shared.borrow_mut(),
    );
    host.now.set(5_000_000_000);
    let control = Rc::new(Listener::start(config, host));
    let auth = format!("Bearer {TOKEN}");
    let mut get = push("GET", "/-/sharding/tombstones");
    get.push(("authorization", auth.as_str()));
    let mut r = request(&control, &get);
    assert_eq!(r.on_headers(true), Action::Pause);
    let reply = control.host().replies().remove(0);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(v["now_ms"], 5_000);
    assert_eq!(v["tombstones"][0]["group"], "/metrics/job/j/instance/i");
    assert_eq!(control.host().stat_value(Stat::Tombstones), 1);
    // Without the token: refused, logged.
    let mut r = request(&control, &push("GET", "/-/sharding/tombstones"));
    r.on_headers(true);
    assert_eq!(control.host().replies()[0].status, 401);
    assert_warned(control.host(), "tombstone request refused (401)");
    // Acknowledged: forgotten.
    let body = format!(r#"{{"ids": [{}]}}"#, v["tombstones"][0]["id"]);
    *control.host().body.borrow_mut() = body.clone().into_bytes();
    let mut ack = push("POST", "/-/sharding/tombstones/ack");
    ack.push(("authorization", auth.as_str()));
    let mut r = request(&control, &ack);
    assert_eq!(r.on_headers(false), Action::Continue);
    assert_eq!(r.on_body(body.len(), true), Action::Pause);
    let replies = control.host().replies();
    assert_eq!(replies[0].body, r#"{"forgotten":1,"held":0}"#);
    assert_eq!(control.host().stat_value(Stat::Tombstones), 0);
    assert_eq!(control.host().stat_value(Stat::TombstonesAcknowledged), 1);
}

#[test]
fn each_stat_sits_at_its_own_index_under_its_own_name() {
    for (i, stat) in Stat::ALL.iter().enumerate() {
        assert_eq!(*stat as usize, i);
        assert!(stat.name().starts_with("dynamic_sharding."));
    }
    let mut names: Vec<&str> = Stat::ALL.iter().map(|s| s.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), Stat::ALL.len());
}
