//! `sysmetrics`: the gateway's own health as a device: load, memory, CPU,
//! uptime and disk usage, sent as periodic events and readable on demand.
//! Linux only for the `/proc` metrics; `disk` works on any Unix.
//!
//! # Settings
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `interval_ms` | `10000` | milliseconds between rounds of events; above 0 |
//! | `metrics` | all: `[load, memory, cpu, uptime, disk]` | metrics sent as events each round, in this order; `[]` sends none (commands still work) |
//! | `disk_paths` | `["/"]` | absolute paths whose file system usage `disk` reports |
//! | `proc_path` | `/proc` | where procfs is mounted; e.g. `/host/proc` in a container |
//!
//! # Events
//!
//! Each round (the first one interval after the device starts) sends one
//! event per metric in `metrics`, the endpoint being the metric's name and
//! the body a JSON object whose field names carry their unit:
//!
//! | endpoint | body, for example |
//! |---|---|
//! | `load` | `{"load_1m":0.52,"load_5m":0.58,"load_15m":0.59,"runnable_tasks":1,"total_tasks":467}` |
//! | `memory` | `{"total_bytes":…,"available_bytes":…,"used_bytes":…,"used_percent":50.0,"free_bytes":…,"swap_total_bytes":…,"swap_used_bytes":…}` |
//! | `cpu` | `{"used_percent":12.5,"iowait_percent":0.3,"cores":4,"window_ms":10000}`: use over the last `window_ms` |
//! | `uptime` | `{"uptime_seconds":350735.47}` |
//! | `disk` | `{"disks":[{"path":"/","total_bytes":…,"used_bytes":…,"available_bytes":…,"used_percent":61.2}]}` |
//!
//! A metric that cannot be read (a missing file, a path that is gone) is
//! logged once as a warning and skipped until it reads again; the others
//! go on.
//!
//! # Commands
//!
//! | endpoint | answer |
//! |---|---|
//! | `read` | all five metrics as one object, each key holding that metric's event body: `{"cpu":{…},"disk":{…},"load":{…},"memory":{…},"uptime":{…}}` |
//! | `read_load`, `read_memory`, `read_cpu`, `read_uptime`, `read_disk` | that metric's body |
//!
//! The command's body is ignored. `cpu` in an answer covers the time since
//! the previous command that read it (or since the device started); its
//! percentages are `null` when less than one clock tick (10 ms) passed.
//! A metric that cannot be read makes the command fail with an error
//! naming the file or path; any other endpoint fails naming the known ones.

pub mod disk;
pub mod procfs;

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connector_core::plugin::{DevicePlugin, DeviceSpec, EventSink, PluginError, Reply};
use connector_core::Message;
use serde::de::{Deserializer, Error as _};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::settings::above_zero;
use crate::ticker::Ticker;
use procfs::{CpuTimes, ParseError};

pub const NAME: &str = "sysmetrics";

/// Default of `interval_ms`: a round every ten seconds.
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
/// Default of `disk_paths`.
pub const DEFAULT_DISK_PATH: &str = "/";
/// Default of `proc_path`.
pub const DEFAULT_PROC_PATH: &str = "/proc";

/// One metric; its name is both the event endpoint and the `metrics` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Load,
    Memory,
    Cpu,
    Uptime,
    Disk,
}

impl Metric {
    pub const ALL: [Metric; 5] = [Metric::Load, Metric::Memory, Metric::Cpu, Metric::Uptime, Metric::Disk];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Load => "load",
            Metric::Memory => "memory",
            Metric::Cpu => "cpu",
            Metric::Uptime => "uptime",
            Metric::Disk => "disk",
        }
    }

    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// The `settings:` of a `sysmetrics` device; the table in the module doc
/// lists them with their defaults.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Milliseconds between rounds of events; above 0. Default: 10000.
    #[serde(default = "default_interval_ms", deserialize_with = "above_zero")]
    pub interval_ms: u64,
    /// Metrics sent each round, in this order; repeats are sent once.
    /// Default: all.
    #[serde(default = "default_metrics")]
    pub metrics: Vec<Metric>,
    /// Absolute paths whose file system usage `disk` reports. Default: `/`.
    #[serde(default = "default_disk_paths", deserialize_with = "absolute_paths")]
    pub disk_paths: Vec<PathBuf>,
    /// Where procfs is mounted; absolute. Default: `/proc`.
    #[serde(default = "default_proc_path", deserialize_with = "absolute_path")]
    pub proc_path: PathBuf,
}

fn default_interval_ms() -> u64 {
    DEFAULT_INTERVAL_MS
}

fn default_metrics() -> Vec<Metric> {
    Metric::ALL.to_vec()
}

fn default_disk_paths() -> Vec<PathBuf> {
    vec![PathBuf::from(DEFAULT_DISK_PATH)]
}

fn default_proc_path() -> PathBuf {
    PathBuf::from(DEFAULT_PROC_PATH)
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            interval_ms: DEFAULT_INTERVAL_MS,
            metrics: default_metrics(),
            disk_paths: default_disk_paths(),
            proc_path: default_proc_path(),
        }
    }
}

/// A relative path would depend on the directory the service happens to be
/// started in, so only absolute ones are taken.
fn absolute_path<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
    let path = PathBuf::deserialize(deserializer)?;
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(D::Error::custom(format!("{} is not an absolute path", path.display())))
    }
}

fn absolute_paths<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<PathBuf>, D::Error> {
    let paths = Vec::<PathBuf>::deserialize(deserializer)?;
    match paths.iter().find(|p| !p.is_absolute()) {
        Some(relative) => Err(D::Error::custom(format!(
            "{} is not an absolute path",
            relative.display()
        ))),
        None => Ok(paths),
    }
}

/// Why a metric could not be read; the text names the file or path.
#[derive(Debug)]
pub enum MetricError {
    /// A `/proc` file could not be read.
    Read { path: PathBuf, source: io::Error },
    /// A `/proc` file held something unexpected.
    Parse { path: PathBuf, source: ParseError },
    /// statvfs failed for a configured disk path.
    Disk { path: PathBuf, source: io::Error },
}

impl fmt::Display for MetricError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricError::Read { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            MetricError::Parse { path, source } => write!(f, "cannot understand {}: {source}", path.display()),
            MetricError::Disk { path, source } => {
                write!(f, "cannot read the disk usage of {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for MetricError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MetricError::Read { source, .. } | MetricError::Disk { source, .. } => Some(source),
            MetricError::Parse { source, .. } => Some(source),
        }
    }
}

/// The body of the `cpu` metric.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cpu {
    /// Share of time not idle, over `window_ms`; `null` when no clock tick
    /// passed since the previous sample.
    pub used_percent: Option<f64>,
    /// Share of time idle while waiting for IO.
    pub iowait_percent: Option<f64>,
    /// CPUs online.
    pub cores: u32,
    /// The time the percentages cover, in milliseconds.
    pub window_ms: u64,
}

/// The body of the `disk` metric.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Disks {
    pub disks: Vec<disk::DiskUsage>,
}

/// Reads metrics for one consumer. Each consumer (the event thread, the
/// commands) has its own, because CPU use is the difference to the
/// consumer's own previous sample.
#[derive(Debug)]
struct Reader {
    proc_path: PathBuf,
    disk_paths: Vec<PathBuf>,
    cpu_sample: Option<(CpuTimes, Instant)>,
}

impl Reader {
    fn new(settings: &Settings) -> Self {
        Reader {
            proc_path: settings.proc_path.clone(),
            disk_paths: settings.disk_paths.clone(),
            cpu_sample: None,
        }
    }

    /// Takes the first CPU sample, so the first `cpu` reading covers the
    /// time since now. A failure shows up later, when `cpu` is read.
    fn prime(&mut self) {
        let _ = self.read(Metric::Cpu);
    }

    fn parse_file<T>(&self, name: &str, parse: fn(&str) -> Result<T, ParseError>) -> Result<T, MetricError> {
        let path = self.proc_path.join(name);
        let text = std::fs::read_to_string(&path).map_err(|source| MetricError::Read {
            path: path.clone(),
            source,
        })?;
        parse(&text).map_err(|source| MetricError::Parse { path, source })
    }

    fn read(&mut self, metric: Metric) -> Result<serde_json::Value, MetricError> {
        let value = match metric {
            Metric::Load => to_json(self.parse_file("loadavg", procfs::parse_loadavg)?),
            Metric::Memory => to_json(self.parse_file("meminfo", procfs::parse_meminfo)?),
            Metric::Uptime => to_json(self.parse_file("uptime", procfs::parse_uptime)?),
            Metric::Cpu => to_json(self.read_cpu()?),
            Metric::Disk => to_json(Disks {
                disks: self
                    .disk_paths
                    .iter()
                    .map(|path| read_disk(path))
                    .collect::<Result<_, _>>()?,
            }),
        };
        Ok(value)
    }

    fn read_cpu(&mut self) -> Result<Cpu, MetricError> {
        let now = (self.parse_file("stat", procfs::parse_stat)?, Instant::now());
        let usage = self.cpu_sample.and_then(|(times, at)| {
            let usage = now.0.usage_since(&times)?;
            Some((usage, now.1.duration_since(at)))
        });
        // Without a usable difference the older sample stays, so the next
        // read covers a longer window instead of another empty one.
        if usage.is_some() || self.cpu_sample.is_none() {
            self.cpu_sample = Some(now);
        }
        Ok(Cpu {
            used_percent: usage.map(|(u, _)| u.used_percent),
            iowait_percent: usage.map(|(u, _)| u.iowait_percent),
            cores: now.0.cores,
            window_ms: usage.map_or(0, |(_, window)| u64::try_from(window.as_millis()).unwrap_or(u64::MAX)),
        })
    }

    /// Every metric, keyed by name.
    fn read_all(&mut self) -> Result<serde_json::Value, MetricError> {
        let mut all = serde_json::Map::new();
        for metric in Metric::ALL {
            all.insert(metric.name().to_owned(), self.read(metric)?);
        }
        Ok(serde_json::Value::Object(all))
    }
}

fn read_disk(path: &Path) -> Result<disk::DiskUsage, MetricError> {
    disk::usage(path).map_err(|source| MetricError::Disk {
        path: path.to_owned(),
        source,
    })
}

fn to_json(value: impl Serialize) -> serde_json::Value {
    serde_json::to_value(value).expect("metric bodies are plain data and always serialize")
}

/// The `sysmetrics` device.
#[derive(Debug)]
pub struct Sysmetrics {
    device_id: String,
    settings: Arc<Settings>,
    /// Metrics sent each round, without repeats.
    periodic: Arc<Vec<Metric>>,
    /// Serves commands, on the runtime's thread.
    reader: Reader,
    ticker: Option<Ticker>,
}

/// Creates a `sysmetrics` device from its config entry.
pub fn create(spec: &DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> {
    Ok(Box::new(Sysmetrics::new(spec.id(), spec.settings()?)))
}

impl Sysmetrics {
    pub fn new(device_id: impl Into<String>, settings: Settings) -> Self {
        let mut seen = HashSet::new();
        let periodic = settings.metrics.iter().copied().filter(|m| seen.insert(*m)).collect();
        Sysmetrics {
            device_id: device_id.into(),
            reader: Reader::new(&settings),
            settings: Arc::new(settings),
            periodic: Arc::new(periodic),
            ticker: None,
        }
    }
}

/// One round of events; `Break` when the device no longer takes events.
fn send_round(
    reader: &mut Reader,
    metrics: &[Metric],
    events: &EventSink,
    failing: &mut HashSet<Metric>,
) -> ControlFlow<()> {
    for &metric in metrics {
        match reader.read(metric) {
            Ok(body) => {
                if failing.remove(&metric) {
                    info!(device_id = %events.device_id(), metric = metric.name(), "sysmetrics: metric readable again");
                }
                if events.emit(metric.name(), body.to_string()).is_err() {
                    return ControlFlow::Break(());
                }
            }
            // Once per failure streak: a missing file would otherwise log every round.
            Err(e) => {
                if failing.insert(metric) {
                    warn!(device_id = %events.device_id(), metric = metric.name(), error = %e, "sysmetrics: cannot read a metric; skipping it until it reads again");
                }
            }
        }
    }
    ControlFlow::Continue(())
}

impl DevicePlugin for Sysmetrics {
    fn start(&mut self, events: EventSink) -> Result<(), PluginError> {
        self.stop();
        self.reader.prime();
        if self.periodic.is_empty() {
            return Ok(());
        }
        let mut reader = Reader::new(&self.settings);
        reader.prime();
        let metrics = self.periodic.clone();
        let mut failing = HashSet::new();
        let interval = Duration::from_millis(self.settings.interval_ms);
        let ticker = Ticker::spawn(format!("sysmetrics {}", self.device_id), interval, move |_| {
            send_round(&mut reader, &metrics, &events, &mut failing)
        })
        .map_err(|e| {
            PluginError::new(format!(
                "device {:?}: cannot start the metrics thread: {e}",
                self.device_id
            ))
        })?;
        self.ticker = Some(ticker);
        Ok(())
    }

    fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
        let endpoint = command.endpoint.as_str();
        let read = if endpoint == "read" {
            self.reader.read_all()
        } else if let Some(metric) = endpoint.strip_prefix("read_").and_then(Metric::from_name) {
            self.reader.read(metric)
        } else {
            let known: Vec<String> = std::iter::once("read".to_owned())
                .chain(Metric::ALL.iter().map(|m| format!("read_{}", m.name())))
                .collect();
            return Err(PluginError::new(format!(
                "unknown endpoint {endpoint:?}; known: {}",
                known.join(", ")
            )));
        };
        read.map(|body| Reply::body(body.to_string()))
            .map_err(|e| PluginError::new(e.to_string()))
    }

    fn stop(&mut self) {
        if let Some(mut ticker) = self.ticker.take() {
            ticker.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(settings: serde_json::Value) -> DeviceSpec {
        DeviceSpec {
            origin: Some("declared at line 4".into()),
            ..DeviceSpec::new("gw", "gateway", "Gateway").with_settings(settings)
        }
    }

    #[test]
    fn no_settings_at_all_give_the_documented_defaults() {
        let settings: Settings = spec(serde_json::Value::Null).settings().unwrap();
        assert_eq!(settings, Settings::default());
        assert_eq!(settings.interval_ms, 10_000);
        assert_eq!(settings.metrics, Metric::ALL);
        assert_eq!(settings.disk_paths, [PathBuf::from("/")]);
        assert_eq!(settings.proc_path, PathBuf::from("/proc"));
    }

    #[test]
    fn every_setting_is_read_and_repeated_metrics_are_sent_once() {
        let settings: Settings = spec(serde_json::json!({
            "interval_ms": 60000,
            "metrics": ["cpu", "load", "cpu"],
            "disk_paths": ["/", "/var/log"],
            "proc_path": "/host/proc",
        }))
        .settings()
        .unwrap();
        assert_eq!(settings.interval_ms, 60_000);
        assert_eq!(settings.disk_paths, [PathBuf::from("/"), PathBuf::from("/var/log")]);
        assert_eq!(settings.proc_path, PathBuf::from("/host/proc"));
        let device = Sysmetrics::new("gw", settings);
        assert_eq!(*device.periodic, [Metric::Cpu, Metric::Load]);
    }

    #[test]
    fn bad_settings_are_refused_naming_the_device_and_the_key() {
        let table = [
            (serde_json::json!({"interval_ms": 0}), "`settings.interval_ms`: must be above 0"),
            (
                serde_json::json!({"metrics": ["load", "temperature"]}),
                "`settings.metrics[1]`: unknown variant `temperature`, expected one of `load`, `memory`, `cpu`, `uptime`, `disk`",
            ),
            (serde_json::json!({"metrics": "load"}), "`settings.metrics`: invalid type"),
            (
                serde_json::json!({"disk_paths": ["/", "data"]}),
                "`settings.disk_paths`: data is not an absolute path",
            ),
            (
                serde_json::json!({"proc_path": "proc"}),
                "`settings.proc_path`: proc is not an absolute path",
            ),
            (serde_json::json!({"disk_path": "/"}), "unknown field `disk_path`"),
        ];
        for (settings, fragment) in table {
            let err = create(&spec(settings.clone())).err().expect("refused").to_string();
            assert!(
                err.starts_with("device \"gw\" (declared at line 4): "),
                "{settings}: {err}"
            );
            assert!(err.contains(fragment), "{settings}: {err:?} lacks {fragment:?}");
        }
    }

    #[test]
    fn metric_names_round_trip() {
        for metric in Metric::ALL {
            assert_eq!(Metric::from_name(metric.name()), Some(metric));
        }
        assert_eq!(Metric::from_name("temperature"), None);
    }

    #[test]
    fn errors_name_the_file_or_path() {
        let not_found = || io::Error::from(io::ErrorKind::NotFound);
        let read = MetricError::Read {
            path: "/proc/loadavg".into(),
            source: not_found(),
        };
        assert_eq!(read.to_string(), "cannot read /proc/loadavg: entity not found");
        let parse = MetricError::Parse {
            path: "/proc/stat".into(),
            source: ParseError("no `cpu` line".into()),
        };
        assert_eq!(parse.to_string(), "cannot understand /proc/stat: no `cpu` line");
        let disk = MetricError::Disk {
            path: "/data".into(),
            source: not_found(),
        };
        assert_eq!(
            disk.to_string(),
            "cannot read the disk usage of /data: entity not found"
        );
    }
}
