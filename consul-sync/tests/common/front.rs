//! A fault-injection front for one real pushgateway: it forwards every request, and can make the
//! pushgateway behind it look as if its clock ran ahead (the `Date` header and the push times of
//! its `/metrics` shifted) or as if it were slow to read (`GET /metrics` answered after a delay).
//!
//! libfaketime does not move a Go program's clock (Go reads it through the vDSO, not through
//! libc: a pushgateway started under `FAKETIME=+300s` stamps pushes with the real time), so a
//! skewed clock is shown from outside, exactly as consul-sync sees one. Everything else is the
//! real pushgateway's answer.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::oneshot;

struct Shared {
    backend: String,
    client: reqwest::Client,
    /// Seconds added to the clock the pushgateway shows.
    shift: f64,
    /// Milliseconds `GET /metrics` waits before it is forwarded.
    metrics_delay_ms: AtomicU64,
    metrics_reads: AtomicUsize,
    /// `GET /metrics` is answered 503 (everything else is forwarded).
    metrics_fail: AtomicBool,
}

pub struct Front {
    pub port: u16,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Front {
    /// A front on a free port for the pushgateway at `backend` (`host:port`), whose clock looks
    /// `shift` seconds ahead.
    pub fn start(backend: &str, shift: f64) -> Front {
        let port = testkit::free_port();
        let shared = Arc::new(Shared {
            backend: backend.to_owned(),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            shift,
            metrics_delay_ms: AtomicU64::new(0),
            metrics_reads: AtomicUsize::new(0),
            metrics_fail: AtomicBool::new(false),
        });
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let state = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new().fallback(forward).with_state(state);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Front {
            port,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The member consul-sync is given: the front's `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// From now on `GET /metrics` waits `delay` before it is forwarded.
    pub fn delay_metrics(&self, delay: Duration) {
        self.shared
            .metrics_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// From now on `GET /metrics` is answered 503 when `fail`: the pushgateway passes its check
    /// but cannot be read.
    pub fn fail_metrics(&self, fail: bool) {
        self.shared.metrics_fail.store(fail, Ordering::SeqCst);
    }

    /// `GET /metrics` requests received so far (counted on arrival, before any delay).
    pub fn metrics_reads(&self) -> usize {
        self.shared.metrics_reads.load(Ordering::SeqCst)
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn forward(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let is_metrics = method == axum::http::Method::GET && req.uri().path() == "/metrics";
    if is_metrics {
        s.metrics_reads.fetch_add(1, Ordering::SeqCst);
        let delay = s.metrics_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if s.metrics_fail.load(Ordering::SeqCst) {
            return Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .body(Body::from("failing on purpose"))
                .unwrap();
        }
    }
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    let mut out = s
        .client
        .request(method, format!("http://{}{path}", s.backend))
        .body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            out = out.header(name, value);
        }
    }
    let resp = match out.send().await {
        Ok(r) => r,
        Err(e) => {
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(Body::from(e.to_string()))
                .unwrap()
        }
    };
    let status = resp.status();
    let resp_headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap_or_default();
    let body = if is_metrics && s.shift != 0.0 {
        shift_push_times(&String::from_utf8_lossy(&bytes), s.shift).into_bytes()
    } else {
        bytes.to_vec()
    };
    let mut builder = Response::builder().status(status);
    for (name, value) in &resp_headers {
        if name == "content-length" || name == "transfer-encoding" {
            continue;
        }
        if name == "date" && s.shift != 0.0 {
            builder = builder.header(name, shifted_date(value, s.shift));
            continue;
        }
        builder = builder.header(name, value);
    }
    builder.body(Body::from(body)).unwrap()
}

/// The `Date` header `shift` seconds later.
fn shifted_date(value: &HeaderValue, shift: f64) -> HeaderValue {
    let date = httpdate::parse_http_date(value.to_str().unwrap()).unwrap();
    let shifted = if shift >= 0.0 {
        date + Duration::from_secs_f64(shift)
    } else {
        date - Duration::from_secs_f64(-shift)
    };
    HeaderValue::from_str(&httpdate::fmt_http_date(shifted)).unwrap()
}

/// The exposition with every non-zero push time (`push_time_seconds`,
/// `push_failure_time_seconds`) `shift` seconds later, as a pushgateway with that clock stamps it.
fn shift_push_times(text: &str, shift: f64) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let stamped =
            line.starts_with("push_time_seconds{") || line.starts_with("push_failure_time_seconds{");
        match line.rsplit_once(' ') {
            Some((series, value)) if stamped => {
                let v: f64 = value.parse().unwrap();
                let v = if v == 0.0 { 0.0 } else { v + shift };
                out.push_str(&format!("{series} {v}\n"));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Unix seconds now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
