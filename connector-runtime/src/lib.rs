//! The SEPL connector runtime: the actors that keep a gateway's devices
//! connected to the platform, and the [`Connector`] library API over them.
//!
//! # Layout
//! - [`connector`]: [`Connector`], start it from a config and use it like the
//!   seed's client (`send`, `receive`, `register`, `unregister`, `subscribe`).
//! - [`connection`]: `ConnectionActor`, the platform link (lookup, handshake,
//!   ping, reconnect, writer).
//! - [`frames`]: the session's WebSocket codec, which skips oversized frames.
//! - [`registry`]: `RegistryActor`, device (un)registration and command routing.
//! - [`reload`]: what a config reload changes, and why one is refused.
//! - [`device`]: `DeviceActor`, one per device, supervising its plugin.
//! - [`loader`]: plugin libraries named in the config, checked and wrapped as plugins.
//! - [`outbox`]: the bounded, ordered outgoing buffer.
//! - [`pool`]: the threads plugin calls run on, never the link's.
//! - [`async_plugin`]: async plugins, all on one thread with an actix runtime,
//!   as ordinary plugins (`ConnectorBuilder::async_plugin`).
//! - [`lifecycle`]: lifecycle events and counters.
//! - [`metrics`]: `/metrics`, `/health` and `/devices` over HTTP (`metrics.listen`).

pub mod async_plugin;
pub mod connection;
pub mod connector;
pub mod device;
pub mod frames;
pub mod lifecycle;
pub mod loader;
pub mod metrics;
pub mod outbox;
pub mod pool;
pub mod registry;
pub mod reload;

pub use connector::{Connector, ConnectorBuilder, SendError, StartError, StatusSource};
pub use lifecycle::{Events, Lifecycle, Stats};
pub use reload::{ReloadError, ReloadReport};
