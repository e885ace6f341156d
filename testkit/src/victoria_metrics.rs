//! A real single-node VictoriaMetrics on a free loopback port: the remote-write store that
//! deduplicates the copies of a sample that replicated scrapers send.

use crate::prometheus::{query, Sample};
use crate::{bin, free_port, try_http_get, wait_until, Proc, TestDir};
use std::process::Command;
use std::time::Duration;

/// How long VictoriaMetrics may take to answer `/health`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct VictoriaMetrics {
    pub proc: Proc,
    pub port: u16,
}

impl VictoriaMetrics {
    /// Starts one on `port` that keeps one sample per series and `dedup` interval
    /// (`-dedup.minScrapeInterval`, the scrapers' scrape interval), and waits until it answers.
    /// `-search.latencyOffset=1s`: instant queries see samples from the last second on instead of
    /// the last 30 s, so a test sees a push within seconds.
    pub fn start_on(dir: &TestDir, port: u16, dedup: &str) -> VictoriaMetrics {
        let data = dir.join(format!("victoria-metrics-data-{port}"));
        let mut cmd = Command::new(bin("victoria-metrics"));
        cmd.arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-storageDataPath={}", data.display()))
            .arg(format!("-dedup.minScrapeInterval={dedup}"))
            .arg("-search.latencyOffset=1s")
            .arg("-loggerLevel=WARN");
        let proc = Proc::spawn(&format!("victoria-metrics-{port}"), cmd, dir);
        let mut vm = VictoriaMetrics { proc, port };
        let url = format!("{}/health", vm.url());
        wait_until("victoria-metrics answers /health", READY_TIMEOUT, || {
            assert!(
                vm.proc.is_running(),
                "victoria-metrics exited:\n{}",
                vm.proc.log_tail(20)
            );
            matches!(try_http_get(&url), Ok((200, _))).then_some(())
        });
        vm
    }

    /// [`VictoriaMetrics::start_on`] a free port.
    pub fn start(dir: &TestDir, dedup: &str) -> VictoriaMetrics {
        VictoriaMetrics::start_on(dir, free_port(), dedup)
    }

    /// "http://127.0.0.1:<port>".
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where scrapers remote-write to.
    pub fn write_url(&self) -> String {
        format!("{}/api/v1/write", self.url())
    }

    /// An instant query through its Prometheus-compatible API.
    pub fn query(&self, promql: &str) -> Vec<Sample> {
        query(&self.url(), promql)
    }
}
