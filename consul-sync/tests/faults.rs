//! The fault matrix: pushers push through both of Envoy's listeners at a steady rate (against
//! pushgateways with their default consistency check) while one fault happens, and each test
//! measures what users would see:
//!
//! - what the pushers saw, by kind (redirect: 307 then the owner's answer; proxy: the answer);
//! - the time from the fault until Envoy's member list is the set of live pushgateways (from then
//!   on every push goes to a live owner);
//! - pushes redirected to a pushgateway other than the owner after that (must be 0);
//! - groups lost from pushgateways that stayed up (must be 0);
//! - empty member lists in Envoy while a pushgateway was alive (must be 0).
//!
//! `./build.sh test` runs the short versions; `./build.sh faults` runs them with the durations of
//! the table in bench/README.md (`FAULTS_FULL=1`) and prints each row.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{serial, sorted, ConsulSync, Stack, SyncOptions};
use dynamic_sharding::grouping_key::GroupingKey;
use dynamic_sharding::members::MemberList;
use dynamic_sharding::ring::Ring;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::envoy::Envoy;
use testkit::{try_http_request, wait_until, Consul, Pushgateway};

const GROUPS_PER_PUSHER: usize = 40;
const PUSH_SPACING: Duration = Duration::from_millis(25);

fn full() -> bool {
    std::env::var_os("FAULTS_FULL").is_some_and(|v| v == "1")
}

/// `short` in `./build.sh test`, `long` in `./build.sh faults`.
fn secs(short: u64, long: u64) -> Duration {
    Duration::from_secs(if full() { long } else { short })
}

/// Envoy's member list over time (`None` while Envoy did not answer).
type Seen = Vec<(Instant, Option<Vec<String>>)>;

#[derive(Clone, Debug)]
struct Push {
    at: Instant,
    listener: &'static str,
    outcome: String,
    path: String,
    /// Redirect mode: the pushgateway the 307 named.
    owner: Option<String>,
    took: Duration,
}

/// Two pushers (redirect, proxy) and a recorder of Envoy's member list.
struct Load {
    stop: Arc<AtomicBool>,
    pushes: Arc<Mutex<Vec<Push>>>,
    lists: Arc<Mutex<Seen>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Load {
    /// A failed fault test stops its pushers and recorder too (the measurement stops them first).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Load {
    fn start(envoy: &Envoy) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let pushes: Arc<Mutex<Vec<Push>>> = Arc::default();
        let lists: Arc<Mutex<Seen>> = Arc::default();
        let mut threads = Vec::new();
        for (listener, base) in [("redirect", envoy.redirect_url()), ("proxy", envoy.proxy_url())] {
            let (stop, pushes) = (stop.clone(), pushes.clone());
            threads.push(std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(600);
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let path = format!("/metrics/job/fault/{listener}/g{}", n % GROUPS_PER_PUSHER);
                    let body = format!("fault_value {n}\n");
                    let at = Instant::now();
                    let (outcome, owner) = push(&base, &path, &body, listener == "redirect");
                    pushes.lock().unwrap().push(Push {
                        at,
                        listener,
                        outcome,
                        path,
                        owner,
                        took: at.elapsed(),
                    });
                    n += 1;
                    std::thread::sleep(PUSH_SPACING);
                }
            }));
        }
        {
            let (stop, lists, url) = (stop.clone(), lists.clone(), envoy.control_url());
            threads.push(std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(600);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let members = try_http_request("GET", &format!("{url}/-/sharding/members"), &[], b"")
                        .ok()
                        .filter(|r| r.status == 200)
                        .map(|r| {
                            sorted(
                                r.json()["members"]
                                    .as_array()
                                    .unwrap()
                                    .iter()
                                    .map(|m| m.as_str().unwrap().to_owned())
                                    .collect(),
                            )
                        });
                    lists.lock().unwrap().push((Instant::now(), members));
                    std::thread::sleep(Duration::from_millis(50));
                }
            }));
        }
        Load {
            stop,
            pushes,
            lists,
            threads,
        }
    }

    fn finish(mut self) -> (Vec<Push>, Seen) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        let pushes = self.pushes.lock().unwrap().clone();
        let lists = self.lists.lock().unwrap().clone();
        (pushes, lists)
    }
}

/// One push as a client does it; the outcome's kind and, in redirect mode, the owner named.
fn push(base: &str, path: &str, body: &str, follow: bool) -> (String, Option<String>) {
    let r = match try_http_request("PUT", &format!("{base}{path}"), &[], body.as_bytes()) {
        Ok(r) => r,
        Err(_) => return ("no answer from Envoy".to_owned(), None),
    };
    if !follow || r.status != 307 {
        return (
            match r.status {
                200 | 202 => "ok".to_owned(),
                s => format!("{s} from Envoy"),
            },
            None,
        );
    }
    let location = r.header("location").unwrap_or_default().to_owned();
    let owner = location
        .strip_prefix("http://")
        .and_then(|l| l.split('/').next())
        .map(str::to_owned);
    let outcome = match try_http_request("PUT", &location, &[], body.as_bytes()) {
        Ok(r) if r.status == 200 || r.status == 202 => "ok".to_owned(),
        Ok(r) => format!("{} from the owner", r.status),
        Err(_) => "owner unreachable".to_owned(),
    };
    (outcome, owner)
}

impl Stack {
    /// The stack with Envoy bootstrapped on the three, and one consul-sync.
    fn start(name: &str) -> Stack {
        let mut s = Stack::start_without_sync(name, true);
        let sync = ConsulSync::start(&s.dir, s.fault_options());
        s.syncs.push(sync);
        let all = s.all();
        wait_until(
            "Envoy has the three from consul-sync",
            Duration::from_secs(20),
            || (s.envoy.try_members().ok()?.0 > 0 && sorted(s.envoy.members().1) == all).then_some(()),
        );
        s
    }

    /// With a short reconcile interval, so that lost or duplicated groups show within the test.
    fn fault_options(&self) -> SyncOptions {
        let mut o = self.options();
        o.reconcile = "2s";
        o
    }

    /// Every group the given (running) pushgateways hold.
    fn groups_on(&self, idx: &[usize]) -> BTreeSet<BTreeMap<String, String>> {
        idx.iter().flat_map(|i| self.pgs[*i].groups()).collect()
    }
}

/// What one fault cost, as the table in bench/README.md shows it.
struct Report {
    fault: &'static str,
    errors: BTreeMap<String, usize>,
    pushes: usize,
    converge: Duration,
    slowest: Duration,
    non_owner: usize,
    lost: usize,
    empty_lists: usize,
}

impl Report {
    fn print_and_check(&self) {
        let errors: Vec<String> = self.errors.iter().map(|(k, n)| format!("{n} {k}")).collect();
        println!(
            "| {} | {} of {} ({}) | {:.0} ms | {:.1} s | {} | {} | {} |",
            self.fault,
            self.errors.values().sum::<usize>(),
            self.pushes,
            if errors.is_empty() {
                "none".to_owned()
            } else {
                errors.join(", ")
            },
            self.slowest.as_secs_f64() * 1000.0,
            self.converge.as_secs_f64(),
            self.non_owner,
            self.lost,
            self.empty_lists
        );
        assert_eq!(
            self.non_owner, 0,
            "{}: pushes to a non-owner after convergence",
            self.fault
        );
        assert_eq!(
            self.lost, 0,
            "{}: groups lost on pushgateways that stayed up",
            self.fault
        );
        assert_eq!(
            self.empty_lists, 0,
            "{}: an empty member list while a pushgateway lived",
            self.fault
        );
    }
}

/// Measures a fault: `live` is the set of live pushgateways from `changed` on (the last change
/// of the world); `survivors` are the pushgateways that stayed up throughout, whose groups
/// (`before`) must still exist somewhere at the end.
#[allow(clippy::too_many_arguments)]
fn measure(
    fault: &'static str,
    s: &Stack,
    load: Load,
    started: Instant,
    changed: Instant,
    live: &[String],
    before: &BTreeSet<BTreeMap<String, String>>,
    running: &[usize],
) -> Report {
    // Converged: Envoy lists exactly the live ones; then push on for a while.
    let converged_at = wait_until(
        "Envoy lists the live pushgateways",
        Duration::from_secs(90),
        || (sorted(s.envoy.try_members().ok()?.1) == live).then(Instant::now),
    );
    std::thread::sleep(secs(3, 10));
    let (pushes, lists) = load.finish();
    let converged_at = lists
        .iter()
        .filter(|(at, m)| *at >= changed && m.as_deref() == Some(live))
        .map(|(at, _)| *at)
        .next()
        .unwrap_or(converged_at);
    let ring = Ring::new(&MemberList::new(0, live).unwrap().members, 500);
    let margin = Duration::from_millis(200);
    let non_owner = pushes
        .iter()
        .filter(|p| p.at > converged_at + margin)
        .filter(|p| {
            p.owner.as_ref().is_some_and(|o| {
                let key = GroupingKey::from_path(&p.path).unwrap();
                ring.owner(key.hash()).map(|m| m.as_str()) != Some(o.as_str())
            })
        })
        .count();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for p in pushes.iter().filter(|p| p.at >= started && p.outcome != "ok") {
        *errors
            .entry(format!("{}: {}", p.listener, p.outcome))
            .or_default() += 1;
    }
    let empty_lists = lists
        .iter()
        .filter(|(_, m)| m.as_ref().is_some_and(Vec::is_empty))
        .count();
    // Give the reconciler two rounds, then every group the survivors held must still exist.
    std::thread::sleep(Duration::from_secs(4));
    let after = s.groups_on(running);
    let lost = before.iter().filter(|g| !after.contains(*g)).count();
    Report {
        fault,
        errors,
        pushes: pushes.iter().filter(|p| p.at >= started).count(),
        converge: converged_at.saturating_duration_since(changed),
        slowest: pushes
            .iter()
            .filter(|p| p.at >= started)
            .map(|p| p.took)
            .max()
            .unwrap_or_default(),
        non_owner,
        lost,
        empty_lists,
    }
}

/// One fault on a fresh stack under load: `prepare` sets the stack up before the load starts,
/// `inject` makes the fault and returns when the world last changed. `before_on` are the
/// pushgateways that stay up (their groups must survive), `live` the ones alive at the end.
/// Returns the stack, for checks after the measurement, and the report.
fn fault(
    name: &'static str,
    dir: &str,
    before_on: &[usize],
    live: &[usize],
    prepare: impl FnOnce(&mut Stack),
    inject: impl FnOnce(&mut Stack, Instant) -> Instant,
) -> (Stack, Report) {
    let mut s = Stack::start(dir);
    prepare(&mut s);
    let load = Load::start(&s.envoy);
    // Let the load put every group somewhere first.
    std::thread::sleep(Duration::from_secs(3));
    let before = s.groups_on(before_on);
    let started = Instant::now();
    let changed = inject(&mut s, started);
    let addrs = s.addrs(live);
    let report = measure(name, &s, load, started, changed, &addrs, &before, live);
    (s, report)
}

#[test]
fn fault_kill_9_of_a_pushgateway() {
    let _serial = serial();
    let (_s, report) = fault(
        "`kill -9` of a pushgateway",
        "fault-kill",
        &[1, 2],
        &[1, 2],
        |_| {},
        |s, t| {
            s.pgs[0].proc.kill();
            t
        },
    );
    report.print_and_check();
}

#[test]
fn fault_sigstop_of_a_pushgateway() {
    let _serial = serial();
    // Measured while it is frozen: its check times out and it leaves the list.
    let name = "`SIGSTOP` of a pushgateway (then `SIGCONT`)";
    let (mut s, report) = fault(
        name,
        "fault-stop",
        &[1, 2],
        &[1, 2],
        |_| {},
        |s, t| {
            s.pgs[0].proc.freeze();
            t
        },
    );
    s.pgs[0].proc.thaw();
    let all = s.addrs(&[0, 1, 2]);
    wait_until(
        "the thawed one is back in the list",
        Duration::from_secs(30),
        || (sorted(s.envoy.try_members().ok()?.1) == all).then_some(()),
    );
    report.print_and_check();
}

#[test]
fn fault_a_flapping_pushgateway() {
    let _serial = serial();
    let name = "a pushgateway flapping (down and up)";
    let (_s, report) = fault(
        name,
        "fault-flap",
        &[1, 2],
        &[0, 1, 2],
        |_| {},
        |s, started| {
            let port = s.pgs[0].port;
            let (period, total) = (secs(2, 3), secs(10, 60));
            while started.elapsed() < total {
                s.pgs[0].proc.kill();
                std::thread::sleep(period);
                s.pgs[0] = Pushgateway::start_on(&s.dir, port);
                std::thread::sleep(period);
            }
            Instant::now()
        },
    );
    report.print_and_check();
}

#[test]
fn fault_envoy_restarted() {
    let _serial = serial();
    // Its bootstrap members are the live ones, so it routes right as soon as it listens.
    let (s, report) = fault(
        "Envoy restarted",
        "fault-envoy",
        &[0, 1, 2],
        &[0, 1, 2],
        |_| {},
        |s, t| {
            let (ports, options) = (s.envoy.ports, s.envoy.options.clone());
            s.envoy.proc.stop();
            s.envoy = Envoy::start_on(&s.dir, options, ports);
            t
        },
    );
    // And consul-sync's next resync gives it the real list (a version above the bootstrap's 0).
    wait_until(
        "consul-sync heals the restarted Envoy",
        Duration::from_secs(30),
        || (s.envoy.try_members().ok()?.0 > 0).then_some(()),
    );
    report.print_and_check();
}

#[test]
fn fault_consul_sync_kill_9_and_started_again() {
    let _serial = serial();
    let name = "consul-sync `kill -9`, started again";
    let (_s, report) = fault(
        name,
        "fault-sync",
        &[0, 1, 2],
        &[0, 1, 2],
        |_| {},
        |s, t| {
            let mut old = s.syncs.remove(0);
            old.proc.kill();
            std::thread::sleep(Duration::from_secs(1));
            let sync = ConsulSync::start_on(&s.dir, s.fault_options(), old.http_port);
            wait_until("the new consul-sync is ready", Duration::from_secs(30), || {
                sync.ready().then_some(())
            });
            s.syncs.push(sync);
            t
        },
    );
    report.print_and_check();
}

#[test]
fn fault_consul_stopped() {
    let _serial = serial();
    let name = "Consul stopped, started again";
    let (_s, report) = fault(
        name,
        "fault-consul",
        &[0, 1, 2],
        &[0, 1, 2],
        |_| {},
        |s, _| {
            let ports = s.consul.ports;
            s.consul.stop();
            std::thread::sleep(secs(5, 20));
            s.consul = Consul::start_on(&s.dir, ports);
            Instant::now()
        },
    );
    report.print_and_check();
}

#[test]
fn fault_two_consul_syncs_with_clocks_60s_apart_the_one_ahead_dies() {
    let _serial = serial();
    let name = "two consul-syncs, clocks 60 s apart, the one ahead dies (then a pushgateway)";
    let mut ahead_version = 0;
    let prepare = |s: &mut Stack| {
        let ahead = ConsulSync::start_ahead(&s.dir, s.fault_options());
        ahead_version = wait_until(
            "Envoy holds the list of the one ahead",
            Duration::from_secs(30),
            || {
                let version = s.envoy.try_members().ok()?.0;
                (version > common::unix_millis() + 30_000).then_some(version)
            },
        );
        s.syncs.push(ahead);
    };
    let (s, report) = fault(name, "fault-clocks", &[1, 2], &[1, 2], prepare, |s, t| {
        s.syncs[1].proc.kill();
        // A change only the survivor can publish.
        s.pgs[0].proc.kill();
        t
    });
    report.print_and_check();
    // At once, not after the clocks' difference (versions are observation times).
    assert!(
        report.converge <= Duration::from_secs(5),
        "Envoy followed Consul only after {:?} (the dead writer's clock was 60 s ahead)",
        report.converge
    );
    assert!(
        s.envoy.members().0 > ahead_version,
        "the survivor's list carries a version above the dead writer's"
    );
}
