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
//! - Slots with a standby (`pushgateway.standbys`): the standbys' service is read after every
//!   answer, and the actives' query blocks at most a check interval, so a standby's change is seen
//!   within one. The roles (which address of a slot is active) are read from Consul KV with it;
//!   the lease holder promotes a slot's passing standby when its active fails ([`SlotTable`]),
//!   writes the roles (check-and-set) and wakes the registrar, which registers both addresses
//!   under their new services. Every consul-sync keeps such a slot in the ring meanwhile, and
//!   reads the roles again every [`PROMOTION_RECHECK`] until the promotion is there.
//! - Consul's index going backwards means its state was reset (e.g. an agent that lost its data):
//!   the index is reset to 0, the pushgateways are registered again and the list settles again.

use crate::backoff::Backoff;
use crate::config::Config;
use crate::consul::{ConsulClient, Health, Instances};
use crate::leader::Leadership;
use crate::membership::list::{describe_change, ListUpdate, PublishedList};
use crate::membership::probe::Prober;
use crate::membership::registrar::registrations;
use crate::membership::roles::{passing_anywhere, Roles, SlotTable};
use crate::membership::versions::{unix_millis, Versions};
use crate::metrics::Metrics;
use crate::net::NetError;
use crate::shutdown::{sleep_or_shutdown, Shutdown};
use crate::status::Protection;
use dynamic_sharding::members::{Member, MemberList};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// How long one blocking query may wait in Consul.
pub const BLOCKING_WAIT: Duration = Duration::from_secs(300);
/// Least time between the starts of two queries, so a Consul that answers at once never makes
/// this loop spin.
const MIN_QUERY_SPACING: Duration = Duration::from_millis(50);
/// Added to 2 × interval + timeout for the hold time.
const SETTLE_MARGIN: Duration = Duration::from_secs(2);
/// Consul failures logged at warn: the first, then one in this many.
const WARN_EVERY: u64 = 10;
/// While a slot's active fails and its standby passes, the roles are read again this often until
/// the lease holder's promotion is there.
pub const PROMOTION_RECHECK: Duration = Duration::from_millis(500);

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
    /// Only the lease holder promotes standbys.
    pub leadership: Arc<Leadership>,
    /// The roles as last read or written: the registrar registers each address under the
    /// service of its role.
    pub roles: watch::Sender<Roles>,
    /// Whether each standby held what its active held at the last reconcile round: a promotion
    /// of one that did not is warned about.
    pub protection: Protection,
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
    /// The standbys' service at the last answer.
    last_standbys: Instances,
    /// The roles as last read or written.
    roles: Roles,
    /// The roles key's modify index at the last read: what a write must name (0: no key).
    roles_index: u64,
    /// While a slot waits for its promotion: when to read the roles again.
    recheck_at: Option<Instant>,
}

impl WatchState {
    /// When the last answer must be looked at again without waiting for Consul: the settling
    /// ends, or a hold runs out.
    fn wake_at(&self) -> Option<Instant> {
        [self.hold_until, self.list.next_deadline(), self.recheck_at]
            .into_iter()
            .flatten()
            .min()
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
            last_standbys: Instances::default(),
            roles: Roles::default(),
            roles_index: 0,
            recheck_at: None,
        };
        st.list.set_drain(self.updates.borrow_and_update().drain.clone());
        // The roles first: each address is registered under the service of its role.
        if !self.read_roles_at_start(&mut st, &mut shutdown).await {
            return;
        }
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
            let wait = {
                let config = self.updates.borrow();
                if st.missing || !config.standbys.is_empty() {
                    config.check.interval
                } else {
                    BLOCKING_WAIT
                }
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
        self.read_standbys(st).await;
        self.decide(&health.instances, st, health.index).await;
        true
    }

    /// Reads the roles until they are read (with standbys configured); false on shutdown.
    async fn read_roles_at_start(&self, st: &mut WatchState, shutdown: &mut Shutdown) -> bool {
        if self.updates.borrow().standbys.is_empty() {
            return true;
        }
        loop {
            match self.read_roles(st).await {
                Ok(()) => {
                    st.backoff.reset();
                    return true;
                }
                Err(e) => {
                    st.failures += 1;
                    self.log_failure(&e, st.failures, "nothing is registered before the roles are read");
                    if sleep_or_shutdown(st.backoff.next_delay(), shutdown).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Reads the roles from Consul KV; a change is handed to the registrar.
    async fn read_roles(&self, st: &mut WatchState) -> Result<(), NetError> {
        let key = self.config.roles_key();
        self.metrics.consul_request("roles");
        let entries = self.client.kv_list(&key).await.inspect_err(|_| {
            self.metrics.consul_error("roles");
        })?;
        let (roles, index) = match entries.into_iter().find(|e| e.key == key) {
            None => (Roles::default(), 0),
            Some(e) => match Roles::decode(&e.value) {
                Ok(r) => (r, e.modify_index),
                Err(why) => {
                    warn!("Consul key {key} does not hold roles ({why}); the last roles stay");
                    return Ok(());
                }
            },
        };
        st.roles_index = index;
        if roles != st.roles {
            let config = self.updates.borrow().clone();
            if let Err(why) = roles.check_standbys(&config.standbys, &config.slot_names()) {
                // A reload is refused in this case; a start with such a file gets here.
                error!("{why}; with this configuration those slots are served at their servers again");
            }
            info!(
                "roles read from Consul key {key}: {}",
                String::from_utf8_lossy(&roles.encode())
            );
            st.roles = roles.clone();
            self.roles.send_replace(roles);
        }
        Ok(())
    }

    /// Reads the standbys' service and the roles (with standbys configured); a failure keeps
    /// what was read last.
    async fn read_standbys(&self, st: &mut WatchState) {
        if self.updates.borrow().standbys.is_empty() {
            st.last_standbys = Instances::default();
            return;
        }
        let service = self.config.standby_service_name();
        self.metrics.consul_request("health");
        match self.client.health(&service, 0, BLOCKING_WAIT).await {
            Ok(h) => st.last_standbys = h.instances,
            Err(e) => {
                self.metrics.consul_error("health");
                debug!("{e} (the standbys' last health stays)");
            }
        }
        if let Err(e) = self.read_roles(st).await {
            debug!("{e} (the last roles stay)");
        }
    }

    /// Promotes each slot's standby of `promotions` (name, new active): writes the roles with a
    /// check-and-set on the last read, then registers both addresses anew. True when written.
    async fn promote(&self, promotions: &[(Member, Member)], st: &mut WatchState) -> bool {
        let key = self.config.roles_key();
        let roles = promotions
            .iter()
            .fold(st.roles.clone(), |r, (slot, active)| r.with_active(slot, active));
        self.metrics.consul_request("roles");
        match self.client.kv_put(&key, roles.encode(), st.roles_index).await {
            Ok(true) => {
                for (slot, active) in promotions {
                    warn!(
                        "promoted {active} to the active of slot {slot}: its active failed its check while {active} \
                         passes; no group changes owner, and the former active stays the standby when it returns"
                    );
                    self.warn_if_behind(slot, active);
                }
                self.metrics.slot_promotions.inc_by(promotions.len() as u64);
                st.roles = roles.clone();
                self.roles.send_replace(roles);
                self.register_now.notify_one();
                if let Err(e) = self.read_roles(st).await {
                    debug!("{e} (the roles are read again at the next answer)");
                }
                true
            }
            Ok(false) => {
                info!("the roles in Consul key {key} changed since they were read; reading them again");
                if let Err(e) = self.read_roles(st).await {
                    debug!("{e} (the roles are read again at the next answer)");
                }
                false
            }
            Err(e) => {
                self.metrics.consul_error("roles");
                warn!("{e} (the promotion is tried again at the next answer)");
                false
            }
        }
    }

    /// Warns when the last reconcile round did not find `slot`'s standby holding what its active
    /// held: the promoted one may lack groups or hold older ones.
    fn warn_if_behind(&self, slot: &Member, promoted: &Member) {
        let repair = self.protection.lock().ok().and_then(|p| p.get(slot).cloned());
        match repair {
            Some(r) if r.in_sync => {}
            Some(r) => warn!(
                "{promoted} was not in sync with slot {slot}'s active at the last reconcile round (differing since \
                 Unix time {:.0}): groups the repair had not copied yet are missing or older on it",
                r.differs_since.unwrap_or(r.last_checked)
            ),
            None => warn!(
                "{promoted} was promoted before any reconcile round compared it with slot {slot}'s active: \
                 writes it missed before then are missing on it"
            ),
        }
    }

    /// Decides on what Consul shows, probing the pushgateways it took out suspiciously.
    async fn decide(&self, actives: &Instances, st: &mut WatchState, index: u64) {
        let standbys = self.updates.borrow().standbys.clone();
        let mut table = SlotTable::new(&standbys, &st.roles);
        let passing = passing_anywhere(actives, &st.last_standbys);
        let promotions = table.promotions(&passing);
        if !promotions.is_empty()
            && !st.list.in_doubt(Instant::now())
            && self.leadership.may_act()
            && self.promote(&promotions, st).await
        {
            table = SlotTable::new(&standbys, &st.roles);
        }
        st.recheck_at = (!table.promotions(&passing).is_empty()).then(|| Instant::now() + PROMOTION_RECHECK);
        self.metrics
            .slots_active_failing
            .set(table.failing(&passing) as i64);
        let (view, states) = table.view(actives, &st.last_standbys);
        st.list.set_slots(states);
        let consul = &view;
        let mut update = st.list.observe(consul, Instant::now(), self.now_ms());
        if let ListUpdate::Probe { removed } = &update {
            let (timeout, auth) = {
                let config = self.updates.borrow();
                (config.check.timeout, config.pushgateway_auth().cloned())
            };
            // A slot is asked at its active's address.
            let addresses: Vec<Member> = removed.iter().map(|n| table.active(n).clone()).collect();
            let answered = self.prober.alive(&addresses, timeout, auth.as_ref()).await;
            let alive: Vec<Member> = removed
                .iter()
                .filter(|n| answered.contains(table.active(n)))
                .cloned()
                .collect();
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
        let table = SlotTable::new(&self.updates.borrow().standbys, &st.roles);
        let (view, _) = table.view(&health.instances, &st.last_standbys);
        match st.list.observe(&view, Instant::now(), self.now_ms()) {
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
        let roles = self.roles.borrow().clone();
        for reg in registrations(&config, &roles) {
            let member = reg
                .meta
                .get(crate::consul::META_MEMBER)
                .cloned()
                .unwrap_or_default();
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
