//! Holds the lease in Consul, in the manner of `consul lock`: a session with the configured TTL and
//! lock delay (its locks released when it is invalidated), and the lease's KV key acquired with
//! it, holding which consul-sync this is.
//!
//! Every quarter of the TTL the session is renewed and the key acquired again (which succeeds while
//! this session holds it, and when nobody does once the lock delay is over). Each success is
//! recorded in [`Leadership`] with the time read before the renewal was sent; anything else lets
//! the last renewal go stale, and this consul-sync stops acting half a TTL after it. Consul
//! invalidates a session no sooner than its TTL after the last renewal (1.8 waits twice the TTL),
//! and another consul-sync may acquire the key only a lock delay after that: the old holder has
//! stopped long before. A session Consul no longer knows is replaced at once.
//!
//! At shutdown the session is ended: another consul-sync takes over after the lock delay instead of
//! after the session's expiry.

use crate::config::LeaseConfig;
use crate::consul::ConsulClient;
use crate::leader::{Leadership, Moment};
use crate::metrics::Metrics;
use crate::net::NetError;
use crate::shutdown::{sleep_or_shutdown, Shutdown};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Longest any one lease request may take.
const MAX_REQUEST_TIME: Duration = Duration::from_secs(5);
/// Time allowed to end the session at shutdown.
const DESTROY_TIMEOUT: Duration = Duration::from_millis(500);
/// Failures logged at warn: the first, then one in this many.
const WARN_EVERY: u64 = 10;

pub struct LeaseHolder {
    pub config: LeaseConfig,
    /// What the key holds while this consul-sync holds it: its host, endpoint and PID.
    pub identity: String,
    pub client: ConsulClient,
    pub leadership: Arc<Leadership>,
    pub metrics: Arc<Metrics>,
}

/// What one cycle found.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Standing {
    /// This consul-sync holds the lease.
    Holder,
    /// Another holds it (the key's value), or nobody and the lock delay is running.
    Follower(Option<String>),
}

/// What the loop carries from one cycle to the next.
struct LeaseState {
    session: Option<String>,
    standing: Option<Standing>,
    failures: u64,
}

impl LeaseHolder {
    /// Holds (or waits for) the lease until the shutdown, then ends the session.
    pub async fn run(self, mut shutdown: Shutdown) {
        let period = self.config.ttl / 4;
        let mut st = LeaseState {
            session: None,
            standing: None,
            failures: 0,
        };
        loop {
            let cycle = tokio::select! {
                _ = shutdown.recv() => break,
                c = self.cycle(&mut st.session) => c,
            };
            self.after_cycle(cycle, &mut st);
            if sleep_or_shutdown(period, &mut shutdown).await {
                break;
            }
        }
        self.leadership.lost();
        self.metrics.leader.set(0);
        if let Some(id) = st.session {
            match self.client.destroy_session(&id, DESTROY_TIMEOUT).await {
                Ok(()) => info!(
                    "ended the lease's session: another consul-sync may take the lease {} after the lock delay ({:?})",
                    self.config.key, self.config.lock_delay
                ),
                Err(e) => debug!("{e} (the session expires by itself)"),
            }
        }
    }

    /// Renews (or creates) the session and acquires the key with it.
    async fn cycle(&self, session: &mut Option<String>) -> Result<Standing, NetError> {
        let timeout = (self.config.ttl / 4).min(MAX_REQUEST_TIME);
        let Some(mut at) = Moment::now() else {
            return Ok(Standing::Follower(None));
        };
        if let Some(id) = session.clone() {
            if !self.client.renew_session(&id, timeout).await? {
                self.leadership.lost();
                *session = None;
                warn!("Consul no longer knows the lease's session (it expired or its node left): creating another");
            }
        }
        let id = match session.clone() {
            Some(id) => id,
            None => {
                if let Some(now) = Moment::now() {
                    at = now;
                }
                let name = format!("consul-sync {}", self.identity);
                let id = self
                    .client
                    .create_session(&name, self.config.ttl, self.config.lock_delay)
                    .await?;
                *session = Some(id.clone());
                id
            }
        };
        if self
            .client
            .acquire(&self.config.key, &id, &self.identity, timeout)
            .await?
        {
            self.leadership.renewed(at, self.config.ttl);
            return Ok(Standing::Holder);
        }
        self.leadership.lost();
        let holder = self
            .client
            .lock(&self.config.key, timeout)
            .await?
            .filter(|l| l.session.is_some())
            .map(|l| l.value);
        Ok(Standing::Follower(holder))
    }

    /// Logs a change of standing, and failures; sets the metric and the holder.
    fn after_cycle(&self, cycle: Result<Standing, NetError>, st: &mut LeaseState) {
        let key = &self.config.key;
        match cycle {
            Ok(standing) => {
                if st.failures > 0 {
                    info!(
                        "the lease {key} can be renewed again after {} failures",
                        st.failures
                    );
                    st.failures = 0;
                }
                match &standing {
                    Standing::Holder => self.leadership.set_holder(Some(self.identity.clone())),
                    Standing::Follower(h) => self.leadership.set_holder(h.clone()),
                }
                if st.standing.as_ref() != Some(&standing) {
                    self.log_standing(&standing, st.standing.as_ref());
                }
                st.standing = Some(standing);
            }
            Err(e) => {
                st.failures += 1;
                let n = st.failures;
                let consequence = if self.leadership.may_act() {
                    format!(
                        "this consul-sync stops acting {:?} after its last renewal",
                        self.config.ttl / 2
                    )
                } else {
                    "this consul-sync does not act".to_owned()
                };
                if n == 1 || n % WARN_EVERY == 0 {
                    warn!("{e} ({n} failed in a row; {consequence})");
                } else {
                    debug!("{e} ({n} failed in a row)");
                }
            }
        }
        self.metrics.leader.set(i64::from(self.leadership.may_act()));
    }

    fn log_standing(&self, now: &Standing, before: Option<&Standing>) {
        let key = &self.config.key;
        match (now, before) {
            (Standing::Holder, _) => info!(
                "holds the lease {key} as {}: this consul-sync deletes and moves groups and deregisters services; \
                 others only watch Consul and push the member list",
                self.identity
            ),
            (Standing::Follower(h), Some(Standing::Holder)) => warn!(
                "lost the lease {key} (now held by {}): this consul-sync no longer deletes, moves or deregisters",
                h.as_deref().unwrap_or("nobody yet")
            ),
            (Standing::Follower(Some(h)), _) => info!(
                "the lease {key} is held by {h}: this consul-sync watches Consul and pushes the member list, and \
                 leaves deletes, moves and deregistrations to it"
            ),
            (Standing::Follower(None), _) => debug!("the lease {key} is free but not yet acquirable (lock delay)"),
        }
    }
}

/// This consul-sync as the lease's key shows it: host name, endpoint address, PID.
pub fn identity(endpoint: &str) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{host} {endpoint} pid {}", std::process::id())
}
