//! Runs the filter's work for the pushes bench/run.sh sends (`PUT` to `/metrics/job/bench_<n>`,
//! 10,000 groups, 3 members), so callgrind can count it by function: either the decision alone
//! (`routing::plan`, in `decide`) or a whole redirect as Envoy drives it (headers, then the last
//! body chunk, in `requests`) over a host whose calls do nothing but hand over the headers.
//!
//! `plan-profile [pushes] [members] [plan|request]`; callgrind is told to count `decide` or
//! `requests` alone (setup excluded).

use dynamic_sharding::config::{Config, Mode};
use dynamic_sharding::members::MemberList;
use dynamic_sharding::request::header_map::{self, RequestHeaders};
use dynamic_sharding::request::{Host, HostError, Listener, Request, Stat};
use dynamic_sharding::ring::Ring;
use dynamic_sharding::routing::{self, Reply};
use dynamic_sharding::store::{MemoryStore, SharedStore};
use std::cell::{Cell, RefCell};
use std::fmt;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

/// The member list's vnodes in the shipped config.
const VNODES: u32 = 500;

#[inline(never)]
fn decide(pushes: usize, paths: &[String], ring: &Ring, list: &MemberList) -> usize {
    let mut redirects = 0;
    for i in 0..pushes {
        let plan = routing::plan(Mode::Redirect, "PUT", &paths[i % paths.len()], ring, list);
        if matches!(
            std::hint::black_box(&plan).decision,
            routing::Decision::Reply { .. }
        ) {
            redirects += 1;
        }
    }
    redirects
}

/// A host that answers as Envoy does on the redirect path and does nothing else: the request
/// headers are a fresh copy (Envoy allocates one in the VM for every read), stats are plain
/// numbers, a reply is counted.
struct NullHost {
    /// Each request's encoded header map.
    headers: Vec<Vec<u8>>,
    next: Cell<usize>,
    replies: Cell<usize>,
    store: RefCell<MemoryStore>,
}

impl Host for NullHost {
    fn request_headers(&self) -> Result<RequestHeaders, HostError> {
        let i = self.next.get();
        self.next.set(i + 1);
        Ok(RequestHeaders::from_encoded(self.headers[i % self.headers.len()].clone()))
    }
    fn set_request_header(&self, _: &str, _: &str) -> Result<(), HostError> {
        Ok(())
    }
    fn remove_request_header(&self, _: &str) -> Result<(), HostError> {
        Ok(())
    }
    fn request_body(&self, _: usize, _: usize) -> Result<Vec<u8>, HostError> {
        Ok(Vec::new())
    }
    fn drop_request_body(&self, _: usize) -> Result<(), HostError> {
        Ok(())
    }
    fn resume_request(&self) -> Result<(), HostError> {
        Ok(())
    }
    fn send_reply(&self, reply: &Reply) -> Result<(), HostError> {
        std::hint::black_box(reply);
        self.replies.set(self.replies.get() + 1);
        Ok(())
    }
    fn dispatch_http_call_with_body(
        &self,
        _: &str,
        _: Vec<(&str, &str)>,
        _: &[u8],
        _: Duration,
    ) -> Result<u32, HostError> {
        Ok(1)
    }
    fn http_call_response_header(&self, _: &str) -> Result<Option<String>, HostError> {
        Ok(None)
    }
    fn http_call_response_body(&self, _: usize) -> Result<Vec<u8>, HostError> {
        Ok(Vec::new())
    }
    fn stat(&self, _: Stat) -> Result<u64, HostError> {
        Ok(0)
    }
    fn count(&self, stat: Stat) {
        std::hint::black_box(stat);
    }
    fn record(&self, _: Stat, _: u64) {}
    fn now_nanos(&self) -> u64 {
        0
    }
    fn log(&self, _: log::Level, _: fmt::Arguments<'_>) {}
    fn with_shared_data<R>(&self, f: impl FnOnce(&mut dyn SharedStore) -> R) -> R {
        f(&mut *self.store.borrow_mut())
    }
}

#[inline(never)]
fn requests(pushes: usize, listener: &Rc<Listener<NullHost>>) -> usize {
    for _ in 0..pushes {
        let mut request = Request::new(Rc::clone(listener));
        request.on_headers(false);
        request.on_body(4, true);
        std::hint::black_box(&request);
    }
    listener.host().replies.get()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| args.get(i).map_or(Ok(default), |a| a.parse::<usize>());
    let what = args.get(2).map_or("plan", String::as_str);
    let (Ok(pushes), Ok(members), "plan" | "request") = (number(0, 20_000), number(1, 3), what) else {
        eprintln!("usage: plan-profile [pushes (a number, 20000)] [members (a number, 3)] [plan|request]");
        return ExitCode::from(2);
    };
    let members: Vec<String> = (0..members.max(1))
        .map(|i| format!("127.0.0.1:{}", 20000 + i))
        .collect();
    let list = match MemberList::new(1, &members) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("plan-profile: {e}");
            return ExitCode::FAILURE;
        }
    };
    let paths: Vec<String> = (0..10_000).map(|n| format!("/metrics/job/bench_{n}")).collect();
    if what == "plan" {
        let ring = Ring::new(&list.members, VNODES);
        let redirects = decide(pushes, &paths, &ring, &list);
        println!("{redirects} redirects");
        return ExitCode::SUCCESS;
    }
    let config = redirect_config(&members);
    let config = match Config::parse(config.as_bytes(), |_| None) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("plan-profile: {e}");
            return ExitCode::FAILURE;
        }
    };
    // What Envoy's HTTP/1 codec and connection manager hand the filter for bench/put.lua's PUT.
    let headers = paths
        .iter()
        .map(|path| {
            header_map::encode(
                [
                    (":authority", "127.0.0.1:10000"),
                    (":path", path.as_str()),
                    (":method", "PUT"),
                    ("content-length", "4"),
                    (":scheme", "http"),
                    ("x-forwarded-proto", "http"),
                    ("x-request-id", "5d1c4a0e-7a43-4b0b-9f1e-2f6b7c0d9e11"),
                ]
                .into_iter(),
            )
        })
        .collect();
    let host = NullHost {
        headers,
        next: Cell::new(0),
        replies: Cell::new(0),
        store: RefCell::new(MemoryStore::default()),
    };
    let listener = Rc::new(Listener::start(config, host));
    let replies = requests(pushes, &listener);
    println!("{replies} replies");
    ExitCode::SUCCESS
}

/// The plugin configuration of the shipped redirect listener, with these members.
fn redirect_config(members: &[String]) -> String {
    let quoted: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
    format!(
        r#"{{"mode": "redirect", "vnodes": {VNODES}, "members": [{}]}}"#,
        quoted.join(", ")
    )
}
