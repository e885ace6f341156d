//! Test harness for the integration tests of dynamic-sharding and consul-sync.
//!
//! Owns the real processes a test needs (Consul, Pushgateway, Envoy, any binary): each runs on
//! loopback on ports from [`free_port`], logs into a [`TestDir`], and is stopped by PID when its
//! [`Proc`] is dropped, also when the test fails. Every wait is bounded ([`wait_until`]). A missing
//! binary is a failure that names `./build.sh deps`, never a silent skip.
//!
//! Helpers panic on failure: they are for tests, where a panic is the report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod consul;
pub mod demo;
pub mod envoy;
pub mod http;
pub mod pipeline;
pub mod proc;
pub mod prometheus;
pub mod pushgateway;
pub mod victoria_metrics;
pub mod vmagent;

pub use consul::{AclToken, Consul, ConsulOptions, ConsulPorts, ConsulService};
pub use http::{http_get, http_request, try_http_get, try_http_request, HttpResponse};
pub use proc::Proc;
pub use prometheus::Prometheus;
pub use pushgateway::{group_labels, Pushgateway};

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The repository root (the parent of this crate's folder).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The executable for `name` ("envoy", "consul", "pushgateway", "prometheus", "wrk",
/// "prometheus-current", "vmagent", "victoria-metrics"): the `<NAME>_BIN` environment variable
/// (`-` spelled `_`) if set, else `<repo>/.deps/bin/<name>`. Panics naming the install command
/// when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_ascii_uppercase().replace('-', "_"));
    let path = match std::env::var_os(&var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join(".deps").join("bin").join(name),
    };
    if !path.is_file() {
        panic!(
            "{name} not found at {}: run ./build.sh deps (or set {var}=...)",
            path.display()
        );
    }
    path
}

/// The consul-sync that `./build.sh` builds (`target/release/consul-sync`), for tests outside
/// consul-sync's own crate. Panics naming the build command when it is missing.
pub fn consul_sync_bin() -> PathBuf {
    let path = repo_root().join("target/release/consul-sync");
    if !path.is_file() {
        panic!(
            "{} is missing: run ./build.sh (it runs cargo build --release -p consul-sync)",
            path.display()
        );
    }
    path
}

/// A file shipped under the repository (e.g. `deploy/scraping/ha/prometheus.yml`) with each
/// `(old, new)` replaced, in order: the configuration users copy, on a test's ports and paths.
/// Each `old` must occur, so a reshaped file fails loudly here instead of testing something else.
pub fn shipped_file(path: &str, replacements: &[(&str, &str)]) -> String {
    let full = repo_root().join(path);
    let mut text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()));
    for (old, new) in replacements {
        assert!(text.contains(old), "{path}: expected {old:?} in:\n{text}");
        text = text.replace(old, new);
    }
    text
}

/// libfaketime (`LD_PRELOAD` it with `FAKETIME=+60s` for a process whose clock runs ahead): the
/// `FAKETIME_LIB` environment variable if set, else `<repo>/.deps/lib/libfaketime.so.1`. Panics
/// naming the install command when it is missing.
pub fn faketime_lib() -> PathBuf {
    let path = match std::env::var_os("FAKETIME_LIB") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join(".deps/lib/libfaketime.so.1"),
    };
    if !path.is_file() {
        panic!(
            "libfaketime not found at {}: run ./build.sh deps (or set FAKETIME_LIB=...)",
            path.display()
        );
    }
    path
}

/// A free TCP port on 127.0.0.1, below the kernel's ephemeral range (32768 and up here), so that
/// no outgoing connection can take it while a test restarts a process on it. Never hands out the
/// same port twice in one process, so tests running in parallel threads do not collide.
pub fn free_port() -> u16 {
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    // Start somewhere different in each process, so parallel test binaries rarely meet.
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for i in 0..SPAN {
        let port = (FIRST + (seed.wrapping_add(i.wrapping_mul(7919))) % SPAN) as u16;
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port found between {FIRST} and {}", FIRST + SPAN);
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `timeout`; panics naming `what`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Like [`wait_until`] but returns `None` on timeout instead of panicking, for tests that check
/// that something does NOT happen within a time.
pub fn poll_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh folder under the system temp folder for one test's files and logs. Removed on drop,
/// unless the test is panicking: then it is kept and its path printed.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// A new empty folder whose name starts with `name` (the test's name is a good choice).
    pub fn new(name: &str) -> TestDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = std::env::temp_dir().join(format!("ds-{safe}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `contents` to `name` in the folder and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.join(name);
        std::fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "testkit: test failed; its files are kept in {}",
                self.path.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
