//! "A pushgateway that dies loses no group", end to end and under load: three slots with standbys
//! (six pushgateways), Envoy, consul-sync with a 1 s check, and a pusher that pushes increasing
//! values without pause, in proxy mode and in redirect mode (the pusher follows the 307 itself,
//! over keep-alive). An active killed with SIGKILL while 2,000 groups are pushed, a killed one back
//! empty then the new active killed too (in proxy mode: the repair does not depend on the mode), a
//! frozen active (SIGSTOP until its standby is promoted), a
//! group deleted before the kill, a standby stopped and started: every group ends on exactly one
//! active, with the value of its last acknowledged push or a later one sent, and the push time of
//! the push that wrote that value (never the failover's). After the kills, a Prometheus that
//! discovers the actives in Consul as the shipped configuration does shows the same: every group
//! once, with such a value and push time; and each dead slot's groups are missing from its samples
//! only for a bounded gap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{sorted, ConsulSync, SyncOptions};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use testkit::envoy::{Envoy, EnvoyOptions};
use testkit::{poll_for, wait_until, Consul, Prometheus, Pushgateway, TestDir};

/// Groups the pusher cycles over when an active is killed.
const GROUPS: usize = 2000;
/// Threads of that pusher, so that the pushgateways' work overlaps (one thread waits on one
/// pushgateway at a time).
const PUSH_THREADS: usize = 4;
/// Full cycles over the groups before the first kill.
const CYCLES: usize = 2;
/// Groups of the pusher (one thread) while an active is frozen and a standby stopped.
const FROZEN_GROUPS: usize = 600;
/// A pusher pushes at most this long, whatever the test does.
const PUSHING: Duration = Duration::from_secs(240);
/// One cycle of a pusher over its groups takes at most this long.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `Prometheus::start` scrapes every second and refreshes Consul discovery every second.
const SCRAPE_INTERVAL: f64 = 1.0;
const SD_REFRESH: f64 = 1.0;
/// consul-sync's check interval.
const CHECK_INTERVAL: f64 = 1.0;
/// Prometheus hands discovery changes to its scrapers at most every 5 s (its discovery manager's
/// batching, fixed), so a promoted standby may wait that long for its first scrape.
const SD_BATCH: f64 = 5.0;
/// The longest a dead slot's group may be absent from Prometheus's samples: the active's last
/// scrape before the kill, the promotion, discovery, the standby's first scrape, and a margin.
const GAP_BOUND: f64 = 2.0 * SCRAPE_INTERVAL + CHECK_INTERVAL + SD_REFRESH + SD_BATCH + 2.0;
/// Groups pushed once, then deleted through Envoy before any kill.
const DELETED: usize = 20;
/// A pusher's request may take this long; a frozen pushgateway must not stall it for longer.
const PUSH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Proxy,
    Redirect,
}

/// One push the pusher sent: its group, its value (unique, increasing), when it was sent and
/// answered (Unix seconds), and whether a 2xx acknowledged it.
#[derive(Clone, Debug)]
struct Push {
    group: usize,
    value: u64,
    sent: f64,
    answered: f64,
    acked: bool,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(PUSH_TIMEOUT))
        .build()
        .into()
}

/// One request; `Err` when there was no answer.
fn request(agent: &ureq::Agent, method: &str, url: &str, body: &str) -> Result<(u16, String), String> {
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .body(body.as_bytes().to_vec())
        .map_err(|e| e.to_string())?;
    let mut resp = agent.run(req).map_err(|e| format!("{method} {url}: {e}"))?;
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // Read the body so that the connection goes back to the pool.
    let _ = resp.body_mut().read_to_vec();
    Ok((status, location))
}

/// A write as a client of `mode` does it: in redirect mode the 307 is followed by hand, method
/// and body kept. Returns the final status, or `Err` when some request got no answer.
fn write(
    agent: &ureq::Agent,
    mode: Mode,
    envoy: &Envoy,
    method: &str,
    path: &str,
    body: &str,
) -> Result<u16, String> {
    match mode {
        Mode::Proxy => request(agent, method, &format!("{}{path}", envoy.proxy_url()), body).map(|r| r.0),
        Mode::Redirect => {
            let (status, location) =
                request(agent, method, &format!("{}{path}", envoy.redirect_url()), body)?;
            if status != 307 {
                return Ok(status);
            }
            request(agent, method, &location, body).map(|r| r.0)
        }
    }
}

fn group_path(i: usize) -> String {
    format!("/metrics/job/fo{i}")
}

/// Threads that push `fo_value <n>` to the groups `fo0`..`fo<groups-1>` in turn (thread `t` the
/// groups `t`, `t + threads`, ...), `n` counting up across all pushes, and record every push.
struct Pusher {
    groups: usize,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Push>>>,
    handles: Vec<JoinHandle<()>>,
}

impl Pusher {
    fn start(mode: Mode, envoy: &Envoy, groups: usize, threads: usize) -> Pusher {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (proxy, redirect) = (envoy.proxy_url(), envoy.redirect_url());
        let handles = (0..threads)
            .map(|t| {
                let (stop, log) = (stop.clone(), log.clone());
                let (proxy, redirect) = (proxy.clone(), redirect.clone());
                std::thread::spawn(move || {
                    let agent = agent();
                    static NEXT: AtomicU64 = AtomicU64::new(1);
                    // Bounded in time, whatever the test does.
                    let deadline = Instant::now() + PUSHING;
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let value = NEXT.fetch_add(1, Ordering::Relaxed);
                        let body = format!("fo_value {value}\n");
                        let path = group_path(i);
                        let sent = unix_now();
                        let status = match mode {
                            Mode::Proxy => {
                                request(&agent, "PUT", &format!("{proxy}{path}"), &body).map(|r| r.0)
                            }
                            Mode::Redirect => {
                                match request(&agent, "PUT", &format!("{redirect}{path}"), &body) {
                                    Ok((307, location)) => {
                                        request(&agent, "PUT", &location, &body).map(|r| r.0)
                                    }
                                    other => other.map(|r| r.0),
                                }
                            }
                        };
                        let acked = matches!(status, Ok(s) if (200..300).contains(&s));
                        log.lock().unwrap().push(Push {
                            group: i,
                            value,
                            sent,
                            answered: unix_now(),
                            acked,
                        });
                        if !acked {
                            // A failed push is retried at the next cycle; do not spin on refusals.
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        i += threads;
                        if i >= groups {
                            i = t;
                        }
                    }
                })
            })
            .collect();
        Pusher {
            groups,
            stop,
            log,
            handles,
        }
    }

    fn log(&self) -> MutexGuard<'_, Vec<Push>> {
        self.log.lock().unwrap()
    }

    /// Waits until every group has an acknowledged push sent after `since` (Unix seconds).
    fn wait_full_cycle(&self, what: &str, since: f64) {
        wait_until(what, CYCLE_TIMEOUT, || {
            let log = self.log();
            let mut seen = vec![false; self.groups];
            for p in log.iter().filter(|p| p.acked && p.sent >= since) {
                seen[p.group] = true;
            }
            seen.iter().all(|s| *s).then_some(())
        });
    }

    fn stop(&mut self) -> Vec<Push> {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            h.join().unwrap();
        }
        self.log().clone()
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// One failover: when the active was killed, the groups it held, and what the pusher saw.
#[derive(Clone, Debug)]
struct Failover {
    killed_at: f64,
    groups: Vec<usize>,
    /// From the kill until Envoy serves the slot at its standby.
    promoted: Duration,
    /// Pushes that got no 2xx between the kill and the first push of the slot acknowledged after it.
    failed: usize,
    /// From the kill to the first acknowledged push of one of the dead active's groups.
    first_served: Duration,
}

/// `(failed, first_served)` of a failover at `killed_at` of the slot holding `slot_groups`.
fn failover_figures(log: &[Push], killed_at: f64, slot_groups: &[usize]) -> (usize, Duration) {
    let first = log
        .iter()
        .filter(|p| p.sent >= killed_at && p.acked && slot_groups.contains(&p.group))
        .map(|p| p.answered)
        .fold(f64::INFINITY, f64::min);
    assert!(
        first.is_finite(),
        "no push of the dead active's groups was acknowledged after the kill"
    );
    let failed = log
        .iter()
        .filter(|p| p.sent >= killed_at - 0.1 && p.answered <= first && !p.acked)
        .count();
    (failed, Duration::from_secs_f64(first - killed_at))
}

type Slots = BTreeMap<String, (String, Option<String>)>;

/// Envoy's slots: name -> (active, standby).
fn envoy_slots(envoy: &Envoy) -> Option<BTreeMap<String, (String, Option<String>)>> {
    envoy.try_slots()
}

fn slot(active: &str, standby: Option<&str>) -> (String, Option<String>) {
    (active.to_owned(), standby.map(str::to_owned))
}

/// The Consul service ID of a pushgateway address.
fn id(addr: &str) -> String {
    addr.replace(':', "_")
}

/// What a pushgateway holds of `fo*` groups: job -> (value of `fo_value`, push time).
fn holdings(pg: &Pushgateway) -> BTreeMap<String, (u64, f64)> {
    let mut out = BTreeMap::new();
    for g in pg.api_groups() {
        let job = g["labels"]["job"].as_str().unwrap_or_default().to_owned();
        let value = g["fo_value"]["metrics"][0]["value"]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64);
        let push = g["push_time_seconds"]["metrics"][0]["value"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if let Some(value) = value {
            out.insert(job, (value, push));
        }
    }
    out
}

/// The stack: six pushgateways (slot k is `pgs[2k]` with standby `pgs[2k+1]`), Consul, Envoy,
/// one consul-sync. Fields drop in order: processes first, the folder last.
struct Stack {
    prometheus: Option<Prometheus>,
    sync: ConsulSync,
    envoy: Envoy,
    consul: Consul,
    pgs: Vec<Pushgateway>,
    dir: TestDir,
}

impl Stack {
    /// With a Prometheus that scrapes the actives as the shipped configuration does when
    /// `prometheus`.
    fn start(name: &str, prometheus: bool) -> Stack {
        let dir = TestDir::new(name);
        let pgs: Vec<Pushgateway> = (0..6).map(|_| Pushgateway::start(&dir)).collect();
        let consul = Consul::start(&dir);
        let envoy = Envoy::start(&dir, EnvoyOptions::default());
        let servers: Vec<String> = (0..3).map(|k| pgs[2 * k].addr()).collect();
        let mut options = SyncOptions::new(consul.addr(), servers);
        options.standbys = (0..3)
            .map(|k| (pgs[2 * k].addr(), pgs[2 * k + 1].addr()))
            .collect();
        options.control_urls = vec![envoy.control_url()];
        options.reconcile = "2s";
        let sync = ConsulSync::start(&dir, options);
        let prometheus = prometheus.then(|| Prometheus::start(&dir, &consul.addr(), "pushgateway"));
        let stack = Stack {
            prometheus,
            sync,
            envoy,
            consul,
            pgs,
            dir,
        };
        let want: Slots = (0..3)
            .map(|k| {
                let (a, s) = (stack.pgs[2 * k].addr(), stack.pgs[2 * k + 1].addr());
                (a.clone(), slot(&a, Some(&s)))
            })
            .collect();
        wait_until(
            "Envoy has three slots with their standbys",
            Duration::from_secs(20),
            || (envoy_slots(&stack.envoy)? == want).then_some(()),
        );
        stack
    }

    fn addr(&self, i: usize) -> String {
        self.pgs[i].addr()
    }

    /// Envoy's slots, each of the three by name: one served at its name without a standby in
    /// the list (its standby down) is not listed by Envoy as a slot, only as a member.
    fn slots(&self) -> Option<Slots> {
        let mut slots = envoy_slots(&self.envoy)?;
        for k in 0..3 {
            let name = self.addr(2 * k);
            slots.entry(name.clone()).or_insert_with(|| slot(&name, None));
        }
        Some(slots)
    }

    fn index_of(&self, addr: &str) -> usize {
        self.pgs.iter().position(|p| p.addr() == addr).unwrap()
    }

    /// The actives Envoy names, as indexes into `pgs`, one per slot.
    fn actives(&self) -> Vec<usize> {
        let slots = self.slots().unwrap();
        assert_eq!(slots.len(), 3, "{slots:?}");
        slots.values().map(|(a, _)| self.index_of(a)).collect()
    }

    /// Waits until Envoy serves slot `name` at `active` with `standby`.
    fn wait_slot(&self, what: &str, name: &str, active: &str, standby: Option<&str>, timeout: Duration) {
        wait_until(what, timeout, || {
            (self.slots()?.get(name)? == &slot(active, standby)).then_some(())
        });
    }

    /// Every group is on exactly one active, with the value of its last acknowledged push or a
    /// later one sent, and the push time of the push that sent that value; no deleted group is
    /// back. Consul's pushgateway service names the same actives as Envoy.
    fn assert_nothing_lost(&self, log: &[Push], groups: usize, deleted: &[String]) {
        let actives = self.actives();
        let consul_ids = self.consul.passing_ids("pushgateway");
        assert_eq!(
            consul_ids,
            sorted(actives.iter().map(|i| id(&self.addr(*i))).collect()),
            "Consul and Envoy name the same actives"
        );
        let mut copies: BTreeMap<String, Vec<(usize, u64, f64)>> = BTreeMap::new();
        for i in &actives {
            for (job, (value, push)) in holdings(&self.pgs[*i]) {
                copies.entry(job).or_default().push((*i, value, push));
            }
        }
        let by_value: BTreeMap<u64, &Push> = log.iter().map(|p| (p.value, p)).collect();
        let last_acked = last_acked(log, groups);
        let mut problems = Vec::new();
        for (g, &acked) in last_acked.iter().enumerate() {
            let job = format!("fo{g}");
            match copies.get(&job).map(Vec::as_slice) {
                None | Some([]) => problems.push(format!("{job}: on no active (last acked {})", acked)),
                Some([(pg, value, push)]) => {
                    if let Err(e) = check_copy(&by_value, g, acked, *value, *push) {
                        problems.push(format!("{job} on {pg}: {e}"));
                    }
                }
                Some(many) => problems.push(format!(
                    "{job}: {} copies among the actives: {many:?}",
                    many.len()
                )),
            }
        }
        for job in deleted {
            if copies.contains_key(job) {
                problems.push(format!(
                    "{job}: deleted before the kill, back on {:?}",
                    copies[job]
                ));
            }
        }
        assert!(
            problems.is_empty(),
            "{} problems, first ones:\n{}",
            problems.len(),
            problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        );
    }
}

/// The highest acknowledged value of each group `0..groups` (0 for none).
fn last_acked(log: &[Push], groups: usize) -> Vec<u64> {
    let mut last = vec![0u64; groups];
    for p in log.iter().filter(|p| p.acked) {
        last[p.group] = last[p.group].max(p.value);
    }
    last
}

/// `Ok` when the copy of group `g` that a reader shows, `value` pushed at `push` (pushgateway's
/// `push_time_seconds`), is no older than the last acknowledged push `acked`, was sent to `g`, and
/// carries the push time of the push that sent it.
fn check_copy(
    by_value: &BTreeMap<u64, &Push>,
    g: usize,
    acked: u64,
    value: u64,
    push: f64,
) -> Result<(), String> {
    if value < acked {
        return Err(format!("{value}, older than the acked {acked}"));
    }
    match by_value.get(&value) {
        // pushgateway stamps on receipt; allow for clock reads around the call.
        Some(p) if p.group == g => {
            if push < p.sent - 0.5 || push > p.answered + 0.5 {
                Err(format!(
                    "push time {push:.3}, but the push of {value} ran {:.3}..{:.3}",
                    p.sent, p.answered
                ))
            } else {
                Ok(())
            }
        }
        _ => Err(format!("value {value} was never sent to it")),
    }
}

/// The groups `standby` holds with an older value than `active`'s, stamped after `active`'s.
fn stale(standby: &Pushgateway, active: &Pushgateway) -> usize {
    let on_active = holdings(active);
    holdings(standby)
        .iter()
        .filter(|(j, (v, push))| on_active.get(*j).is_some_and(|(w, at)| v < w && push > at))
        .count()
}

/// Pushes `DELETED` groups of the slot of `pgs[active]` once, then deletes them through Envoy;
/// returns their jobs.
fn push_then_delete(stack: &Stack, mode: Mode, active: usize) -> Vec<String> {
    let agent = agent();
    let mut jobs = Vec::new();
    for i in 0..DELETED * 6 {
        let path = format!("/metrics/job/fodel{i}");
        let status = write(&agent, mode, &stack.envoy, "PUT", &path, "fo_value 1\n").unwrap();
        assert_eq!(status, 200, "{path}");
    }
    let on_active: Vec<String> = holdings(&stack.pgs[active])
        .into_keys()
        .filter(|j| j.starts_with("fodel"))
        .take(DELETED)
        .collect();
    assert!(!on_active.is_empty());
    for job in &on_active {
        let status = write(
            &agent,
            mode,
            &stack.envoy,
            "DELETE",
            &format!("/metrics/job/{job}"),
            "",
        )
        .unwrap();
        assert_eq!(status, 202, "DELETE {job}");
        jobs.push(job.clone());
    }
    for pg in &stack.pgs {
        let held = holdings(pg);
        assert!(
            jobs.iter().all(|j| !held.contains_key(j)),
            "a deleted group is still on {}",
            pg.addr()
        );
    }
    jobs
}

/// Kills `pgs[victim]` (an active) with SIGKILL under load, waits for its standby to serve the
/// slot, and returns the figures.
fn kill_active(
    stack: &mut Stack,
    pusher: &Pusher,
    slot_name: &str,
    victim: usize,
    standby: usize,
) -> Failover {
    let groups: Vec<usize> = holdings(&stack.pgs[victim])
        .into_keys()
        .filter_map(|j| j.strip_prefix("fo").and_then(|n| n.parse().ok()))
        .collect();
    assert!(
        groups.len() > GROUPS / 10,
        "{} groups on the victim",
        groups.len()
    );
    let killed_at = unix_now();
    stack.pgs[victim].proc.kill();
    let standby_addr = stack.addr(standby);
    stack.wait_slot(
        "Envoy serves the slot at its standby",
        slot_name,
        &standby_addr,
        None,
        Duration::from_secs(10),
    );
    let promoted = Duration::from_secs_f64(unix_now() - killed_at);
    wait_until(
        "a push of the dead active's groups is acknowledged",
        Duration::from_secs(10),
        || {
            pusher
                .log()
                .iter()
                .any(|p| p.sent >= killed_at && p.acked && groups.contains(&p.group))
                .then_some(())
        },
    );
    let (failed, first_served) = failover_figures(&pusher.log(), killed_at, &groups);
    eprintln!(
        "promoted (seen in Envoy) {promoted:?} after the kill; first push of the slot served {first_served:?} \
         after it; {failed} pushes failed meanwhile"
    );
    assert!(
        first_served < Duration::from_secs(5),
        "the slot was served again only {first_served:?} after the kill"
    );
    assert!(
        promoted < Duration::from_secs(5),
        "the promotion took {promoted:?}"
    );
    Failover {
        killed_at,
        groups,
        promoted,
        failed,
        first_served,
    }
}

/// One group in Prometheus: its series' values of `fo_value`, of `push_time_seconds`, and the
/// pushgateways the former come from.
#[derive(Default)]
struct Shown {
    values: Vec<f64>,
    pushes: Vec<f64>,
    pgs: Vec<String>,
}

/// What Prometheus shows once the pusher has stopped, the last failover's standby promoted:
/// waits (bounded) until it scrapes exactly the actives, then until every group is there once,
/// with a value no older than its last acknowledged push, one its pusher sent it, and the push
/// time of that push; panics with what differs.
fn assert_in_prometheus(stack: &Stack, log: &[Push], groups: usize) {
    let prometheus = stack.prometheus.as_ref().unwrap();
    let actives = sorted(stack.actives().iter().map(|i| stack.addr(*i)).collect());
    wait_until(
        "Prometheus scrapes exactly the actives",
        Duration::from_secs(30),
        || (prometheus.up_targets() == actives).then_some(()),
    );
    let by_value: BTreeMap<u64, &Push> = log.iter().map(|p| (p.value, p)).collect();
    let last_acked = last_acked(log, groups);
    let mut problems = Vec::new();
    let shown = poll_for(Duration::from_secs(20), || {
        // One query, so that a group's value and push time come from one scrape.
        let series = prometheus.query(r#"{__name__=~"fo_value|push_time_seconds",job=~"fo[0-9]+"}"#);
        let mut by_group: BTreeMap<usize, Shown> = BTreeMap::new();
        for (labels, v) in &series {
            let label = |n: &str| labels.get(n).and_then(|l| l.as_str()).unwrap_or_default();
            let Some(g) = label("job")
                .strip_prefix("fo")
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            let entry = by_group.entry(g).or_default();
            if label("__name__") == "fo_value" {
                entry.values.push(*v);
                entry.pgs.push(label("pushgateway").to_owned());
            } else {
                entry.pushes.push(*v);
            }
        }
        problems.clear();
        for (g, &acked) in last_acked.iter().enumerate() {
            match by_group.get(&g) {
                None => problems.push(format!("fo{g}: not in Prometheus (last acked {acked})")),
                Some(Shown { values, pushes, pgs }) => match (values.as_slice(), pushes.as_slice()) {
                    ([value], [push]) => {
                        if let Err(e) = check_copy(&by_value, g, acked, *value as u64, *push) {
                            problems.push(format!("fo{g} from {}: {e}", pgs[0]));
                        }
                    }
                    _ => problems.push(format!(
                        "fo{g}: {} series of fo_value (from {pgs:?}), {} of push_time_seconds",
                        values.len(),
                        pushes.len()
                    )),
                },
            }
        }
        if by_group.len() > groups {
            problems.push(format!("{} groups in Prometheus", by_group.len()));
        }
        if problems.is_empty() {
            return Some(by_group.len());
        }
        std::thread::sleep(Duration::from_millis(500));
        None
    });
    assert!(
        shown == Some(groups),
        "Prometheus: {} problems, first ones:\n{}",
        problems.len(),
        problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// The gap each of the dead active's groups has in Prometheus at a failover: its last sample
/// before the kill and its first one after, from any pushgateway (the promoted standby is another
/// target, so its series has another `pushgateway` label), in seconds after the kill, sorted by
/// the interval between them.
fn prometheus_gaps(stack: &Stack, failover: &Failover) -> Vec<(f64, f64)> {
    let prometheus = stack.prometheus.as_ref().unwrap();
    let mut samples: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for (labels, series) in prometheus.query_samples(r#"fo_value{job=~"fo[0-9]+"}[10m]"#) {
        let job = labels.get("job").and_then(|j| j.as_str()).unwrap_or_default();
        if let Some(g) = job.strip_prefix("fo").and_then(|n| n.parse::<usize>().ok()) {
            samples.entry(g).or_default().extend(series.iter().map(|s| s.0));
        }
    }
    let mut gaps = Vec::new();
    let mut problems = Vec::new();
    for g in &failover.groups {
        let mut times = samples.remove(g).unwrap_or_default();
        times.sort_by(f64::total_cmp);
        let before = times.iter().rev().find(|t| **t <= failover.killed_at);
        let after = times.iter().find(|t| **t > failover.killed_at);
        match (before, after) {
            (Some(b), Some(a)) => gaps.push((b - failover.killed_at, a - failover.killed_at)),
            _ => problems.push(format!(
                "fo{g}: sample before the kill {before:?}, after it {after:?}"
            )),
        }
    }
    assert!(problems.is_empty(), "{problems:?}");
    gaps.sort_by(|x, y| (x.1 - x.0).total_cmp(&(y.1 - y.0)));
    gaps
}

/// Scenarios 2 and 4, after slot a's active `pgs[0]` was killed: it comes back empty, is the
/// standby, is repaired, and its active `pgs[1]` is killed in turn.
fn kill_again(stack: &mut Stack, pusher: &Pusher, failovers: &mut Vec<Failover>) {
    let (a, a2) = (stack.addr(0), stack.addr(1));
    // 2. It comes back empty on its port: the standby, repaired to hold the active's groups.
    let port = stack.pgs[0].port;
    stack.pgs[0] = Pushgateway::start_on(&stack.dir, port);
    stack.wait_slot(
        "the former active is slot a's standby",
        &a,
        &a2,
        Some(&a),
        Duration::from_secs(15),
    );
    wait_until(
        "the repair fills the former active",
        Duration::from_secs(20),
        || {
            let want: Vec<String> = holdings(&stack.pgs[1]).into_keys().collect();
            (holdings(&stack.pgs[0]).into_keys().collect::<Vec<_>>() == want).then_some(())
        },
    );
    // The repair's copies carry the copy's push time: let every group be pushed again through
    // both before the next kill, as a job that keeps pushing would.
    pusher.wait_full_cycle("every group was pushed after the repair", unix_now());

    // And again: the new active dies; the repaired one serves the slot.
    failovers.push(kill_active(stack, pusher, &a, 1, 0));
    std::thread::sleep(Duration::from_secs(1));
}

/// Scenario 1 in one `mode`: kill -9 under load; a group deleted before the kill stays deleted.
/// With `again`, scenarios 2 and 4 too: the killed one back empty as standby and repaired, the new
/// active killed in turn. Checked on the pushgateways and in Prometheus.
fn kill_under_load(mode: Mode, again: bool) {
    let mut stack = Stack::start(&format!("failover-kill-{mode:?}"), true);
    let started = Instant::now();
    let a = stack.addr(0);
    let deleted = push_then_delete(&stack, mode, 0);
    let mut pusher = Pusher::start(mode, &stack.envoy, GROUPS, PUSH_THREADS);
    let pushing = Instant::now();
    for cycle in 0..CYCLES {
        pusher.wait_full_cycle(&format!("every group was pushed {} times", cycle + 1), unix_now());
    }
    let pushed = pusher.log().len();
    eprintln!(
        "{mode:?}: {pushed} pushes in {:?} before the kill ({:.0}/s)",
        pushing.elapsed(),
        pushed as f64 / pushing.elapsed().as_secs_f64()
    );

    // 1. The active of slot a dies.
    let mut failovers = vec![kill_active(&mut stack, &pusher, &a, 0, 1)];
    std::thread::sleep(Duration::from_secs(1));
    if again {
        kill_again(&mut stack, &pusher, &mut failovers);
    }
    let log = pusher.stop();
    stack.assert_nothing_lost(&log, GROUPS, &deleted);
    assert_in_prometheus(&stack, &log, GROUPS);
    let pushes = log.len();
    let failed = log.iter().filter(|p| !p.acked).count();
    for (n, failover) in failovers.iter().enumerate() {
        let name = ["first", "second"][n];
        let gaps = prometheus_gaps(&stack, failover);
        let gap = |i: usize| gaps[i].1 - gaps[i].0;
        let (min, median, max) = (gap(0), gap(gaps.len() / 2), gap(gaps.len() - 1));
        eprintln!(
            "{mode:?}, {name} kill: {} pushes failed, promoted after {:.2} s, a dead-slot group served after \
             {:.2} s; gap in Prometheus over its {} groups: min {min:.2} s, median {median:.2} s, max {max:.2} s \
             (the shortest from {:.2} s to {:.2} s around the kill, the longest from {:.2} s to {:.2} s)",
            failover.failed,
            failover.promoted.as_secs_f64(),
            failover.first_served.as_secs_f64(),
            gaps.len(),
            gaps[0].0,
            gaps[0].1,
            gaps[gaps.len() - 1].0,
            gaps[gaps.len() - 1].1,
        );
        assert!(
            max <= GAP_BOUND,
            "{name} kill: a dead-slot group was absent from Prometheus for {max:.2} s (bound {GAP_BOUND} s)"
        );
    }
    eprintln!(
        "{mode:?}: {pushes} pushes, {failed} failed; {:?}",
        started.elapsed()
    );
    assert!(stack.sync.proc.is_running());
}

#[test]
fn a_killed_active_loses_no_group_in_proxy_mode() {
    let _serial = common::serial();
    kill_under_load(Mode::Proxy, true);
}

#[test]
fn a_killed_active_loses_no_group_in_redirect_mode() {
    let _serial = common::serial();
    kill_under_load(Mode::Redirect, false);
}

/// Scenarios 3 and 5, proxy mode: a frozen active is replaced without ever two actives of one
/// slot in Consul or Envoy, and is the repaired standby once it wakes; a stopped standby costs
/// the pushes nothing, and is repaired when it starts again.
#[test]
fn a_frozen_active_and_a_stopped_standby_lose_nothing() {
    let _serial = common::serial();
    let mut stack = Stack::start("failover-frozen", true);
    let (a, a2) = (stack.addr(0), stack.addr(1));
    let mut pusher = Pusher::start(Mode::Proxy, &stack.envoy, FROZEN_GROUPS, 1);
    pusher.wait_full_cycle("every group was pushed once", 0.0);

    // 3. Freeze the active of slot a until its standby is promoted.
    let frozen_at = unix_now();
    stack.pgs[0].proc.freeze();
    let both = [id(&a), id(&a2)];
    let check_one_active = |stack: &Stack| {
        let ids: Vec<String> = stack
            .consul
            .services("pushgateway")
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert!(
            !both.iter().all(|i| ids.contains(i)),
            "both addresses of slot a under the pushgateway service: {ids:?}"
        );
        let scraped = stack
            .prometheus
            .as_ref()
            .map(|p| p.scraped_targets())
            .unwrap_or_default();
        assert!(
            !(scraped.contains(&a) && scraped.contains(&a2)),
            "Prometheus scrapes both addresses of slot a: {scraped:?}"
        );
        if let Some(slots) = stack.slots() {
            assert_eq!(slots.len(), 3, "{slots:?}");
            for (name, (active, standby)) in &slots {
                assert_ne!(Some(active), standby.as_ref(), "slot {name}");
            }
        }
    };
    let rounds = || stack.sync.metric("consul_sync_reconcile_duration_seconds_count");
    let promoted_at = wait_until("slot a is served at its standby", Duration::from_secs(15), || {
        check_one_active(&stack);
        (envoy_slots(&stack.envoy)?.get(&a)? == &slot(&a2, None)).then(unix_now)
    });
    eprintln!(
        "frozen active: promoted (seen in Envoy) {:.2} s after SIGSTOP",
        promoted_at - frozen_at
    );
    // Frozen past the pusher's timeout: pushes Envoy handed to it are queued in its socket.
    for _ in 0..30 {
        check_one_active(&stack);
        std::thread::sleep(Duration::from_millis(100));
    }
    // The pushes stop before it wakes, more than the repair's lead (a second) before: the writes
    // it applies on waking are then newer than the active's copies by more than that, not the
    // same push, and none of its groups is pushed again to overwrite them.
    let log = pusher.stop();
    for _ in 0..15 {
        check_one_active(&stack);
        std::thread::sleep(Duration::from_millis(100));
    }
    stack.pgs[0].proc.thaw();
    let (woken, since) = (unix_now(), rounds());
    std::thread::sleep(Duration::from_millis(300));
    let stale_on_wake = stale(&stack.pgs[0], &stack.pgs[1]);
    wait_until(
        "the woken one is slot a's standby",
        Duration::from_secs(15),
        || {
            check_one_active(&stack);
            (envoy_slots(&stack.envoy)?.get(&a)? == &slot(&a2, Some(&a))).then_some(())
        },
    );
    for _ in 0..20 {
        check_one_active(&stack);
        std::thread::sleep(Duration::from_millis(100));
    }
    let after_promotion = log.iter().filter(|p| p.sent >= promoted_at && !p.acked).count();
    eprintln!(
        "frozen active: {} pushes failed in all, {after_promotion} of them sent after the promotion",
        log.iter().filter(|p| !p.acked).count()
    );
    stack.assert_nothing_lost(&log, FROZEN_GROUPS, &[]);
    assert_in_prometheus(&stack, &log, FROZEN_GROUPS);
    // The woken standby ends holding every group of its active with the active's value, the
    // writes Envoy had handed it while it was frozen (applied on waking, stamped then, newer than
    // the active's copies) included: the repair replaces those once they are older than its grace
    // (3 s), within a bounded number of rounds. Any difference left fails.
    let mut last = String::new();
    let ok = poll_for(Duration::from_secs(30), || {
        let want = holdings(&stack.pgs[1]);
        let got = holdings(&stack.pgs[0]);
        let missing: Vec<&String> = want.keys().filter(|j| !got.contains_key(*j)).collect();
        let extra: Vec<&String> = got.keys().filter(|j| !want.contains_key(*j)).collect();
        let differ: Vec<_> = want
            .iter()
            .filter_map(|(j, w)| Some((j, *got.get(j)?, *w)))
            .filter(|(_, g, w)| g.0 != w.0)
            .collect();
        last = format!(
            "missing {missing:?}, extra {extra:?}, differing (standby, active) {:?}",
            differ.iter().take(5).collect::<Vec<_>>()
        );
        (missing.is_empty() && extra.is_empty() && differ.is_empty()).then_some(())
    });
    let took = rounds() - since;
    assert!(
        ok.is_some(),
        "the woken standby does not hold what its active holds after {took} rounds: {last}"
    );
    // Rounds run every 2 s and at each list change (its publication among them): the grace (3 s)
    // is two of them, one more to copy, and margin for list changes.
    assert!(
        took <= 8.0,
        "the woken standby took {took} rounds to hold what its active holds"
    );
    eprintln!(
        "frozen active: {stale_on_wake} groups on the woken standby held an older value than the active's, \
         stamped on waking; all held the active's {took} rounds ({:.1} s) after it woke",
        unix_now() - woken
    );

    // 5. A standby stops (slot b's): pushes keep succeeding, none waits for a timeout.
    let (b, b2) = (stack.addr(2), stack.addr(3));
    let mut pusher = Pusher::start(Mode::Proxy, &stack.envoy, FROZEN_GROUPS, 1);
    pusher.wait_full_cycle("every group was pushed again", 0.0);
    let stopped_at = unix_now();
    stack.pgs[3].proc.kill();
    stack.wait_slot("slot b has no standby", &b, &b, None, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    {
        let log = pusher.log();
        let since: Vec<&Push> = log.iter().filter(|p| p.sent >= stopped_at).collect();
        let failed = since.iter().filter(|p| !p.acked).count();
        let slowest = since.iter().map(|p| p.answered - p.sent).fold(0.0, f64::max);
        eprintln!(
            "standby down: {} pushes, {failed} failed, slowest {slowest:.3} s",
            since.len()
        );
        assert_eq!(failed, 0, "pushes failed while a standby was down");
        assert!(
            slowest < 1.0,
            "a push took {slowest:.3} s while a standby was down"
        );
    }
    let port = stack.pgs[3].port;
    stack.pgs[3] = Pushgateway::start_on(&stack.dir, port);
    let restarted = Instant::now();
    stack.wait_slot(
        "slot b has its standby again",
        &b,
        &b,
        Some(&b2),
        Duration::from_secs(10),
    );
    let log = pusher.stop();
    wait_until(
        "the restarted standby holds what its active holds",
        Duration::from_secs(10),
        || {
            let want: BTreeMap<String, u64> = holdings(&stack.pgs[2])
                .into_iter()
                .map(|(j, (v, _))| (j, v))
                .collect();
            let got: BTreeMap<String, u64> = holdings(&stack.pgs[3])
                .into_iter()
                .map(|(j, (v, _))| (j, v))
                .collect();
            (got == want).then_some(())
        },
    );
    eprintln!("standby back: repaired {:?} after its start", restarted.elapsed());
    stack.assert_nothing_lost(&log, FROZEN_GROUPS, &[]);
    assert_in_prometheus(&stack, &log, FROZEN_GROUPS);
}
