//! The ways other crates start a simulator: inside any tokio runtime, or on
//! a thread of its own for callers without one; and that dropping the last
//! handle stops it.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use platform_sim::{SimConfig, Simulator};

/// A blocking `GET /lookup`, by hand, so no runtime is needed.
fn blocking_lookup(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /lookup HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

#[tokio::test]
async fn starts_inside_a_plain_tokio_runtime() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let addr = sim.local_addr();
    let answer = tokio::task::spawn_blocking(move || blocking_lookup(addr))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(&sim.socket_url()), "{answer}");
    sim.stop().await.unwrap();
}

#[test]
fn spawn_serves_sync_callers_and_stops_when_the_last_handle_drops() {
    let sim = Simulator::spawn(SimConfig::default()).unwrap();
    let addr = sim.local_addr();
    let answer = blocking_lookup(addr).unwrap();
    assert!(answer.ends_with(&format!("ws://{addr}/ws")), "{answer}");

    let clone = sim.clone();
    drop(sim);
    assert!(blocking_lookup(addr).is_ok(), "a clone keeps it running");
    drop(clone);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "simulator still listening");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_bad_config_is_reported_before_anything_starts() {
    let err = Simulator::spawn(SimConfig {
        registration_path: "control".into(),
        ..SimConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
}

#[test]
fn a_busy_port_is_a_bind_error() {
    let first = Simulator::spawn(SimConfig::default()).unwrap();
    let err = Simulator::spawn(SimConfig {
        listen: first.local_addr(),
        ..SimConfig::default()
    })
    .unwrap_err();
    assert!(matches!(err, platform_sim::SimError::Bind { .. }), "{err}");
}
