//! A child process owned by a test: output to a log file, stopped by PID on drop.

use crate::TestDir;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long `stop` and drop wait after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// Lines of the log shown when a test panics with the process alive.
const LOG_TAIL_LINES: usize = 40;

/// A running child. Drop sends SIGTERM, waits up to 3 s, then SIGKILL, and reaps it. If the
/// thread is panicking, the last 40 lines of its log go to stderr.
pub struct Proc {
    name: String,
    child: Child,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout+stderr appended to `<dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, dir: &TestDir) -> Proc {
        let log_path = dir.join(format!("{name}.log"));
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
        let _ = writeln!(log, "---- testkit: starting {cmd:?}");
        let err = log.try_clone().unwrap_or_else(|e| panic!("dup log: {e}"));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_owned(),
            child,
            log_path,
            exit: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far (stdout and stderr interleaved).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// True while the process has not exited (a frozen process is running).
    pub fn is_running(&mut self) -> bool {
        self.reap_nonblocking().is_none()
    }

    /// The exit status if it has exited, without waiting.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.reap_nonblocking()
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.reap_nonblocking() {
                return Some(s);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal, unless the process was already reaped (its PID may be reused).
    pub fn signal(&mut self, sig: Signal) {
        if self.reap_nonblocking().is_none() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), sig);
        }
    }

    /// SIGTERM, wait up to 3 s, then SIGKILL; returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        // A frozen process only acts on SIGTERM once it runs again.
        self.signal(Signal::SIGCONT);
        if let Some(s) = self.wait_exit(TERM_GRACE) {
            return s;
        }
        self.kill()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> ExitStatus {
        self.signal(Signal::SIGKILL);
        if let Some(s) = self.exit {
            return s;
        }
        let s = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("wait for {}: {e}", self.name));
        self.exit = Some(s);
        s
    }

    /// SIGSTOP: the process stays alive but does nothing (its sockets accept and never answer).
    pub fn freeze(&mut self) {
        self.signal(Signal::SIGSTOP);
    }

    /// SIGCONT after [`Proc::freeze`].
    pub fn thaw(&mut self) {
        self.signal(Signal::SIGCONT);
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn reap_nonblocking(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exit = Some(s);
            }
        }
        self.exit
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- testkit: last {LOG_TAIL_LINES} lines of {} (pid {}, {}) ----\n{}\n----",
                self.name,
                self.child.id(),
                self.log_path.display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        self.stop();
    }
}
