//! The `connector-runtime` binary as a user runs it: `--check`, and the
//! README's first command (`--embedded-platform`) stopped by SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_connector-runtime"));
    for var in [
        "CONNECTOR_LOOKUP_URL",
        "CONNECTOR_HTTPS",
        "CONNECTOR_PASSWORD",
        "LOGLEVEL",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command
}

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
    let output = binary()
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
            "no-plugin.yaml:2: devices[0].plugin: device \"a\": no plugin named \"nope\"",
        ),
        (
            "dup.yaml",
            "devices:\n  - {id: a, plugin: echo}\n  - {id: a, plugin: echo}\n",
            "duplicate device id",
        ),
    ];
    for (name, text, expected) in table {
        let output = binary()
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
    let output = binary()
        .args(["--config", "/nonexistent/connector.yaml", "--check"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr.contains("/nonexistent/connector.yaml"), "{stderr}");
}

#[test]
fn the_embedded_platform_demo_runs_the_whole_loop_and_stops_cleanly_on_sigterm() {
    let mut child = binary()
        .arg("--config")
        .arg(demo_config())
        .args(["--embedded-platform", "--demo-interval", "0.1"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let answered = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                let done = line.contains("got the answer") && line.contains("answer=hello #2");
                log.push(line);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    log.extend(rx.try_iter());
    let log = log.join("\n");
    assert!(answered, "the demo never got an answer:\n{log}");
    assert!(exit.success(), "exit {exit:?}\n{log}");
    assert!(log.contains("devices registered devices=3"), "{log}");
    assert!(log.contains("platform link closed"), "{log}");
    assert!(!log.contains("demo-password"), "the password leaked:\n{log}");
}
