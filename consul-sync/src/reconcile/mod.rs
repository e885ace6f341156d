//! The reconciler: after every member change and every `reconcile_interval`, it leaves each group
//! on exactly one pushgateway, the newest copy, without re-pushing what it can avoid.
//!
//! Owns the loop and carrying out a round; the rules are pure, in [`plan`](mod@plan) and
//! [`drain`]:
//! - Every passing pushgateway (ring members and draining ones) is read: its groups and their push
//!   times (`push_time_seconds`, stamped by pushgateway when it received the push).
//! - A group with more than one copy keeps the newest; every other copy is deleted.
//! - A draining pushgateway past its deadline: its groups are copied to their owners (a `PUT` of
//!   the same metrics: their push time becomes the time of the copy, which is logged and counted)
//!   and deleted from it. With no group left it is drained and can be stopped.
//! - Before deleting, the pushgateways involved are read again: a copy whose push time moved (a
//!   push arrived meanwhile), or whose keeper is gone or older than read, is not deleted this time.
//!   What remains is the time between that second read and the `DELETE`: milliseconds for a few
//!   groups, seconds at 100k (the read, then the deletes 16 at a time). Likewise, a move at a drain
//!   deadline reads the owner again after the (slow) read of the draining pushgateway, and is not
//!   made where the owner got a copy as new or newer meanwhile.
//!
//! - Right after the round's reads, [`tombstones`]: the `DELETE`s through Envoy that did not
//!   reach a pushgateway are collected, kept in Consul and applied where they can be.
//!
//! The pushgateways are reached through [`pushgateway`], whose answers [`exposition`] decodes.

pub mod drain;
pub mod exposition;
pub mod plan;
pub mod pushgateway;
pub mod tombstones;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::net::NetError;
use crate::shutdown::{sleep_or_shutdown, Shutdown};
use crate::status::{DrainState, Drains};
use drain::DrainTracker;
use dynamic_sharding::grouping_key::GroupingKey;
use dynamic_sharding::members::{Member, MemberList};
use dynamic_sharding::ring::Ring;
use plan::{plan, still_valid, Delete, Holdings, Move, RoundPlan};
use pushgateway::PushgatewayClient;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tombstones::Tombstones;
use tracing::{debug, info, warn};

/// Deletes and copies in flight at once, over all pushgateways.
const MAX_IN_FLIGHT: usize = 16;
/// Shortest time between two rounds, so a burst of member changes costs one or two rounds.
const MIN_ROUND_SPACING: Duration = Duration::from_millis(500);

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The reconcile task.
pub struct Reconciler {
    pub config: watch::Receiver<Arc<Config>>,
    pub published: watch::Receiver<Option<MemberList>>,
    pub client: PushgatewayClient,
    pub metrics: Arc<Metrics>,
    /// What `/-/drain` shows.
    pub drains: Drains,
    /// The `DELETE`s through Envoy that did not reach every pushgateway.
    pub tombstones: Tombstones,
}

/// What a round did, for the log.
#[derive(Debug, Default)]
struct RoundReport {
    read: usize,
    unreadable: usize,
    deleted: usize,
    skipped: usize,
    moved: usize,
    failed: usize,
    /// Pushgateways a copy was deleted from this round.
    touched: BTreeSet<Member>,
    /// Groups each pushgateway read holds that no push path can name (left alone, but held).
    unnamed: BTreeMap<Member, usize>,
}

impl Reconciler {
    /// Runs rounds after every change of the published list and every interval, until shutdown.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let mut tracker = DrainTracker::default();
        // Groups with copies at the last round: one still there a round later outlived a delete.
        let mut last_duplicated: HashSet<GroupingKey> = HashSet::new();
        let mut last_round = Instant::now() - MIN_ROUND_SPACING;
        loop {
            let interval = self.config.borrow().reconcile_interval;
            self.metrics.reconcile_interval.set(interval.as_secs_f64());
            let spacing = (last_round + MIN_ROUND_SPACING).saturating_duration_since(Instant::now());
            if !spacing.is_zero() && sleep_or_shutdown(spacing, &mut shutdown).await {
                return;
            }
            let list = self.published.borrow_and_update().clone();
            last_round = Instant::now();
            if let Some(list) = list {
                self.round(&list, &mut tracker, &mut last_duplicated).await;
            }
            let next = last_round + interval;
            tokio::select! {
                _ = shutdown.recv() => return,
                _ = tokio::time::sleep_until(next.into()) => {}
                r = self.published.changed() => if r.is_err() { return; },
                r = self.config.changed() => if r.is_err() { return; },
            }
        }
    }

    async fn round(
        &self,
        list: &MemberList,
        tracker: &mut DrainTracker,
        last_duplicated: &mut HashSet<GroupingKey>,
    ) {
        let started = Instant::now();
        let config = self.config.borrow().clone();
        let now = unix_now();
        for gone in tracker.follow(&list.draining, now, config.drain_timeout) {
            info!("pushgateway {gone} is no longer draining");
        }
        let ring = Ring::new(&list.members, config.vnodes);
        let holders: Vec<Member> = list.holders().cloned().collect();
        let mut report = RoundReport::default();
        let holdings = self.read_all(&holders, &mut report).await;
        self.tombstones.round(&holdings, config.tombstone_ttl).await;
        let mut plan = plan(&holdings, &ring, &tracker.expired(now));
        self.follow_duplicates(&holdings, &mut plan, last_duplicated);
        if !plan.deletes.is_empty() {
            self.delete_checked(std::mem::take(&mut plan.deletes), &mut report)
                .await;
        }
        if !plan.moves.is_empty() {
            self.move_all(std::mem::take(&mut plan.moves), &mut report).await;
        }
        self.follow_drains(list, tracker, &holdings, &report).await;
        self.log_round(&plan, &report, started);
    }

    /// Sets what the round saw, and warns about groups that had copies at two rounds in a row.
    fn follow_duplicates(
        &self,
        holdings: &BTreeMap<Member, Holdings>,
        plan: &mut RoundPlan,
        last_duplicated: &mut HashSet<GroupingKey>,
    ) {
        let duplicated: HashSet<GroupingKey> = std::mem::take(&mut plan.duplicated).into_iter().collect();
        let lasting = duplicated.intersection(last_duplicated).count();
        if lasting > 0 {
            warn!(
                "{lasting} groups had more than one copy at two rounds in a row: their older copies keep \
                 coming back (a job pushing to a pushgateway directly, not through Envoy?) or cannot be deleted"
            );
        }
        *last_duplicated = duplicated;
        self.metrics.reconciled(
            holdings.iter().map(|(m, groups)| (m.as_str(), groups.len())),
            plan.duplicates,
            lasting,
            plan.misplaced,
        );
    }

    /// Reads the pushgateways involved again and deletes the copies that are still as planned.
    async fn delete_checked(&self, deletes: Vec<Delete>, report: &mut RoundReport) {
        let involved: Vec<Member> = deletes
            .iter()
            .flat_map(|d| [d.holder.clone(), d.keeper.clone()])
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let fresh = self.read_all(&involved, &mut RoundReport::default()).await;
        let (valid, stale): (Vec<Delete>, Vec<Delete>) =
            deletes.into_iter().partition(|d| still_valid(d, &fresh));
        report.skipped = stale.len();
        for d in &stale {
            debug!(
                "not deleting {} on {}: it changed since it was read (kept for the next round)",
                d.key, d.holder
            );
        }
        self.metrics.reconcile_skipped_deletes.inc_by(stale.len() as u64);
        self.delete_all(valid, report).await;
    }

    /// Drain states from what each draining pushgateway holds now: read again where this round
    /// deleted from it, so "drained" is said as soon as it is true.
    async fn follow_drains(
        &self,
        list: &MemberList,
        tracker: &mut DrainTracker,
        holdings: &BTreeMap<Member, Holdings>,
        report: &RoundReport,
    ) {
        let touched: Vec<Member> = list
            .draining
            .iter()
            .filter(|m| report.touched.contains(*m))
            .cloned()
            .collect();
        let mut after_report = RoundReport::default();
        let after = self.read_all(&touched, &mut after_report).await;
        for member in &list.draining {
            // Groups no push path can name count too: they are still on it, and stopping it would
            // lose them.
            let (held, unnamed) = match after.get(member) {
                Some(held) => (held, after_report.unnamed.get(member)),
                None => match holdings.get(member) {
                    Some(held) => (held, report.unnamed.get(member)),
                    None => continue,
                },
            };
            let count = held.len() + unnamed.copied().unwrap_or(0);
            match tracker.observe(member, count) {
                Some(DrainState::Drained) => info!(
                    "pushgateway {member} is drained: it holds no group; it can be stopped, then removed \
                     from pushgateway.servers and pushgateway.drain"
                ),
                Some(DrainState::Draining) => {
                    warn!("pushgateway {member} holds groups again ({count}) while draining")
                }
                None => {}
            }
        }
        let statuses = tracker.statuses();
        self.metrics.drains(
            statuses
                .iter()
                .map(|s| (s.pushgateway.as_str(), s.state == DrainState::Drained, s.deadline)),
        );
        if let Ok(mut d) = self.drains.lock() {
            *d = statuses;
        }
    }

    fn log_round(&self, plan: &RoundPlan, report: &RoundReport, started: Instant) {
        let took = started.elapsed();
        self.metrics.reconcile_duration.observe(took.as_secs_f64());
        let summary = format!(
            "reconciled {} groups on {} pushgateways ({} unreadable): {} copies deleted, {} kept for \
             the next round (pushed meanwhile), {} moved at a drain deadline, {} failed; took {:.3}s",
            plan.groups,
            report.read,
            report.unreadable,
            report.deleted,
            report.skipped,
            report.moved,
            report.failed,
            took.as_secs_f64()
        );
        if report.deleted + report.moved + report.failed + report.unreadable > 0 {
            info!("{summary}");
        } else {
            debug!("{summary}");
        }
    }

    /// Reads every member concurrently; unreadable ones are logged, counted and left out.
    async fn read_all(&self, members: &[Member], report: &mut RoundReport) -> BTreeMap<Member, Holdings> {
        let mut tasks = JoinSet::new();
        for m in members {
            let client = self.client.clone();
            let m = m.clone();
            tasks.spawn(async move {
                let r = client.push_times(&m).await;
                (m, r)
            });
        }
        let mut out = BTreeMap::new();
        while let Some(done) = tasks.join_next().await {
            let Ok((member, result)) = done else { continue };
            match result {
                Ok(times) => {
                    for s in times.skipped.iter().take(3) {
                        warn!("pushgateway {member}: a group that no push path can name is left alone: {s}");
                    }
                    report.unnamed.insert(member.clone(), times.skipped.len());
                    out.insert(member, times.groups.into_iter().collect::<Holdings>());
                    report.read += 1;
                }
                Err(e) => {
                    self.metrics.reconcile_error("read");
                    warn!("{e}; its groups are left as they are this round");
                    report.unreadable += 1;
                }
            }
        }
        out
    }

    async fn delete_all(&self, deletes: Vec<Delete>, report: &mut RoundReport) {
        let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut tasks = JoinSet::new();
        for d in deletes {
            let client = self.client.clone();
            let limit = limit.clone();
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let r = client.delete(&d.holder, &d.key).await;
                (d, r)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let Ok((d, result)) = done else { continue };
            match result {
                Ok(()) => {
                    debug!(
                        "deleted {} on {} (pushed {:.3}); the newest copy is on {} (pushed {:.3})",
                        d.key, d.holder, d.push_time, d.keeper, d.keeper_time
                    );
                    self.metrics.reconcile_deleted.inc();
                    report.deleted += 1;
                    report.touched.insert(d.holder);
                }
                Err(e) => {
                    self.metrics.reconcile_error("delete");
                    warn!("deleting the older copy of {}: {e}", d.key);
                    report.failed += 1;
                }
            }
        }
    }

    /// Copies each group to its owner, then deletes it from the draining pushgateway.
    async fn move_all(&self, moves: Vec<Move>, report: &mut RoundReport) {
        let mut by_source: BTreeMap<Member, Vec<Move>> = BTreeMap::new();
        for m in moves {
            by_source.entry(m.from.clone()).or_default().push(m);
        }
        for (from, moves) in by_source {
            self.move_from(&from, moves, report).await;
        }
    }

    /// The moves out of one draining pushgateway, `from`.
    async fn move_from(&self, from: &Member, moves: Vec<Move>, report: &mut RoundReport) {
        let groups = match self.client.api_groups(from).await {
            Ok(g) => g,
            Err(e) => {
                self.metrics.reconcile_error("move");
                warn!("{e}; the groups to move stay on {from} this round");
                report.failed += moves.len();
                return;
            }
        };
        let mut contents: HashMap<GroupingKey, String> =
            groups.into_iter().map(|g| (g.key.clone(), g.to_text())).collect();
        // Reading the draining pushgateway's groups takes seconds at scale; a job may have
        // pushed to the owner meanwhile. Its push times are read now, and a move that would
        // overwrite a copy as new or newer is not made (the next round deletes the drained
        // copy as the older one).
        let owners: Vec<Member> = moves
            .iter()
            .map(|m| m.to.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let on_owners = self.read_all(&owners, &mut RoundReport::default()).await;
        let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut tasks = JoinSet::new();
        for m in moves {
            let Some(text) = still_to_move(&m, &on_owners, &mut contents, report) else {
                continue;
            };
            let client = self.client.clone();
            let limit = limit.clone();
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let copied = client.put(&m.to, &m.key, text).await;
                let result = match copied {
                    Ok(()) => client.delete(&m.from, &m.key).await,
                    Err(e) => Err(e),
                };
                (m, result)
            });
        }
        self.record_moves(tasks, report).await;
    }

    /// Logs and counts each move as it ends.
    async fn record_moves(&self, mut tasks: JoinSet<(Move, Result<(), NetError>)>, report: &mut RoundReport) {
        while let Some(done) = tasks.join_next().await {
            let Ok((m, result)) = done else { continue };
            match result {
                Ok(()) => {
                    info!(
                        "moved {} from draining {} to its owner {} at the drain deadline; its push time \
                         is now the time of this copy (last pushed {:.3})",
                        m.key, m.from, m.to, m.push_time
                    );
                    self.metrics.drain_moved.inc();
                    report.moved += 1;
                    report.touched.insert(m.from);
                }
                Err(e) => {
                    self.metrics.reconcile_error("move");
                    warn!("moving {} from draining {} to {}: {e}", m.key, m.from, m.to);
                    report.failed += 1;
                }
            }
        }
    }
}

/// The text of a group to move, when the move is still to be made: its owner was read and holds
/// no copy as new or newer, and the draining pushgateway still holds it.
fn still_to_move(
    m: &Move,
    on_owners: &BTreeMap<Member, Holdings>,
    contents: &mut HashMap<GroupingKey, String>,
    report: &mut RoundReport,
) -> Option<String> {
    let Some(on_owner) = on_owners.get(&m.to) else {
        // Unreadable (logged by read_all): tried again next round.
        report.failed += 1;
        return None;
    };
    if on_owner.get(&m.key).is_some_and(|t| *t >= m.push_time) {
        debug!(
            "not moving {} from draining {}: its owner {} got a copy as new or newer meanwhile",
            m.key, m.from, m.to
        );
        report.skipped += 1;
        return None;
    }
    let text = contents.remove(&m.key);
    if text.is_none() {
        debug!(
            "not moving {} from draining {}: it is gone from there",
            m.key, m.from
        );
    }
    text
}
