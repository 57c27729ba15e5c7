//! One connector WebSocket session (PROTOCOL.md sections 3 to 5): the
//! credentials handshake, then frames recorded and counted, pings answered,
//! and commands, raw frames and drops from the control side carried out.
//!
//! Each session is a task on the server's single worker. It owns the socket
//! through actix-ws and listens on an unbounded channel for
//! [`SessionCmd`]s; the channel's sender sits in the shared session table.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, ProtocolError};
use tokio::sync::mpsc;

use crate::{
    reset::{AbortHandle, AbortableBody, ConnFd, SocketRef},
    state::{CommandResponse, EventKind, SessionCmd, Shared},
    wire::{classify, excerpt, Credentials, FrameKind, Message},
};

/// How much of a bad frame goes into its log line.
const EXCERPT_CHARS: usize = 80;

/// `GET /ws`: upgrades to a WebSocket and starts the session task.
pub(crate) async fn ws_handler(
    req: HttpRequest,
    body: web::Payload,
    shared: web::Data<Arc<Shared>>,
) -> actix_web::Result<HttpResponse> {
    let body = end_is_not_an_error(&req, body).await?;
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let max = shared.config.max_frame_size;
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    let socket = SocketRef::from_conn(req.conn_data::<ConnFd>());
    let peer = req.peer_addr();
    let (response, abort) = wrap_response(response);
    let shared = Arc::clone(shared.get_ref());
    actix_web::rt::spawn(async move {
        run(shared, session, stream, abort, socket, peer).await;
    });
    Ok(response)
}

/// On an upgraded connection the peer closing its side is the normal end of
/// the byte stream, but actix-http reports it as an `Incomplete` payload
/// error, and actix-ws returns that error at once, dropping the frames it
/// has buffered but not decoded yet. Ending the stream instead lets every
/// frame that arrived be decoded first.
async fn end_is_not_an_error(req: &HttpRequest, body: web::Payload) -> actix_web::Result<web::Payload> {
    use actix_web::error::PayloadError;
    use actix_web::FromRequest;
    use futures_util::StreamExt;

    let until_end = body.take_while(|item| std::future::ready(!matches!(item, Err(PayloadError::Incomplete(_)))));
    type Chunks = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, PayloadError>>>>;
    let chunks: Chunks = Box::pin(until_end);
    let mut payload = actix_web::dev::Payload::Stream { payload: chunks };
    web::Payload::from_request(req, &mut payload).await
}

fn wrap_response(response: HttpResponse) -> (HttpResponse, AbortHandle) {
    let mut handle = None;
    let response = response
        .map_body(|_, body| {
            let (body, abort) = AbortableBody::wrap(body);
            handle = Some(abort);
            body
        })
        .map_into_boxed_body();
    (response, handle.expect("map_body calls its closure once"))
}

/// Removes the session from the table however the task ends, including
/// when a stop of the server drops it mid-await.
struct SessionGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.shared.close_session(self.id);
        tracing::info!(session_id = self.id, "session_closed");
    }
}

/// How a session's loop ended, i.e. what is left to do with the socket.
enum End {
    /// Send a close frame with this code and reason.
    Close(CloseCode, String),
    /// The peer closed or vanished; echo its close if it sent one.
    PeerClosed(Option<CloseReason>),
    /// Abrupt reset: no close frame.
    Reset,
}

async fn run(
    shared: Arc<Shared>,
    session: actix_ws::Session,
    mut stream: AggregatedMessageStream,
    mut abort: AbortHandle,
    socket: SocketRef,
    peer: Option<SocketAddr>,
) {
    let (id, mut commands) = shared.open_session(peer);
    let _guard = SessionGuard {
        shared: Arc::clone(&shared),
        id,
    };
    tracing::info!(session_id = id, peer = ?peer, "session_opened");
    let mut session = session;

    let (end, authenticated) = match handshake(&shared, id, &mut session, &mut stream, &mut commands).await {
        Ok(()) => (
            frames(&shared, id, &mut session, &mut stream, &mut commands).await,
            true,
        ),
        Err(end) => (end, false),
    };
    count_unsent(&shared, id, &mut commands);

    match end {
        End::Close(code, reason) => {
            let reason = CloseReason {
                code,
                description: Some(reason),
            };
            // A clone keeps the response body, and so the connection, open
            // while the peer's last frames and close reply are read.
            let open = session.clone();
            let _ = session.close(Some(reason)).await;
            read_until_close_reply(&shared, id, &mut stream, authenticated).await;
            drop(open);
        }
        End::PeerClosed(reason) => {
            let _ = session.close(reason).await;
        }
        End::Reset => {
            if socket.linger_zero() {
                tracing::info!(session_id = id, "session_reset");
            } else {
                tracing::warn!(session_id = id, "session_reset_without_linger");
            }
            abort.abort();
        }
    }
}

/// Counts the commands still queued for a session that ends: they are never
/// written, and a test comparing responses with commands sent must know.
/// Closing the queue first means none can be added after the count.
fn count_unsent(shared: &Shared, id: u64, commands: &mut mpsc::UnboundedReceiver<SessionCmd>) {
    commands.close();
    let mut unsent = 0;
    while let Ok(command) = commands.try_recv() {
        if matches!(command, SessionCmd::Command { .. }) {
            unsent += 1;
        }
    }
    if unsent > 0 {
        shared.counters.commands_unsent.fetch_add(unsent, Ordering::Relaxed);
        tracing::info!(session_id = id, commands = unsent, "commands_unsent");
    }
}

/// How long a session that sent a close frame waits for the peer's reply.
const CLOSE_REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// After sending a close frame, goes on reading until the peer's close reply
/// (RFC 6455 section 7.1.1), the end of the connection or
/// [`CLOSE_REPLY_TIMEOUT`]. Frames the peer wrote before it saw our close
/// are processed like any other, as a real platform's would be: a simulator
/// that stopped reading at its own close would lose them.
async fn read_until_close_reply(shared: &Shared, id: u64, stream: &mut AggregatedMessageStream, authenticated: bool) {
    let deadline = tokio::time::Instant::now() + CLOSE_REPLY_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, stream.recv()).await {
            Err(_) => {
                tracing::info!(session_id = id, "close_reply_timeout");
                return;
            }
            Ok(None | Some(Err(_))) => return,
            Ok(Some(Ok(AggregatedMessage::Close(_)))) => {
                shared.bump(&shared.counters.close_frames);
                return;
            }
            // Not authenticated: the session was refused, its frames are not events.
            Ok(Some(Ok(AggregatedMessage::Text(text)))) if authenticated => on_text(shared, id, &text),
            // Nothing is answered after our close.
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Waits for the credentials frame. Pings before it are answered; any
/// other first frame, wrong credentials, the refuse switch or the time-out
/// end the session with 1008.
async fn handshake(
    shared: &Shared,
    id: u64,
    session: &mut actix_ws::Session,
    stream: &mut AggregatedMessageStream,
    commands: &mut mpsc::UnboundedReceiver<SessionCmd>,
) -> Result<(), End> {
    let deadline = tokio::time::Instant::now() + shared.config.credentials_timeout;
    loop {
        let next = tokio::select! {
            biased;
            next = tokio::time::timeout_at(deadline, stream.recv()) => next,
            // Only drops reach a session that has not authenticated yet.
            command = commands.recv() => match command {
                Some(SessionCmd::Close { code, reason }) => {
                    return Err(End::Close(CloseCode::from(code), reason));
                }
                Some(SessionCmd::Reset) => return Err(End::Reset),
                Some(SessionCmd::Text(_) | SessionCmd::Command { .. } | SessionCmd::Binary(_)) => continue,
                None => return Err(End::Close(CloseCode::Away, "simulator stopping".to_owned())),
            },
        };
        let frame = match next {
            Err(_) => return Err(refuse(shared, id, "no credentials frame in time")),
            Ok(None) => return Err(End::PeerClosed(None)),
            Ok(Some(Err(error))) => return Err(protocol_error(shared, id, error)),
            Ok(Some(Ok(frame))) => frame,
        };
        match frame {
            AggregatedMessage::Ping(bytes) => on_ping(shared, session, &bytes).await,
            AggregatedMessage::Pong(_) => shared.bump(&shared.counters.pongs),
            AggregatedMessage::Close(reason) => {
                shared.bump(&shared.counters.close_frames);
                return Err(End::PeerClosed(reason));
            }
            AggregatedMessage::Binary(_) => {
                shared.bump(&shared.counters.binary);
                shared.bump(&shared.counters.bad_frames);
                return Err(refuse(shared, id, "first frame is binary"));
            }
            AggregatedMessage::Text(text) => {
                shared.bump(&shared.counters.credentials);
                let Some(credentials) = Credentials::from_frame(&text) else {
                    shared.bump(&shared.counters.bad_frames);
                    return Err(refuse(shared, id, "first frame is not a credentials object"));
                };
                if shared.faults.refuse_credentials.load(Ordering::Relaxed) {
                    return Err(refuse(shared, id, "refusing all credentials (fault)"));
                }
                if credentials.user != shared.config.user || credentials.pw != shared.config.password {
                    return Err(refuse(shared, id, "wrong user or password"));
                }
                shared.authenticate(id, &credentials.user);
                tracing::info!(session_id = id, user = %credentials.user, "session_authenticated");
                return Ok(());
            }
        }
    }
}

fn refuse(shared: &Shared, id: u64, reason: &str) -> End {
    shared.bump(&shared.counters.sessions_refused);
    tracing::warn!(session_id = id, reason, "credentials_refused");
    End::Close(CloseCode::Policy, "credentials refused".to_owned())
}

fn protocol_error(shared: &Shared, id: u64, error: ProtocolError) -> End {
    shared.bump(&shared.counters.bad_frames);
    match error {
        ProtocolError::Overflow => {
            tracing::warn!(session_id = id, "frame_too_big");
            End::Close(CloseCode::Size, "frame too big".to_owned())
        }
        ProtocolError::Io(error) => {
            tracing::info!(session_id = id, %error, "session_io_error");
            End::PeerClosed(None)
        }
        error => {
            tracing::warn!(session_id = id, %error, "websocket_protocol_error");
            End::Close(CloseCode::Protocol, error.to_string())
        }
    }
}

async fn on_ping(shared: &Shared, session: &mut actix_ws::Session, bytes: &[u8]) {
    shared.bump(&shared.counters.pings);
    if !shared.faults.ignore_pings.load(Ordering::Relaxed) {
        let _ = session.pong(bytes).await;
    }
}

/// The main loop after the handshake. Incoming frames are polled first
/// (`biased`), so under a flood the control side waits at most until the
/// read buffer is drained.
async fn frames(
    shared: &Shared,
    id: u64,
    session: &mut actix_ws::Session,
    stream: &mut AggregatedMessageStream,
    commands: &mut mpsc::UnboundedReceiver<SessionCmd>,
) -> End {
    loop {
        tokio::select! {
            biased;
            frame = stream.recv() => match frame {
                None => return End::PeerClosed(None),
                Some(Err(error)) => return protocol_error(shared, id, error),
                Some(Ok(AggregatedMessage::Text(text))) => on_text(shared, id, &text),
                Some(Ok(AggregatedMessage::Binary(bytes))) => {
                    shared.bump(&shared.counters.binary);
                    shared.bump(&shared.counters.bad_frames);
                    tracing::warn!(session_id = id, len = bytes.len(), "bad_frame_binary");
                }
                Some(Ok(AggregatedMessage::Ping(bytes))) => on_ping(shared, session, &bytes).await,
                Some(Ok(AggregatedMessage::Pong(_))) => shared.bump(&shared.counters.pongs),
                Some(Ok(AggregatedMessage::Close(reason))) => {
                    shared.bump(&shared.counters.close_frames);
                    tracing::info!(session_id = id, reason = ?reason, "peer_close_frame");
                    return End::PeerClosed(reason);
                }
            },
            command = commands.recv() => match command {
                // The table entry is gone: the simulator is shutting down.
                None => return End::Close(CloseCode::Away, "simulator stopping".to_owned()),
                Some(SessionCmd::Text(text) | SessionCmd::Command { frame: text, timed: None }) => {
                    if session.text(text).await.is_err() {
                        return End::PeerClosed(None);
                    }
                }
                Some(SessionCmd::Command {
                    frame,
                    timed: Some(task_id),
                }) => {
                    shared.round_trips.written(task_id);
                    if session.text(frame).await.is_err() {
                        return End::PeerClosed(None);
                    }
                }
                Some(SessionCmd::Binary(bytes)) => {
                    if session.binary(bytes).await.is_err() {
                        return End::PeerClosed(None);
                    }
                }
                Some(SessionCmd::Close { code, reason }) => {
                    return End::Close(CloseCode::from(code), reason);
                }
                Some(SessionCmd::Reset) => return End::Reset,
            },
        }
    }
}

/// Handles one text frame after the handshake. This is the hot path of the
/// throughput benchmark: in counting-only mode a `change:` costs a prefix
/// check and one relaxed atomic add.
fn on_text(shared: &Shared, id: u64, text: &str) {
    let counters = &shared.counters;
    shared.bump(&counters.text);
    match classify(text) {
        FrameKind::Change(json) => {
            shared.bump(&counters.changes);
            if shared.config.record_events {
                match Message::from_json(json) {
                    Ok((message, _)) => shared.record(EventKind::Change, id, message),
                    Err(error) => bad_frame(shared, id, text, &error.to_string()),
                }
            }
        }
        FrameKind::Response(json) => {
            let parsed = Message::from_json(json);
            if let (Ok((message, _)), true) = (&parsed, shared.round_trips.is_on()) {
                // Before the count: whoever waits for the count to take the
                // samples must find this one among them.
                shared.round_trips.answered(&message.task_id);
            }
            shared.bump(&counters.responses);
            match parsed {
                Ok((message, raw)) => {
                    if shared.config.record_events {
                        shared.record(EventKind::Response, id, message.clone());
                    }
                    let task_id = message.task_id.clone();
                    if task_id.is_empty() {
                        tracing::warn!(session_id = id, "response_without_task_id");
                    } else if shared.deliver(CommandResponse { task_id, message, raw }) {
                        shared.bump(&counters.responses_matched);
                    }
                }
                Err(error) => bad_frame(shared, id, text, &error.to_string()),
            }
        }
        FrameKind::Update => shared.bump(&counters.updates),
        FrameKind::Unknown => bad_frame(shared, id, text, "unknown frame prefix"),
    }
}

fn bad_frame(shared: &Shared, id: u64, text: &str, error: &str) {
    shared.bump(&shared.counters.bad_frames);
    tracing::warn!(
        session_id = id,
        error,
        excerpt = excerpt(text, EXCERPT_CHARS),
        len = text.len(),
        "bad_frame"
    );
}
