//! Scenario `slow-devices`: devices that block beside devices that do not.
//! The round trips of 100 `echo` devices alone and beside 10 neighbours
//! whose every command blocks 2 s, with the link drops and unanswered
//! commands of the second run; then 1,000 devices whose commands each block
//! 20 ms, commands per second against the ideal for the plugin pool's size
//! (threads / 20 ms).

use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::plugin::{DevicePlugin, DeviceSpec, PluginError, Reply};
use connector_core::Message;
use connector_runtime::Connector;
use futures_util::FutureExt;
use platform_sim::{Command, SimHandle};

use crate::commands::{self, Latency};
use crate::harness::{self, counters};

/// A device whose every command blocks its plugin call for a while: a slow
/// HTTP API or serial line, standing still.
struct Sleeper(Duration);

impl DevicePlugin for Sleeper {
    fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
        std::thread::sleep(self.0);
        Ok(Reply::body(command.payload.clone()))
    }
}

fn sleeper(block: Duration) -> impl Fn(&DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> + Send + Sync {
    move |_: &DeviceSpec| Ok(Box::new(Sleeper(block)) as Box<dyn DevicePlugin>)
}

#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub echo: usize,
    pub slow: usize,
    pub slow_block: Duration,
    /// Echo commands in flight, each awaited.
    pub window: usize,
    pub measure: Duration,
    pub many: usize,
    pub many_block: Duration,
}

impl Plan {
    pub fn scaled(smoke: bool) -> Plan {
        if smoke {
            Plan {
                echo: 4,
                slow: 2,
                slow_block: Duration::from_millis(200),
                window: 4,
                measure: Duration::from_millis(400),
                many: 20,
                many_block: Duration::from_millis(5),
            }
        } else {
            Plan {
                echo: 100,
                slow: 10,
                slow_block: Duration::from_secs(2),
                window: 16,
                measure: Duration::from_secs(6),
                many: 1000,
                many_block: Duration::from_millis(20),
            }
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SlowResult {
    pub echo_devices: usize,
    pub slow_devices: usize,
    pub slow_block_ms: f64,
    /// Echo round trips with the slow devices idle.
    pub alone: Latency,
    /// Echo round trips while every slow device is blocked in a command.
    pub beside_slow: Latency,
    /// `beside_slow.p99 / alone.p99`.
    pub p99_ratio: f64,
    /// Commands sent to the slow devices during the second run.
    pub slow_commands: u64,
    /// Sessions lost and opened again during both runs.
    pub link_drops: u64,
    /// Commands of both runs that got no response.
    pub unanswered: u64,
    pub many_devices: usize,
    pub many_block_ms: f64,
    pub pool_threads: usize,
    pub many_per_s: f64,
    /// `min(devices, threads) / block`: what a pool of that size can do.
    pub ideal_per_s: f64,
    pub share_of_ideal: f64,
}

pub fn run(plan: Plan) -> SlowResult {
    let (alone, beside_slow, slow_commands, link_drops, unanswered) = neighbours(plan);
    let (pool_threads, many_per_s) = many(plan);
    let busy = plan.many.min(pool_threads) as f64;
    let ideal_per_s = busy / plan.many_block.as_secs_f64();
    SlowResult {
        echo_devices: plan.echo,
        slow_devices: plan.slow,
        slow_block_ms: plan.slow_block.as_secs_f64() * 1e3,
        p99_ratio: beside_slow.p99_us / alone.p99_us,
        alone,
        beside_slow,
        slow_commands,
        link_drops,
        unanswered,
        many_devices: plan.many,
        many_block_ms: plan.many_block.as_secs_f64() * 1e3,
        pool_threads,
        many_per_s,
        ideal_per_s,
        share_of_ideal: many_per_s / ideal_per_s,
    }
}

/// Echo round trips alone, then beside the blocked devices.
fn neighbours(plan: Plan) -> (Latency, Latency, u64, u64, u64) {
    let sim = harness::simulator(false);
    let mut devices = harness::devices(plan.echo, "e", "echo");
    devices.extend(harness::devices(plan.slow, "s", "sleeper"));
    let config = harness::config(sim.lookup_url(), devices);
    let total = (plan.echo + plan.slow) as u64;
    let builder = Connector::builder(config).plugin("sleeper", sleeper(plan.slow_block));
    harness::with_connector(&sim, builder, total, move |sim| drive_neighbours(&sim, plan))
}

fn drive_neighbours(sim: &SimHandle, plan: Plan) -> (Latency, Latency, u64, u64, u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("driver runtime");
    let echo: Arc<Vec<Command>> = Arc::new(
        (0..plan.echo)
            .map(|i| Command::new(format!("e{i}"), "ping").body("{'value': '1.43'}"))
            .collect(),
    );
    runtime.block_on(async {
        // Warm-up, unmeasured.
        commands::closed(sim, &echo, plan.window, plan.measure / 4).await;
        let alone = commands::closed(sim, &echo, plan.window, plan.measure).await;
        // Every slow device blocked for the whole run: one command each now
        // and one per block after, so each always has one running and at
        // most one waiting.
        let slow_sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let feeder = {
            let (sim, sent) = (sim.clone(), slow_sent.clone());
            let until = Instant::now() + plan.measure;
            tokio::spawn(async move {
                while Instant::now() < until {
                    for i in 0..plan.slow {
                        let command = Command::new(format!("s{i}"), "read").body("x");
                        if sim.send_command(&command).now_or_never().is_some() {
                            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(plan.slow_block).await;
                }
            })
        };
        // The slow devices' first commands are in their plugins before the
        // echo devices are measured.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let beside = commands::closed(sim, &echo, plan.window, plan.measure).await;
        let _ = feeder.await;
        let slow_commands = slow_sent.load(std::sync::atomic::Ordering::Relaxed);
        // Everything sent is answered once the slow devices work off their queues.
        let _ = harness::wait_blocking(sim, Duration::from_millis(10), |c| c.responses >= c.commands_sent);
        let c = counters(sim);
        let unanswered = c.commands_sent.saturating_sub(c.responses) + alone.errors + beside.errors;
        let link_drops = c.sessions_opened.saturating_sub(1);
        (alone.latency, beside.latency, slow_commands, link_drops, unanswered)
    })
}

/// Many devices blocking a while per command, all kept busy: the pool's
/// throughput. Returns the pool's size and the responses per second.
fn many(plan: Plan) -> (usize, f64) {
    let sim = harness::simulator(false);
    let config = harness::config(sim.lookup_url(), harness::devices(plan.many, "m", "sleeper"));
    let threads = config.plugin_threads;
    let builder = Connector::builder(config).plugin("sleeper", sleeper(plan.many_block));
    let per_s = harness::with_connector(&sim, builder, plan.many as u64, move |sim| {
        let commands: Vec<Command> = (0..plan.many)
            .map(|i| Command::new(format!("m{i}"), "read").body("x"))
            .collect();
        // One command in flight per device.
        commands::counted(&sim, &commands, plan.many, plan.measure / 4);
        commands::counted(&sim, &commands, plan.many, plan.measure).responses_per_s
    });
    (threads, per_s)
}
