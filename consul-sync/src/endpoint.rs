//! consul-sync's own HTTP endpoint: `/metrics`, `/-/healthy`, `/-/ready`, `/prometheus/targets`,
//! `/-/drain`, `/-/lease`, and `POST /-/reload`.
//!
//! `/prometheus/targets` is the current member list (ring members and draining pushgateways) as
//! Prometheus HTTP service discovery JSON, so a Prometheus built without Consul discovery scrapes
//! exactly the pushgateways that hold groups. Before the first list it answers 503, which makes
//! Prometheus keep its previous targets. `/-/drain` says where each drain stands, `/-/lease` which
//! consul-sync holds the lease.
//!
//! `POST /-/reload` must carry the reload token (`Authorization: Bearer`, compared in constant
//! time as the filter compares the control token); without a configured token it is off. A request
//! a browser marks as coming from another site (`Origin` other than this endpoint, or
//! `Sec-Fetch-Site` other than `same-origin`) is refused before the token is looked at.

use crate::config::Config;
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::status::{Drains, Readiness};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use dynamic_sharding::control::token_matches;
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
    /// The running configuration: the reload token and the lease's key.
    pub config: watch::Receiver<Arc<Config>>,
    pub leadership: Arc<Leadership>,
}

pub fn router(state: Arc<EndpointState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/-/healthy", get(healthy))
        .route("/-/ready", get(ready))
        .route("/prometheus/targets", get(targets))
        .route("/-/reload", post(reload).put(reload))
        .route("/-/drain", get(drain))
        .route("/-/lease", get(lease))
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

async fn reload(State(s): State<Arc<EndpointState>>, headers: HeaderMap) -> Response {
    let token = s.config.borrow().reload_token.clone();
    if let Err((status, why)) = reload_allowed(&headers, token.as_ref().map(|t| t.expose())) {
        if status == StatusCode::UNAUTHORIZED {
            return (status, [(header::WWW_AUTHENTICATE, "Bearer")], why).into_response();
        }
        return (status, why).into_response();
    }
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

/// `Err` with the status and reason when a reload request may not reload: it comes from another
/// site (as a browser says), reloads over HTTP are off (`token` is `None`), or it lacks the token.
fn reload_allowed(headers: &HeaderMap, token: Option<&str>) -> Result<(), (StatusCode, &'static str)> {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text(header::HOST).unwrap_or_default();
    let foreign_origin = text(header::ORIGIN).is_some_and(|o| o != format!("http://{host}"));
    let foreign_fetch = headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() != b"same-origin");
    if foreign_origin || foreign_fetch {
        return Err((
            StatusCode::FORBIDDEN,
            "reload refused: a request from another site (Origin or Sec-Fetch-Site) may not reload consul-sync\n",
        ));
    }
    let Some(token) = token else {
        return Err((
            StatusCode::FORBIDDEN,
            "reload over HTTP is off: set reload_token_file (or CONSUL_SYNC_RELOAD_TOKEN) and send \
             Authorization: Bearer <token>; SIGHUP reloads too\n",
        ));
    };
    let presented = text(header::AUTHORIZATION)
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !token_matches(presented.as_bytes(), &[token.to_owned()]) {
        return Err((
            StatusCode::UNAUTHORIZED,
            "reload refused: missing or wrong token; send Authorization: Bearer <the token of reload_token_file>\n",
        ));
    }
    Ok(())
}

/// `{"key", "leader": this one holds it, "holder": the key's value or null}`.
async fn lease(State(s): State<Arc<EndpointState>>) -> Response {
    let key = s.config.borrow().lease.key.clone();
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({
            "key": key,
            "leader": s.leadership.may_act(),
            "holder": s.leadership.holder(),
        })
        .to_string(),
    )
        .into_response()
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
    // A slot is scraped at its active: its standby holds the same groups.
    let targets: Vec<&str> = list
        .holders()
        .map(|m| list.placement(m).active.as_str())
        .collect();
    serde_json::json!([{ "targets": targets, "labels": { "service": service_name } }]).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn status(headers: &HeaderMap, token: Option<&str>) -> u16 {
        match reload_allowed(headers, token) {
            Ok(()) => 200,
            Err((status, _)) => status.as_u16(),
        }
    }

    #[test]
    fn a_reload_needs_the_token_and_the_same_site() {
        let good = [("host", "127.0.0.1:9294"), ("authorization", "Bearer s3cret")];
        assert_eq!(status(&headers(&good), Some("s3cret")), 200);
        assert_eq!(status(&headers(&good), None), 403, "off without a token");
        assert_eq!(status(&headers(&good[..1]), Some("s3cret")), 401);
        let wrong = [("host", "h:1"), ("authorization", "Bearer s3cre")];
        assert_eq!(status(&headers(&wrong), Some("s3cret")), 401);
        let basic = [("host", "h:1"), ("authorization", "Basic s3cret")];
        assert_eq!(status(&headers(&basic), Some("s3cret")), 401);
        // A browser on another site, even with the token (a page cannot hold it, but still).
        let mut cross = good.to_vec();
        cross.push(("origin", "http://evil.example"));
        assert_eq!(status(&headers(&cross), Some("s3cret")), 403);
        let mut fetch = good.to_vec();
        fetch.push(("sec-fetch-site", "cross-site"));
        assert_eq!(status(&headers(&fetch), Some("s3cret")), 403);
        let mut same = good.to_vec();
        same.push(("origin", "http://127.0.0.1:9294"));
        same.push(("sec-fetch-site", "same-origin"));
        assert_eq!(status(&headers(&same), Some("s3cret")), 200);
    }

    #[test]
    fn targets_are_http_sd_json() {
        let list = MemberList::new(3, &["b:2", "a:1"]).unwrap();
        assert_eq!(
            targets_json(&list, "pushgateway"),
            r#"[{"labels":{"service":"pushgateway"},"targets":["a:1","b:2"]}]"#
        );
    }
}
