//! vmagent run as the shipped unit `deploy/scraping/vmagent/dynamic-sharding-vmagent@.service`
//! runs it: its `ExecStartPre` check, then its `ExecStart`, for one member number (the unit's
//! instance), with the settings of an environment file like the shipped `vmagent.env`.
//!
//! No systemd manages services here, so the unit's lines are run as systemd would run them:
//! continuation lines joined, `%i` and `%S` replaced, `$$` unescaped, `${VAR}` taken from the
//! environment file. That is enough for this unit, whose `$$` are all inside single quotes.

use crate::prometheus::up_targets_of;
use crate::{bin, repo_root, try_http_get, wait_until, Proc, TestDir};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The shipped unit.
pub const UNIT: &str = "deploy/scraping/vmagent/dynamic-sharding-vmagent@.service";
/// The scrape configuration the unit names.
const SHIPPED_CONFIG: &str = "/opt/dynamic-sharding/scraping/vmagent/scrape.yml";
/// How long vmagent may take to answer `/health`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct VmAgent {
    pub proc: Proc,
    pub port: u16,
    pub member: String,
}

/// `KEY=value` lines of an environment file (comments and blank lines skipped), as systemd's
/// `EnvironmentFile=` reads the simple ones.
pub fn env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The value of `key` (`ExecStart`, `ExecStartPre`) in the shipped unit, continuation lines joined.
fn unit_line(key: &str) -> String {
    let path = repo_root().join(UNIT);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let joined = text.replace("\\\n", " ");
    joined
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{UNIT} has no {key}="))
        .to_owned()
}

/// The unit's `key` line for instance `member` as a command: run by `sh` with `env` set, as
/// systemd runs it after expanding specifiers and `${VAR}`.
fn unit_command(key: &str, member: &str, env: &[(String, String)], config: &Path, state: &Path) -> Command {
    let line = unit_line(key)
        .replace("%i", member)
        .replace("%S", &state.display().to_string())
        .replace("/usr/bin/vmagent", &bin("vmagent").display().to_string())
        .replace(SHIPPED_CONFIG, &config.display().to_string())
        .replace("$$", "$");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("exec {line}"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl VmAgent {
    /// Runs the unit's `ExecStartPre` for instance `member` with the settings `env`: `Err` with
    /// what it printed when it refuses them.
    pub fn check(dir: &TestDir, member: &str, env: &[(String, String)]) -> Result<(), String> {
        let out = unit_command("ExecStartPre", member, env, Path::new(SHIPPED_CONFIG), dir.path())
            .output()
            .unwrap_or_else(|e| panic!("run {UNIT} ExecStartPre: {e}"));
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            Ok(())
        } else {
            Err(text)
        }
    }

    /// Checks the settings as the unit does (panics when it refuses them), then starts the unit's
    /// vmagent for `member` with `config` as its scrape configuration and its HTTP listener on
    /// 127.0.0.1:`port`, and waits until it answers.
    pub fn start(dir: &TestDir, member: u32, env: &[(String, String)], config: &Path, port: u16) -> VmAgent {
        let member = member.to_string();
        let mut env = env.to_vec();
        env.retain(|(k, _)| k != "VMAGENT_LISTEN_ADDR");
        env.push(("VMAGENT_LISTEN_ADDR".to_owned(), format!("127.0.0.1:{port}")));
        if let Err(e) = VmAgent::check(dir, &member, &env) {
            panic!("{UNIT} refuses member {member} with {env:?}: {e}");
        }
        let cmd = unit_command("ExecStart", &member, &env, config, dir.path());
        let proc = Proc::spawn(&format!("vmagent-{member}-{port}"), cmd, dir);
        let mut agent = VmAgent { proc, port, member };
        let url = format!("{}/health", agent.url());
        wait_until("vmagent answers /health", READY_TIMEOUT, || {
            assert!(
                agent.proc.is_running(),
                "vmagent exited:\n{}",
                agent.proc.log_tail(20)
            );
            matches!(try_http_get(&url), Ok((200, _))).then_some(())
        });
        agent
    }

    /// "http://127.0.0.1:<port>".
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The targets of `job` it scrapes and finds up (`host:port`, sorted), from its own API.
    pub fn up_targets(&self, job: &str) -> Option<Vec<String>> {
        up_targets_of(&self.url(), job)
    }
}
