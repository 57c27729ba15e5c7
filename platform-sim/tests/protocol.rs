//! The platform side of PROTOCOL.md, driven over loopback by plain awc
//! HTTP and WebSocket clients: lookup, (un)registration, the credentials
//! handshake, and connector frames counted and recorded.

mod util;

use awc::ws;
use futures_util::SinkExt as _;
use platform_sim::{EventKind, SimConfig};
use serde_json::json;
use util::*;

#[actix_rt::test]
async fn lookup_answers_the_socket_url_as_plain_text() {
    let sim = start().await;
    let (status, body) = get(&sim.lookup_url()).await;
    assert_eq!(status, 200);
    assert_eq!(body, format!("ws://{}/ws", sim.local_addr()));
    assert_eq!(body, sim.socket_url());
    assert_eq!(sim.counters().await.lookups, 1);
}

#[actix_rt::test]
async fn lookup_path_is_configurable() {
    let sim = start_with(SimConfig {
        lookup_path: "where".into(),
        ..config()
    })
    .await;
    assert!(sim.lookup_url().ends_with("/where"));
    assert_eq!(get(&sim.lookup_url()).await.0, 200);
    assert_eq!(get(&format!("{}/lookup", sim.base_url())).await.0, 404);
}

#[actix_rt::test]
async fn registration_with_good_credentials_lists_the_devices() {
    let sim = start().await;
    let (status, body) = register(
        &sim,
        json!([
            {"id": "lamp-1", "zway_type": "lamp", "title": "Lamp"},
            {"id": "meter-1", "zway_type": "meter", "title": "Meter"}
        ]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<String> = sim.devices().await.into_iter().map(|d| d.id).collect();
    assert_eq!(ids, ["lamp-1", "meter-1"]);

    let (status, listed) = get_json(&format!("{}/devices", sim.control_url())).await;
    assert_eq!(status, 200);
    assert_eq!(listed["devices"][0]["id"], "lamp-1");
    assert_eq!(listed["devices"][0]["zway_type"], "lamp");
    assert_eq!(listed["devices"][1]["title"], "Meter");
    let c = sim.counters().await;
    assert_eq!((c.registrations, c.devices_registered), (1, 2));
}

#[actix_rt::test]
async fn registration_with_wrong_credentials_is_401() {
    let sim = start().await;
    let body = json!({"credentials": credentials(USER, "wrong"), "devices": [{"id": "x"}]});
    let (status, _) = send_json("POST", &sim.registration_url(), &body).await;
    assert_eq!(status, 401);
    assert!(sim.devices().await.is_empty());
    assert_eq!(sim.counters().await.registrations_failed, 1);
}

#[actix_rt::test]
async fn registration_with_a_malformed_body_is_400() {
    let sim = start().await;
    let (status, body) = send_json("POST", &sim.registration_url(), &json!({"devices": 3})).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("credentials"), "{body}");
}

#[actix_rt::test]
async fn registration_path_is_configurable() {
    let sim = start_with(SimConfig {
        registration_path: "devices".into(),
        ..config()
    })
    .await;
    assert!(sim.registration_url().ends_with("/devices"));
    let (status, _) = register(&sim, json!([{"id": "d"}])).await;
    assert_eq!(status, 200);
}

#[actix_rt::test]
async fn unregistration_removes_a_percent_encoded_id_then_404s() {
    let sim = start().await;
    let id = "room 1/lamp";
    assert_eq!(register(&sim, json!([{"id": id}, {"id": "other"}])).await.0, 200);
    let url = format!("{}/room%201%2Flamp", sim.registration_url());
    let body = json!({"credentials": credentials(USER, PASSWORD)});

    let (status, _) = send_json("DELETE", &url, &body).await;
    assert_eq!(status, 200);
    let ids: Vec<String> = sim.devices().await.into_iter().map(|d| d.id).collect();
    assert_eq!(ids, ["other"]);

    let (status, _) = send_json("DELETE", &url, &body).await;
    assert_eq!(status, 404);
    let c = sim.counters().await;
    assert_eq!((c.unregistrations, c.unregistrations_unknown), (1, 1));
}

#[actix_rt::test]
async fn unregistration_with_wrong_credentials_is_401() {
    let sim = start().await;
    register(&sim, json!([{"id": "d"}])).await;
    let url = format!("{}/d", sim.registration_url());
    let (status, _) = send_json("DELETE", &url, &json!({"credentials": credentials("x", "y")})).await;
    assert_eq!(status, 401);
    assert_eq!(sim.devices().await.len(), 1);
}

#[actix_rt::test]
async fn session_with_good_credentials_is_listed_as_authenticated() {
    let sim = start().await;
    let _conn = ws_login(&sim).await;
    let sessions = sim.sessions().await;
    assert_eq!(sessions.len(), 1);
    assert!(sessions[0].authenticated);
    assert_eq!(sessions[0].user, USER);

    let (_, listed) = get_json(&format!("{}/sessions", sim.control_url())).await;
    assert_eq!(listed["sessions"][0]["authenticated"], true);
    let c = sim.counters().await;
    assert_eq!((c.sessions_opened, c.credentials, c.sessions_refused), (1, 1, 0));
}

async fn expect_close_1008(conn: &mut WsConn) {
    match ws_next(conn).await {
        Some(Ok(ws::Frame::Close(Some(reason)))) => {
            assert_eq!(reason.code, ws::CloseCode::Policy);
        }
        other => panic!("expected close 1008, got {other:?}"),
    }
}

#[actix_rt::test]
async fn wrong_password_is_closed_with_1008() {
    let sim = start().await;
    let mut conn = ws_open(&sim).await;
    ws_send(&mut conn, &credentials(USER, "nope").to_string()).await;
    expect_close_1008(&mut conn).await;
    let c = sim.wait_for(|c| c.sessions_closed == 1, DEADLINE).await.unwrap();
    assert_eq!((c.sessions_refused, c.sessions_authenticated), (1, 0));
    assert!(sim.sessions().await.is_empty());
}

#[actix_rt::test]
async fn a_first_frame_that_is_not_credentials_is_closed_with_1008() {
    let sim = start().await;
    let mut conn = ws_open(&sim).await;
    ws_send(&mut conn, &change_frame("d", "1")).await;
    expect_close_1008(&mut conn).await;
    assert_eq!(sim.counters().await.sessions_refused, 1);
}

#[actix_rt::test]
async fn refuse_switch_closes_good_credentials_with_1008_until_cleared() {
    let sim = start().await;
    sim.set_refuse_credentials(true).await;
    let mut conn = ws_open(&sim).await;
    ws_send(&mut conn, &credentials(USER, PASSWORD).to_string()).await;
    expect_close_1008(&mut conn).await;

    sim.set_refuse_credentials(false).await;
    let _conn = ws_login(&sim).await;
    assert_eq!(sim.counters().await.sessions_refused, 1);
}

#[actix_rt::test]
async fn credentials_time_out_closes_with_1008() {
    let sim = start_with(SimConfig {
        credentials_timeout: std::time::Duration::from_millis(100),
        ..config()
    })
    .await;
    let mut conn = ws_open(&sim).await;
    expect_close_1008(&mut conn).await;
}

#[actix_rt::test]
async fn change_response_and_update_frames_are_counted_and_recorded() {
    let sim = start().await;
    let mut conn = ws_login(&sim).await;
    ws_send(&mut conn, &change_frame("meter-1", "{'value': 1.5}")).await;
    let response = json!({"device_url": "lamp-1", "service_url": "on", "task_id": "t-9",
        "time": 1500000001, "protocol_parts": [{"name": "body", "value": "ok"}]});
    ws_send(&mut conn, &format!("response:{response}")).await;
    ws_send(&mut conn, "update").await;

    let c = sim
        .wait_for(|c| c.updates == 1, DEADLINE)
        .await
        .expect("all frames counted");
    assert_eq!((c.changes, c.responses, c.text, c.bad_frames), (1, 1, 3, 0));

    let events = sim.events().await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].kind, EventKind::Change);
    assert_eq!(events[0].message.device_id, "meter-1");
    assert_eq!(events[0].message.endpoint, "temperature");
    assert_eq!(events[0].message.header, "h");
    assert_eq!(events[0].message.body, "{'value': 1.5}");
    assert_eq!(events[0].message.time, "1500000000");
    assert_eq!(events[1].kind, EventKind::Response);
    assert_eq!(events[1].message.task_id, "t-9");
    assert_eq!(events[1].message.time, "1500000001");
    assert!(events[0].seq < events[1].seq);
}

#[actix_rt::test]
async fn pings_are_answered_with_pongs_and_counted() {
    let sim = start().await;
    let mut conn = ws_login(&sim).await;
    conn.send(ws::Message::Ping("hello".into())).await.unwrap();
    match ws_next(&mut conn).await {
        Some(Ok(ws::Frame::Pong(bytes))) => assert_eq!(&bytes[..], b"hello"),
        other => panic!("expected a pong, got {other:?}"),
    }
    conn.send(ws::Message::Pong("unasked".into())).await.unwrap();
    let c = sim.wait_for(|c| c.pongs == 1, DEADLINE).await.unwrap();
    assert_eq!(c.pings, 1);
}

#[actix_rt::test]
async fn bad_frames_are_counted_and_the_session_goes_on() {
    let sim = start().await;
    let mut conn = ws_login(&sim).await;
    ws_send(&mut conn, "change:{not json").await;
    ws_send(&mut conn, "change:[1,2]").await;
    ws_send(&mut conn, "response:nope").await;
    ws_send(&mut conn, "hello there").await;
    conn.send(ws::Message::Binary(vec![0u8, 1, 2].into())).await.unwrap();
    ws_send(&mut conn, &change_frame("still-here", "1")).await;

    let c = sim.wait_for(|c| c.changes == 3, DEADLINE).await.unwrap();
    assert_eq!((c.bad_frames, c.binary), (5, 1));
    let events = sim.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].message.device_id, "still-here");
    assert_eq!(sim.sessions().await.len(), 1);
}

#[actix_rt::test]
async fn counting_only_mode_counts_changes_without_recording() {
    let sim = start_with(SimConfig {
        record_events: false,
        ..config()
    })
    .await;
    let mut conn = ws_login(&sim).await;
    for i in 0..50 {
        ws_send(&mut conn, &change_frame(&format!("d{i}"), "x")).await;
    }
    // Not parsed, so not a bad frame either.
    ws_send(&mut conn, "change:{broken").await;
    let c = sim.wait_for(|c| c.changes == 51, DEADLINE).await.unwrap();
    assert_eq!(c.bad_frames, 0);
    assert!(sim.events().await.is_empty());
}

#[actix_rt::test]
async fn an_oversized_frame_closes_the_session_with_1009() {
    let sim = start_with(SimConfig {
        max_frame_size: 1024,
        ..config()
    })
    .await;
    let mut conn = ws_login(&sim).await;
    ws_send(&mut conn, &change_frame("d", &"x".repeat(2000))).await;
    match ws_next(&mut conn).await {
        Some(Ok(ws::Frame::Close(Some(reason)))) => assert_eq!(reason.code, ws::CloseCode::Size),
        other => panic!("expected close 1009, got {other:?}"),
    }
    assert_eq!(sim.counters().await.bad_frames, 1);
}

#[actix_rt::test]
async fn a_peer_close_is_echoed_and_the_session_removed() {
    let sim = start().await;
    let mut conn = ws_login(&sim).await;
    conn.send(ws::Message::Close(Some(ws::CloseCode::Normal.into())))
        .await
        .unwrap();
    match ws_next(&mut conn).await {
        Some(Ok(ws::Frame::Close(Some(reason)))) => assert_eq!(reason.code, ws::CloseCode::Normal),
        other => panic!("expected the close echoed, got {other:?}"),
    }
    let c = sim.wait_for(|c| c.sessions_closed == 1, DEADLINE).await.unwrap();
    assert_eq!(c.close_frames, 1);
    assert!(sim.sessions().await.is_empty());
}
