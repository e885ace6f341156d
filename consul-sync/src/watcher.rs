//! Registration and the watch on Consul: turns the passing instances into the published member
//! list, which the Envoy pushers and the HTTP endpoint read.
//!
//! Owns the rules for when the list changes:
//! - The list changes when the set of members changes, never merely because Consul's index moved.
//! - Its version is the Unix time in milliseconds at which this process saw it, strictly
//!   increasing within the process ([`VersionClock`]), so a restarted consul-sync starts above
//!   what it sent before and the newest observation wins at the filter.
//! - Consul down: nothing is published; the last list stays in force (never an empty list because
//!   Consul does not answer). Consul up with nothing passing: the empty list is published.
//! - Settling: right after registering, checks that have not run yet read as critical. Until
//!   every registered pushgateway passes or two check intervals plus the timeout plus 2 s have
//!   passed (Consul staggers a new check's first run over an interval and syncs its result to the
//!   catalog afterwards; 3 s was measured under load for a 1 s interval),
//!   a list that lacks a registered pushgateway is held back, so a (re)start pushes neither an
//!   empty nor a partial list that would move groups twice.
//! - Consul's index going backwards means its state was reset (e.g. an agent that lost its data):
//!   the index is reset to 0, the pushgateways are registered again and the list settles again.

use crate::backoff::Backoff;
use crate::config::Config;
use crate::consul::{ConsulClient, ConsulError, Registration};
use crate::metrics::Metrics;
use dynamic_sharding::members::{Member, MemberDiff, MemberList};
use dynamic_sharding::ring::Ring;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
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

/// Versions: Unix milliseconds of the observation, strictly increasing within the process.
#[derive(Clone, Debug, Default)]
pub struct VersionClock {
    last: u64,
}

impl VersionClock {
    /// `max(now_ms, last + 1)`.
    pub fn next(&mut self, now_ms: u64) -> u64 {
        let v = now_ms.max(self.last.saturating_add(1));
        self.last = v;
        v
    }
}

pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What to do with one answer from Consul.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The members are the published ones: nothing to do.
    Unchanged,
    /// Settling: held back until `until` unless every registered pushgateway passes first.
    Hold { until: Instant },
    /// A new list to publish.
    Publish {
        old: Option<MemberList>,
        new: MemberList,
    },
}

/// The published list and the rules that change it; no I/O, so it is tested directly.
#[derive(Clone, Debug)]
pub struct MemberView {
    published: Option<MemberList>,
    registered: Vec<Member>,
    /// Pushgateways to keep out of the ring (`pushgateway.drain`).
    drain: Vec<Member>,
    settle_until: Option<Instant>,
    clock: VersionClock,
}

impl MemberView {
    pub fn new(registered: Vec<Member>) -> MemberView {
        MemberView {
            published: None,
            registered,
            drain: Vec::new(),
            settle_until: None,
            clock: VersionClock::default(),
        }
    }

    /// Sets the pushgateways to drain; the next [`MemberView::observe`] applies them.
    pub fn set_drain(&mut self, mut drain: Vec<Member>) {
        drain.sort();
        self.drain = drain;
    }

    /// Sets the registered pushgateways (the settling waits for them).
    pub fn set_registered(&mut self, registered: Vec<Member>) {
        self.registered = registered;
    }

    /// Holds back lists lacking a registered pushgateway until `until`.
    pub fn settle_until(&mut self, until: Instant) {
        if !self.registered.is_empty() {
            self.settle_until = Some(until);
        }
    }

    pub fn published(&self) -> Option<&MemberList> {
        self.published.as_ref()
    }

    /// The published list again with a new version (`now_ms` or above): for an Envoy that refused
    /// it for another writer's higher version while it is still what Consul says.
    pub fn republish(&mut self, now_ms: u64) -> Option<MemberList> {
        let mut list = self.published.clone()?;
        list.version = self.clock.next(now_ms);
        self.published = Some(list.clone());
        Some(list)
    }

    /// Decides on the `passing` pushgateways (sorted, no duplicates) seen at `now` / `now_ms`:
    /// the ring is those not being drained; the draining ones that pass travel beside it.
    pub fn observe(&mut self, passing: Vec<Member>, now: Instant, now_ms: u64) -> Decision {
        let (draining, members): (Vec<Member>, Vec<Member>) =
            passing.iter().cloned().partition(|m| self.drain.contains(m));
        if self
            .published
            .as_ref()
            .is_some_and(|p| p.members == members && p.draining == draining)
        {
            return Decision::Unchanged;
        }
        if let Some(until) = self.settle_until {
            let all_registered_pass = self.registered.iter().all(|m| passing.binary_search(m).is_ok());
            if now < until && !all_registered_pass {
                return Decision::Hold { until };
            }
            self.settle_until = None;
        }
        let new = MemberList {
            version: self.clock.next(now_ms),
            members,
            draining,
        };
        let old = self.published.replace(new.clone());
        Decision::Publish { old, new }
    }
}

/// Share of the hash space whose owner differs between two member sets (0.0 to 1.0), sampled
/// at 4096 evenly spaced points: what share of the groups a change moves.
pub fn moved_share(old: &[Member], new: &[Member], vnodes: u32) -> f64 {
    const SAMPLES: u64 = 4096;
    let (a, b) = (Ring::new(old, vnodes), Ring::new(new, vnodes));
    let step = u64::MAX / SAMPLES;
    let moved = (0..SAMPLES)
        .filter(|i| a.owner(i * step) != b.owner(i * step))
        .count();
    moved as f64 / SAMPLES as f64
}

fn join(members: &[Member]) -> String {
    members.iter().map(Member::as_str).collect::<Vec<_>>().join(",")
}

/// The log line of a change: versions, counts, what changed, old and new members.
pub fn describe_change(old: Option<&MemberList>, new: &MemberList, vnodes: u32) -> String {
    let empty = MemberList::default();
    let old = old.unwrap_or(&empty);
    let diff = MemberDiff::between(&old.members, &new.members);
    let moved = if old.members.is_empty() || new.members.is_empty() {
        String::new()
    } else {
        format!(
            ", about {:.0}% of groups move",
            100.0 * moved_share(&old.members, &new.members, vnodes)
        )
    };
    let draining = if old.draining == new.draining {
        String::new()
    } else {
        format!(
            ", draining [{}] (was [{}])",
            join(&new.draining),
            join(&old.draining)
        )
    };
    format!(
        "member list changed: version {}, {} -> {} members, {diff}{moved}{draining}; old [{}] new [{}]",
        new.version,
        old.len(),
        new.len(),
        join(&old.members),
        join(&new.members)
    )
}

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
    pub versions: Arc<crate::envoy::Versions>,
}

impl Watcher {
    /// Registers, then watches until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut view = MemberView::new(self.config.servers.clone());
        view.set_drain(self.updates.borrow_and_update().drain.clone());
        // The passing pushgateways Consul showed last, to re-apply a reloaded drain list to.
        let mut last_passing: Option<Vec<Member>> = None;
        let mut backoff = Backoff::new();
        let mut failures: u64 = 0;
        // Registration first: a watch that starts before it would only see old state.
        if !self
            .register_all(&mut backoff, &mut failures, &mut shutdown)
            .await
        {
            return;
        }
        view.settle_until(Instant::now() + self.settle_time());
        let mut index: u64 = 0;
        let mut last_index: u64 = 0;
        let mut hold_until: Option<Instant> = None;
        let mut last_start = Instant::now() - MIN_QUERY_SPACING;
        loop {
            let spacing = (last_start + MIN_QUERY_SPACING).saturating_duration_since(Instant::now());
            if !spacing.is_zero() && sleep_or_shutdown(spacing, &mut shutdown).await {
                return;
            }
            last_start = Instant::now();
            // While a list is held back, ask again without blocking once the settling ends.
            let query_index = if hold_until.is_some_and(|t| Instant::now() >= t) {
                0
            } else {
                index
            };
            let query = self
                .client
                .passing(&self.config.service_name, query_index, BLOCKING_WAIT);
            let hold_deadline = hold_until.unwrap_or_else(|| Instant::now() + BLOCKING_WAIT * 2);
            let result = tokio::select! {
                _ = shutdown.changed() => return,
                changed = self.updates.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let config = self.updates.borrow_and_update().clone();
                    view.set_drain(config.drain.clone());
                    view.set_registered(config.servers.clone());
                    if let Some(passing) = &last_passing {
                        let decision = view.observe(passing.clone(), Instant::now(), self.now_ms());
                        self.apply(decision, &mut hold_until, index);
                    }
                    continue;
                }
                _ = self.versions.refused() => {
                    self.after_refusal(&mut view, &mut hold_until).await;
                    continue;
                }
                _ = tokio::time::sleep_until(hold_deadline), if hold_until.is_some() && query_index != 0 => {
                    continue;
                }
                r = query => r,
            };
            self.metrics.consul_request("health");
            let health = match result {
                Ok(h) => h,
                Err(e) => {
                    self.metrics.consul_error("health");
                    failures += 1;
                    self.log_failure(&e, failures, "the last member list stays in force");
                    // After an error, read afresh: the next answer comes at once and shows
                    // whether Consul's state was reset meanwhile.
                    index = 0;
                    if sleep_or_shutdown(backoff.next_delay(), &mut shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            if failures > 0 {
                info!(
                    "Consul at {} answers again after {failures} failed requests",
                    self.config.consul.base_url
                );
                failures = 0;
            }
            backoff.reset();
            self.metrics.consul_ok();
            if health.index < last_index {
                warn!(
                    "Consul's index went back from {last_index} to {}: its state was reset; registering the pushgateways again",
                    health.index
                );
                last_index = 0;
                index = 0;
                if !self
                    .register_all(&mut backoff, &mut failures, &mut shutdown)
                    .await
                {
                    return;
                }
                view.settle_until(Instant::now() + self.settle_time());
                continue;
            }
            last_index = health.index;
            // Index 0 would make the next query return at once; Consul says to use 1 then.
            index = health.index.max(1);
            for s in &health.skipped {
                warn!("ignoring a passing instance of {}: {s}", self.config.service_name);
            }
            last_passing = Some(health.members.clone());
            let decision = view.observe(health.members, Instant::now(), self.now_ms());
            self.apply(decision, &mut hold_until, health.index);
        }
    }

    /// The version clock's input: now, or above every version an Envoy holds.
    fn now_ms(&self) -> u64 {
        unix_millis().max(self.versions.floor())
    }

    /// An Envoy refused our list for another writer's higher version. If our list is still what
    /// Consul says, the other writer is behind (or gone, e.g. a consul-sync whose clock ran ahead):
    /// send ours again above its version. If Consul says something else, publish that.
    async fn after_refusal(&self, view: &mut MemberView, hold_until: &mut Option<Instant>) {
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
        match view.observe(health.members, Instant::now(), self.now_ms()) {
            Decision::Unchanged => {
                if let Some(list) = view.republish(self.now_ms()) {
                    info!(
                        "an Envoy holds another writer's member list with a higher version, but ours is what \
                         Consul says now: sending it again as version {}",
                        list.version
                    );
                    self.published.send_replace(Some(list));
                }
            }
            decision => self.apply(decision, hold_until, health.index),
        }
    }

    /// Carries out what [`MemberView::observe`] decided.
    fn apply(&self, decision: Decision, hold_until: &mut Option<Instant>, index: u64) {
        match decision {
            Decision::Unchanged => {
                *hold_until = None;
                debug!("Consul index {index}: members unchanged");
            }
            Decision::Hold { until } => {
                if hold_until.is_none() {
                    info!(
                        "waiting up to {:.1}s for the health checks of all registered pushgateways before the first push",
                        until.saturating_duration_since(Instant::now()).as_secs_f64()
                    );
                }
                *hold_until = Some(until);
            }
            Decision::Publish { old, new } => {
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

    fn log_failure(&self, e: &ConsulError, failures: u64, consequence: &str) {
        if failures == 1 || failures % WARN_EVERY == 0 {
            warn!("{e} ({failures} failed in a row; retrying with backoff; {consequence})");
        } else {
            debug!("{e} ({failures} failed in a row)");
        }
    }

    /// Registers every configured pushgateway, retrying with backoff. False on shutdown.
    async fn register_all(
        &self,
        backoff: &mut Backoff,
        failures: &mut u64,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        for member in &self.config.servers {
            let reg = Registration::for_member(member, &self.config.service_name, &self.config.check);
            loop {
                self.metrics.consul_request("register");
                let result = tokio::select! {
                    _ = shutdown.changed() => return false,
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

/// Sleeps for `d`; true when shutdown came first.
pub async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = shutdown.changed() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(list: &[&str]) -> Vec<Member> {
        let mut v: Vec<Member> = list.iter().map(|s| Member::parse(s).unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn versions_are_observation_times_and_strictly_increase() {
        let mut c = VersionClock::default();
        assert_eq!(c.next(1_000), 1_000);
        assert_eq!(c.next(1_000), 1_001, "same millisecond");
        assert_eq!(c.next(900), 1_002, "clock stepped back");
        assert_eq!(c.next(5_000), 5_000);
        // A restarted process starts from the clock, above what it sent before.
        assert!(VersionClock::default().next(unix_millis()) > 5_000);
    }

    #[test]
    fn only_a_change_of_members_publishes() {
        let now = Instant::now();
        let mut v = MemberView::new(vec![]);
        let Decision::Publish { old: None, new } = v.observe(m(&["a:1", "b:1"]), now, 10) else {
            unreachable!()
        };
        assert_eq!((new.version, new.len()), (10, 2));
        // Same members (e.g. Consul's index moved for another service): nothing.
        assert_eq!(v.observe(m(&["a:1", "b:1"]), now, 20), Decision::Unchanged);
        let Decision::Publish { old: Some(old), new } = v.observe(m(&["a:1"]), now, 20) else {
            unreachable!()
        };
        assert_eq!((old.version, new.version), (10, 20));
        // Nothing passing while Consul answers: the empty list is published.
        let Decision::Publish { new, .. } = v.observe(vec![], now, 20) else {
            unreachable!()
        };
        assert!(new.is_empty());
        assert_eq!(new.version, 21);
        assert_eq!(v.published().map(|l| l.version), Some(21));
    }

    #[test]
    fn settling_holds_back_lists_missing_a_registered_pushgateway() {
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(5);
        let mut v = MemberView::new(m(&["a:1", "b:1", "c:1"]));
        v.settle_until(until);
        assert_eq!(v.observe(vec![], t0, 1), Decision::Hold { until });
        assert_eq!(v.observe(m(&["a:1", "b:1"]), t0, 1), Decision::Hold { until });
        // All registered ones pass (others may too): published at once.
        let Decision::Publish { new, .. } = v.observe(m(&["a:1", "b:1", "c:1", "x:1"]), t0, 2) else {
            unreachable!()
        };
        assert_eq!(new.len(), 4);
        // Settling is over: a loss is published at once.
        assert!(matches!(v.observe(m(&["a:1"]), t0, 3), Decision::Publish { .. }));

        // A pushgateway that really is down is published without it once the time is up.
        let mut v = MemberView::new(m(&["a:1", "b:1"]));
        v.settle_until(until);
        assert!(matches!(v.observe(m(&["a:1"]), t0, 1), Decision::Hold { .. }));
        let Decision::Publish { new, .. } = v.observe(m(&["a:1"]), until, 1) else {
            unreachable!()
        };
        assert_eq!(new.members, m(&["a:1"]));
    }

    #[test]
    fn a_republished_list_keeps_its_members_and_gets_a_higher_version() {
        let now = Instant::now();
        let mut v = MemberView::new(vec![]);
        assert_eq!(v.republish(5), None, "nothing to republish before the first list");
        assert!(matches!(
            v.observe(m(&["a:1"]), now, 10),
            Decision::Publish { .. }
        ));
        // Another writer's version 1000 was seen: the list goes out again above it.
        let again = v.republish(1001).unwrap();
        assert_eq!((again.version, again.members.clone()), (1001, m(&["a:1"])));
        assert_eq!(v.published(), Some(&again));
        // The next observation starts above it, whatever the clock says.
        let Decision::Publish { new, .. } = v.observe(m(&["a:1", "b:1"]), now, 20) else {
            unreachable!()
        };
        assert_eq!(new.version, 1002);
    }

    #[test]
    fn drained_pushgateways_leave_the_ring_but_stay_listed() {
        let now = Instant::now();
        let mut v = MemberView::new(vec![]);
        assert!(matches!(
            v.observe(m(&["a:1", "b:1", "c:1"]), now, 1),
            Decision::Publish { .. }
        ));
        v.set_drain(m(&["c:1", "z:1"]));
        let Decision::Publish { new, .. } = v.observe(m(&["a:1", "b:1", "c:1"]), now, 2) else {
            unreachable!()
        };
        assert_eq!((new.members, new.draining), (m(&["a:1", "b:1"]), m(&["c:1"])));
        assert_eq!(v.observe(m(&["a:1", "b:1", "c:1"]), now, 3), Decision::Unchanged);
        // A draining pushgateway that stops passing leaves the list altogether.
        let Decision::Publish { new, .. } = v.observe(m(&["a:1", "b:1"]), now, 4) else {
            unreachable!()
        };
        assert!(new.draining.is_empty());
        v.set_drain(vec![]);
        let Decision::Publish { new, .. } = v.observe(m(&["a:1", "b:1", "c:1"]), now, 5) else {
            unreachable!()
        };
        assert_eq!(
            new.members.len(),
            3,
            "an undrained pushgateway is back in the ring"
        );
    }

    #[test]
    fn settling_after_a_reset_keeps_the_published_list() {
        let t0 = Instant::now();
        let mut v = MemberView::new(m(&["a:1", "b:1"]));
        assert!(matches!(
            v.observe(m(&["a:1", "b:1"]), t0, 1),
            Decision::Publish { .. }
        ));
        v.settle_until(t0 + Duration::from_secs(5));
        // A Consul that forgot everything shows nothing passing: held, not published.
        assert!(matches!(v.observe(vec![], t0, 2), Decision::Hold { .. }));
        assert_eq!(v.published().map(MemberList::len), Some(2));
        assert_eq!(v.observe(m(&["a:1", "b:1"]), t0, 3), Decision::Unchanged);
    }

    #[test]
    fn no_registered_servers_means_no_settling() {
        let mut v = MemberView::new(vec![]);
        v.settle_until(Instant::now() + Duration::from_secs(60));
        assert!(matches!(
            v.observe(vec![], Instant::now(), 1),
            Decision::Publish { .. }
        ));
    }

    #[test]
    fn change_log_names_old_and_new_members_and_the_moved_share() {
        let old = MemberList {
            version: 1,
            members: m(&["a:1", "b:1", "c:1"]),
            draining: vec![],
        };
        let new = MemberList {
            version: 2,
            members: m(&["a:1", "b:1"]),
            draining: vec![],
        };
        let line = describe_change(Some(&old), &new, 500);
        assert!(
            line.starts_with(
                "member list changed: version 2, 3 -> 2 members, added [] removed [c:1], about 3"
            ),
            "{line}"
        );
        assert!(line.ends_with("old [a:1,b:1,c:1] new [a:1,b:1]"), "{line}");
        let first = describe_change(None, &old, 500);
        assert!(
            first.contains("0 -> 3 members") && !first.contains("groups move"),
            "{first}"
        );
        let share = moved_share(&old.members, &new.members, 500);
        assert!((0.28..0.39).contains(&share), "{share}");
        assert_eq!(moved_share(&old.members, &old.members, 500), 0.0);
    }
}
