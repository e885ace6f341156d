//! No secret consul-sync holds (Consul ACL token, basic-auth password, Envoy control token, reload
//! token) ever
//! reaches its log, at the most verbose level, also while things fail: an Envoy that does not
//! answer, an Envoy that refuses the token, a Consul that goes away.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;
use testkit::envoy::{Envoy, EnvoyOptions};
use testkit::{free_port, try_http_get, wait_until, Consul, Proc, Pushgateway, TestDir};

const ACL_TOKEN: &str = "acl-3f9c1e77";
const PASSWORD: &str = "pw-b81d52aa";
const CONTROL_TOKEN: &str = "ctl-6e04c9d3";
const RELOAD_TOKEN: &str = "rld-51a7e2c0";

#[test]
fn no_secret_reaches_the_log_even_at_trace_level_and_on_errors() {
    let dir = TestDir::new("secrets");
    let pg = Pushgateway::start(&dir);
    let mut consul = Consul::start(&dir);
    let good = Envoy::start(
        &dir,
        EnvoyOptions {
            token: Some(CONTROL_TOKEN.to_owned()),
            ..Default::default()
        },
    );
    // Another token: every push to it is refused with 401.
    let refusing = Envoy::start(
        &dir,
        EnvoyOptions {
            token: Some("some-other-token".to_owned()),
            ..Default::default()
        },
    );
    let http_port = free_port();
    let dead_envoy = format!("http://127.0.0.1:{}", free_port());
    let token_file = dir.write("control-token", format!("{CONTROL_TOKEN}\n"));
    let reload_token_file = dir.write("reload-token", format!("{RELOAD_TOKEN}\n"));
    let config = dir.write(
        "consul-sync.yml",
        format!(
            "consul_server:\n  addr: {}\n  username: ops\n  password: {PASSWORD}\n  token: {ACL_TOKEN}\n\
             pushgateway:\n  servers: ['{}']\nhttp_listen_addr: 127.0.0.1:{http_port}\n\
             check: {{interval: 1s, timeout: 1s}}\n\
             envoy:\n  control_urls: ['{}', '{}', '{dead_envoy}']\n  token_file: {}\nresync_interval: 1s\n\
             reload_token_file: {}\n",
            consul.addr(),
            pg.addr(),
            good.control_url(),
            refusing.control_url(),
            token_file.display(),
            reload_token_file.display()
        ),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_consul-sync"));
    cmd.arg(format!("--config.file={}", config.display()))
        .env("RUST_LOG", "trace")
        .env("NO_COLOR", "1");
    let mut sync = Proc::spawn("consul-sync", cmd, &dir);
    wait_until("Envoy got the member list", Duration::from_secs(20), || {
        assert!(sync.is_running(), "consul-sync exited:\n{}", sync.log_tail(30));
        (good.members().1 == vec![pg.addr()]).then_some(())
    });
    // A reload with the token, and one with a wrong token.
    let reload = format!("http://127.0.0.1:{http_port}/-/reload");
    for token in [RELOAD_TOKEN, "wrong"] {
        let auth = format!("Bearer {token}");
        testkit::http_request("POST", &reload, &[("authorization", &auth)], b"");
    }
    // Consul goes away: errors are logged.
    consul.stop();
    let metrics = format!("http://127.0.0.1:{http_port}/metrics");
    wait_until("consul-sync saw Consul down", Duration::from_secs(20), || {
        let (_, body) = try_http_get(&metrics).ok()?;
        body.lines().any(|l| l == "consul_sync_consul_up 0").then_some(())
    });
    sync.stop();
    let log = sync.log();
    let log: String = log
        .lines()
        .filter(|l| !l.starts_with("---- testkit"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(log.contains("401"), "the refusing Envoy was reached and logged");
    assert!(log.contains(&dead_envoy), "the dead Envoy was tried and logged");
    let basic = base64_standard(format!("ops:{PASSWORD}").as_bytes());
    assert_eq!(basic, "b3BzOnB3LWI4MWQ1MmFh");
    for secret in [ACL_TOKEN, PASSWORD, CONTROL_TOKEN, RELOAD_TOKEN, basic.as_str()] {
        assert!(
            !log.contains(secret),
            "a secret reached consul-sync's log ({} lines)",
            log.lines().count()
        );
    }
}

/// Standard base64, as HTTP basic auth sends `user:password` (a leaked header would show this).
fn base64_standard(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
