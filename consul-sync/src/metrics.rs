//! consul-sync's own metrics, served on `/metrics` (all names start with `consul_sync_`).
//!
//! | metric | what |
//! |---|---|
//! | `consul_sync_consul_requests_total{kind}` | requests to Consul (`register`, `health`) |
//! | `consul_sync_consul_errors_total{kind}` | those that failed (no answer, or not 200) |
//! | `consul_sync_consul_up` | 1 when the last Consul request succeeded |
//! | `consul_sync_last_consul_sync_timestamp_seconds` | Unix time of the last successful Consul read |
//! | `consul_sync_consul_pushgateways_missing` | 1 while Consul shows none of the registered pushgateways (the list stays) |
//! | `consul_sync_members_held` | pushgateways kept in the list against Consul's word: they answered when it took them out |
//! | `consul_sync_member_holds_total` | times a pushgateway was kept so |
//! | `consul_sync_leader` | 1 while this consul-sync holds the lease and may delete, move and deregister |
//! | `consul_sync_member_changes_total` | changes of the member list after the first |
//! | `consul_sync_members` | members in the current list |
//! | `consul_sync_member_list_version` | version of the current list (Unix ms) |
//! | `consul_sync_pushes_total{envoy,result}` | pushes per Envoy: `ok`, `conflict`, `refused`, `failed` |
//! | `consul_sync_last_push_timestamp_seconds{envoy}` | Unix time of the last accepted push |
//! | `consul_sync_envoy_version{envoy}` | version of the list last accepted by that Envoy |
//! | `consul_sync_reconcile_groups{pushgateway}` | groups each pushgateway held at the last reconcile |
//! | `consul_sync_reconcile_duplicate_groups` | groups with more than one copy at the last reconcile |
//! | `consul_sync_reconcile_lasting_duplicate_groups` | of those, groups that had more than one copy at the round before too |
//! | `consul_sync_reconcile_misplaced_groups` | groups whose newest copy is not on their owner |
//! | `consul_sync_reconcile_deleted_copies_total` | older copies deleted |
//! | `consul_sync_reconcile_skipped_deletes_total` | planned deletes not done: the copy changed meanwhile |
//! | `consul_sync_reconcile_errors_total{kind}` | failed reads, deletes, moves (`read`, `delete`, `move`) |
//! | `consul_sync_reconcile_duration_seconds` | time of a reconcile round (histogram) |
//! | `consul_sync_reconcile_interval_seconds` | the configured `reconcile_interval` |
//! | `consul_sync_reconcile_clock_refusals_total` | deletes and moves not made: the pushgateways' clocks could reverse the order they rest on |
//! | `consul_sync_reconcile_delete_window_seconds` | from the read a delete was checked against to the delete (histogram) |
//! | `consul_sync_pushgateway_clock_skew_seconds{pushgateway}` | its clock minus consul-sync's, from its `Date` headers |
//! | `consul_sync_drain_moved_groups_total` | groups copied to their owner at a drain deadline |
//! | `consul_sync_drain_moved_failed_pushes_total` | of those, groups whose last push had failed (recorded on the owner too) |
//! | `consul_sync_drain_skipped_moves_total{reason}` | moves not made at a drain deadline: `newer`, `deleted`, `unreadable` |
//! | `consul_sync_drain_move_window_seconds` | from the reads a move was checked against to its copy (histogram) |
//! | `consul_sync_drain_state{pushgateway}` | 1 draining, 2 drained |
//! | `consul_sync_drain_deadline_timestamp_seconds{pushgateway}` | when a drain moves what is left |
//! | `consul_sync_repaired_groups_total` | groups copied to a standby from its active, or deleted from a standby its active does not hold them |
//! | `consul_sync_repair_oldest_difference_seconds` | age of the oldest difference between a slot's standby and its active not repaired yet (0 when every standby is repaired) |
//! | `consul_sync_slots_unprotected` | slots whose standby did not hold what their active holds at the last reconcile round (behind, unreadable, or not passing its check) |
//! | `consul_sync_repair_errors_total{kind}` | failed repairs: `read` (the active or standby could not be read), `copy`, `delete` |
//! | `consul_sync_tombstones` | tombstones kept in Consul (`DELETE`s that did not reach a pushgateway) |
//! | `consul_sync_tombstones_collected_total` | tombstones taken from the Envoys (after they were kept in Consul) |
//! | `consul_sync_tombstones_closed_total{result}` | a tombstone done with on one pushgateway: `deleted`, `absent`, `newer`, `unclear`, `expired` |
//! | `consul_sync_tombstone_errors_total{kind}` | failures: `collect`, `store`, `ack`, `apply`, `full` |
//! | `consul_sync_registrations_total{reason}` | registrations in Consul after the start (`missing`, `reload`) |
//! | `consul_sync_deregistrations_total` | services deregistered because they left `pushgateway.servers` |
//! | `consul_sync_slot_promotions_total` | standbys this consul-sync promoted (as the lease holder) |
//! | `consul_sync_slots_active_failing` | slots whose active fails its check in Consul after the promotion was tried: no lease holder, standby not passing, or roles not written |
//! | `consul_sync_config_last_reload_successful` | 1 when the last reload succeeded (or none was tried) |
//! | `consul_sync_config_last_reload_success_timestamp_seconds` | Unix time of the last good configuration |

use dynamic_sharding::members::MemberList;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushResult {
    Ok,
    Conflict,
    Refused,
    Failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PushLabels {
    envoy: String,
    result: PushResultLabel,
}

/// Lower-case label values (`ok`, not `Ok`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum PushResultLabel {
    ok,
    conflict,
    refused,
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvoyLabels {
    envoy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PushgatewayLabels {
    pushgateway: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// How a tombstone ended on one pushgateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TombstoneResult {
    /// Its copy there, pushed before the `DELETE`, was deleted.
    Deleted,
    /// It held no copy.
    Absent,
    /// Its copy was pushed after the `DELETE`: kept.
    Newer,
    /// Its copy was pushed too close to the `DELETE` to tell by the clocks: kept.
    Unclear,
    /// The pushgateway was not readable within `tombstone_ttl`.
    Expired,
}

impl TombstoneResult {
    pub const ALL: [TombstoneResult; 5] = [
        TombstoneResult::Deleted,
        TombstoneResult::Absent,
        TombstoneResult::Newer,
        TombstoneResult::Unclear,
        TombstoneResult::Expired,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TombstoneResult::Deleted => "deleted",
            TombstoneResult::Absent => "absent",
            TombstoneResult::Newer => "newer",
            TombstoneResult::Unclear => "unclear",
            TombstoneResult::Expired => "expired",
        }
    }
}

type FloatGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    consul_requests: Family<KindLabels, Counter>,
    consul_errors: Family<KindLabels, Counter>,
    consul_up: Gauge,
    last_consul_sync: FloatGauge,
    pub consul_pushgateways_missing: Gauge,
    pub members_held: Gauge,
    pub member_holds: Counter,
    pub leader: Gauge,
    pub member_changes: Counter,
    members: Gauge,
    version: Gauge,
    pushes: Family<PushLabels, Counter>,
    last_push: Family<EnvoyLabels, FloatGauge>,
    envoy_version: Family<EnvoyLabels, Gauge>,
    reconcile_groups: Family<PushgatewayLabels, Gauge>,
    reconcile_duplicates: Gauge,
    reconcile_lasting: Gauge,
    reconcile_misplaced: Gauge,
    pub reconcile_deleted: Counter,
    pub reconcile_skipped_deletes: Counter,
    reconcile_errors: Family<KindLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub reconcile_interval: FloatGauge,
    pub reconcile_clock_refusals: Counter,
    pub reconcile_delete_window: Histogram,
    clock_skew: Family<PushgatewayLabels, FloatGauge>,
    pub drain_moved: Counter,
    pub drain_moved_failed_pushes: Counter,
    drain_skipped_moves: Family<ReasonLabels, Counter>,
    pub drain_move_window: Histogram,
    drain_state: Family<PushgatewayLabels, Gauge>,
    drain_deadline: Family<PushgatewayLabels, FloatGauge>,
    pub repaired_groups: Counter,
    pub repair_oldest_difference: FloatGauge,
    pub slots_unprotected: Gauge,
    repair_errors: Family<KindLabels, Counter>,
    tombstones: Gauge,
    pub tombstones_collected: Counter,
    tombstones_closed: Family<ResultLabels, Counter>,
    tombstone_errors: Family<KindLabels, Counter>,
    registrations: Family<ReasonLabels, Counter>,
    pub deregistrations: Counter,
    pub slot_promotions: Counter,
    pub slots_active_failing: Gauge,
    reload_ok: Gauge,
    reload_time: FloatGauge,
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Metrics {
    /// The metrics, with the per-Envoy series present (at 0) from the start.
    pub fn new(envoys: &[String]) -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("consul_sync"),
            consul_requests: Family::default(),
            consul_errors: Family::default(),
            consul_up: Gauge::default(),
            last_consul_sync: FloatGauge::default(),
            consul_pushgateways_missing: Gauge::default(),
            members_held: Gauge::default(),
            member_holds: Counter::default(),
            leader: Gauge::default(),
            member_changes: Counter::default(),
            members: Gauge::default(),
            version: Gauge::default(),
            pushes: Family::default(),
            last_push: Family::default(),
            envoy_version: Family::default(),
            reconcile_groups: Family::default(),
            reconcile_duplicates: Gauge::default(),
            reconcile_lasting: Gauge::default(),
            reconcile_misplaced: Gauge::default(),
            reconcile_deleted: Counter::default(),
            reconcile_skipped_deletes: Counter::default(),
            reconcile_errors: Family::default(),
            // 1 ms to about 65 s: one round at 100k groups takes seconds.
            reconcile_duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.001, 2.0, 17,
            )),
            reconcile_interval: FloatGauge::default(),
            reconcile_clock_refusals: Counter::default(),
            reconcile_delete_window: Histogram::new(window_buckets()),
            clock_skew: Family::default(),
            drain_moved: Counter::default(),
            drain_moved_failed_pushes: Counter::default(),
            drain_skipped_moves: Family::default(),
            drain_move_window: Histogram::new(window_buckets()),
            drain_state: Family::default(),
            drain_deadline: Family::default(),
            repaired_groups: Counter::default(),
            repair_oldest_difference: FloatGauge::default(),
            slots_unprotected: Gauge::default(),
            repair_errors: Family::default(),
            tombstones: Gauge::default(),
            tombstones_collected: Counter::default(),
            tombstones_closed: Family::default(),
            tombstone_errors: Family::default(),
            registrations: Family::default(),
            deregistrations: Counter::default(),
            slot_promotions: Counter::default(),
            slots_active_failing: Gauge::default(),
            reload_ok: Gauge::default(),
            reload_time: FloatGauge::default(),
        };
        m.register_all();
        m.reload_ok.set(1);
        m.reload_time.set(now_seconds());
        m.preset(envoys);
        m
    }

    /// Registers every metric, in the order of the exposition: its field, name and help.
    fn register_all(&mut self) {
        macro_rules! register {
            ($m:expr; $($field:ident: $name:literal, $help:literal;)*) => {
                $($m.registry.register($name, $help, $m.$field.clone());)*
            };
        }
        register!(self;
            consul_requests: "consul_requests",
                "Requests to Consul, by kind (register, health)";
            consul_errors: "consul_errors",
                "Requests to Consul that failed, by kind";
            consul_up: "consul_up",
                "1 when the last request to Consul succeeded";
            last_consul_sync: "last_consul_sync_timestamp_seconds",
                "Unix time of the last successful read of the pushgateways' health from Consul";
            consul_pushgateways_missing: "consul_pushgateways_missing",
                "1 while Consul shows none of the registered pushgateways (the last member list stays)";
            members_held: "members_held",
                "Pushgateways kept in the member list against Consul's word because they answered /-/healthy";
            member_holds: "member_holds",
                "Times a pushgateway Consul took out was kept in the member list because it answered /-/healthy";
            leader: "leader",
                "1 while this consul-sync holds the lease in Consul: only then does it delete, move and deregister";
            member_changes: "member_changes",
                "Changes of the member list after the first list";
            members: "members",
                "Members (passing pushgateways) in the current list";
            version: "member_list_version",
                "Version of the current member list (Unix milliseconds)";
            pushes: "pushes",
                "Pushes of the member list per Envoy, by result (ok, conflict, refused, failed)";
            last_push: "last_push_timestamp_seconds",
                "Unix time of the last push an Envoy accepted";
            envoy_version: "envoy_version",
                "Version of the member list an Envoy last accepted from us";
            reconcile_groups: "reconcile_groups",
                "Groups each pushgateway held at the last reconcile";
            reconcile_duplicates: "reconcile_duplicate_groups",
                "Groups with more than one copy at the last reconcile";
            reconcile_lasting: "reconcile_lasting_duplicate_groups",
                "Groups with more than one copy at the last reconcile and the one before: their older copies come back or cannot be deleted";
            reconcile_misplaced: "reconcile_misplaced_groups",
                "Groups whose newest copy is not on their owner at the last reconcile";
            reconcile_deleted: "reconcile_deleted_copies",
                "Older copies of groups deleted by the reconciler";
            reconcile_skipped_deletes: "reconcile_skipped_deletes",
                "Planned deletes not done because the copy changed after it was read";
            reconcile_errors: "reconcile_errors",
                "Failed reads, deletes and moves of the reconciler, by kind";
            reconcile_duration: "reconcile_duration_seconds",
                "Time of one reconcile round";
            reconcile_interval: "reconcile_interval_seconds",
                "The configured reconcile_interval";
            reconcile_clock_refusals: "reconcile_clock_refusals",
                "Deletes and moves not made because the pushgateways' clocks could reverse the order they rest on";
            reconcile_delete_window: "reconcile_delete_window_seconds",
                "Time from the start of the read a delete was checked against to the end of the delete: a push to that copy meanwhile is lost";
            clock_skew: "pushgateway_clock_skew_seconds",
                "A pushgateway's clock minus consul-sync's, from the Date headers of its answers (about a second of resolution, narrowed over reads)";
            drain_moved: "drain_moved_groups",
                "Groups copied to their owner at a drain deadline (their push time became the copy's)";
            drain_moved_failed_pushes: "drain_moved_failed_pushes",
                "Groups moved at a drain deadline whose last push had failed: the failure is recorded on the owner too";
            drain_skipped_moves: "drain_skipped_moves",
                "Moves at a drain deadline not made this round, by reason (newer: pushed elsewhere meanwhile; deleted: deleted meanwhile; unreadable: a pushgateway involved could not be read)";
            drain_move_window: "drain_move_window_seconds",
                "Time from the start of the reads a move was checked against to the end of its copy: a push to the owner meanwhile is overwritten";
            drain_state: "drain_state",
                "Drain state per pushgateway: 1 draining, 2 drained";
            drain_deadline: "drain_deadline_timestamp_seconds",
                "Unix time after which a drain moves the groups left";
            repaired_groups: "repaired_groups",
                "Groups copied to a slot's standby from its active (their push time on the standby became the copy's), or deleted from a standby whose active does not hold them";
            repair_oldest_difference: "repair_oldest_difference_seconds",
                "Age of the oldest difference between a slot's standby and its active not repaired yet; 0 when every standby holds what its active holds";
            slots_unprotected: "slots_unprotected",
                "Slots whose standby did not hold what their active holds at the last reconcile round: behind, unreadable, or not passing its check";
            repair_errors: "repair_errors",
                "Failed repairs of standbys, by kind (read: the active or the standby could not be read; copy; delete)";
            tombstones: "tombstones",
                "Tombstones kept in Consul: DELETEs that did not reach a pushgateway, waiting for it to be readable";
            tombstones_collected: "tombstones_collected",
                "Tombstones taken from the Envoys, each acknowledged after it was kept in Consul";
            tombstones_closed: "tombstones_closed",
                "Tombstones done with on one pushgateway, by result (deleted, absent, newer, unclear, expired)";
            tombstone_errors: "tombstone_errors",
                "Failures while collecting, keeping, acknowledging and applying tombstones, by kind (collect, store, ack, apply, full)";
            registrations: "registrations",
                "Registrations in Consul after the start, by reason (missing, reload)";
            deregistrations: "deregistrations",
                "Services deregistered because they left pushgateway.servers";
            slot_promotions: "slot_promotions",
                "Standbys this consul-sync promoted to their slot's active (as the lease holder)";
            slots_active_failing: "slots_active_failing",
                "Slots whose active fails its check in Consul once the promotion was tried: no lease holder, standby not passing, or the roles not written";
            reload_ok: "config_last_reload_successful",
                "1 when the last configuration reload succeeded";
            reload_time: "config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful configuration load";
        );
    }

    /// Series present at 0 from the start, so a rate or an alert has them before the first event.
    fn preset(&self, envoys: &[String]) {
        for reason in ["newer", "deleted", "unreadable"] {
            let _ = self.drain_skipped_moves.get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            });
        }
        for kind in ["read", "delete", "move"] {
            let _ = self.reconcile_errors.get_or_create(&KindLabels {
                kind: kind.to_owned(),
            });
        }
        for kind in ["collect", "store", "ack", "apply", "full"] {
            let _ = self.tombstone_errors.get_or_create(&KindLabels {
                kind: kind.to_owned(),
            });
        }
        for r in TombstoneResult::ALL {
            let _ = self.tombstones_closed.get_or_create(&ResultLabels {
                result: r.label().to_owned(),
            });
        }
        for kind in ["register", "health"] {
            let l = KindLabels {
                kind: kind.to_owned(),
            };
            let _ = self.consul_requests.get_or_create(&l);
            let _ = self.consul_errors.get_or_create(&l);
        }
        for e in envoys {
            for r in [
                PushResult::Ok,
                PushResult::Conflict,
                PushResult::Refused,
                PushResult::Failed,
            ] {
                let _ = self.pushes.get_or_create(&push_labels(e, r));
            }
            let _ = self.last_push.get_or_create(&EnvoyLabels { envoy: e.clone() });
        }
    }

    pub fn consul_request(&self, kind: &str) {
        self.consul_requests
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn consul_error(&self, kind: &str) {
        self.consul_errors
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
        self.consul_up.set(0);
    }

    pub fn consul_ok(&self) {
        self.consul_up.set(1);
        self.last_consul_sync.set(now_seconds());
    }

    pub fn set_members(&self, list: &MemberList) {
        self.members.set(list.len() as i64);
        self.version.set(i64::try_from(list.version).unwrap_or(i64::MAX));
    }

    pub fn push(&self, envoy: &str, result: PushResult) {
        self.pushes.get_or_create(&push_labels(envoy, result)).inc();
    }

    pub fn pushed(&self, envoy: &str, version: u64) {
        let l = EnvoyLabels {
            envoy: envoy.to_owned(),
        };
        self.last_push.get_or_create(&l).set(now_seconds());
        self.envoy_version
            .get_or_create(&l)
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    /// What the last reconcile round saw: the groups each pushgateway read holds, and the
    /// groups with copies, with copies at the round before too, and not on their owner.
    pub fn reconciled<'a>(
        &self,
        groups: impl IntoIterator<Item = (&'a str, usize)>,
        duplicates: usize,
        lasting: usize,
        misplaced: usize,
    ) {
        self.reconcile_groups.clear();
        for (pushgateway, held) in groups {
            self.reconcile_groups
                .get_or_create(&PushgatewayLabels {
                    pushgateway: pushgateway.to_owned(),
                })
                .set(held as i64);
        }
        self.reconcile_duplicates.set(duplicates as i64);
        self.reconcile_lasting.set(lasting as i64);
        self.reconcile_misplaced.set(misplaced as i64);
    }

    /// The clock skew of each pushgateway read (its clock minus ours, seconds); the ones no
    /// longer read disappear.
    pub fn clock_skews<'a>(&self, skews: impl IntoIterator<Item = (&'a str, f64)>) {
        self.clock_skew.clear();
        for (pushgateway, skew) in skews {
            self.clock_skew
                .get_or_create(&PushgatewayLabels {
                    pushgateway: pushgateway.to_owned(),
                })
                .set(skew);
        }
    }

    pub fn drain_skipped_moves(&self, reason: &str, n: u64) {
        self.drain_skipped_moves
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc_by(n);
    }

    pub fn repair_error(&self, kind: &str) {
        self.repair_errors
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn reconcile_error(&self, kind: &str) {
        self.reconcile_errors
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// The drains under way, each as (pushgateway, drained, deadline in Unix seconds); a
    /// finished or cancelled one disappears.
    pub fn drains<'a>(&self, drains: impl IntoIterator<Item = (&'a str, bool, f64)>) {
        self.drain_state.clear();
        self.drain_deadline.clear();
        for (pushgateway, drained, deadline) in drains {
            let l = PushgatewayLabels {
                pushgateway: pushgateway.to_owned(),
            };
            self.drain_state
                .get_or_create(&l)
                .set(if drained { 2 } else { 1 });
            self.drain_deadline.get_or_create(&l).set(deadline);
        }
    }

    /// Tombstones kept in Consul now.
    pub fn tombstones_kept(&self, kept: usize) {
        self.tombstones.set(kept as i64);
    }

    pub fn tombstone_closed(&self, result: TombstoneResult) {
        self.tombstones_closed
            .get_or_create(&ResultLabels {
                result: result.label().to_owned(),
            })
            .inc();
    }

    pub fn tombstone_error(&self, kind: &str) {
        self.tombstone_errors
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn registered(&self, reason: &str) {
        self.registrations
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        self.reload_ok.set(i64::from(ok));
        if ok {
            self.reload_time.set(now_seconds());
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// 1 ms to about 33 s: a window is milliseconds with few groups, seconds at 100k.
fn window_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16)
}

fn push_labels(envoy: &str, r: PushResult) -> PushLabels {
    let result = match r {
        PushResult::Ok => PushResultLabel::ok,
        PushResult::Conflict => PushResultLabel::conflict,
        PushResult::Refused => PushResultLabel::refused,
        PushResult::Failed => PushResultLabel::failed,
    };
    PushLabels {
        envoy: envoy.to_owned(),
        result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        let m = Metrics::new(&["http://e:1".to_owned()]);
        m.consul_request("health");
        m.consul_error("health");
        m.push("http://e:1", PushResult::Conflict);
        m.clock_skews([("a:1", 30.5)]);
        m.drain_skipped_moves("newer", 2);
        m.set_members(&MemberList {
            version: 7,
            members: vec![],
            ..MemberList::default()
        });
        m.tombstones_kept(3);
        m.tombstone_closed(TombstoneResult::Newer);
        m.tombstone_error("ack");
        let text = m.encode().unwrap();
        for line in [
            "consul_sync_consul_requests_total{kind=\"health\"} 1",
            "consul_sync_consul_errors_total{kind=\"health\"} 1",
            "consul_sync_consul_errors_total{kind=\"register\"} 0",
            "consul_sync_consul_up 0",
            "consul_sync_pushes_total{envoy=\"http://e:1\",result=\"conflict\"} 1",
            "consul_sync_pushes_total{envoy=\"http://e:1\",result=\"ok\"} 0",
            "consul_sync_members 0",
            "consul_sync_member_list_version 7",
            "consul_sync_member_changes_total 0",
            "consul_sync_tombstones 3",
            "consul_sync_tombstones_collected_total 0",
            "consul_sync_tombstones_closed_total{result=\"newer\"} 1",
            "consul_sync_tombstones_closed_total{result=\"expired\"} 0",
            "consul_sync_tombstone_errors_total{kind=\"ack\"} 1",
            "consul_sync_tombstone_errors_total{kind=\"store\"} 0",
            "consul_sync_pushgateway_clock_skew_seconds{pushgateway=\"a:1\"} 30.5",
            "consul_sync_drain_skipped_moves_total{reason=\"newer\"} 2",
            "consul_sync_drain_skipped_moves_total{reason=\"unreadable\"} 0",
            "consul_sync_reconcile_clock_refusals_total 0",
            "consul_sync_drain_moved_failed_pushes_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
