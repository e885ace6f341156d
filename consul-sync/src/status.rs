//! What consul-sync says about itself beyond its metrics: readiness (`/-/ready`), the drains
//! (`/-/drain`) and whether each slot's standby holds what its active holds. The tasks that know
//! write it; the endpoint and the watcher read it.

use dynamic_sharding::members::Member;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Readiness: after the first accepted push to every Envoy, or, with no Envoy configured, after
/// the first member list read from Consul.
pub struct Readiness {
    envoys: Vec<AtomicBool>,
    synced: AtomicUsize,
    consul_read: AtomicBool,
}

impl Readiness {
    pub fn new(envoys: usize) -> Readiness {
        Readiness {
            envoys: (0..envoys).map(|_| AtomicBool::new(false)).collect(),
            synced: AtomicUsize::new(0),
            consul_read: AtomicBool::new(false),
        }
    }

    pub fn consul_read(&self) {
        self.consul_read.store(true, Ordering::Relaxed);
    }

    /// The Envoy at `index` (of the configured control URLs) took a list.
    pub fn envoy_synced(&self, index: usize) {
        if let Some(flag) = self.envoys.get(index) {
            if !flag.swap(true, Ordering::Relaxed) {
                self.synced.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// `None` when ready, else why not.
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.envoys.is_empty() {
            return (!self.consul_read.load(Ordering::Relaxed))
                .then(|| "no member list read from Consul yet".to_owned());
        }
        let synced = self.synced.load(Ordering::Relaxed);
        (synced < self.envoys.len()).then(|| {
            format!(
                "{synced} of {} Envoys have taken a member list",
                self.envoys.len()
            )
        })
    }
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

/// The drains as the last reconcile round left them.
pub type Drains = Arc<Mutex<Vec<DrainStatus>>>;

/// Whether one slot's standby holds what its active holds, as the last reconcile round saw it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SlotRepair {
    /// True when the last round found the standby holding what the active holds, or made it so
    /// (every copy and delete it planned went through).
    pub in_sync: bool,
    /// Unix seconds since when the standby has not been seen in sync (a difference found, or it
    /// or its active could not be read); `None` while in sync.
    pub differs_since: Option<f64>,
    /// Unix seconds of the round that last looked at the slot.
    pub last_checked: f64,
}

/// Each slot with a standby, by name, as the last reconcile round left it.
pub type Protection = Arc<Mutex<BTreeMap<Member, SlotRepair>>>;
