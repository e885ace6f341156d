//! consul-sync: registers pushgateways in Consul, watches which pass their health checks, keeps
//! the member list of every configured Envoy equal to them, and leaves each group on one
//! pushgateway.
//!
//! [`app::run`] starts the tasks and stops them when its shutdown future completes. The modules,
//! by responsibility; dependencies point down this list, never up, and [`membership`] and
//! [`reconcile`] do not import each other:
//! - [`app`]: `run`, the reloader (SIGHUP and `POST /-/reload`);
//! - [`membership`]: Consul (registration, the watch, the registrar) and the member list that
//!   goes out to every Envoy;
//! - [`reconcile`]: one copy of each group, drains; the pushgateway client and its decoders;
//! - [`endpoint`]: consul-sync's own HTTP endpoint;
//! - [`consul`]: the Consul HTTP API client (registration, health, the agent's services);
//! - [`leader`]: whether this consul-sync may act on the pushgateways now (the lease);
//! - [`status`]: what the tasks report and the endpoint shows (readiness, drains);
//! - [`config`], [`net`] (HTTP clients, bounded reads, [`net::NetError`]), [`metrics`] (a leaf
//!   that takes plain values), [`shutdown`], [`backoff`].
//!
//! The published list and reloaded configurations travel on `watch` channels; every task holds a
//! [`shutdown::Shutdown`] and returns when it fires.

pub mod app;
pub mod backoff;
pub mod config;
pub mod consul;
pub mod endpoint;
pub mod leader;
pub mod membership;
pub mod metrics;
pub mod net;
pub mod reconcile;
pub mod shutdown;
pub mod status;
