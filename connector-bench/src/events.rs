//! Scenario `events`: devices push change events as fast as the link takes
//! them; events per second counted by the platform, through the runtime and
//! through the raw baseline, one after the other against fresh simulators.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_runtime::Connector;

use crate::harness::{self, counters};
use crate::pump::{self, Pump};
use crate::raw::{self, RawClient};

/// Events the pump may run ahead of the platform (the buffer holds 100,000).
const WINDOW: u64 = 50_000;

#[derive(Debug, Clone, serde::Serialize)]
pub struct EventsResult {
    pub devices: usize,
    pub runtime_per_s: f64,
    pub raw_per_s: f64,
    /// runtime / raw.
    pub ratio: f64,
    /// Frames the runtime's buffer dropped (expected 0: the pump is flow-controlled).
    pub runtime_dropped: u64,
    pub measured_s: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub warmup: Duration,
    pub measure: Duration,
    pub pump_threads: usize,
}

pub fn run(devices: usize, timing: &Timing) -> EventsResult {
    let (runtime_per_s, runtime_dropped) = through_runtime(devices, timing);
    let raw_per_s = through_raw(devices, timing);
    EventsResult {
        devices,
        runtime_per_s,
        raw_per_s,
        ratio: if raw_per_s > 0.0 {
            runtime_per_s / raw_per_s
        } else {
            0.0
        },
        runtime_dropped,
        measured_s: timing.measure.as_secs_f64(),
    }
}

/// Changes counted per second over `measure`, after `warmup`.
fn measure(sim: &platform_sim::SimHandle, timing: &Timing) -> f64 {
    std::thread::sleep(timing.warmup);
    let (c0, t0) = (counters(sim).changes, Instant::now());
    std::thread::sleep(timing.measure);
    let (c1, t1) = (counters(sim).changes, Instant::now());
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

fn through_runtime(devices: usize, timing: &Timing) -> (f64, u64) {
    let sim = harness::simulator(false);
    let received: pump::Received = {
        let sim = sim.clone();
        Arc::new(move || counters(&sim).changes)
    };
    let pump = Pump::new(received, WINDOW);
    let config = harness::config(sim.lookup_url(), harness::devices(devices, "d", pump::PLUGIN));
    let system = actix_rt::System::new();
    let result = system.block_on(async {
        let connector = Connector::builder(config)
            .plugin(pump::PLUGIN, pump.factory())
            .start()
            .await
            .expect("the connector starts");
        let n = devices as u64;
        harness::wait_async(&sim, Duration::from_millis(5), |c| c.devices_registered >= n)
            .await
            .expect("devices registered");
        while pump.devices() < devices {
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        let threads = pump.start(timing.pump_threads, None);
        // The measurement blocks a thread of its own; the runtime keeps this one.
        let sim2 = sim.clone();
        let timing2 = *timing;
        let meter = std::thread::spawn(move || measure(&sim2, &timing2));
        while !meter.is_finished() {
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        let rate = meter.join().expect("measurement thread");
        pump.stop(threads);
        let dropped = connector.stats().frames_dropped.load(Ordering::Relaxed);
        connector.shutdown(Duration::from_secs(2)).await;
        (rate, dropped)
    });
    drop(sim);
    result
}

/// Events per second the raw WebSocket client gets to the simulator.
pub fn through_raw(devices: usize, timing: &Timing) -> f64 {
    let sim = harness::simulator(false);
    let client = RawClient::connect(sim.local_addr()).expect("raw client connects");
    harness::wait_blocking(&sim, Duration::from_millis(1), |c| c.sessions_authenticated >= 1)
        .expect("raw session authenticated");
    let ids: Vec<String> = (0..devices).map(|i| format!("d{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let thread = raw::spawn_blast(client, ids, stop.clone(), sent);
    let rate = measure(&sim, timing);
    stop.store(true, Ordering::Relaxed);
    let _ = thread.join();
    drop(sim);
    rate
}

impl Timing {
    pub fn scaled(smoke: bool) -> Timing {
        if smoke {
            Timing {
                warmup: Duration::from_millis(100),
                measure: Duration::from_millis(300),
                pump_threads: 1,
            }
        } else {
            Timing {
                warmup: Duration::from_millis(700),
                measure: Duration::from_secs(3),
                pump_threads: 1,
            }
        }
    }
}
