//! The proxy-wasm host calls the request path makes, returning errors instead of panicking.
//!
//! The SDK's `hostcalls` panic on any status they do not expect and `unwrap()` header values as
//! UTF-8; with `panic = "abort"` either would kill the VM for every request on the worker. These
//! thin wrappers declare the same ABI imports with a plain `u32` status (an unknown status is then
//! not undefined behaviour) and map everything to `Result`.

use crate::store::{SharedStore, StoreError};
use proxy_wasm::types::{BufferType, MapType, MetricType, StreamType};
use std::ptr::{null, null_mut};
use std::time::Duration;

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;
/// `http_call`: unknown cluster, or the call lacks `:method`, `:path` or `:authority`.
pub const BAD_ARGUMENT: u32 = 2;
/// `http_call`: Envoy's async client could not start the call (e.g. the cluster has no host for it).
pub const INTERNAL_FAILURE: u32 = 10;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: MapType, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: BufferType,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        buffer_type: BufferType,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: MetricType,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_continue_stream(stream_type: StreamType) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_get_metric(metric_id: u32, return_value: *mut u64) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
}

/// A host call that did not succeed: which one and the status it gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError {
    pub call: &'static str,
    pub status: u32,
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "host call {} failed with status {}", self.call, self.status)
    }
}

fn check(call: &'static str, status: u32) -> Result<(), HostError> {
    if status == OK {
        Ok(())
    } else {
        Err(HostError { call, status })
    }
}

/// Takes ownership of a buffer the host allocated through the SDK's `proxy_on_memory_allocate`.
///
/// # Safety
/// `data`/`size` must come from a successful host call that returned a fresh allocation.
unsafe fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

/// A request header as bytes; `None` when absent.
pub fn request_header(name: &str) -> Result<Option<Vec<u8>>, HostError> {
    header_map_value(MapType::HttpRequestHeaders, name)
}

fn header_map_value(map: MapType, name: &str) -> Result<Option<Vec<u8>>, HostError> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: pointers to locals; on OK the host hands us an allocation we now own.
    let status = unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) };
    match status {
        OK => Ok(Some(unsafe { owned(data, size) })),
        NOT_FOUND => Ok(None),
        s => Err(HostError {
            call: "get_header_map_value",
            status: s,
        }),
    }
}

/// A request header as text; a value that is not UTF-8 reads as absent.
pub fn request_header_str(name: &str) -> Result<Option<String>, HostError> {
    Ok(request_header(name)?.and_then(|b| String::from_utf8(b).ok()))
}

/// Every request header, fetched with one host call. Each header read costs a host call plus a
/// call back into the VM to allocate the copy; a push needs three of them, so one copy of the
/// whole (small) map is cheaper.
pub struct RequestHeaders {
    /// The proxy-wasm map encoding, as [`serialize_headers`] writes it.
    data: Vec<u8>,
}

impl RequestHeaders {
    pub fn fetch() -> Result<RequestHeaders, HostError> {
        let mut data = null_mut();
        let mut size = 0;
        // SAFETY: pointers to locals; on OK the host hands us an allocation we now own.
        let status = unsafe { proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) };
        match status {
            OK => Ok(RequestHeaders {
                data: unsafe { owned(data, size) },
            }),
            NOT_FOUND => Ok(RequestHeaders { data: Vec::new() }),
            s => Err(HostError {
                call: "get_header_map_pairs",
                status: s,
            }),
        }
    }

    /// The first value of `name` (lower case, as Envoy keeps header names); a value that is not
    /// UTF-8, or a map the host encoded otherwise than documented, reads as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        std::str::from_utf8(self.raw(name)?).ok()
    }

    /// Whether the request carries `name` at all, whatever its value. A map that cannot be read
    /// counts as carrying it, so a caller that removes what it finds errs towards removing.
    pub fn contains(&self, name: &str) -> bool {
        let mut found = false;
        self.walk(|n, _| {
            found = n == name.as_bytes();
            found
        })
        .is_none()
            || found
    }

    fn raw(&self, name: &str) -> Option<&[u8]> {
        let mut found = None;
        self.walk(|n, v| {
            if n == name.as_bytes() {
                found = Some(v);
            }
            found.is_some()
        })?;
        found
    }

    /// Calls `visit` on each (name, value) until it returns true; `None` when the encoding is
    /// not what proxy-wasm documents.
    fn walk<'s>(&'s self, mut visit: impl FnMut(&'s [u8], &'s [u8]) -> bool) -> Option<()> {
        let d = self.data.as_slice();
        // Every offset is checked: a map the host encoded otherwise reads as `None`, on 32 bits too.
        let u32_at = |at: usize| -> Option<usize> {
            let b: [u8; 4] = d.get(at..at.checked_add(4)?)?.try_into().ok()?;
            Some(u32::from_le_bytes(b) as usize)
        };
        let count = u32_at(0)?;
        let mut text = 4usize.checked_add(count.checked_mul(8)?)?;
        for i in 0..count {
            // i < count and 8 * count fits, so these cannot overflow.
            let name_len = u32_at(4 + i * 8)?;
            let value_len = u32_at(8 + i * 8)?;
            let name_end = text.checked_add(name_len)?;
            let n = d.get(text..name_end)?;
            let value_at = name_end.checked_add(1)?;
            let value_end = value_at.checked_add(value_len)?;
            let v = d.get(value_at..value_end)?;
            if visit(n, v) {
                return Some(());
            }
            text = value_end.checked_add(1)?;
        }
        Some(())
    }
}

/// A header of the answer to the call being reported (only valid inside `on_http_call_response`);
/// `None` when absent, as every header is when the call failed without an answer.
pub fn http_call_response_header_str(name: &str) -> Result<Option<String>, HostError> {
    Ok(header_map_value(MapType::HttpCallResponseHeaders, name)?.and_then(|b| String::from_utf8(b).ok()))
}

/// Sends an HTTP request to `cluster` through Envoy's async client; the answer (or its failure)
/// comes to `on_http_call_response` of the calling context with the returned token.
///
/// This one goes through the SDK's `hostcalls::dispatch_http_call`: only the SDK can record which
/// context a token belongs to, and its `proxy_on_http_call_response` panics on a token it did not
/// record. The SDK maps `Ok`, `BadArgument` (unknown cluster, missing `:method`, `:path` or
/// `:authority`) and `InternalFailure` (the async client refused) to values and panics on any other
/// status; Envoy's `http_call` returns no other status except `InvalidMemoryAccess`, which only
/// bad pointers cause, and the SDK builds these from live slices.
pub fn dispatch_http_call(
    cluster: &str,
    headers: Vec<(&str, &str)>,
    timeout: Duration,
) -> Result<u32, HostError> {
    proxy_wasm::hostcalls::dispatch_http_call(cluster, headers, None, Vec::new(), timeout).map_err(|s| {
        HostError {
            call: "http_call",
            status: s as u32,
        }
    })
}

/// Lets a request that `on_http_request_headers` paused go on through the filter chain.
pub fn resume_request() -> Result<(), HostError> {
    // SAFETY: a plain value.
    check("continue_stream", unsafe {
        proxy_continue_stream(StreamType::HttpRequest)
    })
}

pub fn set_request_header(name: &str, value: &str) -> Result<(), HostError> {
    // SAFETY: pointers and lengths of live slices.
    let status = unsafe {
        proxy_replace_header_map_value(
            MapType::HttpRequestHeaders,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    check("replace_header_map_value", status)
}

pub fn remove_request_header(name: &str) -> Result<(), HostError> {
    // SAFETY: pointer and length of a live slice.
    let status =
        unsafe { proxy_remove_header_map_value(MapType::HttpRequestHeaders, name.as_ptr(), name.len()) };
    // Removing an absent header is not an error.
    if status == NOT_FOUND {
        return Ok(());
    }
    check("remove_header_map_value", status)
}

/// The request body bytes `[start, start + max)` that Envoy holds for this filter.
pub fn request_body(start: usize, max: usize) -> Result<Vec<u8>, HostError> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: pointers to locals; on OK the host hands us an allocation we now own.
    let status =
        unsafe { proxy_get_buffer_bytes(BufferType::HttpRequestBody, start, max, &mut data, &mut size) };
    match status {
        OK => Ok(unsafe { owned(data, size) }),
        NOT_FOUND => Ok(Vec::new()),
        s => Err(HostError {
            call: "get_buffer_bytes",
            status: s,
        }),
    }
}

/// Replaces the request body bytes `[0, size)` with nothing.
pub fn drop_request_body(size: usize) -> Result<(), HostError> {
    // SAFETY: an empty slice is a valid pointer/length pair.
    let status = unsafe { proxy_set_buffer_bytes(BufferType::HttpRequestBody, 0, size, [].as_ptr(), 0) };
    check("set_buffer_bytes", status)
}

/// Sends a local reply. Envoy's HTTP/1 codec keeps the connection open when the request was read
/// to its end before this call.
pub fn send_reply<'a, H>(status: u32, headers: H, body: &[u8]) -> Result<(), HostError>
where
    H: Iterator<Item = (&'a str, &'a str)> + Clone,
{
    let serialized = serialize_headers(headers);
    // SAFETY: pointers and lengths of live buffers; details omitted (null, 0).
    let s = unsafe {
        proxy_send_local_response(
            status,
            null(),
            0,
            body.as_ptr(),
            body.len(),
            serialized.as_ptr(),
            serialized.len(),
            -1,
        )
    };
    check("send_local_response", s)
}

/// The proxy-wasm header map encoding: count, then (name length, value length) pairs, then the
/// NUL-terminated names and values.
fn serialize_headers<'a>(headers: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> Vec<u8> {
    let (count, size) = headers
        .clone()
        .fold((0u32, 4), |(c, s), (n, v)| (c + 1, s + 10 + n.len() + v.len()));
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&count.to_le_bytes());
    for (n, v) in headers.clone() {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in headers {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

pub fn define_metric(kind: MetricType, name: &str) -> Result<u32, HostError> {
    let mut id = 0;
    // SAFETY: pointer and length of a live slice, pointer to a local.
    let status = unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    check("define_metric", status).map(|()| id)
}

/// Envoy's wall clock in nanoseconds (0 if the host refuses), for durations in logs.
pub fn now_nanos() -> u64 {
    let mut t = 0;
    // SAFETY: a pointer to a local.
    match unsafe { proxy_get_current_time_nanoseconds(&mut t) } {
        OK => t,
        _ => 0,
    }
}

/// The current value of a counter or gauge (shared by every worker: one stat per name).
pub fn get_metric(id: u32) -> Result<u64, HostError> {
    let mut value = 0;
    // SAFETY: a plain value and a pointer to a local.
    check("get_metric", unsafe { proxy_get_metric(id, &mut value) }).map(|()| value)
}

pub fn increment_metric(id: u32, by: i64) -> Result<(), HostError> {
    // SAFETY: plain values.
    check("increment_metric", unsafe { proxy_increment_metric(id, by) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), HostError> {
    // SAFETY: plain values.
    check("record_metric", unsafe { proxy_record_metric(id, value) })
}

/// Envoy shared data (per `vm_id`, all workers) as a [`SharedStore`].
pub struct EnvoySharedData;

impl SharedStore for EnvoySharedData {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        let mut data = null_mut();
        let mut size = 0;
        let mut cas = 0;
        // SAFETY: pointers to locals; on OK the host hands us an allocation we now own.
        let status =
            unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
        match status {
            OK => {
                let value = if data.is_null() {
                    None
                } else {
                    Some(unsafe { owned(data, size) })
                };
                Ok((value, (cas != 0).then_some(cas)))
            }
            NOT_FOUND => Ok((None, None)),
            s => Err(StoreError::Host(format!(
                "get_shared_data({key}) returned status {s}"
            ))),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        // SAFETY: pointers and lengths of live slices.
        let status = unsafe {
            proxy_set_shared_data(
                key.as_ptr(),
                key.len(),
                value.as_ptr(),
                value.len(),
                cas.unwrap_or(0),
            )
        };
        match status {
            OK => Ok(()),
            CAS_MISMATCH => Err(StoreError::CasMismatch),
            s => Err(StoreError::Host(format!(
                "set_shared_data({key}) returned status {s}"
            ))),
        }
    }
}
