//! `--embedded-platform` in a build without the `embedded-platform` feature:
//! the names of `demo.rs` without the simulator behind them, so that `main`
//! reads the same in both builds. `main` refuses the flag before this is
//! reached; starting refuses too, should it ever be.

use std::convert::Infallible;
use std::time::Duration;

use connector_core::config::{Config, DeviceConfig};

/// Never made: there is no simulator in this build. (A private field rather
/// than an empty enum, so that `main`'s code after making one is not
/// flagged as unreachable.)
#[derive(Clone)]
pub struct NoSimulator(Infallible);

impl NoSimulator {
    pub fn lookup_url(&self) -> String {
        match self.0 {}
    }

    pub async fn stop(self) -> Result<(), Infallible> {
        match self.0 {}
    }
}

pub async fn start_simulator(_config: &Config) -> Result<NoSimulator, String> {
    Err(crate::NO_EMBEDDED_PLATFORM.to_owned())
}

pub async fn drive(sim: NoSimulator, _devices: Vec<DeviceConfig>, _interval: Duration, _endpoint: String) {
    match sim.0 {}
}
