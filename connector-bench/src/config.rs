//! Scenario `config`: a `connector.yaml` of N devices written the way users
//! write one. How long reading and checking it takes (what `--check` does),
//! the memory that costs at its peak, the time from the start until the
//! platform has every device registered, and a reload of the file with 1 %
//! of its devices changed, 1 % removed and 1 % added.
//!
//! The runtime runs in a child process (`config-child`), so that its peak
//! memory is the config's and the runtime's alone.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use connector_core::config::ConfigFile;
use connector_core::plugin::DeviceSpec;
use connector_runtime::Connector;

use crate::harness;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConfigResult {
    pub devices: usize,
    pub file_bytes: u64,
    /// Reading the file into the config model, with every position.
    pub parse_ms: f64,
    /// Every device's plugin and settings checked, as `--check` does.
    pub check_ms: f64,
    /// The child's peak resident memory once read and checked, and before.
    pub peak_kib: u64,
    pub rss_before_kib: u64,
    /// From the start call to the platform counting every device registered.
    pub registered_ms: f64,
    /// Reading, checking and applying the changed file.
    pub reload_ms: f64,
    pub reload_added: usize,
    pub reload_removed: usize,
    pub reload_changed: usize,
}

/// What the child reports after reading and after reloading.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Read {
    file_bytes: u64,
    parse_ms: f64,
    check_ms: f64,
    peak_kib: u64,
    rss_before_kib: u64,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Reloaded {
    reload_ms: f64,
    added: usize,
    removed: usize,
    changed: usize,
}

pub fn run(devices: usize) -> Result<ConfigResult, String> {
    let sim = harness::simulator(false);
    let mut child = harness::ChildRun::spawn("config-child", devices, &sim.lookup_url())?;
    let read: Read = child.json()?;
    child.expect("start")?;
    let t0 = Instant::now();
    let n = devices as u64;
    let ready = harness::wait_blocking(&sim, Duration::from_millis(2), |c| c.devices_registered >= n)
        .ok_or_else(|| format!("{devices} devices not registered within {:?}", harness::PATIENCE))?;
    let registered_ms = (ready - t0).as_secs_f64() * 1e3;
    child.say("reload")?;
    let reloaded: Reloaded = child.json()?;
    Ok(ConfigResult {
        devices,
        file_bytes: read.file_bytes,
        parse_ms: read.parse_ms,
        check_ms: read.check_ms,
        peak_kib: read.peak_kib,
        rss_before_kib: read.rss_before_kib,
        registered_ms,
        reload_ms: reloaded.reload_ms,
        reload_added: reloaded.added,
        reload_removed: reloaded.removed,
        reload_changed: reloaded.changed,
    })
}

/// The text of a `connector.yaml` with `devices` echo devices; `round` 1
/// changes every 100th device, drops the next one and adds as many.
fn file_text(lookup: &str, devices: usize, round: usize) -> String {
    let mut text = String::with_capacity(devices * 120);
    let _ = write!(
        text,
        "# {devices} devices, as a gateway's file might hold them\n\
         platform:\n  lookup_url: {lookup}\n  backoff: {{initial_ms: 20, max_ms: 200}}\n\
         log_level: warning\ndevices:\n"
    );
    let every = 100;
    for i in 0..devices {
        let (changed, removed) = (round == 1 && i % every == 0, round == 1 && i % every == 1);
        if removed {
            continue;
        }
        let name = if changed { "renamed" } else { "sensor" };
        let _ = write!(
            text,
            "  - id: dev-{i:06}\n    type: bench\n    name: {name} {i}\n    plugin: echo\n    command_timeout_ms: 10000\n"
        );
    }
    if round == 1 {
        for i in (0..devices).step_by(every) {
            let _ = writeln!(text, "  - {{id: new-{i:06}, type: bench, plugin: echo}}");
        }
    }
    text
}

fn read_and_check(path: &Path) -> Result<(connector_core::config::Config, f64, f64), String> {
    let t0 = Instant::now();
    let file = ConfigFile::read(path).map_err(|e| e.to_string())?;
    let parse_ms = t0.elapsed().as_secs_f64() * 1e3;
    if let Some(problem) = file.problems().first() {
        return Err(problem.to_string());
    }
    let t1 = Instant::now();
    let plugins = connector_runtime::connector::builtin_plugins();
    for device in &file.config().devices {
        plugins
            .check_settings(&DeviceSpec::from(device))
            .map_err(|e| e.to_string())?;
    }
    let check_ms = t1.elapsed().as_secs_f64() * 1e3;
    Ok((file.into_config(), parse_ms, check_ms))
}

/// The child: write the file, read and check it, report, start the runtime
/// (saying `start` just before), and reload a changed file when told.
pub fn child(devices: usize, lookup: String) {
    let dir = scratch_dir();
    let path = dir.join("connector.yaml");
    let rss_before_kib = harness::rss_kib();
    std::fs::write(&path, file_text(&lookup, devices, 0)).expect("the config file is written");
    let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let (config, parse_ms, check_ms) = read_and_check(&path).expect("the file reads and checks");
    let read = Read {
        file_bytes,
        parse_ms,
        check_ms,
        peak_kib: harness::peak_rss_kib(),
        rss_before_kib,
    };
    println!("{}", serde_json::to_string(&read).expect("serializes"));
    let rx = harness::next_stdin_line();
    actix_rt::System::new().block_on(async move {
        println!("start");
        let _ = std::io::stdout().flush();
        let connector = Connector::start(config).await.expect("the connector starts");
        let _ = rx.await;
        std::fs::write(&path, file_text(&lookup, devices, 1)).expect("the changed file is written");
        let t0 = Instant::now();
        let (new, _, _) = read_and_check(&path).expect("the changed file reads and checks");
        let report = connector.reload(new).await.expect("the reload is applied");
        let reloaded = Reloaded {
            reload_ms: t0.elapsed().as_secs_f64() * 1e3,
            added: report.added.len(),
            removed: report.removed.len(),
            changed: report.changed.len(),
        };
        println!("{}", serde_json::to_string(&reloaded).expect("serializes"));
        let _ = std::io::stdout().flush();
        let _ = std::fs::remove_dir_all(&dir);
        // The parent kills this process; keep the connector alive until then.
        std::future::pending::<()>().await;
        drop(connector);
    });
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("connector-bench-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}
