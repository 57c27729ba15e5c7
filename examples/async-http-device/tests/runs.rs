//! The example runs as a newcomer would run it: with the built-in simulator
//! playing the platform, the async plugin switches a real plug over HTTP and
//! its polling reports the state; first with the stand-in plug it starts
//! itself, then with one given by URL.

use std::process::{Command, Output};

use async_http_device::plug::Plug;

fn example() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_async-http-device"));
    for var in [
        "CONNECTOR_LOOKUP_URL",
        "CONNECTOR_HTTPS",
        "CONNECTOR_USER",
        "CONNECTOR_PASSWORD",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command.env("LOGLEVEL", "info");
    command
}

/// The log of a run that must have succeeded.
fn log_of(output: &Output) -> String {
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "exit {:?}\n{log}", output.status);
    log
}

fn assert_lines(log: &str, expected: &[&str]) {
    for line in expected {
        assert!(log.contains(line), "missing {line:?} in\n{log}");
    }
}

#[test]
fn with_its_own_plug_the_platform_switches_it_and_hears_of_every_change() {
    let output = example()
        .arg("--embedded-platform")
        .output()
        .expect("the example starts");
    let log = log_of(&output);
    assert_lines(
        &log,
        &[
            "a stand-in plug serves the REST API",
            r#"the platform sent a command and got the answer endpoint=on answer={"on":true,"power_w":42.5}"#,
            r#"the platform sent a command and got the answer endpoint=state answer={"on":true,"power_w":42.5}"#,
            r#"the platform received the polled state as an event state={"on":true,"power_w":42.5}"#,
            r#"the platform sent a command and got the answer endpoint=off answer={"on":false,"power_w":0.0}"#,
            r#"the platform received the polled state as an event state={"on":false,"power_w":0.0}"#,
            r#"the platform heard of the button press through polling state={"on":true,"power_w":42.5}"#,
            "request=PUT /api/relay on=true",
            "request=PUT /api/relay on=false",
            "device stopped device_id=plug-1",
        ],
    );
}

#[actix_rt::test]
async fn with_a_plug_given_by_url_the_requests_reach_that_plug() {
    let plug = Plug::start("127.0.0.1:0".parse().unwrap()).expect("the test's plug starts");
    let mut command = example();
    command.args(["--embedded-platform", "--plug-url", &plug.url()]);
    let output = actix_rt::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("the example starts");
    let log = log_of(&output);
    assert_lines(
        &log,
        &[
            &format!("using the plug at this URL url={}", plug.url()),
            r#"endpoint=off answer={"on":false,"power_w":0.0}"#,
        ],
    );
    assert!(!log.contains("stand-in plug serves"), "{log}");
    let requests = plug.requests();
    let switches: Vec<&str> = requests
        .iter()
        .map(String::as_str)
        .filter(|r| r.starts_with("PUT"))
        .collect();
    assert_eq!(
        switches,
        ["PUT /api/relay on=true", "PUT /api/relay on=false"],
        "{requests:?}"
    );
    assert!(
        requests.iter().filter(|r| r.starts_with("GET")).count() >= 2,
        "a read and polling: {requests:?}"
    );
    plug.stop().await;
}
