//! The harness against the real binaries: each helper does what its name says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};
use testkit::pushgateway::labels;
use testkit::{
    free_port, http_request, try_http_get, try_http_request, wait_until, Consul, Proc, Pushgateway, TestDir,
};

#[test]
fn free_ports_are_never_handed_out_twice() {
    let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ports.len());
}

#[test]
fn proc_stop_kill_freeze_and_log() {
    let dir = TestDir::new("proc");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo hello; echo oops >&2; exec sleep 60"]);
    let mut p = Proc::spawn("sleeper", cmd, &dir);
    wait_until("both lines are logged", Duration::from_secs(5), || {
        let log = p.log();
        // Whole lines: the log's first line is the command, which contains both words.
        (log.lines().any(|l| l == "hello") && log.lines().any(|l| l == "oops")).then_some(())
    });
    assert!(p.is_running());
    p.freeze();
    p.thaw();
    assert!(p.is_running());
    let start = Instant::now();
    let status = p.stop();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "sleep dies on SIGTERM at once"
    );
    assert!(!status.success());
    assert!(!p.is_running());

    // A process that ignores SIGTERM is killed after the grace time.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"]);
    let mut p = Proc::spawn("stubborn", cmd, &dir);
    wait_until("stubborn is ready", Duration::from_secs(5), || {
        p.log().lines().any(|l| l == "ready").then_some(())
    });
    let start = Instant::now();
    p.stop();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(6),
        "took {took:?}"
    );
}

#[test]
fn test_dir_is_removed_on_drop() {
    let dir = TestDir::new("cleanup");
    let path = dir.path().to_path_buf();
    dir.write("x", "y");
    assert!(path.join("x").is_file());
    drop(dir);
    assert!(!path.exists());
}

#[test]
fn pushgateway_lists_a_push_and_its_value() {
    let dir = TestDir::new("pushgateway");
    let pg = Pushgateway::start(&dir);
    assert_eq!(pg.push("/metrics/job/j/instance/i", "some_metric 42\n"), 200);
    let group = labels(&[("job", "j"), ("instance", "i")]);
    assert_eq!(pg.groups(), vec![group.clone()]);
    assert_eq!(pg.metric_value(&group, "some_metric"), Some(42.0));
    assert_eq!(pg.metric_value(&group, "missing"), None);
    // Redirects are not followed and statuses are not errors.
    let r = http_request("PUT", &format!("{}/metrics//job/x", pg.url()), &[], b"m 1\n");
    assert_eq!(r.status, 301, "{r:?}");
    pg.wipe();
    assert!(pg.groups().is_empty());
}

#[test]
fn consul_registers_and_survives_a_restart_on_the_same_ports() {
    let dir = TestDir::new("consul");
    let pg = Pushgateway::start(&dir);
    let mut consul = Consul::start(&dir);
    let reg = format!(
        r#"{{"ID":"{id}","Name":"pg","Address":"127.0.0.1","Port":{port},
            "Check":{{"HTTP":"{url}/-/healthy","Interval":"1s","Timeout":"1s"}}}}"#,
        id = pg.addr().replace(':', "_"),
        port = pg.port,
        url = pg.url()
    );
    let r = http_request(
        "PUT",
        &format!("{}/v1/agent/service/register", consul.url()),
        &[],
        reg.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let id = format!("127.0.0.1_{}", pg.port);
    wait_until("the service passes", Duration::from_secs(10), || {
        (consul.passing_ids("pg") == vec![id.clone()]).then_some(())
    });
    let ports = consul.ports;
    consul.stop();
    assert!(try_http_get(&format!("{}/v1/status/leader", consul.url())).is_err());
    let consul = Consul::start_on(&dir, ports);
    wait_until(
        "the service passes after the restart",
        Duration::from_secs(10),
        || (consul.passing_ids("pg") == vec![id.clone()]).then_some(()),
    );
}

#[test]
#[should_panic(expected = "run ./build.sh deps (or set NOSUCHTHING_BIN=...)")]
fn a_missing_binary_names_the_install_command() {
    testkit::bin("nosuchthing");
}

#[test]
fn a_client_agent_with_acls_keeps_its_services_across_a_restart() {
    let dir = TestDir::new("consul-client-acl");
    let pg = Pushgateway::start(&dir);
    let server = Consul::start_with_acl(&dir, "bootstrap-secret");
    let mut client = Consul::start_client(&dir, &server);
    let reg = format!(
        r#"{{"ID":"pg1","Name":"pg","Address":"127.0.0.1","Port":{},
            "Check":{{"HTTP":"{}/-/healthy","Interval":"1s","Timeout":"1s"}}}}"#,
        pg.port,
        pg.url()
    );
    // The anonymous token may do nothing; a token with the rights may.
    let anonymous = try_http_request(
        "PUT",
        &format!("{}/v1/agent/service/register", client.url()),
        &[],
        reg.as_bytes(),
    )
    .unwrap();
    assert_eq!(anonymous.status, 403, "{}", anonymous.body);
    // Health answers need node:read too.
    let token = server.create_token(
        "pg-writer",
        r#"service_prefix "" { policy = "write" } node_prefix "" { policy = "read" }"#,
    );
    let r = try_http_request(
        "PUT",
        &format!("{}/v1/agent/service/register", client.url()),
        &[("X-Consul-Token", &token.secret)],
        reg.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    wait_until("the service passes", Duration::from_secs(15), || {
        (server.passing_ids("pg") == ["pg1"]).then_some(())
    });
    client.restart(&dir);
    wait_until(
        "the service passes again after the client's restart",
        Duration::from_secs(20),
        || (client.passing_ids("pg") == ["pg1"]).then_some(()),
    );
    // Rights taken away: the service is hidden from that token.
    let read = |t: &str| {
        try_http_request(
            "GET",
            &format!("{}/v1/health/service/pg", client.url()),
            &[("X-Consul-Token", t)],
            b"",
        )
        .unwrap()
    };
    assert!(read(&token.secret).body.contains("pg1"));
    server.set_rules(&token, r#"node_prefix "" { policy = "read" }"#);
    wait_until("the token lost service:read", Duration::from_secs(10), || {
        let r = read(&token.secret);
        (r.status == 200 && r.body.trim() == "[]").then_some(())
    });
}
