//! `--embedded-platform`: a platform simulator inside the connector's own
//! process, and a driver that plays the platform's part by sending each
//! device a command now and then and logging what comes back.

use std::time::Duration;

use connector_core::config::{Config, DeviceConfig};
use connector_core::logging::LogFormat;
use platform_sim::{Command, EventFilter, SimConfig, SimHandle, Simulator};
use tracing::{info, warn};

/// How long the demo waits for a device's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the simulator on a free loopback port with the config's credentials,
/// so that the connector is accepted exactly as configured.
pub async fn start_simulator(config: &Config) -> Result<SimHandle, String> {
    let sim_config = SimConfig {
        user: config.platform.user.clone(),
        password: config.platform.password.expose().to_owned(),
        registration_path: config.registration_path().to_owned(),
        ..SimConfig::default()
    };
    let sim = Simulator::start(sim_config)
        .await
        .map_err(|e| format!("the embedded platform could not start: {e}"))?;
    info!(lookup_url = %sim.lookup_url(), control_url = %sim.control_url(), "embedded platform simulator listening");
    // The hints are for a person at a terminal; with JSON logs the output
    // goes to a collector that expects nothing but JSON, and the event above
    // carries the URLs.
    if config.log_format == LogFormat::Json {
        return Ok(sim);
    }
    println!("embedded platform: {}", sim.lookup_url());
    println!(
        "  watch events:   cargo run -p platform-sim -- events --follow --url {}",
        sim.base_url()
    );
    println!(
        "  send a command: cargo run -p platform-sim -- command --url {} --device ID --endpoint E --body B --wait-ms 2000",
        sim.base_url()
    );
    Ok(sim)
}

/// Sends each device in turn a command to `endpoint` every `interval`, and
/// reports the events the platform received since the last round.
pub async fn drive(sim: SimHandle, devices: Vec<DeviceConfig>, interval: Duration, endpoint: String) {
    if devices.is_empty() {
        warn!("no devices configured: the demo has nothing to drive");
        return;
    }
    let mut seen_events = 0;
    let mut round: u64 = 0;
    loop {
        actix_rt::time::sleep(interval).await;
        round += 1;
        let device = &devices[(round as usize - 1) % devices.len()];
        let command = Command::new(device.id.clone(), endpoint.clone()).body(format!("hello #{round}"));
        match sim.command_and_wait(&command, ANSWER_TIMEOUT).await {
            Ok(answer) => info!(
                device_id = %device.id,
                task_id = %answer.task_id,
                sent = %command.body,
                answer = %answer.message.body,
                "demo: the platform sent a command and got the answer"
            ),
            Err(e) => warn!(device_id = %device.id, "demo: no answer to the command: {e}"),
        }
        let filter = EventFilter {
            since: Some(seen_events),
            kind: Some(platform_sim::EventKind::Change),
            ..EventFilter::default()
        };
        let events = sim.events_matching(filter).await;
        if let Some(last) = events.last() {
            seen_events = last.seq;
            info!(
                count = events.len(),
                last_device = %last.message.device_id,
                last_endpoint = %last.message.endpoint,
                last_body = %last.message.body,
                "demo: the platform received events"
            );
        }
    }
}
