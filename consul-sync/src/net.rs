//! The HTTP client side every caller shares: how a client is built, how an answer is read (never
//! without a bound), and the one error a call to Consul, a pushgateway or an Envoy gives.

use std::time::Duration;

/// Most bytes read of an error answer, which only goes into a log line.
const MAX_ERROR_BYTES: usize = 4 * 1024;
/// Most characters of an error answer kept in an error.
const MAX_ERROR_CHARS: usize = 500;

/// A client that connects within `connect_timeout` and ignores proxy settings from the
/// environment: every peer (Consul agent, pushgateways, Envoy control listeners) is reached
/// directly. Each request sets its own timeout.
pub fn client(connect_timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .no_proxy()
        .build()
}

/// A failed call: what was being done, to whom, and why.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No HTTP answer: refused, reset, timed out.
    #[error("{what}: {peer} did not answer: {detail}")]
    Unreachable {
        what: &'static str,
        peer: String,
        detail: String,
    },
    /// An HTTP answer with a status the call does not take.
    #[error("{what}: {peer} answered {status}: {body}")]
    Status {
        what: &'static str,
        peer: String,
        status: u16,
        body: String,
    },
    /// An accepted status whose body is not what the peer sends.
    #[error("{what}: {peer} sent an unexpected answer: {why}")]
    BadResponse {
        what: &'static str,
        peer: String,
        why: String,
    },
}

impl NetError {
    fn unreachable(what: &'static str, peer: &str, e: &reqwest::Error) -> NetError {
        NetError::Unreachable {
            what,
            peer: peer.to_owned(),
            detail: error_chain(e),
        }
    }

    pub fn bad_response(what: &'static str, peer: &str, why: String) -> NetError {
        NetError::BadResponse {
            what,
            peer: peer.to_owned(),
            why,
        }
    }
}

/// Sends `req`; a status outside `ok` is an error naming `what`, the peer and the start of the
/// answer (read bounded, as a misbehaving server's body may be anything).
pub async fn send(
    what: &'static str,
    peer: &str,
    req: reqwest::RequestBuilder,
    ok: &[u16],
) -> Result<reqwest::Response, NetError> {
    let resp = req
        .send()
        .await
        .map_err(|e| NetError::unreachable(what, peer, &e))?;
    let status = resp.status().as_u16();
    if ok.contains(&status) {
        return Ok(resp);
    }
    let body = read_limited(resp, MAX_ERROR_BYTES)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("(unreadable: {e})"));
    Err(NetError::Status {
        what,
        peer: peer.to_owned(),
        status,
        body: body.trim().chars().take(MAX_ERROR_CHARS).collect(),
    })
}

/// Why a body was not read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Longer than the caller takes (or refused by its reader), with the reason.
    #[error("{0}")]
    Refused(String),
    /// The connection failed while reading, with the causes.
    #[error("{0}")]
    Broken(String),
}

impl BodyError {
    /// The call's error: a refused body is an unexpected answer, a broken one no answer.
    pub fn into_net(self, what: &'static str, peer: &str) -> NetError {
        match self {
            BodyError::Refused(why) => NetError::bad_response(what, peer, why),
            BodyError::Broken(detail) => NetError::Unreachable {
                what,
                peer: peer.to_owned(),
                detail,
            },
        }
    }
}

/// Reads a body of at most `limit` bytes. A longer one is an error and is not read further, so a
/// misbehaving server cannot make consul-sync buffer without bound.
pub async fn read_limited(resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if let Some(len) = resp.content_length().filter(|l| *l > limit as u64) {
        return Err(BodyError::Refused(format!(
            "the answer is {len} bytes; at most {limit} are read"
        )));
    }
    let mut body = Vec::new();
    read_chunks(resp, |chunk| {
        if body.len() + chunk.len() > limit {
            return Err(format!(
                "the answer is over {limit} bytes; at most {limit} are read"
            ));
        }
        body.extend_from_slice(chunk);
        Ok(())
    })
    .await?;
    Ok(body)
}

/// Hands the body to `each` chunk by chunk as it arrives; `each` may refuse it (with the reason).
pub async fn read_chunks(
    mut resp: reqwest::Response,
    mut each: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), BodyError> {
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => each(&chunk).map_err(BodyError::Refused)?,
            Ok(None) => return Ok(()),
            Err(e) => return Err(BodyError::Broken(error_chain(&e))),
        }
    }
}

/// The error and its causes, as reqwest's Display shows only the outermost.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
