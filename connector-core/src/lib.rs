//! The core of the SEPL connector: the message and device model, the wire
//! codec, configuration, the device plugin trait and the HTTP support
//! library. No actors and no sockets: `connector-runtime` does the IO.
//!
//! # Layout
//! - [`model`]: [`Device`] and [`Message`] (PROTOCOL.md section 4).
//! - [`codec`]: platform frames to messages and back (sections 3-5); pure.
//! - [`lookup`]: the socket address out of a lookup answer (section 2).
//! - [`registration`]: (un)registration bodies, URLs and statuses (section 6).
//! - [`backoff`]: exponential back-off with full jitter (section 7).
//! - [`config`]: `connector.yaml` plus the seed's environment variables;
//!   every problem of a file at once, each with its line and column.
//! - [`logging`]: log levels and the one function that sets up logging.
//! - [`plugin`]: the [`plugin::DevicePlugin`] trait device authors implement.
//! - [`abi`]: the C-ABI boundary to plugin libraries (declaration, tables, status codes).
//! - [`http`]: the seed's HTTP support library (`get`, `post`, ...; section 8).
//! - [`tls`]: what TLS trusts (bundled roots, `ca_file`) and the one
//!   `awc::Client` lookup, registration and the socket share.
//! - [`secret`]: [`Secret`], a password that never prints, and [`Credentials`].

pub mod abi;
pub mod backoff;
pub mod codec;
pub mod config;
pub mod http;
pub mod logging;
pub mod lookup;
pub mod model;
pub mod plugin;
mod problem;
pub mod registration;
pub mod secret;
pub mod tls;
mod yaml;

pub use model::{Device, Message};
pub use secret::{Credentials, Secret};
