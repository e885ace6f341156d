//! What the request logic needs from the proxy: the [`Host`] trait, its error, and the stats it
//! counts.
//!
//! The filter implements it over the raw proxy-wasm ABI (`src/filter/host.rs`); unit tests use a
//! double that records every call. The logic is generic over it, so the filter's calls are static
//! and cost what the ABI calls cost.

use super::header_map::RequestHeaders;
use crate::routing::Reply;
use crate::store::SharedStore;
use std::fmt;
use std::time::Duration;

/// `http_call`: unknown cluster, or the call lacks `:method`, `:path` or `:authority`.
pub const BAD_ARGUMENT: u32 = 2;
/// `http_call`: Envoy's async client could not start the call (e.g. the cluster has no host for it).
pub const INTERNAL_FAILURE: u32 = 10;

/// A host call that did not succeed: which one and the proxy-wasm status it gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError {
    pub call: &'static str,
    pub status: u32,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host call {} failed with status {}", self.call, self.status)
    }
}

/// The filter's stats, named `dynamic_sharding.<name>`. Envoy keeps one stat of a name for every
/// worker, so a count made on one worker is read on all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    Redirects,
    Proxied,
    Lookups,
    BadRequests,
    NoMember,
    UpdatesAccepted,
    UpdatesRejected,
    HostErrors,
    FanoutCalls,
    FanoutFailures,
    /// Writes sent (or meant to be sent) to their slot's standby.
    Replications,
    /// Those the standby did not take: not sent, refused, no answer in time.
    ReplicationFailures,
    /// Gauge: members in the ring this worker routes with.
    Members,
    /// Gauge: the version of that member list.
    MembersVersion,
    /// `DELETE`s refused because their worker had `max_delete_fanouts` in flight.
    DeleteFanoutLimited,
    /// `DELETE`s refused because `max_tombstones` were held.
    TombstonesFull,
    /// `DELETE`s that left a tombstone (a new one, or merged into their group's).
    TombstonesRecorded,
    /// Tombstones forgotten after consul-sync acknowledged them.
    TombstonesAcknowledged,
    /// Gauge: tombstones held, as the last worker to change them counted.
    Tombstones,
}

impl Stat {
    /// Every stat, each at the index of its discriminant.
    pub const ALL: [Stat; 19] = [
        Stat::Redirects,
        Stat::Proxied,
        Stat::Lookups,
        Stat::BadRequests,
        Stat::NoMember,
        Stat::UpdatesAccepted,
        Stat::UpdatesRejected,
        Stat::HostErrors,
        Stat::FanoutCalls,
        Stat::FanoutFailures,
        Stat::Replications,
        Stat::ReplicationFailures,
        Stat::Members,
        Stat::MembersVersion,
        Stat::DeleteFanoutLimited,
        Stat::TombstonesFull,
        Stat::TombstonesRecorded,
        Stat::TombstonesAcknowledged,
        Stat::Tombstones,
    ];

    /// The stat's full name, as Envoy's `/stats` shows it.
    pub fn name(self) -> &'static str {
        match self {
            Stat::Redirects => "dynamic_sharding.redirects_total",
            Stat::Proxied => "dynamic_sharding.proxied_total",
            Stat::Lookups => "dynamic_sharding.lookups_total",
            Stat::BadRequests => "dynamic_sharding.bad_requests_total",
            Stat::NoMember => "dynamic_sharding.no_member_total",
            Stat::UpdatesAccepted => "dynamic_sharding.member_updates_accepted_total",
            Stat::UpdatesRejected => "dynamic_sharding.member_updates_rejected_total",
            Stat::HostErrors => "dynamic_sharding.host_errors_total",
            Stat::FanoutCalls => "dynamic_sharding.delete_fanout_calls_total",
            Stat::FanoutFailures => "dynamic_sharding.delete_fanout_failures_total",
            Stat::Replications => "dynamic_sharding.replications_total",
            Stat::ReplicationFailures => "dynamic_sharding.replication_failures_total",
            Stat::Members => "dynamic_sharding.members",
            Stat::MembersVersion => "dynamic_sharding.members_version",
            Stat::DeleteFanoutLimited => "dynamic_sharding.delete_fanout_limited_total",
            Stat::TombstonesFull => "dynamic_sharding.tombstones_full_total",
            Stat::TombstonesRecorded => "dynamic_sharding.tombstones_recorded_total",
            Stat::TombstonesAcknowledged => "dynamic_sharding.tombstones_acknowledged_total",
            Stat::Tombstones => "dynamic_sharding.tombstones",
        }
    }

    /// A gauge is set; every other stat is a counter.
    pub fn is_gauge(self) -> bool {
        matches!(self, Stat::Members | Stat::MembersVersion | Stat::Tombstones)
    }
}

/// The proxy as one request (and its listener's filter) sees it. Each method but
/// [`Host::with_shared_data`] is at most one proxy-wasm host call; none panics.
pub trait Host {
    /// Every request header, in one copy.
    fn request_headers(&self) -> Result<RequestHeaders, HostError>;
    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError>;
    /// Removing an absent header succeeds.
    fn remove_request_header(&self, name: &str) -> Result<(), HostError>;
    /// The request body bytes `[start, start + max)` the host holds for this filter.
    fn request_body(&self, start: usize, max: usize) -> Result<Vec<u8>, HostError>;
    /// Replaces the request body bytes `[0, size)` the host holds with nothing.
    fn drop_request_body(&self, size: usize) -> Result<(), HostError>;
    /// Lets a request that was paused go on through the filter chain.
    fn resume_request(&self) -> Result<(), HostError>;
    /// Answers the request with `reply`; nothing of it goes upstream.
    fn send_reply(&self, reply: &Reply) -> Result<(), HostError>;
    /// Sends a request with `body` (none if empty) to `cluster`; its answer (or failure) is
    /// reported with the returned token.
    fn dispatch_http_call_with_body(
        &self,
        cluster: &str,
        headers: Vec<(&str, &str)>,
        body: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError>;
    /// [`Host::dispatch_http_call_with_body`] without a body.
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: Vec<(&str, &str)>,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        self.dispatch_http_call_with_body(cluster, headers, &[], timeout)
    }
    /// A header of the answer being reported (only while one is); `None` when absent or not UTF-8.
    fn http_call_response_header(&self, name: &str) -> Result<Option<String>, HostError>;
    /// At most `max` bytes of the body of the answer being reported (only while one is).
    fn http_call_response_body(&self, max: usize) -> Result<Vec<u8>, HostError>;
    /// The current value of a stat (every worker's counts).
    fn stat(&self, stat: Stat) -> Result<u64, HostError>;
    /// Adds one to a counter. A stat that cannot be counted is not worth failing a request for,
    /// so a failure is ignored.
    fn count(&self, stat: Stat);
    /// Sets a gauge; a failure is ignored as in [`Host::count`].
    fn record(&self, stat: Stat, value: u64);
    /// The host's wall clock in nanoseconds (0 if it refuses), for durations in logs.
    fn now_nanos(&self) -> u64;
    /// Writes to the proxy's log.
    fn log(&self, level: log::Level, message: fmt::Arguments<'_>);
    /// Runs `f` on the shared data every worker of the VM sees.
    fn with_shared_data<R>(&self, f: impl FnOnce(&mut dyn SharedStore) -> R) -> R;
}
