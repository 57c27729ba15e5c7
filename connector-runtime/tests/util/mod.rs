//! One helper for the end-to-end tests: a real platform simulator on
//! loopback and a real connector pointed at it.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use connector_core::config::Config;
use connector_runtime::{Connector, ConnectorBuilder, Lifecycle};
use platform_sim::{Command, EventFilter, EventKind, SimConfig, SimHandle, Simulator};
use tokio::sync::broadcast;

/// Logs to the test's output (shown for failing tests); `RUST_LOG` filters.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Long enough for a loaded 2-core CI machine; tests poll, so a pass is fast.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub async fn simulator() -> SimHandle {
    simulator_with(SimConfig::default()).await
}

pub async fn simulator_with(config: SimConfig) -> SimHandle {
    init_logging();
    Simulator::start(config)
        .await
        .expect("the simulator starts on loopback")
}

/// A config for `sim` with quick back-off and the given `devices:` YAML.
pub fn config_for(sim: &SimHandle, devices_yaml: &str) -> Config {
    config_with(sim, "", devices_yaml)
}

/// Like [`config_for`], with extra `platform:` keys (each line indented by
/// two spaces), e.g. `"  user: alice\n"`.
pub fn config_with(sim: &SimHandle, platform_yaml: &str, devices_yaml: &str) -> Config {
    let yaml = format!(
        "platform:\n  lookup_url: {}\n  backoff: {{ initial_ms: 20, max_ms: 200 }}\n  ping_interval_ms: 1000\n  pong_timeout_ms: 3000\n{platform_yaml}devices:\n{devices_yaml}",
        sim.lookup_url()
    );
    Config::from_yaml_str(&yaml, "test.yaml").expect("the test config is valid")
}

/// The `connector-runtime` binary, without the environment that would
/// override a test's config or log level (`CONNECTOR_*`, `LOGLEVEL`, `RUST_LOG`).
pub fn runtime_binary() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_connector-runtime"));
    for var in [
        "CONNECTOR_LOOKUP_URL",
        "CONNECTOR_HTTPS",
        "CONNECTOR_USER",
        "CONNECTOR_PASSWORD",
        "CONNECTOR_DEVICE_REGISTRATION_PATH",
        "LOGLEVEL",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command
}

/// `cargo build --message-format=json-render-diagnostics` in the workspace,
/// for tests that need an artifact `cargo test` does not build.
pub fn cargo_build() -> std::process::Command {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--message-format=json-render-diagnostics"]);
    // A test inherits the variables cargo sets for its crate, and ring's build
    // script reruns when CARGO_PKG_NAME or CARGO_MANIFEST_DIR change: with
    // them, this build and every ordinary one would rebuild ring and all
    // that sits on it, by turns.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let per_crate = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_"];
        if per_crate.iter().any(|prefix| name.starts_with(prefix))
            || name == "CARGO_PRIMARY_PACKAGE"
            || name == "CARGO_TARGET_TMPDIR"
        {
            command.env_remove(&*name);
        }
    }
    command
}

/// The `platform-sim` binary, built on first use: for these tests cargo
/// builds the simulator's library only, and cargo reports the file it wrote.
pub fn platform_sim_binary() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let output = cargo_build()
            .args(["-p", "platform-sim", "--bin", "platform-sim"])
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("cargo runs");
        assert!(output.status.success(), "building the platform-sim binary failed");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|message| message["reason"] == "compiler-artifact" && message["target"]["name"] == "platform-sim")
            .find_map(|message| message["executable"].as_str().map(PathBuf::from))
            .expect("cargo names the platform-sim executable")
    })
}

/// `connector-runtime --config <path> --check` with `flags` before it: the
/// exit code and what it wrote to stderr.
pub fn check_file(path: &std::path::Path, flags: &[&str]) -> (Option<i32>, String) {
    let output = runtime_binary()
        .arg("--config")
        .arg(path)
        .args(flags)
        .arg("--check")
        .output()
        .expect("the runtime binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub const ECHO_DEVICES: &str = "  - { id: lamp-1, type: lamp, name: Lamp, plugin: echo }\n  - { id: plug-2, type: plug, name: Plug, plugin: echo }\n";

/// Polls `check` until it returns `Some`, or panics naming `what` at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for the first lifecycle event that `matches`.
pub async fn wait_event(
    events: &mut broadcast::Receiver<Lifecycle>,
    what: &str,
    matches: impl Fn(&Lifecycle) -> bool,
) -> Lifecycle {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(event) if matches(&event) => return event,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => panic!("events closed while waiting for {what}"),
            }
        }
    };
    actix_rt::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Starts a connector and waits until the simulator has every device registered.
pub async fn connected(sim: &SimHandle, config: Config) -> Connector {
    connected_with(sim, |builder| builder, config).await
}

/// Like [`connected`], with the builder adjusted first (e.g. test plugins added).
pub async fn connected_with(
    sim: &SimHandle,
    adjust: impl FnOnce(ConnectorBuilder) -> ConnectorBuilder,
    config: Config,
) -> Connector {
    let mut expected: Vec<String> = config.devices.iter().map(|d| d.id.clone()).collect();
    expected.sort();
    let connector = adjust(Connector::builder(config))
        .start()
        .await
        .expect("the connector starts");
    eventually("all devices registered", || async {
        (device_ids(sim).await == expected).then_some(())
    })
    .await;
    connector
}

/// The ids of the devices the simulator has registered, sorted.
pub async fn device_ids(sim: &SimHandle) -> Vec<String> {
    let mut ids: Vec<String> = sim.devices().await.into_iter().map(|d| d.id).collect();
    ids.sort();
    ids
}

/// The frames of `kind` that `device` sent, in arrival order.
pub async fn frames(sim: &SimHandle, device: &str, kind: EventKind) -> Vec<platform_sim::Event> {
    sim.events_matching(EventFilter {
        device: Some(device.to_owned()),
        kind: Some(kind),
        since: None,
        limit: Some(usize::MAX),
    })
    .await
}

/// The `response:` frames `device` sent, in arrival order.
pub async fn responses(sim: &SimHandle, device: &str) -> Vec<platform_sim::Event> {
    frames(sim, device, EventKind::Response).await
}

/// The bodies of the `change:` events `device` sent, in arrival order.
pub async fn event_bodies(sim: &SimHandle, device: &str) -> Vec<String> {
    frames(sim, device, EventKind::Change)
        .await
        .into_iter()
        .map(|e| e.message.body)
        .collect()
}

/// `"0"`, `"1"`, ... as the bodies of numbered events.
pub fn numbered(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| i.to_string()).collect()
}

/// Round-trips a command to an `echo` device. Frames leave the connector in
/// order on one socket, so once its reply is in, everything the connector
/// accepted before the command has arrived too: a barrier, not a sleep.
pub async fn barrier(sim: &SimHandle, echo_device: &str) {
    let command = Command::new(echo_device, "barrier").body("barrier");
    let reply = sim
        .command_and_wait(&command, DEADLINE)
        .await
        .expect("the echo device answers the barrier command");
    assert_eq!(reply.message.body, "barrier");
}
