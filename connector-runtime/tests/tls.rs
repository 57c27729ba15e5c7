//! The connector against the simulator in TLS mode: lookup and registration
//! over `https://`, the session over `wss://`, trusted through
//! `platform.ca_file`; and what happens when the CA is missing or broken.

mod certs;
mod util;

use std::time::{Duration, Instant};

use certs::{temp_dir, TestPki};
use connector_core::config::Config;
use connector_core::{Device, Message};
use connector_runtime::{Connector, Lifecycle, StartError};
use platform_sim::{Command, SimConfig};
use util::*;

/// What plugins trust (`tls::for_plugins`) is one setting per process, set
/// by each connector's start: the tests here start connectors with CAs of
/// their own, so they take turns.
async fn one_trust_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

#[actix_rt::test]
async fn lookup_registration_and_session_run_over_tls_trusting_the_ca_file() {
    let _turn = one_trust_at_a_time().await;
    init_logging();
    let pki = TestPki::new();
    let sim = pki
        .simulator(SimConfig {
            user: "alice".into(),
            password: "tls-test-pw".into(),
            ..SimConfig::default()
        })
        .await;
    assert!(
        sim.lookup_url().starts_with("https://127.0.0.1:"),
        "{}",
        sim.lookup_url()
    );

    // A config file with a relative `ca_file`, read the way the binary reads it.
    let dir = temp_dir("full-flow");
    pki.write_ca(&dir, "platform-ca.pem");
    let yaml = format!(
        "platform:\n  lookup_url: {}\n  user: alice\n  password: tls-test-pw\n  ca_file: platform-ca.pem\n  backoff: {{ initial_ms: 20, max_ms: 200 }}\ndevices:\n{ECHO_DEVICES}",
        sim.lookup_url()
    );
    std::fs::write(dir.join("connector.yaml"), yaml).unwrap();
    let config = Config::load(dir.join("connector.yaml")).expect("the config loads");
    assert_eq!(
        config.platform.ca_file.as_deref(),
        Some(dir.join("platform-ca.pem").as_path())
    );

    let connector = Connector::start(config).await.expect("the connector starts");
    let mut events = connector.subscribe();
    eventually("both devices registered over https", || async {
        (device_ids(&sim).await == ["lamp-1", "plug-2"]).then_some(())
    })
    .await;
    let connected = eventually("a session", || async {
        (sim.counters().await.sessions_opened >= 1).then_some(())
    });
    connected.await;

    let reply = sim
        .command_and_wait(&Command::new("lamp-1", "set").body("on"), DEADLINE)
        .await
        .expect("the device answers over wss");
    assert_eq!(reply.message.body, "on");

    connector.send(Message::event("plug-2", "power", "42")).unwrap();
    barrier(&sim, "lamp-1").await;
    assert_eq!(event_bodies(&sim, "plug-2").await, ["42"]);

    connector
        .unregister(&Device::new("plug-2", "plug", "Plug"))
        .await
        .unwrap();
    wait_event(
        &mut events,
        "unregistered over https",
        |e| matches!(e, Lifecycle::UnregistrationSucceeded { device } if device == "plug-2"),
    )
    .await;
    assert_eq!(device_ids(&sim).await, ["lamp-1"]);
    assert!(sim.counters().await.lookups >= 1);

    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn the_https_switch_upgrades_an_http_lookup_url() {
    let _turn = one_trust_at_a_time().await;
    init_logging();
    let pki = TestPki::new();
    let sim = pki.simulator(SimConfig::default()).await;
    let dir = temp_dir("switch");
    let ca = pki.write_ca(&dir, "ca.pem");
    // What CONNECTOR_HTTPS=1 does to a config naming an http:// lookup URL.
    let plain_lookup = sim.lookup_url().replacen("https://", "http://", 1);
    let mut config = config_for(&sim, ECHO_DEVICES);
    config.platform.lookup_url = plain_lookup;
    config
        .apply_env_from(|name| (name == "CONNECTOR_HTTPS").then(|| "on".to_owned()))
        .unwrap();
    config.platform.ca_file = Some(ca);
    assert!(config.lookup_url().starts_with("https://"));

    let connector = Connector::start(config).await.unwrap();
    let mut events = connector.subscribe();
    let connected = wait_event(&mut events, "connected", |e| matches!(e, Lifecycle::Connected { .. })).await;
    let Lifecycle::Connected { url } = connected else {
        unreachable!()
    };
    assert!(url.starts_with("wss://127.0.0.1:"), "{url}");
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn without_the_ca_the_certificate_is_refused_and_retried_with_back_off() {
    let _turn = one_trust_at_a_time().await;
    init_logging();
    let pki = TestPki::new();
    let sim = pki.simulator(SimConfig::default()).await;
    let mut config = config_for(&sim, ECHO_DEVICES);
    config.platform.backoff.initial_ms = 100;
    config.platform.backoff.max_ms = 200;

    let connector = Connector::start(config).await.unwrap();
    let mut events = connector.subscribe();
    let first = wait_event(&mut events, "a failed attempt", |e| {
        matches!(e, Lifecycle::Disconnected { .. })
    })
    .await;
    let Lifecycle::Disconnected { reason } = first else {
        unreachable!()
    };
    assert!(
        reason.contains("lookup failed") && reason.contains("certificate"),
        "the reason should name the TLS failure: {reason}"
    );

    // Full jitter below 200 ms: a handful of attempts a second, not a hot loop.
    let window = Duration::from_millis(1500);
    let started = Instant::now();
    let mut failures = 0;
    while let Some(left) = window.checked_sub(started.elapsed()) {
        match actix_rt::time::timeout(left, events.recv()).await {
            Ok(Ok(Lifecycle::Disconnected { .. })) => failures += 1,
            Ok(Ok(Lifecycle::Connected { url })) => panic!("connected to {url} without trusting its CA"),
            Ok(_) => {}
            Err(_elapsed) => break,
        }
    }
    assert!((2..=40).contains(&failures), "{failures} failed attempts in {window:?}");
    // The handshake failed before any HTTP request reached the platform.
    let counters = sim.counters().await;
    assert_eq!((counters.lookups, counters.sessions_opened), (0, 0));
    connector.shutdown(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn a_missing_or_broken_ca_file_stops_the_start_naming_the_file() {
    let dir = temp_dir("broken");
    let not_pem = dir.join("not-a-cert.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    for (ca_file, expected) in [
        (dir.join("missing.pem"), "cannot read CA file "),
        (not_pem, "holds no PEM certificate"),
    ] {
        let mut config = Config::default();
        config.platform.ca_file = Some(ca_file.clone());
        let err = match Connector::start(config).await {
            Ok(_) => panic!("started with CA file {}", ca_file.display()),
            Err(err) => err,
        };
        assert!(matches!(err, StartError::Tls(_)), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&ca_file.display().to_string()), "{message}");
        assert!(message.contains(expected), "{message}");
    }
}

/// An `http` device served over https with a certificate of the private
/// CA that only `platform.ca_file` names: the plugin trusts what the link
/// trusts. The device here is the simulator's own https lookup route.
#[actix_rt::test]
async fn the_http_plugin_trusts_the_platforms_ca_file() {
    let _turn = one_trust_at_a_time().await;
    init_logging();
    let pki = TestPki::new();
    let sim = pki.simulator(SimConfig::default()).await;
    let dir = temp_dir("http-plugin");
    let ca = pki.write_ca(&dir, "platform-ca.pem");
    let devices = format!(
        "{ECHO_DEVICES}  - id: https-device\n    plugin: http\n    settings:\n      poll: [{{endpoint: lookup, url: '{}', interval_ms: 50}}]\n",
        sim.lookup_url()
    );
    let yaml = format!(
        "platform:\n  lookup_url: {}\n  ca_file: {}\n  backoff: {{ initial_ms: 20, max_ms: 200 }}\ndevices:\n{devices}",
        sim.lookup_url(),
        ca.display()
    );
    let config = Config::from_yaml_str(&yaml, "tls.yaml").expect("the config is valid");
    let connector = Connector::start(config).await.expect("the connector starts");
    let body = eventually("an event polled over https", || async {
        event_bodies(&sim, "https-device").await.into_iter().next()
    })
    .await;
    assert!(body.contains("127.0.0.1"), "the lookup answer names the socket: {body}");
    connector.shutdown(Duration::from_secs(2)).await;
}
