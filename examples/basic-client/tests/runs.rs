//! The example runs as a newcomer would run it: with no platform configured it
//! starts its own simulator, handles one command and exits cleanly.

use std::process::Command;

#[test]
fn the_basic_client_registers_answers_a_command_and_exits_cleanly() {
    let output = Command::new(env!("CARGO_BIN_EXE_basic-client"))
        .env_remove("CONNECTOR_LOOKUP_URL")
        .env("LOGLEVEL", "info")
        .output()
        .expect("the example starts");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}\n{log}", output.status);
    for expected in [
        "devices registered",
        "command received endpoint=read body=now",
        "the platform got the answer",
        "device unregistered device_id=meter-1",
        "peer_close_frame",
    ] {
        assert!(log.contains(expected), "missing {expected:?} in\n{log}");
    }
}
