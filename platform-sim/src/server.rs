//! Starting, pausing and stopping the simulator: [`Simulator`] starts it,
//! [`SimHandle`] is what callers keep, and a small supervisor task owns the
//! actix-web server so the listener can be closed and reopened on the same
//! port while the shared state (counters, devices, events) lives on.
//!
//! The supervisor runs on the runtime that called [`Simulator::start`], not
//! on the server's worker: a pause asked for through the control API stops
//! the very worker that served the request.

use std::{
    io,
    net::{SocketAddr, TcpListener},
    sync::Arc,
    time::Duration,
};

use actix_web::{dev::ServerHandle, App, HttpServer};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use crate::{
    config::SimConfig,
    control::{self, Command, DropMode, RawFrame},
    http::configure,
    reset,
    state::{CommandResponse, CounterSnapshot, Event, EventFilter, SessionInfo, Shared},
    wire::Device,
    SimError,
};

/// How long a restart keeps trying to rebind a port the old listener is
/// still releasing.
const REBIND_PATIENCE: Duration = Duration::from_secs(3);
const REBIND_STEP: Duration = Duration::from_millis(20);
/// Poll interval of [`SimHandle::wait_for`].
const WAIT_POLL: Duration = Duration::from_millis(5);

/// Requests to the supervisor.
#[derive(Debug)]
pub(crate) enum Lifecycle {
    /// Wait `grace`, close the listener and all connections, reopen after
    /// `duration`.
    Pause {
        grace: Duration,
        duration: Duration,
        done: Option<oneshot::Sender<Result<(), SimError>>>,
    },
    StopListening {
        done: oneshot::Sender<()>,
    },
    StartListening {
        done: oneshot::Sender<Result<(), SimError>>,
    },
    Stop {
        done: Option<oneshot::Sender<()>>,
    },
}

/// Starts simulators.
#[derive(Debug)]
pub struct Simulator;

impl Simulator {
    /// Starts a simulator on the current runtime and returns once it
    /// listens. Call it inside a tokio runtime, e.g. an actix `System`
    /// (`#[actix_rt::test]`, `#[actix_web::main]`) or `#[tokio::test]`.
    pub async fn start(config: SimConfig) -> Result<SimHandle, SimError> {
        Self::launch(config).map(|(handle, _finished)| handle)
    }

    /// Starts a simulator on a thread of its own with its own actix
    /// `System`, for callers without a runtime (benchmarks, sync tests).
    /// The thread ends when the simulator is stopped or its last handle is
    /// dropped.
    pub fn spawn(config: SimConfig) -> Result<SimHandle, SimError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("platform-sim".to_owned())
            .spawn(move || {
                actix_rt::System::new().block_on(async move {
                    match Self::launch(config) {
                        Ok((handle, finished)) => {
                            let _ = tx.send(Ok(handle));
                            let _ = finished.await;
                        }
                        Err(error) => {
                            let _ = tx.send(Err(error));
                        }
                    }
                });
            })?;
        rx.recv().map_err(|_| SimError::Stopped)?
    }

    fn launch(config: SimConfig) -> Result<(SimHandle, oneshot::Receiver<()>), SimError> {
        let config = config.validate()?;
        let listener = bind(config.listen)?;
        let local_addr = listener.local_addr()?;
        let (lifecycle_tx, lifecycle_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(config, local_addr, lifecycle_tx));
        let server = serve(&shared, listener)?;
        tracing::info!(addr = %local_addr, "simulator_listening");
        let (finished_tx, finished_rx) = oneshot::channel();
        let supervisor = Supervisor {
            shared: Arc::clone(&shared),
            server: Some(server),
            restart_at: None,
        };
        tokio::spawn(supervisor.run(lifecycle_rx, finished_tx));
        let handle = SimHandle {
            inner: Arc::new(HandleInner { shared, local_addr }),
        };
        Ok((handle, finished_rx))
    }
}

/// Binds with `SO_REUSEADDR`, so a restart can take the same port back
/// while old connections sit in TIME_WAIT.
fn bind(addr: SocketAddr) -> Result<TcpListener, SimError> {
    let attempt = || -> io::Result<TcpListener> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    };
    attempt().map_err(|source| SimError::Bind { addr, source })
}

/// Runs the actix-web server on `listener` with one worker, over TLS when
/// configured; the server's own future is spawned on the current runtime.
fn serve(shared: &Arc<Shared>, listener: TcpListener) -> Result<ServerHandle, SimError> {
    let routes = configure(Arc::clone(shared));
    let builder = HttpServer::new(move || App::new().configure(routes.clone()))
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .on_connect(reset::on_connect);
    let server = match &shared.config.tls {
        // Checked by `SimConfig::validate`; built again on each (re)start.
        Some(tls) => builder.listen_rustls_0_23(listener, tls.server_config().map_err(SimError::Config)?)?,
        None => builder.listen(listener)?,
    }
    .run();
    let handle = server.handle();
    tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "server_failed");
        }
    });
    Ok(handle)
}

struct Supervisor {
    shared: Arc<Shared>,
    server: Option<ServerHandle>,
    restart_at: Option<Instant>,
}

impl Supervisor {
    async fn run(mut self, mut requests: mpsc::UnboundedReceiver<Lifecycle>, finished: oneshot::Sender<()>) {
        loop {
            let request = match self.restart_at {
                Some(at) => tokio::select! {
                    request = requests.recv() => request,
                    () = tokio::time::sleep_until(at) => {
                        self.restart_at = None;
                        if let Err(error) = self.start_listening().await {
                            tracing::error!(%error, "restart_failed");
                        }
                        continue;
                    }
                },
                None => requests.recv().await,
            };
            match request {
                Some(Lifecycle::Pause { grace, duration, done }) => {
                    tokio::time::sleep(grace).await;
                    self.stop_listening().await;
                    tracing::info!(ms = duration.as_millis() as u64, "paused");
                    self.restart_at = Some(Instant::now() + duration);
                    if let Some(done) = done {
                        let _ = done.send(Ok(()));
                    }
                }
                Some(Lifecycle::StopListening { done }) => {
                    self.restart_at = None;
                    self.stop_listening().await;
                    let _ = done.send(());
                }
                Some(Lifecycle::StartListening { done }) => {
                    self.restart_at = None;
                    let _ = done.send(self.start_listening().await);
                }
                Some(Lifecycle::Stop { done }) => {
                    self.stop_listening().await;
                    tracing::info!("simulator_stopped");
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    break;
                }
                None => break,
            }
        }
        let _ = finished.send(());
    }

    /// Closes the listener and, by stopping the worker, every connection.
    async fn stop_listening(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop(false).await;
            tracing::info!("listener_closed");
        }
    }

    async fn start_listening(&mut self) -> Result<(), SimError> {
        if self.server.is_some() {
            return Ok(());
        }
        let addr = self.shared.local_addr;
        let deadline = Instant::now() + REBIND_PATIENCE;
        let listener = loop {
            match bind(addr) {
                Ok(listener) => break listener,
                Err(SimError::Bind { source, .. })
                    if source.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline =>
                {
                    tokio::time::sleep(REBIND_STEP).await;
                }
                Err(error) => return Err(error),
            }
        };
        self.server = Some(serve(&self.shared, listener)?);
        tracing::info!(%addr, "listener_reopened");
        Ok(())
    }
}

struct HandleInner {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        // The last handle is gone: nobody can steer or stop the simulator
        // any more, so stop it rather than leak its threads.
        let _ = self.shared.lifecycle.send(Lifecycle::Stop { done: None });
    }
}

/// A running simulator. Cheap to clone; when the last clone is dropped the
/// simulator stops.
#[derive(Clone)]
pub struct SimHandle {
    inner: Arc<HandleInner>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

impl SimHandle {
    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The address the simulator listens on (the OS's pick for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// `http://127.0.0.1:PORT` (`https://` in TLS mode): the `BASE` of
    /// PROTOCOL.md section 2.
    pub fn base_url(&self) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.inner.local_addr)
    }

    /// Whether it serves `https://` and `wss://` ([`SimConfig::tls`]).
    pub fn is_tls(&self) -> bool {
        self.shared().config.tls.is_some()
    }

    /// The lookup URL to give a connector (`CONNECTOR_LOOKUP_URL`).
    pub fn lookup_url(&self) -> String {
        format!("{}/{}", self.base_url(), self.shared().config.lookup_path)
    }

    /// The WebSocket URL the lookup answers (`wss://` in TLS mode).
    pub fn socket_url(&self) -> String {
        let scheme = if self.is_tls() { "wss" } else { "ws" };
        format!("{scheme}://{}/ws", self.inner.local_addr)
    }

    /// Root of the control API.
    pub fn control_url(&self) -> String {
        format!("{}/control", self.base_url())
    }

    /// `BASE/<registration path>`.
    pub fn registration_url(&self) -> String {
        format!("{}/{}", self.base_url(), self.shared().config.registration_path)
    }

    /// The checked configuration it runs with.
    pub fn config(&self) -> &SimConfig {
        &self.shared().config
    }

    /// Every counter now.
    pub async fn counters(&self) -> CounterSnapshot {
        self.shared().counters.snapshot()
    }

    /// Polls the counters until `condition` holds; `Err(Timeout)` with an
    /// empty task id after `timeout`. Returns the snapshot that satisfied it.
    pub async fn wait_for(
        &self,
        condition: impl Fn(&CounterSnapshot) -> bool,
        timeout: Duration,
    ) -> Result<CounterSnapshot, SimError> {
        let deadline = Instant::now() + timeout;
        loop {
            let snapshot = self.shared().counters.snapshot();
            if condition(&snapshot) {
                return Ok(snapshot);
            }
            if Instant::now() >= deadline {
                return Err(SimError::Timeout { task_id: String::new() });
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// The registered devices, ordered by id.
    pub async fn devices(&self) -> Vec<Device> {
        self.shared().devices()
    }

    /// The open sessions, oldest first.
    pub async fn sessions(&self) -> Vec<SessionInfo> {
        self.shared().sessions()
    }

    /// Every recorded event still in the ring, oldest first.
    pub async fn events(&self) -> Vec<Event> {
        self.events_matching(EventFilter {
            limit: Some(usize::MAX),
            ..EventFilter::default()
        })
        .await
    }

    /// Recorded events that pass `filter`.
    pub async fn events_matching(&self, filter: EventFilter) -> Vec<Event> {
        self.shared().events(&filter)
    }

    /// Clears recorded events, counters and fault switches.
    pub async fn reset(&self) {
        self.shared().reset();
    }

    /// Sends a command to every authenticated session; returns its task id.
    pub async fn send_command(&self, command: &Command) -> Result<String, SimError> {
        control::send_command(self.shared(), command)
    }

    /// Sends a command and waits for the `response:` with its task id. After
    /// `timeout` the error is [`SimError::NotRegistered`] when no device of
    /// the command's id is registered, else [`SimError::Timeout`].
    pub async fn command_and_wait(&self, command: &Command, timeout: Duration) -> Result<CommandResponse, SimError> {
        control::command_and_wait(self.shared(), command, timeout).await
    }

    /// Starts (or stops) timing command round trips on the simulator's side
    /// of the wire: from a session handing a command frame to its socket to
    /// reading the `response:` with its task id. For latency benchmarks, where
    /// a driver's own scheduling would blur the figures. Earlier samples are
    /// dropped either way.
    pub async fn time_round_trips(&self, on: bool) {
        self.shared().round_trips.switch(on);
    }

    /// The round trips timed so far (see [`time_round_trips`](Self::time_round_trips)),
    /// in the order they completed; they are handed out once.
    pub async fn take_round_trips(&self) -> Vec<Duration> {
        self.shared().round_trips.take()
    }

    /// Drops every open session; returns how many.
    pub async fn drop_sessions(&self, mode: DropMode) -> usize {
        control::drop_sessions(self.shared(), &mode)
    }

    /// While on, every credentials frame and registration is refused.
    pub async fn set_refuse_credentials(&self, refuse: bool) {
        let faults = &self.shared().faults;
        faults
            .refuse_credentials
            .store(refuse, std::sync::atomic::Ordering::Relaxed);
    }

    /// While on, pings are counted but not answered.
    pub async fn set_ignore_pings(&self, ignore: bool) {
        let faults = &self.shared().faults;
        faults.ignore_pings.store(ignore, std::sync::atomic::Ordering::Relaxed);
    }

    /// The next `times` (un)registration requests get `status`.
    pub async fn fail_registrations(&self, status: u16, times: u32) {
        self.shared().faults.set_registration(status, times);
    }

    /// The next `times` lookups get `status`.
    pub async fn fail_lookups(&self, status: u16, times: u32) {
        self.shared().faults.set_lookup(status, times);
    }

    /// Sends a raw frame to every authenticated session; returns how many.
    pub async fn send_raw(&self, frame: RawFrame) -> Result<usize, SimError> {
        control::send_raw(self.shared(), &frame)
    }

    /// Closes the listener and every connection now and reopens the same
    /// port after `duration`. Returns once the listener is closed.
    pub async fn pause(&self, duration: Duration) -> Result<(), SimError> {
        let (done, answer) = oneshot::channel();
        self.request(Lifecycle::Pause {
            grace: Duration::ZERO,
            duration,
            done: Some(done),
        })?;
        answer.await.map_err(|_| SimError::Stopped)?
    }

    /// Closes the listener and every connection until
    /// [`start_listening`](Self::start_listening).
    pub async fn stop_listening(&self) -> Result<(), SimError> {
        let (done, answer) = oneshot::channel();
        self.request(Lifecycle::StopListening { done })?;
        answer.await.map_err(|_| SimError::Stopped)
    }

    /// Listens again on the same port (a no-op when listening).
    pub async fn start_listening(&self) -> Result<(), SimError> {
        let (done, answer) = oneshot::channel();
        self.request(Lifecycle::StartListening { done })?;
        answer.await.map_err(|_| SimError::Stopped)?
    }

    /// Stops the simulator for good; every clone of the handle sees it
    /// stopped.
    pub async fn stop(&self) -> Result<(), SimError> {
        let (done, answer) = oneshot::channel();
        self.request(Lifecycle::Stop { done: Some(done) })?;
        answer.await.map_err(|_| SimError::Stopped)
    }

    fn request(&self, request: Lifecycle) -> Result<(), SimError> {
        self.shared().lifecycle.send(request).map_err(|_| SimError::Stopped)
    }
}
