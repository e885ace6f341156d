//! Hardened edges against a real Envoy with the shipped configuration: control-token rotation,
//! a clear answer at every limit, and a broken or missing `.wasm` that stops Envoy instead of
//! letting it serve pushes unsharded.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use dynamic_sharding::members::{MAX_MEMBERS, MAX_UPDATE_BYTES};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::envoy::{Envoy, EnvoyOptions, EnvoyPorts};
use testkit::{bin, http_request, repo_root, try_http_request, Proc, TestDir};

fn envoy(dir: &TestDir, token: &str) -> Envoy {
    Envoy::start(
        dir,
        EnvoyOptions {
            members: vec!["127.0.0.1:19091".into(), "127.0.0.1:19092".into()],
            token: Some(token.to_owned()),
            ..Default::default()
        },
    )
}

fn envoy_log(e: &Envoy) -> String {
    without_harness_lines(&e.proc.log())
}

/// A process log without the harness's lines (they show the environment and the config path).
fn without_harness_lines(log: &str) -> String {
    log.lines()
        .filter(|l| !l.starts_with("---- testkit"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn both_tokens_are_accepted_during_a_rotation_and_neither_is_logged() {
    let dir = TestDir::new("token-rotation");
    let e = envoy(&dir, "new-7c2d, old-91fe");
    let body = |v: u64, m: &str| format!(r#"{{"version":{v},"members":["{m}"]}}"#).into_bytes();
    assert_eq!(e.put_members_raw(Some("old-91fe"), &body(1, "a:1")).status, 200);
    assert_eq!(e.put_members_raw(Some("new-7c2d"), &body(2, "b:1")).status, 200);
    for wrong in ["new-7c2d,old-91fe", "old-91f", "new-7c2d old-91fe", "other"] {
        let r = e.put_members_raw(Some(wrong), &body(3, "c:1"));
        assert_eq!(r.status, 401, "{wrong:?}: {}", r.body);
    }
    assert_eq!(e.members(), (2, vec!["b:1".to_owned()]));
    let log = envoy_log(&e);
    assert!(log.contains("2 tokens (a rotation)"), "{log}");
    assert!(
        !log.contains("new-7c2d") && !log.contains("old-91fe"),
        "a token reached the log"
    );
}

#[test]
fn every_limit_has_a_clear_answer() {
    let dir = TestDir::new("limits");
    let e = envoy(&dir, "t0k");
    let put = |body: &[u8]| e.put_members_raw(Some("t0k"), body);

    // Members per list.
    let too_many: Vec<String> = (0..=MAX_MEMBERS)
        .map(|i| format!("10.0.{}.{}:9091", i / 250, i % 250))
        .collect();
    let r = put(serde_json::json!({"version": 1, "members": too_many})
        .to_string()
        .as_bytes());
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains(&format!("at most {MAX_MEMBERS}")), "{}", r.body);
    let most: Vec<String> = too_many[..MAX_MEMBERS].to_vec();
    assert_eq!(
        put(serde_json::json!({"version": 1, "members": most})
            .to_string()
            .as_bytes())
        .status,
        200
    );

    // Control body size.
    let big = format!(
        r#"{{"version":2,"members":[],"pad":"{}"}}"#,
        "x".repeat(MAX_UPDATE_BYTES)
    );
    let r = put(big.as_bytes());
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains(&MAX_UPDATE_BYTES.to_string()), "{}", r.body);

    // Many labels: no limit of the filter's own below the header size; the push is routed.
    let labels: String = (0..400).map(|i| format!("/l{i}/v{i}")).collect();
    let r = http_request(
        "PUT",
        &format!("{}/metrics/job/j{labels}", e.redirect_url()),
        &[],
        b"m 1\n",
    );
    assert_eq!(r.status, 307, "{}", r.body);

    // Path length and header size: Envoy's 60 KiB request-header limit answers 431 before the
    // filter runs, so nothing is forwarded.
    let long = "x".repeat(70 * 1024);
    let status = raw_status(
        e.ports.redirect,
        &format!("PUT /metrics/job/{long} HTTP/1.1\r\nHost: x\r\n"),
    );
    assert_eq!(status, 431, "a 70 KiB path");
    let status = raw_status(
        e.ports.proxy,
        &format!("PUT /metrics/job/j HTTP/1.1\r\nHost: x\r\nx-big: {long}\r\n"),
    );
    assert_eq!(status, 431, "a 70 KiB header");
}

/// The status Envoy answers to a request head (a client library refuses such long URIs).
fn raw_status(port: u16, head: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("{head}Content-Length: 4\r\n\r\nm 1\n").as_bytes())
        .unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line {line:?}"))
}

/// Envoy started with `wasm` as the filter: it must exit with an error naming the module, and
/// never accept a push on its data listeners meanwhile.
/// Starts Envoy with the shipped config on `wasm` and checks it exits, answers nothing, and says
/// `says` in its log.
fn envoy_refuses_to_start(dir: &TestDir, wasm: &str, name: &str, says: &str) {
    let ports = EnvoyPorts::free();
    let out = Command::new("python3")
        .arg(repo_root().join("scripts/render-envoy-config.py"))
        .arg("--ports")
        .arg(format!(
            "{},{},{},{}",
            ports.redirect, ports.proxy, ports.control, ports.admin
        ))
        .args([
            "--address",
            "127.0.0.1",
            "--wasm",
            wasm,
            "--members",
            "127.0.0.1:19091",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = dir.write(&format!("{name}.yaml"), out.stdout);
    let mut cmd = Command::new(bin("envoy"));
    cmd.arg("-c").arg(&config).args([
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "--log-level",
        "warning",
    ]);
    let mut proc = Proc::spawn(name, cmd, dir);
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = format!("http://127.0.0.1:{}/metrics/job/j", ports.redirect);
    let status = loop {
        if let Some(s) = proc.wait_exit(Duration::from_millis(100)) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: Envoy still runs after 30 s with a broken filter"
        );
        if let Ok(r) = try_http_request("PUT", &url, &[], b"m 1\n") {
            panic!(
                "{name}: Envoy answered a push with {} with a broken filter",
                r.status
            );
        }
    };
    assert!(!status.success(), "{name}: Envoy exited with success");
    let log = without_harness_lines(&proc.log());
    assert!(
        log.contains(says),
        "{name}: Envoy's log does not say {says:?}:\n{log}"
    );
}

#[test]
fn a_broken_or_missing_wasm_stops_envoy() {
    let dir = TestDir::new("broken-wasm");
    let missing = dir.join("missing.wasm");
    let missing = missing.to_str().unwrap();
    envoy_refuses_to_start(
        &dir,
        missing,
        "envoy-missing-wasm",
        &format!("Invalid path: {missing}"),
    );
    let garbage = dir.write("garbage.wasm", b"\0asm this is not a module");
    envoy_refuses_to_start(
        &dir,
        garbage.to_str().unwrap(),
        "envoy-garbage-wasm",
        "Unable to create Wasm plugin dynamic_sharding",
    );
}

/// NUL is valid UTF-8, pushgateway and Prometheus hold it, and the filter's parser accepts it
/// (the differential test). Envoy's path normalisation (`normalize_path: true` in the shipped
/// config) refuses a `%00` in the path with a bare 400 before the filter runs: the push is not
/// forwarded anywhere. This pins that behaviour until the shipped config changes.
#[test]
fn a_nul_in_a_value_is_refused_by_envoy_before_the_filter() {
    let dir = TestDir::new("nul-value");
    let e = envoy(&dir, "t0k");
    let r = http_request(
        "PUT",
        &format!("{}/metrics/job/j/a/x%00y", e.redirect_url()),
        &[],
        b"m 1\n",
    );
    assert_eq!((r.status, r.body.as_str()), (400, ""), "{:?}", r.headers);
    assert_eq!(e.stat("bad_requests_total"), 0, "the filter never saw it");
    assert!(dynamic_sharding::grouping_key::GroupingKey::from_path("/metrics/job/j/a/x%00y").is_ok());
}
