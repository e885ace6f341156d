//! consul-sync's own metrics, served on `/metrics` (all names start with `consul_sync_`).
//!
//! | metric | what |
//! |---|---|
//! | `consul_sync_consul_requests_total{kind}` | requests to Consul (`register`, `health`) |
//! | `consul_sync_consul_errors_total{kind}` | those that failed (no answer, or not 200) |
//! | `consul_sync_consul_up` | 1 when the last Consul request succeeded |
//! | `consul_sync_last_consul_sync_timestamp_seconds` | Unix time of the last successful Consul read |
//! | `consul_sync_member_changes_total` | changes of the member list after the first |
//! | `consul_sync_members` | members in the current list |
//! | `consul_sync_member_list_version` | version of the current list (Unix ms) |
//! | `consul_sync_pushes_total{envoy,result}` | pushes per Envoy: `ok`, `conflict`, `refused`, `failed` |
//! | `consul_sync_last_push_timestamp_seconds{envoy}` | Unix time of the last accepted push |
//! | `consul_sync_envoy_version{envoy}` | version of the list last accepted by that Envoy |

use dynamic_sharding::members::MemberList;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushResult {
    Ok,
    Conflict,
    Refused,
    Failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PushLabels {
    envoy: String,
    result: PushResultLabel,
}

/// Lower-case label values (`ok`, not `Ok`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum PushResultLabel {
    ok,
    conflict,
    refused,
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvoyLabels {
    envoy: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    consul_requests: Family<KindLabels, Counter>,
    consul_errors: Family<KindLabels, Counter>,
    consul_up: Gauge,
    last_consul_sync: FloatGauge,
    pub member_changes: Counter,
    members: Gauge,
    version: Gauge,
    pushes: Family<PushLabels, Counter>,
    last_push: Family<EnvoyLabels, FloatGauge>,
    envoy_version: Family<EnvoyLabels, Gauge>,
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Metrics {
    /// The metrics, with the per-Envoy series present (at 0) from the start.
    pub fn new(envoys: &[String]) -> Metrics {
        let mut registry = Registry::with_prefix("consul_sync");
        let mut m = Metrics {
            registry: Registry::default(),
            consul_requests: Family::default(),
            consul_errors: Family::default(),
            consul_up: Gauge::default(),
            last_consul_sync: FloatGauge::default(),
            member_changes: Counter::default(),
            members: Gauge::default(),
            version: Gauge::default(),
            pushes: Family::default(),
            last_push: Family::default(),
            envoy_version: Family::default(),
        };
        registry.register(
            "consul_requests",
            "Requests to Consul, by kind (register, health)",
            m.consul_requests.clone(),
        );
        registry.register(
            "consul_errors",
            "Requests to Consul that failed, by kind",
            m.consul_errors.clone(),
        );
        registry.register(
            "consul_up",
            "1 when the last request to Consul succeeded",
            m.consul_up.clone(),
        );
        registry.register(
            "last_consul_sync_timestamp_seconds",
            "Unix time of the last successful read of the passing pushgateways from Consul",
            m.last_consul_sync.clone(),
        );
        registry.register(
            "member_changes",
            "Changes of the member list after the first list",
            m.member_changes.clone(),
        );
        registry.register(
            "members",
            "Members (passing pushgateways) in the current list",
            m.members.clone(),
        );
        registry.register(
            "member_list_version",
            "Version of the current member list (Unix milliseconds)",
            m.version.clone(),
        );
        registry.register(
            "pushes",
            "Pushes of the member list per Envoy, by result (ok, conflict, refused, failed)",
            m.pushes.clone(),
        );
        registry.register(
            "last_push_timestamp_seconds",
            "Unix time of the last push an Envoy accepted",
            m.last_push.clone(),
        );
        registry.register(
            "envoy_version",
            "Version of the member list an Envoy last accepted from us",
            m.envoy_version.clone(),
        );
        for kind in ["register", "health"] {
            let l = KindLabels {
                kind: kind.to_owned(),
            };
            let _ = m.consul_requests.get_or_create(&l);
            let _ = m.consul_errors.get_or_create(&l);
        }
        for e in envoys {
            for r in [
                PushResult::Ok,
                PushResult::Conflict,
                PushResult::Refused,
                PushResult::Failed,
            ] {
                let _ = m.pushes.get_or_create(&push_labels(e, r));
            }
            let _ = m.last_push.get_or_create(&EnvoyLabels { envoy: e.clone() });
        }
        m.registry = registry;
        m
    }

    pub fn consul_request(&self, kind: &str) {
        self.consul_requests
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn consul_error(&self, kind: &str) {
        self.consul_errors
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
        self.consul_up.set(0);
    }

    pub fn consul_ok(&self) {
        self.consul_up.set(1);
        self.last_consul_sync.set(now_seconds());
    }

    pub fn set_members(&self, list: &MemberList) {
        self.members.set(list.len() as i64);
        self.version.set(i64::try_from(list.version).unwrap_or(i64::MAX));
    }

    pub fn push(&self, envoy: &str, result: PushResult) {
        self.pushes.get_or_create(&push_labels(envoy, result)).inc();
    }

    pub fn pushed(&self, envoy: &str, version: u64) {
        let l = EnvoyLabels {
            envoy: envoy.to_owned(),
        };
        self.last_push.get_or_create(&l).set(now_seconds());
        self.envoy_version
            .get_or_create(&l)
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn push_labels(envoy: &str, r: PushResult) -> PushLabels {
    let result = match r {
        PushResult::Ok => PushResultLabel::ok,
        PushResult::Conflict => PushResultLabel::conflict,
        PushResult::Refused => PushResultLabel::refused,
        PushResult::Failed => PushResultLabel::failed,
    };
    PushLabels {
        envoy: envoy.to_owned(),
        result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        let m = Metrics::new(&["http://e:1".to_owned()]);
        m.consul_request("health");
        m.consul_error("health");
        m.push("http://e:1", PushResult::Conflict);
        m.set_members(&MemberList {
            version: 7,
            members: vec![],
            draining: vec![],
        });
        let text = m.encode().unwrap();
        for line in [
            "consul_sync_consul_requests_total{kind=\"health\"} 1",
            "consul_sync_consul_errors_total{kind=\"health\"} 1",
            "consul_sync_consul_errors_total{kind=\"register\"} 0",
            "consul_sync_consul_up 0",
            "consul_sync_pushes_total{envoy=\"http://e:1\",result=\"conflict\"} 1",
            "consul_sync_pushes_total{envoy=\"http://e:1\",result=\"ok\"} 0",
            "consul_sync_members 0",
            "consul_sync_member_list_version 7",
            "consul_sync_member_changes_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
