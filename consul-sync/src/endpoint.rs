//! consul-sync's own HTTP endpoint: `/metrics`, `/-/healthy`, `/-/ready`, `/prometheus/targets`,
//! `/-/drain`, and `POST /-/reload`.
//!
//! `/prometheus/targets` is the current member list (ring members and draining pushgateways) as
//! Prometheus HTTP service discovery JSON, so a Prometheus built without Consul discovery scrapes
//! exactly the pushgateways that hold groups. Before the first list it answers 503, which makes
//! Prometheus keep its previous targets. `/-/drain` says where each drain stands.

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::status::{Drains, Readiness};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use dynamic_sharding::members::MemberList;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

/// A reload request from `POST /-/reload`: the reloader answers on the oneshot.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

/// What the handlers read.
pub struct EndpointState {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<Readiness>,
    pub published: watch::Receiver<Option<MemberList>>,
    pub service_name: String,
    pub reload: mpsc::Sender<ReloadRequest>,
    pub drains: Drains,
}

pub fn router(state: Arc<EndpointState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/-/healthy", get(healthy))
        .route("/-/ready", get(ready))
        .route("/prometheus/targets", get(targets))
        .route("/-/reload", post(reload).put(reload))
        .route("/-/drain", get(drain))
        .with_state(state)
}

/// Serves until the shutdown.
pub async fn serve(
    listener: TcpListener,
    state: Arc<EndpointState>,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.recv().await })
        .await
}

async fn metrics(State(s): State<Arc<EndpointState>>) -> Response {
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

async fn ready(State(s): State<Arc<EndpointState>>) -> Response {
    match s.ready.not_ready_reason() {
        None => (StatusCode::OK, "consul-sync is ready.\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("consul-sync is not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn reload(State(s): State<Arc<EndpointState>>) -> Response {
    let (tx, rx) = oneshot::channel();
    if s.reload.send(tx).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match rx.await {
        Ok(Ok(summary)) => (StatusCode::OK, format!("{summary}\n")).into_response(),
        Ok(Err(e)) => (
            StatusCode::BAD_REQUEST,
            format!("configuration reload refused: {e}\n"),
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

/// `{"drains": [{"pushgateway", "state": "draining"|"drained", "since", "deadline", "groups"}]}`.
async fn drain(State(s): State<Arc<EndpointState>>) -> Response {
    let drains = s.drains.lock().map(|d| d.clone()).unwrap_or_default();
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "drains": drains }).to_string(),
    )
        .into_response()
}

async fn targets(State(s): State<Arc<EndpointState>>) -> Response {
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

/// `[{"targets": ["host:port", ...], "labels": {"service": <name>}}]`: the members and the
/// draining pushgateways, which Prometheus must keep scraping until they are drained.
pub fn targets_json(list: &MemberList, service_name: &str) -> String {
    let targets: Vec<&str> = list.holders().map(|m| m.as_str()).collect();
    serde_json::json!([{ "targets": targets, "labels": { "service": service_name } }]).to_string()
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
