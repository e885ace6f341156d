//! Keeps every configured pushgateway registered in Consul, and only those.
//!
//! Consul deregisters a service whose check stayed critical for `check.deregister_after`; the Go
//! original then never saw that pushgateway again. Every `reconcile_interval`, at once after a
//! reload, and when the watcher finds Consul lacking one of them, this task lists the agent's
//! services and:
//! - registers each configured pushgateway that is missing (it is admitted again as soon as its
//!   check passes), and registers again those whose check settings a reload changed. One missing
//!   while it answers `/-/healthy`, and not with all the others (an agent that lost its state),
//!   was deregistered by hand, the Go original's scale-in: that is undone, with a warning saying
//!   what to do instead (drain it);
//! - only while this consul-sync holds the lease ([`Leadership::may_act`]): deregisters the
//!   services consul-sync registered (meta `managed_by=consul-sync`) whose pushgateway left
//!   `pushgateway.servers` and is not in `pushgateway.drain`, so Prometheus stops scraping them.
//!   Two consul-syncs whose configurations differ during a rollout do not undo each other. A
//!   pushgateway moved from `servers` to `drain` in one edit stays registered (and scraped) until
//!   it leaves `drain` too.
//!
//! With standbys, each address is registered under the service of its role ([`Roles`]): a slot's
//! active under `register_service_name`, its standby under `<register_service_name>-standby`, so
//! that Prometheus (which scrapes the first) never scrapes a standby. A promotion changes the
//! roles, and the next sweep registers both addresses again under their new services.

use crate::config::Config;
use crate::consul::{AgentService, ConsulClient, Registration, META_MEMBER};
use crate::leader::Leadership;
use crate::membership::probe::Prober;
use crate::membership::roles::{Role, Roles, SlotTable};
use crate::metrics::Metrics;
use crate::net::NetError;
use crate::shutdown::{sleep_or_shutdown, Shutdown};
use dynamic_sharding::members::Member;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

pub struct Registrar {
    pub config: watch::Receiver<Arc<Config>>,
    pub client: ConsulClient,
    pub metrics: Arc<Metrics>,
    /// Deregistrations only while this consul-sync holds the lease.
    pub leadership: Arc<Leadership>,
    /// Asks a missing pushgateway whether it lives: then a hand deregistered it.
    pub prober: Prober,
    /// Asks for a sweep now (Consul lacks a registered pushgateway, or a promotion).
    pub register_now: Arc<Notify>,
    /// The roles as the watcher last read or wrote them.
    pub roles: watch::Receiver<Roles>,
}

impl Registrar {
    pub async fn run(mut self, mut shutdown: Shutdown) {
        // What the watcher registered at the start: a reload that changes it registers again.
        let first = self.config.borrow_and_update().clone();
        let roles = self.roles.borrow_and_update().clone();
        let mut registered: BTreeMap<String, Registration> = registrations(&first, &roles)
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        loop {
            let interval = self.config.borrow().reconcile_interval;
            tokio::select! {
                _ = shutdown.recv() => return,
                _ = tokio::time::sleep(interval) => {}
                _ = self.register_now.notified() => {}
                changed = self.config.changed() => if changed.is_err() { return; },
                changed = self.roles.changed() => if changed.is_err() { return; },
            }
            let config = self.config.borrow_and_update().clone();
            let roles = self.roles.borrow_and_update().clone();
            if let Err(e) = self.sweep(&config, &roles, &mut registered).await {
                self.metrics.consul_error("register");
                warn!("{e} (registrations are checked again in {interval:?})");
                if sleep_or_shutdown(std::time::Duration::from_millis(200), &mut shutdown).await {
                    return;
                }
            }
        }
    }

    async fn sweep(
        &self,
        config: &Config,
        roles: &Roles,
        registered: &mut BTreeMap<String, Registration>,
    ) -> Result<(), NetError> {
        self.metrics.consul_request("register");
        let services = self.client.agent_services().await?;
        let wanted = registrations(config, roles);
        // None of them there: the agent lost its state (or the token its rights), not a hand.
        let all_gone = wanted.iter().all(|r| !services.contains_key(&r.id));
        for reg in &wanted {
            let missing = !services.contains_key(&reg.id);
            let changed = registered.get(&reg.id) != Some(reg);
            if !missing && !changed {
                continue;
            }
            self.metrics.consul_request("register");
            self.client.register(reg).await?;
            registered.insert(reg.id.clone(), reg.clone());
            if missing {
                self.metrics.registered("missing");
                self.log_registered_again(reg, all_gone, config).await;
            } else {
                self.metrics.registered("reload");
                info!(
                    "registered {} again as service {} (its role or the check settings changed)",
                    reg.id, reg.name
                );
            }
        }
        let kept = kept_ids(config);
        let stale: Vec<&String> = services
            .iter()
            .filter(|(id, svc)| is_stale(id, svc, config, &kept))
            .map(|(id, _)| id)
            .collect();
        if !stale.is_empty() && !self.leadership.may_act() {
            debug!(
                "not deregistering {stale:?}: another consul-sync holds the lease (it deregisters what its \
                 configuration no longer lists)"
            );
            return Ok(());
        }
        for id in stale {
            self.metrics.consul_request("register");
            self.client.deregister(id).await?;
            registered.remove(id);
            self.metrics.deregistrations.inc();
            info!(
                "deregistered {id} from Consul: it is no longer in pushgateway.servers or pushgateway.drain (Prometheus stops scraping it)"
            );
        }
        Ok(())
    }

    /// Says why `reg` was missing: Consul dropped it (critical too long, or an agent that lost its
    /// state), or, for one that answers while the others were there, a hand deregistered it.
    async fn log_registered_again(&self, reg: &Registration, all_gone: bool, config: &Config) {
        let member = reg.meta.get(META_MEMBER).map_or("?", String::as_str);
        let alive = match (all_gone, Member::parse(member)) {
            (false, Ok(m)) => !self
                .prober
                .alive(&[m], config.check.timeout, config.pushgateway_auth())
                .await
                .is_empty(),
            _ => false,
        };
        if alive {
            warn!(
                "registered {member} in Consul again as {}: it was deregistered (by hand?) while it is in \
                 pushgateway.servers and answers; consul-sync keeps every pushgateway in pushgateway.servers \
                 registered. To take one out, drain it (pushgateway.drain, then reload), stop it once drained, \
                 then remove it from pushgateway.servers and pushgateway.drain",
                reg.id
            );
        } else {
            info!(
                "registered {member} in Consul again as {}: Consul had dropped it (critical for longer than \
                 check.deregister_after, or an agent that lost its state); it rejoins the ring once its check passes",
                reg.id
            );
        }
    }
}

/// A service consul-sync registered for this service name that the configuration no longer keeps.
fn is_stale(id: &str, svc: &AgentService, config: &Config, kept: &BTreeSet<String>) -> bool {
    (svc.service == config.service_name || svc.service == config.standby_service_name())
        && svc.managed_by_us()
        && !kept.contains(id)
}

/// The registrations the configuration asks for: every server and standby, each under the
/// service of its role.
pub fn registrations(config: &Config, roles: &Roles) -> Vec<Registration> {
    let table = SlotTable::new(&config.standbys, roles);
    let standby_service = config.standby_service_name();
    config
        .servers
        .iter()
        .chain(config.standbys.values())
        .map(|m| {
            let service = match table.role(m) {
                Role::Active => &config.service_name,
                Role::Standby => &standby_service,
            };
            Registration::for_member(m, service, &config.check)
        })
        .collect()
}

/// The service ids the registrar never deregisters: the configured pushgateways' and the
/// draining ones' (a drain needs its pushgateway registered, so that it is read and scraped).
fn kept_ids(config: &Config) -> BTreeSet<String> {
    config
        .servers
        .iter()
        .chain(&config.drain)
        .chain(config.standbys.values())
        .map(|m| Registration::for_member(m, &config.service_name, &config.check).id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standbys_are_registered_under_their_own_service_until_promoted() {
        let text =
            "register_service_name: pg\npushgateway: {servers: ['a:1', 'b:1'], standbys: {'a:1': 's:1'}}\n";
        let (config, _) = Config::parse(text, "t.yml", |_| None, |p| Err(format!("{p:?}"))).unwrap();
        let names = |roles: &Roles| -> Vec<(String, String)> {
            registrations(&config, roles)
                .into_iter()
                .map(|r| (r.id, r.name))
                .collect()
        };
        let pair = |id: &str, name: &str| (id.to_owned(), name.to_owned());
        assert_eq!(
            names(&Roles::default()),
            [pair("a_1", "pg"), pair("b_1", "pg"), pair("s_1", "pg-standby")]
        );
        let a = Member::parse("a:1").unwrap();
        let promoted = Roles::default().with_active(&a, &Member::parse("s:1").unwrap());
        assert_eq!(
            names(&promoted),
            [pair("a_1", "pg-standby"), pair("b_1", "pg"), pair("s_1", "pg")]
        );
        assert!(kept_ids(&config).contains("s_1"));
    }

    #[test]
    fn a_pushgateway_moved_from_servers_to_drain_stays_registered() {
        let text = "pushgateway: {servers: [a:1], drain: [b:1]}\n";
        let (config, _) = Config::parse(text, "t.yml", |_| None, |p| Err(format!("{p:?}"))).unwrap();
        let wanted: Vec<String> = registrations(&config, &Roles::default())
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(wanted, ["a_1"], "only servers are registered");
        let kept: Vec<String> = kept_ids(&config).into_iter().collect();
        assert_eq!(kept, ["a_1", "b_1"], "the draining one is not deregistered");
    }
}
