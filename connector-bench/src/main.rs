//! `connector-bench`: the runtime against the platform simulator over
//! loopback, beside a raw WebSocket baseline, so every figure is also a
//! ratio. See `BENCHMARKS.md` for what each scenario measures and the last
//! results.
//!
//! # Layout
//! - `harness`: the simulator on its own thread, configs, counters, memory.
//! - `pump`: the `blast` plugin and the threads that emit its events.
//! - `raw`: the raw baseline client.
//! - `events`, `commands`, `scale`, `outage`, `slow`, `config`, `mqtt`: one scenario each.
//! - `report`: tables, JSON and the targets.

mod commands;
mod config;
mod events;
mod harness;
mod mqtt;
mod outage;
mod pump;
mod raw;
mod report;
mod scale;
mod slow;

/// The same allocator as the `connector-runtime` binary, so the figures are
/// the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Benchmarks of the SEPL connector runtime against the platform simulator.
#[derive(Debug, Parser)]
#[command(name = "connector-bench")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Tiny counts and short runs (a few seconds in all), for CI.
    #[arg(long, global = true)]
    smoke: bool,
    /// Where the JSON results go.
    #[arg(long, global = true, default_value = "target/bench.json")]
    json: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Events per second through the runtime and the raw baseline.
    Events {
        /// Device counts (default 1, 100, 10000; smoke 1, 10).
        #[arg(long, value_delimiter = ',')]
        devices: Vec<usize>,
        /// Threads emitting the runtime's events.
        #[arg(long, default_value_t = 1)]
        pump_threads: usize,
    },
    /// Command round trips: pipelined, one at a time, and paced latency.
    Commands {
        /// Commands in flight in the pipelined run.
        #[arg(long)]
        window: Option<usize>,
    },
    /// Time to ready and memory of many idle devices.
    Scale {
        /// Device counts (default 10000, 100000; smoke 100, 12000: past one registration request).
        #[arg(long, value_delimiter = ',')]
        devices: Vec<usize>,
    },
    /// Reconnect time and losses while the platform drops the session.
    Outage,
    /// Echo round trips beside devices that block 2 s; 1,000 devices blocking 20 ms each.
    SlowDevices,
    /// Reading, checking, starting and reloading a connector.yaml of many devices.
    Config {
        /// Device counts (default 1000, 10000, 100000; smoke 100, 1000).
        #[arg(long, value_delimiter = ',')]
        devices: Vec<usize>,
    },
    /// Events from a local mosquitto through the mqtt plugin, beside publishing straight to the simulator.
    Mqtt,
    /// Every scenario with its default counts.
    All,
    /// (internal) the runtime side of `scale`, in a process of its own.
    #[command(hide = true)]
    ScaleChild {
        #[arg(long)]
        devices: usize,
        #[arg(long)]
        lookup: String,
    },
    /// (internal) the runtime side of `config`, in a process of its own.
    #[command(hide = true)]
    ConfigChild {
        #[arg(long)]
        devices: usize,
        #[arg(long)]
        lookup: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let smoke = cli.smoke;
    let mut report = report::Report {
        machine: harness::Machine::describe(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        smoke,
        events: Vec::new(),
        commands: None,
        scale: Vec::new(),
        scale_failures: Vec::new(),
        outage: None,
        slow: None,
        config: Vec::new(),
        config_failures: Vec::new(),
        mqtt: None,
        mqtt_failure: None,
        targets: Vec::new(),
    };
    let default_events = if smoke { vec![1, 10] } else { vec![1, 100, 10_000] };
    let default_scale = if smoke {
        vec![100, 12_000]
    } else {
        vec![10_000, 100_000]
    };
    let slow = matches!(cli.scenario, Scenario::SlowDevices | Scenario::All);
    let default_config = if smoke {
        vec![100, 1_000]
    } else {
        vec![1_000, 10_000, 100_000]
    };
    let mqtt = matches!(cli.scenario, Scenario::Mqtt | Scenario::All);
    let config = match &cli.scenario {
        Scenario::Config { devices } => or(devices.clone(), &default_config),
        Scenario::All => default_config,
        _ => Vec::new(),
    };
    let (events, commands, scale, outage, pump_threads, window) = match cli.scenario {
        Scenario::ScaleChild { devices, lookup } => {
            scale::child(devices, lookup);
            return ExitCode::SUCCESS;
        }
        Scenario::ConfigChild { devices, lookup } => {
            config::child(devices, lookup);
            return ExitCode::SUCCESS;
        }
        Scenario::Config { .. } | Scenario::Mqtt => (vec![], false, vec![], false, 1, None),
        Scenario::Events { devices, pump_threads } => {
            (or(devices, &default_events), false, vec![], false, pump_threads, None)
        }
        Scenario::Commands { window } => (vec![], true, vec![], false, 1, window),
        Scenario::Scale { devices } => (vec![], false, or(devices, &default_scale), false, 1, None),
        Scenario::Outage => (vec![], false, vec![], true, 1, None),
        Scenario::SlowDevices => (vec![], false, vec![], false, 1, None),
        Scenario::All => (default_events, true, default_scale, true, 1, None),
    };
    for n in events {
        let timing = events::Timing {
            pump_threads,
            ..events::Timing::scaled(smoke)
        };
        eprintln!("events: {n} devices ...");
        report.events.push(events::run(n, &timing));
    }
    if commands {
        let mut plan = commands::Plan::scaled(smoke);
        plan.window = window.unwrap_or(plan.window);
        eprintln!("commands: {} devices ...", plan.devices);
        report.commands = Some(commands::run(plan));
    }
    for n in scale {
        eprintln!("scale: {n} devices ...");
        match scale::run(n) {
            Ok(result) => report.scale.push(result),
            Err(why) => report.scale_failures.push(format!("{n} devices: {why}")),
        }
    }
    if outage {
        eprintln!("outage ...");
        report.outage = Some(outage::run(outage::Plan::scaled(smoke)));
    }
    if slow {
        eprintln!("slow-devices ...");
        report.slow = Some(slow::run(slow::Plan::scaled(smoke)));
    }
    for n in config {
        eprintln!("config: {n} devices ...");
        match config::run(n) {
            Ok(result) => report.config.push(result),
            Err(why) => report.config_failures.push(format!("{n} devices: {why}")),
        }
    }
    if mqtt {
        eprintln!("mqtt ...");
        match mqtt::run(&events::Timing::scaled(smoke)) {
            Ok(result) => report.mqtt = Some(result),
            Err(why) => report.mqtt_failure = Some(why),
        }
    }
    report.evaluate();
    report.print();
    if let Some(dir) = cli.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let json = serde_json::to_string_pretty(&report).expect("the report serializes");
    if let Err(e) = std::fs::write(&cli.json, json) {
        eprintln!("cannot write {}: {e}", cli.json.display());
        return ExitCode::FAILURE;
    }
    eprintln!("results written to {}", cli.json.display());
    ExitCode::SUCCESS
}

fn or(given: Vec<usize>, default: &[usize]) -> Vec<usize> {
    if given.is_empty() {
        default.to_vec()
    } else {
        given
    }
}
