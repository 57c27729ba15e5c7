//! The `connector-runtime` binary as a user runs it: `--check`, and the
//! README's first command (`--embedded-platform`) stopped by SIGTERM.

mod util;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use util::runtime_binary;

fn demo_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/demo.yaml")
}

fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("connector-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_accepts_the_demo_config() {
    let output = runtime_binary()
        .arg("--config")
        .arg(demo_config())
        .arg("--check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("OK (3 devices: lamp-1, plug-2, counter-3)"), "{stdout}");
}

#[test]
fn check_refuses_a_broken_config_naming_file_line_and_key() {
    let table = [
        (
            "unknown-key.yaml",
            "platform:\n  lookup_ur: x\n",
            "unknown-key.yaml:2:3: platform: unknown field `lookup_ur`",
        ),
        (
            "no-plugin.yaml",
            "devices:\n  - {id: a, plugin: nope}\n",
            "no-plugin.yaml:2:21: devices[0].plugin: device \"a\": no plugin named \"nope\"",
        ),
        (
            "dup.yaml",
            "devices:\n  - {id: a, plugin: echo}\n  - {id: a, plugin: echo}\n",
            "duplicate device id",
        ),
    ];
    for (name, text, expected) in table {
        let output = runtime_binary()
            .arg("--config")
            .arg(write_config(name, text))
            .arg("--check")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr:?} lacks {expected:?}");
    }
}

#[test]
fn a_missing_config_file_is_named_in_the_error() {
    let output = runtime_binary()
        .args(["--config", "/nonexistent/connector.yaml", "--check"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr.contains("/nonexistent/connector.yaml"), "{stderr}");
}

/// A running `--embedded-platform` demo with `extra` flags, and its stderr
/// lines as they come.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
    /// Collects stdout until the process ends.
    stdout: std::thread::JoinHandle<Vec<String>>,
}

impl Demo {
    fn start(extra: &[&str]) -> Demo {
        Demo::start_with(&demo_config(), extra)
    }

    /// Like [`Demo::start`], with another config file.
    fn start_with(config: &std::path::Path, extra: &[&str]) -> Demo {
        let mut child = runtime_binary()
            .arg("--config")
            .arg(config)
            .args(["--embedded-platform", "--demo-interval", "0.1"])
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stdout = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect());
        Demo {
            child,
            lines,
            log: Vec::new(),
            stdout,
        }
    }

    /// Collects lines until one satisfies `done`; false after 30 s of silence.
    fn wait_for(&mut self, done: impl Fn(&str) -> bool) -> bool {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(30)) {
            let found = done(&line);
            self.log.push(line);
            if found {
                return true;
            }
        }
        false
    }

    /// Sends SIGHUP, as `systemctl reload` does.
    fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Stops the process the way systemd and container runtimes do, and
    /// returns its exit status and every stderr line.
    fn stop(self) -> (ExitStatus, Vec<String>) {
        let (exit, log, _stdout) = self.stop_with_stdout();
        (exit, log)
    }

    /// [`Demo::stop`], and every stdout line too.
    fn stop_with_stdout(mut self) -> (ExitStatus, Vec<String>, Vec<String>) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        // The reader threads end at EOF, so this drains everything.
        self.log.extend(self.lines.iter());
        let stdout = self.stdout.join().unwrap();
        (exit, self.log, stdout)
    }
}

#[test]
fn the_embedded_platform_demo_runs_the_whole_loop_and_stops_cleanly_on_sigterm() {
    let mut demo = Demo::start(&[]);
    let answered = demo.wait_for(|line| line.contains("got the answer") && line.contains("answer=hello #2"));
    let (exit, log, stdout) = demo.stop_with_stdout();
    let log = log.join("\n");
    assert!(answered, "the demo never got an answer:\n{log}");
    assert!(exit.success(), "exit {exit:?}\n{log}");
    assert!(log.contains("devices registered devices=3"), "{log}");
    assert!(log.contains("platform link closed"), "{log}");
    assert!(!log.contains("demo-password"), "the password leaked:\n{log}");
    // stderr is a pipe here, as it is under systemd or in a log file.
    assert!(!log.contains("\x1b["), "colour codes in a redirected log:\n{log:?}");
    // The hints for a person at a terminal, in text mode.
    let stdout = stdout.join("\n");
    assert!(stdout.contains("embedded platform: http://127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("platform-sim -- events --follow --url"), "{stdout}");
}

#[test]
fn sighup_reloads_the_config_file_and_a_broken_one_is_refused_while_the_connector_keeps_running() {
    let one = "devices:\n  - { id: lamp-1, plugin: echo }\n";
    let config = write_config("reload.yaml", one);
    let mut demo = Demo::start_with(&config, &[]);
    let registered = demo.wait_for(|line| line.contains("devices registered devices=1"));
    std::fs::write(&config, format!("{one}  - {{ id: plug-2, plugin: echo }}\n")).unwrap();
    demo.hangup();
    let reloaded = demo.wait_for(|line| line.contains("reload: 1 added, 0 removed, 0 changed"));
    // The embedded platform keeps its credentials: the session goes on.
    std::fs::write(
        &config,
        format!("platform:\n  user: someone-else\n{one}  - {{ id: plug-2, plugin: echo }}\n"),
    )
    .unwrap();
    demo.hangup();
    let pinned = demo.wait_for(|line| line.contains("keeps the user, password and registration path"));
    std::fs::write(&config, "devices:\n  - { id: lamp-1, plugin: nope }\n").unwrap();
    demo.hangup();
    let refused = demo.wait_for(|line| line.contains("reload refused"));
    // Still running and answering: the demo keeps commanding the first device.
    let answering = demo.wait_for(|line| line.contains("got the answer"));
    let (exit, log) = demo.stop();
    let log = log.join("\n");
    assert!(registered && reloaded && pinned && refused && answering, "{log}");
    assert!(!log.contains("reconnecting with the new platform settings"), "{log}");
    assert!(exit.success(), "exit {exit:?}\n{log}");
    let refusal = log.lines().find(|line| line.contains("reload refused")).unwrap();
    assert!(
        refusal.contains("reload.yaml:2:27: devices[0].plugin") && refusal.contains("no plugin named \"nope\""),
        "{refusal}"
    );
}

#[test]
fn json_log_format_writes_one_json_object_per_line_with_the_events_fields() {
    let mut demo = Demo::start(&["--log-format", "json"]);
    let registered = demo.wait_for(|line| line.contains("devices registered"));
    let (exit, log) = demo.stop();
    assert!(registered, "no registration logged:\n{}", log.join("\n"));
    assert!(exit.success(), "exit {exit:?}");
    let events: Vec<serde_json::Value> = log
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    for event in &events {
        assert!(event["fields"]["message"].is_string(), "no fields.message: {event}");
        assert!(event["level"].is_string(), "no level: {event}");
    }
    // Fields stay separate values, not text pasted into the message.
    let registration = events
        .iter()
        .find(|event| event["fields"]["message"] == "devices registered")
        .expect("the registration event");
    assert_eq!(registration["fields"]["devices"], 3, "{registration}");
}

/// A log collector reading a JSON-mode demo gets JSON on both streams: the
/// plain-text hints stay off stdout and the listening event carries the URLs.
#[test]
fn json_log_format_writes_nothing_but_json_on_stdout_and_no_colour_codes() {
    let mut demo = Demo::start(&["--log-format", "json"]);
    let answered = demo.wait_for(|line| line.contains("got the answer"));
    let (exit, log, stdout) = demo.stop_with_stdout();
    let joined = log.join("\n");
    assert!(answered, "the demo never got an answer:\n{joined}");
    assert!(exit.success(), "exit {exit:?}\n{joined}");
    for line in stdout.iter().chain(&log) {
        assert!(!line.contains("\x1b["), "colour codes: {line:?}");
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    let listening = log
        .iter()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|event| event["fields"]["message"] == "embedded platform simulator listening")
        .unwrap_or_else(|| panic!("no listening event:\n{joined}"));
    let lookup = listening["fields"]["lookup_url"].as_str().unwrap_or_default();
    assert!(lookup.starts_with("http://127.0.0.1:"), "{listening}");
}

/// sysmetrics answers `read`, not the demo driver's default `get`; its
/// config's command line says `--demo-endpoint read`, and with it every
/// demo command is answered with the metrics instead of an error.
#[cfg(target_os = "linux")]
#[test]
fn the_sysmetrics_example_with_demo_endpoint_read_answers_with_its_metrics() {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/sysmetrics.yaml");
    let mut demo = Demo::start_with(&config, &["--demo-endpoint", "read"]);
    let answered = demo.wait_for(|line| line.contains("got the answer") && line.contains("uptime_seconds"));
    let (exit, log) = demo.stop();
    let log = log.join("\n");
    assert!(answered, "no metrics in an answer:\n{log}");
    assert!(exit.success(), "exit {exit:?}\n{log}");
    assert!(!log.contains("unknown endpoint"), "{log}");
}

#[test]
fn version_names_the_crate_version_and_the_plugin_abi() {
    let output = runtime_binary().arg("--version").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let expected = format!(
        "connector-runtime {} (plugin ABI {})",
        env!("CARGO_PKG_VERSION"),
        connector_core::abi::ABI_VERSION
    );
    assert_eq!(stdout.trim(), expected);
}

/// The body of `GET path` over plain HTTP/1.0, by hand: the test needs no
/// HTTP client for one request.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn metrics_listen_serves_metrics_and_health_from_the_runtime_binary() {
    let mut demo = Demo::start(&["--metrics-listen", "127.0.0.1:0"]);
    let serving = demo.wait_for(|line| line.contains("serving /metrics"));
    // Registration may be logged before or after the server starts.
    let registered = demo.log.iter().any(|line| line.contains("devices registered"))
        || demo.wait_for(|line| line.contains("devices registered"));
    let addr = demo
        .log
        .iter()
        .filter(|line| line.contains("serving /metrics"))
        .find_map(|line| line.split("addr=").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap().to_owned());
    let answers = addr.map(|addr| (http_get(&addr, "/metrics"), http_get(&addr, "/health")));
    let (exit, log) = demo.stop();
    let log = log.join("\n");
    assert!(serving && registered, "{log}");
    assert!(exit.success(), "exit {exit:?}\n{log}");
    let (metrics, health) = answers.expect("the metrics address is logged");
    assert!(metrics.starts_with("HTTP/1.0 200"), "{metrics}");
    assert!(
        metrics.lines().any(|line| line == "connector_session_up 1"),
        "{metrics}"
    );
    assert!(metrics.lines().any(|line| line == "connector_devices 3"), "{metrics}");
    assert!(health.starts_with("HTTP/1.0 200"), "{health}");
}
