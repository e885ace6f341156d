//! The pushgateway calls the reconciler makes: read what one holds, delete a group, put a group,
//! read its clock.
//!
//! Owns the URLs, timeouts and the mapping of pushgateway's answers to errors. A group is always
//! named by [`GroupingKey::to_path`], so a delete names exactly the group that was read, whatever
//! its label values hold (`/`, `%`, Unicode, empty).

use crate::net::{self, NetError};
use crate::reconcile::exposition::{parse_api_groups, ApiGroup, PushTimeReader, PushTimes};
use dynamic_sharding::grouping_key::GroupingKey;
use dynamic_sharding::members::Member;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A pushgateway with 100k groups needs a few seconds to expose them.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// One delete or put of one group.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest `/api/v1/metrics` answer read into memory (it is read only to copy groups at a drain
/// deadline); the push times are streamed and need no bound.
const MAX_API_BODY: usize = 1 << 30;

/// A pushgateway's clock as one answer showed it: its `Date` (whole seconds, so its clock read
/// from `date_s` to just under `date_s + 1`) while consul-sync's read from `sent_ms` to
/// `received_ms` (Unix milliseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockReading {
    pub date_s: u64,
    pub sent_ms: u64,
    pub received_ms: u64,
}

/// consul-sync's clock, Unix milliseconds.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Clone, Debug)]
pub struct PushgatewayClient {
    http: reqwest::Client,
}

/// Who an error names.
fn peer(member: &Member) -> String {
    format!("pushgateway {member}")
}

impl PushgatewayClient {
    pub fn new() -> Result<PushgatewayClient, reqwest::Error> {
        Ok(PushgatewayClient {
            http: net::client(CONNECT_TIMEOUT)?,
        })
    }

    /// Every group `member` holds with its push time, from the `push_time_seconds` lines of its
    /// `/metrics` (streamed: memory does not grow with the number of groups' metrics).
    pub async fn push_times(&self, member: &Member) -> Result<PushTimes, NetError> {
        const WHAT: &str = "reading push times";
        let req = self
            .http
            .get(format!("http://{member}/metrics"))
            .header("accept", "text/plain; version=0.0.4")
            .timeout(READ_TIMEOUT);
        let resp = net::send(WHAT, &peer(member), req, &[200]).await?;
        let mut reader = PushTimeReader::default();
        net::read_chunks(resp, |chunk| {
            reader.feed(chunk);
            Ok(())
        })
        .await
        .map_err(|e| e.into_net(WHAT, &peer(member)))?;
        Ok(reader.finish())
    }

    /// Every group `member` holds with its metric families (`/api/v1/metrics`).
    pub async fn api_groups(&self, member: &Member) -> Result<Vec<ApiGroup>, NetError> {
        const WHAT: &str = "reading groups";
        let req = self
            .http
            .get(format!("http://{member}/api/v1/metrics"))
            .timeout(READ_TIMEOUT);
        let resp = net::send(WHAT, &peer(member), req, &[200]).await?;
        let body = net::read_limited(resp, MAX_API_BODY)
            .await
            .map_err(|e| e.into_net(WHAT, &peer(member)))?;
        let (groups, _skipped) =
            parse_api_groups(&body).map_err(|why| NetError::bad_response(WHAT, &peer(member), why))?;
        Ok(groups)
    }

    /// Deletes exactly the group `key` (pushgateway answers 202, also for a missing group).
    pub async fn delete(&self, member: &Member, key: &GroupingKey) -> Result<(), NetError> {
        let req = self
            .http
            .delete(format!("http://{member}{}", key.to_path()))
            .timeout(WRITE_TIMEOUT);
        net::send("deleting a group", &peer(member), req, &[200, 202]).await?;
        Ok(())
    }

    /// `member`'s clock, from the `Date` header of its `/-/healthy`, and consul-sync's before
    /// and after.
    pub async fn clock(&self, member: &Member) -> Result<ClockReading, NetError> {
        const WHAT: &str = "reading the clock";
        let sent_ms = unix_millis();
        let req = self
            .http
            .get(format!("http://{member}/-/healthy"))
            .timeout(WRITE_TIMEOUT);
        let resp = net::send(WHAT, &peer(member), req, &[200]).await?;
        let received_ms = unix_millis();
        let date = resp
            .headers()
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
        match date {
            Some(d) => Ok(ClockReading {
                date_s: d.as_secs(),
                sent_ms,
                received_ms,
            }),
            None => Err(NetError::bad_response(
                WHAT,
                &peer(member),
                "no readable Date header".to_owned(),
            )),
        }
    }

    /// Replaces the group `key` with `text` (the text format), as a job's `PUT` would.
    pub async fn put(&self, member: &Member, key: &GroupingKey, text: String) -> Result<(), NetError> {
        let req = self
            .http
            .put(format!("http://{member}{}", key.to_path()))
            .header("content-type", "text/plain; version=0.0.4")
            .body(text)
            .timeout(WRITE_TIMEOUT);
        net::send("copying a group", &peer(member), req, &[200, 202]).await?;
        Ok(())
    }
}
