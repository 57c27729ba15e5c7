//! A smart plug behind a REST API, driven by an async plugin: the plugin
//! ([`smart_plug`]) and a stand-in for the plug itself ([`plug`]), which the
//! program (`src/main.rs`) and its tests use.

pub mod plug;
pub mod smart_plug;

use serde::{Deserialize, Serialize};

/// What the plug's API reads and writes at `/api/relay`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Relay {
    /// Whether power flows.
    pub on: bool,
    /// What the load draws now, in watts.
    pub power_w: f64,
}

/// The body of `PUT /api/relay`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetRelay {
    pub on: bool,
}
