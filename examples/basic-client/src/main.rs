//! The seed's "basic client structure" in Rust: a program that handles its
//! own device through the library API instead of a plugin.
//!
//! ```text
//! cargo run -p basic-client                      # against a simulator it starts itself
//! CONNECTOR_LOOKUP_URL=http://host:8093/lookup cargo run -p basic-client
//! ```
//!
//! Python had `Connector()`, `send`, `receive`, `register` and callbacks; here
//! they are `Connector::start`, `send`, `receive().await`, `register().await`
//! and `subscribe()`.

use std::time::Duration;

use connector_core::config::Config;
use connector_core::{Device, Message};
use connector_runtime::{Connector, Lifecycle};
use tracing::info;

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The seed read its settings from the environment; so does Config::from_env.
    let mut config = Config::from_env()?;
    connector_core::logging::init(config.log_level)?;

    // No platform named? Bring a local simulator so the example runs anywhere.
    let simulator = if std::env::var_os("CONNECTOR_LOOKUP_URL").is_none() {
        let sim = platform_sim::Simulator::start(platform_sim::SimConfig::default()).await?;
        config.platform.lookup_url = sim.lookup_url();
        Some(sim)
    } else {
        None
    };

    let connector = Connector::start(config).await?;

    // Instead of con_callbck / discon_callbck: watch the lifecycle events.
    let mut lifecycle = connector.subscribe();
    actix_rt::spawn(async move {
        while let Ok(event) = lifecycle.recv().await {
            match event {
                Lifecycle::Connected { url } => info!(%url, "resume: connected"),
                Lifecycle::Disconnected { reason } => info!(%reason, "pause: disconnected"),
                other => info!(?other, "lifecycle"),
            }
        }
    });

    // my_device = Device('unique device id', 'device type', 'device name')
    let my_device = Device::new("meter-1", "power-meter", "Basement power meter");
    connector.register(my_device.clone()).await?;

    // connector.send(message): an event, as the seed's README shows it.
    let mut event = Message::event(&my_device.id, "power", "{'unit': 'kW', 'value': '1.43'}");
    event.payload_header = "'Content-Type': 'application/json'".into();
    connector.send(event)?;

    // With our own simulator, play the platform: send the device a command.
    if let Some(sim) = &simulator {
        let sim = sim.clone();
        actix_rt::spawn(async move {
            actix_rt::time::sleep(Duration::from_millis(500)).await;
            let command = platform_sim::Command::new("meter-1", "read").body("now");
            if let Ok(answer) = sim.command_and_wait(&command, Duration::from_secs(5)).await {
                info!(answer = %answer.message.body, "the platform got the answer");
            }
        });
    }

    // connector.receive(): wait for a command for our device and answer it.
    let command = connector.receive().await.ok_or("the connector stopped")?;
    info!(endpoint = %command.endpoint, body = %command.payload, "command received");
    connector.send(command.reply("", "{'unit': 'kW', 'value': '1.52'}"))?;

    // unregister() queues the request; the lifecycle event says it went through.
    let mut done = connector.subscribe();
    connector.unregister(&my_device).await?;
    while !matches!(done.recv().await?, Lifecycle::UnregistrationSucceeded { .. }) {}
    connector.shutdown(Duration::from_secs(2)).await;
    if let Some(sim) = simulator {
        sim.stop().await?;
    }
    Ok(())
}
