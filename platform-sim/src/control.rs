//! The control API under `/control` (HTTP + JSON, on the platform's own
//! port) and the operations behind it, which `SimHandle` calls directly:
//! listing devices, sessions, events and counters, sending commands and
//! waiting for their responses, and injecting faults.
//!
//! Routes (see also `README.md`):
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /control/devices` | | `{"devices":[{"id","zway_type","title"}]}` |
//! | `GET /control/sessions` | | `{"sessions":[{"id","peer","opened_at_ms","authenticated","user"}]}` |
//! | `GET /control/counters` | | every counter, `{"changes":0,...}` |
//! | `GET /control/events?device=&kind=&since=&limit=` | | `{"events":[...]}` |
//! | `POST /control/reset` | | `{"reset":true}` |
//! | `POST /control/command` | `{"device_id","endpoint","endpoint_name"?,"header"?,"body"?,"wait_ms"?}` | `{"task_id","sessions"}` or `{"task_id","response"}`; 504 (saying so when the device is not registered) / 409 |
//! | `POST /control/fault/drop` | `{"mode":"close"\|"reset","code"?,"reason"?}` | `{"dropped":n}` |
//! | `POST /control/fault/refuse-credentials` | `{"refuse":bool}` | `{"refuse_credentials":bool}` |
//! | `POST /control/fault/ignore-pings` | `{"ignore":bool}` | `{"ignore_pings":bool}` |
//! | `POST /control/fault/registration` | `{"status":503,"times":2}` | `{"status","times"}` |
//! | `POST /control/fault/lookup` | `{"status":503,"times":2}` | `{"status","times"}` |
//! | `POST /control/fault/pause` | `{"ms":500}` | 202 `{"paused_ms":500}` |
//! | `POST /control/fault/raw` | `{"text":".."}` or `{"hex":"00ff"}` or `{"huge":N}` | `{"sent":n}` |

use std::{sync::Arc, time::Duration};

use actix_web::{
    error::InternalError,
    http::StatusCode,
    web::{self, Json},
    HttpResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    http::error_json,
    server::Lifecycle,
    state::{now_secs, CommandResponse, EventFilter, EventKind, SessionCmd, Shared},
    wire::{command_frame, Message},
    SimError,
};

/// Largest `wait_ms` accepted, so a typo cannot park a request for days.
const MAX_WAIT_MS: u64 = 10 * 60 * 1000;
/// Largest `huge` raw frame accepted.
const MAX_HUGE_FRAME: usize = 256 * 1024 * 1024;
/// Time given to the answer of a pause request to leave the socket before
/// the listener and every connection close.
pub(crate) const PAUSE_GRACE: Duration = Duration::from_millis(50);

/// A command for a device, sent as the JSON frame of PROTOCOL.md section 4.
/// The simulator fills in `task_id`, `time`, `device_instance_id`,
/// `worker_id` and `output_name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Local device id (`device_url`).
    pub device_id: String,
    /// Local endpoint (`service_url`).
    pub endpoint: String,
    /// Endpoint name (`service_name`); defaults to the endpoint.
    #[serde(default)]
    pub endpoint_name: Option<String>,
    /// The `header` protocol part.
    #[serde(default)]
    pub header: String,
    /// The `body` protocol part.
    #[serde(default)]
    pub body: String,
}

impl Command {
    /// A command with an empty header and body.
    pub fn new(device_id: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Command {
            device_id: device_id.into(),
            endpoint: endpoint.into(),
            ..Command::default()
        }
    }

    /// Sets the header part.
    pub fn header(mut self, header: impl Into<String>) -> Self {
        self.header = header.into();
        self
    }

    /// Sets the body part.
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    fn to_message(&self, task_id: &str) -> Message {
        Message {
            device_id: self.device_id.clone(),
            endpoint: self.endpoint.clone(),
            endpoint_name: self.endpoint_name.clone().unwrap_or_else(|| self.endpoint.clone()),
            time: now_secs().to_string(),
            task_id: task_id.to_owned(),
            instance_id: format!("sim-instance-{}", self.device_id),
            worker_id: "sim-worker-1".to_owned(),
            output_name: "sim-output".to_owned(),
            header: self.header.clone(),
            body: self.body.clone(),
        }
    }
}

/// How to drop the open sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum DropMode {
    /// A clean close: a close frame with this code, then FIN.
    Close {
        /// Close code (default 1001, going away).
        #[serde(default = "default_close_code")]
        code: u16,
        /// Close reason text.
        #[serde(default)]
        reason: String,
    },
    /// An abrupt TCP reset: `SO_LINGER` 0 and close, so the peer reads
    /// `ECONNRESET` and never sees a close frame.
    Reset,
}

fn default_close_code() -> u16 {
    1001
}

impl DropMode {
    /// A clean close with code 1001.
    pub fn close() -> Self {
        DropMode::Close {
            code: default_close_code(),
            reason: String::new(),
        }
    }
}

/// A frame to send to the connector as it is, to test its bad-frame
/// handling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawFrame {
    /// A text frame with exactly this text (e.g. malformed JSON).
    Text(String),
    /// A binary frame; in JSON given as hex: `{"hex":"00ff"}`.
    #[serde(rename = "hex", with = "hex")]
    Binary(Vec<u8>),
    /// A text frame of exactly this many bytes holding a JSON object
    /// (`{"pad":"xxxx..."}`), to test the connector's size limit.
    Huge(usize),
}

impl RawFrame {
    fn to_cmd(&self) -> SessionCmd {
        match self {
            RawFrame::Text(text) => SessionCmd::Text(text.clone()),
            RawFrame::Binary(bytes) => SessionCmd::Binary(bytes::Bytes::from(bytes.clone())),
            RawFrame::Huge(n) => SessionCmd::Text(huge_text(*n)),
        }
    }
}

/// A JSON object of exactly `n` bytes (or `n` 'x's when `n` is too small
/// for one).
pub(crate) fn huge_text(n: usize) -> String {
    const FRAME: usize = r#"{"pad":""}"#.len();
    if n < FRAME {
        return "x".repeat(n);
    }
    let mut text = String::with_capacity(n);
    text.push_str(r#"{"pad":""#);
    text.extend(std::iter::repeat_n('x', n - FRAME));
    text.push_str(r#""}"#);
    text
}

mod hex {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&text)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        super::decode_hex(&text).ok_or_else(|| D::Error::custom("hex must be pairs of 0-9a-f"))
    }
}

/// Decodes a hex string (white space allowed between bytes).
pub(crate) fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(pair, 16).ok()
        })
        .collect()
}

// ---- operations shared by the routes and `SimHandle` ----

/// Sends `command` to every authenticated session; returns its task id.
pub(crate) fn send_command(shared: &Shared, command: &Command) -> Result<String, SimError> {
    let task_id = shared.next_task_id();
    send_with_task_id(shared, command, &task_id)?;
    Ok(task_id)
}

fn send_with_task_id(shared: &Shared, command: &Command, task_id: &str) -> Result<usize, SimError> {
    let frame = command_frame(&command.to_message(task_id));
    let timed = shared.round_trips.is_on().then(|| task_id.to_owned());
    let sent = shared.broadcast(|| SessionCmd::Command {
        frame: frame.clone(),
        timed: timed.clone(),
    });
    if sent == 0 {
        return Err(SimError::NoSession);
    }
    shared
        .counters
        .commands_sent
        .fetch_add(sent as u64, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(task_id, device_id = %command.device_id, endpoint = %command.endpoint, sessions = sent, "command_sent");
    Ok(sent)
}

/// Sends `command` and waits up to `timeout` for the `response:` with its
/// task id.
pub(crate) async fn command_and_wait(
    shared: &Shared,
    command: &Command,
    timeout: Duration,
) -> Result<CommandResponse, SimError> {
    let task_id = shared.next_task_id();
    // The waiter goes in first: a fast connector may answer before
    // `send` returns.
    let waiter = shared.add_waiter(&task_id);
    if let Err(error) = send_with_task_id(shared, command, &task_id) {
        shared.remove_waiter(&task_id);
        return Err(error);
    }
    match tokio::time::timeout(timeout, waiter).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(_)) => Err(SimError::Stopped),
        Err(_) => {
            shared.remove_waiter(&task_id);
            // Checked now, not at send time: a device may register while
            // its command waits.
            if !shared.is_registered(&command.device_id) {
                tracing::warn!(%task_id, device_id = %command.device_id, "command_timed_out_device_not_registered");
                return Err(SimError::NotRegistered {
                    task_id,
                    device_id: command.device_id.clone(),
                });
            }
            tracing::warn!(%task_id, "command_timed_out");
            Err(SimError::Timeout { task_id })
        }
    }
}

/// Drops every open session (authenticated or not) the way `mode` says.
pub(crate) fn drop_sessions(shared: &Shared, mode: &DropMode) -> usize {
    let make = || match mode {
        DropMode::Close { code, reason } => SessionCmd::Close {
            code: *code,
            reason: reason.clone(),
        },
        DropMode::Reset => SessionCmd::Reset,
    };
    let n = shared.broadcast_all(make);
    shared
        .counters
        .sessions_dropped
        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(mode = ?mode, sessions = n, "sessions_dropped");
    n
}

/// Sends a raw frame to every authenticated session.
pub(crate) fn send_raw(shared: &Shared, frame: &RawFrame) -> Result<usize, SimError> {
    let n = shared.broadcast(|| frame.to_cmd());
    if n == 0 {
        return Err(SimError::NoSession);
    }
    shared
        .counters
        .raw_frames_sent
        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(sessions = n, "raw_frame_sent");
    Ok(n)
}

// ---- routes ----

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    let json_errors = web::JsonConfig::default().error_handler(|error, _req| {
        let answer = error_json(StatusCode::BAD_REQUEST, &format!("bad JSON request body: {error}"));
        InternalError::from_response(error, answer).into()
    });
    let query_errors = web::QueryConfig::default().error_handler(|error, _req| {
        let answer = error_json(StatusCode::BAD_REQUEST, &format!("bad query: {error}"));
        InternalError::from_response(error, answer).into()
    });
    cfg.app_data(json_errors)
        .app_data(query_errors)
        .route("/devices", web::get().to(devices))
        .route("/sessions", web::get().to(sessions))
        .route("/counters", web::get().to(counters))
        .route("/events", web::get().to(events))
        .route("/reset", web::post().to(reset))
        .route("/command", web::post().to(command))
        .route("/fault/drop", web::post().to(fault_drop))
        .route("/fault/refuse-credentials", web::post().to(fault_refuse_credentials))
        .route("/fault/ignore-pings", web::post().to(fault_ignore_pings))
        .route("/fault/registration", web::post().to(fault_registration))
        .route("/fault/lookup", web::post().to(fault_lookup))
        .route("/fault/pause", web::post().to(fault_pause))
        .route("/fault/raw", web::post().to(fault_raw))
        .default_service(web::to(|| async {
            error_json(StatusCode::NOT_FOUND, "no such control route; see platform-sim --help")
        }));
}

type Sim = web::Data<Arc<Shared>>;

async fn devices(shared: Sim) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "devices": shared.devices() }))
}

async fn sessions(shared: Sim) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "sessions": shared.sessions() }))
}

async fn counters(shared: Sim) -> HttpResponse {
    HttpResponse::Ok().json(shared.counters.snapshot())
}

#[derive(Debug, Deserialize)]
struct EventQuery {
    device: Option<String>,
    kind: Option<EventKind>,
    since: Option<u64>,
    limit: Option<usize>,
}

async fn events(shared: Sim, query: web::Query<EventQuery>) -> HttpResponse {
    let query = query.into_inner();
    let filter = EventFilter {
        device: query.device,
        kind: query.kind,
        since: query.since,
        limit: query.limit,
    };
    HttpResponse::Ok().json(json!({ "events": shared.events(&filter) }))
}

async fn reset(shared: Sim) -> HttpResponse {
    shared.reset();
    tracing::info!("state_reset");
    HttpResponse::Ok().json(json!({ "reset": true }))
}

#[derive(Debug, Deserialize)]
struct CommandRequest {
    #[serde(flatten)]
    command: Command,
    wait_ms: Option<u64>,
}

async fn command(shared: Sim, request: Json<CommandRequest>) -> HttpResponse {
    let CommandRequest { command, wait_ms } = request.into_inner();
    if command.device_id.is_empty() || command.endpoint.is_empty() {
        return error_json(StatusCode::BAD_REQUEST, "device_id and endpoint are required");
    }
    match wait_ms {
        None => match send_command(&shared, &command) {
            Ok(task_id) => HttpResponse::Ok().json(json!({ "task_id": task_id })),
            Err(error) => sim_error(error),
        },
        Some(ms) if ms > MAX_WAIT_MS => error_json(
            StatusCode::BAD_REQUEST,
            &format!("wait_ms must be at most {MAX_WAIT_MS}"),
        ),
        Some(ms) => match command_and_wait(&shared, &command, Duration::from_millis(ms)).await {
            Ok(response) => HttpResponse::Ok().json(json!({
                "task_id": response.task_id,
                "response": response.raw,
            })),
            Err(error) => sim_error(error),
        },
    }
}

/// The HTTP answer for a failed operation.
fn sim_error(error: SimError) -> HttpResponse {
    match error {
        SimError::NoSession => error_json(StatusCode::CONFLICT, &error.to_string()),
        SimError::Timeout { ref task_id } | SimError::NotRegistered { ref task_id, .. } => {
            HttpResponse::GatewayTimeout().json(json!({
                "error": error.to_string(),
                "task_id": task_id,
            }))
        }
        other => error_json(StatusCode::SERVICE_UNAVAILABLE, &other.to_string()),
    }
}

async fn fault_drop(shared: Sim, mode: Json<DropMode>) -> HttpResponse {
    let n = drop_sessions(&shared, &mode);
    HttpResponse::Ok().json(json!({ "dropped": n }))
}

#[derive(Debug, Deserialize)]
struct Refuse {
    refuse: bool,
}

async fn fault_refuse_credentials(shared: Sim, body: Json<Refuse>) -> HttpResponse {
    shared
        .faults
        .refuse_credentials
        .store(body.refuse, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(refuse = body.refuse, "refuse_credentials_set");
    HttpResponse::Ok().json(json!({ "refuse_credentials": body.refuse }))
}

#[derive(Debug, Deserialize)]
struct Ignore {
    ignore: bool,
}

async fn fault_ignore_pings(shared: Sim, body: Json<Ignore>) -> HttpResponse {
    shared
        .faults
        .ignore_pings
        .store(body.ignore, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(ignore = body.ignore, "ignore_pings_set");
    HttpResponse::Ok().json(json!({ "ignore_pings": body.ignore }))
}

#[derive(Debug, Deserialize)]
struct FailPlanRequest {
    status: u16,
    times: u32,
}

/// The 400 answer for a status that is no HTTP status code.
fn bad_status(status: u16) -> Option<HttpResponse> {
    (!(100..=999).contains(&status))
        .then(|| error_json(StatusCode::BAD_REQUEST, "status must be an HTTP status code (100-999)"))
}

async fn fault_registration(shared: Sim, plan: Json<FailPlanRequest>) -> HttpResponse {
    if let Some(answer) = bad_status(plan.status) {
        return answer;
    }
    shared.faults.set_registration(plan.status, plan.times);
    tracing::info!(status = plan.status, times = plan.times, "registration_failures_set");
    HttpResponse::Ok().json(json!({ "status": plan.status, "times": plan.times }))
}

async fn fault_lookup(shared: Sim, plan: Json<FailPlanRequest>) -> HttpResponse {
    if let Some(answer) = bad_status(plan.status) {
        return answer;
    }
    shared.faults.set_lookup(plan.status, plan.times);
    tracing::info!(status = plan.status, times = plan.times, "lookup_failures_set");
    HttpResponse::Ok().json(json!({ "status": plan.status, "times": plan.times }))
}

#[derive(Debug, Deserialize)]
struct PauseRequest {
    ms: u64,
}

async fn fault_pause(shared: Sim, body: Json<PauseRequest>) -> HttpResponse {
    if body.ms > MAX_WAIT_MS {
        return error_json(StatusCode::BAD_REQUEST, &format!("ms must be at most {MAX_WAIT_MS}"));
    }
    let request = Lifecycle::Pause {
        grace: PAUSE_GRACE,
        duration: Duration::from_millis(body.ms),
        done: None,
    };
    if shared.lifecycle.send(request).is_err() {
        return sim_error(SimError::Stopped);
    }
    HttpResponse::Accepted().json(json!({ "paused_ms": body.ms }))
}

async fn fault_raw(shared: Sim, frame: Json<RawFrame>) -> HttpResponse {
    if let RawFrame::Huge(n) = *frame {
        if n > MAX_HUGE_FRAME {
            return error_json(
                StatusCode::BAD_REQUEST,
                &format!("huge must be at most {MAX_HUGE_FRAME} bytes"),
            );
        }
    }
    match send_raw(&shared, &frame) {
        Ok(n) => HttpResponse::Ok().json(json!({ "sent": n })),
        Err(error) => sim_error(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_text_has_the_exact_size_and_is_json() {
        for n in [0, 5, 10, 11, 1000] {
            let text = huge_text(n);
            assert_eq!(text.len(), n);
            if n >= 10 {
                assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
            }
        }
    }

    #[test]
    fn raw_frame_json_forms() {
        let table = [
            (r#"{"text":"{bad"}"#, RawFrame::Text("{bad".into())),
            (r#"{"hex":"00ff10"}"#, RawFrame::Binary(vec![0, 255, 16])),
            (r#"{"huge":42}"#, RawFrame::Huge(42)),
        ];
        for (json, want) in table {
            let got: RawFrame = serde_json::from_str(json).unwrap();
            assert_eq!(got, want, "{json}");
        }
        assert!(serde_json::from_str::<RawFrame>(r#"{"hex":"0"}"#).is_err());
    }

    #[test]
    fn drop_mode_json_forms() {
        let close: DropMode = serde_json::from_str(r#"{"mode":"close"}"#).unwrap();
        assert_eq!(close, DropMode::close());
        let reset: DropMode = serde_json::from_str(r#"{"mode":"reset"}"#).unwrap();
        assert_eq!(reset, DropMode::Reset);
    }

    #[test]
    fn command_message_has_generated_fields() {
        let m = Command::new("d", "e").body("b").to_message("t1");
        assert_eq!(m.task_id, "t1");
        assert_eq!(m.endpoint_name, "e");
        assert!(!m.time.is_empty() && m.time.bytes().all(|b| b.is_ascii_digit()));
        assert!(!m.worker_id.is_empty() && !m.instance_id.is_empty() && !m.output_name.is_empty());
    }
}
