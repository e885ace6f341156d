//! Membership: which pushgateways are in the ring, as Consul's health checks say, and the member
//! list every Envoy routes with.
//!
//! - [`watcher`]: registers the pushgateways, then watches Consul and publishes the list;
//! - [`list`]: the published list and the rules that change it (pure);
//! - [`probe`]: asks pushgateways directly whether they live, when Consul's word is in doubt;
//! - [`versions`]: list versions, the clock that numbers them and those the Envoys hold;
//! - [`registrar`]: keeps the configured pushgateways registered, and only those;
//! - [`roles`]: which address of each slot with a standby is active, and promotions (pure);
//! - [`lease`]: holds the lease in Consul that lets one consul-sync act on the pushgateways;
//! - [`envoy`]: one pusher per Envoy control listener.
//!
//! The published list leaves on a `watch` channel; nothing here reads the pushgateways' groups.

pub mod envoy;
pub mod lease;
pub mod list;
pub mod probe;
pub mod registrar;
pub mod roles;
pub mod versions;
pub mod watcher;
