//! Benchmark of the reconciler: round time, consul-sync CPU and memory with 10k and 100k groups
//! over 4 real pushgateways, and what reading the groups costs both ways pushgateway offers.
//!
//!   cargo run --release -p consul-sync --example reconcile_bench [GROUPS...]   (default 10000 100000)
//!
//! Run by `./build.sh bench` (and `./build.sh bench reconcile` alone). Needs `./build.sh` first
//! (target/release/consul-sync) and `./build.sh deps` (Consul, pushgateway).
//!
//! For each size: 4 pushgateways (`--push.disable-consistency-check`, so loading 100k groups takes
//! seconds, not hours; it does not change what a read costs), every group pushed to its owner on the
//! ring of the 4, a tenth of them with an older second copy on another pushgateway. Then
//! consul-sync starts (reconcile_interval 5s): its first round deletes the older copies, the
//! following rounds find nothing to do. Printed: the first round, the mean of 4 steady rounds,
//! consul-sync's CPU per steady round and its peak resident memory; and one read of all groups
//! through `GET /metrics` (push times only, streamed: what the reconciler does) against
//! `GET /api/v1/metrics` (every group with its metrics), with bytes, time, and the pushgateways'
//! CPU for each.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use consul_sync::reconcile::pushgateway::PushgatewayClient;
use dynamic_sharding::grouping_key::GroupingKey;
use dynamic_sharding::members::Member;
use dynamic_sharding::ring::Ring;
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::{bin, free_port, try_http_get, try_http_request, wait_until, Consul, Proc, TestDir};

const PUSHGATEWAYS: usize = 4;
const STEADY_ROUNDS: u64 = 4;

/// CPU seconds (user + system) of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// Peak resident memory (VmHWM) in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn start_pushgateway(dir: &TestDir) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = Command::new(bin("pushgateway"));
    cmd.arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--persistence.file=")
        .arg("--push.disable-consistency-check");
    let proc = Proc::spawn(&format!("pushgateway-{port}"), cmd, dir);
    wait_until("pushgateway ready", Duration::from_secs(15), || {
        matches!(
            try_http_get(&format!("http://127.0.0.1:{port}/-/ready")),
            Ok((200, _))
        )
        .then_some(())
    });
    (proc, port)
}

/// `name{labels} value` of consul-sync's metrics.
fn metric(port: u16, series: &str) -> f64 {
    let Ok((200, body)) = try_http_get(&format!("http://127.0.0.1:{port}/metrics")) else {
        return 0.0;
    };
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn run(groups: usize) {
    let dir = TestDir::new(&format!("reconcile-bench-{groups}"));
    let pgs: Vec<(Proc, u16)> = (0..PUSHGATEWAYS).map(|_| start_pushgateway(&dir)).collect();
    let members: Vec<Member> = pgs
        .iter()
        .map(|(_, p)| Member::parse(&format!("127.0.0.1:{p}")).unwrap())
        .collect();
    let ring = Ring::new(&members, 500);

    // Load: each group on its owner, every tenth also (older) on the next pushgateway.
    let loaded = Instant::now();
    let duplicates = groups / 10;
    std::thread::scope(|s| {
        for t in 0..8usize {
            let (ring, members) = (&ring, &members);
            s.spawn(move || {
                for i in (t..groups).step_by(8) {
                    let path = format!("/metrics/job/bench_{}/instance/host-{i}", i % 97);
                    let key = GroupingKey::from_path(&path).unwrap();
                    let owner = ring.owner(key.hash()).unwrap();
                    let body = format!("bench_value {i}\n");
                    if i % 10 == 0 {
                        let idx = members.iter().position(|m| m == owner).unwrap();
                        let other = &members[(idx + 1) % members.len()];
                        let r =
                            try_http_request("PUT", &format!("http://{other}{path}"), &[], body.as_bytes())
                                .unwrap();
                        assert!(r.status < 300, "{}", r.status);
                    }
                    let r = try_http_request("PUT", &format!("http://{owner}{path}"), &[], body.as_bytes())
                        .unwrap();
                    assert!(r.status < 300, "{}", r.status);
                }
            });
        }
    });
    // Without the consistency check pushes are applied asynchronously: wait until all are there.
    let client = PushgatewayClient::new().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    wait_until("every push is applied", Duration::from_secs(120), || {
        let total: usize = members
            .iter()
            .map(|m| {
                rt.block_on(client.push_times(m))
                    .map(|p| p.groups.len())
                    .unwrap_or(0)
            })
            .sum();
        (total == groups + duplicates).then_some(())
    });
    let load_time = loaded.elapsed();

    // One read of everything, both ways.
    let pg_cpu = |pgs: &[(Proc, u16)]| pgs.iter().map(|(p, _)| cpu_seconds(p.pid())).sum::<f64>();
    let read_text = {
        let (c0, t0) = (pg_cpu(&pgs), Instant::now());
        let mut n = 0;
        for m in &members {
            n += rt.block_on(client.push_times(m)).unwrap().groups.len();
        }
        assert_eq!(n, groups + duplicates);
        (t0.elapsed(), pg_cpu(&pgs) - c0)
    };
    let text_bytes: usize = members
        .iter()
        .map(|m| {
            try_http_get(&format!("http://{m}/metrics"))
                .map(|(_, b)| b.len())
                .unwrap_or(0)
        })
        .sum();
    let read_json = {
        let (c0, t0) = (pg_cpu(&pgs), Instant::now());
        let mut n = 0;
        for m in &members {
            n += rt.block_on(client.api_groups(m)).unwrap().len();
        }
        assert_eq!(n, groups + duplicates);
        (t0.elapsed(), pg_cpu(&pgs) - c0)
    };
    let json_bytes: usize = members
        .iter()
        .map(|m| {
            try_http_get(&format!("http://{m}/api/v1/metrics"))
                .map(|(_, b)| b.len())
                .unwrap_or(0)
        })
        .sum();

    // consul-sync against a real Consul; no Envoy (the member list is only published).
    let consul = Consul::start(&dir);
    let sync_port = free_port();
    let servers: String = members.iter().map(|m| format!("\n    - '{m}'")).collect();
    let config = dir.write(
        "consul-sync.yml",
        format!(
            "consul_server:\n  addr: {}\npushgateway:\n  servers:{servers}\nhttp_listen_addr: 127.0.0.1:{sync_port}\n\
             check:\n  interval: 1s\n  timeout: 1s\nreconcile_interval: 5s\n",
            consul.addr()
        ),
    );
    let exe = testkit::repo_root().join("target/release/consul-sync");
    assert!(exe.is_file(), "{} is missing: run ./build.sh", exe.display());
    let mut cmd = Command::new(exe);
    cmd.arg(format!("--config.file={}", config.display()))
        .env("NO_COLOR", "1");
    let sync = Proc::spawn("consul-sync", cmd, &dir);
    let count = |n: f64| {
        wait_until(&format!("{n} reconcile rounds"), Duration::from_secs(300), || {
            (metric(sync_port, "consul_sync_reconcile_duration_seconds_count") >= n).then_some(())
        })
    };
    count(1.0);
    let first = metric(sync_port, "consul_sync_reconcile_duration_seconds_sum");
    let deleted = metric(sync_port, "consul_sync_reconcile_deleted_copies_total");
    assert_eq!(
        deleted as usize, duplicates,
        "the first round deletes every older copy"
    );
    let (cpu0, sum0) = (cpu_seconds(sync.pid()), first);
    count(1.0 + STEADY_ROUNDS as f64);
    let steady =
        (metric(sync_port, "consul_sync_reconcile_duration_seconds_sum") - sum0) / STEADY_ROUNDS as f64;
    let cpu = (cpu_seconds(sync.pid()) - cpu0) / STEADY_ROUNDS as f64;
    let rss = peak_rss_mib(sync.pid());
    println!(
        "| {groups} | {duplicates} | {:.2} | {:.3} | {:.3} | {:.1} | {:.3} / {:.2} / {:.1} | {:.3} / {:.2} / {:.1} | {:.1} |",
        first,
        steady,
        cpu,
        rss,
        read_text.0.as_secs_f64(),
        read_text.1,
        text_bytes as f64 / 1e6,
        read_json.0.as_secs_f64(),
        read_json.1,
        json_bytes as f64 / 1e6,
        load_time.as_secs_f64()
    );
    drop(sync);
    drop(consul);
    drop(pgs);
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("{a:?}: expected a number of groups"))
        })
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000, 100_000]
    } else {
        sizes
    };
    println!(
        "reconciler over {PUSHGATEWAYS} pushgateways (times in s, CPU in CPU-s, memory in MiB, sizes in MB)"
    );
    println!();
    println!(
        "| groups | older copies | first round (deletes them) | steady round | consul-sync CPU per steady round | consul-sync peak RSS | read via /metrics: time / pushgateway CPU / MB | read via /api/v1/metrics: time / pushgateway CPU / MB | load time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in sizes {
        run(n);
    }
}
