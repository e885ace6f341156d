//! consul-sync: registers pushgateways in Consul, watches which pass their health checks, and
//! keeps the member list of every configured Envoy equal to them.
//!
//! [`run`] starts three kinds of task and stops them when the shutdown future completes:
//! the [`watcher`] (registration, then blocking queries on Consul; publishes the member list),
//! one [`envoy`] pusher per control URL (each with its own retries), and the [`http`] endpoint.
//! The published list travels on a `watch` channel; shutdown is a `watch<bool>` every task
//! selects on, and `run` waits at most [`SHUTDOWN_GRACE`] for them before it returns.

pub mod backoff;
pub mod config;
pub mod consul;
pub mod envoy;
pub mod http;
pub mod metrics;
pub mod watcher;

use crate::config::Config;
use crate::consul::ConsulClient;
use crate::envoy::{Pusher, ReadySink};
use crate::metrics::Metrics;
use crate::watcher::Watcher;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
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
    let client = ConsulClient::new(config.consul.clone())?;

    let mut tasks: JoinSet<Result<(), Error>> = JoinSet::new();
    let watcher = Watcher {
        config: config.clone(),
        client,
        metrics: metrics.clone(),
        published: published_tx,
    };
    tasks.spawn(watcher.run(stop_rx.clone()).map_ok());
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
        )?;
        tasks.spawn(pusher.run(published_rx.clone(), stop_rx.clone()).map_ok());
    }
    let shared = Arc::new(http::Shared {
        metrics: metrics.clone(),
        ready: ready.clone(),
        published: published_rx.clone(),
        service_name: config.service_name.clone(),
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

/// The error and its causes, as reqwest's Display shows only the outermost.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
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
