//! The core of the SEPL connector: the wire codec, configuration, logging,
//! TLS and the HTTP support library, over the device model, plugin trait and
//! plugin ABI of `connector-plugin-api`, which it re-exports. No actors and
//! no sockets: `connector-runtime` does the IO.
//!
//! # Layout
//! - [`model`], [`plugin`], [`abi`]: `connector-plugin-api` re-exported, so
//!   `connector_core::plugin::DevicePlugin` and the rest keep their paths:
//!   [`Device`] and [`Message`] (PROTOCOL.md section 4), the
//!   [`plugin::DevicePlugin`] trait device authors implement, and the C-ABI
//!   boundary to plugin libraries (declaration, tables, status codes).
//! - [`codec`]: platform frames to messages and back (sections 3-5); pure.
//! - [`lookup`]: the socket address out of a lookup answer (section 2).
//! - [`registration`]: (un)registration bodies, URLs and statuses (section 6).
//! - [`backoff`]: exponential back-off with full jitter (section 7).
//! - [`config`]: `connector.yaml` plus the seed's environment variables,
//!   every problem of a file at once, each with its line and column, and
//!   the [`plugin::DeviceSpec`] of each declared device.
//! - [`logging`]: log levels and the one function that sets up logging.
//! - [`http`]: the seed's HTTP support library (`get`, `post`, ...; section 8).
//! - [`tls`]: what TLS trusts (bundled roots, `ca_file`) and the one
//!   `awc::Client` lookup, registration and the socket share.
//! - [`secret`]: [`Secret`], a password that never prints, and [`Credentials`].

pub mod backoff;
pub mod codec;
pub mod config;
pub mod http;
pub mod logging;
pub mod lookup;
mod problem;
pub mod registration;
pub mod secret;
pub mod tls;
mod yaml;

pub use connector_plugin_api::{abi, model, plugin};
pub use model::{Device, Message};
pub use secret::{Credentials, Secret};
