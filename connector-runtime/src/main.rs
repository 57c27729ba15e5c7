//! The `connector-runtime` binary: reads `connector.yaml`, connects the
//! declared devices to the platform and keeps them connected until Ctrl-C or
//! SIGTERM; SIGHUP reloads the config file. `--embedded-platform` brings its own platform simulator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::LazyLock;
use std::time::Duration;

use clap::Parser;
use connector_core::abi::ABI_VERSION;
use connector_core::config::{check_lookup_url, Config, ConfigFile, Problem};
use connector_core::logging::{self, LogFormat, LogLevel};
use connector_core::plugin::{DeviceSpec, PluginRegistry};
use connector_core::tls::TlsSettings;
use connector_runtime::connector::{builtin_plugins, SettingsCheck, CHECK_TIMEOUT, DEFAULT_FLUSH_TIMEOUT};
use connector_runtime::loader;
use connector_runtime::metrics::MetricsServer;
use connector_runtime::Connector;
use tracing::{error, info, warn};

// Without the simulator, `demo` is a stand-in that only refuses to start.
#[cfg_attr(not(feature = "embedded-platform"), path = "no_demo.rs")]
mod demo;

/// Every event is allocated on a plugin's thread and freed on the writer's;
/// glibc's malloc serialises that on an arena lock, mimalloc does not (see
/// BENCHMARKS.md: event throughput went from 1.1-2.0 M/s to a steady 1.7 M/s).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What `--version` prints after the program name. The plugin ABI is in it
/// because a plugin library built for another ABI will not load; an operator
/// comparing a plugin with a gateway needs both numbers.
static VERSION: LazyLock<String> =
    LazyLock::new(|| format!("{} (plugin ABI {ABI_VERSION})", env!("CARGO_PKG_VERSION")));

/// Connects your devices to the SEPL platform and keeps them connected.
///
/// Settings come from the config file, then the environment variables of the
/// original client (CONNECTOR_LOOKUP_URL, CONNECTOR_DEVICE_REGISTRATION_PATH,
/// CONNECTOR_HTTPS, CONNECTOR_USER, CONNECTOR_PASSWORD, LOGLEVEL), then the
/// flags below, each overriding the one before.
#[derive(Debug, Clone, Parser)]
#[command(name = "connector-runtime", version = VERSION.as_str())]
struct Args {
    /// The connector.yaml to read; without it, defaults and environment only.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Check the configuration (that every plugin library loads, the CA
    /// file is usable, and every device's plugin exists and accepts its
    /// settings), print the result and exit: 0 when it is valid, 2 when not.
    #[arg(long)]
    check: bool,

    /// Start a platform simulator in this process on loopback, connect to it
    /// instead of the configured platform, and drive every device with demo
    /// commands: the whole loop on a machine with no platform at all. Needs
    /// the embedded-platform feature (on by default).
    #[arg(long)]
    embedded_platform: bool,

    /// Seconds between demo commands in --embedded-platform mode.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    demo_interval: f64,

    /// The endpoint of the demo commands in --embedded-platform mode. Plugins
    /// do not declare their endpoints, so pick one yours answers; `get` suits
    /// echo, generator and examples/my-plugin, sysmetrics needs `read`.
    #[arg(long, value_name = "ENDPOINT", default_value = "get")]
    demo_endpoint: String,

    /// Log level: trace, debug, info, warning (warn), error (critical).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<LogLevel>,

    /// Log format: text (lines for people) or json (one JSON object per
    /// line, for log collectors). Overrides log_format in the config.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<LogFormat>,

    /// Serve /metrics (Prometheus), /health and /devices over HTTP on this
    /// address, e.g. 127.0.0.1:9184. Overrides metrics.listen in the config.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,

    /// Overrides the lookup URL (CONNECTOR_LOOKUP_URL, platform.lookup_url).
    #[arg(long, value_name = "URL")]
    lookup_url: Option<String>,
}

/// Exit status for a configuration that does not check out.
const EXIT_CONFIG: u8 = 2;

/// Why `--embedded-platform` is refused by a production build.
const NO_EMBEDDED_PLATFORM: &str = "this connector-runtime was built without the embedded-platform feature";

/// Added to "no plugin named ..." by a build without the built-in plugins,
/// so that a demo config's `plugin: echo` explains itself.
const NO_BUILTIN_PLUGINS: &str = if cfg!(feature = "builtin-plugins") {
    ""
} else {
    "; this connector-runtime was built without the builtin-plugins feature (echo, generator, sysmetrics, http, mqtt, exec)"
};

fn main() -> ExitCode {
    let args = Args::parse();
    if args.embedded_platform && !cfg!(feature = "embedded-platform") {
        eprintln!("error: --embedded-platform: {NO_EMBEDDED_PLATFORM}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let config = match load_config(&args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check {
        let source = args
            .config
            .as_ref()
            .map_or("configuration".into(), |p| p.display().to_string());
        let ids: Vec<&str> = config.devices.iter().map(|d| d.id.as_str()).collect();
        println!("{source}: OK ({} devices: {})", ids.len(), ids.join(", "));
        return ExitCode::SUCCESS;
    }
    if let Err(e) = logging::init_with(config.log_level, config.log_format) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let system = actix_rt::System::new();
    match system.block_on(run(config, &args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// File, then environment, then flags; then the whole result is checked.
/// Every problem is reported at once, each where it stands (`file:line:col`,
/// a variable or a flag), so a user fixes the file in one pass.
fn load_config(args: &Args) -> Result<Config, String> {
    let mut file = match &args.config {
        Some(path) => ConfigFile::read(path).map_err(|e| e.to_string())?,
        None => ConfigFile::from(Config::default()),
    };
    // Problems in the file, put in file order at the end, then the others
    // (environment, flags, libraries) in the order they were found.
    let mut in_file: Vec<Problem> = file.problems().to_vec();
    let mut problems: Vec<String> = Vec::new();
    let config = file.config_mut();
    if let Err(e) = config.apply_env() {
        problems.push(e.to_string());
    }
    if let Some(level) = args.log_level {
        config.log_level = level;
    }
    if let Some(format) = args.log_format {
        config.log_format = format;
    }
    if let Some(addr) = args.metrics_listen {
        config.metrics.listen = Some(addr);
    }
    if let Some(url) = &args.lookup_url {
        match check_lookup_url(url) {
            Ok(()) => config.platform.lookup_url = url.clone(),
            Err(message) => problems.push(format!("--lookup-url: {message}")),
        }
    }
    // The file's own values were checked as it was read; this catches what
    // the overrides changed, and would only repeat the file's problems.
    if problems.is_empty() && in_file.is_empty() {
        if let Err(e) = config.validate() {
            problems.push(e.to_string());
        }
    }
    let mut plugins = builtin_plugins();
    // Opens the libraries now, so --check refuses a missing or bad one; the
    // connector finds them already open later (once per process). A library
    // that does not load is reported; the others still register.
    match loader::register_libraries(&mut plugins, &config.plugins) {
        Ok(libraries) => {
            for warning in libraries.iter().flat_map(|library| library.warnings()) {
                eprintln!("warning: {warning}");
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
    check_files_and_plugins(&file, &plugins, &mut in_file, &mut problems);
    if !in_file.is_empty() || !problems.is_empty() {
        in_file.sort_by_key(|p| (p.line.is_none(), p.line, p.column));
        let lines: Vec<String> = in_file.iter().map(ToString::to_string).chain(problems).collect();
        return Err(lines.join("\n"));
    }
    Ok(file.into_config())
}

/// What the loader cannot see: the CA file, and whether every device's
/// plugin exists and takes its settings, each placed where it stands.
fn check_files_and_plugins(
    file: &ConfigFile,
    plugins: &PluginRegistry,
    in_file: &mut Vec<Problem>,
    problems: &mut Vec<String>,
) {
    let config = file.config();
    if let Err(e) = TlsSettings::load(config.platform.ca_file.as_deref()) {
        in_file.push(file.problem("platform.ca_file", e.to_string()));
    }
    let mut settings = Vec::new();
    for (index, device) in config.devices.iter().enumerate() {
        if !plugins.contains(&device.plugin) {
            let known: Vec<&str> = plugins.names().collect();
            let known = if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            };
            let message = format!(
                "device {:?}: no plugin named {:?} (known plugins: {known}{NO_BUILTIN_PLUGINS})",
                device.id, device.plugin,
            );
            in_file.push(file.device_problem(index, "plugin", message));
            continue;
        }
        let label = file.device_problem(index, "settings", format!("device {:?}", device.id));
        settings.push((index, label.to_string(), DeviceSpec::from(device)));
    }
    for problem in check_settings(plugins.clone(), settings) {
        match problem {
            // Placed at the key that did not fit (`settings.port`) when the
            // plugin's message names one, else at the settings as a whole.
            SettingsProblem::Device(index, message) => {
                let key = settings_key(&message).unwrap_or("settings").to_owned();
                in_file.push(file.device_problem(index, &key, message));
            }
            SettingsProblem::Other(message) => problems.push(message),
        }
    }
}

/// A device's settings refused by its plugin, or a check that did not finish.
enum SettingsProblem {
    Device(usize, String),
    Other(String),
}

impl From<String> for SettingsProblem {
    fn from(message: String) -> Self {
        SettingsProblem::Other(message)
    }
}

/// Each device's settings, checked by its plugin on a thread of its own: a
/// factory that hangs costs `--check` and a reload [`CHECK_TIMEOUT`], no more.
fn check_settings(plugins: PluginRegistry, devices: Vec<(usize, String, DeviceSpec)>) -> Vec<SettingsProblem> {
    SettingsCheck::new(
        devices,
        |(_, label, _): &(usize, String, DeviceSpec)| label.clone(),
        move |(index, _, spec)| {
            let refused = plugins.check_settings(spec).err()?;
            Some(SettingsProblem::Device(*index, refused.to_string()))
        },
    )
    .on_thread(CHECK_TIMEOUT)
}

/// The key a settings error names, as `DeviceSpec::settings` writes it:
/// `` `settings.port` ``.
fn settings_key(message: &str) -> Option<&str> {
    let start = message.find("`settings")? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

async fn run(mut config: Config, args: &Args) -> Result<(), String> {
    // Before anything starts, so an early SIGHUP or SIGTERM is not fatal.
    let signals = Signals::listen();
    let simulator = if args.embedded_platform {
        let sim = demo::start_simulator(&config).await?;
        config.platform.lookup_url = sim.lookup_url();
        config.platform.https = false;
        Some(sim)
    } else {
        None
    };
    let connector = Connector::start(config.clone())
        .await
        .map_err(|e| format!("the connector could not start: {e}"))?;
    let metrics = match config.metrics.listen {
        Some(addr) => match MetricsServer::start(addr, connector.status()) {
            Ok(server) => {
                info!(addr = %server.local_addr(), "serving /metrics, /health and /devices");
                Some(server)
            }
            Err(e) => {
                connector.shutdown(DEFAULT_FLUSH_TIMEOUT).await;
                return Err(e.to_string());
            }
        },
        None => None,
    };
    let driver = simulator.as_ref().map(|sim| {
        let interval = Duration::from_secs_f64(args.demo_interval.max(0.05));
        actix_rt::spawn(demo::drive(
            sim.clone(),
            config.devices.clone(),
            interval,
            args.demo_endpoint.clone(),
        ))
    });

    // The embedded platform keeps the address and credentials it started with.
    let embedded = simulator.as_ref().map(|_| config.platform.clone());
    signals
        .wait_for_shutdown(|| async {
            // The same checks as at start and `--check`; the embedded platform
            // stays where it is.
            // File reads, `dlopen` and plugin factories: off the link's thread.
            let reading = args.clone();
            let mut new = match actix_rt::task::spawn_blocking(move || load_config(&reading)).await {
                Ok(Ok(new)) => new,
                Ok(Err(message)) => return error!("reload refused, the running config stays: {message}"),
                Err(e) => return error!("reload refused, the running config stays: reading the config failed: {e}"),
            };
            if let Some(started) = &embedded {
                let platform = &mut new.platform;
                if platform.user != started.user
                    || platform.password != started.password
                    || platform.registration_path != started.registration_path
                {
                    warn!("the embedded platform keeps the user, password and registration path it started with");
                }
                platform.lookup_url = started.lookup_url.clone();
                platform.https = false;
                platform.user = started.user.clone();
                platform.password = started.password.clone();
                platform.registration_path = started.registration_path.clone();
            }
            if let Err(e) = connector.reload(new).await {
                error!("reload refused, the running config stays: {e}");
            }
        })
        .await;
    info!("shutting down: stopping devices and flushing the buffer");
    if let Some(driver) = driver {
        driver.abort();
    }
    connector.shutdown(DEFAULT_FLUSH_TIMEOUT).await;
    if let Some(metrics) = metrics {
        metrics.stop().await;
    }
    if let Some(sim) = simulator {
        if let Err(e) = sim.stop().await {
            warn!("the embedded platform did not stop cleanly: {e}");
        }
    }
    Ok(())
}

/// SIGTERM (systemd and container stops) and SIGHUP (reload), where there are such.
struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn listen() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match (signal(SignalKind::terminate()), signal(SignalKind::hangup())) {
                (Ok(term), Ok(hup)) => Signals {
                    unix: Some((term, hup)),
                },
                (Err(e), _) | (_, Err(e)) => {
                    warn!("cannot listen for SIGTERM and SIGHUP ({e}); only Ctrl-C stops the connector, no reload");
                    Signals { unix: None }
                }
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Ctrl-C or SIGTERM; each SIGHUP (`kill -HUP`, `systemctl reload`)
    /// runs `reload` meanwhile.
    async fn wait_for_shutdown<F, Fut>(self, mut reload: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        #[cfg(unix)]
        if let Some((mut term, mut hup)) = self.unix {
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return,
                    _ = term.recv() => return,
                    _ = hup.recv() => {
                        info!("SIGHUP: reloading the config");
                        reload().await;
                    }
                }
            }
        }
        let _ = &mut reload;
        let _ = tokio::signal::ctrl_c().await;
    }
}
