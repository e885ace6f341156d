//! Registration and the watch on Consul: turns the instances Consul shows into the published member
//! list, which the Envoy pushers and the HTTP endpoint read.
//!
//! Owns the loop and what it does with Consul's answers; the rules for when the list changes are
//! in [`PublishedList`]:
//! - Every instance of the service is read (not only passing ones), so that "Consul does not know
//!   the pushgateways" is told apart from "none passes".
//! - Consul down: nothing is published; the last list stays in force (never an empty list because
//!   Consul does not answer). Consul up with nothing passing, and the pushgateways not answering
//!   either: the empty list is published.
//! - Consul showing none of the registered pushgateways: the last list stays; logged, shown in
//!   `consul_sync_consul_pushgateways_missing`; the registrar registers them again at once, and
//!   Consul is read at least every check interval until they are back.
//! - Suspicious removals are probed ([`Prober`]); the pushgateways that answer are held for the
//!   hold time (two check intervals plus the timeout plus 2 s), logged and counted.
//! - Settling: held-back lists wait until every registered pushgateway passes or the hold time has
//!   passed (Consul staggers a new check's first run over an interval and syncs its result to the
//!   catalog afterwards; 3 s was measured under load for a 1 s interval).
//! - Consul's index going backwards means its state was reset (e.g. an agent that lost its data):
//!   the index is reset to 0, the pushgateways are registered again and the list settles again.

use crate::backoff::Backoff;
use crate::config::Config;
use crate::consul::{ConsulClient, Health, Instances, Registration};
use crate::membership::list::{describe_change, ListUpdate, PublishedList};
use crate::membership::probe::Prober;
use crate::membership::versions::{unix_millis, Versions};
use crate::metrics::Metrics;
use crate::net::NetError;
use crate::shutdown::{sleep_or_shutdown, Shutdown};
use dynamic_sharding::members::{Member, MemberList};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// How long one blocking query may wait in Consul.
pub const BLOCKING_WAIT: Duration = Duration::from_secs(300);
/// Least time between the starts of two queries, so a Consul that answers at once never makes
/// this loop spin.
const MIN_QUERY_SPACING: Duration = Duration::from_millis(50);
/// Added to 2 × interval + timeout for the hold time.
const SETTLE_MARGIN: Duration = Duration::from_secs(2);
/// Consul failures logged at warn: the first, then one in this many.
const WARN_EVERY: u64 = 10;

/// Everything the watch loop needs.
pub struct Watcher {
    /// The configuration at the start: Consul and the service name do not change.
    pub config: Arc<Config>,
    /// Reloaded configurations: the drain list, the servers to settle on and the check come
    /// from here.
    pub updates: watch::Receiver<Arc<Config>>,
    pub client: ConsulClient,
    pub prober: Prober,
    pub metrics: Arc<Metrics>,
    pub published: watch::Sender<Option<MemberList>>,
    /// Versions the Envoys hold; new lists get a version above them.
    pub versions: Arc<Versions>,
    /// Wakes the registrar when Consul lacks a registered pushgateway.
    pub register_now: Arc<Notify>,
}

/// What the loop carries from one answer to the next.
struct WatchState {
    list: PublishedList,
    /// What Consul showed last, to re-apply a reloaded drain list or an ended hold to.
    last: Option<Instances>,
    backoff: Backoff,
    /// Failed requests in a row.
    failures: u64,
    /// The index the next query blocks on.
    index: u64,
    /// The index of the last answer, to tell when Consul's index went back.
    last_index: u64,
    /// While a list is held back (settling): until when.
    hold_until: Option<Instant>,
    /// Consul showed none of the registered pushgateways at the last answer.
    missing: bool,
    /// Consul lacked some registered pushgateway at the last answer.
    lacking: bool,
}

impl WatchState {
    /// When the last answer must be looked at again without waiting for Consul: the settling
    /// ends, or a hold runs out.
    fn wake_at(&self) -> Option<Instant> {
        match (self.hold_until, self.list.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Watcher {
    /// Registers, then watches until the shutdown.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let mut st = WatchState {
            list: PublishedList::new(self.config.servers.clone(), self.hold_time()),
            last: None,
            backoff: Backoff::new(),
            failures: 0,
            index: 0,
            last_index: 0,
            hold_until: None,
            missing: false,
            lacking: false,
        };
        st.list.set_drain(self.updates.borrow_and_update().drain.clone());
        // Registration first: a watch that starts before it would only see old state.
        if !self
            .register_all(&mut st.backoff, &mut st.failures, &mut shutdown)
            .await
        {
            return;
        }
        st.list.settle_until(Instant::now() + self.hold_time());
        let mut last_start = Instant::now() - MIN_QUERY_SPACING;
        loop {
            let spacing = (last_start + MIN_QUERY_SPACING).saturating_duration_since(Instant::now());
            if !spacing.is_zero() && sleep_or_shutdown(spacing, &mut shutdown).await {
                return;
            }
            last_start = Instant::now();
            // Once the settling or a hold ends, ask again without blocking.
            let wake_at = st.wake_at();
            let query_index = if wake_at.is_some_and(|t| Instant::now() >= t) {
                0
            } else {
                st.index
            };
            // While Consul shows none of them, read it every check interval to see them back.
            let wait = if st.missing {
                self.updates.borrow().check.interval
            } else {
                BLOCKING_WAIT
            };
            let query = self.client.health(&self.config.service_name, query_index, wait);
            let deadline = wake_at.unwrap_or_else(|| Instant::now() + BLOCKING_WAIT * 2);
            let result = tokio::select! {
                _ = shutdown.recv() => return,
                changed = self.updates.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.after_reload(&mut st).await;
                    continue;
                }
                _ = self.versions.refused() => {
                    self.after_refusal(&mut st).await;
                    continue;
                }
                _ = tokio::time::sleep_until(deadline), if wake_at.is_some() && query_index != 0 => {
                    continue;
                }
                r = query => r,
            };
            if !self.take_answer(result, &mut st, &mut shutdown).await {
                return;
            }
        }
    }

    /// A reloaded configuration: its drain list, servers and check apply to what Consul showed
    /// last.
    async fn after_reload(&mut self, st: &mut WatchState) {
        let config = self.updates.borrow_and_update().clone();
        st.list.set_drain(config.drain.clone());
        st.list.set_registered(config.servers.clone());
        st.list.set_hold(self.hold_time());
        if let Some(last) = st.last.clone() {
            self.decide(&last, st, st.index).await;
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
                "Consul at {} answers again after {} failed requests; for {:.0}s a pushgateway it takes \
                 out is asked first (its checks may have restarted critical)",
                self.config.consul.base_url,
                st.failures,
                self.hold_time().as_secs_f64()
            );
            st.failures = 0;
            st.list.suspect_from(Instant::now());
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
            st.list.settle_until(Instant::now() + self.hold_time());
            st.list.suspect_from(Instant::now());
            return true;
        }
        st.last_index = health.index;
        // Index 0 would make the next query return at once; Consul says to use 1 then.
        st.index = health.index.max(1);
        for s in &health.instances.skipped {
            warn!("ignoring an instance of {}: {s}", self.config.service_name);
        }
        st.last = Some(health.instances.clone());
        self.decide(&health.instances, st, health.index).await;
        true
    }

    /// Decides on what Consul shows, probing the pushgateways it took out suspiciously.
    async fn decide(&self, consul: &Instances, st: &mut WatchState, index: u64) {
        let mut update = st.list.observe(consul, Instant::now(), self.now_ms());
        if let ListUpdate::Probe { removed } = &update {
            let (timeout, auth) = {
                let config = self.updates.borrow();
                (config.check.timeout, config.pushgateway_auth().cloned())
            };
            let alive = self.prober.alive(removed, timeout, auth.as_ref()).await;
            if !alive.is_empty() {
                self.metrics.member_holds.inc_by(alive.len() as u64);
                warn!(
                    "Consul no longer shows {} passing, but {} answer /-/healthy: keeping them in the list for up \
                     to {:.0}s while Consul's checks catch up (a restarted Consul agent starts its checks critical)",
                    join(removed),
                    join(&alive),
                    self.hold_time().as_secs_f64()
                );
            }
            update = st
                .list
                .observe_probed(consul, &alive, Instant::now(), self.now_ms());
        }
        for m in st.list.take_expired() {
            warn!(
                "pushgateway {m} answered /-/healthy but Consul still says it fails after {:.0}s: taking it out",
                self.hold_time().as_secs_f64()
            );
        }
        self.metrics.members_held.set(st.list.held() as i64);
        let missing = update == ListUpdate::Missing;
        let lacking = st.list.lacks_registered(consul);
        if lacking && !st.lacking && !missing {
            // Dropped by Consul or by hand: registered again now rather than at the next sweep.
            self.register_now.notify_one();
        }
        st.lacking = lacking;
        if missing != st.missing {
            self.metrics.consul_pushgateways_missing.set(i64::from(missing));
            if missing {
                warn!(
                    "Consul at {} shows none of the registered pushgateways ({}): an agent that lost its state \
                     or is leaving the cluster, or an ACL token without service:read (and node:read); the last \
                     member list stays in force and they are registered again",
                    self.config.consul.base_url,
                    join(&self.updates.borrow().servers)
                );
                self.register_now.notify_one();
            } else {
                info!("Consul shows the registered pushgateways again");
            }
            st.missing = missing;
        }
        self.apply(update, &mut st.hold_until, index);
    }

    /// The version clock's input: now, or above every version an Envoy holds.
    fn now_ms(&self) -> u64 {
        unix_millis().max(self.versions.floor())
    }

    async fn after_refusal(&self, st: &mut WatchState) {
        let health = match self
            .client
            .health(&self.config.service_name, 0, BLOCKING_WAIT)
            .await
        {
            Ok(h) => h,
            Err(e) => {
                debug!("reading Consul after a refused push: {e}");
                return;
            }
        };
        st.last = Some(health.instances.clone());
        match st.list.observe(&health.instances, Instant::now(), self.now_ms()) {
            ListUpdate::Unchanged | ListUpdate::Missing => {
                if let Some(list) = st.list.republish(self.now_ms()) {
                    info!(
                        "an Envoy holds another writer's member list with a higher version, but ours is what \
                         Consul says now: sending it again as version {}",
                        list.version
                    );
                    self.published.send_replace(Some(list));
                }
            }
            // A change: decided in full, probes included.
            _ => self.decide(&health.instances, st, health.index).await,
        }
    }

    /// Carries out what [`PublishedList::observe`] decided.
    fn apply(&self, update: ListUpdate, hold_until: &mut Option<Instant>, index: u64) {
        match update {
            ListUpdate::Unchanged | ListUpdate::Missing => {
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
            // Decided by `decide`, which never leaves one.
            ListUpdate::Probe { .. } => {}
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

    /// How long a pushgateway that answers is held against Consul, and the settling time.
    fn hold_time(&self) -> Duration {
        let config = self.updates.borrow();
        config.check.interval * 2 + config.check.timeout + SETTLE_MARGIN
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
        let config = self.updates.borrow().clone();
        for member in &config.servers {
            let reg = Registration::for_member(member, &config.service_name, &config.check);
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

fn join(members: &[Member]) -> String {
    members.iter().map(Member::as_str).collect::<Vec<_>>().join(", ")
}
