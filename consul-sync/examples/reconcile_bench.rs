//! Benchmark of the reconciler: round time, consul-sync CPU and memory with 10k and 100k groups
//! over 4 real pushgateways, and what reading the groups costs both ways pushgateway offers.
//!
//!   cargo run --profile bench-tools -p consul-sync --example reconcile_bench [windows] [GROUPS...]   (default 10000 100000)
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
//!
//! Then the windows a round leaves (`windows`): the same load plus a fifth pushgateway draining,
//! holding a tenth as many groups again that nobody pushes elsewhere. The first round deletes the
//! older copies; a reload then sets `drain_timeout` to 1 s, and the next round moves the drained
//! groups to their owners. Printed: for the deletes and the moves, the mean and the longest time
//! from the start of the read a write was checked against to the end of that write (a push to
//! that copy meanwhile would be lost to a delete, or overwritten by a move), from consul-sync's
//! histograms and round log lines.
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
/// The bearer token the bench sends to `/-/reload`, which refuses a reload without one.
const RELOAD_TOKEN: &str = "reconcile-bench";

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

/// Waits until `members` hold `total` groups in all: without the consistency check, pushes are
/// applied asynchronously.
fn wait_applied(rt: &tokio::runtime::Runtime, client: &PushgatewayClient, members: &[Member], total: usize) {
    wait_until("every push is applied", Duration::from_secs(120), || {
        let held: usize = members
            .iter()
            .map(|m| {
                rt.block_on(client.push_times(m))
                    .map(|p| p.groups.len())
                    .unwrap_or(0)
            })
            .sum();
        (held == total).then_some(())
    });
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
    let client = PushgatewayClient::new().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    wait_applied(&rt, &client, &members, groups + duplicates);
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

/// The longest "window after a read" of the round log lines in `log`.
fn longest_window(log: &str) -> f64 {
    log.lines()
        .filter_map(|l| l.split("longest window after a read ").nth(1))
        .filter_map(|r| r.split('s').next().and_then(|v| v.parse::<f64>().ok()))
        .fold(0.0, f64::max)
}

/// Pushes `body` to `path` on `member`; any status below 300 is fine.
fn put(member: &Member, path: &str, body: &str) {
    let r = try_http_request("PUT", &format!("http://{member}{path}"), &[], body.as_bytes()).unwrap();
    assert!(r.status < 300, "{}", r.status);
}

/// The delete and drain-move windows at `groups` groups (see the module's doc).
fn windows(groups: usize) {
    let dir = TestDir::new(&format!("reconcile-windows-{groups}"));
    let pgs: Vec<(Proc, u16)> = (0..=PUSHGATEWAYS).map(|_| start_pushgateway(&dir)).collect();
    let all: Vec<Member> = pgs
        .iter()
        .map(|(_, p)| Member::parse(&format!("127.0.0.1:{p}")).unwrap())
        .collect();
    let (members, drained) = (&all[..PUSHGATEWAYS], &all[PUSHGATEWAYS]);
    let ring = Ring::new(members, 500);
    let (duplicates, to_move) = (groups / 10, groups / 10);
    std::thread::scope(|s| {
        for t in 0..8usize {
            let ring = &ring;
            s.spawn(move || {
                for i in (t..groups).step_by(8) {
                    let path = format!("/metrics/job/bench_{}/instance/host-{i}", i % 97);
                    let owner = ring.owner(GroupingKey::from_path(&path).unwrap().hash()).unwrap();
                    let body = format!("bench_value {i}\n");
                    if i % 10 == 0 {
                        let idx = members.iter().position(|m| m == owner).unwrap();
                        put(&members[(idx + 1) % members.len()], &path, &body);
                    }
                    put(owner, &path, &body);
                }
                for i in (t..to_move).step_by(8) {
                    let path = format!("/metrics/job/drained_{}/instance/host-{i}", i % 97);
                    put(drained, &path, &format!("bench_value {i}\n"));
                }
            });
        }
    });
    let client = PushgatewayClient::new().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    wait_applied(&rt, &client, &all, groups + duplicates + to_move);
    let consul = Consul::start(&dir);
    let sync_port = free_port();
    let servers: String = all.iter().map(|m| format!("\n    - '{m}'")).collect();
    let config = |timeout: &str| {
        format!(
            "consul_server:\n  addr: {}\npushgateway:\n  servers:{servers}\n  drain: ['{drained}']\n\
             http_listen_addr: 127.0.0.1:{sync_port}\ncheck:\n  interval: 1s\n  timeout: 1s\n\
             reconcile_interval: 5s\ndrain_timeout: {timeout}\n",
            consul.addr()
        )
    };
    let file = dir.write("consul-sync.yml", config("1h"));
    let exe = testkit::repo_root().join("target/release/consul-sync");
    assert!(exe.is_file(), "{} is missing: run ./build.sh", exe.display());
    let mut cmd = Command::new(exe);
    cmd.arg(format!("--config.file={}", file.display()))
        .env("NO_COLOR", "1")
        .env("CONSUL_SYNC_RELOAD_TOKEN", RELOAD_TOKEN);
    let sync = Proc::spawn("consul-sync", cmd, &dir);
    let m = |series: &str| metric(sync_port, series);
    wait_until("the older copies are deleted", Duration::from_secs(300), || {
        (m("consul_sync_reconcile_deleted_copies_total") as usize == duplicates).then_some(())
    });
    // The round's log line comes after its last delete.
    wait_until("the round ends", Duration::from_secs(60), || {
        (m("consul_sync_reconcile_duration_seconds_count") >= 1.0).then_some(())
    });
    let delete_mean = m("consul_sync_reconcile_delete_window_seconds_sum")
        / m("consul_sync_reconcile_delete_window_seconds_count");
    let log_before = sync.log().len();
    let delete_longest = longest_window(&sync.log());
    dir.write("consul-sync.yml", config("1s"));
    let r = try_http_request(
        "POST",
        &format!("http://127.0.0.1:{sync_port}/-/reload"),
        &[("authorization", &format!("Bearer {RELOAD_TOKEN}"))],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let drain = format!("consul_sync_drain_state{{pushgateway=\"{drained}\"}}");
    let moving = Instant::now();
    wait_until("the drained groups are moved", Duration::from_secs(600), || {
        (m(&drain) == 2.0).then_some(())
    });
    let drain_time = moving.elapsed();
    let moved = m("consul_sync_drain_moved_groups_total");
    assert_eq!(moved as usize, to_move, "every drained group moves");
    let move_mean =
        m("consul_sync_drain_move_window_seconds_sum") / m("consul_sync_drain_move_window_seconds_count");
    let move_longest = longest_window(&sync.log()[log_before..]);
    println!(
        "| {groups} | {duplicates} | {:.3} / {:.3} | {to_move} | {:.3} / {:.3} | {:.1} |",
        delete_mean,
        delete_longest,
        move_mean,
        move_longest,
        drain_time.as_secs_f64()
    );
    drop(sync);
    drop(consul);
    drop(pgs);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `windows N...`: only the windows.
    let only_windows = args.first().is_some_and(|a| a == "windows");
    let sizes: Vec<usize> = args
        .iter()
        .skip(usize::from(only_windows))
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
    if !only_windows {
        rounds(&sizes);
    }
    println!();
    println!("windows after a read (times in s)");
    println!();
    println!(
        "| groups | older copies deleted | delete window: mean / longest | groups moved at a drain deadline | move window: mean / longest | reload to drained |"
    );
    println!("|---|---|---|---|---|---|");
    for n in sizes {
        windows(n);
    }
}

/// The table of round costs.
fn rounds(sizes: &[usize]) {
    println!(
        "reconciler over {PUSHGATEWAYS} pushgateways (times in s, CPU in CPU-s, memory in MiB, sizes in MB)"
    );
    println!();
    println!(
        "| groups | older copies | first round (deletes them) | steady round | consul-sync CPU per steady round | consul-sync peak RSS | read via /metrics: time / pushgateway CPU / MB | read via /api/v1/metrics: time / pushgateway CPU / MB | load time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for n in sizes {
        run(*n);
    }
}
