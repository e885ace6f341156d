//! Pushes the published member list to one Envoy's control API, `PUT <url>/-/sharding/members`.
//!
//! Owns the per-Envoy retry rules. Each Envoy has its own task, so one that hangs or is down
//! delays no other. A push happens when the list changes and again every resync interval (a
//! restarted Envoy is healed by the next one). Answers:
//! - 200: in force (`changed` says whether it was new to that Envoy).
//! - 409: the Envoy holds a newer, different list from another writer. Logged and counted, not
//!   fought: no re-push with a higher version; the next resync tries again with the same version.
//! - 400, 401, 413 and other 4xx: a configuration error (token, size); logged as an error and
//!   tried again at the next resync.
//! - No answer, 429 or 5xx: retried with backoff (capped at the resync interval) until it
//!   succeeds or the list changes.

use crate::backoff::Backoff;
use crate::membership::versions::Versions;
use crate::metrics::{Metrics, PushResult};
use crate::net;
use crate::shutdown::Shutdown;
use crate::status::Readiness;
use dynamic_sharding::control::MEMBERS_PATH;
use dynamic_sharding::members::MemberList;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

/// Time allowed to connect to an Envoy.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Time allowed for one push.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes read of a control-API answer (the filter's are below 1 KiB).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How one push ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// 200: the Envoy holds these members; `changed` when this push changed them. `version` is
    /// the version it holds, which is another writer's when it was higher than ours.
    Accepted { changed: bool, version: Option<u64> },
    /// 409: another writer's newer, different list is in force there.
    Conflict {
        stored_version: Option<u64>,
        error: String,
    },
    /// A 4xx other than 409 and 429: retrying will not help before the configuration changes.
    Refused { status: u16, error: String },
    /// No answer, 429 or 5xx: retry soon.
    Failed(String),
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<String>,
    version: Option<u64>,
}

#[derive(Deserialize)]
struct OkBody {
    changed: Option<bool>,
    version: Option<u64>,
}

/// Classifies a control-API answer.
pub fn classify(status: u16, body: &str) -> PushOutcome {
    let err: Option<ErrorBody> = serde_json::from_str(body).ok();
    let text = || {
        err.as_ref()
            .and_then(|e| e.error.clone())
            .unwrap_or_else(|| body.trim().chars().take(500).collect())
    };
    match status {
        200 => {
            let ok: Option<OkBody> = serde_json::from_str(body).ok();
            PushOutcome::Accepted {
                changed: ok.as_ref().and_then(|b| b.changed).unwrap_or(true),
                version: ok.and_then(|b| b.version),
            }
        }
        409 => PushOutcome::Conflict {
            stored_version: err.as_ref().and_then(|e| e.version),
            error: text(),
        },
        429 => PushOutcome::Failed(format!("429: {}", text())),
        400..=499 => PushOutcome::Refused {
            status,
            error: text(),
        },
        _ => PushOutcome::Failed(format!("{status}: {}", text())),
    }
}

pub struct Pusher {
    pub index: usize,
    /// The base URL as configured, for logs and metric labels.
    pub base_url: String,
    pub token: String,
    pub resync_interval: Duration,
    pub metrics: Arc<Metrics>,
    pub ready: Arc<Readiness>,
    pub versions: Arc<Versions>,
    http: reqwest::Client,
}

impl Pusher {
    pub fn new(
        index: usize,
        base_url: String,
        token: String,
        resync_interval: Duration,
        metrics: Arc<Metrics>,
        ready: Arc<Readiness>,
        versions: Arc<Versions>,
    ) -> Result<Pusher, reqwest::Error> {
        let http = net::client(CONNECT_TIMEOUT)?;
        Ok(Pusher {
            index,
            base_url,
            token,
            resync_interval,
            metrics,
            ready,
            versions,
            http,
        })
    }

    /// One push of `list`.
    pub async fn push(&self, list: &MemberList) -> PushOutcome {
        let url = format!("{}{MEMBERS_PATH}", self.base_url);
        let resp = self
            .http
            .put(&url)
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(list.to_json())
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await;
        match resp {
            Ok(r) => {
                let status = r.status().as_u16();
                match net::read_limited(r, MAX_ANSWER_BYTES).await {
                    Ok(body) => classify(status, &String::from_utf8_lossy(&body)),
                    Err(e) => PushOutcome::Failed(format!("reading the answer: {e}")),
                }
            }
            Err(e) => PushOutcome::Failed(net::error_chain(&e)),
        }
    }

    /// Pushes on every change of `published` and every resync interval until `shutdown`.
    pub async fn run(self, mut published: watch::Receiver<Option<MemberList>>, mut shutdown: Shutdown) {
        let mut st = PushState {
            // Retries are never rarer than resyncs: a restarted Envoy is healed within the interval.
            backoff: Backoff::with_cap(self.resync_interval),
            failures: 0,
            synced_once: false,
        };
        // Far enough to mean "only on a change".
        let idle = Duration::from_secs(365 * 24 * 3600);
        loop {
            let current = published.borrow_and_update().clone();
            let wait = match current {
                None => idle,
                Some(list) => {
                    let outcome = tokio::select! {
                        _ = shutdown.recv() => return,
                        changed = published.changed() => {
                            // A newer list: abandon this push and send that one.
                            if changed.is_err() { return; }
                            continue;
                        }
                        o = self.push(&list) => o,
                    };
                    self.after_push(&list, outcome, &mut st)
                }
            };
            tokio::select! {
                _ = shutdown.recv() => return,
                changed = published.changed() => if changed.is_err() { return; },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Logs and counts an outcome; returns the time until the next push.
    fn after_push(&self, list: &MemberList, outcome: PushOutcome, st: &mut PushState) -> Duration {
        let envoy = &self.base_url;
        match outcome {
            PushOutcome::Accepted { changed, version } => {
                self.answered(st);
                self.accepted(list, changed, version, st);
            }
            PushOutcome::Conflict {
                stored_version,
                error,
            } => {
                self.answered(st);
                self.conflicted(list, stored_version, &error);
            }
            PushOutcome::Refused { status, error } => {
                self.answered(st);
                self.metrics.push(envoy, PushResult::Refused);
                error!(
                    "envoy {envoy}: refused the member list with {status}: {error}; trying again in {:?}",
                    self.resync_interval
                );
            }
            PushOutcome::Failed(why) => return self.failed(&why, st),
        }
        self.resync_interval
    }

    /// The Envoy answered: the failures in a row are over.
    fn answered(&self, st: &mut PushState) {
        if st.failures > 0 {
            info!(
                "envoy {}: reachable again after {} failed pushes",
                self.base_url, st.failures
            );
            st.failures = 0;
        }
        st.backoff.reset();
    }

    /// 409: another writer's newer list is in force there; the watcher reads Consul again.
    fn conflicted(&self, list: &MemberList, stored_version: Option<u64>, error: &str) {
        let envoy = &self.base_url;
        self.metrics.push(envoy, PushResult::Conflict);
        let stored = stored_version.map_or_else(|| "?".to_owned(), |v| v.to_string());
        warn!(
            "envoy {envoy}: holds a newer, different member list (version {stored}) from another writer; \
             not overriding it (ours: version {}, {} members); Consul is read again to tell whose \
             list is current: {error}",
            list.version,
            list.len()
        );
        if let Some(v) = stored_version {
            self.versions.conflict(v);
        }
    }

    /// 200: the list is in force there.
    fn accepted(&self, list: &MemberList, changed: bool, version: Option<u64>, st: &mut PushState) {
        let envoy = &self.base_url;
        if let Some(v) = version {
            self.versions.saw(v);
        }
        self.metrics.push(envoy, PushResult::Ok);
        self.metrics.pushed(envoy, list.version);
        if changed {
            info!(
                "envoy {envoy}: took member list version {} ({} members)",
                list.version,
                list.len()
            );
        } else {
            debug!(
                "envoy {envoy}: member list version {} already in force",
                list.version
            );
        }
        if !st.synced_once {
            st.synced_once = true;
            self.ready.envoy_synced(self.index);
        }
    }

    /// No answer, 429 or 5xx: the delay before the next try.
    fn failed(&self, why: &str, st: &mut PushState) -> Duration {
        let envoy = &self.base_url;
        st.failures += 1;
        let failures = st.failures;
        self.metrics.push(envoy, PushResult::Failed);
        let delay = st.backoff.next_delay();
        if failures == 1 || failures % 10 == 0 {
            warn!("envoy {envoy}: push failed ({failures} in a row): {why}; retrying in {delay:?}");
        } else {
            debug!("envoy {envoy}: push failed ({failures} in a row): {why}; retrying in {delay:?}");
        }
        delay
    }
}

/// What a pusher carries from one push to the next.
struct PushState {
    backoff: Backoff,
    /// Failed pushes in a row.
    failures: u64,
    /// Whether this Envoy has taken a list once (readiness).
    synced_once: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_as_the_control_api_defines_them() {
        assert_eq!(
            classify(200, r#"{"version":5,"count":2,"changed":true}"#),
            PushOutcome::Accepted {
                changed: true,
                version: Some(5)
            }
        );
        assert_eq!(
            classify(200, r#"{"version":5,"count":2,"changed":false}"#),
            PushOutcome::Accepted {
                changed: false,
                version: Some(5)
            }
        );
        assert_eq!(
            classify(409, r#"{"error":"version 3 is not above","version":9}"#),
            PushOutcome::Conflict {
                stored_version: Some(9),
                error: "version 3 is not above".into()
            }
        );
        assert_eq!(
            classify(401, r#"{"error":"missing or wrong token"}"#),
            PushOutcome::Refused {
                status: 401,
                error: "missing or wrong token".into()
            }
        );
        assert!(matches!(
            classify(413, "{\"error\":\"big\"}"),
            PushOutcome::Refused { status: 413, .. }
        ));
        assert!(
            matches!(classify(400, "not json"), PushOutcome::Refused { status: 400, ref error } if error == "not json")
        );
        assert!(matches!(classify(503, "upstream"), PushOutcome::Failed(ref s) if s.contains("503")));
        assert!(matches!(classify(429, "{}"), PushOutcome::Failed(_)));
    }
}
