//! The metrics endpoint against the real simulator: its counters agree with
//! what the simulator saw, and `/health` follows the session.

mod util;

use std::collections::HashMap;
use std::net::SocketAddr;

use connector_core::Message;
use connector_runtime::metrics::MetricsServer;
use platform_sim::{Command, DropMode};
use util::*;

/// Status and body of `GET path` on the metrics server.
async fn get(server: &MetricsServer, path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", server.local_addr());
    let mut response = awc::Client::default()
        .get(url)
        .send()
        .await
        .expect("the metrics server answers");
    let body = response.body().await.expect("a body");
    (response.status().as_u16(), String::from_utf8(body.to_vec()).unwrap())
}

/// Every sample of a Prometheus text, by name and labels as written.
fn samples(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            (name.to_owned(), value.parse().expect("an integer"))
        })
        .collect()
}

fn loopback_any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[actix_rt::test]
async fn metrics_counters_match_what_the_simulator_saw() {
    let sim = simulator().await;
    let connector = connected(&sim, config_for(&sim, ECHO_DEVICES)).await;
    let server = MetricsServer::start(loopback_any_port(), connector.status()).unwrap();

    for i in 0..5 {
        let command = Command::new("lamp-1", "set").body(i.to_string());
        sim.command_and_wait(&command, DEADLINE).await.expect("an answer");
    }
    for i in 0..7 {
        connector
            .send(Message::event("plug-2", "level", i.to_string()))
            .unwrap();
    }
    barrier(&sim, "lamp-1").await;

    let (status, text) = get(&server, "/metrics").await;
    assert_eq!(status, 200);
    let metrics = samples(&text);
    let seen = sim.counters().await;
    let expected = [
        ("connector_commands_received_total", seen.commands_sent),
        ("connector_frames_sent_total{kind=\"response\"}", seen.responses),
        ("connector_frames_sent_total{kind=\"change\"}", seen.changes),
        ("connector_sessions_total", seen.sessions_authenticated),
        ("connector_bad_frames_total", 0),
        ("connector_session_up", 1),
        ("connector_devices", 2),
        ("connector_devices_registered", 2),
        ("connector_buffer_frames", 0),
        ("connector_buffer_bytes", 0),
    ];
    for (name, value) in expected {
        assert_eq!(metrics.get(name), Some(&value), "{name} in:\n{text}");
    }
    // The scenario itself, so an agreement at zero cannot pass.
    assert_eq!((seen.commands_sent, seen.responses, seen.changes), (6, 6, 7));

    let (status, devices) = get(&server, "/devices").await;
    assert_eq!(status, 200);
    let devices: serde_json::Value = serde_json::from_str(&devices).unwrap();
    assert_eq!(devices[0]["id"], "lamp-1");
    assert_eq!(devices[0]["registered"], true);
    assert_eq!(devices.as_array().map(Vec::len), Some(2));

    server.stop().await;
    connector.shutdown(DEADLINE).await;
}

#[actix_rt::test]
async fn health_turns_503_while_the_platform_drops_the_session_and_200_after() {
    let sim = simulator().await;
    let connector = connected(&sim, config_for(&sim, ECHO_DEVICES)).await;
    let owned = MetricsServer::start(loopback_any_port(), connector.status()).unwrap();
    let server = &owned;
    eventually("healthy", || async {
        (get(server, "/health").await.0 == 200).then_some(())
    })
    .await;

    // Lookups fail, so the session stays down until they are allowed again.
    sim.fail_lookups(503, u32::MAX).await;
    assert!(sim.drop_sessions(DropMode::close()).await >= 1);
    let body = eventually("unhealthy", || async {
        let (status, body) = get(server, "/health").await;
        (status == 503).then_some(body)
    })
    .await;
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["reason"], "no session with the platform", "{body}");
    let (_, metrics) = get(server, "/metrics").await;
    assert_eq!(samples(&metrics).get("connector_session_up"), Some(&0));

    sim.fail_lookups(503, 0).await;
    eventually("healthy again", || async {
        (get(server, "/health").await.0 == 200).then_some(())
    })
    .await;

    owned.stop().await;
    connector.shutdown(DEADLINE).await;
}
