//! The example runs as a newcomer would run it: with its own simulator, the
//! compiled-in thermostat answers commands and reports temperatures.

use std::process::Command;

#[test]
fn the_embedded_thermostat_takes_a_target_and_reports_temperatures() {
    let output = Command::new(env!("CARGO_BIN_EXE_embedded-plugin"))
        .env_remove("CONNECTOR_LOOKUP_URL")
        .env("LOGLEVEL", "info")
        .output()
        .expect("the example starts");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}\n{log}", output.status);
    for expected in [
        "set the target to 23 answer=ok",
        "the thermostat's target target=23",
        "temperature events received",
    ] {
        assert!(log.contains(expected), "missing {expected:?} in\n{log}");
    }
}
