//! A real Prometheus Pushgateway on a free loopback port, state in memory only.

use crate::{bin, free_port, http_request, try_http_get, wait_until, Proc, TestDir};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

/// How long a pushgateway may take to answer `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The user of [`Pushgateway::start_basic_auth`].
pub const BASIC_AUTH_USER: &str = "sync";
/// Its password.
pub const BASIC_AUTH_PASSWORD: &str = "pushgateway-test-password";
/// The `Authorization` header value for them.
pub const BASIC_AUTH_HEADER: &str = "Basic c3luYzpwdXNoZ2F0ZXdheS10ZXN0LXBhc3N3b3Jk";
/// bcrypt (cost 4, so checks stay fast) of [`BASIC_AUTH_PASSWORD`], as `--web.config.file` takes it.
const BASIC_AUTH_BCRYPT: &str = "$2b$04$AGOd.Q8n0zurfFTFWbD.XuJoPstzehZGs6Wn2nmpWz0IwSBfcViRO";

pub struct Pushgateway {
    pub proc: Proc,
    pub port: u16,
}

impl Pushgateway {
    /// Starts one on a free port and waits until `/-/ready` answers 200.
    pub fn start(dir: &TestDir) -> Pushgateway {
        Pushgateway::start_on(dir, free_port())
    }

    /// Starts one on `port` (e.g. again after it was killed) and waits until it is ready.
    pub fn start_on(dir: &TestDir, port: u16) -> Pushgateway {
        Pushgateway::start_persistent(dir, port, None)
    }

    /// Starts one on `port` that keeps its groups in `persistence` (written every second and at a
    /// clean stop, read back at the start), or in memory only with `None`.
    pub fn start_persistent(dir: &TestDir, port: u16, persistence: Option<&std::path::Path>) -> Pushgateway {
        Pushgateway::start_with(dir, port, persistence, &[])
    }

    /// Starts one on a free port with `--push.disable-consistency-check`: about 40 times more
    /// pushes per second, for tests that push thousands of groups of one well-formed metric.
    pub fn start_unchecked(dir: &TestDir) -> Pushgateway {
        Pushgateway::start_with(dir, free_port(), None, &["--push.disable-consistency-check"])
    }

    /// Starts one on a free port that requires HTTP basic auth ([`BASIC_AUTH_USER`],
    /// [`BASIC_AUTH_PASSWORD`]) on every path, `/-/healthy` included.
    pub fn start_basic_auth(dir: &TestDir) -> Pushgateway {
        let port = free_port();
        let web = dir.write(
            &format!("pushgateway-{port}-web.yml"),
            format!("basic_auth_users:\n  {BASIC_AUTH_USER}: {BASIC_AUTH_BCRYPT}\n"),
        );
        let flag = format!("--web.config.file={}", web.display());
        Pushgateway::start_with(dir, port, None, &[&flag])
    }

    fn start_with(
        dir: &TestDir,
        port: u16,
        persistence: Option<&std::path::Path>,
        extra: &[&str],
    ) -> Pushgateway {
        let mut cmd = Command::new(bin("pushgateway"));
        cmd.arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(extra);
        match persistence {
            Some(p) => cmd
                .arg(format!("--persistence.file={}", p.display()))
                .arg("--persistence.interval=1s"),
            None => cmd.arg("--persistence.file="),
        };
        cmd.arg("--web.enable-admin-api").arg("--web.enable-lifecycle");
        let proc = Proc::spawn(&format!("pushgateway-{port}"), cmd, dir);
        let mut pg = Pushgateway { proc, port };
        let url = format!("{}/-/ready", pg.url());
        wait_until(
            &format!("pushgateway on port {port} is ready"),
            READY_TIMEOUT,
            || {
                if !pg.proc.is_running() {
                    panic!("pushgateway on port {port} exited:\n{}", pg.proc.log_tail(20));
                }
                // 401: it serves, behind basic auth.
                matches!(try_http_get(&url), Ok((200 | 401, _))).then_some(())
            },
        );
        pg
    }

    /// "127.0.0.1:port", the member this pushgateway is.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// "http://127.0.0.1:port".
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Pushes `body` (text format) with `PUT` to `path` (e.g. `/metrics/job/j`); returns the status.
    pub fn push(&self, path: &str, body: &str) -> u16 {
        http_request("PUT", &format!("{}{path}", self.url()), &[], body.as_bytes()).status
    }

    /// The raw `GET /api/v1/metrics` data: one JSON object per group.
    pub fn api_groups(&self) -> Vec<serde_json::Value> {
        let r = http_request("GET", &format!("{}/api/v1/metrics", self.url()), &[], b"");
        assert_eq!(r.status, 200, "GET /api/v1/metrics: {}", r.body);
        match r.json().get("data") {
            Some(serde_json::Value::Array(a)) => a.clone(),
            _ => Vec::new(),
        }
    }

    /// The grouping labels of every group it holds.
    pub fn groups(&self) -> Vec<BTreeMap<String, String>> {
        self.api_groups().iter().map(group_labels).collect()
    }

    /// The value of the first sample of `metric` in the group whose grouping labels are exactly
    /// `group`, or `None` when there is no such group or metric.
    pub fn metric_value(&self, group: &BTreeMap<String, String>, metric: &str) -> Option<f64> {
        let groups = self.api_groups();
        let g = groups.iter().find(|g| group_labels(g) == *group)?;
        g.get(metric)?
            .get("metrics")?
            .get(0)?
            .get("value")?
            .as_str()?
            .parse()
            .ok()
    }

    /// Deletes every group (admin API).
    pub fn wipe(&self) {
        let r = http_request("PUT", &format!("{}/api/v1/admin/wipe", self.url()), &[], b"");
        assert!(r.status < 300, "wipe: {} {}", r.status, r.body);
    }
}

/// The grouping labels of one group of `GET /api/v1/metrics`.
pub fn group_labels(g: &serde_json::Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(serde_json::Value::Object(m)) = g.get("labels") {
        for (k, v) in m {
            out.insert(k.clone(), v.as_str().unwrap_or_default().to_owned());
        }
    }
    out
}

/// Grouping labels from pairs, for [`Pushgateway::metric_value`] and comparisons with
/// [`Pushgateway::groups`].
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
