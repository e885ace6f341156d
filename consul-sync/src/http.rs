//! consul-sync's own HTTP endpoint: `/metrics`, `/-/healthy`, `/-/ready`, `/prometheus/targets`.
//!
//! `/prometheus/targets` is the current member list as Prometheus HTTP service discovery JSON, so
//! a Prometheus built without Consul discovery can scrape exactly the pushgateways in the ring.
//! Before the first list it answers 503, which makes Prometheus keep its previous targets.

use crate::metrics::Metrics;
use crate::Readiness;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use dynamic_sharding::members::MemberList;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the handlers read.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<Readiness>,
    pub published: watch::Receiver<Option<MemberList>>,
    pub service_name: String,
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/-/healthy", get(healthy))
        .route("/-/ready", get(ready))
        .route("/prometheus/targets", get(targets))
        .with_state(shared)
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    match s.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        )
            .into_response(),
    }
}

async fn healthy() -> &'static str {
    "consul-sync is healthy.\n"
}

async fn ready(State(s): State<Arc<Shared>>) -> Response {
    match s.ready.not_ready_reason() {
        None => (StatusCode::OK, "consul-sync is ready.\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("consul-sync is not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn targets(State(s): State<Arc<Shared>>) -> Response {
    let list = s.published.borrow().clone();
    match list {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no member list yet: Consul has not been read\n",
        )
            .into_response(),
        Some(list) => {
            let body = targets_json(&list, &s.service_name);
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    }
}

/// `[{"targets": ["host:port", ...], "labels": {"service": <name>}}]`.
pub fn targets_json(list: &MemberList, service_name: &str) -> String {
    serde_json::json!([{ "targets": list.members, "labels": { "service": service_name } }]).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_http_sd_json() {
        let list = MemberList::new(3, &["b:2", "a:1"]).unwrap();
        assert_eq!(
            targets_json(&list, "pushgateway"),
            r#"[{"labels":{"service":"pushgateway"},"targets":["a:1","b:2"]}]"#
        );
    }
}
