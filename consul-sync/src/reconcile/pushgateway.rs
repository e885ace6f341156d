//! The pushgateway calls the reconciler makes: read what one holds, delete a group, put a group,
//! record a failed push.
//!
//! Owns the URLs, timeouts, credentials and the mapping of pushgateway's answers to errors. A
//! group is always named by [`GroupingKey::to_path`], so a delete names exactly the group that was
//! read, whatever its label values hold (`/`, `%`, Unicode, empty).

use crate::config::BasicAuth;
use crate::net::{self, NetError};
use crate::reconcile::clock::Reading;
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
/// A push pushgateway refuses (a sample with a timestamp) yet records as a failed push of the
/// group: `push_failure_time_seconds` becomes the time of receipt, the group's metrics stay.
const FAILING_PUSH: &str = "# refused on purpose: it records a failed push, as the group had one\n\
                            consul_sync_failed_push 1 1\n";

#[derive(Clone, Debug)]
pub struct PushgatewayClient {
    http: reqwest::Client,
    auth: Option<BasicAuth>,
}

/// What one read of a pushgateway gave: its groups, and a reading of its clock when its answer
/// carried a `Date`.
#[derive(Clone, Debug)]
pub struct Read {
    pub times: PushTimes,
    pub clock: Option<Reading>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Who an error names.
fn peer(member: &Member) -> String {
    format!("pushgateway {member}")
}

impl PushgatewayClient {
    pub fn new() -> Result<PushgatewayClient, reqwest::Error> {
        Ok(PushgatewayClient {
            http: net::client(CONNECT_TIMEOUT)?,
            auth: None,
        })
    }

    /// The same client (and connections) sending `auth` with every request.
    pub fn with_auth(&self, auth: Option<&BasicAuth>) -> PushgatewayClient {
        PushgatewayClient {
            http: self.http.clone(),
            auth: auth.cloned(),
        }
    }

    fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.auth {
            Some(a) => req.basic_auth(&a.username, a.password.as_deref()),
            None => req,
        }
    }

    /// Every group `member` holds with its push times, from the push-time lines of its
    /// `/metrics` (streamed: memory does not grow with the number of groups' metrics).
    pub async fn push_times(&self, member: &Member) -> Result<PushTimes, NetError> {
        Ok(self.read(member).await?.times)
    }

    /// [`PushgatewayClient::push_times`], with a reading of `member`'s clock.
    pub async fn read(&self, member: &Member) -> Result<Read, NetError> {
        const WHAT: &str = "reading push times";
        let req = self
            .request(reqwest::Method::GET, format!("http://{member}/metrics"))
            .header("accept", "text/plain; version=0.0.4")
            .timeout(READ_TIMEOUT);
        let sent = unix_now();
        let resp = net::send(WHAT, &peer(member), req, &[200]).await?;
        let answered = unix_now();
        let clock = resp
            .headers()
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|d| d.duration_since(UNIX_EPOCH).ok())
            .map(|d| Reading {
                sent,
                answered,
                date: d.as_secs_f64(),
            });
        let mut reader = PushTimeReader::default();
        net::read_chunks(resp, |chunk| {
            reader.feed(chunk);
            Ok(())
        })
        .await
        .map_err(|e| e.into_net(WHAT, &peer(member)))?;
        Ok(Read {
            times: reader.finish(),
            clock,
        })
    }

    /// Every group `member` holds with its metric families (`/api/v1/metrics`).
    pub async fn api_groups(&self, member: &Member) -> Result<Vec<ApiGroup>, NetError> {
        const WHAT: &str = "reading groups";
        let req = self
            .request(reqwest::Method::GET, format!("http://{member}/api/v1/metrics"))
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
            .request(
                reqwest::Method::DELETE,
                format!("http://{member}{}", key.to_path()),
            )
            .timeout(WRITE_TIMEOUT);
        net::send("deleting a group", &peer(member), req, &[200, 202]).await?;
        Ok(())
    }

    /// Replaces the group `key` with `text` (the text format), as a job's `PUT` would.
    pub async fn put(&self, member: &Member, key: &GroupingKey, text: String) -> Result<(), NetError> {
        let req = self
            .request(reqwest::Method::PUT, format!("http://{member}{}", key.to_path()))
            .header("content-type", "text/plain; version=0.0.4")
            .body(text)
            .timeout(WRITE_TIMEOUT);
        net::send("copying a group", &peer(member), req, &[200, 202]).await?;
        Ok(())
    }

    /// Records a failed push of the group `key` on `member`, as a job's refused push does: a push
    /// of the same path that pushgateway refuses (`400`, or `202` without its consistency check)
    /// but whose time it keeps as `push_failure_time_seconds`; the group's metrics stay.
    pub async fn fail_push(&self, member: &Member, key: &GroupingKey) -> Result<(), NetError> {
        let req = self
            .request(reqwest::Method::PUT, format!("http://{member}{}", key.to_path()))
            .header("content-type", "text/plain; version=0.0.4")
            .body(FAILING_PUSH)
            .timeout(WRITE_TIMEOUT);
        const WHAT: &str = "recording a failed push";
        let resp = net::send(WHAT, &peer(member), req, &[400, 202]).await?;
        if resp.status().as_u16() == 400 {
            // Refused for its timestamp, as meant, and not for anything else.
            let body = net::read_limited(resp, 4096)
                .await
                .map_err(|e| e.into_net(WHAT, &peer(member)))?;
            let body = String::from_utf8_lossy(&body);
            if !body.contains("timestamp") {
                return Err(NetError::bad_response(
                    WHAT,
                    &peer(member),
                    format!("refused for another reason than its timestamp: {}", body.trim()),
                ));
            }
        }
        Ok(())
    }
}
