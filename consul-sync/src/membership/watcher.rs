//! Registration and the watch on Consul: turns the passing instances into the published member
//! list, which the Envoy pushers and the HTTP endpoint read.
//!
//! Owns the loop and what it does with Consul's answers; the rules for when the list changes are
//! in [`PublishedList`]:
//! - Consul down: nothing is published; the last list stays in force (never an empty list because
//!   Consul does not answer). Consul up with nothing passing: the empty list is published.
//! - Settling: held-back lists wait until every registered pushgateway passes or two check
//!   intervals plus the timeout plus 2 s have passed (Consul staggers a new check's first run
//!   over an interval and syncs its result to the catalog afterwards; 3 s was measured under load
//!   for a 1 s interval).
//! - Consul's index going backwards means its state was reset (e.g. an agent that lost its data):
//!   the index is reset to 0, the pushgateways are registered again and the list settles again.

use crate::backoff::Backoff;
use crate::config::Config;
use crate::consul::{ConsulClient, Health, Registration};
use crate::membership::list::{describe_change, ListUpdate, PublishedList};
use crate::membership::versions::{unix_millis, Versions};
use crate::metrics::Metrics;
use crate::net::NetError;
use crate::shutdown::{sleep_or_shutdown, Shutdown};
use dynamic_sharding::members::{Member, MemberList};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// How long one blocking query may wait in Consul.
pub const BLOCKING_WAIT: Duration = Duration::from_secs(300);
/// Least time between the starts of two queries, so a Consul that answers at once never makes
/// this loop spin.
const MIN_QUERY_SPACING: Duration = Duration::from_millis(50);
/// Added to 2 × interval + timeout for the settling time.
const SETTLE_MARGIN: Duration = Duration::from_secs(2);
/// Consul failures logged at warn: the first, then one in this many.
const WARN_EVERY: u64 = 10;

/// Everything the watch loop needs.
pub struct Watcher {
    /// The configuration at the start: Consul, the service name and the check do not change.
    pub config: Arc<Config>,
    /// Reloaded configurations: the drain list and the servers to settle on come from here.
    pub updates: watch::Receiver<Arc<Config>>,
    pub client: ConsulClient,
    pub metrics: Arc<Metrics>,
    pub published: watch::Sender<Option<MemberList>>,
    /// Versions the Envoys hold; new lists get a version above them.
    pub versions: Arc<Versions>,
}

/// What the loop carries from one answer to the next.
struct WatchState {
    list: PublishedList,
    /// The passing pushgateways Consul showed last, to re-apply a reloaded drain list to.
    last_passing: Option<Vec<Member>>,
    backoff: Backoff,
    /// Failed requests in a row.
    failures: u64,
    /// The index the next query blocks on.
    index: u64,
    /// The index of the last answer, to tell when Consul's index went back.
    last_index: u64,
    /// While a list is held back: until when.
    hold_until: Option<Instant>,
}

impl Watcher {
    /// Registers, then watches until the shutdown.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let mut st = WatchState {
            list: PublishedList::new(self.config.servers.clone()),
            last_passing: None,
            backoff: Backoff::new(),
            failures: 0,
            index: 0,
            last_index: 0,
            hold_until: None,
        };
        st.list.set_drain(self.updates.borrow_and_update().drain.clone());
        // Registration first: a watch that starts before it would only see old state.
        if !self
            .register_all(&mut st.backoff, &mut st.failures, &mut shutdown)
            .await
        {
            return;
        }
        st.list.settle_until(Instant::now() + self.settle_time());
        let mut last_start = Instant::now() - MIN_QUERY_SPACING;
        loop {
            let spacing = (last_start + MIN_QUERY_SPACING).saturating_duration_since(Instant::now());
            if !spacing.is_zero() && sleep_or_shutdown(spacing, &mut shutdown).await {
                return;
            }
            last_start = Instant::now();
            // While a list is held back, ask again without blocking once the settling ends.
            let query_index = if st.hold_until.is_some_and(|t| Instant::now() >= t) {
                0
            } else {
                st.index
            };
            let query = self
                .client
                .passing(&self.config.service_name, query_index, BLOCKING_WAIT);
            let hold_deadline = st
                .hold_until
                .unwrap_or_else(|| Instant::now() + BLOCKING_WAIT * 2);
            let result = tokio::select! {
                _ = shutdown.recv() => return,
                changed = self.updates.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.after_reload(&mut st);
                    continue;
                }
                _ = self.versions.refused() => {
                    self.after_refusal(&mut st).await;
                    continue;
                }
                _ = tokio::time::sleep_until(hold_deadline), if st.hold_until.is_some() && query_index != 0 => {
                    continue;
                }
                r = query => r,
            };
            if !self.take_answer(result, &mut st, &mut shutdown).await {
                return;
            }
        }
    }

    /// A reloaded configuration: its drain list and servers apply to what Consul showed last.
    fn after_reload(&mut self, st: &mut WatchState) {
        let config = self.updates.borrow_and_update().clone();
        st.list.set_drain(config.drain.clone());
        st.list.set_registered(config.servers.clone());
        if let Some(passing) = &st.last_passing {
            let update = st.list.observe(passing.clone(), Instant::now(), self.now_ms());
            self.apply(update, &mut st.hold_until, st.index);
        }
    }

    /// Takes one answer (or failure) of Consul; false when the shutdown came while it waited.
    async fn take_answer(
        &self,
        result: Result<Health, NetError>,
        st: &mut WatchState,
        shutdown: &mut Shutdown,
    ) -> bool {
        self.metrics.consul_request("health");
        let health = match result {
            Ok(h) => h,
            Err(e) => {
                self.metrics.consul_error("health");
                st.failures += 1;
                self.log_failure(&e, st.failures, "the last member list stays in force");
                // After an error, read afresh: the next answer comes at once and shows
                // whether Consul's state was reset meanwhile.
                st.index = 0;
                return !sleep_or_shutdown(st.backoff.next_delay(), shutdown).await;
            }
        };
        if st.failures > 0 {
            info!(
                "Consul at {} answers again after {} failed requests",
                self.config.consul.base_url, st.failures
            );
            st.failures = 0;
        }
        st.backoff.reset();
        self.metrics.consul_ok();
        if health.index < st.last_index {
            warn!(
                "Consul's index went back from {} to {}: its state was reset; registering the pushgateways again",
                st.last_index, health.index
            );
            st.last_index = 0;
            st.index = 0;
            if !self
                .register_all(&mut st.backoff, &mut st.failures, shutdown)
                .await
            {
                return false;
            }
            st.list.settle_until(Instant::now() + self.settle_time());
            return true;
        }
        st.last_index = health.index;
        // Index 0 would make the next query return at once; Consul says to use 1 then.
        st.index = health.index.max(1);
        for s in &health.skipped {
            warn!("ignoring a passing instance of {}: {s}", self.config.service_name);
        }
        st.last_passing = Some(health.members.clone());
        let update = st.list.observe(health.members, Instant::now(), self.now_ms());
        self.apply(update, &mut st.hold_until, health.index);
        true
    }

    /// The version clock's input: now, or above every version an Envoy holds.
    fn now_ms(&self) -> u64 {
        unix_millis().max(self.versions.floor())
    }

    async fn after_refusal(&self, st: &mut WatchState) {
        let health = match self
            .client
            .passing(&self.config.service_name, 0, BLOCKING_WAIT)
            .await
        {
            Ok(h) => h,
            Err(e) => {
                debug!("reading Consul after a refused push: {e}");
                return;
            }
        };
        match st.list.observe(health.members, Instant::now(), self.now_ms()) {
            ListUpdate::Unchanged => {
                if let Some(list) = st.list.republish(self.now_ms()) {
                    info!(
                        "an Envoy holds another writer's member list with a higher version, but ours is what \
                         Consul says now: sending it again as version {}",
                        list.version
                    );
                    self.published.send_replace(Some(list));
                }
            }
            update => self.apply(update, &mut st.hold_until, health.index),
        }
    }

    /// Carries out what [`PublishedList::observe`] decided.
    fn apply(&self, update: ListUpdate, hold_until: &mut Option<Instant>, index: u64) {
        match update {
            ListUpdate::Unchanged => {
                *hold_until = None;
                debug!("Consul index {index}: members unchanged");
            }
            ListUpdate::Hold { until } => {
                if hold_until.is_none() {
                    info!(
                        "waiting up to {:.1}s for the health checks of all registered pushgateways before the first push",
                        until.saturating_duration_since(Instant::now()).as_secs_f64()
                    );
                }
                *hold_until = Some(until);
            }
            ListUpdate::Publish { old, new } => {
                *hold_until = None;
                info!("{}", describe_change(old.as_ref(), &new, self.config.vnodes));
                if old.is_some() {
                    self.metrics.member_changes.inc();
                }
                self.metrics.set_members(&new);
                self.published.send_replace(Some(new));
            }
        }
    }

    fn settle_time(&self) -> Duration {
        self.config.check.interval * 2 + self.config.check.timeout + SETTLE_MARGIN
    }

    fn log_failure(&self, e: &NetError, failures: u64, consequence: &str) {
        if failures == 1 || failures % WARN_EVERY == 0 {
            warn!("{e} ({failures} failed in a row; retrying with backoff; {consequence})");
        } else {
            debug!("{e} ({failures} failed in a row)");
        }
    }

    /// Registers every configured pushgateway, retrying with backoff. False on shutdown.
    async fn register_all(&self, backoff: &mut Backoff, failures: &mut u64, shutdown: &mut Shutdown) -> bool {
        for member in &self.config.servers {
            let reg = Registration::for_member(member, &self.config.service_name, &self.config.check);
            loop {
                self.metrics.consul_request("register");
                let result = tokio::select! {
                    _ = shutdown.recv() => return false,
                    r = self.client.register(&reg) => r,
                };
                match result {
                    Ok(()) => {
                        info!(
                            "registered {member} in Consul as {} (service {})",
                            reg.id, reg.name
                        );
                        backoff.reset();
                        self.metrics.consul_ok();
                        break;
                    }
                    Err(e) => {
                        self.metrics.consul_error("register");
                        *failures += 1;
                        self.log_failure(
                            &e,
                            *failures,
                            "nothing is pushed before the pushgateways are registered",
                        );
                        if sleep_or_shutdown(backoff.next_delay(), shutdown).await {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }
}
