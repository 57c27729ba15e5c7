//! Fault injection, each checked from the client's side of the wire: clean
//! drops, abrupt resets, failing registration and lookup, a paused
//! listener, ignored pings and raw frames.

mod util;

use std::{io, time::Duration};

use awc::ws;
use futures_util::SinkExt as _;
use platform_sim::{DropMode, RawFrame};
use serde_json::json;
use util::{
    frames::{BINARY, CLOSE, PING, TEXT},
    raw_ws::{RawWs, Read},
    *,
};

async fn raw_login(sim: &platform_sim::SimHandle) -> RawWs {
    let before = sim.counters().await.sessions_authenticated;
    let mut raw = RawWs::connect(sim.local_addr()).await.unwrap();
    raw.send_text(&credentials(USER, PASSWORD).to_string()).await.unwrap();
    sim.wait_for(|c| c.sessions_authenticated > before, DEADLINE)
        .await
        .unwrap();
    raw
}

#[actix_rt::test]
async fn clean_drop_sends_a_close_frame_then_fin() {
    let sim = start().await;
    let mut raw = raw_login(&sim).await;
    let (status, answer) = send_json(
        "POST",
        &format!("{}/fault/drop", sim.control_url()),
        &json!({"mode": "close", "code": 1012}),
    )
    .await;
    assert_eq!((status, answer["dropped"].as_u64()), (200, Some(1)));
    match raw.read(DEADLINE).await {
        Read::Frame(frame) => {
            assert_eq!(frame.opcode, CLOSE);
            assert_eq!(frame.close_code(), Some(1012));
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert!(matches!(raw.read(DEADLINE).await, Read::Eof));
    sim.wait_for(|c| c.sessions_closed == 1, DEADLINE).await.unwrap();
}

#[actix_rt::test]
async fn reset_drop_is_seen_as_connection_reset_without_a_close_frame() {
    let sim = start().await;
    let mut raw = raw_login(&sim).await;
    let (status, answer) = send_json(
        "POST",
        &format!("{}/fault/drop", sim.control_url()),
        &json!({"mode": "reset"}),
    )
    .await;
    assert_eq!((status, answer["dropped"].as_u64()), (200, Some(1)));
    match raw.read(DEADLINE).await {
        Read::Error(error) => assert_eq!(error.kind(), io::ErrorKind::ConnectionReset),
        other => panic!("expected ECONNRESET, got {other:?}"),
    }
    let c = sim.wait_for(|c| c.sessions_closed == 1, DEADLINE).await.unwrap();
    assert_eq!(c.sessions_dropped, 1);
}

#[actix_rt::test]
async fn reset_through_the_handle_is_seen_by_awc_as_an_error_not_a_close() {
    let sim = start().await;
    let mut conn = ws_login(&sim).await;
    assert_eq!(sim.drop_sessions(DropMode::Reset).await, 1);
    match ws_next(&mut conn).await {
        Some(Err(_)) | None => {}
        Some(Ok(frame)) => panic!("expected no frame after a reset, got {frame:?}"),
    }
}

#[actix_rt::test]
async fn the_simulator_keeps_serving_after_a_reset() {
    let sim = start().await;
    let _first = raw_login(&sim).await;
    sim.drop_sessions(DropMode::Reset).await;
    sim.wait_for(|c| c.sessions_closed == 1, DEADLINE).await.unwrap();
    let mut second = ws_login(&sim).await;
    ws_send(&mut second, &change_frame("d", "1")).await;
    sim.wait_for(|c| c.changes == 1, DEADLINE).await.unwrap();
}

#[actix_rt::test]
async fn registration_fails_n_times_with_the_chosen_status_then_succeeds() {
    let sim = start().await;
    let (status, _) = send_json(
        "POST",
        &format!("{}/fault/registration", sim.control_url()),
        &json!({"status": 503, "times": 2}),
    )
    .await;
    assert_eq!(status, 200);
    let devices = json!([{"id": "d"}]);
    assert_eq!(register(&sim, devices.clone()).await.0, 503);
    assert_eq!(register(&sim, devices.clone()).await.0, 503);
    assert!(sim.devices().await.is_empty());
    assert_eq!(register(&sim, devices).await.0, 200);
    assert_eq!(sim.devices().await.len(), 1);
    let c = sim.counters().await;
    assert_eq!((c.registrations_failed, c.registrations), (2, 1));
}

#[actix_rt::test]
async fn registration_failures_apply_to_unregistration_too() {
    let sim = start().await;
    register(&sim, json!([{"id": "d"}])).await;
    sim.fail_registrations(500, 1).await;
    let url = format!("{}/d", sim.registration_url());
    let body = json!({"credentials": credentials(USER, PASSWORD)});
    assert_eq!(send_json("DELETE", &url, &body).await.0, 500);
    assert_eq!(send_json("DELETE", &url, &body).await.0, 200);
}

#[actix_rt::test]
async fn lookup_fails_n_times_with_the_chosen_status_then_succeeds() {
    let sim = start().await;
    let (status, _) = send_json(
        "POST",
        &format!("{}/fault/lookup", sim.control_url()),
        &json!({"status": 502, "times": 3}),
    )
    .await;
    assert_eq!(status, 200);
    for _ in 0..3 {
        assert_eq!(get(&sim.lookup_url()).await.0, 502);
    }
    let (status, body) = get(&sim.lookup_url()).await;
    assert_eq!((status, body), (200, sim.socket_url()));
    let c = sim.counters().await;
    assert_eq!((c.lookups_failed, c.lookups), (3, 1));
}

async fn connection_refused(addr: std::net::SocketAddr) -> bool {
    matches!(
        tokio::net::TcpStream::connect(addr).await,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
    )
}

#[actix_rt::test]
async fn pause_closes_the_listener_and_connections_then_reopens_the_same_port() {
    let sim = start().await;
    register(&sim, json!([{"id": "kept"}])).await;
    let mut raw = raw_login(&sim).await;
    let (status, answer) = send_json(
        "POST",
        &format!("{}/fault/pause", sim.control_url()),
        &json!({"ms": 1500}),
    )
    .await;
    assert_eq!(status, 202, "{answer}");

    // The open session ends without a close frame (the worker is stopped).
    match raw.read(DEADLINE).await {
        Read::Eof | Read::Error(_) => {}
        Read::Frame(frame) => panic!("expected the connection to end, got {frame:?}"),
    }
    let addr = sim.local_addr();
    eventually("the listener to close", || async {
        connection_refused(addr).await.then_some(())
    })
    .await;
    eventually("the listener to reopen", || async {
        (!connection_refused(addr).await).then_some(())
    })
    .await;
    let (status, body) = get(&sim.lookup_url()).await;
    assert_eq!((status, body), (200, sim.socket_url()));
    assert_eq!(sim.devices().await.len(), 1, "state survives a pause");
    let _again = ws_login(&sim).await;
}

#[actix_rt::test]
async fn stop_and_start_listening_through_the_handle() {
    let sim = start().await;
    let addr = sim.local_addr();
    sim.stop_listening().await.unwrap();
    eventually("the listener to close", || async {
        connection_refused(addr).await.then_some(())
    })
    .await;
    sim.start_listening().await.unwrap();
    assert_eq!(get(&sim.lookup_url()).await.0, 200);

    sim.pause(Duration::from_millis(200)).await.unwrap();
    eventually("the listener to reopen after the pause", || async {
        (!connection_refused(addr).await).then_some(())
    })
    .await;
    assert_eq!(get(&sim.lookup_url()).await.0, 200);
    sim.stop().await.unwrap();
    assert!(connection_refused(addr).await);
}

#[actix_rt::test]
async fn raw_text_binary_and_huge_frames_arrive_at_the_client() {
    let sim = start().await;
    let mut raw = raw_login(&sim).await;
    let raw_url = format!("{}/fault/raw", sim.control_url());

    let (status, answer) = send_json("POST", &raw_url, &json!({"text": "{not json"})).await;
    assert_eq!((status, answer["sent"].as_u64()), (200, Some(1)));
    match raw.read(DEADLINE).await {
        Read::Frame(f) => assert_eq!((f.opcode, f.payload.as_slice()), (TEXT, &b"{not json"[..])),
        other => panic!("{other:?}"),
    }

    send_json("POST", &raw_url, &json!({"hex": "00ff7f"})).await;
    match raw.read(DEADLINE).await {
        Read::Frame(f) => assert_eq!((f.opcode, f.payload), (BINARY, vec![0, 255, 127])),
        other => panic!("{other:?}"),
    }

    let n = 3 * 1024 * 1024 + 7;
    send_json("POST", &raw_url, &json!({"huge": n})).await;
    match raw.read(DEADLINE).await {
        Read::Frame(f) => {
            assert_eq!((f.opcode, f.payload.len()), (TEXT, n));
            serde_json::from_slice::<serde_json::Value>(&f.payload).expect("huge frame is JSON");
        }
        other => panic!("{other:?}"),
    }

    assert_eq!(sim.send_raw(RawFrame::Text("via handle".into())).await.unwrap(), 1);
    match raw.read(DEADLINE).await {
        Read::Frame(f) => assert_eq!(f.payload, b"via handle"),
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.counters().await.raw_frames_sent, 4);
}

#[actix_rt::test]
async fn raw_frame_without_a_session_is_409() {
    let sim = start().await;
    let (status, _) = send_json(
        "POST",
        &format!("{}/fault/raw", sim.control_url()),
        &json!({"text": "x"}),
    )
    .await;
    assert_eq!(status, 409);
}

#[actix_rt::test]
async fn ignored_pings_are_counted_but_not_answered() {
    let sim = start().await;
    let mut raw = raw_login(&sim).await;
    let (status, _) = send_json(
        "POST",
        &format!("{}/fault/ignore-pings", sim.control_url()),
        &json!({"ignore": true}),
    )
    .await;
    assert_eq!(status, 200);
    raw.send(PING, b"one").await.unwrap();
    sim.wait_for(|c| c.pings == 1, DEADLINE).await.unwrap();
    // The next frame must be the raw marker, not a pong to "one".
    sim.send_raw(RawFrame::Text("marker".into())).await.unwrap();
    match raw.read(DEADLINE).await {
        Read::Frame(f) => assert_eq!((f.opcode, f.payload.as_slice()), (TEXT, &b"marker"[..])),
        other => panic!("{other:?}"),
    }
    sim.set_ignore_pings(false).await;
    raw.send(PING, b"two").await.unwrap();
    match raw.read(DEADLINE).await {
        Read::Frame(f) => assert_eq!(f.payload, b"two"),
        other => panic!("{other:?}"),
    }
}

#[actix_rt::test]
async fn refuse_credentials_via_control_api_also_refuses_registration() {
    let sim = start().await;
    let (status, _) = send_json(
        "POST",
        &format!("{}/fault/refuse-credentials", sim.control_url()),
        &json!({"refuse": true}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(register(&sim, json!([{"id": "d"}])).await.0, 401);
    let mut conn = ws_open(&sim).await;
    conn.send(ws::Message::Text(credentials(USER, PASSWORD).to_string().into()))
        .await
        .unwrap();
    match ws_next(&mut conn).await {
        Some(Ok(ws::Frame::Close(Some(reason)))) => assert_eq!(reason.code, ws::CloseCode::Policy),
        other => panic!("expected 1008, got {other:?}"),
    }
}

#[actix_rt::test]
async fn drop_also_closes_a_session_that_has_not_authenticated() {
    let sim = start().await;
    let mut raw = RawWs::connect(sim.local_addr()).await.unwrap();
    sim.wait_for(|c| c.sessions_opened == 1, DEADLINE).await.unwrap();
    assert_eq!(sim.drop_sessions(DropMode::close()).await, 1);
    match raw.read(DEADLINE).await {
        Read::Frame(frame) => assert_eq!(frame.close_code(), Some(1001)),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[actix_rt::test]
async fn frames_followed_at_once_by_the_end_of_the_connection_are_all_counted() {
    // A peer that writes its last frames and closes its side right away: the
    // frames are in the simulator's buffer when it reads the end of stream,
    // and none may be lost.
    let sim = start().await;
    let mut raw = raw_login(&sim).await;
    let frames: Vec<String> = (0..2000).map(|i| change_frame("d", &i.to_string())).collect();
    raw.send_texts(&frames).await.unwrap();
    raw.shutdown_write().await.unwrap();
    let counters = eventually("the session to end", || async {
        let c = sim.counters().await;
        (c.sessions_closed == 1).then_some(c)
    })
    .await;
    assert_eq!(counters.changes, 2000, "{counters:?}");
}
