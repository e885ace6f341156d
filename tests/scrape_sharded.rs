//! Sharded and replicated scraping of the pushgateways into a store that deduplicates: three
//! scrapers with replication factor 2 over six pushgateways (3,000 groups), remote-writing into
//! VictoriaMetrics with `-dedup.minScrapeInterval`; over the real push side (Consul, consul-sync
//! registering the pushgateways, Envoy in proxy mode). Twice, with the shipped configurations:
//! vmagent's scrape clustering (`deploy/scraping/vmagent/`, vmagent 1.79.5 with its own Consul
//! discovery, run as its systemd unit runs it), and plain Prometheus with `hashmod` relabelling
//! (`deploy/scraping/hashmod/`, Prometheus 2.42 in agent mode with consul-sync's HTTP discovery).
//! Two of the six pushgateways have a standby, which no scraper may scrape (it holds the same
//! groups: the store would deduplicate them away, so the scrapers' targets are checked).
//! Also what each engine does with a bad cluster setting, and that the shipped forms refuse it.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;
use testkit::pipeline::{wait_groups, Pipeline};
use testkit::prometheus::{up_targets_of, Prometheus, PrometheusRun};
use testkit::victoria_metrics::VictoriaMetrics;
use testkit::vmagent::{env_file, VmAgent};
use testkit::{bin, free_port, poll_for, repo_root, shipped_file, try_http_get, Proc, TestDir};

const PUSHGATEWAYS: usize = 6;
/// Of them, this many have a standby.
const STANDBYS: usize = 2;
const GROUPS: usize = 3000;
const SCRAPERS: usize = 3;
const REPLICATION: usize = 2;
/// The scrapers' interval, and the store's deduplication interval.
const INTERVAL: Duration = Duration::from_secs(2);
const INTERVAL_TEXT: &str = "2s";
/// From the start of scraping to every group in the store.
const FIRST_SCRAPE: Duration = Duration::from_secs(90);

/// Waits until the store has every group once with `value(i)`; returns how long that took.
fn wait_store(
    vm: &VictoriaMetrics,
    metric: &str,
    within: Duration,
    value: impl Fn(usize) -> f64,
) -> Duration {
    wait_groups("the store", within, GROUPS, value, || vm.query(metric))
}

/// Waits until each pushgateway is scraped (and found up) by exactly `REPLICATION` of the
/// scrapers at `bases`, as each scraper's own `/api/v1/targets` says.
fn wait_scraped_by_replication(bases: &[String], pipeline: &Pipeline) {
    let mut last = BTreeMap::new();
    let ok = poll_for(Duration::from_secs(60), || {
        last = pipeline
            .pgs
            .iter()
            .map(|p| (p.addr(), Vec::new()))
            .collect::<BTreeMap<_, _>>();
        for (n, base) in bases.iter().enumerate() {
            for t in up_targets_of(base, "pushgateway")? {
                last.entry(t).or_default().push(n);
            }
        }
        (last.len() == pipeline.pgs.len() && last.values().all(|s| s.len() == REPLICATION)).then_some(())
    });
    assert!(
        ok.is_some(),
        "each active pushgateway must be scraped by exactly {REPLICATION} scrapers, no standby by any \
         (standbys {:?}); pushgateway -> scrapers: {last:?}",
        pipeline.standbys.iter().map(|s| s.addr()).collect::<Vec<_>>()
    );
    eprintln!("pushgateway -> scrapers: {last:?}");
}

/// The scenario both forms pass, with the scrapers whose APIs are at `bases` running: every
/// group once in the store with its value, each pushgateway scraped by exactly `REPLICATION`
/// scrapers, one raw sample per interval; then after `kill_one`, new values of every group reach
/// the store within two scrape intervals plus the scrapers' remote-write delay (`flush`) and a
/// margin for a busy machine.
fn scrapes_every_group_once_and_survives_a_lost_scraper(
    pipeline: &Pipeline,
    vm: &VictoriaMetrics,
    metric: &str,
    bases: &[String],
    kill_one: impl FnOnce(),
    flush: Duration,
) {
    pipeline.push(metric, GROUPS, |i| i as f64);
    pipeline.assert_standbys_hold_their_actives_groups();
    let took = wait_store(vm, metric, FIRST_SCRAPE, |i| i as f64);
    eprintln!("{metric}: {GROUPS} groups once in the store after {took:?}");
    wait_scraped_by_replication(bases, pipeline);
    assert_deduplicated(vm, metric);

    kill_one();
    pipeline.push(metric, GROUPS, |i| (100_000 + i) as f64);
    let within = 2 * INTERVAL + flush + Duration::from_secs(10);
    let took = wait_store(vm, metric, within, |i| (100_000 + i) as f64);
    eprintln!(
        "{metric}: one scraper killed; every group's new value once in the store {took:?} after the pushes"
    );
}

/// Raw samples the store keeps for one series over the last `window`: with deduplication, about
/// one per interval, although two scrapers send one each.
fn samples_in(vm: &VictoriaMetrics, metric: &str, window: &str) -> f64 {
    let q = format!("count_over_time({metric}{{group=\"g7\"}}[{window}])");
    vm.query(&q).first().map_or(0.0, |(_, v)| *v)
}

fn assert_deduplicated(vm: &VictoriaMetrics, metric: &str) {
    // 20 s at 2 s: 10 samples deduplicated, about 20 not.
    let n = samples_in(vm, metric, "20s");
    assert!(
        n > 0.0 && n <= 12.0,
        "{n} samples of one series in 20 s at a {INTERVAL_TEXT} interval: not deduplicated"
    );
}

fn vmagent_config(dir: &TestDir, pipeline: &Pipeline) -> std::path::PathBuf {
    dir.write(
        "vmagent-scrape.yml",
        shipped_file(
            "deploy/scraping/vmagent/scrape.yml",
            &[
                (
                    "scrape_interval: 15s",
                    &format!("scrape_interval: {INTERVAL_TEXT}"),
                ),
                (
                    "server: 127.0.0.1:8500",
                    &format!("server: {}", pipeline.consul.addr()),
                ),
                (
                    "'127.0.0.1:9901'",
                    &format!("'127.0.0.1:{}'", pipeline.envoy.ports.admin),
                ),
                ("'127.0.0.1:9294'", &format!("'{}'", pipeline.sync_addr())),
            ],
        ),
    )
}

fn vmagent_env(write_url: &str) -> Vec<(String, String)> {
    env_file(&shipped_file(
        "deploy/scraping/vmagent/vmagent.env",
        &[("http://127.0.0.1:8428/api/v1/write", write_url)],
    ))
}

#[test]
fn vmagent_cluster_with_replication_2_keeps_every_group_once_when_a_member_dies() {
    let dir = TestDir::new("scrape-vmagent");
    let pipeline = Pipeline::start_with_standbys(&dir, PUSHGATEWAYS, STANDBYS);
    let vm = VictoriaMetrics::start(&dir, INTERVAL_TEXT);
    let config = vmagent_config(&dir, &pipeline);
    let env = vmagent_env(&vm.write_url());
    assert!(env.contains(&("VMAGENT_MEMBERS".to_owned(), SCRAPERS.to_string())));
    assert!(env.contains(&("VMAGENT_REPLICATION".to_owned(), REPLICATION.to_string())));
    let mut agents: Vec<VmAgent> = (0..SCRAPERS as u32)
        .map(|m| VmAgent::start(&dir, m, &env, &config, free_port()))
        .collect();

    let bases: Vec<String> = agents.iter().map(VmAgent::url).collect();
    // vmagent sends what it scraped every second (-remoteWrite.flushInterval).
    scrapes_every_group_once_and_survives_a_lost_scraper(
        &pipeline,
        &vm,
        "scrape_vmagent_value",
        &bases,
        || {
            agents[0].proc.kill();
        },
        Duration::from_secs(1),
    );
}

/// The shipped agent configuration of scraper `n` on this stack's ports.
fn hashmod_config(n: usize, pipeline: &Pipeline, vm: &VictoriaMetrics) -> String {
    shipped_file(
        &format!("deploy/scraping/hashmod/prometheus-agent-{n}.yml"),
        &[
            (
                "scrape_interval: 15s",
                &format!("scrape_interval: {INTERVAL_TEXT}"),
            ),
            (
                "http://127.0.0.1:9294/prometheus/targets",
                &format!("http://{}/prometheus/targets", pipeline.sync_addr()),
            ),
            ("refresh_interval: 5s", "refresh_interval: 1s"),
            (
                "'127.0.0.1:9901'",
                &format!("'127.0.0.1:{}'", pipeline.envoy.ports.admin),
            ),
            ("'127.0.0.1:9294'", &format!("'{}'", pipeline.sync_addr())),
            ("http://127.0.0.1:8428/api/v1/write", &vm.write_url()),
        ],
    )
}

#[test]
fn hashmod_prometheus_agents_with_replication_2_keep_every_group_once_when_one_dies() {
    let dir = TestDir::new("scrape-hashmod");
    let pipeline = Pipeline::start_with_standbys(&dir, PUSHGATEWAYS, STANDBYS);
    let vm = VictoriaMetrics::start(&dir, INTERVAL_TEXT);
    let mut agents: Vec<Prometheus> = (0..SCRAPERS)
        .map(|n| {
            Prometheus::start_with(
                &dir,
                &PrometheusRun {
                    bin: "prometheus-current",
                    config: hashmod_config(n, &pipeline, &vm),
                    port: free_port(),
                    agent: true,
                },
            )
        })
        .collect();

    let bases: Vec<String> = agents.iter().map(Prometheus::url).collect();
    // Prometheus sends a remote-write batch at the latest after batch_send_deadline (5 s).
    scrapes_every_group_once_and_survives_a_lost_scraper(
        &pipeline,
        &vm,
        "scrape_hashmod_value",
        &bases,
        || {
            agents[0].proc.kill();
        },
        Duration::from_secs(5),
    );
}

/// (modulus, kept shards) of the hashmod relabelling in a shipped agent configuration.
fn hashmod_of(text: &str) -> (usize, Vec<usize>) {
    let value = |key: &str| {
        let found: Vec<&str> = text.lines().filter_map(|l| l.trim().strip_prefix(key)).collect();
        assert_eq!(found.len(), 1, "one {key} in:\n{text}");
        found[0].trim().to_owned()
    };
    let modulus = value("modulus:").parse().unwrap();
    let kept = value("regex: ")
        .split('|')
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("regex {s:?}: expected shard numbers a|b"))
        })
        .collect();
    (modulus, kept)
}

#[test]
fn shipped_hashmod_configs_keep_every_shard_on_exactly_two_scrapers() {
    let dir = TestDir::new("scrape-hashmod-shipped");
    let folder = repo_root().join("deploy/scraping/hashmod");
    let mut files: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let scrapers = files.len();
    assert_eq!(
        files,
        (0..scrapers)
            .map(|n| format!("prometheus-agent-{n}.yml"))
            .collect::<Vec<_>>()
    );
    let mut scraped_by: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (n, file) in files.iter().enumerate() {
        let path = folder.join(file);
        let (modulus, kept) = hashmod_of(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(
            modulus, scrapers,
            "{file}: the modulus must be the number of scrapers"
        );
        let mut want = vec![n, (n + scrapers - 1) % scrapers];
        want.sort();
        let mut got = kept.clone();
        got.sort();
        assert_eq!(got, want, "{file}: scraper {n} keeps shards {n} and {n}-1");
        for s in kept {
            scraped_by.entry(s).or_default().push(n);
        }
        // As users are told to check them; the agent flag also refuses what agent mode lacks.
        let out = Command::new(bin("promtool-current"))
            .args(["check", "config", "--agent"])
            .arg(&path)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(
        (0..scrapers).all(|s| scraped_by.get(&s).map(Vec::len) == Some(REPLICATION)),
        "shard -> scrapers: {scraped_by:?}"
    );
}

#[test]
fn shipped_vmagent_config_passes_vmagents_own_check() {
    let out = Command::new(bin("vmagent"))
        .arg(format!(
            "-promscrape.config={}",
            repo_root().join("deploy/scraping/vmagent/scrape.yml").display()
        ))
        .arg("-promscrape.config.dryRun")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_shipped_vmagent_unit_refuses_a_member_out_of_range_and_a_replication_above_the_members() {
    let dir = TestDir::new("scrape-vmagent-unit");
    let env = vmagent_env("http://127.0.0.1:8428/api/v1/write");
    let with = |key: &str, value: &str| {
        let mut e = env.clone();
        e.retain(|(k, _)| k != key);
        e.push((key.to_owned(), value.to_owned()));
        e
    };
    for m in 0..SCRAPERS {
        VmAgent::check(&dir, &m.to_string(), &env).unwrap();
    }
    let refused = |member: &str, env: &[(String, String)], says: &str| {
        let e =
            VmAgent::check(&dir, member, env).expect_err(&format!("member {member} with {env:?} is refused"));
        assert!(e.contains(says), "expected {says:?} in: {e}");
    };
    refused(
        "3",
        &env,
        "member number 3 is out of range: with VMAGENT_MEMBERS=3 it must be 0 to 2",
    );
    refused("x", &env, "the instance must be a member number, 0 to 2");
    refused(
        "0",
        &with("VMAGENT_REPLICATION", "4"),
        "VMAGENT_REPLICATION=4 in /etc/dynamic-sharding/vmagent.env is above VMAGENT_MEMBERS=3",
    );
    refused("0", &with("VMAGENT_REPLICATION", "0"), "VMAGENT_REPLICATION=0");
    refused("0", &with("VMAGENT_MEMBERS", "three"), "VMAGENT_MEMBERS=three");
}

/// The targets (any health) a bare vmagent with `cluster` flags keeps of six static ones.
fn vmagent_keeps(dir: &TestDir, cluster: &[&str]) -> usize {
    let config = dir.write(
        "static.yml",
        "scrape_configs:\n  - job_name: t\n    static_configs:\n      - targets: \
         ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3', '127.0.0.1:4', '127.0.0.1:5', '127.0.0.1:6']\n",
    );
    let port = free_port();
    let mut cmd = Command::new(bin("vmagent"));
    cmd.arg(format!("-promscrape.config={}", config.display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .arg("-remoteWrite.url=http://127.0.0.1:1/api/v1/write")
        .arg(format!(
            "-remoteWrite.tmpDataPath={}",
            dir.join(format!("vmagent-{port}")).display()
        ))
        .args(cluster);
    let mut p = Proc::spawn(&format!("vmagent-{port}"), cmd, dir);
    let url = format!("http://127.0.0.1:{port}/api/v1/targets");
    let answers = || match try_http_get(&url) {
        Ok((200, body)) => Some(body),
        _ => None,
    };
    poll_for(Duration::from_secs(30), answers)
        .unwrap_or_else(|| panic!("vmagent {cluster:?} does not answer"));
    // Its targets show within a fraction of a second; none showing must mean none kept.
    std::thread::sleep(Duration::from_secs(2));
    assert!(p.is_running(), "vmagent {cluster:?} exited:\n{}", p.log_tail(10));
    let v: serde_json::Value = serde_json::from_str(&answers().unwrap()).unwrap();
    v["data"]["activeTargets"].as_array().unwrap().len()
}

/// vmagent 1.79.5 starts with either bad setting and says nothing: docs/scraping.md says so and
/// what follows, and this pins it (a vmagent that starts refusing them fails here, and the docs
/// must change).
#[test]
fn vmagent_itself_accepts_a_member_out_of_range_and_a_replication_above_the_members() {
    let dir = TestDir::new("scrape-vmagent-bad");
    let count = "-promscrape.cluster.membersCount=3";
    assert_eq!(
        vmagent_keeps(&dir, &[count, "-promscrape.cluster.memberNum=3"]),
        0
    );
    assert_eq!(
        vmagent_keeps(
            &dir,
            &[
                count,
                "-promscrape.cluster.memberNum=0",
                "-promscrape.cluster.replicationFactor=4"
            ]
        ),
        6
    );
    // What a correct member keeps, for comparison: its share with replication 2.
    let share = vmagent_keeps(
        &dir,
        &[
            count,
            "-promscrape.cluster.memberNum=0",
            "-promscrape.cluster.replicationFactor=2",
        ],
    );
    assert!(share > 0 && share < 6, "{share}");
}
