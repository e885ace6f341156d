//! Running consul-sync: [`run`] starts every task and stops them when its shutdown future
//! completes, or when one of them ends; the reloader reads the configuration file again on
//! SIGHUP and on `POST /-/reload`.
//!
//! The tasks: the watcher (registration, then blocking queries on Consul; publishes the member
//! list), the registrar, the lease holder (whether this consul-sync may act on the pushgateways),
//! one Envoy pusher per control URL (each with its own retries), the reconciler (one copy of each
//! group, drains), the reloader and the HTTP endpoint. `run` waits at most [`SHUTDOWN_GRACE`] for
//! them after the shutdown.

use crate::config::Config;
use crate::consul::ConsulClient;
use crate::endpoint::{self, EndpointState, ReloadRequest};
use crate::leader::Leadership;
use crate::membership::envoy::Pusher;
use crate::membership::lease::{self, LeaseHolder};
use crate::membership::probe::Prober;
use crate::membership::registrar::Registrar;
use crate::membership::roles::Roles;
use crate::membership::versions::Versions;
use crate::membership::watcher::Watcher;
use crate::metrics::Metrics;
use crate::reconcile::pushgateway::PushgatewayClient;
use crate::reconcile::tombstones::Tombstones;
use crate::reconcile::Reconciler;
use crate::shutdown::{self, Shutdown, Trigger};
use crate::status::{Drains, Protection, Readiness};
use dynamic_sharding::members::{Member, MemberList};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};
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

type Tasks = JoinSet<Result<(), Error>>;

/// What the tasks are wired with.
struct Wiring {
    config: Arc<Config>,
    /// Reloaded configurations.
    config_rx: watch::Receiver<Arc<Config>>,
    /// The member list the watcher publishes.
    published: watch::Receiver<Option<MemberList>>,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
    drains: Drains,
    /// Whether each slot's standby holds what its active holds (the reconciler writes it).
    protection: Protection,
    versions: Arc<Versions>,
    /// Whether this consul-sync holds the lease and may act on the pushgateways.
    leadership: Arc<Leadership>,
    shutdown: Shutdown,
}

/// Runs consul-sync until `shutdown` completes; the HTTP endpoint serves on `listener`.
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future) -> Result<(), Error> {
    let config = Arc::new(config);
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| config.http_listen_addr.clone());
    let (trigger, stop) = shutdown::channel();
    let (published_tx, published_rx) = watch::channel(None);
    let (config_tx, config_rx) = watch::channel(config.clone());
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let (roles_tx, roles_rx) = watch::channel(Roles::default());
    let w = Wiring {
        metrics: Arc::new(Metrics::new(&config.envoy.control_urls)),
        ready: Arc::new(Readiness::new(config.envoy.control_urls.len())),
        config,
        config_rx,
        published: published_rx,
        drains: Drains::default(),
        protection: Protection::default(),
        versions: Arc::new(Versions::default()),
        leadership: Arc::new(Leadership::new()),
        shutdown: stop,
    };
    let mut tasks = Tasks::new();
    w.spawn_membership(&mut tasks, published_tx, roles_tx, &addr)?;
    w.spawn_reconciler(&mut tasks)?;
    tasks.spawn(
        reloader(
            config_tx,
            reload_rx,
            roles_rx,
            w.metrics.clone(),
            w.shutdown.clone(),
        )
        .map_ok(),
    );
    w.spawn_readiness_without_envoys(&mut tasks);
    w.spawn_pushers(&mut tasks)?;
    w.spawn_endpoint(&mut tasks, listener, reload_tx, addr.clone());
    let config = &w.config;
    info!(
        "consul-sync serving on http://{addr}; Consul {}; service {}; {} pushgateways to register; {} Envoys",
        config.consul.base_url,
        config.service_name,
        config.servers.len(),
        config.envoy.control_urls.len()
    );
    stop_after(shutdown, trigger, tasks).await
}

impl Wiring {
    /// The watcher, the registrar and the lease holder; `endpoint` names this consul-sync in
    /// the lease.
    fn spawn_membership(
        &self,
        tasks: &mut Tasks,
        published: watch::Sender<Option<MemberList>>,
        roles_tx: watch::Sender<Roles>,
        endpoint: &str,
    ) -> Result<(), Error> {
        let client = ConsulClient::new(self.config.consul.clone())?;
        let register_now = Arc::new(Notify::new());
        let prober = Prober::new()?;
        let roles_rx = roles_tx.subscribe();
        let watcher = Watcher {
            config: self.config.clone(),
            updates: self.config_rx.clone(),
            client: client.clone(),
            prober: prober.clone(),
            metrics: self.metrics.clone(),
            published,
            versions: self.versions.clone(),
            register_now: register_now.clone(),
            leadership: self.leadership.clone(),
            roles: roles_tx,
            protection: self.protection.clone(),
        };
        tasks.spawn(watcher.run(self.shutdown.clone()).map_ok());
        let registrar = Registrar {
            config: self.config_rx.clone(),
            client: client.clone(),
            metrics: self.metrics.clone(),
            leadership: self.leadership.clone(),
            prober,
            register_now,
            roles: roles_rx,
        };
        tasks.spawn(registrar.run(self.shutdown.clone()).map_ok());
        let holder = LeaseHolder {
            config: self.config.lease.clone(),
            identity: lease::identity(endpoint),
            client,
            leadership: self.leadership.clone(),
            metrics: self.metrics.clone(),
        };
        tasks.spawn(holder.run(self.shutdown.clone()).map_ok());
        Ok(())
    }

    fn spawn_reconciler(&self, tasks: &mut Tasks) -> Result<(), Error> {
        let tombstones = Tombstones::new(
            &self.config,
            ConsulClient::new(self.config.consul.clone())?,
            self.metrics.clone(),
            self.leadership.clone(),
        )?;
        let reconciler = Reconciler::new(
            self.config_rx.clone(),
            self.published.clone(),
            PushgatewayClient::new()?,
            self.metrics.clone(),
            self.drains.clone(),
            self.protection.clone(),
            self.leadership.clone(),
            tombstones,
        );
        tasks.spawn(reconciler.run(self.shutdown.clone()).map_ok());
        Ok(())
    }

    /// Readiness without Envoys: the first published list.
    fn spawn_readiness_without_envoys(&self, tasks: &mut Tasks) {
        let ready = self.ready.clone();
        let mut rx = self.published.clone();
        let mut stop = self.shutdown.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = stop.recv() => return Ok(()),
                _ = rx.wait_for(Option::is_some) => ready.consul_read(),
            }
            // Every task runs until shutdown: one that ends early stops `run`.
            stop.recv().await;
            Ok(())
        });
    }

    /// One pusher per Envoy control URL.
    fn spawn_pushers(&self, tasks: &mut Tasks) -> Result<(), Error> {
        let token = self.config.envoy.token.clone().unwrap_or_default();
        for (i, url) in self.config.envoy.control_urls.iter().enumerate() {
            let pusher = Pusher::new(
                i,
                url.clone(),
                token.clone(),
                self.config.resync_interval,
                self.metrics.clone(),
                self.ready.clone(),
                self.versions.clone(),
            )?;
            tasks.spawn(pusher.run(self.published.clone(), self.shutdown.clone()).map_ok());
        }
        Ok(())
    }

    fn spawn_endpoint(
        &self,
        tasks: &mut Tasks,
        listener: TcpListener,
        reload: mpsc::Sender<ReloadRequest>,
        addr: String,
    ) {
        let state = Arc::new(EndpointState {
            metrics: self.metrics.clone(),
            ready: self.ready.clone(),
            published: self.published.clone(),
            service_name: self.config.service_name.clone(),
            reload,
            drains: self.drains.clone(),
            config: self.config_rx.clone(),
            leadership: self.leadership.clone(),
        });
        let stop = self.shutdown.clone();
        tasks.spawn(async move {
            endpoint::serve(listener, state, stop)
                .await
                .map_err(|source| Error::Serve { addr, source })
        });
    }
}

/// Waits for `shutdown` or the first task to end, then stops every task, waiting at most
/// [`SHUTDOWN_GRACE`] for them.
async fn stop_after(shutdown: impl Future, trigger: Trigger, mut tasks: Tasks) -> Result<(), Error> {
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
    trigger.fire();
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

/// Reloads the configuration file on SIGHUP and on requests from `POST /-/reload`. A refused
/// file changes nothing: the error is logged (and answered), the running configuration stays. An
/// unchanged file changes nothing either: no task is woken (no reconcile round, no registration).
async fn reloader(
    config: watch::Sender<Arc<Config>>,
    mut requests: mpsc::Receiver<ReloadRequest>,
    roles: watch::Receiver<Roles>,
    metrics: Arc<Metrics>,
    mut shutdown: Shutdown,
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
            _ = shutdown.recv() => return,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => None,
            r = requests.recv() => match r {
                Some(r) => Some(r),
                None => return,
            },
        };
        let current = config.borrow().clone();
        let result = reload(&current, &roles.borrow().clone()).map(|(new, summary)| {
            if new == *current {
                return format!(
                    "configuration unchanged ({}): nothing to do",
                    summary_source(&current)
                );
            }
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

/// Reads the configuration file again and checks it may replace `current` while `roles` hold
/// (a promoted slot keeps its standby); the new configuration and a line for the log.
fn reload(current: &Config, roles: &Roles) -> Result<(Config, String), String> {
    let Some(path) = current.source.clone() else {
        return Err("consul-sync was not started from a configuration file".to_owned());
    };
    let (new, warnings) = Config::load(&path).map_err(|e| e.to_string())?;
    current.check_reload(&new)?;
    roles.check_standbys(&new.standbys, &new.slot_names())?;
    for w in warnings {
        warn!("{}: {w}", path.display());
    }
    let join = |v: &[Member]| v.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(",");
    let summary = format!(
        "configuration reloaded from {}: servers [{}], standbys [{}], drain [{}], reconcile_interval {:?}, \
         drain_timeout {:?}",
        path.display(),
        join(&new.servers),
        new.standbys
            .iter()
            .map(|(server, standby)| format!("{server}: {standby}"))
            .collect::<Vec<_>>()
            .join(", "),
        join(&new.drain),
        new.reconcile_interval,
        new.drain_timeout
    );
    Ok((new, summary))
}

/// The file a configuration came from, for a log line.
fn summary_source(config: &Config) -> String {
    config
        .source
        .as_ref()
        .map_or_else(|| "no file".to_owned(), |p| p.display().to_string())
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
