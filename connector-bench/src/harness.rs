//! What every scenario needs: a counting simulator on its own thread, a
//! config pointing the runtime at it, counters read without an executor,
//! resident memory, and the machine's description.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use connector_core::config::{Config, DeviceConfig};
use connector_runtime::ConnectorBuilder;
use futures_util::FutureExt;
use platform_sim::{CounterSnapshot, SimConfig, SimHandle, Simulator};

/// How long any wait for the simulator may take before the scenario gives up.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// A simulator on a thread (and actix `System`) of its own, so it never
/// shares a thread with the runtime being measured. `record` keeps every
/// event (for the outage check); otherwise frames are only counted.
pub fn simulator(record: bool) -> SimHandle {
    Simulator::spawn(SimConfig {
        record_events: record,
        event_capacity: if record { 4_000_000 } else { 16 },
        ..SimConfig::default()
    })
    .expect("the simulator starts on loopback")
}

/// The simulator's counters now. The call never waits, so no executor is needed.
pub fn counters(sim: &SimHandle) -> CounterSnapshot {
    sim.counters().now_or_never().expect("counters() never waits")
}

/// Polls the counters until `done` holds, every `poll`, sleeping the thread.
/// `None` once [`PATIENCE`] ran out.
pub fn wait_blocking(sim: &SimHandle, poll: Duration, done: impl Fn(&CounterSnapshot) -> bool) -> Option<Instant> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if done(&counters(sim)) {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(poll);
    }
}

/// The same wait inside an actix system, without blocking its thread.
pub async fn wait_async(sim: &SimHandle, poll: Duration, done: impl Fn(&CounterSnapshot) -> bool) -> Option<Instant> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if done(&counters(sim)) {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        actix_rt::time::sleep(poll).await;
    }
}

/// `n` devices `<prefix><i>` driven by `plugin`.
pub fn devices(n: usize, prefix: &str, plugin: &str) -> Vec<DeviceConfig> {
    (0..n)
        .map(|i| DeviceConfig {
            id: format!("{prefix}{i}"),
            device_type: "bench".to_owned(),
            name: format!("{prefix}{i}"),
            plugin: plugin.to_owned(),
            ..DeviceConfig::default()
        })
        .collect()
}

/// A runtime config for the simulator at `lookup_url` with quick reconnects
/// (20 ms first back-off, 200 ms at most) and otherwise the defaults.
pub fn config(lookup_url: String, devices: Vec<DeviceConfig>) -> Config {
    let mut config = Config::default();
    config.platform.lookup_url = lookup_url;
    config.platform.backoff.initial_ms = 20;
    config.platform.backoff.max_ms = 200;
    config.devices = devices;
    // The plugin pool's size, to compare runs: `CONNECTOR_BENCH_PLUGIN_THREADS=4`.
    if let Some(threads) = std::env::var("CONNECTOR_BENCH_PLUGIN_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.plugin_threads = threads;
    }
    config
}

/// Starts the connector `builder` makes, waits until the simulator has
/// `devices` registered, runs `drive` (the platform's side) on a thread of
/// its own, and shuts the connector down once `drive` returns.
pub fn with_connector<T: Send + 'static>(
    sim: &SimHandle,
    builder: ConnectorBuilder,
    devices: u64,
    drive: impl FnOnce(SimHandle) -> T + Send + 'static,
) -> T {
    let system = actix_rt::System::new();
    system.block_on(async {
        let connector = builder.start().await.expect("the connector starts");
        wait_async(sim, Duration::from_millis(5), |c| c.devices_registered >= devices)
            .await
            .expect("devices registered");
        let sim = sim.clone();
        let driver = std::thread::Builder::new()
            .name("platform-driver".to_owned())
            .spawn(move || drive(sim))
            .expect("driver thread starts");
        while !driver.is_finished() {
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        let result = driver.join().expect("driver thread");
        connector.shutdown(Duration::from_secs(1)).await;
        result
    })
}

/// This binary again, running one of its hidden `*-child` commands for
/// `devices` devices against the simulator at `lookup`, so that the
/// runtime's memory is measured in a process of its own. Talks in lines;
/// killed when dropped.
pub struct ChildRun {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl ChildRun {
    pub fn spawn(command: &str, devices: usize, lookup: &str) -> Result<ChildRun, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .args([command, "--devices", &devices.to_string(), "--lookup", lookup])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {command}: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Ok(ChildRun { child, stdin, stdout })
    }

    /// The child's next line, trimmed.
    pub fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err("the child process ended early".to_owned()),
            Ok(_) => Ok(line.trim().to_owned()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The child's next line, which must be `word`.
    pub fn expect(&mut self, word: &str) -> Result<(), String> {
        match self.line()? {
            said if said == word => Ok(()),
            said => Err(format!("the child process said {said:?}, not {word:?}")),
        }
    }

    /// The child's next line, as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, String> {
        let line = self.line()?;
        serde_json::from_str(&line).map_err(|e| format!("bad child report {line:?}: {e}"))
    }

    pub fn say(&mut self, word: &str) -> Result<(), String> {
        writeln!(self.stdin, "{word}").map_err(|e| e.to_string())
    }
}

impl Drop for ChildRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resolves when the parent says its next line on this child's stdin: the
/// line is read on a thread of its own, so an actix system can await it.
pub fn next_stdin_line() -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(());
    });
    rx
}

/// This process's resident memory (`VmRSS`), in KiB.
pub fn rss_kib() -> u64 {
    proc_field("/proc/self/status", "VmRSS:").unwrap_or(0)
}

/// This process's peak resident memory so far (`VmHWM`), in KiB.
pub fn peak_rss_kib() -> u64 {
    proc_field("/proc/self/status", "VmHWM:").unwrap_or(0)
}

fn proc_field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Cores, memory and date of the run, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_mib: u64,
    pub cpu: String,
    pub kernel: String,
    pub date_utc: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_owned())
            })
            .unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib: proc_field("/proc/meminfo", "MemTotal:").unwrap_or(0) / 1024,
            cpu,
            kernel,
            date_utc: utc_now(),
        }
    }
}

/// `YYYY-MM-DD HH:MM` in UTC, from the system clock (civil-from-days).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60
    )
}

/// Percentile `p` (0..=1) of sorted samples, in microseconds.
pub fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e6
}
