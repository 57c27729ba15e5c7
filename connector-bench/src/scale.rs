//! Scenario `scale`: N devices of the trivial `echo` plugin; time from the
//! start of the runtime until the platform has every device registered, and
//! the runtime's resident memory once they idle.
//!
//! The runtime runs in a child process (this binary's hidden `scale-child`
//! command), so its resident memory is its own: the simulator, which holds
//! its own copy of every registered device, stays in the parent.

use std::io::Write;
use std::time::{Duration, Instant};

use connector_runtime::Connector;

use crate::harness::{self, counters};

#[derive(Debug, Clone, serde::Serialize)]
pub struct ScaleResult {
    pub devices: usize,
    /// From the start call to the platform counting every device registered.
    pub ready_ms: f64,
    /// How long `Connector::start` itself took (creating the actors).
    pub start_call_ms: f64,
    /// The runtime process's resident memory before the config is built.
    pub rss_before_kib: u64,
    /// ... and with every device registered and idle.
    pub rss_ready_kib: u64,
    /// (ready - before) / devices, in bytes.
    pub per_device_bytes: f64,
    pub registration_requests: u64,
}

/// What the child reports once told to measure.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ChildReport {
    rss_before_kib: u64,
    rss_ready_kib: u64,
    start_call_ms: f64,
}

pub fn run(devices: usize) -> Result<ScaleResult, String> {
    let sim = harness::simulator(false);
    let mut child = harness::ChildRun::spawn("scale-child", devices, &sim.lookup_url())?;
    child.expect("start")?;
    let t0 = Instant::now();
    let n = devices as u64;
    let ready = harness::wait_blocking(&sim, Duration::from_millis(2), |c| c.devices_registered >= n)
        .ok_or_else(|| format!("{devices} devices not registered within {:?}", harness::PATIENCE))?;
    let ready_ms = (ready - t0).as_secs_f64() * 1e3;
    // Let the last replies and updates settle before reading memory.
    std::thread::sleep(Duration::from_millis(300));
    child.say("measure")?;
    let report: ChildReport = child.json()?;
    Ok(ScaleResult {
        devices,
        ready_ms,
        start_call_ms: report.start_call_ms,
        rss_before_kib: report.rss_before_kib,
        rss_ready_kib: report.rss_ready_kib,
        per_device_bytes: report.rss_ready_kib.saturating_sub(report.rss_before_kib) as f64 * 1024.0 / devices as f64,
        registration_requests: counters(&sim).registrations,
    })
}

/// The child: start the runtime with `devices` echo devices, say `start`
/// just before, and report memory when the parent says `measure`.
pub fn child(devices: usize, lookup: String) {
    // Before the config: its 100,000 entries are part of what a start costs.
    let rss_before_kib = harness::rss_kib();
    let config = harness::config(lookup, harness::devices(devices, "s", "echo"));
    let rx = harness::next_stdin_line();
    actix_rt::System::new().block_on(async move {
        println!("start");
        let _ = std::io::stdout().flush();
        let t0 = Instant::now();
        let connector = Connector::start(config).await.expect("the connector starts");
        let start_call_ms = t0.elapsed().as_secs_f64() * 1e3;
        let _ = rx.await;
        let report = ChildReport {
            rss_before_kib,
            rss_ready_kib: harness::rss_kib(),
            start_call_ms,
        };
        println!("{}", serde_json::to_string(&report).expect("serializes"));
        let _ = std::io::stdout().flush();
        // The parent kills this process; keep the connector alive until then.
        std::future::pending::<()>().await;
        drop(connector);
    });
}
