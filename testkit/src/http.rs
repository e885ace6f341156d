//! Blocking HTTP for tests: any status is a response (not an error), redirects are not followed,
//! every request is bounded by a 10 s timeout.

use std::sync::OnceLock;
use std::time::Duration;

/// Longest any one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A response: status, headers (names lower-case, in order) and body as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON; panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .into()
    })
}

/// Sends one request; `Err` only when there was no HTTP response (refused, reset, timed out).
pub fn try_http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse, String> {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(body.to_vec())
        .map_err(|e| format!("{method} {url}: bad request: {e}"))?;
    let mut resp = agent().run(req).map_err(|e| format!("{method} {url}: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .map_err(|e| format!("{method} {url}: reading body: {e}"))?;
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// Like [`try_http_request`] but panics when there is no response.
pub fn http_request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    try_http_request(method, url, headers, body).unwrap_or_else(|e| panic!("{e}"))
}

/// `GET url`, or `Err` when there is no response.
pub fn try_http_get(url: &str) -> Result<(u16, String), String> {
    try_http_request("GET", url, &[], b"").map(|r| (r.status, r.body))
}

/// `GET url` → (status, body); panics when there is no response.
pub fn http_get(url: &str) -> (u16, String) {
    try_http_get(url).unwrap_or_else(|e| panic!("{e}"))
}
