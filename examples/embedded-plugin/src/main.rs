//! The same thermostat as `examples/my-plugin`, compiled into a program that
//! embeds the runtime instead of being loaded from a library:
//!
//! ```text
//! cargo run -p embedded-plugin                     # against a simulator it starts itself
//! CONNECTOR_LOOKUP_URL=http://host:8093/lookup cargo run -p embedded-plugin
//! ```
//!
//! The plugin code is identical either way; only its registration differs:
//! `plugins:` in `connector.yaml` for a library, `.plugin(name, factory)` on
//! the builder here.

use std::time::Duration;

use connector_core::config::Config;
use connector_runtime::Connector;
use platform_sim::{Command, SimConfig, Simulator};
use tracing::info;

const DEVICES: &str = "
devices:
  - id: hall
    type: thermostat
    name: Hall thermostat
    plugin: thermostat
    settings: { target: 21.5, room: 19, interval_ms: 200 }
";

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::from_yaml_str(DEVICES, "embedded-plugin")?;
    config.apply_env()?;
    connector_core::logging::init(config.log_level)?;

    // No platform named? Bring a local simulator so the example runs anywhere.
    let simulator = if std::env::var_os("CONNECTOR_LOOKUP_URL").is_none() {
        let sim = Simulator::start(SimConfig::default()).await?;
        config.platform.lookup_url = sim.lookup_url();
        Some(sim)
    } else {
        None
    };

    let connector = Connector::builder(config)
        .plugin(my_plugin::NAME, my_plugin::create)
        .start()
        .await?;

    // With our own simulator, play the platform: set the target and read it back.
    if let Some(sim) = &simulator {
        // Commands reach a device once the platform has it registered.
        while !sim.devices().await.iter().any(|device| device.id == "hall") {
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        let wait = Duration::from_secs(10);
        let set = sim
            .command_and_wait(&Command::new("hall", "set").body("23"), wait)
            .await?;
        info!(answer = %set.message.body, "set the target to 23");
        let get = sim
            .command_and_wait(&Command::new("hall", "get").body(""), wait)
            .await?;
        info!(target = %get.message.body, "the thermostat's target");
        actix_rt::time::sleep(Duration::from_millis(500)).await;
        let readings: Vec<String> = sim
            .events()
            .await
            .into_iter()
            .filter(|e| e.message.endpoint == "temperature")
            .map(|e| e.message.body)
            .collect();
        info!(readings = ?readings, "temperature events received");
    } else {
        // Against a real platform: run until stopped.
        info!("running; Ctrl-C stops");
        tokio::signal::ctrl_c().await?;
    }

    connector.shutdown(Duration::from_secs(2)).await;
    if let Some(sim) = simulator {
        sim.stop().await?;
    }
    Ok(())
}
