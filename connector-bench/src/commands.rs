//! Scenario `commands`: the platform sends commands to `echo` devices and
//! waits for each response. Pipelined (a window of commands in flight) for
//! the maximum rate, one at a time, and paced at 25 %, 50 % and 90 % of the
//! pipelined maximum for round-trip latency, timed by the simulator on the
//! wire. The platform's side (commands out, waiters) runs on a driver thread
//! of its own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connector_runtime::Connector;
use platform_sim::{Command, SimHandle};

use futures_util::FutureExt;

use crate::harness::{self, counters, percentile_us};

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

impl Latency {
    /// The percentiles of `sorted` round trips.
    fn of(sorted: &[Duration]) -> Latency {
        Latency {
            p50_us: percentile_us(sorted, 0.50),
            p99_us: percentile_us(sorted, 0.99),
            p999_us: percentile_us(sorted, 0.999),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Closed {
    pub window: usize,
    pub responses_per_s: f64,
    pub latency: Latency,
    pub errors: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Counted {
    pub window: usize,
    pub responses_per_s: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Paced {
    /// Share of the pipelined (counted) maximum asked for.
    pub load: f64,
    pub target_per_s: f64,
    pub responses_per_s: f64,
    /// Timed by the simulator on the wire (see `SimHandle::time_round_trips`).
    pub latency: Latency,
    /// Commands without a response within the time-out after the run.
    pub errors: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CommandsResult {
    pub devices: usize,
    /// Fire-and-count: commands sent with `send_command` while fewer than
    /// `window` are unanswered, responses counted by the platform. The least
    /// platform-side work per command, so the closest to the runtime's limit.
    pub pipelined: Counted,
    /// `window` commands in flight, each awaited with its own waiter
    /// (`command_and_wait`), so each has a round-trip time.
    pub pipelined_waited: Closed,
    pub one_at_a_time: Closed,
    pub paced: Vec<Paced>,
}

#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub devices: usize,
    pub window: usize,
    pub warmup: Duration,
    pub measure: Duration,
}

impl Plan {
    pub fn scaled(smoke: bool) -> Plan {
        if smoke {
            Plan {
                devices: 4,
                window: 16,
                warmup: Duration::from_millis(50),
                measure: Duration::from_millis(250),
            }
        } else {
            Plan {
                devices: 100,
                window: 256,
                warmup: Duration::from_millis(500),
                measure: Duration::from_secs(3),
            }
        }
    }
}

pub fn run(plan: Plan) -> CommandsResult {
    let sim = harness::simulator(false);
    let config = harness::config(sim.lookup_url(), harness::devices(plan.devices, "e", "echo"));
    harness::with_connector(&sim, Connector::builder(config), plan.devices as u64, move |sim| {
        drive(&sim, plan)
    })
}

/// The platform's side of every phase, on its own tokio runtime.
fn drive(sim: &SimHandle, plan: Plan) -> CommandsResult {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("driver runtime");
    let commands: Arc<Vec<Command>> = Arc::new(
        (0..plan.devices)
            .map(|i| Command::new(format!("e{i}"), "ping").body("{'value': '1.43'}"))
            .collect(),
    );
    runtime.block_on(async {
        // Warm-up, unmeasured.
        counted(sim, &commands, plan.window, plan.warmup);
        let pipelined = counted(sim, &commands, plan.window, plan.measure);
        closed(sim, &commands, plan.window, plan.warmup).await;
        let pipelined_waited = closed(sim, &commands, plan.window, plan.measure).await;
        let one_at_a_time = closed(sim, &commands, 1, plan.measure).await;
        // Paced against the pipelined maximum, with the same per-command
        // work on the platform's side (no waiter).
        let mut paced_runs = Vec::new();
        for load in [0.25, 0.5, 0.9] {
            let rate = pipelined.responses_per_s * load;
            paced_runs.push(paced(sim, &commands, load, rate, plan.measure));
        }
        CommandsResult {
            devices: plan.devices,
            pipelined,
            pipelined_waited,
            one_at_a_time,
            paced: paced_runs,
        }
    })
}

/// Keeps `window` commands unanswered, sending with `send_command` (no
/// waiter) and reading the platform's `responses` counter.
pub(crate) fn counted(sim: &SimHandle, commands: &[Command], window: usize, length: Duration) -> Counted {
    // Whatever an earlier phase left in flight is answered first.
    harness::wait_blocking(sim, Duration::from_millis(1), |c| c.responses >= c.commands_sent);
    let base = counters(sim).responses;
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < length {
        let answered = counters(sim).responses - base;
        let free = (window as u64).saturating_sub(sent.saturating_sub(answered));
        if free == 0 {
            std::thread::sleep(Duration::from_micros(20));
            continue;
        }
        for _ in 0..free {
            let command = &commands[sent as usize % commands.len()];
            let _ = sim.send_command(command).now_or_never();
            sent += 1;
        }
    }
    let answered = counters(sim).responses - base;
    Counted {
        window,
        responses_per_s: answered as f64 / start.elapsed().as_secs_f64(),
    }
}

type Samples = Arc<Mutex<(Vec<Duration>, u64)>>;

/// One command's round trip, recorded in `samples` (or counted as an error).
async fn round_trip(sim: SimHandle, command: Command, samples: Samples) {
    let start = Instant::now();
    let ok = sim.command_and_wait(&command, TIMEOUT).await.is_ok();
    let took = start.elapsed();
    let mut s = samples.lock().unwrap();
    if ok {
        s.0.push(took);
    } else {
        s.1 += 1;
    }
}

fn summarize(samples: &Samples) -> (Vec<Duration>, u64, Latency) {
    let (mut all, errors) = std::mem::take(&mut *samples.lock().unwrap());
    all.sort_unstable();
    let latency = Latency::of(&all);
    (all, errors, latency)
}

/// `window` workers, each sending its next command once the last answered.
pub(crate) async fn closed(sim: &SimHandle, commands: &Arc<Vec<Command>>, window: usize, length: Duration) -> Closed {
    let samples: Samples = Arc::default();
    let start = Instant::now();
    let deadline = start + length;
    let workers: Vec<_> = (0..window)
        .map(|w| {
            let (sim, commands, samples) = (sim.clone(), commands.clone(), samples.clone());
            tokio::spawn(async move {
                let mut i = w;
                while Instant::now() < deadline {
                    round_trip(sim.clone(), commands[i % commands.len()].clone(), samples.clone()).await;
                    i += window;
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (all, errors, latency) = summarize(&samples);
    Closed {
        window,
        responses_per_s: all.len() as f64 / elapsed,
        latency,
        errors,
    }
}

/// Commands fired at a steady `rate` (open loop) with `send_command`, no
/// waiter and no task per command, so the driver stays cheap and on time;
/// the simulator times each round trip on its side of the wire (from the
/// session handing the frame to its socket to reading the response).
fn paced(sim: &SimHandle, commands: &[Command], load: f64, rate: f64, length: Duration) -> Paced {
    harness::wait_blocking(sim, Duration::from_millis(1), |c| c.responses >= c.commands_sent);
    let _ = sim.time_round_trips(true).now_or_never();
    let base = counters(sim).responses;
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < length {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let _ = sim
                .send_command(&commands[sent as usize % commands.len()])
                .now_or_never();
            sent += 1;
        }
        // Finer than tokio's millisecond timers, so commands leave in small
        // steps rather than bursts.
        std::thread::sleep(Duration::from_micros(20));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let deadline = Instant::now() + TIMEOUT;
    while counters(sim).responses - base < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut all = sim.take_round_trips().now_or_never().unwrap_or_default();
    let _ = sim.time_round_trips(false).now_or_never();
    all.sort_unstable();
    Paced {
        load,
        target_per_s: rate,
        responses_per_s: all.len() as f64 / elapsed,
        latency: Latency::of(&all),
        errors: sent.saturating_sub(all.len() as u64),
    }
}
