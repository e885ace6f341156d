//! dynamic-sharding: shards Prometheus Pushgateway pushes by grouping key.
//!
//! The modules here are host-free and shared by the Envoy filter (built for `wasm32-wasip1`) and
//! by consul-sync (native): [`grouping_key`] turns a push path into its group, [`ring`] maps a group
//! to its owner, [`members`] validates member lists, [`config`] reads the plugin configuration,
//! [`routing`] decides what a data request gets, [`control`] serves the member-list API over a
//! [`store::SharedStore`], [`tombstones`] keeps the `DELETE`s that did not reach every copy until
//! consul-sync has them, [`request`] carries one request through the filter's rules over a host
//! trait. Only `filter` (wasm builds) talks to the proxy.

pub mod config;
pub mod control;
pub mod grouping_key;
pub mod members;
pub mod request;
pub mod ring;
pub mod routing;
pub mod store;
pub mod tombstones;

#[cfg(target_os = "wasi")]
mod filter;
