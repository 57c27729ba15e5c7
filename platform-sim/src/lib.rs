//! A SEPL platform simulator: as far as a connector can tell, it *is* the
//! platform of `shared/PROTOCOL.md`, served on one loopback port, plus a
//! control API through which tests (or a person with the `platform-sim`
//! command) send commands, read what the connector sent, and inject faults.
//!
//! ```no_run
//! # async fn demo() -> Result<(), platform_sim::SimError> {
//! use platform_sim::{Command, SimConfig, Simulator};
//! let sim = Simulator::start(SimConfig::default()).await?;
//! println!("CONNECTOR_LOOKUP_URL={}", sim.lookup_url());
//! let reply = sim
//!     .command_and_wait(&Command::new("lamp-1", "on").body("{}"), std::time::Duration::from_secs(5))
//!     .await?;
//! println!("{}", reply.raw);
//! sim.stop().await
//! # }
//! ```
//!
//! # Layout
//!
//! - [`config`]: [`SimConfig`], every default in one place, and its check.
//! - [`error`]: [`SimError`], the typed error.
//! - [`wire`]: the protocol's formats (frame prefixes, the section 4 JSON
//!   object, credentials, registration bodies); pure, no IO.
//! - [`state`]: what handlers and sessions share: atomic counters, devices,
//!   sessions, command waiters, the event ring, fault switches.
//! - `http`: lookup and (un)registration routes, and the route table.
//! - `session`: one WebSocket session: handshake, frames, control requests.
//! - [`control`]: the `/control` API and the operations behind it
//!   ([`Command`], [`DropMode`], [`RawFrame`]).
//! - `reset`: how an abrupt TCP reset is forced through actix-web.
//! - [`server`]: [`Simulator`] (start), [`SimHandle`] (steer, stop) and the
//!   supervisor that closes and reopens the listener.
//! - [`tls`]: [`TlsConfig`], the optional `https://` / `wss://` mode.
//! - [`mosquitto`]: a real MQTT broker on loopback, for the `mqtt` plugin's
//!   tests and benchmark.
//!
//! The `platform-sim` binary (`src/bin/platform-sim/`) serves a simulator
//! and talks to a running one's control API.

pub mod config;
pub mod control;
pub mod error;
mod http;
pub mod mosquitto;
mod reset;
pub mod server;
mod session;
pub mod state;
pub mod tls;
pub mod wire;

pub use config::SimConfig;
pub use control::{Command, DropMode, RawFrame};
pub use error::SimError;
pub use server::{SimHandle, Simulator};
pub use state::{CommandResponse, CounterSnapshot, Event, EventFilter, EventKind, SessionInfo};
pub use tls::TlsConfig;
pub use wire::{Device, Message};
