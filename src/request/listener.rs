//! One listener's filter on one worker (one proxy-wasm root context): its configuration, the
//! host it counts its stats on, and the worker's view of the member list, kept up to date.

use super::host::{Host, Stat};
use super::replication::Failure;
use crate::config::{Config, Mode};
use crate::routing::Replica;
use crate::store::MemberView;
use log::Level;
use std::cell::{Cell, RefCell};

/// Least time between two warnings about failed replications on one worker's listener: a
/// standby that is down fails every write to its slot, and one line per write would flood the
/// log. Each line says how many failures it stands for; the counter has them all.
const REPLICATION_WARNING_PERIOD_NANOS: u64 = 1_000_000_000;

/// What every request of one root context shares.
pub struct Listener<H> {
    pub config: Config,
    pub(super) host: H,
    view: RefCell<MemberView>,
    /// `member_updates_accepted_total` when the view last caught up with the shared data.
    seen_updates: Cell<Option<u64>>,
    /// When the last warning about a failed replication was logged, and the failures since.
    replication_warned_at: Cell<Option<u64>>,
    replication_failures_unlogged: Cell<u64>,
}

impl<H: Host> Listener<H> {
    /// The listener's filter, its view read from the shared data (bootstrap members until an
    /// update is stored) and its gauges set.
    pub fn start(config: Config, host: H) -> Listener<H> {
        if config.mode == Mode::Control {
            let source = &config.control_token_source;
            match config.control_tokens.len() {
                0 => host.log(
                    Level::Warn,
                    format_args!(
                        "control API has no token ({source} is unset): every member update will be refused"
                    ),
                ),
                1 => host.log(
                    Level::Info,
                    format_args!("control API enabled, token from {source}"),
                ),
                n => host.log(
                    Level::Info,
                    format_args!("control API enabled, {n} tokens (a rotation) from {source}"),
                ),
            }
        }
        host.log(
            Level::Info,
            format_args!(
                "dynamic-sharding configured: mode {:?}, vnodes {}, {} bootstrap members",
                config.mode,
                config.vnodes,
                config.bootstrap.len()
            ),
        );
        let view = MemberView::new(&config.bootstrap, config.vnodes);
        let listener = Listener {
            config,
            host,
            view: RefCell::new(view),
            seen_updates: Cell::new(None),
            replication_warned_at: Cell::new(None),
            replication_failures_unlogged: Cell::new(0),
        };
        listener.refresh();
        if let Ok(view) = listener.view.try_borrow() {
            listener.host.record(Stat::Members, view.list().len() as u64);
            listener.host.record(Stat::MembersVersion, view.list().version);
        }
        listener
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    /// Periodically, whatever requests come: data listeners re-read the member list, so an idle
    /// worker rebuilds its ring off the request path and its gauges do not go stale.
    pub fn tick(&self) {
        if self.config.mode != Mode::Control {
            self.refresh();
        }
    }

    /// A write that did not reach its standby: counted, and logged at warn unless a warning was
    /// logged less than a second ago (the next one then says how many it stands for).
    pub(super) fn replication_failed(&self, replica: &Replica, why: impl FnOnce() -> Failure) {
        self.host.count(Stat::ReplicationFailures);
        let now = self.host.now_nanos();
        let quiet = self
            .replication_warned_at
            .get()
            .is_some_and(|at| now.saturating_sub(at) < REPLICATION_WARNING_PERIOD_NANOS);
        if quiet {
            self.replication_failures_unlogged
                .set(self.replication_failures_unlogged.get() + 1);
            return;
        }
        let unlogged = self.replication_failures_unlogged.replace(0);
        let more = if unlogged == 0 {
            String::new()
        } else {
            format!(" ({unlogged} more replication failures since the last such line)")
        };
        self.replication_warned_at.set(Some(now));
        let why = why();
        self.host.log(
            Level::Warn,
            format_args!(
                "replication to standby {} of slot {} failed ({why}): the standby lacks this write until consul-sync repairs it{more}",
                replica.standby, replica.slot
            ),
        );
    }

    /// The view, or `None` while it is being refreshed (which a single-threaded worker never
    /// sees; no panic if it did).
    pub(super) fn view(&self) -> Option<std::cell::Ref<'_, MemberView>> {
        self.view.try_borrow().ok()
    }

    /// Per request: brings the view up to date if an update was accepted since it last did.
    ///
    /// The control API counts every accepted update in `member_updates_accepted_total` after it
    /// stored the list and before it answers `200`, and Envoy keeps one stat of a name for every
    /// worker. So a request that starts after the `200` reads a count this worker has not seen,
    /// and re-reads the shared data (written before the count moved). Reading the stat is one
    /// host call that copies nothing; the shared-data read it replaces takes Envoy's
    /// process-wide shared-data lock, copies the value twice and calls back into the VM to
    /// allocate it.
    pub(super) fn catch_up(&self) {
        match self.host.stat(Stat::UpdatesAccepted) {
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
        let started = self.host.now_nanos();
        match self.host.with_shared_data(|store| view.refresh(store)) {
            Ok(Some(change)) => {
                // The whole update on this worker: read, decode, rebuild the ring (bench/README.md
                // publishes it per member count).
                let took_ms = self.host.now_nanos().saturating_sub(started) as f64 / 1e6;
                self.host.log(
                    Level::Info,
                    format_args!(
                        "worker now uses member list version {} ({} members; was version {}, {} members); applied in {took_ms:.2} ms",
                        change.new_version, change.new_count, change.old_version, change.old_count
                    ),
                );
                self.host.record(Stat::Members, change.new_count as u64);
                self.host.record(Stat::MembersVersion, change.new_version);
            }
            Ok(None) => {}
            Err(e) => {
                self.host.count(Stat::HostErrors);
                self.host.log(
                    Level::Warn,
                    format_args!("could not read the member list, keeping the current one: {e}"),
                );
                return false;
            }
        }
        true
    }
}
