//! One write's copy for its slot's standby: the request line and the headers pushgateway needs,
//! the body collected as it streams by (up to the configured limit), and why a copy could not be
//! taken or was not taken by the standby.
//!
//! The copy goes to the standby as one call once the body ended; the client's answer waits for
//! the call ([`super::calls`]). Nothing here fails the client's write: a failure is counted and
//! logged, and consul-sync's repair copies what the standby lacks.

use super::header_map::RequestHeaders;
use super::host::HostError;
use crate::routing::Replica;
use std::fmt;

/// Client headers the standby gets as the active does: how to read the body, and the
/// credentials of a pushgateway behind basic auth.
const KEPT_HEADERS: [&str; 3] = ["content-type", "content-encoding", "authorization"];

/// Why a write did not reach its standby.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The body is longer than `replication_body_limit`.
    TooLarge { limit: usize },
    /// The client asked for `100 Continue` and got its answer before sending the body.
    BodyNotRead,
    /// The host would not hand over the body.
    BodyUnreadable(HostError),
    /// The host would not send the call.
    NotSent(String),
    /// An answer other than 2xx, with the first line of its body: the standby's reason, or
    /// Envoy's when it answered for the standby (503 for a failed connection, 504 when
    /// `replication_timeout` passed).
    Status(u32, String),
    /// The call was reset without an answer.
    NoAnswer,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::TooLarge { limit } => {
                write!(f, "the body is over replication_body_limit ({limit} bytes)")
            }
            Failure::BodyNotRead => {
                f.write_str("the client sent Expect: 100-continue and was answered before its body was read")
            }
            Failure::BodyUnreadable(e) => write!(f, "the body could not be read: {e}"),
            Failure::NotSent(why) => f.write_str(why),
            Failure::Status(s, why) if why.is_empty() => write!(f, "status {s}"),
            Failure::Status(s, why) => write!(f, "status {s}: {why}"),
            Failure::NoAnswer => f.write_str("no answer"),
        }
    }
}

/// What the standby is sent.
#[derive(Debug)]
pub struct Call<'r> {
    pub headers: Vec<(&'r str, &'r str)>,
    pub body: &'r [u8],
}

/// Most bytes of an answer's body read for a log line.
pub const REASON_BYTES: usize = 256;

/// The first line of an answer's body, as text, for a log line.
pub fn reason(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.lines().next().unwrap_or_default().trim().to_owned()
}

/// A write being copied for its standby.
#[derive(Debug)]
pub struct Replication {
    pub replica: Replica,
    method: String,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Body,
    limit: usize,
    /// The body's declared length, and the bytes of it seen so far.
    declared: Option<u64>,
    seen: u64,
}

#[derive(Debug)]
enum Body {
    Copying(Vec<u8>),
    Failed(Failure),
}

impl Replication {
    /// The copy of the write `method path` (as received) with the client's `headers`, to take
    /// at most `limit` bytes of body. A declared length over the limit fails it at once, so
    /// nothing is copied in vain.
    pub fn new(
        replica: Replica,
        method: &str,
        path: &str,
        headers: &RequestHeaders,
        limit: usize,
    ) -> Replication {
        let declared = headers
            .get("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        // Not allocated ahead: a body of one chunk (most pushes) becomes the copy as the host
        // hands it over.
        let body = match declared {
            Some(n) if n > limit as u64 => Body::Failed(Failure::TooLarge { limit }),
            _ => Body::Copying(Vec::new()),
        };
        Replication {
            replica,
            method: method.to_owned(),
            path: path.to_owned(),
            headers: KEPT_HEADERS
                .iter()
                .filter_map(|name| headers.get(name).map(|v| (*name, v.to_owned())))
                .collect(),
            body,
            limit,
            declared,
            seen: 0,
        }
    }

    /// Whether the body seen so far is as long as the client declared: then no byte of it is
    /// left to come (what follows is only the end of the stream).
    pub fn complete(&self) -> bool {
        self.declared == Some(self.seen)
    }

    /// Whether a chunk of `size` bytes is to be copied: false once the copy failed, and from the
    /// chunk that takes it over the limit on (the copy is then dropped).
    pub fn wants(&mut self, size: usize) -> bool {
        self.seen = self.seen.saturating_add(size as u64);
        let Body::Copying(copy) = &self.body else {
            return false;
        };
        if copy.len().saturating_add(size) > self.limit {
            self.body = Body::Failed(Failure::TooLarge { limit: self.limit });
            return false;
        }
        size > 0
    }

    /// A chunk of the body, as the host handed it over.
    pub fn copy(&mut self, chunk: Result<Vec<u8>, HostError>) {
        if let Body::Copying(copy) = &mut self.body {
            match chunk {
                Ok(bytes) if copy.is_empty() => *copy = bytes,
                Ok(bytes) => copy.extend_from_slice(&bytes),
                Err(e) => self.body = Body::Failed(Failure::BodyUnreadable(e)),
            }
        }
    }

    /// The client got its answer without sending the body.
    pub fn body_not_read(&mut self) {
        self.body = Body::Failed(Failure::BodyNotRead);
    }

    /// The call's headers (with `destination`, the header the cluster routes on, set to the
    /// standby) and body, or why there is nothing to send.
    pub fn call<'r>(&'r self, destination: &'r str) -> Result<Call<'r>, &'r Failure> {
        let body = match &self.body {
            Body::Copying(copy) => copy.as_slice(),
            Body::Failed(why) => return Err(why),
        };
        let standby = self.replica.standby.as_str();
        let mut headers = vec![
            (":method", self.method.as_str()),
            (":path", self.path.as_str()),
            (":authority", standby),
            (":scheme", "http"),
            (destination, standby),
        ];
        headers.extend(self.headers.iter().map(|(n, v)| (*n, v.as_str())));
        Ok(Call { headers, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::members::Member;
    use crate::request::header_map::encode;

    fn replication(headers: &[(&str, &str)], limit: usize) -> Replication {
        let replica = Replica {
            slot: Member::parse("a:1").unwrap(),
            standby: Member::parse("s:1").unwrap(),
        };
        let map = RequestHeaders::from_encoded(encode(headers.iter().copied()));
        Replication::new(replica, "PUT", "/metrics/job/j?x", &map, limit)
    }

    #[test]
    fn the_call_carries_the_write_and_only_the_headers_pushgateway_needs() {
        let mut r = replication(
            &[
                ("content-type", "text/plain; version=0.0.4"),
                ("cookie", "c=1"),
                ("authorization", "Basic dTpw"),
                ("content-encoding", "gzip"),
                ("x-sharding-destination", "evil:1"),
            ],
            10,
        );
        assert!(r.wants(4));
        r.copy(Ok(b"m 1\n".to_vec()));
        let Call { headers, body } = r.call("x-dest").unwrap();
        assert_eq!(
            headers,
            [
                (":method", "PUT"),
                (":path", "/metrics/job/j?x"),
                (":authority", "s:1"),
                (":scheme", "http"),
                ("x-dest", "s:1"),
                ("content-type", "text/plain; version=0.0.4"),
                ("content-encoding", "gzip"),
                ("authorization", "Basic dTpw"),
            ]
        );
        assert_eq!(body, b"m 1\n");
    }

    #[test]
    fn an_answers_reason_is_its_first_line() {
        assert_eq!(reason(b"upstream request timeout"), "upstream request timeout");
        assert_eq!(
            reason(b" text format parsing error in line 1\nmore"),
            "text format parsing error in line 1"
        );
        assert_eq!(reason(b""), "");
        assert_eq!(reason(b"\xff ok"), "\u{fffd} ok");
        assert_eq!(
            Failure::Status(504, "upstream request timeout".into()).to_string(),
            "status 504: upstream request timeout"
        );
        assert_eq!(Failure::Status(500, String::new()).to_string(), "status 500");
    }

    #[test]
    fn chunks_are_copied_up_to_the_limit_and_no_further() {
        let mut r = replication(&[], 10);
        assert!(r.wants(6));
        r.copy(Ok(b"m 1\nm ".to_vec()));
        assert!(!r.wants(0), "nothing to copy");
        assert!(r.wants(4), "exactly at the limit");
        r.copy(Ok(b"2\n\n\n".to_vec()));
        assert_eq!(r.call("d").unwrap().body, b"m 1\nm 2\n\n\n");
        assert!(!r.wants(1), "one byte over");
        assert_eq!(r.call("d").unwrap_err(), &Failure::TooLarge { limit: 10 });
        assert!(!r.wants(1), "failed for good");
    }

    #[test]
    fn the_body_is_complete_once_its_declared_length_was_seen() {
        let mut r = replication(&[("content-length", "8")], 10);
        assert!(!r.complete());
        r.wants(4);
        assert!(!r.complete());
        r.wants(4);
        assert!(r.complete());
        // Over the limit, the length is still followed.
        let mut r = replication(&[("content-length", "12")], 10);
        r.wants(12);
        assert!(r.complete());
        // Without a declared length only the end of the stream ends it.
        let mut r = replication(&[], 10);
        r.wants(0);
        assert!(!r.complete());
    }

    #[test]
    fn a_declared_length_over_the_limit_fails_before_any_copy() {
        let mut r = replication(&[("content-length", "11")], 10);
        assert!(!r.wants(1));
        assert_eq!(r.call("d").unwrap_err(), &Failure::TooLarge { limit: 10 });
        let mut r = replication(&[("content-length", "10")], 10);
        assert!(r.wants(10));
    }

    #[test]
    fn a_body_that_cannot_be_read_or_was_never_sent_fails_the_copy() {
        let mut r = replication(&[], 10);
        r.wants(2);
        let e = HostError {
            call: "request_body",
            status: 2,
        };
        r.copy(Err(e));
        assert_eq!(r.call("d").unwrap_err(), &Failure::BodyUnreadable(e));
        r.copy(Ok(b"xx".to_vec()));
        assert!(r.call("d").is_err(), "stays failed");
        let mut r = replication(&[], 10);
        r.body_not_read();
        assert_eq!(r.call("d").unwrap_err(), &Failure::BodyNotRead);
    }
}
