//! What a new user does by hand (platform-sim/README.md, "Try it by hand"):
//! `platform-sim serve` with its defaults, a `connector-runtime` with a
//! shipped config from `config/`, and the `platform-sim` client commands.

mod util;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::{platform_sim_binary, runtime_binary};

/// Generous for a loaded machine ten times slower than a laptop; every wait
/// polls, so a pass takes what it takes.
const DEADLINE: Duration = Duration::from_secs(60);

/// A child process killed when the test ends, even on a failed assertion.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `platform-sim serve` as the README starts it, on a port of the OS's
/// choosing instead of 8093 (tests run side by side); its base URL.
fn serve() -> (Running, String) {
    let mut child = Command::new(platform_sim_binary())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("platform-sim starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("a lookup line");
    let base = line
        .trim()
        .strip_prefix("lookup: ")
        .and_then(|url| url.strip_suffix("/lookup"))
        .unwrap_or_else(|| panic!("the first line is the lookup URL, got {line:?}"))
        .to_owned();
    (Running(child), base)
}

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config").join(name)
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("connector-by-hand-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `connector-runtime --config <shipped config>`, pointed at the simulator's
/// port (the files name 8093); its log goes to `log`.
fn connector(config: &str, base: &str, log: &Path) -> Running {
    let child = runtime_binary()
        .arg("--config")
        .arg(shipped(config))
        .args(["--lookup-url", &format!("{base}/lookup")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("connector-runtime starts");
    Running(child)
}

/// One `platform-sim` client command against `base`.
fn client(base: &str, args: &[&str]) -> Output {
    Command::new(platform_sim_binary())
        .args(args)
        .args(["--url", base])
        .output()
        .expect("platform-sim runs")
}

/// `platform-sim command` as the README writes it.
fn command(base: &str, device: &str, endpoint: &str, body: &str, wait_ms: &str) -> Output {
    let args = ["command", "--device", device, "--endpoint", endpoint, "--body", body];
    client(base, &[&args[..], &["--wait-ms", wait_ms]].concat())
}

fn stdout_json(output: &Output) -> Value {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

/// Polls `platform-sim devices` until every id in `ids` is registered;
/// panics with the connectors' logs in `dir` at the deadline.
fn wait_for_devices(base: &str, ids: &[&str], dir: &Path) {
    let start = Instant::now();
    loop {
        let devices = stdout_json(&client(base, &["devices"]));
        let registered: Vec<&str> = devices["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|device| device["id"].as_str())
            .collect();
        if ids.iter().all(|id| registered.contains(id)) {
            return;
        }
        if start.elapsed() > DEADLINE {
            let counters = stdout_json(&client(base, &["counters"]));
            let mut logs = String::new();
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                logs += &format!("--- {}\n{}\n", path.display(), std::fs::read_to_string(&path).unwrap());
            }
            panic!("registered {registered:?}, expected {ids:?}; counters {counters}\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The body protocol part of a `command --wait-ms` answer.
fn response_body(answer: &Value) -> &str {
    answer["response"]["protocol_parts"]
        .as_array()
        .and_then(|parts| parts.iter().find(|part| part["name"] == "body"))
        .and_then(|part| part["value"].as_str())
        .unwrap_or_else(|| panic!("no body in {answer}"))
}

/// The example configs send the demo credentials; a simulator served with
/// no credential flags must accept them, or a new user sees only refusals.
#[test]
fn a_simulator_served_with_its_defaults_accepts_the_shipped_example_configs() {
    let (_sim, base) = serve();
    let dir = scratch_dir("defaults");
    let mut configs = vec![
        ("echo.yaml", vec!["echo-1"]),
        ("generator.yaml", vec!["counter-1", "thermometer-1"]),
        ("demo.yaml", vec!["lamp-1", "plug-2", "counter-3"]),
    ];
    if cfg!(target_os = "linux") {
        configs.push(("sysmetrics.yaml", vec!["gateway"]));
    }
    let _connectors: Vec<Running> = configs
        .iter()
        .map(|(config, _)| connector(config, &base, &dir.join(format!("{config}.log"))))
        .collect();
    let ids: Vec<&str> = configs.iter().flat_map(|(_, ids)| ids.iter().copied()).collect();
    wait_for_devices(&base, &ids, &dir);

    let counters = stdout_json(&client(&base, &["counters"]));
    assert_eq!(counters["sessions_refused"], 0, "{counters}");
    assert_eq!(counters["registrations_failed"], 0, "{counters}");
    let answer = stdout_json(&command(&base, "echo-1", "ping", "hello", "60000"));
    assert_eq!(response_body(&answer), "hello", "{answer}");
}

/// The README's steps in order: serve, the demo config, then a command for
/// `lamp-1`, which is answered; a device nobody registered gets a 504 that
/// says so.
#[test]
fn the_readme_walkthrough_answers_the_command_for_lamp_1_and_names_an_unregistered_device() {
    let (_sim, base) = serve();
    let dir = scratch_dir("walkthrough");
    let _connector = connector("demo.yaml", &base, &dir.join("demo.log"));
    wait_for_devices(&base, &["lamp-1"], &dir);

    let answer = stdout_json(&command(&base, "lamp-1", "on", "{}", "60000"));
    assert_eq!(response_body(&answer), "{}", "{answer}");

    let output = command(&base, "lamp-9", "on", "{}", "200");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("HTTP 504") && stderr.contains(r#"no device \"lamp-9\" is registered"#),
        "{stderr}"
    );
}
