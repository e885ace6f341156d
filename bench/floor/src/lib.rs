//! The proxy-wasm floor: a filter that answers a push the way the sharding filter does in
//! redirect mode, with nothing else: no parsing, no ring, no stats.
//!
//! It reads the request headers with one host call (as the sharding filter does), takes `:path`
//! from the copy, drops each body chunk before the last, and at the end of the body answers `307`
//! with `Location: http://<configured host:port><path>`; the `buffer` filter behind it holds the
//! headers, so Envoy keeps the connection open, as in the shipped redirect listener. What the
//! sharding filter costs above this is what its own work costs; below it no proxy-wasm filter
//! that gives the same answer can go.
//!
//! Plugin configuration: the `host:port` of the `Location` (a plain string).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use std::ptr::{null, null_mut};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

// The raw imports, as the sharding filter declares them (src/filter/host.rs): the SDK's helpers
// decode every header into a `String` pair, which the sharding filter does not pay either.
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        buffer_type: BufferType,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
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
}

const OK: u32 = 0;

#[derive(Default)]
struct Root {
    /// `http://<host:port>`, the `Location` before the path.
    base: Rc<String>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let host = self.get_plugin_configuration().unwrap_or_default();
        self.base = Rc::new(format!("http://{}", String::from_utf8_lossy(&host).trim()));
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor {
            base: Rc::clone(&self.base),
            reply: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Floor {
    base: Rc<String>,
    /// The serialized `location` header map, sent at the end of the body.
    reply: Option<Vec<u8>>,
}

impl Context for Floor {}

impl Floor {
    fn send(&mut self) -> Action {
        let headers = self.reply.take().unwrap_or_default();
        // SAFETY: pointers and lengths of live buffers; details and body empty.
        unsafe {
            proxy_send_local_response(307, null(), 0, null(), 0, headers.as_ptr(), headers.len(), -1);
        }
        Action::Pause
    }
}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let mut data = null_mut();
        let mut size = 0;
        // SAFETY: pointers to locals; on OK the host hands us an allocation we now own.
        let map = unsafe {
            match proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) {
                OK if !data.is_null() => Vec::from_raw_parts(data, size, size),
                _ => return Action::Continue,
            }
        };
        let Some(path) = find(&map, b":path") else {
            return Action::Continue;
        };
        self.reply = Some(location_map(&self.base, path));
        if end_of_stream {
            return self.send();
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.reply.is_none() {
            return Action::Continue;
        }
        if end_of_stream {
            return self.send();
        }
        // SAFETY: an empty slice is a valid pointer/length pair.
        unsafe {
            proxy_set_buffer_bytes(BufferType::HttpRequestBody, 0, body_size, [].as_ptr(), 0);
        }
        Action::Continue
    }
}

/// The value of `name` in a proxy-wasm header map (count, then name and value lengths, then the
/// NUL-terminated names and values); `None` when absent or not encoded that way.
fn find<'m>(map: &'m [u8], name: &[u8]) -> Option<&'m [u8]> {
    let u32_at = |at: usize| -> Option<usize> {
        let b: [u8; 4] = map.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_le_bytes(b) as usize)
    };
    let count = u32_at(0)?;
    let mut text = 4usize.checked_add(count.checked_mul(8)?)?;
    for i in 0..count {
        let name_len = u32_at(4 + i * 8)?;
        let value_len = u32_at(8 + i * 8)?;
        let value_at = text.checked_add(name_len)?.checked_add(1)?;
        let value_end = value_at.checked_add(value_len)?;
        if map.get(text..value_at - 1)? == name {
            return map.get(value_at..value_end);
        }
        text = value_end.checked_add(1)?;
    }
    None
}

/// `{location: base + path}` in the proxy-wasm header map encoding.
fn location_map(base: &str, path: &[u8]) -> Vec<u8> {
    const NAME: &[u8] = b"location";
    let value_len = base.len() + path.len();
    let mut out = Vec::with_capacity(4 + 8 + NAME.len() + value_len + 2);
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(NAME.len() as u32).to_le_bytes());
    out.extend_from_slice(&(value_len as u32).to_le_bytes());
    out.extend_from_slice(NAME);
    out.push(0);
    out.extend_from_slice(base.as_bytes());
    out.extend_from_slice(path);
    out.push(0);
    out
}
