//! [`ConnectionActor`] owns the platform link (PROTOCOL.md sections 2, 3 and 7):
//! lookup, WebSocket connect, the credentials handshake, ping/pong, reconnect
//! with back-off, and the writer that drains the outgoing buffer.
//!
//! The handshake sends the credentials frame and then a ping: the platform
//! reads frames in order, so its pong proves the credentials were read and not
//! refused (a refusal is a close 1008 first). Only then is the buffer drained,
//! so nothing is written into a session that is about to be refused.
//!
//! # What reaches the platform
//! The protocol has no acknowledgements, so a frame counts as sent once the
//! writer has flushed it to the socket; a batch not yet flushed when the
//! session dies goes back to the front of the buffer. Hence:
//! - **The platform closes the session** (close frame): the writer finishes
//!   the batch it is writing, then replies with its own close; the platform
//!   reads until that reply (RFC 6455, 7.1.1). Every accepted frame arrives
//!   exactly once, in order, whatever was in flight.
//! - **The connection is reset or vanishes** (RST, a platform that stops
//!   listening and drops its connections, a dead peer found by the ping):
//!   frames already flushed to the kernel when it happened may be lost, and
//!   the one batch whose write failed (at most `BATCH_FRAMES` frames) is sent
//!   again, so part of it may arrive twice. Frames accepted while the link is
//!   down, and any not yet taken by the writer, arrive exactly once, in order,
//!   and no frame ever arrives for the first time out of order.
//! - **The connector is killed**: see [`crate::outbox`] (in memory: lost;
//!   with `platform.buffer.path`: kept on disk and sent after the restart).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use awc::error::WsProtocolError;
use awc::ws::{self, CloseCode, CloseReason};
use bytestring::ByteString;
use connector_core::backoff::Backoff;
use connector_core::codec::{self, FrameError, FrameKind};
use connector_core::http::HttpClient;
use connector_core::lookup::{self, SocketUrl};
use connector_core::tls::TlsSettings;
use connector_core::Credentials;
use futures_util::stream::{SplitSink, StreamExt};
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::frames::{FrameCodec, Inbound};
use crate::lifecycle::{Events, Lifecycle, Stats};
use crate::outbox::{Frame, OutboxHandle};
use crate::registry::{IncomingCommand, LinkDown, LinkUp, RegistryActor};

/// A session that stayed up this long resets the back-off: the platform was
/// healthy, so the next outage starts again from the initial delay.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// The longest the platform may take to answer the handshake ping; also the
/// time allowed to open the WebSocket (the shared client's default time-out).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames and bytes per socket write: enough to amortise the flush, small
/// enough that a lost link has little in flight to give back.
const BATCH_FRAMES: usize = 512;
const BATCH_BYTES: usize = 256 * 1024;

/// What the connection needs to know, taken from the checked config.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    pub lookup_url: String,
    /// Forces `wss://` (and `https://` for registration) whatever the lookup says.
    pub https: bool,
    /// What TLS trusts (the config's `ca_file`). The actor builds its HTTP
    /// client for lookup and the WebSocket from it on its own thread, since
    /// awc clients are not `Send`; so the settings are.
    pub tls: TlsSettings,
    pub credentials: Credentials,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub max_frame_bytes: usize,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

type WsSink = SplitSink<actix_codec::Framed<awc::BoxedSocket, FrameCodec>, ws::Message>;

/// What the actor tells the session's writer.
enum WriterCmd {
    /// A control frame (ping, pong), sent ahead of the buffer.
    Control(ws::Message),
    /// The handshake succeeded: drain the buffer from now on.
    StartDraining,
    /// Send a close frame and stop.
    Close(CloseReason),
}

enum State {
    /// Waiting out a back-off delay, or not started.
    Idle,
    /// Lookup and WebSocket connect under way.
    Connecting,
    /// Credentials sent; waiting for the handshake pong.
    Handshaking(Session),
    Up(Session),
    /// Shutting down: the close frame is being sent.
    Closing(Session),
    /// Shut down for good.
    Closed,
}

struct Session {
    id: u64,
    url: SocketUrl,
    writer: mpsc::UnboundedSender<WriterCmd>,
    reader: SpawnHandle,
    writer_task: SpawnHandle,
    /// Frames the writer took from the buffer and has not yet flushed; given
    /// back to the buffer if the session dies under it.
    in_flight: Rc<RefCell<Vec<Frame>>>,
    opened: Instant,
    last_pong: Instant,
    /// The text of a message that arrives in several frames.
    partial: Option<Vec<u8>>,
    /// Set when the platform closed the session: why, for the log once the
    /// writer has sent the close reply and ended.
    closing: Option<String>,
}

/// An item of the socket's read half, tagged with its session so that a late
/// item of a session already given up is ignored.
struct Incoming(u64, Result<Inbound, WsProtocolError>);

impl Message for Incoming {
    type Result = ();
}

/// Flushes the buffer while the link is up (for at most `flush_timeout`),
/// closes the session with a normal close, and stops the actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub flush_timeout: Duration,
    /// The buffer passes to a new link (a reload changed the platform
    /// settings, and flushes nothing first): what is unsent is not missing,
    /// only waiting for the successor, so it is not reported as lost.
    pub handover: bool,
}

/// How often a shutdown checks whether the buffer has drained.
const FLUSH_POLL: Duration = Duration::from_millis(10);
/// How long the close frame may take to go out before the actor stops anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Owns the platform link; see the module docs.
pub struct ConnectionActor {
    settings: LinkSettings,
    /// Built from `settings.tls` for lookup and the WebSocket.
    http: HttpClient,
    outbox: OutboxHandle,
    events: Events,
    registry: Addr<RegistryActor>,
    backoff: Backoff,
    state: State,
    next_session: u64,
    /// Answered once a shutdown has finished.
    shutdown_done: Vec<tokio::sync::oneshot::Sender<()>>,
    /// The shutdown hands the buffer to a successor (see [`Shutdown::handover`]).
    handover: bool,
}

impl ConnectionActor {
    pub fn new(settings: LinkSettings, outbox: OutboxHandle, events: Events, registry: Addr<RegistryActor>) -> Self {
        let backoff = Backoff::new(settings.backoff_initial, settings.backoff_max);
        ConnectionActor {
            http: HttpClient::from_awc(settings.tls.awc_client(HANDSHAKE_TIMEOUT)),
            settings,
            outbox,
            events,
            registry,
            backoff,
            state: State::Idle,
            next_session: 0,
            shutdown_done: Vec::new(),
            handover: false,
        }
    }

    fn stats(&self) -> &Stats {
        &self.events.stats
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.state, State::Idle) || !self.shutdown_done.is_empty() {
            return;
        }
        self.state = State::Connecting;
        let settings = self.settings.clone();
        let http = self.http.clone();
        debug!(lookup_url = %connector_core::http::redact_userinfo(&settings.lookup_url), "looking up the platform socket");
        let attempt = async move {
            let url = lookup_socket(&http, &settings).await?;
            let (_response, framed) = http
                .awc()
                .ws(url.ws_url())
                .max_frame_size(settings.max_frame_bytes)
                .connect()
                .await
                .map_err(|e| format!("WebSocket connect to {url} failed: {e}"))?;
            Ok::<_, String>((url, framed))
        };
        ctx.spawn(attempt.into_actor(self).map(|result, act, ctx| match result {
            Ok((url, framed)) => act.begin_handshake(url, framed, ctx),
            Err(reason) => {
                Stats::bump(&act.stats().connect_failures);
                act.retry_later(reason, ctx)
            }
        }));
    }

    fn begin_handshake(
        &mut self,
        url: SocketUrl,
        framed: actix_codec::Framed<awc::BoxedSocket, ws::Codec>,
        ctx: &mut Context<Self>,
    ) {
        if !matches!(self.state, State::Connecting) {
            return; // shut down meanwhile
        }
        self.next_session += 1;
        let id = self.next_session;
        // Our codec reads the same bytes but skips oversized frames instead
        // of buffering them whole (see crate::frames); writes are unchanged.
        let framed = framed.replace_codec(FrameCodec::new(self.settings.max_frame_bytes));
        let (sink, stream) = framed.split();
        let reader = ctx.add_stream(stream.map(move |item| Incoming(id, item)));
        let (tx, rx) = mpsc::unbounded_channel();
        let in_flight = Rc::new(RefCell::new(Vec::new()));
        let credentials = codec::encode_credentials(&self.settings.credentials);
        let writer = Writer {
            sink,
            commands: rx,
            outbox: self.outbox.clone(),
            in_flight: in_flight.clone(),
            stats: self.events.stats.clone(),
        };
        let writer_task = ctx.spawn(writer.run(credentials).into_actor(self).map(move |result, act, ctx| {
            if matches!(&act.state, State::Closing(s) if s.id == id) {
                // Our close frame is out; the reader waits for the reply.
                if result.is_err() {
                    act.finish_shutdown(ctx);
                }
                return;
            }
            // The writer ends on a write error, or after answering a close.
            let reason = match (result, act.session(id).and_then(|s| s.closing.take())) {
                (_, Some(closing)) => closing,
                (Err(e), None) => e,
                (Ok(()), None) => "the session's writer stopped".to_owned(),
            };
            act.link_lost(id, reason, ctx);
        }));
        let now = Instant::now();
        self.state = State::Handshaking(Session {
            id,
            url,
            writer: tx,
            reader,
            writer_task,
            in_flight,
            opened: now,
            last_pong: now,
            partial: None,
            closing: None,
        });
        let timeout = HANDSHAKE_TIMEOUT.min(self.settings.pong_timeout);
        ctx.run_later(timeout, move |act, ctx| {
            if matches!(&act.state, State::Handshaking(s) if s.id == id) {
                act.link_lost(id, format!("no answer to the handshake within {timeout:?}"), ctx);
            }
        });
    }

    fn session(&mut self, id: u64) -> Option<&mut Session> {
        match &mut self.state {
            State::Handshaking(s) | State::Up(s) if s.id == id => Some(s),
            _ => None,
        }
    }

    fn handshake_done(&mut self) {
        let State::Handshaking(session) = std::mem::replace(&mut self.state, State::Idle) else {
            return;
        };
        let _ = session.writer.send(WriterCmd::StartDraining);
        let url = session.url.clone();
        info!(url = %url, "connected to the platform");
        Stats::bump(&self.stats().sessions);
        self.stats().set_session_up(true);
        self.state = State::Up(session);
        self.events.publish(Lifecycle::Connected { url: url.ws_url() });
        self.registry.do_send(LinkUp {
            http_base: url.http_base(),
        });
    }

    /// Ends the session `id` (a late report about an older one is ignored),
    /// gives its unflushed frames back to the buffer and schedules a retry.
    fn link_lost(&mut self, id: u64, reason: String, ctx: &mut Context<Self>) {
        if self.session(id).is_none() {
            return;
        }
        let (State::Handshaking(session) | State::Up(session)) = std::mem::replace(&mut self.state, State::Idle) else {
            unreachable!("session() found one");
        };
        self.stats().set_session_up(false);
        let was_up = session.opened.elapsed();
        self.end_session(session, ctx);
        self.registry.do_send(LinkDown);
        if was_up >= STABLE_SESSION {
            self.backoff.reset();
        }
        self.retry_later(reason, ctx);
    }

    fn end_session(&mut self, session: Session, ctx: &mut Context<Self>) {
        ctx.cancel_future(session.reader);
        ctx.cancel_future(session.writer_task);
        let frames = std::mem::take(&mut *session.in_flight.borrow_mut());
        if !frames.is_empty() {
            debug!(frames = frames.len(), "giving unflushed frames back to the buffer");
            self.outbox.lock().requeue_front(frames.into_iter());
        }
    }

    fn retry_later(&mut self, reason: String, ctx: &mut Context<Self>) {
        if matches!(self.state, State::Closing(_) | State::Closed) {
            return;
        }
        self.state = State::Idle;
        let delay = self.backoff.next_delay();
        warn!(%reason, retry_in_ms = delay.as_millis() as u64, attempt = self.backoff.attempt(), "platform link down");
        self.events.publish(Lifecycle::Disconnected { reason });
        ctx.run_later(delay, |act, ctx| act.connect(ctx));
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let timeout = self.settings.pong_timeout;
        let State::Up(session) = &self.state else { return };
        let (id, silent) = (session.id, session.last_pong.elapsed());
        if silent > timeout {
            self.link_lost(id, format!("no pong from the platform for {silent:?}"), ctx);
        } else {
            let _ = session
                .writer
                .send(WriterCmd::Control(ws::Message::Ping(Default::default())));
        }
    }

    fn on_text(&mut self, bytes: &[u8]) {
        match codec::decode_command(bytes, self.settings.max_frame_bytes) {
            Ok(command) => {
                Stats::bump(&self.stats().commands_received);
                self.registry.do_send(IncomingCommand(command));
            }
            Err(e) => self.bad_frame(&e),
        }
    }

    /// What [`assemble`] gave for a fragment: a whole message is a command.
    fn on_assembled(&mut self, whole: Option<Result<Vec<u8>, FrameError>>) {
        match whole {
            Some(Ok(text)) => self.on_text(&text),
            Some(Err(e)) => self.bad_frame(&e),
            None => {}
        }
    }

    fn bad_frame(&self, error: &FrameError) {
        Stats::bump(&self.stats().bad_frames);
        warn!(
            kind = error.kind(),
            excerpt = error.excerpt(),
            "dropped a bad frame from the platform: {error}"
        );
    }
}

impl Actor for ConnectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.settings.ping_interval, |act, ctx| act.heartbeat(ctx));
        self.connect(ctx);
    }
}

impl StreamHandler<Incoming> for ConnectionActor {
    fn handle(&mut self, Incoming(id, item): Incoming, ctx: &mut Self::Context) {
        let limit = self.settings.max_frame_bytes;
        if let State::Closing(session) = &mut self.state {
            if session.id != id {
                return;
            }
            // Shutting down: the platform's close reply (or the end of the
            // connection) finishes it. A handover keeps the devices running,
            // so a command the platform sent before it saw our close is still
            // handled, and its reply goes out through the next session; a
            // plain shutdown has stopped the devices already.
            match item {
                Ok(Inbound::Frame(ws::Frame::Close(_))) | Err(_) => self.finish_shutdown(ctx),
                Ok(Inbound::Frame(ws::Frame::Text(bytes))) if self.handover => self.on_text(&bytes),
                Ok(Inbound::Frame(ws::Frame::Continuation(item))) if self.handover => {
                    let whole = assemble(&mut session.partial, item, limit);
                    self.on_assembled(whole);
                }
                _ => {}
            }
            return;
        }
        let Some(session) = self.session(id) else { return };
        let frame = match item {
            Ok(Inbound::Frame(frame)) => frame,
            Ok(Inbound::Oversized { len, fragment, excerpt }) => {
                // Skipped by the codec without buffering it; a bad frame like
                // any other (PROTOCOL.md section 4), and the session goes on.
                if fragment {
                    // The rest of its message is dropped with it.
                    session.partial = None;
                }
                return self.bad_frame(&FrameError::TooLarge {
                    len: usize::try_from(len).unwrap_or(usize::MAX),
                    limit,
                    excerpt: codec::excerpt(&excerpt),
                });
            }
            Err(e) => return self.link_lost(id, format!("socket error: {e}"), ctx),
        };
        match frame {
            ws::Frame::Text(bytes) => self.on_text(&bytes),
            ws::Frame::Binary(bytes) => self.bad_frame(&FrameError::binary(&bytes)),
            ws::Frame::Continuation(item) => {
                let whole = assemble(&mut session.partial, item, limit);
                self.on_assembled(whole);
            }
            ws::Frame::Ping(payload) => {
                let _ = session.writer.send(WriterCmd::Control(ws::Message::Pong(payload)));
            }
            ws::Frame::Pong(_) => {
                session.last_pong = Instant::now();
                if matches!(self.state, State::Handshaking(_)) {
                    self.handshake_done();
                }
            }
            ws::Frame::Close(reason) => self.on_close(id, reason),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // Only the current session's reader is still running, so it ended.
        // After a close frame the writer ends the session once it replied.
        if matches!(self.state, State::Closing(_)) {
            return self.finish_shutdown(ctx);
        }
        if let State::Handshaking(s) | State::Up(s) = &self.state {
            if s.closing.is_none() {
                let id = s.id;
                self.link_lost(id, "the connection ended without a close frame".into(), ctx);
            }
        }
    }
}

impl ConnectionActor {
    fn on_close(&mut self, id: u64, reason: Option<CloseReason>) {
        let text = describe_close(reason.as_ref());
        let refused = reason.as_ref().is_some_and(|r| u16::from(r.code) == 1008);
        let Some(session) = self.session(id) else { return };
        // Answer the close so the platform's close handshake completes. The
        // writer finishes the batch it is writing first, so what it sent
        // arrives, and then ends the session.
        let _ = session.writer.send(WriterCmd::Close(CloseCode::Normal.into()));
        session.closing = Some(if refused {
            format!("the platform refused the credentials: {text}")
        } else {
            format!("the platform closed the session: {text}")
        });
        if refused {
            let user = &self.settings.credentials.user;
            error!(close = %text, user = %user, "the platform refused the credentials");
            self.events.publish(Lifecycle::CredentialsRefused {
                context: format!("socket closed: {text}"),
            });
        }
    }
}

impl Handler<Shutdown> for ConnectionActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let first = self.shutdown_done.is_empty();
        self.shutdown_done.push(tx);
        if first {
            self.handover = msg.handover;
            let deadline = Instant::now() + msg.flush_timeout;
            self.flush_then_close(deadline, ctx);
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl ConnectionActor {
    fn unsent(&self) -> usize {
        let in_flight = match &self.state {
            State::Up(s) | State::Handshaking(s) | State::Closing(s) => s.in_flight.borrow().len(),
            _ => 0,
        };
        self.outbox.lock().len() + in_flight
    }

    /// Waits while a session is up (or coming up) and frames remain, then
    /// closes. Frames still unsent at the end are reported, not hidden.
    fn flush_then_close(&mut self, deadline: Instant, ctx: &mut Context<Self>) {
        let unsent = self.unsent();
        let live = matches!(self.state, State::Up(_) | State::Handshaking(_) | State::Connecting);
        if unsent > 0 && live && Instant::now() < deadline {
            ctx.run_later(FLUSH_POLL, move |act, ctx| act.flush_then_close(deadline, ctx));
            return;
        }
        if self.handover {
            debug!(
                frames = unsent,
                "closing the link; its successor sends what is buffered"
            );
            if matches!(self.state, State::Up(_)) {
                self.events.publish(Lifecycle::Disconnected {
                    reason: "the platform settings changed (reload); reconnecting with the new ones".into(),
                });
            }
        } else if unsent > 0 {
            warn!(
                frames = unsent,
                "shutting down with frames the platform has not received"
            );
        }
        // Closing counts as down: health checks should fail from here on.
        self.stats().set_session_up(false);
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Up(session) | State::Handshaking(session) => {
                // The reader stays: the socket is dropped only after the
                // platform's close reply was read. Dropping a socket with
                // unread data makes the kernel send a reset, and a reset makes
                // the platform discard frames it has not read yet.
                let _ = session.writer.send(WriterCmd::Close(CloseCode::Normal.into()));
                self.state = State::Closing(session);
                ctx.run_later(CLOSE_TIMEOUT, |act, ctx| {
                    if let State::Closing(session) = &act.state {
                        let unflushed = session.in_flight.borrow().len();
                        warn!(
                            timeout_ms = CLOSE_TIMEOUT.as_millis() as u64,
                            unflushed,
                            "the platform did not answer the close in time; closing anyway. \
                             Frames of the last write may be lost, or sent again by the next link"
                        );
                    }
                    act.finish_shutdown(ctx)
                });
            }
            _ => self.finish_shutdown(ctx),
        }
    }

    fn finish_shutdown(&mut self, ctx: &mut Context<Self>) {
        if let State::Closing(session) = std::mem::replace(&mut self.state, State::Closed) {
            // A batch cut short by a failed write goes back to the buffer,
            // for a successor link or the journal's next run.
            self.end_session(session, ctx);
        }
        if self.shutdown_done.is_empty() {
            return; // already finished
        }
        info!("platform link closed");
        for done in self.shutdown_done.drain(..) {
            let _ = done.send(());
        }
        ctx.stop();
    }
}

fn describe_close(reason: Option<&CloseReason>) -> String {
    match reason {
        None => "no close code".to_owned(),
        Some(r) => match &r.description {
            Some(d) if !d.is_empty() => format!("code {} ({d})", u16::from(r.code)),
            _ => format!("code {}", u16::from(r.code)),
        },
    }
}

/// Collects a fragmented text message; returns it (or why it was refused)
/// once its last fragment arrived.
fn assemble(
    partial: &mut Option<Vec<u8>>,
    item: actix_http::ws::Item,
    limit: usize,
) -> Option<Result<Vec<u8>, FrameError>> {
    match item {
        actix_http::ws::Item::FirstText(bytes) => {
            *partial = Some(bytes.to_vec());
            None
        }
        actix_http::ws::Item::FirstBinary(bytes) => {
            *partial = None;
            Some(Err(FrameError::binary(&bytes)))
        }
        actix_http::ws::Item::Continue(ref bytes) | actix_http::ws::Item::Last(ref bytes) if partial.is_some() => {
            let buffer = partial.as_mut().expect("checked above");
            if buffer.len() + bytes.len() <= limit.saturating_add(1) {
                buffer.extend_from_slice(bytes);
            }
            if matches!(item, actix_http::ws::Item::Last(_)) {
                // decode_command refuses what grew past the limit, with an excerpt.
                partial.take().map(Ok)
            } else {
                None
            }
        }
        // A fragment of a binary message (or a stray one): nothing to keep.
        _ => None,
    }
}

/// Asks the lookup URL where the socket is (PROTOCOL.md section 2).
async fn lookup_socket(http: &HttpClient, settings: &LinkSettings) -> Result<SocketUrl, String> {
    let shown = connector_core::http::redact_userinfo(&settings.lookup_url);
    let response = http
        .get(&settings.lookup_url)
        .send()
        .await
        .map_err(|e| format!("lookup failed: {e}"))?;
    if response.status != 200 {
        return Err(format!("lookup {shown} answered status {}", response.status));
    }
    let url = lookup::parse_lookup_body(&response.body).map_err(|e| format!("lookup {shown}: {e}"))?;
    Ok(url.with_tls(settings.https))
}

/// The write half of one session: the credentials and handshake ping first,
/// then control frames as they come and, once allowed, the buffer in batches.
struct Writer {
    sink: WsSink,
    commands: mpsc::UnboundedReceiver<WriterCmd>,
    outbox: OutboxHandle,
    in_flight: Rc<RefCell<Vec<Frame>>>,
    stats: Arc<Stats>,
}

impl Writer {
    async fn run(mut self, credentials: String) -> Result<(), String> {
        let fail = |e: WsProtocolError| format!("socket write failed: {e}");
        let sink = &mut self.sink;
        sink.feed(ws::Message::Text(credentials.into())).await.map_err(fail)?;
        sink.feed(ws::Message::Ping(Default::default())).await.map_err(fail)?;
        sink.flush().await.map_err(fail)?;
        let mut draining = false;
        let mut batch: Vec<ByteString> = Vec::with_capacity(BATCH_FRAMES);
        loop {
            // Commands between batches too: under a steady stream the buffer
            // never runs dry, and a close from the platform is answered right
            // after the batch being written, not whenever the stream pauses.
            while let Ok(cmd) = self.commands.try_recv() {
                if self.obey(cmd, &mut draining).await.map_err(fail)? {
                    return Ok(());
                }
            }
            if draining {
                let mut in_flight = self.in_flight.borrow_mut();
                self.outbox.lock().take_batch(BATCH_FRAMES, BATCH_BYTES, &mut in_flight);
                // Cheap clones (reference counts): the originals stay in
                // `in_flight` until flushed, to be given back if the link dies.
                batch.extend(in_flight.iter().map(|f| f.text.clone()));
            }
            if batch.is_empty() {
                let cmd = tokio::select! {
                    biased;
                    cmd = self.commands.recv() => cmd,
                    _ = self.outbox.pushed(), if draining => continue,
                };
                let Some(cmd) = cmd else { return Ok(()) };
                if self.obey(cmd, &mut draining).await.map_err(fail)? {
                    return Ok(());
                }
                continue;
            }
            for text in batch.drain(..) {
                self.sink.feed(ws::Message::Text(text)).await.map_err(fail)?;
            }
            self.sink.flush().await.map_err(fail)?;
            let mut in_flight = self.in_flight.borrow_mut();
            // Flushed: out of the bound, and out of the journal if there is one.
            self.outbox.lock().delivered(&in_flight);
            for frame in in_flight.drain(..) {
                let counter = match frame.kind {
                    FrameKind::Response => &self.stats.frames_sent_response,
                    FrameKind::Change => &self.stats.frames_sent_change,
                    FrameKind::Update => &self.stats.frames_sent_update,
                };
                Stats::bump(counter);
            }
        }
    }

    /// Carries out one command; `true` once the writer is done (close sent).
    async fn obey(&mut self, cmd: WriterCmd, draining: &mut bool) -> Result<bool, WsProtocolError> {
        match cmd {
            WriterCmd::Control(frame) => self.sink.send(frame).await?,
            WriterCmd::StartDraining => *draining = true,
            WriterCmd::Close(reason) => {
                // No TCP shutdown here: RFC 6455 (7.1.1) lets the
                // server close the connection first, and a peer that
                // sees our FIN too early may drop frames it has not
                // decoded yet. The socket goes when the session ends.
                let _ = self.sink.send(ws::Message::Close(Some(reason))).await;
                return Ok(true);
            }
        }
        Ok(false)
    }
}
