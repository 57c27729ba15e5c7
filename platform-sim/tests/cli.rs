//! The `platform-sim` binary: `serve` prints a lookup line a script can
//! read (also with port 0), and the client subcommands talk to it.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Output, Stdio},
};

const BIN: &str = env!("CARGO_BIN_EXE_platform-sim");

/// Kills the server when the test ends, even on a failed assertion.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(extra: &[&str]) -> Server {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--user",
            "u",
            "--password",
            "hidden-pw",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("a lookup line");
    let url = line
        .trim()
        .strip_prefix("lookup: ")
        .unwrap_or_else(|| panic!("first line is the lookup URL, got {line:?}"))
        .to_owned();
    let base = url.strip_suffix("/lookup").expect("default lookup path").to_owned();
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0, "the OS-picked port is printed");
    Server { child, base }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("binary runs")
}

fn stdout_json(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

#[test]
fn serve_prints_its_lookup_url_and_client_subcommands_work() {
    let server = serve(&[]);
    let url = server.base.as_str();

    let devices = stdout_json(&run(&["devices", "--url", url]));
    assert_eq!(devices["devices"], serde_json::json!([]));

    let counters = stdout_json(&run(&["counters", "--url", url]));
    assert_eq!(counters["sessions_opened"], 0);

    let sessions = stdout_json(&run(&["sessions", "--url", url]));
    assert!(sessions["sessions"].as_array().unwrap().is_empty());

    let fault = stdout_json(&run(&[
        "fault", "--url", url, "lookup", "--status", "503", "--times", "2",
    ]));
    assert_eq!(fault["times"], 2);

    let events = run(&["events", "--url", url]);
    assert!(events.status.success());
    assert!(events.stdout.is_empty(), "no events yet");

    let command = run(&[
        "command",
        "--url",
        url,
        "--device",
        "d",
        "--endpoint",
        "e",
        "--body",
        "x",
    ]);
    assert!(!command.status.success(), "no connector session: an error");
    let stderr = String::from_utf8_lossy(&command.stderr);
    assert!(stderr.contains("409"), "{stderr}");

    stdout_json(&run(&["reset", "--url", url]));
}

#[test]
fn client_subcommands_report_an_unreachable_simulator() {
    let output = run(&["counters", "--url", "http://127.0.0.1:1"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach the simulator"), "{stderr}");
}

#[test]
fn help_documents_the_control_api() {
    let output = run(&["--help"]);
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in ["/control/command", "/control/fault/pause", "serve", "events"] {
        assert!(help.contains(needle), "help lacks {needle}");
    }
}
