//! The reconciler alone, in-process, on a member list the test gives (a watcher would publish
//! it): for tests of the reconcile round that need what consul-sync does not publish itself, or
//! control of the lease.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use consul_sync::config::Config;
use consul_sync::consul::ConsulClient;
use consul_sync::leader::{Leadership, Moment};
use consul_sync::metrics::Metrics;
use consul_sync::reconcile::pushgateway::PushgatewayClient;
use consul_sync::reconcile::tombstones::Tombstones;
use consul_sync::reconcile::Reconciler;
use consul_sync::shutdown::Trigger;
use consul_sync::status::{Drains, Protection, SlotRepair};
use dynamic_sharding::members::{Member, MemberList};
use std::sync::Arc;
use std::time::Duration;
use testkit::wait_until;

/// The reconciler on its own thread; stopped when dropped. It does not hold the lease until
/// [`Reconciling::take_lease`].
pub struct Reconciling {
    pub metrics: Arc<Metrics>,
    pub protection: Protection,
    pub drains: Drains,
    pub leadership: Arc<Leadership>,
    pub interval: Duration,
    trigger: Trigger,
    task: Option<std::thread::JoinHandle<()>>,
}

impl Reconciling {
    /// Runs the reconciler with the configuration `yaml` on `list`.
    pub fn start(yaml: &str, list: MemberList) -> Reconciling {
        let (config, _) = Config::parse(yaml, "t.yml", |_| None, |_| Err(String::new())).unwrap();
        let interval = config.reconcile_interval;
        let (config_tx, config_rx) = tokio::sync::watch::channel(Arc::new(config));
        let metrics = Arc::new(Metrics::new(&[]));
        let leadership = Arc::new(Leadership::new());
        let tombstones = Tombstones::new(
            &config_rx.borrow(),
            ConsulClient::new(config_rx.borrow().consul.clone()).unwrap(),
            metrics.clone(),
            leadership.clone(),
        )
        .unwrap();
        let (protection, drains) = (Protection::default(), Drains::default());
        let (list_tx, list_rx) = tokio::sync::watch::channel(Some(list));
        let reconciler = Reconciler::new(
            config_rx,
            list_rx,
            PushgatewayClient::new().unwrap(),
            metrics.clone(),
            drains.clone(),
            protection.clone(),
            leadership.clone(),
            tombstones,
        );
        let (trigger, stop) = consul_sync::shutdown::channel();
        let task = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            // The senders live as long as the reconciler: a closed channel ends it.
            let _senders = (config_tx, list_tx);
            rt.block_on(reconciler.run(stop));
        });
        Reconciling {
            metrics,
            protection,
            drains,
            leadership,
            interval,
            trigger,
            task: Some(task),
        }
    }

    /// From now on (for an hour) it holds the lease: it acts.
    pub fn take_lease(&self) {
        self.leadership
            .renewed(Moment::now().unwrap(), Duration::from_secs(2 * 3600));
    }

    /// The value of the series `series` (name and labels as exposed), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.metrics.encode().unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub fn rounds(&self) -> f64 {
        self.metric("consul_sync_reconcile_duration_seconds_count")
    }

    /// Waits until `n` more rounds have ended.
    pub fn wait_rounds(&self, n: f64) {
        let start = self.rounds();
        wait_until(
            &format!("{n} more reconcile rounds"),
            self.interval * (n as u32 + 2) + Duration::from_secs(10),
            || (self.rounds() >= start + n).then_some(()),
        );
    }

    /// Where the slot named `name` stands, as the last round left it.
    pub fn slot(&self, name: &str) -> Option<SlotRepair> {
        let p = self.protection.lock().unwrap();
        p.get(&Member::parse(name).unwrap()).cloned()
    }
}

impl Drop for Reconciling {
    fn drop(&mut self) {
        self.trigger.fire();
        if let Some(t) = self.task.take() {
            let _ = t.join();
        }
    }
}
