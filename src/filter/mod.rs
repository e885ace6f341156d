//! The Envoy entry point: a thin proxy-wasm shell around the host-free modules.
//!
//! One root context per listener configuration and worker parses the configuration once and keeps
//! the worker's [`MemberView`]; each request gets an [`HttpFilter`] that asks [`routing::decide`] or
//! [`control::handle`] and carries out the answer with the calls in [`host`].
//!
//! Redirect mode answers a push with a body only after the body was read (then Envoy keeps the
//! connection alive): the headers continue to the `buffer` filter that must follow this one, which
//! holds them, while this filter throws each body chunk away and replies at the end of the stream.
//!
//! A `DELETE` first goes, as a `DELETE` of the same path, to every other pushgateway that may hold
//! a copy of the group ([`routing::plan`]); the 307 is sent, or the request resumed to the owner,
//! only when every one of those calls answered or timed out, so that when the client sees its
//! answer no other copy is left (unless a call failed: counted and logged, never fatal).

mod host;

use crate::config::{Config, Mode};
use crate::control::{self, ControlOutcome};
use crate::members::Member;
use crate::routing::{self, Decision, Outcome, Reply};
use crate::store::MemberView;
use host::{EnvoySharedData, HostError};
use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        // The VM aborts after this; at least say why in Envoy's log.
        error!("dynamic-sharding panicked: {info}");
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// How often a worker re-reads the member list whatever the per-request check says, so the ring
/// is rebuilt off the request path on an idle worker; requests check too (see
/// [`Shared::catch_up`]), so this only bounds how stale the gauges of an idle worker get.
const REFRESH_PERIOD: Duration = Duration::from_secs(1);

/// The cluster a `DELETE` fan-out call goes through: the shipped ORIGINAL_DST cluster, which
/// routes on the destination header set on the call (Envoy's async client hands the call's
/// headers to the cluster's load balancer as it does a routed request's).
const FANOUT_CLUSTER: &str = "pushgateway_owner";

/// Longest a client's `DELETE` waits for one fan-out call: a pushgateway answers a `DELETE` in
/// milliseconds; one that does not within this is counted as failed and the request goes on.
const FANOUT_TIMEOUT: Duration = Duration::from_secs(3);

/// Stat ids, defined once per VM (Envoy shares a stat of one name across workers).
#[derive(Default, Clone, Copy)]
struct Metrics {
    redirects: u32,
    proxied: u32,
    lookups: u32,
    bad_requests: u32,
    no_member: u32,
    updates_accepted: u32,
    updates_rejected: u32,
    host_errors: u32,
    fanout_calls: u32,
    fanout_failures: u32,
    members: u32,
    version: u32,
}

impl Metrics {
    fn define() -> Result<Metrics, HostError> {
        use MetricType::{Counter, Gauge};
        let d = |kind, name: &str| host::define_metric(kind, &format!("dynamic_sharding.{name}"));
        Ok(Metrics {
            redirects: d(Counter, "redirects_total")?,
            proxied: d(Counter, "proxied_total")?,
            lookups: d(Counter, "lookups_total")?,
            bad_requests: d(Counter, "bad_requests_total")?,
            no_member: d(Counter, "no_member_total")?,
            updates_accepted: d(Counter, "member_updates_accepted_total")?,
            updates_rejected: d(Counter, "member_updates_rejected_total")?,
            host_errors: d(Counter, "host_errors_total")?,
            fanout_calls: d(Counter, "delete_fanout_calls_total")?,
            fanout_failures: d(Counter, "delete_fanout_failures_total")?,
            members: d(Gauge, "members")?,
            version: d(Gauge, "members_version")?,
        })
    }

    fn count(&self, id: u32) {
        // A stat that cannot be counted is not worth failing a request for.
        let _ = host::increment_metric(id, 1);
    }

    fn set(&self, id: u32, value: u64) {
        let _ = host::record_metric(id, value);
    }
}

/// What every request of one root context shares.
struct Shared {
    config: Config,
    metrics: Metrics,
    view: RefCell<MemberView>,
    /// `member_updates_accepted_total` when the view last caught up with the shared data.
    seen_updates: Cell<Option<u64>>,
}

impl Shared {
    /// Per request: brings the view up to date if an update was accepted since it last did.
    ///
    /// The control API counts every accepted update in `member_updates_accepted_total` after it
    /// stored the list and before it answers `200`, and Envoy keeps one stat of a name for every
    /// worker. So a request that starts after the `200` reads a count this worker has not seen,
    /// and re-reads the shared data (written before the count moved). Reading the stat is one
    /// host call that copies nothing; the shared-data read it replaces takes Envoy's
    /// process-wide shared-data lock, copies the value twice and calls back into the VM to
    /// allocate it.
    fn catch_up(&self) {
        match host::get_metric(self.metrics.updates_accepted) {
            Ok(n) if self.seen_updates.get() == Some(n) => {}
            // Read before the shared data, so an update counted meanwhile is caught next time.
            Ok(n) => {
                if self.refresh() {
                    self.seen_updates.set(Some(n));
                }
            }
            Err(_) => {
                self.refresh();
            }
        }
    }

    /// Brings the worker's view up to date from the shared data (one 8-byte read when nothing
    /// changed). False when the shared data could not be read.
    fn refresh(&self) -> bool {
        let Ok(mut view) = self.view.try_borrow_mut() else {
            return false;
        };
        let started = host::now_nanos();
        match view.refresh(&EnvoySharedData) {
            Ok(Some(change)) => {
                // The whole update on this worker: read, decode, rebuild the ring (bench/README.md
                // publishes it per member count).
                let took_ms = host::now_nanos().saturating_sub(started) as f64 / 1e6;
                info!(
                    "worker now uses member list version {} ({} members; was version {}, {} members); applied in {took_ms:.2} ms",
                    change.new_version, change.new_count, change.old_version, change.old_count
                );
                self.metrics.set(self.metrics.members, change.new_count as u64);
                self.metrics.set(self.metrics.version, change.new_version);
            }
            Ok(None) => {}
            Err(e) => {
                self.metrics.count(self.metrics.host_errors);
                warn!("could not read the member list, keeping the current one: {e}");
                return false;
            }
        }
        true
    }
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::parse(&bytes, |k| std::env::var(k).ok()) {
            Ok(c) => c,
            Err(e) => {
                error!("dynamic-sharding refused its configuration: {e}");
                return false;
            }
        };
        let metrics = match Metrics::define() {
            Ok(m) => m,
            Err(e) => {
                error!("dynamic-sharding could not define its stats: {e}");
                return false;
            }
        };
        if config.mode == Mode::Control {
            match config.control_tokens.len() {
                0 => warn!(
                    "control API has no token ({} is unset): every member update will be refused",
                    config.control_token_source
                ),
                1 => info!("control API enabled, token from {}", config.control_token_source),
                n => info!(
                    "control API enabled, {n} tokens (a rotation) from {}",
                    config.control_token_source
                ),
            }
        }
        info!(
            "dynamic-sharding configured: mode {:?}, vnodes {}, {} bootstrap members",
            config.mode,
            config.vnodes,
            config.bootstrap.len()
        );
        let view = MemberView::new(&config.bootstrap, config.vnodes);
        let shared = Rc::new(Shared {
            config,
            metrics,
            view: RefCell::new(view),
            seen_updates: Cell::new(None),
        });
        shared.refresh();
        if let Ok(view) = shared.view.try_borrow() {
            metrics.set(metrics.members, view.list().len() as u64);
            metrics.set(metrics.version, view.list().version);
        }
        self.shared = Some(shared);
        self.set_tick_period(REFRESH_PERIOD);
        true
    }

    fn on_tick(&mut self) {
        if let Some(shared) = &self.shared {
            if shared.config.mode != Mode::Control {
                shared.refresh();
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(HttpFilter {
            shared,
            pending: None,
            control: None,
            fanout: Vec::new(),
            after_fanout: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A control request waiting for its body.
struct ControlRequest {
    method: String,
    authorization: Option<String>,
}

/// What a paused request does once its `DELETE` fan-out is over.
enum AfterFanout {
    /// Redirect mode: send this (the 307).
    Reply(Reply),
    /// Proxy mode: go on to the owner.
    Resume,
}

/// One fan-out call in flight.
struct FanoutCall {
    token: u32,
    member: Member,
}

struct HttpFilter {
    shared: Rc<Shared>,
    /// Redirect mode: the reply to send once the request body has been read.
    pending: Option<Reply>,
    control: Option<ControlRequest>,
    /// `DELETE` fan-out calls that have not answered yet.
    fanout: Vec<FanoutCall>,
    /// Set when the request waits for nothing but `fanout`.
    after_fanout: Option<AfterFanout>,
}

impl Context for HttpFilter {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, _body_size: usize, _trailers: usize) {
        let Some(i) = self.fanout.iter().position(|c| c.token == token) else {
            return;
        };
        let call = self.fanout.swap_remove(i);
        // No headers: Envoy got no answer (reset, or the call's timeout fired before headers).
        let status = if num_headers == 0 {
            None
        } else {
            host::http_call_response_header_str(":status")
                .ok()
                .flatten()
                .and_then(|s| s.parse::<u32>().ok())
        };
        if !status.is_some_and(|s| (200..300).contains(&s)) {
            let m = &self.shared.metrics;
            m.count(m.fanout_failures);
            let what = status.map_or_else(|| "no answer".to_owned(), |s| format!("status {s}"));
            warn!(
                "DELETE fan-out to {} failed ({what}): a copy of the group may remain there until a later DELETE of it reaches that pushgateway",
                call.member
            );
        }
        if self.fanout.is_empty() {
            self.finish_fanout();
        }
    }
}

impl HttpFilter {
    /// Sends the same `DELETE` to each of `targets`, with no body and only the headers pushgateway
    /// needs: its own `:authority`, the destination header the cluster routes on (set here, never
    /// taken from the client) and the client's `authorization` (pushgateways behind basic auth
    /// refuse a `DELETE` without it; the client sends it to the owner anyway).
    fn start_fanout(&mut self, path: &str, targets: &[Member], authorization: Option<&str>) {
        if targets.is_empty() {
            return;
        }
        let m = &self.shared.metrics;
        let destination = self.shared.config.destination_header.as_str();
        for member in targets {
            let mut headers = vec![
                (":method", "DELETE"),
                (":path", path),
                (":authority", member.as_str()),
                (":scheme", "http"),
                (destination, member.as_str()),
            ];
            if let Some(a) = authorization {
                headers.push(("authorization", a));
            }
            m.count(m.fanout_calls);
            match host::dispatch_http_call(FANOUT_CLUSTER, headers, FANOUT_TIMEOUT) {
                Ok(token) => self.fanout.push(FanoutCall {
                    token,
                    member: member.clone(),
                }),
                Err(e) => {
                    m.count(m.fanout_failures);
                    // Measured: a call the cluster finds no host for (no destination header)
                    // fails here, as InternalFailure.
                    let why = match e.status {
                        host::BAD_ARGUMENT => format!("cluster {FANOUT_CLUSTER} is not configured"),
                        host::INTERNAL_FAILURE => format!("cluster {FANOUT_CLUSTER} found no host for it"),
                        _ => e.to_string(),
                    };
                    warn!(
                        "DELETE fan-out to {member} failed ({why}): a copy of the group may remain there until a later DELETE of it reaches that pushgateway"
                    );
                }
            }
        }
    }

    /// Carries out what waited for the fan-out, if the request is at that point.
    fn finish_fanout(&mut self) {
        match self.after_fanout.take() {
            Some(AfterFanout::Reply(reply)) => {
                self.reply(&reply);
            }
            Some(AfterFanout::Resume) => {
                if let Err(e) = host::resume_request() {
                    self.shared.metrics.count(self.shared.metrics.host_errors);
                    error!("could not resume the DELETE after its fan-out: {e}");
                }
            }
            None => {}
        }
    }

    /// Sends `reply` now, or once the fan-out calls answered.
    fn reply_after_fanout(&mut self, reply: Reply) -> Action {
        if self.fanout.is_empty() {
            self.reply(&reply)
        } else {
            self.after_fanout = Some(AfterFanout::Reply(reply));
            Action::Pause
        }
    }

    fn reply(&self, reply: &Reply) -> Action {
        let headers = reply.headers.iter().map(|(n, v)| (*n, v.as_str()));
        if let Err(e) = host::send_reply(reply.status, headers, reply.body.as_bytes()) {
            self.shared.metrics.count(self.shared.metrics.host_errors);
            error!("could not send the {} reply: {e}", reply.status);
        }
        Action::Pause
    }

    fn internal_error(&self, e: HostError) -> Action {
        self.shared.metrics.count(self.shared.metrics.host_errors);
        error!("request refused: {e}");
        self.reply(&Reply::text(
            500,
            "dynamic-sharding: internal error, see the Envoy log\n",
        ))
    }

    fn count(&self, outcome: Outcome) {
        let m = &self.shared.metrics;
        m.count(match outcome {
            Outcome::Redirect => m.redirects,
            Outcome::Lookup => m.lookups,
            Outcome::BadRequest | Outcome::MethodNotAllowed => m.bad_requests,
            Outcome::NoMember => m.no_member,
        });
    }

    fn data_headers(&mut self, end_of_stream: bool) -> Result<Action, HostError> {
        let mode = self.shared.config.mode;
        let headers = host::RequestHeaders::fetch()?;
        let destination = self.shared.config.destination_header.as_str();
        if mode == Mode::Proxy && headers.contains(destination) {
            // Before anything else: only this filter may name the destination. (Looked up in the
            // copy first: a removal is a host call, and clients do not send the header.)
            host::remove_request_header(destination)?;
        }
        let (Some(method), Some(path)) = (headers.get(":method"), headers.get(":path")) else {
            return Ok(Action::Continue);
        };
        self.shared.catch_up();
        let plan = match self.shared.view.try_borrow() {
            Ok(view) => routing::plan(mode, method, path, view.ring(), view.list()),
            Err(_) => return Ok(Action::Continue),
        };
        if !plan.fanout.is_empty() {
            self.start_fanout(path, &plan.fanout, headers.get("authorization"));
        }
        match plan.decision {
            Decision::PassThrough => Ok(Action::Continue),
            Decision::Route { owner } => {
                host::set_request_header(&self.shared.config.destination_header, owner.as_str())?;
                self.shared.metrics.count(self.shared.metrics.proxied);
                if self.fanout.is_empty() {
                    Ok(Action::Continue)
                } else {
                    // Held (body included, up to the listener's buffer limit) until the fan-out
                    // answered; then on to the owner.
                    self.after_fanout = Some(AfterFanout::Resume);
                    Ok(Action::Pause)
                }
            }
            Decision::Reply { reply, outcome } => {
                self.count(outcome);
                // A client that sent `Expect: 100-continue` has not uploaded the body yet: answering
                // now saves it an upload that would only be thrown away (Envoy then closes the
                // connection, a fair price for a large push).
                let expects_continue = headers
                    .get("expect")
                    .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
                if end_of_stream || mode == Mode::Proxy || expects_continue {
                    Ok(self.reply_after_fanout(reply))
                } else {
                    // Answer once the body is read, so the connection stays open.
                    self.pending = Some(reply);
                    Ok(Action::Continue)
                }
            }
        }
    }

    fn control_headers(&mut self, end_of_stream: bool) -> Result<Action, HostError> {
        let Some(path) = host::request_header_str(":path")? else {
            return Ok(Action::Continue);
        };
        if !control::is_control_path(&path) {
            return Ok(Action::Continue);
        }
        let request = ControlRequest {
            method: host::request_header_str(":method")?.unwrap_or_default(),
            authorization: host::request_header_str("authorization")?,
        };
        if end_of_stream {
            return Ok(self.serve_control(&request, &[]));
        }
        self.control = Some(request);
        Ok(Action::Continue)
    }

    fn serve_control(&self, request: &ControlRequest, body: &[u8]) -> Action {
        let config = &self.shared.config;
        let (reply, outcome) = control::handle(
            &request.method,
            request.authorization.as_deref(),
            body,
            &config.control_tokens,
            &config.bootstrap,
            &mut EnvoySharedData,
        );
        let m = &self.shared.metrics;
        match outcome {
            ControlOutcome::Accepted { old, new } => {
                m.count(m.updates_accepted);
                m.set(m.members, new.len() as u64);
                m.set(m.version, new.version);
                info!("{}", control::describe(&old, &new));
            }
            ControlOutcome::Unchanged => m.count(m.updates_accepted),
            ControlOutcome::Rejected(why) => {
                m.count(m.updates_rejected);
                warn!("member update refused ({}): {why}", reply.status);
            }
            ControlOutcome::Read => {}
        }
        self.reply(&reply)
    }
}

impl HttpContext for HttpFilter {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let result = match self.shared.config.mode {
            Mode::Control => self.control_headers(end_of_stream),
            Mode::Redirect | Mode::Proxy => self.data_headers(end_of_stream),
        };
        result.unwrap_or_else(|e| self.internal_error(e))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(request) = &self.control {
            if body_size > crate::members::MAX_UPDATE_BYTES {
                let why = format!("body is over {} bytes", crate::members::MAX_UPDATE_BYTES);
                let reply = Reply::json(413, serde_json::json!({ "error": why }).to_string());
                self.shared.metrics.count(self.shared.metrics.updates_rejected);
                self.control = None;
                return self.reply(&reply);
            }
            if !end_of_stream {
                // Keep buffering in Envoy until the whole body is there.
                return Action::Pause;
            }
            let body = match host::request_body(0, body_size) {
                Ok(b) => b,
                Err(e) => return self.internal_error(e),
            };
            return self.serve_control(request, &body);
        }
        if self.pending.is_none() {
            return Action::Continue;
        }
        if end_of_stream {
            // The reply ends the request here; Envoy discards what it holds of the body.
            if let Some(reply) = self.pending.take() {
                return self.reply_after_fanout(reply);
            }
        }
        // Nothing goes upstream: drop the bytes so the buffer filter behind us holds nothing.
        if body_size > 0 {
            if let Err(e) = host::drop_request_body(body_size) {
                self.pending = None;
                return self.internal_error(e);
            }
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        if let Some(reply) = self.pending.take() {
            return self.reply_after_fanout(reply);
        }
        if let Some(request) = self.control.take() {
            // The body (paused, so held by Envoy) ended before the trailers.
            return match host::request_body(0, crate::members::MAX_UPDATE_BYTES + 1) {
                Ok(body) => self.serve_control(&request, &body),
                Err(e) => self.internal_error(e),
            };
        }
        Action::Continue
    }
}
