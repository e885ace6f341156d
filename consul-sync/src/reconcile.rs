//! The reconciler: after every member change and every `reconcile_interval`, it leaves each group
//! on exactly one pushgateway, the newest copy, without re-pushing what it can avoid.
//!
//! Owns the rules (pure, in [`plan`] and [`DrainTracker`], tested directly):
//! - Every passing pushgateway (ring members and draining ones) is read: its groups and their push
//!   times (`push_time_seconds`, stamped by pushgateway when it received the push).
//! - A group with more than one copy keeps the newest; every other copy is deleted. Equal push
//!   times keep the owner's copy, else the copy on the member that sorts first, so two
//!   consul-syncs agree.
//! - A group whose only copy sits on a non-owner stays there (one copy, its true push time) until
//!   its job pushes again; that push goes to the owner and makes the old copy the older one.
//! - A draining pushgateway past its deadline: its groups are copied to their owners (a `PUT` of
//!   the same metrics: their push time becomes the time of the copy, which is logged and counted)
//!   and deleted from it. With no group left it is drained and can be stopped.
//! - Before deleting, the pushgateways involved are read again: a copy whose push time moved (a
//!   push arrived meanwhile), or whose keeper is gone or older than read, is not deleted this time.
//!   What remains is the time between that second read and the `DELETE`: milliseconds for a few
//!   groups, seconds at 100k (the read, then the deletes 16 at a time). Likewise, a move at a drain
//!   deadline reads the owner again after the (slow) read of the draining pushgateway, and is not
//!   made where the owner got a copy as new or newer meanwhile.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pushgateway::PushgatewayClient;
use dynamic_sharding::grouping_key::GroupingKey;
use dynamic_sharding::members::{Member, MemberList};
use dynamic_sharding::ring::Ring;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// Deletes and copies in flight at once, over all pushgateways.
const MAX_IN_FLIGHT: usize = 16;
/// Shortest time between two rounds, so a burst of member changes costs one or two rounds.
const MIN_ROUND_SPACING: Duration = Duration::from_millis(500);

/// The groups one pushgateway holds and their push times (Unix seconds).
pub type Holdings = HashMap<GroupingKey, f64>;

/// A copy to delete, with what was read when it was planned.
#[derive(Clone, Debug, PartialEq)]
pub struct Delete {
    pub holder: Member,
    pub key: GroupingKey,
    pub push_time: f64,
    /// Where the newest copy is kept, and its push time.
    pub keeper: Member,
    pub keeper_time: f64,
}

/// A group to copy from a draining pushgateway past its deadline to its owner.
#[derive(Clone, Debug, PartialEq)]
pub struct Move {
    pub from: Member,
    pub to: Member,
    pub key: GroupingKey,
    pub push_time: f64,
}

/// What one round will do, and what it saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub deletes: Vec<Delete>,
    pub moves: Vec<Move>,
    /// Distinct groups over all pushgateways read.
    pub groups: usize,
    /// Groups with more than one copy.
    pub duplicates: usize,
    /// Those groups, to tell the ones that last from one round to the next.
    pub duplicated: Vec<GroupingKey>,
    /// Groups whose newest copy is not on their owner.
    pub misplaced: usize,
}

/// Plans a round over what each readable pushgateway holds. `expired` are the draining
/// pushgateways past their deadline.
pub fn plan(holdings: &BTreeMap<Member, Holdings>, ring: &Ring, expired: &BTreeSet<Member>) -> Plan {
    let mut copies: HashMap<&GroupingKey, Vec<(&Member, f64)>> = HashMap::new();
    for (holder, groups) in holdings {
        for (key, time) in groups {
            copies.entry(key).or_default().push((holder, *time));
        }
    }
    let mut out = Plan {
        groups: copies.len(),
        ..Plan::default()
    };
    for (key, mut list) in copies {
        let owner = ring.owner(key.hash());
        // Newest first; among equal times the owner, then the member that sorts first.
        list.sort_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then_with(|| (Some(b.0) == owner).cmp(&(Some(a.0) == owner)))
                .then_with(|| a.0.cmp(b.0))
        });
        let (keeper, keeper_time) = list[0];
        if list.len() > 1 {
            out.duplicates += 1;
            out.duplicated.push(key.clone());
        }
        if owner.is_some_and(|o| o != keeper) {
            out.misplaced += 1;
        }
        let moving_to = match owner {
            Some(o) if o != keeper && expired.contains(keeper) => Some(o),
            _ => None,
        };
        if let Some(to) = moving_to {
            out.moves.push(Move {
                from: keeper.clone(),
                to: to.clone(),
                key: key.clone(),
                push_time: keeper_time,
            });
        }
        for (holder, time) in &list[1..] {
            // The copy moved to the owner replaces the owner's older one: deleting that one
            // could delete the moved copy.
            if moving_to == Some(*holder) {
                continue;
            }
            out.deletes.push(Delete {
                holder: (*holder).clone(),
                key: key.clone(),
                push_time: *time,
                keeper: keeper.clone(),
                keeper_time,
            });
        }
    }
    out.deletes
        .sort_by(|a, b| (&a.holder, &a.key.labels()).cmp(&(&b.holder, &b.key.labels())));
    out.moves
        .sort_by(|a, b| (&a.from, &a.key.labels()).cmp(&(&b.from, &b.key.labels())));
    out.duplicated.sort_by(|a, b| a.labels().cmp(b.labels()));
    out
}

/// True when a planned delete still holds after a second read: the copy is unchanged (no push
/// arrived meanwhile) and the keeper still has a copy at least as new as planned.
pub fn still_valid(d: &Delete, fresh: &BTreeMap<Member, Holdings>) -> bool {
    let copy = fresh.get(&d.holder).and_then(|h| h.get(&d.key));
    let kept = fresh.get(&d.keeper).and_then(|h| h.get(&d.key));
    copy.is_some_and(|t| *t == d.push_time) && kept.is_some_and(|t| *t >= d.keeper_time)
}

/// Where a drain stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DrainState {
    Draining,
    Drained,
}

/// One draining pushgateway, as `/-/drain` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DrainStatus {
    pub pushgateway: String,
    pub state: DrainState,
    /// Unix seconds when consul-sync first saw it draining.
    pub since: f64,
    /// Unix seconds after which its remaining groups are moved.
    pub deadline: f64,
    /// Groups it held at the last read; `None` before the first read.
    pub groups: Option<usize>,
}

/// The drains in progress: when each started, and which are done.
#[derive(Clone, Debug, Default)]
pub struct DrainTracker {
    entries: BTreeMap<Member, DrainStatus>,
}

impl DrainTracker {
    /// Follows the draining list: new ones start now, gone ones are forgotten (returned).
    pub fn follow(&mut self, draining: &[Member], now: f64, timeout: Duration) -> Vec<Member> {
        let gone: Vec<Member> = self
            .entries
            .keys()
            .filter(|m| !draining.contains(m))
            .cloned()
            .collect();
        for m in &gone {
            self.entries.remove(m);
        }
        for m in draining {
            let entry = self.entries.entry(m.clone()).or_insert_with(|| DrainStatus {
                pushgateway: m.to_string(),
                state: DrainState::Draining,
                since: now,
                deadline: now + timeout.as_secs_f64(),
                groups: None,
            });
            // A changed drain_timeout applies to drains under way.
            entry.deadline = entry.since + timeout.as_secs_f64();
        }
        gone
    }

    /// The draining pushgateways whose deadline has passed.
    pub fn expired(&self, now: f64) -> BTreeSet<Member> {
        self.entries
            .iter()
            .filter(|(_, s)| s.state == DrainState::Draining && now >= s.deadline)
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// Records how many groups `member` holds; returns its new state when it changed.
    pub fn observe(&mut self, member: &Member, groups: usize) -> Option<DrainState> {
        let entry = self.entries.get_mut(member)?;
        entry.groups = Some(groups);
        let state = if groups == 0 {
            DrainState::Drained
        } else {
            DrainState::Draining
        };
        (entry.state != state).then(|| {
            entry.state = state;
            state
        })
    }

    pub fn statuses(&self) -> Vec<DrainStatus> {
        self.entries.values().cloned().collect()
    }
}

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
    pub drains: Arc<Mutex<Vec<DrainStatus>>>,
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
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tracker = DrainTracker::default();
        // Groups with copies at the last round: one still there a round later outlived a delete.
        let mut last_duplicated: HashSet<GroupingKey> = HashSet::new();
        let mut last_round = Instant::now() - MIN_ROUND_SPACING;
        loop {
            let interval = self.config.borrow().reconcile_interval;
            self.metrics.reconcile_interval.set(interval.as_secs_f64());
            let spacing = (last_round + MIN_ROUND_SPACING).saturating_duration_since(Instant::now());
            if !spacing.is_zero() && crate::watcher::sleep_or_shutdown(spacing, &mut shutdown).await {
                return;
            }
            let list = self.published.borrow_and_update().clone();
            last_round = Instant::now();
            if let Some(list) = list {
                self.round(&list, &mut tracker, &mut last_duplicated).await;
            }
            let next = last_round + interval;
            tokio::select! {
                _ = shutdown.changed() => return,
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
        let expired = tracker.expired(now);
        let mut plan = plan(&holdings, &ring, &expired);
        let duplicated: HashSet<GroupingKey> = std::mem::take(&mut plan.duplicated).into_iter().collect();
        let lasting = duplicated.intersection(last_duplicated).count();
        if lasting > 0 {
            warn!(
                "{lasting} groups had more than one copy at two rounds in a row: their older copies keep \
                 coming back (a job pushing to a pushgateway directly, not through Envoy?) or cannot be deleted"
            );
        }
        *last_duplicated = duplicated;
        self.metrics
            .reconciled(&holdings, plan.duplicates, lasting, plan.misplaced);

        if !plan.deletes.is_empty() {
            let involved: Vec<Member> = plan
                .deletes
                .iter()
                .flat_map(|d| [d.holder.clone(), d.keeper.clone()])
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let fresh = self.read_all(&involved, &mut RoundReport::default()).await;
            let (valid, stale): (Vec<Delete>, Vec<Delete>) =
                plan.deletes.into_iter().partition(|d| still_valid(d, &fresh));
            report.skipped = stale.len();
            for d in &stale {
                debug!(
                    "not deleting {} on {}: it changed since it was read (kept for the next round)",
                    d.key, d.holder
                );
            }
            self.metrics.reconcile_skipped_deletes.inc_by(stale.len() as u64);
            self.delete_all(valid, &mut report).await;
        }
        if !plan.moves.is_empty() {
            self.move_all(plan.moves, &mut report).await;
        }
        // Drain states from what each draining pushgateway holds now: read again where this round
        // deleted from it, so "drained" is said as soon as it is true.
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
            if let Some(state) = tracker.observe(member, count) {
                match state {
                    DrainState::Drained => info!(
                        "pushgateway {member} is drained: it holds no group; it can be stopped, then removed \
                         from pushgateway.servers and pushgateway.drain"
                    ),
                    DrainState::Draining => {
                        warn!("pushgateway {member} holds groups again ({count}) while draining")
                    }
                }
            }
        }
        let statuses = tracker.statuses();
        self.metrics.drains(&statuses);
        if let Ok(mut d) = self.drains.lock() {
            *d = statuses;
        }
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
            let groups = match self.client.api_groups(&from).await {
                Ok(g) => g,
                Err(e) => {
                    self.metrics.reconcile_error("move");
                    warn!("{e}; the groups to move stay on {from} this round");
                    report.failed += moves.len();
                    continue;
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
                let Some(on_owner) = on_owners.get(&m.to) else {
                    // Unreadable (logged by read_all): tried again next round.
                    report.failed += 1;
                    continue;
                };
                if on_owner.get(&m.key).is_some_and(|t| *t >= m.push_time) {
                    debug!(
                        "not moving {} from draining {}: its owner {} got a copy as new or newer meanwhile",
                        m.key, m.from, m.to
                    );
                    report.skipped += 1;
                    continue;
                }
                let Some(text) = contents.remove(&m.key) else {
                    debug!(
                        "not moving {} from draining {}: it is gone from there",
                        m.key, m.from
                    );
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Member {
        Member::parse(s).unwrap()
    }

    fn k(path: &str) -> GroupingKey {
        GroupingKey::from_path(path).unwrap()
    }

    fn holdings(entries: &[(&str, &[(&str, f64)])]) -> BTreeMap<Member, Holdings> {
        entries
            .iter()
            .map(|(member, groups)| (m(member), groups.iter().map(|(p, t)| (k(p), *t)).collect()))
            .collect()
    }

    /// A path whose group `owner` owns on `ring`.
    fn owned_by(ring: &Ring, owner: &str, tag: &str) -> String {
        (0..10_000)
            .map(|i| format!("/metrics/job/{tag}/i/{i}"))
            .find(|p| ring.owner(k(p).hash()) == Some(&m(owner)))
            .unwrap()
    }

    #[test]
    fn the_newest_copy_is_kept_wherever_it_is() {
        let ring = Ring::new(&[m("a:1"), m("b:1")], 50);
        let g = owned_by(&ring, "a:1", "g");
        // The owner's copy is the older one: it goes, the newer copy on b stays.
        let h = holdings(&[("a:1", &[(&g, 10.0)]), ("b:1", &[(&g, 20.0)])]);
        let p = plan(&h, &ring, &BTreeSet::new());
        assert_eq!(
            p.deletes,
            vec![Delete {
                holder: m("a:1"),
                key: k(&g),
                push_time: 10.0,
                keeper: m("b:1"),
                keeper_time: 20.0
            }]
        );
        assert_eq!((p.groups, p.duplicates, p.misplaced), (1, 1, 1));
        // Then the job pushes again (to its owner): b's copy is now the older one.
        let h = holdings(&[("a:1", &[(&g, 30.0)]), ("b:1", &[(&g, 20.0)])]);
        let p = plan(&h, &ring, &BTreeSet::new());
        assert_eq!(p.deletes.len(), 1);
        assert_eq!((p.deletes[0].holder.as_str(), p.misplaced), ("b:1", 0));
    }

    #[test]
    fn a_single_copy_on_a_non_owner_stays() {
        let ring = Ring::new(&[m("a:1"), m("b:1")], 50);
        let g = owned_by(&ring, "a:1", "g");
        let h = holdings(&[("a:1", &[]), ("b:1", &[(&g, 20.0)])]);
        let p = plan(&h, &ring, &BTreeSet::new());
        assert!(p.deletes.is_empty() && p.moves.is_empty());
        assert_eq!((p.groups, p.duplicates, p.misplaced), (1, 0, 1));
    }

    #[test]
    fn ties_keep_the_owner_then_the_first_member() {
        let ring = Ring::new(&[m("a:1"), m("b:1"), m("c:1")], 50);
        let g = owned_by(&ring, "b:1", "g");
        let h = holdings(&[
            ("a:1", &[(&g, 5.0)]),
            ("b:1", &[(&g, 5.0)]),
            ("c:1", &[(&g, 5.0)]),
        ]);
        let p = plan(&h, &ring, &BTreeSet::new());
        let deleted: Vec<&str> = p.deletes.iter().map(|d| d.holder.as_str()).collect();
        assert_eq!(deleted, ["a:1", "c:1"]);
        // Without the owner among the copies, the first member wins.
        let h = holdings(&[("a:1", &[(&g, 5.0)]), ("c:1", &[(&g, 5.0)])]);
        let p = plan(&h, &ring, &BTreeSet::new());
        assert_eq!(p.deletes[0].holder.as_str(), "c:1");
    }

    #[test]
    fn expired_drains_move_their_newest_copies_to_the_owner() {
        let ring = Ring::new(&[m("a:1"), m("b:1")], 50);
        let g = owned_by(&ring, "a:1", "g");
        let only = owned_by(&ring, "b:1", "only");
        // d drains: its copy of g is the newest (a holds an older one), `only` lives on d alone.
        let h = holdings(&[
            ("a:1", &[(&g, 1.0)]),
            ("b:1", &[]),
            ("d:1", &[(&g, 2.0), (&only, 3.0)]),
        ]);
        let none = plan(&h, &ring, &BTreeSet::new());
        assert!(none.moves.is_empty(), "before the deadline nothing moves");
        assert_eq!(none.deletes.len(), 1, "the older copy on a goes");
        let p = plan(&h, &ring, &BTreeSet::from([m("d:1")]));
        let moves: BTreeSet<(&str, &str, String)> = p
            .moves
            .iter()
            .map(|x| (x.from.as_str(), x.to.as_str(), x.key.to_path()))
            .collect();
        assert_eq!(
            moves,
            BTreeSet::from([
                ("d:1", "a:1", k(&g).to_path()),
                ("d:1", "b:1", k(&only).to_path())
            ])
        );
        assert!(
            p.deletes.is_empty(),
            "the owner's older copy is replaced by the move, not deleted: {:?}",
            p.deletes
        );
    }

    #[test]
    fn deletes_are_checked_against_a_second_read() {
        let d = Delete {
            holder: m("a:1"),
            key: k("/metrics/job/j"),
            push_time: 10.0,
            keeper: m("b:1"),
            keeper_time: 20.0,
        };
        let ok = holdings(&[
            ("a:1", &[("/metrics/job/j", 10.0)]),
            ("b:1", &[("/metrics/job/j", 25.0)]),
        ]);
        assert!(still_valid(&d, &ok));
        for (what, fresh) in [
            (
                "pushed meanwhile",
                holdings(&[
                    ("a:1", &[("/metrics/job/j", 30.0)]),
                    ("b:1", &[("/metrics/job/j", 20.0)]),
                ]),
            ),
            (
                "already gone",
                holdings(&[("a:1", &[]), ("b:1", &[("/metrics/job/j", 20.0)])]),
            ),
            (
                "keeper gone",
                holdings(&[("a:1", &[("/metrics/job/j", 10.0)]), ("b:1", &[])]),
            ),
            (
                "keeper unreadable",
                holdings(&[("a:1", &[("/metrics/job/j", 10.0)])]),
            ),
        ] {
            assert!(!still_valid(&d, &fresh), "{what}");
        }
    }

    #[test]
    fn drains_start_once_expire_and_finish() {
        let mut t = DrainTracker::default();
        let d = m("d:1");
        assert!(t
            .follow(std::slice::from_ref(&d), 100.0, Duration::from_secs(60))
            .is_empty());
        t.follow(std::slice::from_ref(&d), 130.0, Duration::from_secs(60));
        assert_eq!(t.statuses()[0].since, 100.0, "a drain starts when first seen");
        assert!(t.expired(159.0).is_empty());
        assert_eq!(t.expired(160.0), BTreeSet::from([d.clone()]));
        assert_eq!(t.observe(&d, 3), None);
        assert_eq!(t.observe(&d, 0), Some(DrainState::Drained));
        assert!(t.expired(1000.0).is_empty(), "a drained one has nothing to move");
        assert_eq!(t.observe(&d, 1), Some(DrainState::Draining));
        assert_eq!(t.follow(&[], 200.0, Duration::from_secs(60)), vec![d]);
        assert!(t.statuses().is_empty());
    }

    #[test]
    fn planning_is_deterministic_over_many_groups() {
        let members: Vec<Member> = (1..=4).map(|i| m(&format!("p{i}:1"))).collect();
        let ring = Ring::new(&members[..3], 500);
        let mut h: BTreeMap<Member, Holdings> =
            members.iter().map(|x| (x.clone(), Holdings::new())).collect();
        for i in 0..2000 {
            let key = k(&format!("/metrics/job/j/i/{i}"));
            let owner = ring.owner(key.hash()).unwrap().clone();
            h.get_mut(&owner).unwrap().insert(key.clone(), i as f64);
            if i % 4 == 0 {
                // A newer copy on p4 for a quarter of them.
                h.get_mut(&members[3]).unwrap().insert(key, i as f64 + 0.5);
            }
        }
        let p = plan(&h, &ring, &BTreeSet::new());
        assert_eq!((p.groups, p.duplicates, p.misplaced), (2000, 500, 500));
        assert!(p
            .deletes
            .iter()
            .all(|d| d.keeper == members[3] && d.holder != members[3]));
        assert_eq!(p, plan(&h, &ring, &BTreeSet::new()));
    }
}
