//! The built-in `exec` plugin through the real runtime and simulator, with
//! real child processes: the Python plug of `examples/python-device`, and
//! shell programs that fail, hang, crash and print garbage.

mod util;

use std::path::{Path, PathBuf};
use std::time::Duration;

use platform_sim::Command;
use util::*;

fn plug_script() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/python-device/plug.py")
        .display()
        .to_string()
}

/// A scratch directory of this test's own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("exec-plugin-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a shell script into `dir` and gives its path.
fn script(dir: &Path, text: &str) -> String {
    let path = dir.join("run.sh");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Whether process `pid` has ended (gone, or a zombie left to be reaped).
fn ended(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.contains(") Z "),
    }
}

async fn answer(sim: &platform_sim::SimHandle, device: &str, endpoint: &str, body: &str) -> String {
    sim.command_and_wait(&Command::new(device, endpoint).body(body), DEADLINE)
        .await
        .expect("the platform gets an answer")
        .message
        .body
}

#[actix_rt::test]
async fn the_python_plug_answers_commands_and_streams_its_events() {
    let sim = simulator().await;
    let state = scratch("plug");
    let script = plug_script();
    let devices = format!(
        "{ECHO_DEVICES}  - id: py-plug\n    plugin: exec\n    settings:\n      command: [python3, {script}, command]\n      events: [python3, {script}, watch]\n      env: {{PLUG_STATE_DIR: {}, PLUG_WATCH_INTERVAL: '0.05'}}\n",
        state.display()
    );
    let connector = connected(&sim, config_for(&sim, &devices)).await;

    assert_eq!(answer(&sim, "py-plug", "get", "").await, r#"{"on": false}"#);
    assert_eq!(answer(&sim, "py-plug", "set", "on").await, r#"{"on": true}"#);
    assert_eq!(answer(&sim, "py-plug", "get", "").await, r#"{"on": true}"#);
    // The plug's own error: exit 2 with a reason on stderr.
    let refused = answer(&sim, "py-plug", "set", "maybe").await;
    assert!(refused.contains("set wants"), "{refused}");
    assert!(refused.contains("failed (exit status: 2)"), "{refused}");

    // The watcher sees the switch: a `state` event with the plug on, and
    // `power` readings above 0 after it.
    let on = eventually("the state event of the plug switched on", || async {
        let states = frames(&sim, "py-plug", platform_sim::EventKind::Change).await;
        states
            .iter()
            .position(|e| e.message.endpoint == "state" && e.message.body == r#"{"on": true}"#)
            .map(|at| (at, states))
    })
    .await;
    let (at, _) = on;
    eventually("power readings of the plug switched on", || async {
        let events = frames(&sim, "py-plug", platform_sim::EventKind::Change).await;
        events[at..]
            .iter()
            .any(|e| e.message.endpoint == "power" && e.message.body.parse::<f64>().is_ok_and(|w| w > 0.0))
            .then_some(())
    })
    .await;
    connector.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&state);
}

#[actix_rt::test]
async fn a_program_that_hangs_is_killed_at_the_deadline_with_what_it_started() {
    let sim = simulator().await;
    let dir = scratch("hang");
    let pids = dir.join("pids");
    let script = script(
        &dir,
        &format!("sleep 600 & echo $! >> {0}; echo $$ >> {0}; wait\n", pids.display()),
    );
    let devices = format!(
        "{ECHO_DEVICES}  - id: stuck\n    plugin: exec\n    command_timeout_ms: 3000\n    settings:\n      command: [sh, {script}]\n"
    );
    let connector = connected(&sim, config_for(&sim, &devices)).await;
    // The runtime's deadline and the plugin's kill come at the same moment:
    // whichever answers first, it is an error naming the deadline.
    let body = answer(&sim, "stuck", "get", "").await;
    assert!(
        body.contains("did not answer within 3 s") || body.contains("was still running after 3000 ms and was killed"),
        "{body}"
    );
    // Both the shell and its `sleep` end, though the answer has gone.
    let all_ended = eventually("the hung program and its child killed", || async {
        let text = std::fs::read_to_string(&pids).unwrap_or_default();
        let pids: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
        (pids.len() == 2 && pids.iter().all(|pid| ended(pid))).then_some(pids)
    })
    .await;
    assert_eq!(all_ended.len(), 2);
    // The device is free again for the next command.
    assert_eq!(answer(&sim, "lamp-1", "get", "after").await, "after");
    connector.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_rt::test]
async fn an_events_program_that_prints_garbage_and_crashes_is_restarted_and_stopped_with_the_device() {
    let sim = simulator().await;
    let dir = scratch("crash");
    let runs = dir.join("runs");
    // Each run: note its pid, print garbage and a good event, then exit 1;
    // from the third run on it stays up.
    let script = script(
        &dir,
        &format!(
            "echo $$ >> {runs}\nn=$(wc -l < {runs})\necho '{{not json'\necho\necho \"count $n\"\n\
             if [ $n -lt 3 ]; then echo crashing >&2; exit 1; fi\nexec sleep 600\n",
            runs = runs.display()
        ),
    );
    let devices = format!(
        "{ECHO_DEVICES}  - id: flaky\n    plugin: exec\n    settings:\n      events: [sh, {script}]\n      restart_initial_ms: 50\n      restart_max_ms: 100\n"
    );
    let connector = connected(&sim, config_for(&sim, &devices)).await;
    let bodies = eventually("three runs' events", || async {
        let bodies = event_bodies(&sim, "flaky").await;
        (bodies.len() >= 3).then_some(bodies)
    })
    .await;
    // Only the good lines are events; the garbage and the blank line are not.
    assert_eq!(bodies, ["1", "2", "3"]);
    let endpoints: Vec<String> = frames(&sim, "flaky", platform_sim::EventKind::Change)
        .await
        .into_iter()
        .map(|e| e.message.endpoint)
        .collect();
    assert_eq!(endpoints, ["count", "count", "count"]);

    // Stopping the device kills the program that stayed up.
    connector.shutdown(Duration::from_secs(2)).await;
    let text = std::fs::read_to_string(&runs).unwrap();
    let last = text.split_whitespace().last().unwrap().to_owned();
    eventually("the events program killed with its device", || async {
        ended(&last).then_some(())
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_program_is_named_by_check_with_its_line() {
    let dir = scratch("missing");
    let path = dir.join("connector.yaml");
    std::fs::write(
        &path,
        "devices:\n  - id: ghost\n    plugin: exec\n    settings:\n      command: [no-such-program-anywhere]\n",
    )
    .unwrap();
    let (code, stderr) = check_file(&path, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("connector.yaml:5:16: devices[0].settings.command: device \"ghost\"")
            && stderr.contains("program `no-such-program-anywhere` not found on PATH"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
