//! Helpers shared by the integration tests: the three-pushgateway stack, the owner the library
//! computes, a raw HTTP/1.1 exchange on one socket.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use dynamic_sharding::grouping_key::GroupingKey;
use dynamic_sharding::members::MemberList;
use dynamic_sharding::ring::Ring;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use testkit::envoy::{Envoy, EnvoyOptions};
use testkit::{wait_until, Pushgateway, TestDir};

/// The owner the shared library computes: the same code consul-sync uses.
pub fn expected_owner(members: &[String], path: &str) -> String {
    let list = MemberList::new(0, members).unwrap();
    let ring = Ring::new(&list.members, 500);
    ring.owner(GroupingKey::from_path(path).unwrap().hash())
        .unwrap()
        .to_string()
}

pub struct Stack {
    pub dir: TestDir,
    pub pgs: Vec<Pushgateway>,
    pub envoy: Envoy,
}

pub fn stack(name: &str) -> Stack {
    let dir = TestDir::new(name);
    let pgs: Vec<Pushgateway> = (0..3).map(|_| Pushgateway::start(&dir)).collect();
    let members = pgs.iter().map(|p| p.addr()).collect();
    let envoy = Envoy::start(
        &dir,
        EnvoyOptions {
            members,
            ..Default::default()
        },
    );
    Stack { dir, pgs, envoy }
}

impl Stack {
    pub fn members(&self) -> Vec<String> {
        self.pgs.iter().map(|p| p.addr()).collect()
    }

    /// Which pushgateways hold a group with exactly these grouping labels.
    pub fn holders(&self, group: &BTreeMap<String, String>) -> Vec<String> {
        self.pgs
            .iter()
            .filter(|p| p.groups().contains(group))
            .map(|p| p.addr())
            .collect()
    }
}

/// Unpadded base64url, as prometheus_client writes `@base64` values (the crate the filter uses).
pub fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Minimal HTTP/1.1 over one socket, to see what happens to the connection.
pub fn send_on(
    conn: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, Vec<(String, String)>) {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    conn.get_mut().write_all(head.as_bytes()).unwrap();
    conn.get_mut().write_all(body).unwrap();
    let mut status_line = String::new();
    conn.read_line(&mut status_line).unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut rest = vec![0; len];
    conn.read_exact(&mut rest).unwrap();
    (status, headers)
}

/// Waits until every thread of `pid` is stopped: SIGSTOP returns before that, and on a busy
/// machine a Go process was seen answering requests 300 ms after it.
pub fn wait_stopped(pid: u32) {
    wait_until(&format!("pid {pid} is stopped"), Duration::from_secs(5), || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let all_stopped = tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(|st| st.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
                .unwrap_or(false)
        });
        all_stopped.then_some(())
    });
}

/// Resident memory of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
