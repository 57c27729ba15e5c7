//! A program that embeds the connector with an async plugin: a smart plug
//! behind a REST API (see `src/smart_plug.rs`), driven through
//! `connector_core::http` (awc) without a thread per wait.
//!
//! ```text
//! # Everything on this machine: the built-in platform simulator plays the
//! # platform (it switches the plug on and off and reads it), and a stand-in
//! # plug serves the REST API on 127.0.0.1.
//! cargo run -p async-http-device -- --embedded-platform
//!
//! # The same, left running so you can drive it with platform-sim's CLI
//! # (the commands to use are printed); Ctrl-C stops it.
//! cargo run -p async-http-device -- --embedded-platform --keep-running
//!
//! # A real plug (its API at http://192.168.1.20/api/relay) on a real platform.
//! CONNECTOR_LOOKUP_URL=http://host:8093/lookup cargo run -p async-http-device -- --plug-url http://192.168.1.20
//! ```
//!
//! The platform settings come from the environment (`CONNECTOR_*`,
//! `LOGLEVEL`), as for the other examples. The plugin is registered with
//! `Connector::builder(config).async_plugin("smart-plug", smart_plug::create)`;
//! the factory returns the plugin itself, not a box.

use std::time::{Duration, Instant};

use async_http_device::plug::Plug;
use async_http_device::{smart_plug, Relay};
use clap::Parser;
use connector_core::config::Config;
use connector_runtime::Connector;
use platform_sim::{Command, EventFilter, EventKind, SimConfig, SimHandle, Simulator};
use tracing::info;

/// Connects a smart plug behind a REST API to the SEPL platform.
#[derive(Debug, Parser)]
#[command(name = "async-http-device")]
struct Args {
    /// The plug's REST API (`GET`/`PUT` URL/api/relay). Without it, a
    /// stand-in plug starts on 127.0.0.1.
    #[arg(long, value_name = "URL")]
    plug_url: Option<String>,

    /// Start a platform simulator in this process and connect to it instead
    /// of the configured platform, then play the platform's part: switch
    /// the plug on and off and read it.
    #[arg(long)]
    embedded_platform: bool,

    /// With --embedded-platform: keep running after the demo, until Ctrl-C.
    #[arg(long)]
    keep_running: bool,

    /// Milliseconds between two readings of the plug's state.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    poll_ms: u64,
}

/// How long the demo waits for an answer or an event.
const WAIT: Duration = Duration::from_secs(10);

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let plug = match &args.plug_url {
        Some(_) => None,
        None => Some(Plug::start("127.0.0.1:0".parse()?)?),
    };
    let plug_url = match (&args.plug_url, &plug) {
        (Some(url), _) => url.clone(),
        (None, Some(plug)) => plug.url(),
        (None, None) => unreachable!("a stand-in plug starts without --plug-url"),
    };
    let devices = format!(
        "devices:\n  - id: plug-1\n    type: smart-plug\n    name: Kitchen plug\n    plugin: {}\n    settings: {{ url: {:?}, poll_ms: {} }}\n",
        smart_plug::NAME,
        plug_url,
        args.poll_ms
    );
    let mut config = Config::from_yaml_str(&devices, "async-http-device")?;
    config.apply_env()?;
    connector_core::logging::init(config.log_level)?;
    match &plug {
        Some(_) => info!(url = %plug_url, "a stand-in plug serves the REST API"),
        None => info!(url = %plug_url, "using the plug at this URL"),
    }

    let simulator = if args.embedded_platform {
        let sim = Simulator::start(SimConfig::default()).await?;
        config.platform.lookup_url = sim.lookup_url();
        config.platform.https = false;
        info!(lookup_url = %sim.lookup_url(), "embedded platform simulator listening");
        Some(sim)
    } else {
        None
    };

    let connector = Connector::builder(config)
        .async_plugin(smart_plug::NAME, smart_plug::create)
        .start()
        .await?;

    if let Some(sim) = &simulator {
        demo(sim, plug.as_ref()).await?;
        if args.keep_running {
            println!("embedded platform: {}", sim.lookup_url());
            println!(
                "  watch events:   cargo run -p platform-sim -- events --follow --url {}",
                sim.base_url()
            );
            println!(
                "  send a command: cargo run -p platform-sim -- command --url {} --device plug-1 --endpoint on --wait-ms 2000",
                sim.base_url()
            );
            info!("running; Ctrl-C stops");
            tokio::signal::ctrl_c().await?;
        }
    } else {
        info!("running; Ctrl-C stops");
        tokio::signal::ctrl_c().await?;
    }

    connector.shutdown(Duration::from_secs(2)).await;
    if let Some(sim) = simulator {
        sim.stop().await?;
    }
    if let Some(plug) = plug {
        plug.stop().await;
    }
    Ok(())
}

/// Plays the platform: switches the plug on, reads it, waits for the polled
/// state to arrive as an event, switches it off; with the stand-in plug, also
/// presses its button and waits for the platform to hear of it.
async fn demo(sim: &SimHandle, plug: Option<&Plug>) -> Result<(), Box<dyn std::error::Error>> {
    // Commands reach a device once the platform has it registered.
    let start = Instant::now();
    while !sim.devices().await.iter().any(|device| device.id == "plug-1") {
        if start.elapsed() > WAIT {
            return Err("the platform never got plug-1 registered".into());
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let mut seen = 0;
    for endpoint in ["on", "state"] {
        command(sim, endpoint).await?;
    }
    let state = state_event(sim, &mut seen, true).await?;
    info!(%state, "the platform received the polled state as an event");
    command(sim, "off").await?;
    let state = state_event(sim, &mut seen, false).await?;
    info!(%state, "the platform received the polled state as an event");
    if let Some(plug) = plug {
        let pressed = plug.press_button();
        info!(on = pressed.on, "the demo pressed the plug's button");
        let state = state_event(sim, &mut seen, true).await?;
        info!(%state, "the platform heard of the button press through polling");
    }
    Ok(())
}

async fn command(sim: &SimHandle, endpoint: &str) -> Result<(), Box<dyn std::error::Error>> {
    let answer = sim.command_and_wait(&Command::new("plug-1", endpoint), WAIT).await?;
    info!(%endpoint, answer = %answer.message.body, "the platform sent a command and got the answer");
    Ok(())
}

/// Waits for a `state` event of plug-1 saying `on`, after the event `seen`
/// (a sequence number, updated); its body.
async fn state_event(sim: &SimHandle, seen: &mut u64, on: bool) -> Result<String, Box<dyn std::error::Error>> {
    let start = Instant::now();
    loop {
        let events = sim
            .events_matching(EventFilter {
                device: Some("plug-1".into()),
                kind: Some(EventKind::Change),
                since: Some(*seen),
                limit: Some(usize::MAX),
            })
            .await;
        for event in events {
            *seen = event.seq;
            let relay: Relay = serde_json::from_str(&event.message.body)?;
            if relay.on == on {
                return Ok(event.message.body);
            }
        }
        if start.elapsed() > WAIT {
            return Err(format!("no state event with on={on} from plug-1").into());
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}
