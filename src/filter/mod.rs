//! The Envoy entry point: proxy-wasm contexts around the host-free [`crate::request`] logic.
//!
//! One root context per listener configuration and worker parses the configuration once and
//! starts a [`Listener`] over the raw host calls of [`host`]; each request gets an [`HttpFilter`]
//! whose callbacks are calls on its [`Request`].

mod host;

use crate::config::Config;
use crate::request::{self, Listener, Request};
use host::Envoy;
use log::error;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        // The VM aborts after this; at least say why in Envoy's log.
        error!("dynamic-sharding panicked: {info}");
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// How often a worker re-reads the member list whatever the per-request check says (see
/// [`Listener::tick`]); requests check too, so this only bounds how stale the gauges of an idle
/// worker get.
const REFRESH_PERIOD: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Root {
    listener: Option<Rc<Listener<Envoy>>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::parse(&bytes, |k| std::env::var(k).ok()) {
            Ok(c) => c,
            Err(e) => {
                error!("dynamic-sharding refused its configuration: {e}");
                return false;
            }
        };
        let host = match Envoy::define_stats() {
            Ok(h) => h,
            Err(e) => {
                error!("dynamic-sharding could not define its stats: {e}");
                return false;
            }
        };
        self.listener = Some(Rc::new(Listener::start(config, host)));
        self.set_tick_period(REFRESH_PERIOD);
        true
    }

    fn on_tick(&mut self) {
        if let Some(listener) = &self.listener {
            listener.tick();
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        let listener = self.listener.clone()?;
        Some(Box::new(HttpFilter(Request::new(listener))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct HttpFilter(Request<Envoy>);

fn action(a: request::Action) -> Action {
    match a {
        request::Action::Continue => Action::Continue,
        request::Action::Pause => Action::Pause,
    }
}

impl Context for HttpFilter {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, _body_size: usize, _trailers: usize) {
        self.0.on_call_response(token, num_headers);
    }
}

impl HttpContext for HttpFilter {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        action(self.0.on_headers(end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.0.on_body(body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        action(self.0.on_trailers())
    }
}
