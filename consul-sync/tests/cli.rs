//! consul-sync's helper subcommands as a user runs them: `check-config`, `owner` (offline and
//! `--from` a real Envoy, compared with what that Envoy answers), `--version`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};
use testkit::envoy::{Envoy, EnvoyOptions};
use testkit::{http_request, TestDir};

fn consul_sync(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_consul-sync"))
        .args(args)
        .env_remove("SHARDING_CONTROL_TOKEN")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_names_the_crate_version() {
    let out = consul_sync(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out).0.trim(),
        format!("consul-sync {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_accepts_a_good_file_and_names_every_problem_of_a_bad_one() {
    let dir = TestDir::new("check-config");
    let token = dir.write("token", "secret\n");
    let good = dir.write(
        "good.yml",
        format!(
            "consul_server:\n  addr: 127.0.0.1:8500\npushgateway:\n  servers: [10.0.0.1:9091, 10.0.0.2]\n\
             envoy:\n  control_urls: [http://127.0.0.1:9293]\n  token_file: {}\n",
            token.display()
        ),
    );
    let out = consul_sync(&["check-config", good.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("SUCCESS: 2 pushgateways to register, 1 Envoys"),
        "{stdout}"
    );

    // Four independent mistakes in four places: each is named with its key and line.
    let bad = dir.write(
        "bad.yml",
        "consul_server:\n  addr: 127.0.0.1:8500\npushgateway:\n  servers:\n    - 10.0.0.1:70000\n\
         check:\n  interval: often\nresync_intervall: 10s\nenvoy:\n  control_urls: [http://127.0.0.1:9293]\n",
    );
    let out = consul_sync(&["check-config", bad.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("FAILED: 4 problems"), "{stderr}");
    for (what, why) in [
        ("pushgateway.servers[0] (line 5)", "port \"70000\""),
        ("check.interval (line 7)", "invalid duration \"often\""),
        ("resync_intervall (line 8)", "unknown field"),
        (
            "envoy.control_urls is set but there is no control token",
            "SHARDING_CONTROL_TOKEN",
        ),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("{what} is not named:\n{stderr}"));
        assert!(line.contains(why), "{line}");
        assert!(line.contains("bad.yml"), "the file is named: {line}");
    }

    // With standbys, the name they are registered under must fit Consul's limit as well.
    let long = dir.write(
        "long.yml",
        format!(
            "register_service_name: {}\npushgateway:\n  servers: [10.0.0.1]\n  standbys: {{10.0.0.1: 10.0.1.1}}\n",
            "p".repeat(56)
        ),
    );
    let out = consul_sync(&["check-config", long.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("long.yml")
            && stderr.contains("register_service_name (line 1)")
            && stderr.contains("64 characters, above the limit of 63"),
        "{stderr}"
    );

    let out = consul_sync(&["check-config", dir.join("missing.yml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("missing.yml: cannot read"),
        "{}",
        text(&out).1
    );
}

/// The owner Envoy names in its answer to a lookup (`GET` on the redirect listener).
fn envoy_owner(envoy: &Envoy, path: &str) -> String {
    let r = http_request("GET", &format!("{}{path}", envoy.redirect_url()), &[], b"");
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    r.header("x-sharding-owner").unwrap().to_owned()
}

#[test]
fn owner_agrees_with_envoy_offline_and_from_its_live_list() {
    let dir = TestDir::new("owner");
    let members = ["127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103", "[::1]:9104"];
    let envoy = Envoy::start(
        &dir,
        EnvoyOptions {
            members: members.iter().map(|m| m.to_string()).collect(),
            ..EnvoyOptions::default()
        },
    );
    // Spellings of one group must give one owner; many groups must reach every member.
    let mut paths: Vec<String> = (0..40)
        .map(|i| format!("/metrics/job/batch/instance/host-{i}"))
        .collect();
    paths.push("/metrics/job/batch/b/2/a/1".into());
    paths.push("/metrics/job@base64/YmF0Y2g/a/1/b/2".into());
    paths.push("/metrics/job/batch//a/1/./b/2".into());
    let listed = members.join(",");
    let mut seen = std::collections::BTreeSet::new();
    for path in &paths {
        let want = envoy_owner(&envoy, path);
        let out = consul_sync(&["owner", "--members", &listed, path]);
        assert!(out.status.success(), "{path}: {}", text(&out).1);
        assert_eq!(text(&out).0.trim(), want, "offline owner of {path}");
        seen.insert(want);
    }
    assert_eq!(
        seen.len(),
        members.len(),
        "40 groups reach every member: {seen:?}"
    );
    let spellings: Vec<String> = paths[40..]
        .iter()
        .map(|p| text(&consul_sync(&["owner", "--members", &listed, p])).0)
        .collect();
    assert!(spellings.iter().all(|s| *s == spellings[0]), "{spellings:?}");

    // The live list moved on: --from follows it, a full URL with a query is accepted.
    assert_eq!(
        envoy.put_members(5, &["127.0.0.1:9201", "127.0.0.1:9202"]).status,
        200
    );
    for path in &paths[..10] {
        let want = envoy_owner(&envoy, path);
        assert!(want.starts_with("127.0.0.1:920"), "{want}");
        let url = format!("{}{path}?x=1", envoy.redirect_url());
        let out = consul_sync(&["owner", "--from", &envoy.control_url(), &url]);
        assert!(out.status.success(), "{path}: {}", text(&out).1);
        assert_eq!(text(&out).0.trim(), want, "live owner of {path}");
    }
}

#[test]
fn owner_refuses_bad_input_naming_it() {
    let out = consul_sync(&["owner", "--members", "a:1,b:1", "/metrics/job/j/odd"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out)
            .1
            .contains("\"/metrics/job/j/odd\": odd number of components"),
        "{}",
        text(&out).1
    );

    let out = consul_sync(&["owner", "--members", "a:1,nope", "/metrics/job/j"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("--members: members[1]"), "{}", text(&out).1);

    let out = consul_sync(&["owner", "--members", "", "/metrics/job/j"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("the member list is empty"),
        "{}",
        text(&out).1
    );

    // Nothing listens on port 1.
    let out = consul_sync(&["owner", "--from", "http://127.0.0.1:1", "/metrics/job/j"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("--from http://127.0.0.1:1"),
        "{}",
        text(&out).1
    );

    let out = consul_sync(&["owner", "/metrics/job/j"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap's usage error: --members or --from is required"
    );
}
