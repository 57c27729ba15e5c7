//! Helpers shared by the integration tests: start a simulator, talk HTTP
//! with awc, open WebSockets (awc, or raw for byte-exact checks), and poll
//! for a condition with a deadline instead of sleeping.

#![allow(dead_code)]

pub mod frames;
pub mod raw_ws;

use std::{future::Future, time::Duration};

use awc::ws;
use futures_util::{SinkExt as _, StreamExt as _};
use platform_sim::{SimConfig, SimHandle, Simulator};
use serde_json::{json, Value};

/// How long any single wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub const USER: &str = "tester";
pub const PASSWORD: &str = "s3cret";

pub fn config() -> SimConfig {
    SimConfig {
        user: USER.into(),
        password: PASSWORD.into(),
        ..SimConfig::default()
    }
}

pub async fn start() -> SimHandle {
    start_with(config()).await
}

pub async fn start_with(config: SimConfig) -> SimHandle {
    Simulator::start(config).await.expect("simulator starts")
}

pub fn client() -> awc::Client {
    awc::Client::builder().timeout(DEADLINE).finish()
}

/// Status and body text of a GET.
pub async fn get(url: &str) -> (u16, String) {
    let mut res = client().get(url).send().await.expect("GET works");
    let body = res.body().await.expect("body");
    (res.status().as_u16(), String::from_utf8_lossy(&body).into())
}

/// Status and JSON body of a request with a JSON body.
pub async fn send_json(method: &str, url: &str, body: &Value) -> (u16, Value) {
    let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut res = client()
        .request(method, url)
        .send_json(body)
        .await
        .expect("request works");
    let bytes = res.body().limit(64 * 1024 * 1024).await.expect("body");
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (res.status().as_u16(), value)
}

pub async fn get_json(url: &str) -> (u16, Value) {
    let (status, text) = get(url).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

pub fn credentials(user: &str, pw: &str) -> Value {
    json!({"user": user, "pw": pw})
}

pub async fn register(sim: &SimHandle, devices: Value) -> (u16, Value) {
    let body = json!({"credentials": credentials(USER, PASSWORD), "devices": devices});
    send_json("POST", &sim.registration_url(), &body).await
}

pub type WsConn = actix_codec::Framed<awc::BoxedSocket, ws::Codec>;

/// Opens a WebSocket with awc; nothing sent yet.
pub async fn ws_open(sim: &SimHandle) -> WsConn {
    let (_res, conn) = client()
        .ws(sim.socket_url())
        .max_frame_size(64 * 1024 * 1024)
        .connect()
        .await
        .expect("ws handshake");
    conn
}

/// Opens a WebSocket and sends the right credentials; returns once the
/// simulator has accepted them.
pub async fn ws_login(sim: &SimHandle) -> WsConn {
    let before = sim.counters().await.sessions_authenticated;
    let mut conn = ws_open(sim).await;
    let creds = credentials(USER, PASSWORD).to_string();
    conn.send(ws::Message::Text(creds.into())).await.unwrap();
    sim.wait_for(|c| c.sessions_authenticated > before, DEADLINE)
        .await
        .expect("credentials accepted");
    conn
}

pub async fn ws_send(conn: &mut WsConn, text: &str) {
    conn.send(ws::Message::Text(text.to_owned().into()))
        .await
        .expect("send");
}

/// The next frame, failing the test after the deadline.
pub async fn ws_next(conn: &mut WsConn) -> Option<Result<ws::Frame, awc::error::WsProtocolError>> {
    tokio::time::timeout(DEADLINE, conn.next())
        .await
        .expect("a frame before the deadline")
}

/// The next text frame as JSON.
pub async fn ws_next_json(conn: &mut WsConn) -> Value {
    match ws_next(conn).await {
        Some(Ok(ws::Frame::Text(bytes))) => serde_json::from_slice(&bytes).expect("JSON text"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Polls `check` until it returns `Some`, failing after the deadline.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A change frame for `device`.
pub fn change_frame(device: &str, body: &str) -> String {
    let msg = json!({
        "device_url": device, "service_url": "temperature", "service_name": "Temperature",
        "time": "1500000000", "task_id": "",
        "protocol_parts": [{"name": "header", "value": "h"}, {"name": "body", "value": body}],
        "device_instance_id": "", "worker_id": "", "output_name": ""
    });
    format!("change:{msg}")
}
