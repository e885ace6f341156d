//! The push side as users run it, for the scraping tests: Consul, pushgateways that consul-sync
//! registers there, and Envoy in proxy mode sharding the pushes over them; plus bulk pushes of
//! numbered groups and the check that a store holds each of them once with its value.

use crate::envoy::{Envoy, EnvoyOptions, TEST_TOKEN};
use crate::prometheus::Sample;
use crate::{
    consul_sync_bin, free_port, http_request, poll_for, try_http_get, wait_until, Consul, Proc, Pushgateway,
    TestDir,
};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long the stack may take to agree on its members.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Threads that push at once.
const PUSHERS: usize = 8;
/// The job label of every pushed group.
pub const JOB: &str = "scrape";

/// Consul, `n` pushgateways registered in it by consul-sync under the service `pushgateway`,
/// Envoy sharding over them, and optionally a standby for some of them (registered under
/// `pushgateway-standby`, written by the filter with every push). Fields drop in order:
/// processes first.
pub struct Pipeline {
    pub sync: Proc,
    pub sync_port: u16,
    pub envoy: Envoy,
    pub pgs: Vec<Pushgateway>,
    /// The standby of `pgs[i]` for the first `standbys.len()` servers.
    pub standbys: Vec<Pushgateway>,
    pub consul: Consul,
}

impl Pipeline {
    /// Starts it and waits until Consul says every pushgateway passes, Envoy routes to all of them
    /// and consul-sync's HTTP discovery lists them. The pushgateways run with
    /// `--push.disable-consistency-check`: the tests push thousands of groups of one metric.
    pub fn start(dir: &TestDir, n: usize) -> Pipeline {
        Pipeline::start_with_standbys(dir, n, 0)
    }

    /// [`Pipeline::start`], with a standby for each of the first `k` servers; also waits until
    /// Envoy writes to every standby.
    pub fn start_with_standbys(dir: &TestDir, n: usize, k: usize) -> Pipeline {
        assert!(k <= n, "{k} standbys for {n} servers");
        let pgs: Vec<Pushgateway> = (0..n).map(|_| Pushgateway::start_unchecked(dir)).collect();
        let standbys: Vec<Pushgateway> = (0..k).map(|_| Pushgateway::start_unchecked(dir)).collect();
        let standby_map: String = pgs
            .iter()
            .zip(&standbys)
            .map(|(p, s)| format!("\n    '{}': '{}'", p.addr(), s.addr()))
            .collect();
        let standbys_yaml = if k == 0 {
            String::new()
        } else {
            format!("\n  standbys:{standby_map}")
        };
        let consul = Consul::start(dir);
        let envoy = Envoy::start(dir, EnvoyOptions::default());
        let sync_port = free_port();
        let token = dir.write("control-token", TEST_TOKEN);
        let servers: String = pgs.iter().map(|p| format!("\n    - '{}'", p.addr())).collect();
        let config = dir.write(
            &format!("consul-sync-{sync_port}.yml"),
            format!(
                "consul_server:\n  addr: {}\nregister_service_name: pushgateway\npushgateway:\n  servers:{servers}{standbys_yaml}\n  drain: []\n\
                 http_listen_addr: 127.0.0.1:{sync_port}\ncheck:\n  interval: 1s\n  timeout: 1s\n  deregister_after: 10m\n\
                 envoy:\n  control_urls:\n    - {}\n  token_file: {}\nresync_interval: 2s\nreconcile_interval: 30s\ndrain_timeout: 1h\n",
                consul.addr(),
                envoy.control_url(),
                token.display()
            ),
        );
        let mut cmd = Command::new(consul_sync_bin());
        cmd.arg(format!("--config.file={}", config.display()))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        let mut sync = Proc::spawn(&format!("consul-sync-{sync_port}"), cmd, dir);
        let mut want: Vec<String> = pgs.iter().map(Pushgateway::addr).collect();
        want.sort();
        let targets = format!("http://127.0.0.1:{sync_port}/prometheus/targets");
        wait_until(
            "consul-sync lists every pushgateway to Envoy and to discovery",
            SETTLE_TIMEOUT,
            || {
                assert!(sync.is_running(), "consul-sync exited:\n{}", sync.log_tail(30));
                let (_, mut members) = envoy.try_members().ok()?;
                members.sort();
                let (status, body) = try_http_get(&targets).ok()?;
                let listed = status == 200 && want.iter().all(|a| body.contains(&format!("\"{a}\"")));
                let slots = slot_standbys(&envoy);
                let protected = pgs
                    .iter()
                    .zip(&standbys)
                    .all(|(p, s)| slots.get(&p.addr()) == Some(&s.addr()));
                (members == want && listed && protected && consul.passing_ids("pushgateway").len() == n)
                    .then_some(())
            },
        );
        Pipeline {
            sync,
            sync_port,
            envoy,
            pgs,
            standbys,
            consul,
        }
    }

    /// Panics unless every standby holds the groups its active holds (so a scraper that scraped
    /// standbys would see every such group twice).
    pub fn assert_standbys_hold_their_actives_groups(&self) {
        for (active, standby) in self.pgs.iter().zip(&self.standbys) {
            let mut on_active = active.groups();
            let mut on_standby = standby.groups();
            on_active.sort();
            on_standby.sort();
            assert!(!on_active.is_empty(), "{} holds no group", active.addr());
            assert_eq!(
                on_active.len(),
                on_standby.len(),
                "standby {} of {}: not every push reached it",
                standby.addr(),
                active.addr()
            );
            assert_eq!(on_active, on_standby);
        }
    }

    /// consul-sync's address, where its HTTP discovery (`/prometheus/targets`) and `/metrics` are.
    pub fn sync_addr(&self) -> String {
        format!("127.0.0.1:{}", self.sync_port)
    }

    /// [`push_groups`] through this stack's Envoy.
    pub fn push(&self, metric: &str, groups: usize, value: impl Fn(usize) -> f64 + Sync) {
        push_groups(&self.envoy.proxy_url(), metric, groups, value);
    }
}

/// Each slot's standby as Envoy's member list names it (slot name -> standby address).
fn slot_standbys(envoy: &Envoy) -> BTreeMap<String, String> {
    envoy
        .try_slots()
        .into_iter()
        .flatten()
        .filter_map(|(slot, (_, standby))| Some((slot, standby?)))
        .collect()
}

/// Pushes groups `g0` to `g<groups-1>` of job [`JOB`] through Envoy's proxy mode at `base`, each
/// with one sample `<metric> <value(i)>`, from several threads; panics on any refused push.
pub fn push_groups(base: &str, metric: &str, groups: usize, value: impl Fn(usize) -> f64 + Sync) {
    std::thread::scope(|s| {
        for t in 0..PUSHERS {
            let value = &value;
            s.spawn(move || {
                for i in (t..groups).step_by(PUSHERS) {
                    let url = format!("{base}/metrics/job/{JOB}/group/g{i}");
                    let body = format!("{metric} {}\n", value(i));
                    let r = http_request("PUT", &url, &[], body.as_bytes());
                    assert!(
                        r.status == 200 || r.status == 202,
                        "push of g{i}: {} {}",
                        r.status,
                        r.body
                    );
                }
            });
        }
    });
}

/// `Ok` when `series` (an instant query of one metric) holds each group `g0` to `g<groups-1>`
/// exactly once with `value(i)` and nothing else; else what differs (counts and a few examples).
pub fn check_groups(series: &[Sample], groups: usize, value: impl Fn(usize) -> f64) -> Result<(), String> {
    let mut seen: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut foreign = Vec::new();
    for (labels, v) in series {
        let group = labels.get("group").and_then(|g| g.as_str()).unwrap_or_default();
        match group.strip_prefix('g').and_then(|n| n.parse::<usize>().ok()) {
            Some(i) if i < groups && labels.get("job").and_then(|j| j.as_str()) == Some(JOB) => {
                seen.entry(i).or_default().push(*v)
            }
            _ => foreign.push(labels.clone()),
        }
    }
    let missing: Vec<usize> = (0..groups).filter(|i| !seen.contains_key(i)).collect();
    let twice: Vec<(&usize, &Vec<f64>)> = seen.iter().filter(|(_, v)| v.len() > 1).collect();
    let wrong: Vec<(&usize, &Vec<f64>)> = seen
        .iter()
        .filter(|(i, v)| v.len() == 1 && v[0] != value(**i))
        .collect();
    if missing.is_empty() && twice.is_empty() && wrong.is_empty() && foreign.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} series for {groups} groups: {} missing (e.g. {:?}), {} more than once (e.g. {:?}), \
         {} with another value (e.g. {:?}), {} not pushed (e.g. {:?})",
        series.len(),
        missing.len(),
        missing.iter().take(3).collect::<Vec<_>>(),
        twice.len(),
        twice.iter().take(3).collect::<Vec<_>>(),
        wrong.len(),
        wrong
            .iter()
            .take(3)
            .map(|(i, v)| (i, v, value(**i)))
            .collect::<Vec<_>>(),
        foreign.len(),
        foreign.iter().take(2).collect::<Vec<_>>(),
    ))
}

/// Polls `query` (an instant query of one metric in `store`) until [`check_groups`] passes, for
/// at most `within`; returns how long that took, or panics with what still differs.
pub fn wait_groups(
    store: &str,
    within: Duration,
    groups: usize,
    value: impl Fn(usize) -> f64,
    mut query: impl FnMut() -> Vec<Sample>,
) -> Duration {
    let start = Instant::now();
    let mut last = Err(String::new());
    let ok = poll_for(within, || {
        last = check_groups(&query(), groups, &value);
        last.is_ok().then_some(())
    });
    assert!(
        ok.is_some(),
        "{store} after {within:?}: {}",
        last.err().unwrap_or_default()
    );
    start.elapsed()
}
