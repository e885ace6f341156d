//! One request through the filter, free of host calls: what it answers, when, which calls it
//! waits for and what their answers do. The filter's proxy-wasm contexts (`src/filter/`) only
//! translate the host's callbacks into calls on a [`Request`], which reaches the proxy through
//! the [`Host`] trait.
//!
//! Data listeners ask [`routing::plan`] and carry out its decision; the control listener serves
//! [`control::handle`] once the body is read.
//!
//! Redirect mode answers a push with a body only after the body was read (then Envoy keeps the
//! connection alive): the headers continue to the `buffer` filter that must follow this one, which
//! holds them, while this filter throws each body chunk away and replies at the end of the stream.
//!
//! A `DELETE` first goes, as a `DELETE` of the same path, to every other pushgateway that may hold
//! a copy of the group ([`routing::plan`]); the 307 is sent, or the request resumed to the owner,
//! only when every one of those calls answered or timed out ([`calls`]), so that when the client
//! sees its answer no other copy is left. A call that failed, or a pushgateway registered but not
//! passing (no call can reach it), leaves a tombstone that consul-sync applies later
//! ([`delete`]); a `DELETE` that could not keep that promise is answered `503` instead.
//!
//! A write to a slot with a standby is copied as its body goes by ([`replication`], up to the
//! configured limit) and sent to the standby when the body ended. The 307 waits for the standby's
//! answer; in proxy mode the last bytes of the body do (the body streams to the active until
//! then): the chunk that completes the declared length, or the end of a body of unknown length,
//! as the active cannot answer without either. So in both modes the standby takes the write
//! before the active, and the client's answer comes after both. A standby that fails costs the
//! client nothing but the wait (bounded by `replication_timeout`): the failure is counted and
//! logged, and a `DELETE` it missed leaves a tombstone for the standby, as a failed fan-out call
//! does.

pub mod calls;
pub mod delete;
pub mod header_map;
pub mod host;
pub mod listener;
pub mod replication;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use crate::config::Mode;
use crate::control::{self, ControlOutcome};
use crate::grouping_key::GroupingKey;
use crate::members::{Member, MAX_UPDATE_BYTES};
use crate::routing::{self, Decision, Outcome, Reply};
use crate::tombstones::{self, TombstoneOutcome};
use calls::{InFlight, Purpose, Then};
use delete::{FanoutSlot, PendingDelete};
pub use header_map::RequestHeaders;
pub use host::{Host, HostError, Stat};
pub use listener::Listener;
use log::Level;
use replication::{Failure, Replication};
use std::rc::Rc;
use std::time::Duration;

/// The cluster a `DELETE` fan-out call goes through: the shipped ORIGINAL_DST cluster, which
/// routes on the destination header set on the call (Envoy's async client hands the call's
/// headers to the cluster's load balancer as it does a routed request's).
pub const FANOUT_CLUSTER: &str = "pushgateway_owner";

/// Longest a client's `DELETE` waits for one fan-out call: a pushgateway answers a `DELETE` in
/// milliseconds; one that does not within this is counted as failed and the request goes on.
pub const FANOUT_TIMEOUT: Duration = Duration::from_secs(3);

/// What the host does with the request after a callback, as proxy-wasm's `Action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// A control request waiting for its body.
struct ControlRequest {
    method: String,
    path: String,
    authorization: Option<String>,
}

impl ControlRequest {
    /// The largest body the endpoint takes: a member list of [`crate::members::MAX_MEMBERS`]
    /// slots with standbys, or a tombstone acknowledgement.
    fn body_limit(&self) -> usize {
        if tombstones::is_tombstones_path(&self.path) {
            tombstones::MAX_ACK_BYTES
        } else {
            MAX_UPDATE_BYTES
        }
    }
}

/// One request, from its headers to its end.
pub struct Request<H: Host> {
    listener: Rc<Listener<H>>,
    /// Redirect mode: the reply to send once the request body has been read.
    after_body: Option<Reply>,
    control: Option<ControlRequest>,
    calls: InFlight,
    /// A write being copied for its slot's standby, until its body ended.
    replication: Option<Replication>,
    /// Proxy mode: the last of the body is held until the standby answered.
    holding: bool,
    /// A `DELETE` that may leave a copy behind, until it is answered.
    delete: Option<PendingDelete>,
}

impl<H: Host> Request<H> {
    pub fn new(listener: Rc<Listener<H>>) -> Request<H> {
        Request {
            listener,
            after_body: None,
            control: None,
            calls: InFlight::default(),
            replication: None,
            holding: false,
            delete: None,
        }
    }

    fn host(&self) -> &H {
        &self.listener.host
    }

    /// The request headers arrived (`end_of_stream`: and there is no body).
    pub fn on_headers(&mut self, end_of_stream: bool) -> Action {
        let result = match self.listener.config.mode {
            Mode::Control => self.control_headers(end_of_stream),
            Mode::Redirect | Mode::Proxy => self.data_headers(end_of_stream),
        };
        result.unwrap_or_else(|e| self.internal_error(e))
    }

    /// A chunk of the body arrived: `body_size` bytes are held by the host for this filter.
    pub fn on_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.control.is_some() {
            return self.control_body(body_size, end_of_stream);
        }
        if self.holding {
            // Envoy keeps what comes meanwhile (the end of the stream) behind the held bytes.
            return Action::Pause;
        }
        self.copy_for_standby(body_size);
        // Proxy mode: the active needs no end of stream after the declared length, so the
        // chunk that completes it is the one to hold. (Redirect mode answers at the end of the
        // stream, which always comes: nothing of the body goes on.)
        let complete =
            self.after_body.is_none() && self.replication.as_ref().is_some_and(Replication::complete);
        if end_of_stream || complete {
            return self.body_ended(body_size);
        }
        // Nothing goes upstream: drop the bytes so the buffer filter behind us holds nothing.
        if self.after_body.is_some() && body_size > 0 {
            if let Err(e) = self.host().drop_request_body(body_size) {
                return self.internal_error(e);
            }
        }
        Action::Continue
    }

    /// The body ended; the host still holds its last `last_chunk` bytes for this filter. Sends
    /// the write to its standby, then the reply that waited for the body, or (proxy mode) lets
    /// the end of the body go on to the active once the standby answered.
    fn body_ended(&mut self, last_chunk: usize) -> Action {
        let replicating = self.replicate();
        if let Some(reply) = self.after_body.take() {
            // Waiting for calls, hold nothing: the chunk would count against the buffer filter's
            // limit, and a reply ends the request anyway.
            if !self.calls.is_empty() && last_chunk > 0 {
                if let Err(e) = self.host().drop_request_body(last_chunk) {
                    return self.internal_error(e);
                }
            }
            // The reply ends the request here; Envoy discards what it holds of the body.
            return self.after_calls(Then::Reply(reply));
        }
        // A DELETE whose copy could not be sent settles its tombstone here too.
        if replicating || self.delete.is_some() {
            let action = self.after_calls(Then::Resume);
            self.holding = action == Action::Pause;
            return action;
        }
        Action::Continue
    }

    /// The request trailers arrived: the body (if any) ended before them.
    pub fn on_trailers(&mut self) -> Action {
        if self.holding {
            return Action::Pause;
        }
        if self.after_body.is_some() || self.replication.is_some() {
            return self.body_ended(0);
        }
        if let Some(request) = self.control.take() {
            // The body (paused, so held by Envoy) ended before the trailers.
            return match self.host().request_body(0, request.body_limit() + 1) {
                Ok(body) => self.serve_control(&request, &body),
                Err(e) => self.internal_error(e),
            };
        }
        Action::Continue
    }

    /// The call `token` answered (`num_headers` 0: it got no answer, reset or timed out).
    pub fn on_call_response(&mut self, token: u32, num_headers: usize) {
        let Some(purpose) = self.calls.answered(token) else {
            return;
        };
        let status = if num_headers == 0 {
            None
        } else {
            self.host()
                .http_call_response_header(":status")
                .ok()
                .flatten()
                .and_then(|s| s.parse::<u32>().ok())
        };
        match purpose {
            Purpose::Replicate(replica) => {
                if !status.is_some_and(|s| (200..300).contains(&s)) {
                    // The answer's body is read only for a line that is logged: a standby that
                    // is down fails every write to its slot.
                    let why = || self.answer_failure(num_headers, status);
                    self.listener.replication_failed(&replica, why);
                    self.not_reached(replica.standby);
                }
            }
            Purpose::DeleteCopy(member) => {
                if !status.is_some_and(|s| (200..300).contains(&s)) {
                    self.host().count(Stat::FanoutFailures);
                    let what = status.map_or_else(|| "no answer".to_owned(), |s| format!("status {s}"));
                    self.host().log(
                        Level::Warn,
                        format_args!(
                            "DELETE fan-out to {member} failed ({what}): a tombstone keeps the DELETE for that pushgateway"
                        ),
                    );
                    self.not_reached(member);
                }
            }
        }
        if let Some(then) = self.calls.released() {
            self.holding = false;
            let then = self.settle_delete(then);
            self.release(then);
        }
    }

    /// Why the call answer being reported is not a success.
    fn answer_failure(&self, num_headers: usize, status: Option<u32>) -> Failure {
        if num_headers == 0 {
            return Failure::NoAnswer;
        }
        let body = self
            .host()
            .http_call_response_body(replication::REASON_BYTES)
            .unwrap_or_default();
        Failure::Status(status.unwrap_or(0), replication::reason(&body))
    }

    fn data_headers(&mut self, end_of_stream: bool) -> Result<Action, HostError> {
        let listener = Rc::clone(&self.listener);
        let (mode, host) = (listener.config.mode, &listener.host);
        let headers = host.request_headers()?;
        let destination = listener.config.destination_header.as_str();
        if mode == Mode::Proxy && headers.contains(destination) {
            // Before anything else: only this filter may name the destination. (Looked up in the
            // copy first: a removal is a host call, and clients do not send the header.)
            host.remove_request_header(destination)?;
        }
        // One pass over the copy for what every push needs.
        let [method, path, expect] = headers.get_each([":method", ":path", "expect"]);
        let (Some(method), Some(path)) = (method, path) else {
            return Ok(Action::Continue);
        };
        listener.catch_up();
        let (plan, absent) = match listener.view() {
            Some(view) => {
                let plan = routing::plan(mode, method, path, view.ring(), view.list());
                let absent = if method == "DELETE" {
                    view.list().absent.clone()
                } else {
                    Vec::new()
                };
                (plan, absent)
            }
            None => return Ok(Action::Continue),
        };
        if method == "DELETE" {
            if let Err(refusal) = self.begin_delete(path, &plan, absent) {
                return Ok(self.reply(&refusal));
            }
        }
        if !plan.fanout.is_empty() {
            self.delete_copies(path, &plan.fanout, headers.get("authorization"));
        }
        let replication = plan.replica.map(|replica| {
            Replication::new(
                replica,
                method,
                path,
                &headers,
                listener.config.replication_body_limit,
            )
        });
        match plan.decision {
            Decision::PassThrough => Ok(Action::Continue),
            Decision::Route { owner } => {
                host.set_request_header(destination, owner.as_str())?;
                host.count(Stat::Proxied);
                self.replication = replication;
                if end_of_stream {
                    self.replicate();
                }
                // Held (body included, up to the listener's buffer limit) until the fan-out and,
                // without a body, the standby answered; then on to the owner.
                Ok(self.after_calls(Then::Resume))
            }
            Decision::Reply { reply, outcome } => {
                host.count(match outcome {
                    Outcome::Redirect => Stat::Redirects,
                    Outcome::Lookup => Stat::Lookups,
                    Outcome::BadRequest | Outcome::MethodNotAllowed => Stat::BadRequests,
                    Outcome::NoMember => Stat::NoMember,
                });
                // A client that sent `Expect: 100-continue` has not uploaded the body yet: answering
                // now saves it an upload that would only be thrown away (Envoy then closes the
                // connection, a fair price for a large push).
                let expects_continue = expect.is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
                self.replication = replication;
                if end_of_stream || mode == Mode::Proxy || expects_continue {
                    if let (false, Some(r)) = (end_of_stream, self.replication.as_mut()) {
                        r.body_not_read();
                    }
                    self.replicate();
                    Ok(self.after_calls(Then::Reply(reply)))
                } else {
                    // Answer once the body is read, so the connection stays open.
                    self.after_body = Some(reply);
                    Ok(Action::Continue)
                }
            }
        }
    }

    /// Sends the same `DELETE` to each of `targets`, with no body and only the headers pushgateway
    /// needs: its own `:authority`, the destination header the cluster routes on (set here, never
    /// taken from the client) and the client's `authorization` (pushgateways behind basic auth
    /// refuse a `DELETE` without it; the client sends it to the owner anyway).
    fn delete_copies(&mut self, path: &str, targets: &[Member], authorization: Option<&str>) {
        let listener = Rc::clone(&self.listener);
        let (host, destination) = (&listener.host, listener.config.destination_header.as_str());
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
            host.count(Stat::FanoutCalls);
            match host.dispatch_http_call(FANOUT_CLUSTER, headers, FANOUT_TIMEOUT) {
                Ok(token) => self.calls.sent(token, Purpose::DeleteCopy(member.clone())),
                Err(e) => {
                    host.count(Stat::FanoutFailures);
                    let why = refused_call(e);
                    host.log(
                        Level::Warn,
                        format_args!(
                            "DELETE fan-out to {member} failed ({why}): a tombstone keeps the DELETE for that pushgateway"
                        ),
                    );
                    self.not_reached(member.clone());
                }
            }
        }
    }

    /// Copies a body chunk of `size` bytes for the standby, if a write is being copied.
    fn copy_for_standby(&mut self, size: usize) {
        let host = &self.listener.host;
        if let Some(replication) = self.replication.as_mut() {
            if replication.wants(size) {
                replication.copy(host.request_body(0, size));
            }
        }
    }

    /// Sends the write being copied to its standby; true when the call is in flight. A write that
    /// cannot be sent is counted and logged as failed, as one the standby refuses.
    fn replicate(&mut self) -> bool {
        let Some(replication) = self.replication.take() else {
            return false;
        };
        let listener = Rc::clone(&self.listener);
        let (host, config) = (&listener.host, &listener.config);
        host.count(Stat::Replications);
        let sent = match replication.call(&config.destination_header) {
            Ok(call) => host
                .dispatch_http_call_with_body(
                    FANOUT_CLUSTER,
                    call.headers,
                    call.body,
                    config.replication_timeout,
                )
                .map_err(|e| Failure::NotSent(refused_call(e))),
            Err(why) => Err(why.clone()),
        };
        match sent {
            Ok(token) => {
                self.calls.sent(token, Purpose::Replicate(replication.replica));
                true
            }
            Err(why) => {
                listener.replication_failed(&replication.replica, || why);
                self.not_reached(replication.replica.standby);
                false
            }
        }
    }

    /// Before a `DELETE` that goes to its owner sends anything: refuses it (the reply) when its
    /// fan-out would exceed this worker's bound, or when it could need a tombstone and the list
    /// is full; otherwise notes what it may owe. `absent`: pushgateways no call can reach now.
    ///
    /// The copy for the owner's standby can need a tombstone, but takes no place under the bound
    /// by itself: it is one call per client request, as every replicated push is, where the
    /// bound is there for the fan-out's one call per other pushgateway.
    fn begin_delete(&mut self, path: &str, plan: &routing::Plan, absent: Vec<Member>) -> Result<(), Reply> {
        let goes_to_owner = matches!(
            plan.decision,
            Decision::Route { .. }
                | Decision::Reply {
                    outcome: Outcome::Redirect,
                    ..
                }
        );
        if !goes_to_owner || (plan.fanout.is_empty() && absent.is_empty() && plan.replica.is_none()) {
            return Ok(());
        }
        let (config, host) = (&self.listener.config, &self.listener.host);
        let slot = if plan.fanout.is_empty() {
            None
        } else {
            match FanoutSlot::take(config.max_delete_fanouts, host.now_nanos()) {
                Some(slot) => Some(slot),
                None => {
                    host.count(Stat::DeleteFanoutLimited);
                    return Err(delete::too_many(config.max_delete_fanouts));
                }
            }
        };
        // The gauge every worker records after changing the list: one cheap host call. Two
        // workers that both find room may each add one, so the list can exceed the bound by
        // the DELETEs in flight at once, themselves bounded.
        let held = host.stat(Stat::Tombstones).unwrap_or(0);
        if held >= u64::from(config.max_tombstones) {
            host.count(Stat::TombstonesFull);
            return Err(delete::tombstones_full(held, config.max_tombstones));
        }
        let path = path.split('?').next().unwrap_or(path);
        let group = GroupingKey::from_path(path)
            .map(|k| k.to_path())
            .unwrap_or_default();
        self.delete = Some(PendingDelete {
            group,
            at_ms: host.now_nanos() / 1_000_000,
            unreached: absent,
            slot,
        });
        Ok(())
    }

    /// A call of the `DELETE` did not reach `member`.
    fn not_reached(&mut self, member: Member) {
        if let Some(d) = self.delete.as_mut() {
            d.unreached.push(member);
        }
    }

    /// Once every call of a `DELETE` answered: its tombstone, if it did not reach every
    /// pushgateway; `then` goes ahead unless the tombstone could not be kept (then `503`). Not
    /// before the copy for the standby was sent (it waits for the end of a body) and answered.
    fn settle_delete(&mut self, then: Then) -> Then {
        if self.replication.is_some() {
            return then;
        }
        let Some(d) = self.delete.take() else {
            return then;
        };
        if d.unreached.is_empty() {
            return then;
        }
        match self.record_tombstone(&d) {
            Ok(()) => then,
            Err(why) => Then::Reply(delete::not_recorded(&d.unreached, &why)),
        }
    }

    fn record_tombstone(&self, d: &PendingDelete) -> Result<(), String> {
        let host = self.host();
        let result =
            host.with_shared_data(|store| tombstones::record(store, &d.group, d.at_ms, &d.unreached));
        match result {
            Ok(held) => {
                host.count(Stat::TombstonesRecorded);
                host.record(Stat::Tombstones, held as u64);
                Ok(())
            }
            Err(why) => {
                host.count(Stat::HostErrors);
                let names: Vec<&str> = d.unreached.iter().map(Member::as_str).collect();
                host.log(
                    Level::Error,
                    format_args!(
                        "the tombstone of a DELETE of {} that did not reach {} could not be kept: {why}",
                        d.group,
                        names.join(",")
                    ),
                );
                Err(why)
            }
        }
    }

    /// Carries out `then` now if no call is in flight, else once the last one answered.
    fn after_calls(&mut self, then: Then) -> Action {
        match self.calls.after(then).map(|then| self.settle_delete(then)) {
            Some(Then::Reply(reply)) => self.reply(&reply),
            // Nothing was paused: the request simply goes on.
            Some(Then::Resume) => Action::Continue,
            None => Action::Pause,
        }
    }

    /// Carries out what waited for the calls, outside the callback that paused the request.
    fn release(&self, then: Then) {
        match then {
            Then::Reply(reply) => {
                self.reply(&reply);
            }
            Then::Resume => {
                if let Err(e) = self.host().resume_request() {
                    self.host().count(Stat::HostErrors);
                    self.host().log(
                        Level::Error,
                        format_args!("could not resume the request after its calls: {e}"),
                    );
                }
            }
        }
    }

    fn reply(&self, reply: &Reply) -> Action {
        if let Err(e) = self.host().send_reply(reply) {
            self.host().count(Stat::HostErrors);
            self.host().log(
                Level::Error,
                format_args!("could not send the {} reply: {e}", reply.status),
            );
        }
        Action::Pause
    }

    fn internal_error(&mut self, e: HostError) -> Action {
        // Answered here: nothing that waited for the body or the calls is carried out.
        self.after_body = None;
        self.replication = None;
        self.host().count(Stat::HostErrors);
        self.host()
            .log(Level::Error, format_args!("request refused: {e}"));
        self.reply(&Reply::text(
            500,
            "dynamic-sharding: internal error, see the Envoy log\n",
        ))
    }

    fn control_headers(&mut self, end_of_stream: bool) -> Result<Action, HostError> {
        let headers = self.host().request_headers()?;
        let Some(path) = headers.get(":path") else {
            return Ok(Action::Continue);
        };
        if !control::is_control_path(path) && !tombstones::is_tombstones_path(path) {
            return Ok(Action::Continue);
        }
        let request = ControlRequest {
            method: headers.get(":method").unwrap_or_default().to_owned(),
            path: path.to_owned(),
            authorization: headers.get("authorization").map(str::to_owned),
        };
        if end_of_stream {
            return Ok(self.serve_control(&request, &[]));
        }
        self.control = Some(request);
        Ok(Action::Continue)
    }

    fn control_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(request) = self.control.as_ref() else {
            return Action::Continue;
        };
        let limit = request.body_limit();
        if body_size > limit {
            let why = format!("body is over {limit} bytes");
            let reply = Reply::json(413, serde_json::json!({ "error": why }).to_string());
            if tombstones::is_tombstones_path(&request.path) {
                self.host().log(
                    Level::Warn,
                    format_args!("tombstone request refused (413): {why}"),
                );
            } else {
                self.host().count(Stat::UpdatesRejected);
            }
            self.control = None;
            return self.reply(&reply);
        }
        if !end_of_stream {
            // Keep buffering in Envoy until the whole body is there.
            return Action::Pause;
        }
        let Some(request) = self.control.take() else {
            return Action::Continue;
        };
        match self.host().request_body(0, body_size) {
            Ok(body) => self.serve_control(&request, &body),
            Err(e) => self.internal_error(e),
        }
    }

    fn serve_control(&self, request: &ControlRequest, body: &[u8]) -> Action {
        if tombstones::is_tombstones_path(&request.path) {
            return self.serve_tombstones(request, body);
        }
        let (config, host) = (&self.listener.config, self.host());
        let (reply, outcome) = host.with_shared_data(|store| {
            control::handle(
                &request.method,
                request.authorization.as_deref(),
                body,
                &config.control_tokens,
                &config.bootstrap,
                store,
            )
        });
        match outcome {
            ControlOutcome::Accepted { old, new } => {
                host.count(Stat::UpdatesAccepted);
                host.record(Stat::Members, new.len() as u64);
                host.record(Stat::MembersVersion, new.version);
                host.log(Level::Info, format_args!("{}", control::describe(&old, &new)));
            }
            ControlOutcome::Unchanged => host.count(Stat::UpdatesAccepted),
            ControlOutcome::Rejected(why) => {
                host.count(Stat::UpdatesRejected);
                host.log(
                    Level::Warn,
                    format_args!("member update refused ({}): {why}", reply.status),
                );
            }
            ControlOutcome::Read => {}
        }
        self.reply(&reply)
    }

    fn serve_tombstones(&self, request: &ControlRequest, body: &[u8]) -> Action {
        let (config, host) = (&self.listener.config, self.host());
        let now_ms = host.now_nanos() / 1_000_000;
        let (reply, outcome) = host.with_shared_data(|store| {
            tombstones::handle(
                &request.method,
                &request.path,
                request.authorization.as_deref(),
                body,
                &config.control_tokens,
                store,
                now_ms,
            )
        });
        match outcome {
            TombstoneOutcome::Read { held } => host.record(Stat::Tombstones, held as u64),
            TombstoneOutcome::Acknowledged { forgotten, held } => {
                for _ in 0..forgotten {
                    host.count(Stat::TombstonesAcknowledged);
                }
                host.record(Stat::Tombstones, held as u64);
            }
            TombstoneOutcome::Rejected(why) => host.log(
                Level::Warn,
                format_args!("tombstone request refused ({}): {why}", reply.status),
            ),
        }
        self.reply(&reply)
    }
}

impl<H: Host> Drop for Request<H> {
    /// A `DELETE` that ends with calls still in flight (its client went away) may not have
    /// reached those pushgateways: they get a tombstone (applying one that was not needed
    /// deletes nothing that was pushed after the `DELETE`), and its place under the bound stays
    /// taken until those calls' timeout has passed.
    fn drop(&mut self) {
        let Some(mut d) = self.delete.take() else {
            return;
        };
        if !self.calls.is_empty() {
            if let Some(slot) = d.slot.take() {
                let timeout = FANOUT_TIMEOUT.as_nanos() as u64;
                slot.keep_until(self.host().now_nanos().saturating_add(timeout));
            }
        }
        d.unreached
            .extend(self.calls.pending().map(Purpose::target).cloned());
        if !d.unreached.is_empty() {
            let _ = self.record_tombstone(&d);
        }
    }
}

/// Why the host would not send a call to `pushgateway_owner`, as the operator can act on it.
fn refused_call(e: HostError) -> String {
    // Measured: a call the cluster finds no host for (no destination header) fails here, as
    // InternalFailure.
    match e.status {
        host::BAD_ARGUMENT => format!("cluster {FANOUT_CLUSTER} is not configured"),
        host::INTERNAL_FAILURE => format!("cluster {FANOUT_CLUSTER} found no host for it"),
        _ => e.to_string(),
    }
}
