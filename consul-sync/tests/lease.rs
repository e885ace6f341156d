//! Two consul-syncs on one Consul: only the holder of the lease deletes, a frozen holder deletes
//! nothing once it wakes, and the other takes over when the holder dies or stops. With real Consul,
//! pushgateways and consul-syncs; the race is made on purpose with a fault-injection front (a tiny
//! proxy in this file) before one pushgateway, which holds one consul-sync's read there until
//! that consul-sync is frozen.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{serial, sorted, ConsulSync, SyncOptions};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use testkit::{free_port, wait_until, Consul, Pushgateway, TestDir};

/// Consul's least TTL, and a short lock delay, so a test waits about 2 × 10 s + 1 s for a takeover.
const LEASE: &str = "lease: {ttl: 10s, lock_delay: 1s}\n";
const TTL: Duration = Duration::from_secs(10);
const LOCK_DELAY: Duration = Duration::from_secs(1);

fn options(consul: &Consul, servers: Vec<String>) -> SyncOptions {
    let mut o = SyncOptions::new(consul.addr(), servers);
    o.reconcile = "2s";
    o.extra_yaml = LEASE.to_owned();
    o
}

fn is_leader(sync: &ConsulSync) -> bool {
    sync.metric("consul_sync_leader") == 1.0
}

/// `/-/lease` of `sync`.
fn lease(sync: &ConsulSync) -> serde_json::Value {
    testkit::http_request("GET", &sync.url("/-/lease"), &[], b"").json()
}

#[test]
fn one_of_two_holds_the_lease_and_the_other_takes_over_when_it_dies_or_stops() {
    let _serial = serial();
    let dir = TestDir::new("lease-takeover");
    let pg = Pushgateway::start(&dir);
    let consul = Consul::start(&dir);
    // Started together: exactly one gets the lease.
    let mut syncs = vec![
        ConsulSync::start(&dir, options(&consul, vec![pg.addr()])),
        ConsulSync::start(&dir, options(&consul, vec![pg.addr()])),
    ];
    let leader = wait_until("one holds the lease", Duration::from_secs(15), || {
        let leaders: Vec<usize> = (0..2).filter(|i| is_leader(&syncs[*i])).collect();
        (leaders.len() == 1).then(|| leaders[0])
    });
    let follower = 1 - leader;
    std::thread::sleep(Duration::from_secs(3));
    assert!(is_leader(&syncs[leader]) && !is_leader(&syncs[follower]));
    let (holder, session) = consul.kv("dynamic-sharding/pushgateway/lease").unwrap();
    assert!(session.is_some(), "the key is held by a session");
    let port = syncs[leader].http_port;
    assert!(holder.contains(&format!("127.0.0.1:{port}")), "{holder}");
    for s in &syncs {
        let l = lease(s);
        assert_eq!(l["holder"], holder.as_str(), "{l}");
        assert_eq!(l["key"], "dynamic-sharding/pushgateway/lease");
    }
    assert!(syncs[follower].proc.log().contains("is held by"));

    // Killed: its session expires (Consul 1.8 waits twice the TTL), then the lock delay.
    let killed_at = Instant::now();
    syncs[leader].proc.kill();
    wait_until("the follower takes over", Duration::from_secs(60), || {
        is_leader(&syncs[follower]).then_some(())
    });
    let took = killed_at.elapsed();
    eprintln!("the follower took over {took:?} after the holder was killed");
    assert!(
        took >= TTL && took <= TTL * 2 + LOCK_DELAY + TTL / 4 + Duration::from_secs(3),
        "took {took:?}"
    );

    // Stopped: its session is ended, and the other takes over after the lock delay.
    syncs[leader] = ConsulSync::start(&dir, options(&consul, vec![pg.addr()]));
    std::thread::sleep(Duration::from_secs(3));
    assert!(!is_leader(&syncs[leader]), "the holder keeps the lease");
    let stopped_at = Instant::now();
    let (_, clean) = syncs[follower].stop_timed();
    assert!(clean);
    wait_until("the restarted one takes over", Duration::from_secs(20), || {
        is_leader(&syncs[leader]).then_some(())
    });
    let took = stopped_at.elapsed();
    eprintln!("the other took over {took:?} after the holder was stopped");
    assert!(
        took <= LOCK_DELAY + TTL / 4 + Duration::from_secs(3),
        "took {took:?}"
    );
}

#[test]
fn a_holder_that_cannot_renew_stops_acting_within_half_the_ttl() {
    let _serial = serial();
    let dir = TestDir::new("lease-consul-down");
    let pg = Pushgateway::start(&dir);
    let mut consul = Consul::start(&dir);
    let sync = ConsulSync::start(&dir, options(&consul, vec![pg.addr()]));
    wait_until("it holds the lease", Duration::from_secs(15), || {
        is_leader(&sync).then_some(())
    });
    wait_until("the list is out", Duration::from_secs(15), || {
        (sync.targets() == Some(vec![pg.addr()])).then_some(())
    });
    let ports = consul.ports;
    let stopped_at = Instant::now();
    consul.stop();
    wait_until("it stops acting", Duration::from_secs(15), || {
        (!is_leader(&sync) && lease(&sync)["leader"] == false).then_some(())
    });
    let took = stopped_at.elapsed();
    eprintln!("stopped acting {took:?} after Consul went away");
    // Its last renewal was at most TTL/4 before; it acts until TTL/2 after it (and the metric
    // follows at the next renewal attempt).
    assert!(
        took <= TTL / 2 + TTL / 4 + Duration::from_secs(1),
        "took {took:?}"
    );
    // The member list stays served meanwhile.
    assert_eq!(sync.targets(), Some(vec![pg.addr()]));
    consul = Consul::start_on(&dir, ports);
    wait_until("it holds the lease again", Duration::from_secs(60), || {
        is_leader(&sync).then_some(())
    });
    drop(consul);
}

#[test]
fn a_holder_frozen_between_its_read_and_its_delete_deletes_nothing_when_it_wakes() {
    let _serial = serial();
    let dir = TestDir::new("lease-frozen");
    let a = Pushgateway::start(&dir);
    let b = Pushgateway::start(&dir);
    let front = Front::start(b.port);
    let consul = Consul::start(&dir);
    // B is reached through the front: its member address is the front's.
    let servers = sorted(vec![a.addr(), front.addr()]);
    let mut syncs = vec![ConsulSync::start(&dir, options(&consul, servers.clone()))];
    wait_until("the first holds the lease", Duration::from_secs(15), || {
        is_leader(&syncs[0]).then_some(())
    });
    syncs.push(ConsulSync::start(&dir, options(&consul, servers.clone())));
    wait_until("both have the list", Duration::from_secs(20), || {
        syncs
            .iter()
            .all(|s| s.targets() == Some(servers.clone()))
            .then_some(())
    });
    front.watch(syncs.iter().map(|s| s.proc.pid()).collect());

    // A copy on A, a newer one on B: the plan deletes A's.
    assert_eq!(a.push("/metrics/job/race", "race_value 1\n"), 200);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(b.push("/metrics/job/race", "race_value 2\n"), 200);
    // The consul-sync that rereads B right before deleting is held there, then frozen.
    let held = front.wait_held(Duration::from_secs(20));
    let (x, y) = if syncs[0].proc.pid() == held {
        (0, 1)
    } else {
        (1, 0)
    };
    syncs[x].proc.freeze();
    front.release();
    // A job pushes to A now: A's copy is the newest.
    assert_eq!(a.push("/metrics/job/race", "race_value 3\n"), 200);
    // The other consul-sync sees that and deletes B's older copy (once it may act).
    wait_until("B's older copy is deleted", Duration::from_secs(60), || {
        b.groups().is_empty().then_some(())
    });
    assert!(is_leader(&syncs[y]), "deleted by a consul-sync without the lease");
    syncs[x].proc.thaw();
    // Whatever the woken one still had planned, the newest copy stays.
    std::thread::sleep(Duration::from_secs(4));
    let job = testkit::pushgateway::labels(&[("job", "race")]);
    assert_eq!(
        a.metric_value(&job, "race_value"),
        Some(3.0),
        "the group is lost: the woken consul-sync deleted the newest copy"
    );
    assert!(!is_leader(&syncs[x]));
    assert!(
        syncs[x].proc.log().contains("lost the lease"),
        "{}",
        syncs[x].proc.log_tail(20)
    );
}

/// A fault-injection front before one pushgateway: it forwards everything, and can hold one
/// `GET /metrics` of a watched process that comes within 300 ms of that process's previous one
/// (the reconciler's second read, right before its deletes) until released.
struct Front {
    port: u16,
    state: Arc<(Mutex<FrontState>, Condvar)>,
}

#[derive(Default)]
struct FrontState {
    /// The processes whose reads may be held; empty: none.
    watched: Vec<u32>,
    last_read: HashMap<u32, Instant>,
    held: Option<u32>,
    released: bool,
}

impl Front {
    fn start(upstream: u16) -> Front {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let state: Arc<(Mutex<FrontState>, Condvar)> = Arc::default();
        let s = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || forward(client, port, upstream, &s));
            }
        });
        Front { port, state }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn watch(&self, pids: Vec<u32>) {
        self.state.0.lock().unwrap().watched = pids;
    }

    /// Waits until a read is held; the PID of the process whose read it is.
    fn wait_held(&self, timeout: Duration) -> u32 {
        let (lock, cv) = &*self.state;
        let guard = lock.lock().unwrap();
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |s| s.held.is_none())
            .unwrap();
        guard.held.expect("no reconciler reread B right before deleting")
    }

    fn release(&self) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap().released = true;
        cv.notify_all();
    }
}

/// Forwards one client connection to the upstream port, request by request (heads and
/// `Content-Length` bodies), holding a read as [`Front`] says; answers flow back untouched.
fn forward(client: TcpStream, port: u16, upstream: u16, state: &(Mutex<FrontState>, Condvar)) {
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (Ok(mut down), Ok(mut up_reader)) = (client.try_clone(), up.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_reader, &mut down);
        let _ = down.shutdown(std::net::Shutdown::Both);
    });
    let peer_port = client.peer_addr().map(|a| a.port()).unwrap_or(0);
    let mut reader = BufReader::new(client);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = up.shutdown(std::net::Shutdown::Write);
                    return;
                }
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if head.starts_with("GET /metrics ") {
            hold_if_second_read(peer_port, port, state);
        }
        if up.write_all(head.as_bytes()).is_err() || up.write_all(&body).is_err() {
            return;
        }
    }
}

/// Holds the caller while this read is a watched process's second within 300 ms, once.
fn hold_if_second_read(peer_port: u16, port: u16, state: &(Mutex<FrontState>, Condvar)) {
    let (lock, cv) = state;
    let watched = lock.lock().unwrap().watched.clone();
    let Some(pid) = pid_of_connection(peer_port, port, &watched) else {
        return;
    };
    let mut s = lock.lock().unwrap();
    let now = Instant::now();
    let previous = s.last_read.insert(pid, now);
    let second = previous.is_some_and(|p| now - p < Duration::from_millis(300));
    if !second || s.held.is_some() {
        return;
    }
    s.held = Some(pid);
    cv.notify_all();
    let _ = cv
        .wait_timeout_while(s, Duration::from_secs(120), |s| !s.released)
        .unwrap();
}

/// Which of `pids` owns the loopback connection from `peer_port` to `port` (from /proc).
fn pid_of_connection(peer_port: u16, port: u16, pids: &[u32]) -> Option<u32> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!(":{peer_port:04X}");
    let remote = format!(":{port:04X}");
    let inode = tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 9 && f[1].ends_with(&local) && f[2].ends_with(&remote)).then(|| f[9].to_owned())
    })?;
    let socket = format!("socket:[{inode}]");
    pids.iter().copied().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == socket))
    })
}
