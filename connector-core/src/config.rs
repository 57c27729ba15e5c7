//! The connector's configuration: one [`Config`] read from `connector.yaml`,
//! overridden by the seed's environment variables, and checked as a whole so
//! a user can fix every problem of a file in one pass.
//!
//! Precedence is command-line flag > environment > file > default
//! (PROTOCOL.md section 1). This module does the last three; the binary
//! applies its flags to the public fields afterwards and checks again:
//!
//! ```no_run
//! # use connector_core::config::Config;
//! # use connector_core::logging::LogLevel;
//! # fn main() -> Result<(), connector_core::config::ConfigError> {
//! let mut config = Config::load("connector.yaml")?;
//! config.apply_env()?;
//! config.log_level = LogLevel::Debug; // e.g. from `--log-level debug`
//! config.validate()?;
//! # Ok(()) }
//! ```
//!
//! Every default lives in the `DEFAULT_*` constants and the `Default` impls
//! below; the example `config/connector.yaml` is tested to match them.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::logging::{LogFormat, LogLevel, ENV_LOG_LEVEL};
use crate::model::Device;
use crate::problem::{path_to_string, Seg};
pub use crate::problem::{Problem, Problems};
use crate::secret::{Credentials, Secret};
use crate::yaml;

mod file;
pub use file::ConfigFile;

/// Where the socket address is looked up (PROTOCOL.md section 1).
pub const DEFAULT_LOOKUP_URL: &str = "http://fgseitsrancher.wifa.intern.uni-leipzig.de:8093/lookup";
/// HTTP path for device (un)registration.
pub const DEFAULT_REGISTRATION_PATH: &str = "discovery";
/// How often the connector pings the platform.
pub const DEFAULT_PING_INTERVAL_MS: u64 = 30_000;
/// How long without a pong counts as a lost connection, unless set: this
/// many ping intervals.
pub const DEFAULT_PONG_TIMEOUT_INTERVALS: u64 = 2;
/// Largest incoming frame accepted: 1 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;
/// First reconnect delay (PROTOCOL.md section 7).
pub const DEFAULT_BACKOFF_INITIAL_MS: u64 = 1_000;
/// Longest reconnect delay.
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 60_000;
/// Most frames kept while disconnected.
pub const DEFAULT_BUFFER_MAX_FRAMES: usize = 100_000;
/// Most bytes kept while disconnected: 64 MiB.
pub const DEFAULT_BUFFER_MAX_BYTES: usize = 64 * 1024 * 1024;
/// How long a device has to answer a command before the platform gets an
/// error reply instead: 30 s.
pub const DEFAULT_COMMAND_TIMEOUT_MS: u64 = crate::plugin::DEFAULT_COMMAND_TIMEOUT_MS;
/// Most threads running plugin calls at once: this many devices may block
/// at the same time before a further blocking call waits for a thread.
pub const DEFAULT_PLUGIN_THREADS: usize = 64;

/// Overrides `platform.lookup_url`.
pub const ENV_LOOKUP_URL: &str = "CONNECTOR_LOOKUP_URL";
/// Overrides `platform.registration_path`.
pub const ENV_REGISTRATION_PATH: &str = "CONNECTOR_DEVICE_REGISTRATION_PATH";
/// Overrides `platform.https`: `1`, `true`, `yes`, `on` or `0`, `false`, `no`, `off`, any case.
pub const ENV_HTTPS: &str = "CONNECTOR_HTTPS";
/// Overrides `platform.user`.
pub const ENV_USER: &str = "CONNECTOR_USER";
/// Overrides `platform.password`.
pub const ENV_PASSWORD: &str = "CONNECTOR_PASSWORD";

/// Source name of problems found in environment variables.
const ENVIRONMENT: &str = "environment";

/// Everything the connector is configured with: the whole `connector.yaml`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// How to reach and log in to the platform.
    pub platform: PlatformConfig,
    /// How much to log: `trace`, `debug`, `info`, `warning` (or `warn`),
    /// `error` (or `critical`). Default: `info`. Env: `LOGLEVEL`.
    pub log_level: LogLevel,
    /// How log lines look: `text` for people, `json` (one object per line)
    /// for log collectors. Default: `text`. Flag: `--log-format`.
    pub log_format: LogFormat,
    /// The HTTP endpoint for metrics and health checks. Default: off.
    pub metrics: MetricsConfig,
    /// Plugin libraries to load. [`Config::load`] resolves relative paths
    /// against the config file's directory. Default: none.
    pub plugins: Vec<PathBuf>,
    /// Most threads running plugin calls (`create`, `start`, `command`,
    /// `stop`) at once, none of them the platform link's. The threads
    /// start with the connector and sleep while idle. Default:
    /// [`DEFAULT_PLUGIN_THREADS`].
    pub plugin_threads: usize,
    /// The devices this connector represents. Default: none.
    pub devices: Vec<DeviceConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            platform: PlatformConfig::default(),
            log_level: LogLevel::default(),
            log_format: LogFormat::default(),
            metrics: MetricsConfig::default(),
            plugins: Vec::new(),
            plugin_threads: DEFAULT_PLUGIN_THREADS,
            devices: Vec::new(),
        }
    }
}

/// The `metrics:` section: Prometheus metrics, a health check and the
/// device list over plain HTTP, for the gateway's operator.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve `/metrics`, `/health` and `/devices` on, e.g.
    /// `127.0.0.1:9184`. The endpoint has no authentication, so keep it on
    /// loopback or a trusted network. Default: none, no server.
    /// Flag: `--metrics-listen`.
    pub listen: Option<SocketAddr>,
}

/// The `platform:` section: where the platform is and how to talk to it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlatformConfig {
    /// URL answering with the socket address; `http://` or `https://` with a
    /// host. Default: [`DEFAULT_LOOKUP_URL`]. Env: `CONNECTOR_LOOKUP_URL`.
    pub lookup_url: String,
    /// HTTP path for device (un)registration, below the socket's host and
    /// port. Default: `discovery`. Env: `CONNECTOR_DEVICE_REGISTRATION_PATH`.
    pub registration_path: String,
    /// Use `https://` and `wss://`; also switches an `http://` lookup URL to
    /// `https://`. Default: off. Env: `CONNECTOR_HTTPS`.
    #[serde(deserialize_with = "deserialize_switch")]
    pub https: bool,
    /// Platform user. Default: empty. Env: `CONNECTOR_USER`.
    pub user: String,
    /// Platform password; never printed. Default: empty. Env: `CONNECTOR_PASSWORD`.
    pub password: Secret,
    /// Extra CA certificate (PEM) to trust for TLS. Default: none.
    pub ca_file: Option<PathBuf>,
    /// How often to ping the platform, in milliseconds; above 0. Default: 30000.
    pub ping_interval_ms: u64,
    /// How long without a pong counts as a lost connection, in milliseconds;
    /// longer than `ping_interval_ms`, since a pong answers a ping. Default:
    /// `None`, two ping intervals (see [`PlatformConfig::pong_timeout`]).
    pub pong_timeout_ms: Option<u64>,
    /// Largest incoming frame, in bytes; bigger ones are dropped as bad
    /// frames. Above 0. Default: 1048576 (1 MiB).
    pub max_frame_bytes: usize,
    /// Delays between reconnect attempts.
    pub backoff: BackoffConfig,
    /// What is kept while the connection is down.
    pub buffer: BufferConfig,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            lookup_url: DEFAULT_LOOKUP_URL.to_owned(),
            registration_path: DEFAULT_REGISTRATION_PATH.to_owned(),
            https: false,
            user: String::new(),
            password: Secret::default(),
            ca_file: None,
            ping_interval_ms: DEFAULT_PING_INTERVAL_MS,
            pong_timeout_ms: None,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            backoff: BackoffConfig::default(),
            buffer: BufferConfig::default(),
        }
    }
}

impl PlatformConfig {
    /// [`PlatformConfig::ping_interval_ms`] as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    /// [`PlatformConfig::pong_timeout_ms`] as a duration, or two ping
    /// intervals when it is not set.
    pub fn pong_timeout(&self) -> Duration {
        let derived = self.ping_interval_ms.saturating_mul(DEFAULT_PONG_TIMEOUT_INTERVALS);
        Duration::from_millis(self.pong_timeout_ms.unwrap_or(derived))
    }
}

/// `platform.backoff`: exponential back-off with full jitter (PROTOCOL.md section 7).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffConfig {
    /// First delay, in milliseconds; above 0. Default: 1000.
    pub initial_ms: u64,
    /// Longest delay, in milliseconds; at least `initial_ms`. Default: 60000.
    pub max_ms: u64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial_ms: DEFAULT_BACKOFF_INITIAL_MS,
            max_ms: DEFAULT_BACKOFF_MAX_MS,
        }
    }
}

impl BackoffConfig {
    /// [`BackoffConfig::initial_ms`] as a duration.
    pub fn initial(&self) -> Duration {
        Duration::from_millis(self.initial_ms)
    }

    /// [`BackoffConfig::max_ms`] as a duration.
    pub fn max(&self) -> Duration {
        Duration::from_millis(self.max_ms)
    }
}

/// `platform.buffer`: the bounded outbox of registrations and messages made
/// while disconnected.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BufferConfig {
    /// Most frames kept; above 0. Default: 100000.
    pub max_frames: usize,
    /// Most bytes kept; above 0. Default: 67108864 (64 MiB).
    pub max_bytes: usize,
    /// What to drop when full. Default: `drop_oldest`.
    pub overflow: Overflow,
    /// File for a persistent outbox: buffered frames survive a restart of
    /// the connector (see `connector_runtime::outbox::journal`). [`Config::load`]
    /// resolves a relative path against the config file's directory.
    /// Default: none, the outbox lives in memory.
    pub path: Option<PathBuf>,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            max_frames: DEFAULT_BUFFER_MAX_FRAMES,
            max_bytes: DEFAULT_BUFFER_MAX_BYTES,
            overflow: Overflow::default(),
            path: None,
        }
    }
}

/// Which frame a full buffer gives up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Drop the oldest kept frame to make room: fresh data wins.
    #[default]
    DropOldest,
    /// Refuse the new frame: what was queued first is sent first.
    DropNewest,
}

impl Overflow {
    /// The name used in `connector.yaml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::DropOldest => "drop_oldest",
            Overflow::DropNewest => "drop_newest",
        }
    }
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of `devices:`: a device and the plugin that drives it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceConfig {
    /// Local id, unique in the file and not empty; commands are routed by it.
    pub id: String,
    /// Device type registered on the platform (YAML key `type`). Default: empty.
    #[serde(rename = "type")]
    pub device_type: String,
    /// Human-readable name. Default: the id.
    pub name: String,
    /// Name of the plugin driving this device; not empty.
    pub plugin: String,
    /// Plugin-specific settings: any mapping, handed over as a JSON object.
    /// Default: `{}`.
    #[serde(deserialize_with = "yaml::settings")]
    pub settings: serde_json::Value,
    /// How long the device has to answer a command; past it the platform
    /// gets an error reply naming the device and the deadline. Default:
    /// [`DEFAULT_COMMAND_TIMEOUT_MS`].
    pub command_timeout_ms: u64,
    /// 1-based line of this entry in the file it was read from, for error
    /// messages about it; `None` when not read from a file.
    #[serde(skip)]
    pub line: Option<usize>,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            id: String::new(),
            device_type: String::new(),
            name: String::new(),
            plugin: String::new(),
            settings: serde_json::Value::Object(serde_json::Map::new()),
            command_timeout_ms: DEFAULT_COMMAND_TIMEOUT_MS,
            line: None,
        }
    }
}

impl DeviceConfig {
    /// The device as registered on the platform.
    pub fn device(&self) -> Device {
        let name = if self.name.is_empty() { &self.id } else { &self.name };
        Device::new(self.id.clone(), self.device_type.clone(), name.clone())
    }
}

/// Why a configuration could not be used. No variant holds the password.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not YAML; nothing after the error can be read.
    #[error("{0}")]
    Syntax(Problem),
    /// The file does not fit the config model (unknown key, wrong type,
    /// negative number, ...) or some values are not acceptable; all of them
    /// are listed.
    #[error("{0}")]
    Invalid(Problems),
}

impl ConfigError {
    /// The problems found; empty for [`ConfigError::Read`].
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Syntax(problem) => std::slice::from_ref(problem),
            ConfigError::Invalid(problems) => &problems.0,
        }
    }
}

/// A value found wrong by [`Config::issues`], before it is given a place.
pub(crate) struct Issue {
    pub(crate) path: Vec<Seg>,
    pub(crate) message: String,
}

impl Issue {
    fn new(path: Vec<Seg>, message: impl Into<String>) -> Issue {
        Issue {
            path,
            message: message.into(),
        }
    }
}

impl Config {
    /// Reads, checks and returns the config file at `path`, then resolves
    /// relative paths in it against the file's directory. Every problem of
    /// the file is in the error; [`ConfigFile`] also gives what could be read.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        ConfigFile::read(path)?.into_result()
    }

    /// Reads and checks config text; `source_name` (usually the file name)
    /// starts each error line. Relative paths stay as written.
    pub fn from_yaml_str(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        ConfigFile::parse(text, source_name).into_result()
    }

    /// The seed's way, with no file: defaults overridden by the environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let mut config = Config::default();
        config.apply_env()?;
        config.validate()?;
        Ok(config)
    }

    /// Overrides fields with the seed's environment variables
    /// (`CONNECTOR_LOOKUP_URL`, `CONNECTOR_DEVICE_REGISTRATION_PATH`,
    /// `CONNECTOR_HTTPS`, `CONNECTOR_USER`, `CONNECTOR_PASSWORD`,
    /// `LOGLEVEL`). See [`Config::apply_env_from`].
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        self.apply_vars(|name| match std::env::var(name) {
            Ok(value) => Ok(Some(value)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err("is not valid UTF-8".to_owned()),
        })
    }

    /// [`Config::apply_env`] reading variables through `get`, for tests.
    ///
    /// An unset or empty variable leaves the field alone (so an empty
    /// `CONNECTOR_PASSWORD=` from a template does not wipe the file's).
    /// Values are checked as they are read; all bad ones are reported
    /// together, each naming its variable, and nothing is changed then.
    pub fn apply_env_from(&mut self, mut get: impl FnMut(&str) -> Option<String>) -> Result<(), ConfigError> {
        self.apply_vars(|name| Ok(get(name)))
    }

    fn apply_vars(&mut self, mut get: impl FnMut(&str) -> Result<Option<String>, String>) -> Result<(), ConfigError> {
        // What the variables can change, not the device list: a gateway's
        // may be long.
        let mut next = EnvPart {
            platform: self.platform.clone(),
            log_level: self.log_level,
        };
        let mut problems = Vec::new();
        let mut read = |name: &str, problems: &mut Vec<Problem>| match get(name) {
            Ok(Some(value)) if !value.is_empty() => Some(value),
            Ok(_) => None,
            Err(message) => {
                problems.push(env_problem(name, message));
                None
            }
        };

        if let Some(url) = read(ENV_LOOKUP_URL, &mut problems) {
            match check_http_url(&url) {
                Ok(()) => next.platform.lookup_url = url,
                Err(message) => problems.push(env_problem(ENV_LOOKUP_URL, message)),
            }
        }
        if let Some(path) = read(ENV_REGISTRATION_PATH, &mut problems) {
            match check_registration_path(&path) {
                Ok(()) => next.platform.registration_path = path,
                Err(message) => problems.push(env_problem(ENV_REGISTRATION_PATH, message)),
            }
        }
        if let Some(value) = read(ENV_HTTPS, &mut problems) {
            match parse_switch(&value) {
                Some(https) => next.platform.https = https,
                None => problems.push(env_problem(ENV_HTTPS, switch_error(&value))),
            }
        }
        if let Some(user) = read(ENV_USER, &mut problems) {
            next.platform.user = user;
        }
        if let Some(password) = read(ENV_PASSWORD, &mut problems) {
            next.platform.password = Secret::new(password);
        }
        if let Some(level) = read(ENV_LOG_LEVEL, &mut problems) {
            match level.parse() {
                Ok(level) => next.log_level = level,
                Err(err) => problems.push(env_problem(ENV_LOG_LEVEL, err.to_string())),
            }
        }

        if problems.is_empty() {
            self.platform = next.platform;
            self.log_level = next.log_level;
            Ok(())
        } else {
            // A password pasted into the wrong variable must not be echoed.
            let secrets = [next.platform.password.expose().to_owned()];
            for problem in &mut problems {
                problem.message = yaml::redact(&problem.message, &secrets);
            }
            Err(ConfigError::Invalid(Problems(problems)))
        }
    }

    /// Checks every value and reports all problems at once, for a config
    /// changed after loading (e.g. by command-line flags). Problems carry
    /// the device entry's line when known, but no file name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems: Vec<Problem> = self
            .issues(None)
            .into_iter()
            .map(|issue| {
                let line = match issue.path.as_slice() {
                    [Seg::Key(devices), Seg::Index(i), ..] if devices == "devices" => {
                        self.devices.get(*i).and_then(|d| d.line)
                    }
                    _ => None,
                };
                Problem {
                    source: None,
                    line,
                    column: None,
                    key: path_to_string(&issue.path),
                    message: self.redact(&issue.message),
                }
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(Problems(problems)))
        }
    }

    /// Makes relative `plugins`, `platform.ca_file` and `platform.buffer.path`
    /// relative to `base_dir` (the config file's directory).
    pub fn resolve_paths(&mut self, base_dir: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() && !path.as_os_str().is_empty() {
                *path = base_dir.join(&*path);
            }
        };
        self.plugins.iter_mut().for_each(resolve);
        self.platform.ca_file.iter_mut().for_each(resolve);
        self.platform.buffer.path.iter_mut().for_each(resolve);
    }

    /// User and password for the socket handshake and registration bodies.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(self.platform.user.clone(), self.platform.password.clone())
    }

    /// The lookup URL to use: with `https` on, an `http://` URL becomes `https://`.
    pub fn lookup_url(&self) -> String {
        let url = &self.platform.lookup_url;
        match strip_prefix_ignore_case(url, "http://") {
            Some(rest) if self.platform.https => format!("https://{rest}"),
            _ => url.clone(),
        }
    }

    /// The registration path without leading or trailing `/`, ready to be
    /// joined as `BASE/<path>` (PROTOCOL.md section 6).
    pub fn registration_path(&self) -> &str {
        self.platform.registration_path.trim_matches('/')
    }

    pub(crate) fn redact(&self, text: &str) -> String {
        yaml::redact(text, &[self.platform.password.expose().to_owned()])
    }

    /// Every value that is not acceptable, in file order. `entries` gives
    /// each device's index in the file's list when some were left out.
    pub(crate) fn issues(&self, entries: Option<&[usize]>) -> Vec<Issue> {
        let entry = |index: usize| entries.and_then(|e| e.get(index).copied()).unwrap_or(index);
        let mut issues = Vec::new();
        let platform = |key: &str| vec![Seg::key("platform"), Seg::key(key)];
        let p = &self.platform;

        if let Err(message) = check_http_url(&p.lookup_url) {
            issues.push(Issue::new(platform("lookup_url"), message));
        }
        if let Err(message) = check_registration_path(&p.registration_path) {
            issues.push(Issue::new(platform("registration_path"), message));
        }
        if p.ca_file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            issues.push(Issue::new(
                platform("ca_file"),
                "must not be empty; leave it out or write null",
            ));
        }
        for (key, value) in [
            ("ping_interval_ms", p.ping_interval_ms),
            ("max_frame_bytes", p.max_frame_bytes as u64),
        ] {
            if value == 0 {
                issues.push(Issue::new(platform(key), "must be greater than 0"));
            }
        }
        if let Some(pong_timeout) = p.pong_timeout_ms {
            if pong_timeout <= p.ping_interval_ms {
                issues.push(Issue::new(
                    platform("pong_timeout_ms"),
                    format!(
                        "must be longer than ping_interval_ms ({}): a pong can only come after a ping; \
                         leave it out for two intervals",
                        p.ping_interval_ms
                    ),
                ));
            }
        }

        let backoff = |key: &str| vec![Seg::key("platform"), Seg::key("backoff"), Seg::key(key)];
        if p.backoff.initial_ms == 0 {
            issues.push(Issue::new(backoff("initial_ms"), "must be greater than 0"));
        }
        if p.backoff.max_ms < p.backoff.initial_ms {
            issues.push(Issue::new(
                backoff("max_ms"),
                format!("must be at least initial_ms ({})", p.backoff.initial_ms),
            ));
        }

        let buffer = |key: &str| vec![Seg::key("platform"), Seg::key("buffer"), Seg::key(key)];
        for (key, value) in [("max_frames", p.buffer.max_frames), ("max_bytes", p.buffer.max_bytes)] {
            if value == 0 {
                issues.push(Issue::new(buffer(key), "must be greater than 0"));
            }
        }
        if p.buffer.path.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            issues.push(Issue::new(
                buffer("path"),
                "must not be empty; leave it out or write null",
            ));
        }

        if self.plugin_threads == 0 {
            issues.push(Issue::new(vec![Seg::key("plugin_threads")], "must be greater than 0"));
        }

        for (index, plugin) in self.plugins.iter().enumerate() {
            if plugin.as_os_str().is_empty() {
                issues.push(Issue::new(
                    vec![Seg::key("plugins"), Seg::Index(index)],
                    "must not be empty",
                ));
            }
        }

        // First entry of each id, to name it when the id comes again.
        let mut first_seen: HashMap<&str, usize> = HashMap::new();
        for (index, device) in self.devices.iter().enumerate() {
            let field = |key: &str| vec![Seg::key("devices"), Seg::Index(entry(index)), Seg::key(key)];
            if device.id.is_empty() {
                issues.push(Issue::new(field("id"), "missing or empty; every device needs an id"));
            } else if let Some(bad) = device.id.chars().find(|c| c.is_control()) {
                issues.push(Issue::new(
                    field("id"),
                    format!(
                        "must not hold a control character (found U+{:04X}); commands are routed by the id",
                        bad as u32
                    ),
                ));
            } else if let Some(&first) = first_seen.get(device.id.as_str()) {
                // The problem's own position names this entry's line.
                let first_at = match self.devices[first].line {
                    Some(line) => format!("devices[{}] at line {line}", entry(first)),
                    None => format!("devices[{}]", entry(first)),
                };
                issues.push(Issue::new(
                    field("id"),
                    format!("duplicate device id `{}`, first used by {first_at}", device.id),
                ));
            } else {
                first_seen.insert(&device.id, index);
            }
            if device.plugin.is_empty() {
                issues.push(Issue::new(
                    field("plugin"),
                    "missing or empty; name the plugin that drives this device",
                ));
            }
            if device.command_timeout_ms == 0 {
                issues.push(Issue::new(field("command_timeout_ms"), "must be greater than 0"));
            }
        }
        issues
    }
}

/// The fields the environment variables override.
struct EnvPart {
    platform: PlatformConfig,
    log_level: LogLevel,
}

fn env_problem(name: &str, message: impl Into<String>) -> Problem {
    Problem {
        source: Some(ENVIRONMENT.to_owned()),
        line: None,
        column: None,
        key: name.to_owned(),
        message: message.into(),
    }
}

/// Reads a yes/no word the way `CONNECTOR_HTTPS` is read.
fn parse_switch(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn switch_error(value: &str) -> String {
    format!("`{value}` is not a yes/no value; use 1, true, yes, on or 0, false, no, off")
}

/// `https:` in YAML takes `true`/`false` or the same words as `CONNECTOR_HTTPS`,
/// so a value copied from an environment file works in both places.
fn deserialize_switch<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    struct SwitchVisitor;

    impl Visitor<'_> for SwitchVisitor {
        type Value = bool;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("true or false")
        }

        fn visit_bool<E: de::Error>(self, value: bool) -> Result<bool, E> {
            Ok(value)
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<bool, E> {
            self.visit_str(&value.to_string())
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<bool, E> {
            self.visit_str(&value.to_string())
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<bool, E> {
            parse_switch(value).ok_or_else(|| E::custom(switch_error(value)))
        }
    }

    deserializer.deserialize_any(SwitchVisitor)
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

/// Whether `url` can be the lookup URL: `http://` or `https://` with a host
/// and an optional numeric port. For values from elsewhere than the file or
/// the environment, such as a command-line flag, so that the error can name
/// where the value came from.
pub fn check_lookup_url(url: &str) -> Result<(), String> {
    check_http_url(url)
}

/// Accepts `http://` or `https://` URLs with a host and an optional numeric
/// port. A small check rather than a full parser: enough to catch typos
/// before the first connection attempt.
fn check_http_url(url: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("`{url}` is not a usable URL: {why}"));
    if url.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if url.chars().any(char::is_whitespace) {
        return bad("it contains white space");
    }
    let Some(rest) = strip_prefix_ignore_case(url, "http://").or_else(|| strip_prefix_ignore_case(url, "https://"))
    else {
        return bad("it must start with http:// or https://");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // Drop `user:password@`.
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        match bracketed.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':')),
            None => return bad("an IPv6 host lacks its closing ]"),
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return bad("it has no host");
    }
    let host_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':' | '%');
    if !host.chars().all(host_char) {
        return bad("the host has characters a host name cannot have");
    }
    if let Some(port) = port.filter(|p| !p.is_empty()) {
        if port.parse::<u16>().is_err() {
            return bad("the port is not a number from 0 to 65535");
        }
    }
    Ok(())
}

fn check_registration_path(path: &str) -> Result<(), String> {
    if path.trim_matches('/').is_empty() {
        return Err("must not be empty".to_owned());
    }
    if path.chars().any(|c| c.is_whitespace() || c == '?' || c == '#') {
        return Err(format!("`{path}` must be a plain path, without white space, ? or #"));
    }
    Ok(())
}

/// The spec of a device declared in `connector.yaml`, as its plugin is given it.
impl From<&DeviceConfig> for crate::plugin::DeviceSpec {
    fn from(config: &DeviceConfig) -> Self {
        crate::plugin::DeviceSpec {
            device: config.device(),
            plugin: config.plugin.clone(),
            settings: config.settings.clone(),
            origin: config.line.map(|line| format!("declared at line {line}")),
            command_timeout_ms: config.command_timeout_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_check_accepts_plain_http_urls() {
        for url in [
            DEFAULT_LOOKUP_URL,
            "http://localhost",
            "HTTPS://example.org:443/a?b#c",
            "http://user:pw@host:80/",
            "http://[::1]:8080/lookup",
            "http://127.0.0.1:/x",
        ] {
            assert_eq!(check_http_url(url), Ok(()), "{url}");
        }
    }

    #[test]
    fn url_check_rejects_what_cannot_be_connected_to() {
        for (url, why) in [
            ("", "empty"),
            ("localhost:8093/lookup", "must start with http://"),
            ("ws://host/", "must start with http://"),
            ("http://", "no host"),
            ("http:///lookup", "no host"),
            ("http://host:80a/", "port"),
            ("http://host:99999/", "port"),
            ("http://ho st/", "white space"),
            ("http://ho,st/", "characters"),
            ("http://[::1/", "closing ]"),
        ] {
            let err = check_http_url(url).unwrap_err();
            assert!(err.contains(why), "{url}: {err}");
        }
    }

    #[test]
    fn switch_words_are_read_in_any_case() {
        for word in ["1", "true", "TRUE", "yes", "Yes", "on", "ON"] {
            assert_eq!(parse_switch(word), Some(true), "{word}");
        }
        for word in ["0", "false", "False", "no", "NO", "off", "Off"] {
            assert_eq!(parse_switch(word), Some(false), "{word}");
        }
        for word in ["", "2", "y", "maybe", "enabled"] {
            assert_eq!(parse_switch(word), None, "{word}");
        }
    }
}
