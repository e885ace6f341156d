//! The filter's [`Host`]: the proxy-wasm host calls, returning errors instead of panicking.
//!
//! The SDK's `hostcalls` panic on any status they do not expect and `unwrap()` header values as
//! UTF-8; with `panic = "abort"` either would kill the VM for every request on the worker. These
//! thin wrappers declare the same ABI imports with a plain `u32` status (an unknown status is then
//! not undefined behaviour) and map everything to `Result`.

use crate::request::header_map::RequestHeaders;
use crate::request::{Host, HostError, Stat};
use crate::routing::Reply;
use crate::store::{SharedStore, StoreError};
use proxy_wasm::types::{BufferType, MapType, MetricType, StreamType};
use std::fmt;
use std::ptr::{null, null_mut};
use std::time::Duration;

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;
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

/// The bytes `[start, start + max)` of one of the host's buffers (none when it has none).
fn buffer_bytes(buffer: BufferType, start: usize, max: usize) -> Result<Vec<u8>, HostError> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: pointers to locals; on OK the host hands us an allocation we now own.
    let status = unsafe { proxy_get_buffer_bytes(buffer, start, max, &mut data, &mut size) };
    match status {
        OK => Ok(unsafe { owned(data, size) }),
        NOT_FOUND => Ok(Vec::new()),
        s => Err(HostError {
            call: "get_buffer_bytes",
            status: s,
        }),
    }
}

/// Envoy, as one listener's filter sees it: the host calls, and the ids of the filter's stats.
pub struct Envoy {
    /// Indexed by [`Stat`]; defined once per VM (Envoy shares a stat of one name across workers).
    stats: [u32; Stat::ALL.len()],
}

impl Envoy {
    pub fn define_stats() -> Result<Envoy, HostError> {
        let mut stats = [0; Stat::ALL.len()];
        for (id, stat) in stats.iter_mut().zip(Stat::ALL) {
            let kind = if stat.is_gauge() {
                MetricType::Gauge
            } else {
                MetricType::Counter
            };
            let name = stat.name();
            // SAFETY: pointer and length of a live slice, pointer to a local.
            let status = unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), id) };
            check("define_metric", status)?;
        }
        Ok(Envoy { stats })
    }

    fn id(&self, stat: Stat) -> u32 {
        self.stats[stat as usize]
    }
}

impl Host for Envoy {
    /// One host call copies the whole map: see [`RequestHeaders`].
    fn request_headers(&self) -> Result<RequestHeaders, HostError> {
        let mut data = null_mut();
        let mut size = 0;
        // SAFETY: pointers to locals; on OK the host hands us an allocation we now own.
        let status = unsafe { proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) };
        match status {
            OK => Ok(RequestHeaders::from_encoded(unsafe { owned(data, size) })),
            NOT_FOUND => Ok(RequestHeaders::from_encoded(Vec::new())),
            s => Err(HostError {
                call: "get_header_map_pairs",
                status: s,
            }),
        }
    }

    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
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

    fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
        // SAFETY: pointer and length of a live slice.
        let status =
            unsafe { proxy_remove_header_map_value(MapType::HttpRequestHeaders, name.as_ptr(), name.len()) };
        // Removing an absent header is not an error.
        if status == NOT_FOUND {
            return Ok(());
        }
        check("remove_header_map_value", status)
    }

    fn request_body(&self, start: usize, max: usize) -> Result<Vec<u8>, HostError> {
        buffer_bytes(BufferType::HttpRequestBody, start, max)
    }

    fn drop_request_body(&self, size: usize) -> Result<(), HostError> {
        // SAFETY: an empty slice is a valid pointer/length pair.
        let status = unsafe { proxy_set_buffer_bytes(BufferType::HttpRequestBody, 0, size, [].as_ptr(), 0) };
        check("set_buffer_bytes", status)
    }

    fn resume_request(&self) -> Result<(), HostError> {
        // SAFETY: a plain value.
        check("continue_stream", unsafe {
            proxy_continue_stream(StreamType::HttpRequest)
        })
    }

    /// Envoy's HTTP/1 codec keeps the connection open when the request was read to its end
    /// before this call.
    fn send_reply(&self, reply: &Reply) -> Result<(), HostError> {
        let serialized = reply.headers.encoded();
        let body = reply.body.as_bytes();
        // SAFETY: pointers and lengths of live buffers; details omitted (null, 0).
        let s = unsafe {
            proxy_send_local_response(
                reply.status,
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

    /// This one goes through the SDK's `hostcalls::dispatch_http_call`: only the SDK can record
    /// which context a token belongs to, and its `proxy_on_http_call_response` panics on a token
    /// it did not record. The SDK maps `Ok`, `BadArgument` (unknown cluster, missing `:method`,
    /// `:path` or `:authority`) and `InternalFailure` (the async client refused) to values and
    /// panics on any other status; Envoy's `http_call` returns no other status except
    /// `InvalidMemoryAccess`, which only bad pointers cause, and the SDK builds these from live
    /// slices.
    fn dispatch_http_call_with_body(
        &self,
        cluster: &str,
        headers: Vec<(&str, &str)>,
        body: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError> {
        let body = (!body.is_empty()).then_some(body);
        proxy_wasm::hostcalls::dispatch_http_call(cluster, headers, body, Vec::new(), timeout).map_err(|s| {
            HostError {
                call: "http_call",
                status: s as u32,
            }
        })
    }

    fn http_call_response_header(&self, name: &str) -> Result<Option<String>, HostError> {
        Ok(header_map_value(MapType::HttpCallResponseHeaders, name)?.and_then(|b| String::from_utf8(b).ok()))
    }

    fn http_call_response_body(&self, max: usize) -> Result<Vec<u8>, HostError> {
        buffer_bytes(BufferType::HttpCallResponseBody, 0, max)
    }

    fn stat(&self, stat: Stat) -> Result<u64, HostError> {
        let mut value = 0;
        // SAFETY: a plain value and a pointer to a local.
        check("get_metric", unsafe {
            proxy_get_metric(self.id(stat), &mut value)
        })
        .map(|()| value)
    }

    fn count(&self, stat: Stat) {
        // SAFETY: plain values.
        let _ = unsafe { proxy_increment_metric(self.id(stat), 1) };
    }

    fn record(&self, stat: Stat, value: u64) {
        // SAFETY: plain values.
        let _ = unsafe { proxy_record_metric(self.id(stat), value) };
    }

    fn now_nanos(&self) -> u64 {
        let mut t = 0;
        // SAFETY: a pointer to a local.
        match unsafe { proxy_get_current_time_nanoseconds(&mut t) } {
            OK => t,
            _ => 0,
        }
    }

    fn log(&self, level: log::Level, message: fmt::Arguments<'_>) {
        log::log!(level, "{message}");
    }

    fn with_shared_data<R>(&self, f: impl FnOnce(&mut dyn SharedStore) -> R) -> R {
        f(&mut EnvoySharedData)
    }
}

/// Envoy shared data (per `vm_id`, all workers) as a [`SharedStore`].
struct EnvoySharedData;

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
