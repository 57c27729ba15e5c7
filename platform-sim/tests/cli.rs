//! The `platform-sim` binary: `serve` prints a lookup line a script can
//! read (also with port 0), and the client subcommands talk to it.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
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
    let mut args = vec!["--user", "u", "--password", "hidden-pw"];
    args.extend_from_slice(extra);
    serve_with(&args, Stdio::null())
}

/// `serve --listen 127.0.0.1:0` with `args` and nothing else, so that the
/// defaults are the binary's own.
fn serve_with(args: &[&str], stderr: Stdio) -> Server {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(stderr)
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

/// The raw answer to `GET path` from `base` (`http://HOST:PORT`).
fn http_get(base: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let addr = base.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// The README says every client subcommand takes `--url`; people put it
/// after the fault's own flags as often as before the fault.
#[test]
fn fault_takes_url_before_and_after_the_fault_name() {
    let server = serve(&[]);
    let url = server.base.as_str();
    for args in [
        ["fault", "--url", url, "drop", "--reset"],
        ["fault", "drop", "--reset", "--url", url],
    ] {
        let answer = stdout_json(&run(&args));
        assert_eq!(answer["dropped"], 0, "{args:?}: {answer}");
    }
    let answer = stdout_json(&run(&["fault", "lookup", "--status", "503", "--url", url]));
    assert_eq!(answer["status"], 503, "{answer}");
    // The fault reached the server at `url`, not one on the default port.
    let lookup = http_get(url, "/lookup");
    assert!(lookup.starts_with("HTTP/1.1 503"), "{lookup}");
    let output = run(&["fault", "drop", "--url"]);
    assert!(!output.status.success(), "--url without a value is refused");
}

/// A redirected log is for a file or a collector: no colour codes. Served
/// with its defaults, the simulator names the user it expects (the example
/// configs' one) and never the password.
#[test]
fn serve_logs_plain_text_to_a_redirected_stderr_naming_the_default_user() {
    let mut server = serve_with(&[], Stdio::piped());
    let stderr = server.child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    // Generous: the line is written right after the lookup line was read.
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(60)) {
        let serving = line.contains("serving");
        log.push(line);
        if serving {
            break;
        }
    }
    let log = log.join("\n");
    let serving = log.lines().find(|line| line.contains("serving"));
    let serving = serving.unwrap_or_else(|| panic!("no `serving` line:\n{log}"));
    assert!(!log.contains("\x1b["), "colour codes in a redirected log:\n{log:?}");
    assert!(serving.contains("user=demo"), "{serving}");
    assert!(!log.contains("demo-password"), "the password leaked:\n{log}");
}
