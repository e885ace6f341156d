//! consul-sync: registers pushgateways in Consul, watches which pass their health checks, and
//! keeps the member list of every configured Envoy equal to them.
//!
//! [`run`] starts these tasks and stops them when the shutdown future completes:
//! the [`watcher`] (registration, then blocking queries on Consul; publishes the member list),
//! one [`envoy`] pusher per control URL (each with its own retries), the [`reconcile`]r (one copy
//! of each group, drains), the [`registrar`] (keeps the configured pushgateways registered), the
//! reloader (SIGHUP and `POST /-/reload`) and the [`http`] endpoint.
//! The published list and reloaded configurations travel on `watch` channels; shutdown is a
//! `watch<bool>` every task selects on, and `run` waits at most [`SHUTDOWN_GRACE`] for them.

pub mod backoff;
pub mod config;
pub mod consul;
pub mod envoy;
pub mod groups;
pub mod http;
pub mod metrics;
pub mod pushgateway;
pub mod reconcile;
pub mod registrar;
pub mod watcher;

use crate::config::Config;
use crate::consul::ConsulClient;
use crate::envoy::{Pusher, ReadySink};
use crate::metrics::Metrics;
use crate::pushgateway::PushgatewayClient;
use crate::reconcile::Reconciler;
use crate::registrar::Registrar;
use crate::watcher::Watcher;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

/// Longest `run` waits for its tasks after the shutdown future completed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("building the HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error("the HTTP endpoint on {addr} failed: {source}")]
    Serve { addr: String, source: std::io::Error },
}

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

impl ReadySink for Readiness {
    fn envoy_synced(&self, index: usize) {
        if let Some(flag) = self.envoys.get(index) {
            if !flag.swap(true, Ordering::Relaxed) {
                self.synced.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Runs consul-sync until `shutdown` completes; the HTTP endpoint serves on `listener`.
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future) -> Result<(), Error> {
    let config = Arc::new(config);
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| config.http_listen_addr.clone());
    let metrics = Arc::new(Metrics::new(&config.envoy.control_urls));
    let ready = Arc::new(Readiness::new(config.envoy.control_urls.len()));
    let (published_tx, published_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (config_tx, config_rx) = watch::channel(config.clone());
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let client = ConsulClient::new(config.consul.clone())?;
    let drains = Arc::new(std::sync::Mutex::new(Vec::new()));

    let mut tasks: JoinSet<Result<(), Error>> = JoinSet::new();
    let versions = Arc::new(crate::envoy::Versions::default());
    let watcher = Watcher {
        config: config.clone(),
        updates: config_rx.clone(),
        client: client.clone(),
        metrics: metrics.clone(),
        published: published_tx,
        versions: versions.clone(),
    };
    tasks.spawn(watcher.run(stop_rx.clone()).map_ok());
    let registrar = Registrar {
        config: config_rx.clone(),
        client,
        metrics: metrics.clone(),
    };
    tasks.spawn(registrar.run(stop_rx.clone()).map_ok());
    let reconciler = Reconciler {
        config: config_rx.clone(),
        published: published_rx.clone(),
        client: PushgatewayClient::new()?,
        metrics: metrics.clone(),
        drains: drains.clone(),
    };
    tasks.spawn(reconciler.run(stop_rx.clone()).map_ok());
    tasks.spawn(reloader(config_tx, reload_rx, metrics.clone(), stop_rx.clone()).map_ok());
    // Readiness without Envoys: the first published list.
    {
        let ready = ready.clone();
        let mut rx = published_rx.clone();
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return Ok(()),
                _ = rx.wait_for(Option::is_some) => ready.consul_read(),
            }
            // Every task runs until shutdown: one that ends early stops `run`.
            let _ = stop.wait_for(|s| *s).await;
            Ok(())
        });
    }
    let token = config.envoy.token.clone().unwrap_or_default();
    for (i, url) in config.envoy.control_urls.iter().enumerate() {
        let sink: Arc<dyn ReadySink> = ready.clone();
        let pusher = Pusher::new(
            i,
            url.clone(),
            token.clone(),
            config.resync_interval,
            metrics.clone(),
            sink,
            versions.clone(),
        )?;
        tasks.spawn(pusher.run(published_rx.clone(), stop_rx.clone()).map_ok());
    }
    let shared = Arc::new(http::Shared {
        metrics: metrics.clone(),
        ready: ready.clone(),
        published: published_rx.clone(),
        service_name: config.service_name.clone(),
        reload: reload_tx,
        drains,
    });
    {
        let addr = addr.clone();
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            http::serve(listener, shared, stop)
                .await
                .map_err(|source| Error::Serve { addr, source })
        });
    }
    info!(
        "consul-sync serving on http://{addr}; Consul {}; service {}; {} pushgateways to register; {} Envoys",
        config.consul.base_url,
        config.service_name,
        config.servers.len(),
        config.envoy.control_urls.len()
    );

    let mut result = Ok(());
    tokio::select! {
        _ = shutdown => info!("shutting down; registrations stay in Consul"),
        Some(done) = tasks.join_next() => {
            match done {
                Ok(Err(e)) => { error!("{e}"); result = Err(e); }
                Ok(Ok(())) => warn!("a task ended early; shutting down"),
                Err(e) => warn!("a task failed: {e}; shutting down"),
            }
        }
    }
    let _ = stop_tx.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        warn!("tasks still busy after {SHUTDOWN_GRACE:?}; stopping them");
        tasks.abort_all();
    }
    result
}

/// A reload request: the answer goes back on the oneshot.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

/// Reloads the configuration file on SIGHUP and on requests from `POST /-/reload`. A refused
/// file changes nothing: the error is logged (and answered), the running configuration stays.
async fn reloader(
    config: watch::Sender<Arc<Config>>,
    mut requests: mpsc::Receiver<ReloadRequest>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!("cannot listen for SIGHUP ({e}); reload with POST /-/reload");
            None
        }
    };
    loop {
        let reply = tokio::select! {
            _ = shutdown.changed() => return,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => None,
            r = requests.recv() => match r {
                Some(r) => Some(r),
                None => return,
            },
        };
        let current = config.borrow().clone();
        let result = reload(&current).map(|(new, summary)| {
            config.send_replace(Arc::new(new));
            summary
        });
        metrics.reload(result.is_ok());
        match &result {
            Ok(summary) => info!("{summary}"),
            Err(e) => error!("configuration reload refused: {e}"),
        }
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
}

/// Reads the configuration file again; the new configuration and a line for the log.
fn reload(current: &Config) -> Result<(Config, String), String> {
    let Some(path) = current.source.clone() else {
        return Err("consul-sync was not started from a configuration file".to_owned());
    };
    let (new, warnings) = Config::load(&path).map_err(|e| e.to_string())?;
    current.check_reload(&new)?;
    for w in warnings {
        warn!("{}: {w}", path.display());
    }
    let join =
        |v: &[dynamic_sharding::members::Member]| v.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(",");
    let summary = format!(
        "configuration reloaded from {}: servers [{}], drain [{}], reconcile_interval {:?}, drain_timeout {:?}",
        path.display(),
        join(&new.servers),
        join(&new.drain),
        new.reconcile_interval,
        new.drain_timeout
    );
    Ok((new, summary))
}

/// The error and its causes, as reqwest's Display shows only the outermost.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `async {}` → `async { Ok(()) }` for the task set.
trait MapOk: Future<Output = ()> + Sized {
    fn map_ok(self) -> impl Future<Output = Result<(), Error>> {
        async move {
            self.await;
            Ok(())
        }
    }
}

impl<F: Future<Output = ()>> MapOk for F {}
