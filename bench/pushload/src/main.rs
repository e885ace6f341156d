//! The load generator of `bench/cluster.sh`: pushes to many groups the way a Prometheus client
//! does, and times each push as its user would see it.
//!
//! Every push is a `PUT` of a small text-format body to `/metrics/job/bench/instance/<n>`, over
//! keep-alive connections pooled per host; a `307` is followed with its method and body (redirect
//! mode: one connection pool to Envoy, one to each pushgateway), so one push is the whole exchange.
//! Every answer is checked: a push that does not end in the expected status, or (with
//! `--redirect`) that was not redirected, fails the run.
//!
//! `fill` pushes each group once; `run` pushes them in a cycle from `--connections` closed-loop
//! pushers for a warm-up and a measured window, and reports pushes/s, latency percentiles and
//! the CPU time, over the window (and over an idle sample before any push), of itself and of
//! every process named with `--pid`. One JSON object on stdout.

use clap::{Parser, Subcommand};
use serde_json::json;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Pushes to pushgateways (directly or through Envoy) and measures every push")]
struct Cli {
    /// Where pushes go: `http://host:port` (a pushgateway, or an Envoy listener).
    #[arg(long)]
    url: String,
    /// Groups pushed: `/metrics/job/bench/instance/<n>` for n in [first, first + groups).
    #[arg(long)]
    groups: u64,
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Pushes in flight at once (closed loop: each pusher sends its next push when the last ended).
    #[arg(long, default_value_t = 8)]
    connections: u64,
    /// The status every push must end with (pushgateway: 200, or 202 without its consistency check).
    #[arg(long)]
    status: u16,
    /// Every push must be answered by another host than `--url` (a 307 was followed).
    #[arg(long)]
    redirect: bool,
    /// Metric families in each push (gauges of one sample each).
    #[arg(long, default_value_t = 3)]
    metrics: u32,
    /// Longest one push may take, in seconds, before it counts as failed.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Push each group once.
    Fill,
    /// Push the groups in a cycle for `--warmup` then `--duration` seconds; measure the latter.
    Run {
        /// Seconds without pushes first, over which each part's idle CPU is measured.
        #[arg(long, default_value_t = 0.0)]
        idle: f64,
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// The window goes on past `--duration` until this many pushes ended in it (a slow
        /// pushgateway answers a push in seconds), up to `--max-duration` seconds in all.
        #[arg(long, default_value_t = 0)]
        min_pushes: u64,
        #[arg(long, default_value_t = 120.0)]
        max_duration: f64,
        /// `name=PID`: a process whose CPU time over the measured window is reported (repeat;
        /// one name may be given to several PIDs, their times add up).
        #[arg(long = "pid", value_parser = parse_pid)]
        pids: Vec<(String, u32)>,
    },
}

fn parse_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("--pid {s}: expected name=PID, e.g. envoy=1234"))?;
    let pid = pid
        .parse()
        .map_err(|_| format!("--pid {s}: {pid} is not a process id"))?;
    Ok((name.to_owned(), pid))
}

/// The text-format body of every push: `metrics` gauges, as a batch job reports its last run.
fn body(metrics: u32) -> String {
    let mut out = String::new();
    for i in 0..metrics {
        let _ = writeln!(
            out,
            "# TYPE bench_job_metric_{i} gauge\nbench_job_metric_{i} {}",
            i + 1
        );
    }
    out
}

/// What one pusher saw.
#[derive(Default)]
struct Tally {
    /// When each push that ended after the warm-up ended, and its latency in microseconds (the
    /// window's end is known only when it is over).
    ended: Vec<(Instant, u64)>,
    /// Pushes that ended with the expected answer, in all.
    ok: u64,
    failed: u64,
    /// The first few failures, as said to the user.
    errors: Vec<String>,
}

impl Tally {
    fn fail(&mut self, why: String) {
        self.failed += 1;
        if self.errors.len() < 5 {
            self.errors.push(why);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ended.extend(other.ended);
        self.ok += other.ok;
        self.failed += other.failed;
        for e in other.errors {
            if self.errors.len() < 5 {
                self.errors.push(e);
            }
        }
    }
}

struct Pusher {
    client: reqwest::Client,
    base: String,
    host: String,
    body: String,
    status: u16,
    redirect: bool,
}

impl Pusher {
    /// One push of group `n`; `Err` says why it did not end as expected.
    async fn push(&self, n: u64) -> Result<(), String> {
        let url = format!("{}/metrics/job/bench/instance/{n}", self.base);
        let resp = self
            .client
            .put(&url)
            .body(self.body.clone())
            .send()
            .await
            .map_err(|e| format!("PUT {url}: {e}"))?;
        let status = resp.status().as_u16();
        let answered_by = resp.url().authority().to_owned();
        // Read to the end, so the connection goes back to the pool.
        let text = resp
            .text()
            .await
            .map_err(|e| format!("PUT {url}: reading the answer: {e}"))?;
        if status != self.status {
            let text: String = text.chars().take(200).collect();
            return Err(format!(
                "PUT {url}: status {status} from {answered_by}, expected {}: {text}",
                self.status
            ));
        }
        if self.redirect && answered_by == self.host {
            return Err(format!(
                "PUT {url}: answered by {answered_by} itself, expected a 307 to a pushgateway"
            ));
        }
        Ok(())
    }
}

/// CPU time of a process in nanoseconds: the sum over its threads of the time the scheduler ran
/// them (`/proc/<pid>/task/*/schedstat`). Exact to the nanosecond, where `/proc/<pid>/stat` counts
/// 10 ms ticks: a pushgateway at 100,000 groups does a few pushes in a whole window, and Envoy's
/// share of one is under a millisecond. A thread that exits between two readings takes its time
/// with it; Envoy's and Go's threads live as long as their process.
fn cpu_ns(pid: &str) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(task) = task else { continue };
        // A thread may exit between the listing and the read.
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

fn rss_kb(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU nanoseconds of `self` and of each named process (names summed), at one moment.
fn snapshot(pids: &[(String, u32)]) -> Result<Vec<(String, u64)>, String> {
    let mut out = vec![("client".to_owned(), cpu_ns("self").unwrap_or(0))];
    for (name, pid) in pids {
        let ns = cpu_ns(&pid.to_string()).ok_or_else(|| format!("process {pid} ({name}) is gone"))?;
        match out.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 += ns,
            None => out.push((name.clone(), ns)),
        }
    }
    Ok(out)
}

/// CPU milliseconds each part used between two snapshots.
fn cpu_ms(before: &[(String, u64)], after: &[(String, u64)]) -> serde_json::Value {
    json!(before
        .iter()
        .zip(after)
        .map(|((name, t0), (_, t1))| (name.clone(), json!(t1.saturating_sub(*t0) as f64 / 1e6)))
        .collect::<serde_json::Map<_, _>>())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

async fn fill(pusher: Arc<Pusher>, cli: &Cli) -> serde_json::Value {
    let next = Arc::new(AtomicU64::new(cli.first));
    let end = cli.first + cli.groups;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..cli.connections {
        let (pusher, next) = (Arc::clone(&pusher), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= end {
                    return tally;
                }
                match pusher.push(n).await {
                    Ok(()) => tally.ok += 1,
                    Err(e) => tally.fail(e),
                }
            }
        }));
    }
    let tally = join(tasks).await;
    json!({
        "pushes": tally.ok,
        "failed": tally.failed,
        "errors": tally.errors,
        "seconds": started.elapsed().as_secs_f64(),
    })
}

/// The measured window: after the idle sample and the warm-up, for `duration`, and on until
/// `min_pushes` pushes ended in it or `max_duration` passed.
struct Window {
    /// Seconds of no load before the warm-up, to measure what each part spends idle.
    idle: f64,
    warmup: f64,
    duration: f64,
    min_pushes: u64,
    max_duration: f64,
}

async fn run(pusher: Arc<Pusher>, cli: &Cli, w: Window, pids: &[(String, u32)]) -> serde_json::Value {
    let groups = cli.groups.max(1);
    // What every part spends with no push at all (Envoy's timers and stats, a pushgateway's GC),
    // so that a reader can take it out of the CPU per push when pushes are few.
    let idle_cpu = if w.idle > 0.0 {
        let before = snapshot(pids);
        tokio::time::sleep(Duration::from_secs_f64(w.idle)).await;
        match (before, snapshot(pids)) {
            (Ok(b), Ok(a)) => cpu_ms(&b, &a),
            _ => json!({}),
        }
    } else {
        json!({})
    };
    let started = Instant::now();
    let window_start = started + Duration::from_secs_f64(w.warmup);
    let stop = Arc::new(AtomicBool::new(false));
    let in_window = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..cli.connections {
        let (pusher, stop, in_window) = (Arc::clone(&pusher), Arc::clone(&stop), Arc::clone(&in_window));
        let first = cli.first;
        // Pushers start spread over the groups and each walks its own stretch, so no two push the
        // same group at once and every group is pushed as often as the others.
        let mut n = i * groups / cli.connections.max(1);
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let result = pusher.push(first + n).await;
                let done = Instant::now();
                n = (n + 1) % groups;
                match result {
                    Ok(()) => {
                        tally.ok += 1;
                        if done >= window_start {
                            in_window.fetch_add(1, Ordering::Relaxed);
                            tally
                                .ended
                                .push((done, done.duration_since(sent).as_micros() as u64));
                        }
                    }
                    Err(e) => tally.fail(e),
                }
            }
            tally
        }));
    }
    tokio::time::sleep_until(window_start.into()).await;
    let before = snapshot(pids);
    let min_end = window_start + Duration::from_secs_f64(w.duration);
    let max_end = window_start + Duration::from_secs_f64(w.max_duration.max(w.duration));
    tokio::time::sleep_until(min_end.into()).await;
    while in_window.load(Ordering::Relaxed) < w.min_pushes && Instant::now() < max_end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = snapshot(pids);
    let window_end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let seconds = window_end.duration_since(window_start).as_secs_f64();
    let rss: serde_json::Map<String, serde_json::Value> = pids
        .iter()
        .map(|(name, pid)| (format!("{name}:{pid}"), json!(rss_kb(&pid.to_string()))))
        .collect();
    // Pushes still in flight end (and are checked) before the result is printed.
    let mut tally = join(tasks).await;
    let mut l: Vec<u64> = tally
        .ended
        .iter()
        .filter(|(done, _)| *done <= window_end)
        .map(|(_, us)| *us)
        .collect();
    l.sort_unstable();
    let pushes = l.len();
    let cpu = match (before, after) {
        (Ok(b), Ok(a)) => cpu_ms(&b, &a),
        (Err(e), _) | (_, Err(e)) => {
            tally.fail(e);
            json!({})
        }
    };
    json!({
        "pushes": pushes,
        "seconds": seconds,
        "pushes_per_s": pushes as f64 / seconds,
        "latency_ms": {
            "p50": percentile(&l, 50.0),
            "p90": percentile(&l, 90.0),
            "p99": percentile(&l, 99.0),
            "max": percentile(&l, 100.0),
        },
        "cpu_ms": cpu,
        "idle_cpu_ms": idle_cpu,
        "idle_seconds": w.idle,
        "rss_kb": rss,
        "pushes_in_all": tally.ok,
        "failed": tally.failed,
        "errors": tally.errors,
    })
}

async fn join(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut all = Tally::default();
    for t in tasks {
        match t.await {
            Ok(tally) => all.merge(tally),
            Err(e) => all.fail(format!("a pusher stopped: {e}")),
        }
    }
    all
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let Some(host) = cli
        .url
        .strip_prefix("http://")
        .map(|h| h.trim_end_matches('/').to_owned())
    else {
        eprintln!("pushload: --url {} must be http://host:port", cli.url);
        return std::process::ExitCode::from(2);
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(cli.timeout))
        .no_proxy()
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pushload: no HTTP client: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let pusher = Arc::new(Pusher {
        client,
        base: format!("http://{host}"),
        host,
        body: body(cli.metrics),
        status: cli.status,
        redirect: cli.redirect,
    });
    // One thread: the load generator shares the machine with what it measures, and a push costs
    // it far less than it costs a pushgateway.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pushload: no runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Fill => fill(pusher, &cli).await,
            Command::Run {
                idle,
                warmup,
                duration,
                min_pushes,
                max_duration,
                pids,
            } => {
                let window = Window {
                    idle: *idle,
                    warmup: *warmup,
                    duration: *duration,
                    min_pushes: *min_pushes,
                    max_duration: *max_duration,
                };
                run(pusher, &cli, window, pids).await
            }
        }
    });
    println!("{result}");
    if result["failed"].as_u64().unwrap_or(1) > 0 {
        eprintln!(
            "pushload: {} pushes failed: {}",
            result["failed"], result["errors"]
        );
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
