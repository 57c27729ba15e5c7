//! What a device plugin is written against, and nothing else: the device and
//! message model, the [`plugin::DevicePlugin`] trait and the C ABI between
//! the runtime and plugin libraries. It depends on serde and serde_json only
//! (no async runtime, no HTTP, no TLS), so a plugin library builds quickly
//! and compiles for another target without a C cross-compiler.
//! `connector-core` re-exports it; plugin authors use it through
//! `connector-plugin-sdk`.
//!
//! # Layout
//! - [`model`]: [`Device`] and [`Message`] (PROTOCOL.md section 4).
//! - [`plugin`]: the [`plugin::DevicePlugin`] trait device authors implement,
//!   with [`plugin::DeviceSpec`], [`plugin::EventSink`], [`plugin::Responder`]
//!   and the [`plugin::PluginRegistry`].
//! - [`abi`]: the C-ABI boundary to plugin libraries (declaration, tables, status codes).

pub mod abi;
pub mod model;
pub mod plugin;

pub use model::{Device, Message};
