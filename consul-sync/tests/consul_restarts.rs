//! A restarted Consul and a token that lost its rights, under load, with the shipped check
//! settings (5 s interval, 2 s timeout): while every pushgateway lives, Envoy must never route with
//! a list that lacks one (an empty list answers every push `503`; a partial one moves groups twice),
//! and afterwards consul-sync must still follow Consul (a pushgateway killed then leaves the list).
//!
//! A restarted agent's HTTP checks start critical, and a client agent that leaves the cluster takes
//! its services out of the catalog until it is back; a token without `service:read` reads `200 []`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{serial, sorted, ConsulSync, SyncOptions};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::envoy::{Envoy, EnvoyOptions};
use testkit::{try_http_request, wait_until, AclToken, Consul, Pushgateway, TestDir};

/// The bootstrap token of the Consul servers with ACLs.
const BOOTSTRAP: &str = "bootstrap-secret";
/// What consul-sync's token may do: register and read the pushgateways, hold its lease.
const SYNC_RULES: &str = r#"
service_prefix "" { policy = "write" }
node_prefix "" { policy = "read" }
session_prefix "" { policy = "write" }
key_prefix "dynamic-sharding/" { policy = "write" }
"#;
/// The same without `service:read` (and `node:read`).
const LOST_RULES: &str = r#"
session_prefix "" { policy = "write" }
key_prefix "dynamic-sharding/" { policy = "write" }
"#;

/// Everything one test runs. Fields drop in order: processes first, the folder last.
struct World {
    sync: ConsulSync,
    envoy: Envoy,
    /// The agent consul-sync talks to when it is a client agent.
    client: Option<Consul>,
    server: Consul,
    token: Option<AclToken>,
    pgs: Vec<Pushgateway>,
    dir: TestDir,
}

impl World {
    /// Three pushgateways, a Consul server (with ACLs when `acl`), a client agent joined to it
    /// when `client` (then consul-sync talks to the client), Envoy bootstrapped with the three,
    /// and consul-sync with the shipped check settings, once Envoy holds its list.
    fn start(name: &str, acl: bool, client: bool) -> World {
        let dir = TestDir::new(name);
        let pgs: Vec<Pushgateway> = (0..3).map(|_| Pushgateway::start(&dir)).collect();
        let server = if acl {
            Consul::start_with_acl(&dir, BOOTSTRAP)
        } else {
            Consul::start(&dir)
        };
        let client = client.then(|| Consul::start_client(&dir, &server));
        let token = acl.then(|| server.create_token("consul-sync", SYNC_RULES));
        let all = sorted(pgs.iter().map(Pushgateway::addr).collect());
        let envoy = Envoy::start(
            &dir,
            EnvoyOptions {
                members: all.clone(),
                ..Default::default()
            },
        );
        let agent = client.as_ref().unwrap_or(&server);
        let mut options = SyncOptions::new(agent.addr(), all.clone());
        options.consul_token = token.as_ref().map(|t| t.secret.clone());
        options.control_urls = vec![envoy.control_url()];
        options.interval = "5s";
        options.timeout = "2s";
        let sync = ConsulSync::start(&dir, options);
        wait_until(
            "Envoy holds consul-sync's list of the three",
            Duration::from_secs(40),
            || {
                let (version, members) = envoy.try_members().ok()?;
                (version > 0 && sorted(members) == all).then_some(())
            },
        );
        World {
            sync,
            envoy,
            client,
            server,
            token,
            pgs,
            dir,
        }
    }

    fn all(&self) -> Vec<String> {
        sorted(self.pgs.iter().map(Pushgateway::addr).collect())
    }

    /// consul-sync's warnings so far, for the test's output.
    fn print_warnings(&self, what: &str) {
        for line in self.sync.proc.log().lines().filter(|l| l.contains(" WARN ")) {
            eprintln!("{what}: {line}");
        }
    }

    /// consul-sync still follows Consul: a killed pushgateway leaves Envoy's list.
    fn still_follows_consul(&mut self) {
        let victim = self.pgs.remove(0);
        drop(victim);
        let live = self.all();
        wait_until(
            "a killed pushgateway leaves Envoy's list",
            Duration::from_secs(30),
            || (sorted(self.envoy.try_members().ok()?.1) == live).then_some(()),
        );
    }
}

/// Envoy's member lists as read, with the time of each read.
type Lists = Arc<Mutex<Vec<(Instant, Vec<String>)>>>;

/// Envoy's member list over time, and pushes through its proxy listener by answer.
struct Watch {
    stop: Arc<AtomicBool>,
    lists: Lists,
    answers: Arc<Mutex<BTreeMap<u16, usize>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Watch {
    fn start(envoy: &Envoy) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let lists: Lists = Arc::default();
        let answers: Arc<Mutex<BTreeMap<u16, usize>>> = Arc::default();
        let deadline = Instant::now() + Duration::from_secs(300);
        let control = envoy.control_url();
        let (s, l) = (stop.clone(), lists.clone());
        let recorder = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                let r = try_http_request("GET", &format!("{control}/-/sharding/members"), &[], b"");
                if let Some(r) = r.ok().filter(|r| r.status == 200) {
                    let members = r.json()["members"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|m| m.as_str().unwrap().to_owned())
                        .collect();
                    l.lock().unwrap().push((Instant::now(), sorted(members)));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let proxy = envoy.proxy_url();
        let (s, a) = (stop.clone(), answers.clone());
        let pusher = std::thread::spawn(move || {
            let mut n = 0usize;
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                let url = format!("{proxy}/metrics/job/restart/g/{}", n % 20);
                let status = try_http_request("PUT", &url, &[], format!("restart_value {n}\n").as_bytes())
                    .map(|r| r.status)
                    .unwrap_or(0);
                *a.lock().unwrap().entry(status).or_default() += 1;
                n += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Watch {
            stop,
            lists,
            answers,
            threads: vec![recorder, pusher],
        }
    }

    /// Stops, then checks that every list Envoy held had all of `all`, and that every push was
    /// stored.
    fn finish_and_check(mut self, all: &[String], what: &str) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        let lists = self.lists.lock().unwrap().clone();
        let answers = self.answers.lock().unwrap().clone();
        let first = lists[0].0;
        let wrong: Vec<String> = lists
            .iter()
            .filter(|(_, m)| m != all)
            .map(|(at, m)| format!("{:.2}s: {m:?}", (*at - first).as_secs_f64()))
            .collect();
        eprintln!(
            "{what}: {} lists read from Envoy, pushes by answer {answers:?}",
            lists.len()
        );
        assert!(
            wrong.is_empty(),
            "{what}: Envoy routed with a list lacking a live pushgateway ({} of {} reads), e.g. {:?}",
            wrong.len(),
            lists.len(),
            &wrong[..wrong.len().min(8)]
        );
        let failed: usize = answers
            .iter()
            .filter(|(s, _)| !matches!(s, 200 | 202))
            .map(|(_, n)| n)
            .sum();
        assert_eq!(failed, 0, "{what}: pushes not stored: {answers:?}");
    }
}

#[test]
fn a_restarted_client_agent_never_takes_a_live_pushgateway_out_of_envoy() {
    let _serial = serial();
    let mut w = World::start("restarted-client", false, true);
    let watch = Watch::start(&w.envoy);
    std::thread::sleep(Duration::from_secs(2));
    // Leaving takes the services out of the catalog; back, their checks start critical.
    let mut client = w.client.take().unwrap();
    client.restart(&w.dir);
    w.client = Some(client);
    // Until every check has run again (one interval) and a little more.
    std::thread::sleep(Duration::from_secs(15));
    watch.finish_and_check(&w.all(), "a client agent restarted");
    w.print_warnings("a client agent restarted");
    w.still_follows_consul();
}

#[test]
fn a_restarted_server_never_takes_a_live_pushgateway_out_of_envoy() {
    let _serial = serial();
    let mut w = World::start("restarted-server", false, false);
    let watch = Watch::start(&w.envoy);
    std::thread::sleep(Duration::from_secs(2));
    // With its data folder: the catalog comes back, the agent's checks start critical.
    w.server.restart(&w.dir);
    std::thread::sleep(Duration::from_secs(15));
    watch.finish_and_check(&w.all(), "a Consul server restarted");
    w.print_warnings("a Consul server restarted");
    w.still_follows_consul();
}

#[test]
fn a_token_that_lost_service_read_never_empties_envoy() {
    let _serial = serial();
    let mut w = World::start("token-lost-rights", true, false);
    let watch = Watch::start(&w.envoy);
    std::thread::sleep(Duration::from_secs(2));
    // Consul now answers consul-sync's reads with `200 []`.
    let token = w.token.clone().unwrap();
    w.server.set_rules(&token, LOST_RULES);
    // A change of the service (here an instance of something else, critical) wakes consul-sync's
    // blocking query, which then reads `200 []`.
    let other = r#"{"ID": "not-a-pushgateway", "Name": "pushgateway", "Address": "127.0.0.1", "Port": 1,
        "Check": {"HTTP": "http://127.0.0.1:1/", "Interval": "5s", "Timeout": "1s"}}"#;
    w.server
        .request("PUT", "/v1/agent/service/register", other.as_bytes());
    std::thread::sleep(Duration::from_secs(10));
    let missing_while_lost = w.sync.metric("consul_sync_consul_pushgateways_missing");
    w.server.set_rules(&token, SYNC_RULES);
    // Meanwhile consul-sync reads Consul every check interval (5 s).
    std::thread::sleep(Duration::from_secs(8));
    watch.finish_and_check(&w.all(), "the token lost service:read");
    let log = w.sync.proc.log();
    assert!(
        log.contains("shows none of the registered pushgateways"),
        "consul-sync says nothing of it:\n{log}"
    );
    assert_eq!(missing_while_lost, 1.0);
    assert_eq!(w.sync.metric("consul_sync_consul_pushgateways_missing"), 0.0);
    w.still_follows_consul();
}

/// The probe that decides whether Consul's removal is believed asks with the pushgateways'
/// credentials: behind basic auth, a live pushgateway asked without them answers `401`, and a
/// restarted Consul agent would take every one of them out of Envoy's list at once.
#[test]
fn a_live_pushgateway_behind_basic_auth_answers_the_probe() {
    use consul_sync::config::BasicAuth;
    use consul_sync::membership::probe::Prober;
    use dynamic_sharding::members::Member;
    use testkit::pushgateway::{BASIC_AUTH_PASSWORD, BASIC_AUTH_USER};

    let dir = TestDir::new("probe-basic-auth");
    let pg = Pushgateway::start_basic_auth(&dir);
    let member = Member::parse(&pg.addr()).unwrap();
    let auth = BasicAuth {
        username: BASIC_AUTH_USER.to_owned(),
        password: Some(BASIC_AUTH_PASSWORD.to_owned()),
    };
    let wrong = BasicAuth {
        password: Some("not-the-password".to_owned()),
        ..auth.clone()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let prober = Prober::new().unwrap();
    let probe = |auth: Option<&BasicAuth>| {
        rt.block_on(prober.alive(std::slice::from_ref(&member), Duration::from_secs(2), auth))
    };
    assert_eq!(
        probe(Some(&auth)),
        vec![member.clone()],
        "asked with the credentials, it lives"
    );
    assert_eq!(probe(None), vec![], "without credentials it answers 401");
    assert_eq!(
        probe(Some(&wrong)),
        vec![],
        "with a wrong password it answers 401"
    );
}
