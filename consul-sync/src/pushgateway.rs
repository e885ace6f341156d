//! The pushgateway calls the reconciler makes: read what one holds, delete a group, put a group.
//!
//! Owns the URLs, timeouts and the mapping of pushgateway's answers to errors. A group is always
//! named by [`GroupingKey::to_path`], so a delete names exactly the group that was read, whatever
//! its label values hold (`/`, `%`, Unicode, empty).

use crate::groups::{parse_api_groups, ApiGroup, PushTimeReader, PushTimes};
use dynamic_sharding::grouping_key::GroupingKey;
use dynamic_sharding::members::Member;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A pushgateway with 100k groups needs a few seconds to expose them.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// One delete or put of one group.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest `/api/v1/metrics` answer read into memory (it is read only to copy groups at a drain
/// deadline); the push times are streamed and need no bound.
const MAX_API_BODY: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum PushgatewayError {
    #[error("{what}: pushgateway {member} did not answer: {detail}")]
    Unreachable {
        what: &'static str,
        member: String,
        detail: String,
    },
    #[error("{what}: pushgateway {member} answered {status}: {body}")]
    Status {
        what: &'static str,
        member: String,
        status: u16,
        body: String,
    },
    #[error("{what}: pushgateway {member} sent an unexpected answer: {why}")]
    BadResponse {
        what: &'static str,
        member: String,
        why: String,
    },
}

#[derive(Clone, Debug)]
pub struct PushgatewayClient {
    http: reqwest::Client,
}

impl PushgatewayClient {
    pub fn new() -> Result<PushgatewayClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .no_proxy()
            .build()?;
        Ok(PushgatewayClient { http })
    }

    async fn send(
        &self,
        what: &'static str,
        member: &Member,
        req: reqwest::RequestBuilder,
        ok: &[u16],
    ) -> Result<reqwest::Response, PushgatewayError> {
        let resp = req.send().await.map_err(|e| PushgatewayError::Unreachable {
            what,
            member: member.to_string(),
            detail: crate::error_chain(&e),
        })?;
        let status = resp.status().as_u16();
        if !ok.contains(&status) {
            // Only for the log line: bounded, as a misbehaving server's body may be anything.
            let body = match crate::consul::read_limited(resp, crate::consul::MAX_ERROR_BYTES).await {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(why) => why,
            };
            return Err(PushgatewayError::Status {
                what,
                member: member.to_string(),
                status,
                body: body.trim().chars().take(500).collect(),
            });
        }
        Ok(resp)
    }

    /// Every group `member` holds with its push time, from the `push_time_seconds` lines of its
    /// `/metrics` (streamed: memory does not grow with the number of groups' metrics).
    pub async fn push_times(&self, member: &Member) -> Result<PushTimes, PushgatewayError> {
        const WHAT: &str = "reading push times";
        let req = self
            .http
            .get(format!("http://{member}/metrics"))
            .header("accept", "text/plain; version=0.0.4")
            .timeout(READ_TIMEOUT);
        let resp = self.send(WHAT, member, req, &[200]).await?;
        let mut reader = PushTimeReader::default();
        read_chunks(WHAT, member, resp, |chunk| {
            reader.feed(chunk);
            Ok(())
        })
        .await?;
        Ok(reader.finish())
    }

    /// Every group `member` holds with its metric families (`/api/v1/metrics`).
    pub async fn api_groups(&self, member: &Member) -> Result<Vec<ApiGroup>, PushgatewayError> {
        const WHAT: &str = "reading groups";
        let req = self
            .http
            .get(format!("http://{member}/api/v1/metrics"))
            .timeout(READ_TIMEOUT);
        let resp = self.send(WHAT, member, req, &[200]).await?;
        let mut body = Vec::new();
        read_chunks(WHAT, member, resp, |chunk| {
            if body.len() + chunk.len() > MAX_API_BODY {
                return Err(format!("answer larger than {MAX_API_BODY} bytes"));
            }
            body.extend_from_slice(chunk);
            Ok(())
        })
        .await?;
        let (groups, _skipped) = parse_api_groups(&body).map_err(|why| PushgatewayError::BadResponse {
            what: WHAT,
            member: member.to_string(),
            why,
        })?;
        Ok(groups)
    }

    /// Deletes exactly the group `key` (pushgateway answers 202, also for a missing group).
    pub async fn delete(&self, member: &Member, key: &GroupingKey) -> Result<(), PushgatewayError> {
        let req = self
            .http
            .delete(format!("http://{member}{}", key.to_path()))
            .timeout(WRITE_TIMEOUT);
        self.send("deleting a group", member, req, &[200, 202]).await?;
        Ok(())
    }

    /// Replaces the group `key` with `text` (the text format), as a job's `PUT` would.
    pub async fn put(
        &self,
        member: &Member,
        key: &GroupingKey,
        text: String,
    ) -> Result<(), PushgatewayError> {
        let req = self
            .http
            .put(format!("http://{member}{}", key.to_path()))
            .header("content-type", "text/plain; version=0.0.4")
            .body(text)
            .timeout(WRITE_TIMEOUT);
        self.send("copying a group", member, req, &[200, 202]).await?;
        Ok(())
    }
}

/// Hands the body to `each` chunk by chunk as it arrives; `each` may refuse it (with the reason).
async fn read_chunks(
    what: &'static str,
    member: &Member,
    mut resp: reqwest::Response,
    mut each: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), PushgatewayError> {
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => each(&chunk).map_err(|why| PushgatewayError::BadResponse {
                what,
                member: member.to_string(),
                why,
            })?,
            Ok(None) => return Ok(()),
            Err(e) => {
                return Err(PushgatewayError::Unreachable {
                    what,
                    member: member.to_string(),
                    detail: crate::error_chain(&e),
                })
            }
        }
    }
}
