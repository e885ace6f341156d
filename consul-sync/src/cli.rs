//! The helper subcommands, in the manner of Prometheus's `promtool`: `check-config` checks a
//! configuration file without starting anything, `owner` tells which pushgateway owns a push
//! path, computed with the filter's own code (grouping key, ring), offline or from a live Envoy.

use consul_sync::config::{Config, ConfigError};
use consul_sync::net::{self, error_chain};
use dynamic_sharding::grouping_key::GroupingKey;
use dynamic_sharding::members::{Member, MemberList, MAX_UPDATE_BYTES};
use dynamic_sharding::ring::{validate_vnodes, Ring};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// How long `owner --from` waits for Envoy's control listener.
const FROM_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes read of an Envoy's member list: the filter takes lists of at most
/// `MAX_UPDATE_BYTES`, so this leaves ample room.
const MAX_MEMBERS_BYTES: usize = 16 * MAX_UPDATE_BYTES;

/// `check-config FILE`: exit 0 when consul-sync would start with it, else 1 with every problem.
pub fn check_config(file: &Path) -> ExitCode {
    println!("Checking {}", file.display());
    match Config::load(file) {
        Ok((config, warnings)) => {
            for w in &warnings {
                println!("  WARNING: {w}");
            }
            println!(
                "  SUCCESS: {} pushgateways to register, {} Envoys, Consul {}{}",
                config.servers.len(),
                config.envoy.control_urls.len(),
                config.consul.base_url,
                match config.standbys.len() {
                    0 => String::new(),
                    n => format!(", {n} of them with a standby"),
                }
            );
            ExitCode::SUCCESS
        }
        Err(e @ ConfigError::Read { .. }) => {
            eprintln!("  FAILED: {e}");
            ExitCode::FAILURE
        }
        Err(first) => {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let problems = every_problem(&text, &file.display().to_string(), first);
            let n = problems.len();
            eprintln!("  FAILED: {n} problem{}", if n == 1 { "" } else { "s" });
            for p in problems {
                eprintln!("  {p}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The loader stops at the first problem. To name them all, each top-level key is checked on its
/// own: the other keys' lines are blanked, so line numbers stay true. A problem that needs two
/// keys together (none today) is still reported, from the whole file.
fn every_problem(text: &str, file: &str, first: ConfigError) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let starts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| is_top_level_key(l))
        .map(|(i, _)| i)
        .collect();
    let mut problems: Vec<String> = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(lines.len());
        let only: String = lines
            .iter()
            .enumerate()
            .map(|(i, l)| if (start..end).contains(&i) { *l } else { "" })
            .collect::<Vec<_>>()
            .join("\n");
        let env = |k: &str| std::env::var(k).ok();
        let read_file = |p: &Path| std::fs::read_to_string(p).map_err(|e| e.to_string());
        if let Err(e) = Config::parse(&only, file, env, read_file) {
            let e = e.to_string();
            if !problems.contains(&e) {
                problems.push(e);
            }
        }
    }
    let first = first.to_string();
    if !problems.contains(&first) {
        problems.insert(0, first);
    }
    problems
}

/// `key:` at the start of a line: a top-level mapping key in block style.
fn is_top_level_key(line: &str) -> bool {
    let starts_plain = line
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '"' || c == '\'');
    starts_plain && line.contains(':')
}

/// Where `owner` takes the member list from.
pub enum Members {
    Listed(String),
    From(String),
}

/// `owner PATH`: prints the owner's `host:port`; exit 1 with the reason when there is none.
pub fn owner(members: Members, vnodes: u32, path: &str) -> ExitCode {
    match find_owner(members, vnodes, path) {
        Ok(owner) => {
            println!("{owner}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("consul-sync owner: {e}");
            ExitCode::FAILURE
        }
    }
}

fn find_owner(members: Members, vnodes: u32, path: &str) -> Result<Member, String> {
    let vnodes = validate_vnodes(vnodes).map_err(|e| format!("--vnodes: {e}"))?;
    let path = push_path(path);
    let key = GroupingKey::from_path(path).map_err(|e| format!("{path:?}: {e}"))?;
    let list = match members {
        Members::Listed(s) => {
            let given: Vec<&str> = s.split(',').map(str::trim).filter(|m| !m.is_empty()).collect();
            MemberList::new(0, &given).map_err(|e| format!("--members: {e}"))?
        }
        Members::From(url) => fetch_members(&url)?,
    };
    let ring = Ring::new(&list.members, vnodes);
    ring.owner(key.hash()).cloned().ok_or_else(|| {
        "the member list is empty: no pushgateway owns anything (Envoy answers 503)".to_owned()
    })
}

/// The path part of what the user gave: a full URL is accepted, its query dropped.
fn push_path(input: &str) -> &str {
    let after_scheme = input
        .strip_prefix("http://")
        .or_else(|| input.strip_prefix("https://"));
    let path = match after_scheme {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => input,
    };
    path.split('?').next().unwrap_or(path)
}

/// `GET <url>/-/sharding/members` on an Envoy control listener: the list it routes with.
fn fetch_members(base: &str) -> Result<MemberList, String> {
    let url = format!("{}/-/sharding/members", base.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    runtime.block_on(async {
        let client = net::client(FROM_TIMEOUT).map_err(|e| format!("building the HTTP client: {e}"))?;
        let answer = client
            .get(&url)
            .timeout(FROM_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("--from {base}: GET {url}: {}", error_chain(&e)))?;
        let status = answer.status();
        let body = net::read_limited(answer, MAX_MEMBERS_BYTES)
            .await
            .map_err(|e| format!("--from {base}: GET {url}: reading the body: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "--from {base}: GET {url} answered {status}: {}; expected an Envoy control listener (the filter in control mode)",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        MemberList::from_json(&body).map_err(|e| format!("--from {base}: GET {url}: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_path_accepts_urls_and_drops_the_query() {
        assert_eq!(push_path("/metrics/job/a"), "/metrics/job/a");
        assert_eq!(push_path("http://envoy:9292/metrics/job/a?x=1"), "/metrics/job/a");
        assert_eq!(push_path("https://envoy"), "/");
    }

    #[test]
    fn top_level_keys() {
        assert!(is_top_level_key("check:"));
        assert!(is_top_level_key("vnodes: 5"));
        assert!(!is_top_level_key("  interval: 5s"));
        assert!(!is_top_level_key("# check: no"));
        assert!(!is_top_level_key("- a:1"));
        assert!(!is_top_level_key(""));
    }
}
