//! The release bundle as a newcomer uses it: docs/production.md's steps, on
//! loopback. The bundle is packed by `deploy/dist.sh` (what `./build.sh dist` runs after building),
//! unpacked in a temporary folder that stands for `/opt/dynamic-sharding`; the systemd units'
//! commands run as systemd would run them (credentials directory, working directory), since no
//! systemd manages services here. Consul and the pushgateways are the user's own: testkit's.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod markdown;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use testkit::{
    bin, free_port, http_request, repo_root, try_http_get, try_http_request, wait_until, Consul, Proc,
    Pushgateway, TestDir,
};

const UNITS: [&str; 2] = [
    "dynamic-sharding-envoy.service",
    "dynamic-sharding-consul-sync.service",
];

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `text` with `old` replaced by `new`, which must occur exactly `times` times.
fn swap(text: &str, old: &str, new: &str, times: usize) -> String {
    assert_eq!(
        text.matches(old).count(),
        times,
        "expected {times} of {old:?} in:\n{text}"
    );
    text.replace(old, new)
}

/// Steps 1 and 2: pack the bundle, check its sha256, unpack it into `<dir>/opt`.
fn bundle(dir: &TestDir) -> PathBuf {
    let out = run(Command::new(repo_root().join("deploy/dist.sh"))
        .arg("--out")
        .arg(dir.join("dist")));
    let tarball = PathBuf::from(stdout(&out));
    let name = tarball.file_name().unwrap().to_str().unwrap().to_owned();
    // Named as deploy/dist.sh names it from `uname -m`.
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    assert_eq!(
        name,
        format!(
            "dynamic-sharding-{}-linux-{arch}.tar.gz",
            env!("CARGO_PKG_VERSION")
        )
    );
    run(Command::new("sha256sum")
        .args(["-c", &format!("{name}.sha256")])
        .current_dir(dir.join("dist")));
    let opt = dir.join("opt");
    std::fs::create_dir_all(&opt).unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&opt)
        .arg("--strip-components=1"));
    opt
}

/// Step 4 on loopback: the bundle's envoy.yaml with free ports and the test's pushgateways.
fn configure_envoy(opt: &Path, members: &[String]) -> BTreeMap<&'static str, u16> {
    let ports = BTreeMap::from([
        ("redirect", free_port()),
        ("proxy", free_port()),
        ("control", free_port()),
        ("admin", free_port()),
    ]);
    let mut text = std::fs::read_to_string(opt.join("envoy.yaml")).unwrap();
    for (what, shipped) in [
        ("redirect", 9292),
        ("proxy", 9290),
        ("control", 9293),
        ("admin", 9901),
    ] {
        text = swap(
            &text,
            &format!("port_value: {shipped}"),
            &format!("port_value: {}", ports[what]),
            1,
        );
    }
    text = swap(&text, "address: 0.0.0.0", "address: 127.0.0.1", 2);
    text = swap(
        &text,
        r#"["127.0.0.1:9091", "127.0.0.1:9092", "127.0.0.1:9093"]"#,
        &serde_json::to_string(members).unwrap(),
        3,
    );
    std::fs::write(opt.join("envoy.yaml"), text).unwrap();
    ports
}

fn validate_envoy(opt: &Path) {
    run(Command::new(bin("envoy"))
        .args(["--mode", "validate", "-c", "envoy.yaml", "--log-level", "error"])
        .env("SHARDING_CONTROL_TOKEN", "check")
        .current_dir(opt));
}

/// `Key=value` lines of a unit's `[Service]` section.
fn unit_settings(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

/// Runs a unit's `ExecStart` as systemd would: `$$` unescaped, the credential copied into a
/// credentials directory named by `CREDENTIALS_DIRECTORY`, in `WorkingDirectory` (else `/`). The
/// install paths are the test's: `/opt/dynamic-sharding`, `/etc/dynamic-sharding`, and Envoy's.
fn start_unit(dir: &TestDir, unit: &str, opt: &Path, etc: &Path) -> Proc {
    let local = |s: &str| {
        s.replace("/opt/dynamic-sharding", opt.to_str().unwrap())
            .replace("/etc/dynamic-sharding", etc.to_str().unwrap())
            .replace("/usr/local/bin/envoy", bin("envoy").to_str().unwrap())
    };
    let settings = unit_settings(&opt.join("systemd").join(unit));
    let get = |k: &str| settings.iter().find(|(key, _)| key == k).map(|(_, v)| local(v));
    let creds = dir.join(format!("credentials/{unit}"));
    std::fs::create_dir_all(&creds).unwrap();
    let credential = get("LoadCredential").unwrap_or_else(|| panic!("{unit}: no LoadCredential"));
    let (id, source) = credential.split_once(':').unwrap();
    std::fs::copy(source, creds.join(id)).unwrap();
    let exec = get("ExecStart")
        .unwrap_or_else(|| panic!("{unit}: no ExecStart"))
        .replace("$$", "$");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("exec {exec}"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("CREDENTIALS_DIRECTORY", &creds)
        .current_dir(get("WorkingDirectory").unwrap_or_else(|| "/".to_owned()));
    Proc::spawn(unit, cmd, dir)
}

#[test]
fn a_newcomer_follows_running_it_in_production_on_loopback() {
    let dir = TestDir::new("ops-bundle");
    let consul = Consul::start(&dir);
    let pgs: Vec<Pushgateway> = (0..3).map(|_| Pushgateway::start(&dir)).collect();
    let members: Vec<String> = pgs.iter().map(Pushgateway::addr).collect();

    // 1, 2: the bundle, as documented.
    let opt = bundle(&dir);
    let mut files: Vec<String> = walk(&opt);
    files.sort();
    // Every page of docs/, so that the alerts' runbook links work from the bundle.
    let mut want: Vec<String> = [
        "LICENSE",
        "README.md",
        "consul-sync",
        "dynamic-sharding.yml",
        "dynamic_sharding.wasm",
        "envoy.yaml",
        "grafana/dynamic-sharding.json",
        "prometheus/rules.yml",
        "scraping/ha/prometheus.yml",
        "scraping/hashmod/prometheus-agent-0.yml",
        "scraping/hashmod/prometheus-agent-1.yml",
        "scraping/hashmod/prometheus-agent-2.yml",
        "scraping/vmagent/dynamic-sharding-vmagent@.service",
        "scraping/vmagent/scrape.yml",
        "scraping/vmagent/vmagent.env",
        "systemd/dynamic-sharding-consul-sync.service",
        "systemd/dynamic-sharding-envoy.service",
    ]
    .map(String::from)
    .into();
    want.extend(
        walk(&repo_root().join("docs"))
            .into_iter()
            .map(|p| format!("docs/{p}")),
    );
    want.sort();
    assert_eq!(files, want);
    let rules = std::fs::read_to_string(opt.join("prometheus/rules.yml")).unwrap();
    for (alert, runbook) in markdown::alert_runbooks(&rules) {
        if let Err(e) = markdown::check_runbook(&opt, &alert, &runbook) {
            panic!("in the bundle: {e}");
        }
    }
    let broken = markdown::broken_links(&opt, &opt.join("README.md"));
    assert!(broken.is_empty(), "the bundle's README: {broken:?}");
    let sync_bin = opt.join("consul-sync");
    let version = run(Command::new(&sync_bin).arg("--version"));
    assert_eq!(
        stdout(&version),
        format!("consul-sync {}", env!("CARGO_PKG_VERSION"))
    );
    // As shipped, the config loads from the bundle's folder.
    validate_envoy(&opt);

    // 3: the token.
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let token = format!("{:032x}", rand_u128());
    std::fs::write(etc.join("control-token"), &token).unwrap();

    // 4: Envoy's config.
    let ports = configure_envoy(&opt, &members);
    validate_envoy(&opt);

    // 5: consul-sync's config, from the sample, checked.
    let sync_port = free_port();
    let control = format!("http://127.0.0.1:{}", ports["control"]);
    let mut yml = std::fs::read_to_string(opt.join("dynamic-sharding.yml")).unwrap();
    yml = swap(
        &yml,
        "  addr: localhost:8500",
        &format!("  addr: {}", consul.addr()),
        1,
    );
    let servers: String = members.iter().map(|m| format!("    - {m}\n")).collect();
    yml = swap(&yml, "    - 127.0.0.1:9091\n", &servers, 1);
    yml = swap(
        &yml,
        "    - http://127.0.0.1:9293\n",
        &format!("    - {control}\n"),
        1,
    );
    yml = swap(
        &yml,
        "http_listen_addr: 127.0.0.1:9294",
        &format!("http_listen_addr: 127.0.0.1:{sync_port}"),
        1,
    );
    yml = swap(&yml, "  interval: 5s", "  interval: 1s", 1);
    yml = swap(&yml, "  timeout: 2s", "  timeout: 1s", 1);
    std::fs::write(etc.join("dynamic-sharding.yml"), yml).unwrap();
    let check = run(Command::new(&sync_bin)
        .arg("check-config")
        .arg(etc.join("dynamic-sharding.yml"))
        .env("SHARDING_CONTROL_TOKEN", &token));
    assert!(
        stdout(&check).contains("SUCCESS: 3 pushgateways to register, 1 Envoys"),
        "{}",
        stdout(&check)
    );

    // 6: the units: they verify, and their commands start a working pair.
    verify_units(&opt.join("systemd"));
    let envoy_unit = unit_settings(&opt.join("systemd").join(UNITS[0]));
    let sync_unit = unit_settings(&opt.join("systemd").join(UNITS[1]));
    let exec = |u: &[(String, String)], k: &str| u.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert!(exec(&envoy_unit, "ExecStart")
        .unwrap()
        .contains("--disable-hot-restart"));
    assert_eq!(
        exec(&sync_unit, "ExecReload").as_deref(),
        Some("/bin/kill -HUP $MAINPID")
    );
    let envoy = start_unit(&dir, UNITS[0], &opt, &etc);
    let sync = start_unit(&dir, UNITS[1], &opt, &etc);
    let ready = format!("http://127.0.0.1:{sync_port}/-/ready");
    let mut units = [envoy, sync];
    wait_until(
        "consul-sync is ready: Envoy took the list",
        Duration::from_secs(60),
        || {
            for p in units.iter_mut() {
                assert!(p.is_running(), "{} exited:\n{}", p.name(), p.log_tail(30));
            }
            matches!(try_http_get(&ready), Ok((200, _))).then_some(())
        },
    );
    let list: Value =
        serde_json::from_str(&try_http_get(&format!("{control}/-/sharding/members")).unwrap().1).unwrap();
    let mut want = members.clone();
    want.sort();
    assert_eq!(list["members"], serde_json::json!(want), "{list}");
    assert!(
        list["version"].as_u64().unwrap() > 0,
        "consul-sync's list, not the bootstrap one"
    );

    // 7: Prometheus with the bundle's rules and the README's jobs.
    run(Command::new(bin("promtool"))
        .args(["check", "rules"])
        .arg(opt.join("prometheus/rules.yml")));
    let prom_port = free_port();
    let prom_yml = dir.write(
        "prometheus.yml",
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n\
             \x20 - job_name: envoy\n    metrics_path: /stats/prometheus\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n\
             \x20 - job_name: consul-sync\n    static_configs:\n      - targets: ['127.0.0.1:{sync_port}']\n",
            opt.join("prometheus/rules.yml").display(),
            ports["admin"]
        ),
    );
    let mut prom_cmd = Command::new(bin("prometheus"));
    prom_cmd
        .arg(format!("--config.file={}", prom_yml.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("prometheus").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"));
    let _prometheus = Proc::spawn("prometheus", prom_cmd, &dir);
    let prom = format!("http://127.0.0.1:{prom_port}/api/v1");
    wait_until(
        "Prometheus scrapes Envoy and consul-sync",
        Duration::from_secs(30),
        || {
            let (_, body) = try_http_get(&format!("{prom}/query?query=up")).ok()?;
            let v: Value = serde_json::from_str(&body).ok()?;
            let up = v["data"]["result"]
                .as_array()?
                .iter()
                .filter(|s| s["value"][1] == "1")
                .count();
            (up == 2).then_some(())
        },
    );
    let (_, rules) = try_http_get(&format!("{prom}/rules")).unwrap();
    let rules: Value = serde_json::from_str(&rules).unwrap();
    let loaded = rules["data"]["groups"][0]["rules"].as_array().unwrap();
    // Every alert the bundle ships is loaded, whatever their number.
    let shipped = std::fs::read_to_string(opt.join("prometheus/rules.yml")).unwrap();
    let shipped = markdown::alert_runbooks(&shipped).len();
    assert!(
        shipped >= 10,
        "alerts read from the bundle's rules.yml: {shipped}"
    );
    assert_eq!(loaded.len(), shipped, "{rules}");
    assert!(loaded.iter().all(|r| r["health"] == "ok"), "{rules}");

    // 8: the dashboard imports into Grafana: current schema, a Prometheus data source variable.
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(opt.join("grafana/dynamic-sharding.json")).unwrap())
            .unwrap();
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 39);
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(vars
        .iter()
        .any(|v| v["type"] == "datasource" && v["query"] == "prometheus" && v["name"] == "datasource"));

    // 9: a push through proxy mode lands on the owner `consul-sync owner` names.
    let path = "/metrics/job/setup_check/instance/a";
    let pushed = http_request(
        "PUT",
        &format!("http://127.0.0.1:{}{path}", ports["proxy"]),
        &[],
        b"setup_check 1\n",
    );
    assert_eq!(pushed.status, 200, "{}", pushed.body);
    let owner = stdout(&run(
        Command::new(&sync_bin).args(["owner", "--from", &control, path])
    ));
    let holder = pgs
        .iter()
        .find(|p| p.addr() == owner)
        .unwrap_or_else(|| panic!("owner {owner} is not one of {members:?}"));
    let (_, metrics) = try_http_get(&format!("{}/metrics", holder.url())).unwrap();
    assert!(
        metrics.contains("setup_check{instance=\"a\",job=\"setup_check\"} 1"),
        "{metrics}"
    );
    for other in pgs.iter().filter(|p| p.addr() != owner) {
        assert!(!try_http_get(&format!("{}/metrics", other.url()))
            .unwrap()
            .1
            .contains("setup_check{"));
    }
    let redirect = http_request(
        "PUT",
        &format!("http://127.0.0.1:{}{path}", ports["redirect"]),
        &[],
        b"setup_check 2\n",
    );
    assert_eq!(redirect.status, 307);
    assert_eq!(
        redirect.header("location"),
        Some(format!("http://{owner}{path}").as_str())
    );
}

/// `systemd-analyze verify` on the shipped units: no complaint at all (unknown keys are only
/// warnings to it, so any output fails).
fn verify_units(folder: &Path) {
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify").args(UNITS.iter().map(|u| folder.join(u)));
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "systemd-analyze: {e}: the unit check needs systemd's systemd-analyze: apt-get install systemd"
        )
    });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}

fn walk(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                found.push(p.strip_prefix(root).unwrap().to_str().unwrap().to_owned());
            }
        }
    }
    found
}

fn rand_u128() -> u128 {
    use std::io::Read;
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    u128::from_le_bytes(buf)
}

/// The two YAML blocks of docs/production.md's "Fetching the filter over HTTP", in order.
fn remote_blocks() -> (String, String) {
    let section = markdown::section(
        &repo_root().join("docs/production.md"),
        "Fetching the filter over HTTP",
    );
    let blocks: Vec<String> = section
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().to_owned())
        .collect();
    assert_eq!(blocks.len(), 2, "{section}");
    (blocks[0].clone(), blocks[1].clone())
}

/// The bundle's envoy.yaml with docs/production.md's remote `code:` and cluster, served from `port`,
/// checked against `sha256`.
fn remote_config(envoy_yaml: &str, port: u16, sha256: &str) -> String {
    let (code, cluster) = remote_blocks();
    let code = swap(
        &code,
        "artifacts.example.internal:8080",
        &format!("127.0.0.1:{port}"),
        1,
    );
    let code = swap(&code, "<sha256 of dynamic_sharding.wasm>", sha256, 1);
    let cluster = swap(
        &cluster,
        "address: artifacts.example.internal, port_value: 8080",
        &format!("address: 127.0.0.1, port_value: {port}"),
        1,
    );
    let text = swap(
        envoy_yaml,
        "                  code:\n                    local: { filename: dynamic_sharding.wasm }\n",
        &code,
        1,
    );
    // `clusters:` is the last key of the shipped file.
    assert!(text.rfind("  clusters:").unwrap() > text.rfind("  listeners:").unwrap());
    format!("{}\n{cluster}", text.trim_end())
}

#[test]
fn envoy_fetches_the_filter_over_http_as_the_docs_show() {
    let dir = TestDir::new("ops-remote-wasm");
    let opt = bundle(&dir);
    let pg = Pushgateway::start(&dir);
    let ports = configure_envoy(&opt, &[pg.addr()]);
    let envoy_yaml = std::fs::read_to_string(opt.join("envoy.yaml")).unwrap();

    // The artifact server: the path docs/production.md shows, under a plain HTTP server.
    let www = dir.join("www/dynamic-sharding/0.1.0");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy(
        opt.join("dynamic_sharding.wasm"),
        www.join("dynamic_sharding.wasm"),
    )
    .unwrap();
    let sha = stdout(&run(
        Command::new("sha256sum").arg(www.join("dynamic_sharding.wasm"))
    ));
    let sha = sha.split_whitespace().next().unwrap().to_owned();
    let http_port = free_port();
    let mut server = Command::new("python3");
    server
        .args(["-m", "http.server", "--bind", "127.0.0.1", &http_port.to_string()])
        .current_dir(dir.join("www"));
    let _server = Proc::spawn("artifacts", server, &dir);
    wait_until("the artifact server answers", Duration::from_secs(10), || {
        try_http_get(&format!("http://127.0.0.1:{http_port}/")).ok()
    });

    // Envoy runs where no .wasm lies: the filter can only come over HTTP.
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let start = |name: &str, sha: &str| {
        let cfg = dir.write(
            &format!("{name}.yaml"),
            remote_config(&envoy_yaml, http_port, sha),
        );
        let mut cmd = Command::new(bin("envoy"));
        cmd.arg("-c")
            .arg(&cfg)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warning",
            ])
            .env("SHARDING_CONTROL_TOKEN", "t")
            .current_dir(&elsewhere);
        Proc::spawn(name, cmd, &dir)
    };
    let control = format!("http://127.0.0.1:{}/-/sharding/members", ports["control"]);
    let lookup = format!("http://127.0.0.1:{}/metrics/job/remote", ports["redirect"]);
    {
        let mut envoy = start("envoy-remote", &sha);
        wait_until("Envoy serves the fetched filter", Duration::from_secs(30), || {
            assert!(envoy.is_running(), "{}", envoy.log_tail(30));
            try_http_request("GET", &control, &[], b"")
                .ok()
                .filter(|r| r.status == 200)
        });
        let r = http_request("GET", &lookup, &[], b"");
        assert_eq!(r.body, format!("nextUrl:http://{}/metrics/job/remote", pg.addr()));
    }

    // A wrong hash: Envoy fails closed. It retries the fetch, then answers every request with 503;
    // no request ever reaches the filter.
    let mut envoy = start("envoy-wrong-hash", &"1".repeat(64));
    let closed = wait_until(
        "Envoy answers 503 after its retries",
        Duration::from_secs(30),
        || {
            assert!(envoy.is_running(), "{}", envoy.log_tail(30));
            let answers: Vec<u16> = [&control, &lookup]
                .iter()
                .filter_map(|u| try_http_request("GET", u, &[], b"").ok().map(|r| r.status))
                .collect();
            assert!(!answers.contains(&200), "served with a wrong sha256: {answers:?}");
            (answers == [503, 503]).then_some(answers)
        },
    );
    assert_eq!(closed, [503, 503]);
    assert!(
        envoy.log().contains("Plugin dynamic_sharding failed to load"),
        "{}",
        envoy.log_tail(20)
    );
}
