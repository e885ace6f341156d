//! The reconciler: after every member change and every `reconcile_interval`, it leaves each group
//! on exactly one pushgateway, the newest copy, without re-pushing what it can avoid.
//!
//! Owns the loop and carrying out a round; the rules are pure, in [`plan`](mod@plan), [`repair`],
//! [`clock`] and [`drain`]. A round is a list of steps over what it read:
//! 1. Every address serving a slot (ring members and draining ones; actives and standbys) is
//!    read: its groups, when each last changed (push or failed push), and a bound on its clock
//!    from the `Date` header.
//! 2. The plan, over the slots' actives (a standby's copies are its slot's replica, not
//!    copies): a group with more than one copy keeps the newest; every other copy is deleted,
//!    unless a clock skew seen between the two could reverse their order. A draining slot past
//!    its deadline has its groups moved to their owners, in a round that read every active.
//! 3. Deletes: the keepers are read first; then each holder is read again and its still-valid
//!    copies are deleted right away, holders concurrently, for at most [`WRITE_BUDGET`] after
//!    that read (and at least one batch) before it is read again. A copy that changed since the
//!    plan stays.
//! 4. Moves, from each draining pushgateway: its groups' contents are read once; then, in
//!    batches of at most [`WRITE_BUDGET`], the source and the owners are read again, and a group
//!    is copied only if its owner has no copy as new or newer and the source still holds it
//!    unchanged (a client's `DELETE` is never undone). A group whose last push failed is copied
//!    with its failure recorded on the owner as well. The source's copy is deleted after.
//! 5. Repair, for each slot with a standby: what the standby lacks or holds older than the active
//!    (or newer, but too long ago to be a write on its way) is copied to it, what the active does
//!    not hold is deleted from it ([`repair`]), by the same batched, re-checked copies and deletes
//!    as steps 3 and 4. A draining slot is repaired too: as its active empties, so does its
//!    standby. A slot the published list places elsewhere by then (a promotion during a stalled
//!    round) waits for the next round.
//! 6. Drain states, from what both addresses of each draining slot hold now.
//!
//! Nothing is written unless this consul-sync holds the lease ([`Leadership::may_act`]), asked
//! before each batch. What remains is each write's window after the read it was checked
//! against, measured in `consul_sync_reconcile_delete_window_seconds` and
//! `consul_sync_drain_move_window_seconds`.
//!
//! Right after the reads, [`tombstones`]: the `DELETE`s through Envoy that did not reach a
//! pushgateway are collected, kept in Consul and applied where the round could read.
//!
//! The pushgateways are reached through [`pushgateway`], whose answers [`exposition`] decodes.

pub mod clock;
pub mod drain;
pub mod exposition;
pub mod plan;
pub mod pushgateway;
pub mod repair;
pub mod tombstones;

use crate::config::Config;
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::net::NetError;
use crate::shutdown::{sleep_or_shutdown, Shutdown};
use crate::status::{DrainState, Drains, Protection, SlotRepair};
use clock::Clocks;
use drain::DrainTracker;
use dynamic_sharding::grouping_key::GroupingKey;
use dynamic_sharding::members::{Member, MemberList, Placement};
use exposition::{ApiGroup, Stamps};
use plan::{plan, split_standbys, still_valid, Delete, Holdings, Move, MoveKind, Owners, RoundPlan};
use pushgateway::PushgatewayClient;
use repair::{plan_repair, Copied, GRACE};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tombstones::Tombstones;
use tracing::{debug, info, warn};

/// Deletes, or copies, in flight at once to one pushgateway.
const MAX_IN_FLIGHT: usize = 16;
/// Shortest time between two rounds, so a burst of member changes costs one or two rounds.
const MIN_ROUND_SPACING: Duration = Duration::from_millis(500);
/// How long writes go on after the read they were checked against ended, before the
/// pushgateways involved are read again: with the read itself, it bounds the time in which a push
/// can be lost to a delete or overwritten by a move.
const WRITE_BUDGET: Duration = Duration::from_millis(250);

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The reconcile task.
pub struct Reconciler {
    config: watch::Receiver<Arc<Config>>,
    published: watch::Receiver<Option<MemberList>>,
    client: PushgatewayClient,
    metrics: Arc<Metrics>,
    /// What `/-/drain` shows.
    drains: Drains,
    /// Whether each slot's standby holds what its active holds.
    protection: Protection,
    leadership: Arc<Leadership>,
    clocks: Arc<Mutex<Clocks>>,
    /// The `DELETE`s through Envoy that did not reach every pushgateway.
    tombstones: Tombstones,
}

/// What the round's first read found, by address.
struct Reads {
    /// What each slot's active holds.
    actives: BTreeMap<Member, Holdings>,
    /// What each slot's standby holds.
    standbys: BTreeMap<Member, Holdings>,
    /// When the read started (Unix seconds).
    at: f64,
}

impl Reads {
    fn get(&self, address: &Member) -> Option<&Holdings> {
        self.actives.get(address).or_else(|| self.standbys.get(address))
    }
}

/// What one round did, for the log.
#[derive(Debug, Default)]
struct RoundReport {
    read: usize,
    unreadable: usize,
    deleted: usize,
    skipped: usize,
    moved: usize,
    /// Groups copied to a standby or deleted from it.
    repaired: usize,
    failed: usize,
    /// Writes left undone because this consul-sync does not hold the lease.
    not_acting: usize,
    /// Pushgateways a copy was deleted from this round.
    touched: BTreeSet<Member>,
    /// Pushgateways a group was copied to this round.
    written: BTreeSet<Member>,
    /// The copies made to standbys.
    copied: Vec<CopyMade>,
    /// Groups each pushgateway read holds that no push path can name (left alone, but held).
    unnamed: BTreeMap<Member, usize>,
    /// The longest time between a read and a write checked against it.
    longest_window: Duration,
}

impl RoundReport {
    fn add(&mut self, other: RoundReport) {
        self.deleted += other.deleted;
        self.skipped += other.skipped;
        self.moved += other.moved;
        self.repaired += other.repaired;
        self.failed += other.failed;
        self.not_acting += other.not_acting;
        self.touched.extend(other.touched);
        self.written.extend(other.written);
        self.copied.extend(other.copied);
        self.longest_window = self.longest_window.max(other.longest_window);
    }
}

/// A group copied to a standby.
#[derive(Debug)]
struct CopyMade {
    standby: Member,
    key: GroupingKey,
    copy: Copied,
}

/// What the reconciler keeps from one round to the next.
#[derive(Default)]
struct Memory {
    tracker: DrainTracker,
    /// Groups with copies at the last round: one still there a round later outlived a delete.
    last_duplicated: HashSet<GroupingKey>,
    /// Each slot with a standby: since when it differs from its active.
    protection: BTreeMap<Member, SlotRepair>,
    /// The repair's copies to each standby, by standby, until the active's copy changes
    /// ([`repair`]).
    copied: HashMap<Member, HashMap<GroupingKey, Copied>>,
}

/// What a round's concurrent steps share: the client with the round's credentials, the clocks
/// every read updates, the metrics, and whether this consul-sync may act.
#[derive(Clone)]
struct Hands {
    client: PushgatewayClient,
    clocks: Arc<Mutex<Clocks>>,
    metrics: Arc<Metrics>,
    leadership: Arc<Leadership>,
}

impl Reconciler {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: watch::Receiver<Arc<Config>>,
        published: watch::Receiver<Option<MemberList>>,
        client: PushgatewayClient,
        metrics: Arc<Metrics>,
        drains: Drains,
        protection: Protection,
        leadership: Arc<Leadership>,
        tombstones: Tombstones,
    ) -> Reconciler {
        Reconciler {
            config,
            published,
            client,
            metrics,
            drains,
            protection,
            leadership,
            clocks: Arc::default(),
            tombstones,
        }
    }

    /// Runs rounds after every change of the published list and every interval, until shutdown.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let mut memory = Memory::default();
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
                self.round(&list, &mut memory).await;
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

    async fn round(&self, list: &MemberList, memory: &mut Memory) {
        let started = Instant::now();
        let config = self.config.borrow().clone();
        let hands = Hands {
            client: self.client.with_auth(config.pushgateway_auth()),
            clocks: self.clocks.clone(),
            metrics: self.metrics.clone(),
            leadership: self.leadership.clone(),
        };
        let now = unix_now();
        // The configuration says what drains, not the passing list: a draining pushgateway that
        // fails one check keeps its deadline.
        for gone in memory.tracker.follow(&config.drain, now, config.drain_timeout) {
            info!("pushgateway {gone} is no longer draining");
        }
        let owners = Owners::new(list, config.vnodes);
        let addresses: Vec<Member> = list.addresses().cloned().collect();
        if let Ok(mut c) = self.clocks.lock() {
            c.retain(|m| addresses.contains(m) || config.servers.contains(m) || config.drain.contains(m));
        }
        let mut report = RoundReport::default();

        // 1. Read every address.
        let read_at = unix_now();
        let mut read = hands.read_all(&addresses, &mut report).await;
        hands.publish_clocks(&addresses);
        // The DELETEs through Envoy that missed a pushgateway, applied where this read allows.
        self.tombstones
            .round(&hands.client, &read, config.tombstone_ttl)
            .await;
        // 2. Plan, over what the slots' actives hold.
        let standbys = split_standbys(list, &mut read);
        let reads = Reads {
            actives: read,
            standbys,
            at: read_at,
        };
        let all_read = list
            .holders()
            .all(|slot| reads.actives.contains_key(list.placement(slot).active));
        let expired: BTreeSet<Member> = memory
            .tracker
            .expired(now)
            .iter()
            .map(|slot| list.placement(slot).active.clone())
            .collect();
        let clocks = hands.clocks();
        let mut plan = plan(&reads.actives, &owners, &expired, all_read, &clocks);
        self.follow_duplicates(&reads, &mut plan, &mut memory.last_duplicated);
        self.refused_for_clocks(&plan, &clocks);
        if plan.held_moves > 0 {
            warn!(
                "{} groups due to move at a drain deadline wait for the next round: a pushgateway could not be \
                 read, and it may hold a newer copy",
                plan.held_moves
            );
            self.metrics
                .drain_skipped_moves("unreadable", plan.held_moves as u64);
        }
        // 3. Delete the older copies.
        hands
            .delete_checked(std::mem::take(&mut plan.deletes), &mut report)
            .await;
        // 4. Move what drains left at their deadline.
        hands.move_all(std::mem::take(&mut plan.moves), &mut report).await;
        // 5. Repair the standbys.
        let repairs = self
            .repair_all(&hands, list, &config.standbys, &reads, &report, memory)
            .await;
        report.add(repairs);
        // 6. Drain states.
        self.follow_drains(&hands, list, &config, &mut memory.tracker, &reads, &report)
            .await;
        self.log_round(&plan, &report, started);
    }

    /// Sets what the round saw, and warns about groups that had copies at two rounds in a row.
    fn follow_duplicates(
        &self,
        reads: &Reads,
        plan: &mut RoundPlan,
        last_duplicated: &mut HashSet<GroupingKey>,
    ) {
        let duplicated: HashSet<GroupingKey> = std::mem::take(&mut plan.duplicated).into_iter().collect();
        let lasting = duplicated.intersection(last_duplicated).count();
        if lasting > 0 {
            warn!(
                "{lasting} groups had more than one copy at two rounds in a row: their older copies keep \
                 coming back (a job pushing to a pushgateway directly, not through Envoy?), cannot be deleted, \
                 or wait for clocks to agree"
            );
        }
        *last_duplicated = duplicated;
        self.metrics.reconciled(
            reads
                .actives
                .iter()
                .chain(&reads.standbys)
                .map(|(m, groups)| (m.as_str(), groups.len())),
            plan.duplicates,
            lasting,
            plan.misplaced,
        );
    }

    /// Repairs each slot's standby from its active, then records where each slot stands (in
    /// [`Protection`] and the metrics). A slot is in sync when the round found no difference, or
    /// made every copy and delete it planned. A slot whose configured standby is not in the list
    /// (it does not pass its check) is out of sync: nothing is written to it.
    async fn repair_all(
        &self,
        hands: &Hands,
        list: &MemberList,
        configured: &BTreeMap<Member, Member>,
        reads: &Reads,
        report: &RoundReport,
        memory: &mut Memory,
    ) -> RoundReport {
        let mut repairs = RoundReport::default();
        let mut status = BTreeMap::new();
        // Only for the slots' standbys of this round: a slot no longer configured, or whose
        // standby is out of the list, is forgotten.
        let mut remembered = HashMap::new();
        for slot in list.holders() {
            let p = list.placement(slot);
            // A round that stalled (reading a frozen active) may end after a promotion: its
            // placement would copy from the former active onto the promoted one. The round the
            // new list starts repairs the slot.
            if self.placement_changed(p) {
                warn!(
                    "slot {slot}: not repaired in this round, whose member list placed it at {p}: it has \
                     changed since (a promotion); the next round repairs it"
                );
                self.metrics.repair_error("changed");
                if let Some(standby) = p.standby {
                    if let Some(copied) = memory.copied.remove(standby) {
                        remembered.insert(standby.clone(), copied);
                    }
                }
                if let Some(r) = memory.protection.get(slot) {
                    status.insert(slot.clone(), r.clone());
                }
                continue;
            }
            let in_sync = match p.standby {
                Some(standby) => {
                    // The active may have changed in this round's deletes and moves: read it
                    // again then.
                    let again = report.touched.contains(p.active) || report.written.contains(p.active);
                    let copied = memory.copied.remove(standby).unwrap_or_default();
                    let (in_sync, kept) = hands.repair(p, standby, reads, copied, again, &mut repairs).await;
                    remembered.insert(standby.clone(), kept);
                    in_sync
                }
                None if configured.contains_key(slot) => false,
                None => continue,
            };
            let since = memory.protection.get(slot).and_then(|r| r.differs_since);
            status.insert(
                slot.clone(),
                SlotRepair {
                    in_sync,
                    differs_since: if in_sync {
                        None
                    } else {
                        Some(since.unwrap_or(reads.at))
                    },
                    last_checked: reads.at,
                },
            );
        }
        let now = unix_now();
        let oldest = status
            .values()
            .filter_map(|r| r.differs_since)
            .map(|since| now - since)
            .fold(0.0, f64::max);
        self.metrics.repair_oldest_difference.set(oldest);
        let unprotected = status.values().filter(|r| !r.in_sync).count();
        self.metrics.slots_unprotected.set(unprotected as i64);
        if let Ok(mut p) = self.protection.lock() {
            p.clone_from(&status);
        }
        memory.protection = status;
        for c in std::mem::take(&mut repairs.copied) {
            remembered.entry(c.standby).or_default().insert(c.key, c.copy);
        }
        memory.copied = remembered;
        repairs
    }

    /// True when the published member list no longer places `p`'s slot at `p`'s addresses.
    fn placement_changed(&self, p: Placement<'_>) -> bool {
        self.published.borrow().as_ref().is_some_and(|now| {
            let q = now.placement(p.slot);
            q.active != p.active || q.standby != p.standby
        })
    }

    /// Counts and logs the deletes and moves the clocks could reverse.
    fn refused_for_clocks(&self, plan: &RoundPlan, clocks: &Clocks) {
        let Some(first) = plan.clock_refusals.first() else {
            return;
        };
        let n = plan.clock_refusals.len();
        self.metrics.reconcile_clock_refusals.inc_by(n as u64);
        let skew = |m: &Member| {
            clocks
                .get(m)
                .map_or("unknown".to_owned(), |o| format!("{:+.3}", o.estimate()))
        };
        warn!(
            "{n} copies kept although older by push time: the clocks of the pushgateways involved differ (e.g. {} \
             on {}, clock {} s from ours, looks older than on {}, clock {} s), so the order could be reversed; both \
             copies stay until the group is pushed again (see consul_sync_pushgateway_clock_skew_seconds)",
            first.key,
            first.holder,
            skew(&first.holder),
            first.keeper,
            skew(&first.keeper)
        );
    }

    /// Drain states from what both addresses of each draining slot hold now: read again where
    /// this round deleted from one, so "drained" is said as soon as it is true. A slot whose
    /// addresses were not all read this round keeps what it was last seen to hold.
    async fn follow_drains(
        &self,
        hands: &Hands,
        list: &MemberList,
        config: &Config,
        tracker: &mut DrainTracker,
        reads: &Reads,
        report: &RoundReport,
    ) {
        let addresses = |slot: &Member| -> Vec<Member> {
            let p = list.placement(slot);
            std::iter::once(p.active).chain(p.standby).cloned().collect()
        };
        let touched: Vec<Member> = config
            .drain
            .iter()
            .flat_map(&addresses)
            .filter(|m| report.touched.contains(m))
            .collect();
        let mut after_report = RoundReport::default();
        let after = hands.read_all(&touched, &mut after_report).await;
        'slots: for member in &config.drain {
            // Groups no push path can name count too: they are still there, and stopping it
            // would lose them.
            let mut count = 0;
            for address in addresses(member) {
                let (held, unnamed) = match after.get(&address) {
                    Some(held) => (held, after_report.unnamed.get(&address)),
                    None => match reads.get(&address) {
                        Some(held) => (held, report.unnamed.get(&address)),
                        None => continue 'slots,
                    },
                };
                count += held.len() + unnamed.copied().unwrap_or(0);
            }
            match tracker.observe(member, count) {
                Some(DrainState::Drained) => match config.standbys.get(member) {
                    None => info!(
                        "pushgateway {member} is drained: it holds no group; it can be stopped, then removed \
                         from pushgateway.servers and pushgateway.drain"
                    ),
                    Some(standby) => info!(
                        "pushgateway {member} is drained with its standby {standby}: neither holds a group; both \
                         can be stopped, then {member} removed from pushgateway.servers, pushgateway.drain and \
                         pushgateway.standbys"
                    ),
                },
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
             the next round (changed meanwhile), {} moved at a drain deadline, {} repaired on standbys, {} failed, \
             {} kept for clocks, {} kept beside a copy with a later failed push, {} left to the lease holder; \
             longest window after a read {:.3}s; took {:.3}s",
            plan.groups,
            report.read,
            report.unreadable,
            report.deleted,
            report.skipped,
            report.moved,
            report.repaired,
            report.failed,
            plan.clock_refusals.len(),
            plan.kept_failures,
            report.not_acting,
            report.longest_window.as_secs_f64(),
            took.as_secs_f64()
        );
        if report.deleted + report.moved + report.repaired + report.failed + report.unreadable > 0 {
            info!("{summary}");
        } else {
            debug!("{summary}");
        }
    }
}

/// How one move ends up checked against the fresh reads.
enum MoveCheck {
    /// Copy it: the text of its metrics and its stamps.
    Go(String, Stamps),
    /// Not this round, for a reason counted under that name.
    Skip(&'static str),
    /// Not needed any more: the destination's copy is as new as the source's now.
    Done,
}

impl Hands {
    fn clocks(&self) -> Clocks {
        self.clocks.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The clock skew of each holder, for the metric.
    fn publish_clocks(&self, holders: &[Member]) {
        let clocks = self.clocks();
        self.metrics.clock_skews(
            holders
                .iter()
                .filter_map(|m| clocks.get(m).map(|o| (m.as_str(), o.estimate()))),
        );
    }

    /// True when this consul-sync may write to the pushgateways now; else `what` is left to the
    /// lease holder (logged at debug).
    fn may_act(&self, what: &str) -> bool {
        let may = self.leadership.may_act();
        if !may {
            debug!("not holding the lease: {what} left to the consul-sync that holds it");
        }
        may
    }

    /// Reads one member, recording its clock; `None` (logged, counted) when it cannot be read.
    async fn read_one(&self, member: &Member) -> Option<(Holdings, usize)> {
        match self.client.read(member).await {
            Ok(read) => {
                if let Some(r) = &read.clock {
                    if let Ok(mut c) = self.clocks.lock() {
                        c.record(member, r);
                    }
                }
                for s in read.times.skipped.iter().take(3) {
                    warn!("pushgateway {member}: a group that no push path can name is left alone: {s}");
                }
                let unnamed = read.times.skipped.len();
                Some((read.times.groups.into_iter().collect(), unnamed))
            }
            Err(e) => {
                self.metrics.reconcile_error("read");
                warn!("{e}; its groups are left as they are this round");
                None
            }
        }
    }

    /// Reads every member concurrently; unreadable ones are logged, counted and left out.
    async fn read_all(&self, members: &[Member], report: &mut RoundReport) -> BTreeMap<Member, Holdings> {
        let mut tasks = JoinSet::new();
        for m in members {
            let (hands, m) = (self.clone(), m.clone());
            tasks.spawn(async move {
                let r = hands.read_one(&m).await;
                (m, r)
            });
        }
        let mut out = BTreeMap::new();
        while let Some(done) = tasks.join_next().await {
            let Ok((member, result)) = done else { continue };
            match result {
                Some((held, unnamed)) => {
                    report.unnamed.insert(member.clone(), unnamed);
                    out.insert(member, held);
                    report.read += 1;
                }
                None => report.unreadable += 1,
            }
        }
        out
    }

    /// Repairs a slot's `standby` from its active, from this round's reads of both, the active
    /// read `again` first, with the repair's `copied` to it remembered; true when the standby
    /// holds what the active holds, as far as this round can tell, and the remembered copies
    /// still to remember (this round's are added by the caller).
    async fn repair(
        &self,
        p: Placement<'_>,
        standby: &Member,
        reads: &Reads,
        copied: HashMap<GroupingKey, Copied>,
        again: bool,
        report: &mut RoundReport,
    ) -> (bool, HashMap<GroupingKey, Copied>) {
        let (slot, active) = (p.slot, p.active);
        let reread;
        let (on_active, active_read_at) = if again {
            let at = unix_now();
            reread = self.read_one(active).await.map(|(held, _)| held);
            (reread.as_ref(), at)
        } else {
            (reads.actives.get(active), reads.at)
        };
        let (Some(on_active), Some(on_standby)) = (on_active, reads.standbys.get(standby)) else {
            self.metrics.repair_error("read");
            warn!(
                "slot {slot}: its standby {standby} is not repaired this round: it or the active {active} could \
                 not be read"
            );
            return (false, copied);
        };
        let mut plan = plan_repair(
            active,
            standby,
            on_active,
            on_standby,
            &copied,
            active_read_at,
            &self.clocks(),
        );
        let remembered = std::mem::take(&mut plan.remembered);
        if plan.differences == 0 {
            return (true, remembered);
        }
        if plan.clock_refusals > 0 {
            self.metrics
                .reconcile_clock_refusals
                .inc_by(plan.clock_refusals as u64);
            warn!(
                "slot {slot}: {} groups on the standby {standby} look older than on the active {active}, but \
                 their clocks differ enough to reverse the order: not copied (see \
                 consul_sync_pushgateway_clock_skew_seconds)",
                plan.clock_refusals
            );
        }
        info!(
            "slot {slot}: repairing the standby {standby} from the active {active}: {} groups to copy ({} over a \
             standby copy newer than the active's, stamped more than {GRACE} s before the active was read), {} to \
             delete",
            plan.copies.len(),
            plan.replaced,
            plan.deletes.len()
        );
        let mut r = RoundReport::default();
        self.move_all(plan.copies, &mut r).await;
        self.delete_checked(plan.deletes, &mut r).await;
        let done = r.failed + r.skipped + r.not_acting == 0 && plan.clock_refusals == 0;
        report.add(r);
        (done, remembered)
    }

    /// Reads the keepers, then deletes from each holder what is still as planned.
    async fn delete_checked(&self, deletes: Vec<Delete>, report: &mut RoundReport) {
        if deletes.is_empty() {
            return;
        }
        if !self.may_act("deleting older copies") {
            report.not_acting += deletes.len();
            return;
        }
        // A keeper's copy only grows newer (or goes with a client's DELETE of the group): read
        // before the holders, it leaves nothing but each holder's own read before its deletes.
        let keepers: Vec<Member> = deletes
            .iter()
            .map(|d| d.keeper.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let kept = Arc::new(self.read_all(&keepers, &mut RoundReport::default()).await);
        let mut by_holder: BTreeMap<Member, Vec<Delete>> = BTreeMap::new();
        for d in deletes {
            by_holder.entry(d.holder.clone()).or_default().push(d);
        }
        let mut tasks = JoinSet::new();
        for (holder, deletes) in by_holder {
            let (hands, kept) = (self.clone(), kept.clone());
            tasks.spawn(async move { hands.delete_from(&holder, deletes, &kept).await });
        }
        while let Some(done) = tasks.join_next().await {
            if let Ok(r) = done {
                report.add(r);
            }
        }
    }

    /// The deletes from one holder: read it, delete what is still valid for at most
    /// [`WRITE_BUDGET`] after the read, read it again for the rest.
    async fn delete_from(
        &self,
        holder: &Member,
        mut pending: Vec<Delete>,
        kept: &BTreeMap<Member, Holdings>,
    ) -> RoundReport {
        let mut report = RoundReport::default();
        while !pending.is_empty() {
            let read_at = Instant::now();
            let Some((fresh, _)) = self.read_one(holder).await else {
                report.failed += pending.len();
                break;
            };
            let (valid, stale): (Vec<Delete>, Vec<Delete>) =
                pending.into_iter().partition(|d| still_valid(d, &fresh, kept));
            for d in &stale {
                debug!(
                    "not deleting {} on {}: it changed since it was read, or {} did (kept for the next round)",
                    d.key, d.holder, d.keeper
                );
            }
            report.skipped += stale.len();
            let planned_as_copies = stale.iter().filter(|d| d.kept.is_some()).count();
            self.metrics
                .reconcile_skipped_deletes
                .inc_by(planned_as_copies as u64);
            if !self.may_act("deleting older copies") {
                report.not_acting += valid.len();
                break;
            }
            let (mut tasks, rest) = self
                .within_budget(valid, read_at, |hands, d: Delete| async move {
                    let r = hands.client.delete(&d.holder, &d.key).await;
                    (d, r)
                })
                .await;
            pending = rest;
            while let Some(done) = tasks.join_next().await {
                let Ok(((d, result), window)) = done else { continue };
                report.longest_window = report.longest_window.max(window);
                self.metrics.reconcile_delete_window.observe(window.as_secs_f64());
                match (result, d.kept) {
                    (Ok(()), Some(kept)) => {
                        debug!(
                            "deleted {} on {} (last changed {:.3}); the newest copy is on {} (last changed {:.3})",
                            d.key,
                            d.holder,
                            d.copy.latest(),
                            d.keeper,
                            kept.latest()
                        );
                        self.metrics.reconcile_deleted.inc();
                        report.deleted += 1;
                        report.touched.insert(d.holder);
                    }
                    (Ok(()), None) => {
                        debug!(
                            "deleted {} on the standby {}: its active {} does not hold it",
                            d.key, d.holder, d.keeper
                        );
                        self.metrics.repaired_groups.inc();
                        report.repaired += 1;
                        report.touched.insert(d.holder);
                    }
                    (Err(e), Some(_)) => {
                        self.metrics.reconcile_error("delete");
                        warn!("deleting the older copy of {}: {e}", d.key);
                        report.failed += 1;
                    }
                    (Err(e), None) => {
                        self.metrics.repair_error("delete");
                        warn!("deleting {} from the standby {}: {e}", d.key, d.holder);
                        report.failed += 1;
                    }
                }
            }
        }
        report
    }

    /// Copies each group, one source after another: to its owner from a draining slot, or to a
    /// standby from its active.
    async fn move_all(&self, moves: Vec<Move>, report: &mut RoundReport) {
        if moves.is_empty() {
            return;
        }
        if !self.may_act("copying groups (drain deadlines, standby repairs)") {
            report.not_acting += moves.len();
            return;
        }
        let mut by_source: BTreeMap<Member, Vec<Move>> = BTreeMap::new();
        for m in moves {
            by_source.entry(m.from.clone()).or_default().push(m);
        }
        for (from, moves) in by_source {
            self.move_from(&from, moves, report).await;
        }
    }

    /// The copies out of one pushgateway, `from`: its groups' contents are read once (a slow read
    /// at scale), then each batch is checked against fresh reads of `from` and the destinations
    /// right before it is written.
    async fn move_from(&self, from: &Member, moves: Vec<Move>, report: &mut RoundReport) {
        let contents: HashMap<GroupingKey, ApiGroup> = match self.client.api_groups(from).await {
            Ok(groups) => groups.into_iter().map(|g| (g.key.clone(), g)).collect(),
            Err(e) => {
                self.copy_error(&moves);
                warn!("{e}; the groups to copy from {from} wait for the next round");
                report.failed += moves.len();
                return;
            }
        };
        let mut pending = moves;
        while !pending.is_empty() {
            let read_at = Instant::now();
            let involved: Vec<Member> = std::iter::once(from)
                .chain(pending.iter().map(|m| &m.to))
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let fresh = self.read_all(&involved, &mut RoundReport::default()).await;
            let clocks = self.clocks();
            let mut go = Vec::new();
            for m in pending {
                match check_move(&m, &fresh, &contents, &clocks) {
                    MoveCheck::Go(text, stamps) => go.push((m, text, stamps)),
                    MoveCheck::Skip(reason) => {
                        debug!(
                            "not copying {} from {} to {} this round: {}",
                            m.key,
                            m.from,
                            m.to,
                            match reason {
                                "deleted" => "it was deleted meanwhile (a client's DELETE is not undone)",
                                "newer" => "it was pushed meanwhile (the older copy goes at the next round)",
                                "clock" => "the clocks of the two could reverse which copy is newer",
                                _ => "a pushgateway involved could not be read",
                            }
                        );
                        match (reason, m.kind) {
                            ("clock", _) => {
                                self.metrics.reconcile_clock_refusals.inc();
                            }
                            (_, MoveKind::Drain) => self.metrics.drain_skipped_moves(reason, 1),
                            (_, MoveKind::Repair | MoveKind::Recopy | MoveKind::Replace) => {}
                        }
                        report.skipped += 1;
                    }
                    // The push that changed the source reached the destination too.
                    MoveCheck::Done => {}
                }
            }
            if !self.may_act("copying groups (drain deadlines, standby repairs)") {
                report.not_acting += go.len();
                return;
            }
            let (mut tasks, rest) = self
                .within_budget(
                    go,
                    read_at,
                    |hands, (m, text, stamps): (Move, String, Stamps)| async move {
                        let start = unix_now();
                        let r = hands.copy(&m, text, stamps).await;
                        (m, stamps, start, r)
                    },
                )
                .await;
            pending = rest.into_iter().map(|(m, _, _)| m).collect();
            while let Some(done) = tasks.join_next().await {
                let Ok(((m, stamps, start, result), window)) = done else {
                    continue;
                };
                report.longest_window = report.longest_window.max(window);
                self.metrics.drain_move_window.observe(window.as_secs_f64());
                match result {
                    Ok(()) if m.kind.is_repair() => {
                        debug!(
                            "copied {} from the active {} to the standby {}; its push time there is now the time \
                             of this copy (last pushed {:.3} on the active{})",
                            m.key,
                            m.from,
                            m.to,
                            stamps.push,
                            if stamps.last_push_failed() {
                                "; its last push failed, and the standby records a failed push too"
                            } else {
                                ""
                            }
                        );
                        self.metrics.repaired_groups.inc();
                        report.repaired += 1;
                        report.copied.push(CopyMade {
                            standby: m.to.clone(),
                            key: m.key,
                            copy: Copied {
                                from: stamps,
                                start,
                                done: unix_now(),
                                replaced: m.kind == MoveKind::Replace,
                            },
                        });
                        report.written.insert(m.to);
                    }
                    Ok(()) => {
                        info!(
                            "moved {} from draining {} to its owner {} at the drain deadline; its push time \
                             is now the time of this copy (last pushed {:.3}{})",
                            m.key,
                            m.from,
                            m.to,
                            stamps.push,
                            if stamps.last_push_failed() {
                                "; its last push failed, and the owner records a failed push too"
                            } else {
                                ""
                            }
                        );
                        self.metrics.drain_moved.inc();
                        if stamps.last_push_failed() {
                            self.metrics.drain_moved_failed_pushes.inc();
                        }
                        report.moved += 1;
                        report.touched.insert(m.from);
                        report.written.insert(m.to);
                    }
                    Err(e) => {
                        self.copy_error(std::slice::from_ref(&m));
                        warn!("copying {} from {} to {}: {e}", m.key, m.from, m.to);
                        report.failed += 1;
                    }
                }
            }
        }
    }

    /// Counts failed copies under their kind's metric.
    fn copy_error(&self, moves: &[Move]) {
        for m in moves {
            match m.kind {
                MoveKind::Drain => self.metrics.reconcile_error("move"),
                MoveKind::Repair | MoveKind::Recopy | MoveKind::Replace => self.metrics.repair_error("copy"),
            }
        }
    }

    /// Copies one group to its destination with what pushgateway can reproduce of its stamps:
    /// the metrics (a `PUT`), and a failed push where the group had one, in the same order as
    /// the group's own last push and last failure (the times become those of the copy). Then,
    /// for a drain, the source's copy goes.
    async fn copy(&self, m: &Move, text: String, s: Stamps) -> Result<(), NetError> {
        let client = &self.client;
        if s.push == 0.0 {
            // Never pushed successfully: only its failures are there to show.
            client.fail_push(&m.to, &m.key).await?;
        } else if s.last_push_failed() {
            client.put(&m.to, &m.key, text).await?;
            client.fail_push(&m.to, &m.key).await?;
        } else if s.failure > 0.0 {
            client.fail_push(&m.to, &m.key).await?;
            client.put(&m.to, &m.key, text).await?;
        } else {
            client.put(&m.to, &m.key, text).await?;
        }
        match m.kind {
            MoveKind::Drain => client.delete(&m.from, &m.key).await,
            MoveKind::Repair | MoveKind::Recopy | MoveKind::Replace => Ok(()),
        }
    }

    /// Starts `write` for the items in order, at most [`MAX_IN_FLIGHT`] at once, until
    /// [`WRITE_BUDGET`] after the read that started at `read_at` ended (now); the first
    /// [`MAX_IN_FLIGHT`] always start, so a slow read still lets the writes progress. Returns once
    /// the last one started: the started writes (each ends with the time from `read_at` to its
    /// end) and the items left for after another read.
    async fn within_budget<T, R, F, Fut>(
        &self,
        items: Vec<T>,
        read_at: Instant,
        write: F,
    ) -> (JoinSet<(R, Duration)>, Vec<T>)
    where
        R: Send + 'static,
        F: Fn(Hands, T) -> Fut,
        Fut: std::future::Future<Output = R> + Send + 'static,
    {
        let until = Instant::now() + WRITE_BUDGET;
        let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut tasks = JoinSet::new();
        let mut items = items.into_iter();
        let mut started = 0;
        while let Some(item) = items.next() {
            let permit = limit.clone().acquire_owned().await.ok();
            if permit.is_none() || (started >= MAX_IN_FLIGHT && Instant::now() > until) {
                let mut rest = vec![item];
                rest.extend(items);
                return (tasks, rest);
            }
            started += 1;
            let write = write(self.clone(), item);
            tasks.spawn(async move {
                let _permit = permit;
                let r = write.await;
                (r, read_at.elapsed())
            });
        }
        (tasks, Vec::new())
    }
}

/// Whether a planned move is still to be made, checked against fresh reads of its source and
/// destination and the contents read from the source: the source still holds the group unchanged
/// since its contents were read, and the destination holds no copy as new or newer (within the
/// kind's [`lead`](repair::lead)).
fn check_move(
    m: &Move,
    fresh: &BTreeMap<Member, Holdings>,
    contents: &HashMap<GroupingKey, ApiGroup>,
    clocks: &Clocks,
) -> MoveCheck {
    let (Some(source), Some(owner)) = (fresh.get(&m.from), fresh.get(&m.to)) else {
        return MoveCheck::Skip("unreadable");
    };
    let (Some(now), Some(group)) = (source.get(&m.key), contents.get(&m.key)) else {
        return MoveCheck::Skip("deleted");
    };
    let lead = repair::lead(m.kind);
    let there = owner.get(&m.key);
    if m.kind == MoveKind::Repair && there.is_some_and(|o| o.latest() + lead >= now.latest()) {
        return MoveCheck::Done;
    }
    if group.stamps() != *now {
        return MoveCheck::Skip("newer");
    }
    if m.kind == MoveKind::Recopy {
        // The standby's stamp may be the last copy's: it cannot tell which content is newer.
        return MoveCheck::Go(group.to_text(), *now);
    }
    if m.kind == MoveKind::Replace {
        // Only over the copy it was planned against: a write since may be on its way.
        return if there.is_some() && there.copied() == m.replaces {
            MoveCheck::Go(group.to_text(), *now)
        } else {
            MoveCheck::Skip("newer")
        };
    }
    let Some(o) = there else {
        return MoveCheck::Go(group.to_text(), *now);
    };
    if m.kind == MoveKind::Drain {
        if o.cmp_holding(now).is_ge() {
            return MoveCheck::Skip("newer");
        }
        if o.push > 0.0 && !clock::order_holds(clocks, &m.from, now.push, &m.to, o.push) {
            return MoveCheck::Skip("clock");
        }
        // A failed push the owner recorded later than the source's stays the group's last failure.
        let stamps = Stamps {
            push: now.push,
            failure: now.failure.max(o.failure),
        };
        return MoveCheck::Go(group.to_text(), stamps);
    }
    if o.latest() + lead >= now.latest() {
        return MoveCheck::Skip("newer");
    }
    if !clock::order_holds(clocks, &m.from, now.latest(), &m.to, o.latest() + lead) {
        return MoveCheck::Skip("clock");
    }
    MoveCheck::Go(group.to_text(), *now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Member {
        Member::parse(s).unwrap()
    }

    fn group(path: &str, push: f64, failure: f64) -> ApiGroup {
        ApiGroup {
            key: GroupingKey::from_path(path).unwrap(),
            push_time: Some(push),
            failure_time: Some(failure),
            families: BTreeMap::new(),
        }
    }

    #[test]
    fn a_move_is_made_only_while_its_reads_still_hold() {
        let (from, to) = (m("d:1"), m("a:1"));
        let key = GroupingKey::from_path("/metrics/job/j").unwrap();
        let stamps = |push| Stamps { push, failure: 0.0 };
        let mv = Move {
            from: from.clone(),
            to: to.clone(),
            key: key.clone(),
            copy: stamps(10.0),
            kind: MoveKind::Drain,
            replaces: None,
        };
        let contents = HashMap::from([(key.clone(), group("/metrics/job/j", 10.0, 0.0))]);
        let fresh = |source: Option<f64>, owner: Option<f64>| {
            BTreeMap::from([
                (
                    from.clone(),
                    source
                        .map(|t| (key.clone(), stamps(t)))
                        .into_iter()
                        .collect::<Holdings>(),
                ),
                (
                    to.clone(),
                    owner
                        .map(|t| (key.clone(), stamps(t)))
                        .into_iter()
                        .collect::<Holdings>(),
                ),
            ])
        };
        let clocks = Clocks::default();
        let reason = |f: &BTreeMap<Member, Holdings>| match check_move(&mv, f, &contents, &clocks) {
            MoveCheck::Go(..) => "go",
            MoveCheck::Skip(r) => r,
            MoveCheck::Done => "done",
        };
        assert_eq!(reason(&fresh(Some(10.0), None)), "go");
        assert_eq!(
            reason(&fresh(Some(10.0), Some(5.0))),
            "go",
            "the owner's older copy is replaced"
        );
        assert_eq!(
            reason(&fresh(Some(10.0), Some(12.0))),
            "newer",
            "pushed to its owner meanwhile"
        );
        assert_eq!(
            reason(&fresh(None, None)),
            "deleted",
            "a client deleted it meanwhile"
        );
        assert_eq!(
            reason(&fresh(Some(11.0), None)),
            "newer",
            "pushed to the draining one meanwhile"
        );
        assert_eq!(reason(&BTreeMap::new()), "unreadable");
    }

    #[test]
    fn a_repair_copy_is_made_only_where_the_standby_is_behind() {
        let (active, standby) = (m("a:1"), m("s:1"));
        let key = GroupingKey::from_path("/metrics/job/j").unwrap();
        let stamps = |push| Stamps { push, failure: 0.0 };
        let contents = HashMap::from([(key.clone(), group("/metrics/job/j", 10.0, 0.0))]);
        let fresh = |on_active: f64, on_standby: Option<f64>| {
            BTreeMap::from([
                (active.clone(), Holdings::from([(key.clone(), stamps(on_active))])),
                (
                    standby.clone(),
                    on_standby
                        .map(|t| (key.clone(), stamps(t)))
                        .into_iter()
                        .collect::<Holdings>(),
                ),
            ])
        };
        let reason = |kind, f: &BTreeMap<Member, Holdings>| {
            let mv = Move {
                from: active.clone(),
                to: standby.clone(),
                key: key.clone(),
                copy: stamps(10.0),
                kind,
                replaces: (kind == MoveKind::Replace).then(|| stamps(20.0)),
            };
            match check_move(&mv, f, &contents, &Clocks::default()) {
                MoveCheck::Go(..) => "go",
                MoveCheck::Skip(r) => r,
                MoveCheck::Done => "done",
            }
        };
        assert_eq!(reason(MoveKind::Repair, &fresh(10.0, None)), "go");
        assert_eq!(reason(MoveKind::Repair, &fresh(10.0, Some(8.5))), "go");
        assert_eq!(
            reason(MoveKind::Repair, &fresh(10.0, Some(9.5))),
            "done",
            "the same push, stamped first on the standby"
        );
        assert_eq!(
            reason(MoveKind::Repair, &fresh(12.0, Some(11.9))),
            "done",
            "pushed meanwhile, through the filter: the standby has it"
        );
        assert_eq!(reason(MoveKind::Repair, &fresh(12.0, Some(8.0))), "newer");
        assert_eq!(
            reason(MoveKind::Recopy, &fresh(10.0, Some(10.5))),
            "go",
            "the standby's newer stamp may be the raced copy's"
        );
        assert_eq!(reason(MoveKind::Recopy, &fresh(12.0, Some(11.9))), "newer");
        assert_eq!(reason(MoveKind::Replace, &fresh(10.0, Some(20.0))), "go");
        assert_eq!(
            reason(MoveKind::Replace, &fresh(10.0, Some(20.5))),
            "newer",
            "written since the plan: it may be on its way to the active"
        );
        assert_eq!(reason(MoveKind::Replace, &fresh(10.0, None)), "newer");
    }

    #[test]
    fn a_move_carries_an_owners_later_failed_push() {
        let (from, to) = (m("d:1"), m("a:1"));
        let key = GroupingKey::from_path("/metrics/job/j").unwrap();
        let mv = Move {
            from: from.clone(),
            to: to.clone(),
            key: key.clone(),
            copy: Stamps {
                push: 10.0,
                failure: 0.0,
            },
            kind: MoveKind::Drain,
            replaces: None,
        };
        let contents = HashMap::from([(key.clone(), group("/metrics/job/j", 10.0, 0.0))]);
        let fresh = |owner: Stamps| {
            BTreeMap::from([
                (from.clone(), Holdings::from([(key.clone(), mv.copy)])),
                (to.clone(), Holdings::from([(key.clone(), owner)])),
            ])
        };
        let clocks = Clocks::default();
        // Only a failure on the owner: the metrics move, and the failure stays the last word.
        match check_move(
            &mv,
            &fresh(Stamps {
                push: 0.0,
                failure: 12.0,
            }),
            &contents,
            &clocks,
        ) {
            MoveCheck::Go(_, s) => {
                assert_eq!((s.push, s.failure), (10.0, 12.0));
                assert!(s.last_push_failed());
            }
            MoveCheck::Skip(r) => panic!("skipped: {r}"),
            MoveCheck::Done => panic!("a drain move is never done beforehand"),
        }
        // Newer metrics on the owner, even with no failure: nothing moves.
        assert!(matches!(
            check_move(
                &mv,
                &fresh(Stamps {
                    push: 11.0,
                    failure: 0.0
                }),
                &contents,
                &clocks
            ),
            MoveCheck::Skip("newer")
        ));
    }
}
