//! Async plugins (`ConnectorBuilder::async_plugin`) against the real platform
//! simulator and a real HTTP device server on loopback: devices behind a
//! REST API, driven through `connector_core::http`. What is asserted is what
//! crossed the wire (the simulator's record, the server's), never how long
//! anything took.

mod util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use connector_core::http::{HttpClient, HttpOptions};
use connector_core::plugin::{AsyncDevicePlugin, DeviceSpec, EventSink, LocalFuture, PluginError, Reply};
use connector_core::Message;
use connector_runtime::async_plugin::async_factory;
use connector_runtime::{ConnectorBuilder, Lifecycle};
use platform_sim::{Command, SimHandle};
use serde::Deserialize;
use util::*;

// ---- the device: a REST API on loopback ----

/// What the HTTP device server saw and holds.
#[derive(Default)]
struct Server {
    state: Mutex<String>,
    /// `GET /state`, `PUT /state on`, ... in arrival order.
    requests: Mutex<Vec<String>>,
    /// `/delay` requests being handled now, and the most at once.
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    /// `/slow` requests that arrived.
    slow_arrived: AtomicUsize,
    /// Opened by the test; `/slow` waits for it (or, should it never come, a
    /// while, so a wrong runtime fails an assertion instead of hanging).
    gate: tokio::sync::Notify,
}

impl Server {
    fn saw(&self, request: String) {
        self.requests.lock().unwrap().push(request);
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

async fn get_state(server: web::Data<Server>) -> HttpResponse {
    server.saw("GET /state".into());
    HttpResponse::Ok().body(server.state.lock().unwrap().clone())
}

async fn put_state(server: web::Data<Server>, body: String) -> HttpResponse {
    server.saw(format!("PUT /state {body}"));
    if body != "on" && body != "off" {
        return HttpResponse::BadRequest().body(format!("no such state: {body:?}"));
    }
    *server.state.lock().unwrap() = body.clone();
    HttpResponse::Ok().body(body)
}

async fn slow(server: web::Data<Server>) -> HttpResponse {
    server.saw("GET /slow".into());
    server.slow_arrived.fetch_add(1, Ordering::SeqCst);
    let opened = tokio::time::timeout(Duration::from_secs(10), server.gate.notified()).await;
    HttpResponse::Ok().body(if opened.is_ok() { "released" } else { "gave up waiting" })
}

async fn delay(server: web::Data<Server>, path: web::Path<(u64, u32)>) -> HttpResponse {
    let (ms, n) = path.into_inner();
    server.saw(format!("GET /delay {n}"));
    let now = server.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    server.most_in_flight.fetch_max(now, Ordering::SeqCst);
    actix_rt::time::sleep(Duration::from_millis(ms)).await;
    server.in_flight.fetch_sub(1, Ordering::SeqCst);
    HttpResponse::Ok().body(n.to_string())
}

/// Starts the device server on a free loopback port; its base URL.
fn device_server() -> (Arc<Server>, String) {
    let server = web::Data::new(Server {
        state: Mutex::new("off".into()),
        ..Server::default()
    });
    let shared = server.clone().into_inner();
    let http = HttpServer::new(move || {
        App::new()
            .app_data(server.clone())
            .route("/state", web::get().to(get_state))
            .route("/state", web::put().to(put_state))
            .route("/slow", web::get().to(slow))
            .route("/delay/{ms}/{n}", web::get().to(delay))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(("127.0.0.1", 0))
    .expect("the device server binds on loopback");
    let addr = http.addrs()[0];
    actix_rt::spawn(http.run());
    (shared, format!("http://{addr}"))
}

// ---- the plugin: an async device behind that API ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestSettings {
    base_url: String,
}

/// `on`/`off` put the state, `state` gets it, `get` gets the path in the
/// body; `boom` panics after a real request. Emits the state when started.
struct Rest {
    base: String,
    client: HttpClient,
    instance: usize,
}

impl Rest {
    async fn call(&self, request: connector_core::http::RequestBuilder) -> Result<String, PluginError> {
        let response = request.send().await.map_err(|e| PluginError::new(e.to_string()))?;
        if !response.is_success() {
            return Err(PluginError::new(format!("HTTP {}: {}", response.status, response.body)));
        }
        Ok(response.body)
    }
}

impl AsyncDevicePlugin for Rest {
    fn start(&mut self, events: EventSink) -> LocalFuture<'_, Result<(), PluginError>> {
        Box::pin(async move {
            let state = self.call(self.client.get(format!("{}/state", self.base))).await?;
            events.emit("state", state)?;
            Ok(())
        })
    }

    fn command<'a>(&'a mut self, command: &'a Message) -> LocalFuture<'a, Result<Reply, PluginError>> {
        Box::pin(async move {
            let url = |path: &str| format!("{}{path}", self.base);
            let body = match command.endpoint.as_str() {
                "on" | "off" => {
                    self.call(self.client.put(url("/state"), command.endpoint.clone()))
                        .await?
                }
                "state" => self.call(self.client.get(url("/state"))).await?,
                "get" => self.call(self.client.get(url(&command.payload))).await?,
                "instance" => self.instance.to_string(),
                "boom" => {
                    let state = self.call(self.client.get(url("/state"))).await?;
                    panic!("rest device blew up with the plug {state}");
                }
                other => return Err(PluginError::new(format!("unknown endpoint {other:?}"))),
            };
            Ok(Reply::body(body))
        })
    }
}

/// The `rest` plugin, counting the instances it makes.
fn with_rest(created: &Arc<AtomicUsize>) -> impl FnOnce(ConnectorBuilder) -> ConnectorBuilder {
    let created = created.clone();
    move |builder| builder.async_plugin("rest", rest_factory(created))
}

fn rest_factory(created: Arc<AtomicUsize>) -> impl Fn(&DeviceSpec) -> Result<Rest, PluginError> + Send + Sync {
    move |spec: &DeviceSpec| {
        let settings: RestSettings = spec.settings()?;
        let options = HttpOptions {
            timeout: spec.command_timeout(),
            ..HttpOptions::default()
        };
        Ok(Rest {
            base: settings.base_url,
            client: HttpClient::new().with_options(options),
            instance: created.fetch_add(1, Ordering::SeqCst) + 1,
        })
    }
}

fn rest_device(id: &str, base_url: &str) -> String {
    format!("  - {{ id: {id}, type: plug, name: {id}, plugin: rest, command_timeout_ms: 60000, settings: {{ base_url: \"{base_url}\" }} }}\n")
}

async fn answer(sim: &SimHandle, device: &str, endpoint: &str, body: &str) -> String {
    sim.command_and_wait(&Command::new(device, endpoint).body(body), DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("{device} answers {endpoint}: {e}"))
        .message
        .body
}

/// The error text of an error reply.
fn error_text(body: &str) -> String {
    let error: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not an error reply: {body}"));
    error["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error reply: {body}"))
        .to_owned()
}

// ---- the tests ----

#[actix_rt::test]
async fn an_async_device_answers_commands_through_a_real_http_server() {
    let sim = simulator().await;
    let (server, base) = device_server();
    let created = Arc::new(AtomicUsize::new(0));
    let config = config_for(&sim, &rest_device("plug-1", &base));
    let connector = connected_with(&sim, with_rest(&created), config).await;

    assert_eq!(answer(&sim, "plug-1", "on", "").await, "on");
    assert_eq!(answer(&sim, "plug-1", "state", "").await, "on");
    assert_eq!(answer(&sim, "plug-1", "off", "").await, "off");
    let refused = answer(&sim, "plug-1", "dim", "").await;
    assert_eq!(error_text(&refused), "unknown endpoint \"dim\"");
    // The state read on start went out as an event.
    let events = event_bodies(&sim, "plug-1").await;
    assert_eq!(events, ["off"]);
    assert_eq!(
        server.requests(),
        ["GET /state", "PUT /state on", "GET /state", "PUT /state off"]
    );
    assert_eq!(created.load(Ordering::SeqCst), 1);
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn while_one_async_device_awaits_a_slow_endpoint_another_is_answered_first() {
    let sim = simulator().await;
    let (server, base) = device_server();
    let created = Arc::new(AtomicUsize::new(0));
    let devices = format!("{}{}", rest_device("slow-1", &base), rest_device("fast-1", &base));
    let connector = connected_with(&sim, with_rest(&created), config_for(&sim, &devices)).await;

    let slow_task = sim
        .send_command(&Command::new("slow-1", "get").body("/slow"))
        .await
        .unwrap();
    // The slow device is now awaiting its request: the server holds it.
    eventually("the slow request at the server", || async {
        (server.slow_arrived.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let fast_task = sim
        .send_command(&Command::new("fast-1", "state").body(""))
        .await
        .unwrap();
    eventually("the fast device's answer", || async {
        let answered = responses(&sim, "fast-1").await;
        answered.iter().any(|r| r.message.task_id == fast_task).then_some(())
    })
    .await;
    server.gate.notify_one();
    let slow = eventually("the slow device's answer", || async {
        responses(&sim, "slow-1")
            .await
            .into_iter()
            .find(|r| r.message.task_id == slow_task)
    })
    .await;
    let fast = responses(&sim, "fast-1").await.remove(0);
    assert!(
        fast.seq < slow.seq,
        "the fast answer (seq {}) came after the slow one (seq {})",
        fast.seq,
        slow.seq
    );
    assert_eq!(fast.message.body, "off");
    assert_eq!(slow.message.body, "released", "the slow request was let go by the test");
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn one_async_devices_commands_are_answered_one_at_a_time_in_the_order_sent() {
    let sim = simulator().await;
    let (server, base) = device_server();
    let created = Arc::new(AtomicUsize::new(0));
    let config = config_for(&sim, &rest_device("ord-1", &base));
    let connector = connected_with(&sim, with_rest(&created), config).await;

    // Earlier commands take longer at the server: overlapping them would
    // answer the later ones first.
    const COMMANDS: u32 = 8;
    let mut tasks = Vec::new();
    for n in 0..COMMANDS {
        let path = format!("/delay/{}/{n}", 20 * (COMMANDS - n));
        tasks.push(
            sim.send_command(&Command::new("ord-1", "get").body(path))
                .await
                .unwrap(),
        );
    }
    let answered = eventually("every answer", || async {
        let answered = responses(&sim, "ord-1").await;
        (answered.len() == COMMANDS as usize).then_some(answered)
    })
    .await;
    let order: Vec<&str> = answered.iter().map(|r| r.message.task_id.as_str()).collect();
    assert_eq!(order, tasks, "answers in the order the commands were sent");
    let bodies: Vec<String> = answered.iter().map(|r| r.message.body.clone()).collect();
    assert_eq!(bodies, numbered(0..COMMANDS));
    let at_server: Vec<String> = (0..COMMANDS).map(|n| format!("GET /delay {n}")).collect();
    let requests = server.requests();
    assert_eq!(requests[1..], at_server[..], "{requests:?}");
    assert_eq!(server.most_in_flight.load(Ordering::SeqCst), 1, "one request at a time");
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn a_panicking_async_command_gets_an_error_reply_and_the_device_restarts_and_answers_again() {
    let sim = simulator().await;
    let (_server, base) = device_server();
    let created = Arc::new(AtomicUsize::new(0));
    let devices = format!("{}{}", rest_device("fragile-1", &base), rest_device("steady-1", &base));
    let connector = connected_with(&sim, with_rest(&created), config_for(&sim, &devices)).await;
    let mut events = connector.subscribe();
    let first = answer(&sim, "fragile-1", "instance", "").await;

    let crashed = sim
        .command_and_wait(&Command::new("fragile-1", "boom"), DEADLINE)
        .await
        .expect("a panic is still answered");
    assert_eq!(crashed.message.endpoint, "boom");
    let text = error_text(&crashed.message.body);
    assert_eq!(
        text,
        "panicked on command \"boom\": rest device blew up with the plug off"
    );
    let restarted = wait_event(
        &mut events,
        "the restart",
        |e| matches!(e, Lifecycle::DeviceRestarted { device, .. } if device == "fragile-1"),
    )
    .await;
    assert!(
        matches!(&restarted, Lifecycle::DeviceRestarted { reason, .. } if reason.contains("blew up")),
        "{restarted:?}"
    );
    // The other async device, on the same thread, never noticed.
    assert_eq!(answer(&sim, "steady-1", "state", "").await, "off");
    wait_event(&mut events, "the device back", |e| {
        *e == Lifecycle::DeviceStarted {
            device: "fragile-1".into(),
        }
    })
    .await;
    let second = answer(&sim, "fragile-1", "instance", "").await;
    assert_ne!(first, second, "a new instance answers");
    assert_eq!(answer(&sim, "fragile-1", "on", "").await, "on");
    assert_eq!(created.load(Ordering::SeqCst), 3, "two devices, one restart");
    assert_eq!(connector.stats().device_restarts.load(Ordering::Relaxed), 1);
    assert_eq!(sim.counters().await.sessions_opened, 1);
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn a_factory_refusing_its_settings_is_reported_like_any_plugins() {
    let sim = simulator().await;
    let (_server, base) = device_server();
    let created = Arc::new(AtomicUsize::new(0));
    let refused = "  - { id: bad-1, type: plug, name: Bad, plugin: rest, settings: { url: \"http://nowhere\" } }\n";

    // `--check` and a reload ask the registry; it hears the factory's refusal.
    let mut registry = connector_core::plugin::PluginRegistry::new();
    registry.register("rest", async_factory(rest_factory(created.clone())));
    let bad = config_for(&sim, refused);
    let spec = DeviceSpec::from(&bad.devices[0]);
    let error = registry.check_settings(&spec).unwrap_err().to_string();
    assert!(
        error.contains("device \"bad-1\"") && error.contains("unknown field `url`"),
        "{error}"
    );

    // At start, as for a sync plugin: the device fails to start and is retried.
    let devices = format!("{}{refused}", rest_device("good-1", &base));
    let connector = connected_with(&sim, with_rest(&created), config_for(&sim, &devices)).await;
    let mut events = connector.subscribe();
    let restarted = wait_event(
        &mut events,
        "bad-1 retried",
        |e| matches!(e, Lifecycle::DeviceRestarted { device, .. } if device == "bad-1"),
    )
    .await;
    assert!(
        matches!(&restarted, Lifecycle::DeviceRestarted { reason, .. }
            if reason.starts_with("start failed: ") && reason.contains("unknown field `url`")),
        "{restarted:?}"
    );
    assert_eq!(answer(&sim, "good-1", "state", "").await, "off");

    // A reload naming it is refused as a whole, and nothing changes.
    let reload = format!("{}{}", rest_device("good-1", &base), refused.replace("bad-1", "bad-2"));
    let error = connector
        .reload(config_for(&sim, &reload))
        .await
        .expect_err("the reload is refused")
        .to_string();
    assert!(
        error.contains("device \"bad-2\"") && error.contains("unknown field `url`"),
        "{error}"
    );
    assert_eq!(device_ids(&sim).await, ["bad-1", "good-1"]);
    assert_eq!(answer(&sim, "good-1", "on", "").await, "on");
    connector.shutdown(Duration::from_secs(2)).await;
}

// ---- a device that hangs, for stopping and deadlines ----

/// What the `stubborn` plugin's instances did.
#[derive(Default)]
struct Stubborn {
    /// The endpoints of the commands they were given, in order.
    seen: Mutex<Vec<String>>,
    /// How many times `stop` ran.
    stops: AtomicUsize,
    /// Background tasks spawned by `start` that still run.
    pollers: AtomicUsize,
    /// Opened by the test; `gated` waits for it.
    gate: tokio::sync::Notify,
}

impl Stubborn {
    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// `hang` never finishes, `gated` waits for the test to open the gate,
/// anything else is answered at once. `start` spawns a background task that
/// only `stop` ends.
struct StubbornDevice {
    record: Arc<Stubborn>,
    poller: Option<actix_rt::task::JoinHandle<()>>,
}

/// Held by a background task; dropped when the task ends.
struct Polling(Arc<Stubborn>);

impl Drop for Polling {
    fn drop(&mut self) {
        self.0.pollers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AsyncDevicePlugin for StubbornDevice {
    fn start(&mut self, _events: EventSink) -> LocalFuture<'_, Result<(), PluginError>> {
        self.record.pollers.fetch_add(1, Ordering::SeqCst);
        let polling = Polling(self.record.clone());
        self.poller = Some(actix_rt::spawn(async move {
            let _polling = polling;
            loop {
                actix_rt::time::sleep(Duration::from_millis(50)).await;
            }
        }));
        Box::pin(async { Ok(()) })
    }

    fn command<'a>(&'a mut self, command: &'a Message) -> LocalFuture<'a, Result<Reply, PluginError>> {
        Box::pin(async move {
            self.record.seen.lock().unwrap().push(command.endpoint.clone());
            match command.endpoint.as_str() {
                "hang" => std::future::pending().await,
                "gated" => self.record.gate.notified().await,
                _ => {}
            }
            Ok(Reply::body(command.endpoint.clone()))
        })
    }

    fn stop(&mut self) -> LocalFuture<'_, ()> {
        Box::pin(async {
            self.record.stops.fetch_add(1, Ordering::SeqCst);
            if let Some(poller) = self.poller.take() {
                poller.abort();
            }
        })
    }
}

fn with_stubborn(record: &Arc<Stubborn>) -> impl FnOnce(ConnectorBuilder) -> ConnectorBuilder {
    let record = record.clone();
    move |builder| {
        builder.async_plugin("stubborn", move |_: &DeviceSpec| {
            Ok(StubbornDevice {
                record: record.clone(),
                poller: None,
            })
        })
    }
}

fn stubborn_device(id: &str, command_timeout_ms: u64) -> String {
    format!("  - {{ id: {id}, type: plug, name: {id}, plugin: stubborn, command_timeout_ms: {command_timeout_ms} }}\n")
}

/// The response to the command `task` of `device`, once it is in.
async fn response_to(sim: &SimHandle, device: &str, task: &str) -> platform_sim::Event {
    eventually(&format!("the answer to {task}"), || async {
        responses(sim, device)
            .await
            .into_iter()
            .find(|r| r.message.task_id == task)
    })
    .await
}

#[actix_rt::test]
async fn stopping_an_async_device_with_a_hung_command_runs_its_stop_and_answers_the_command() {
    let sim = simulator().await;
    let record = Arc::new(Stubborn::default());
    let config = config_for(&sim, &stubborn_device("hung-1", 60_000));
    let connector = connected_with(&sim, with_stubborn(&record), config).await;
    let mut events = connector.subscribe();
    let hung = sim.send_command(&Command::new("hung-1", "hang")).await.unwrap();
    eventually("the command at the plugin", || async {
        (record.seen() == ["hang"]).then_some(())
    })
    .await;
    assert_eq!(record.pollers.load(Ordering::SeqCst), 1);

    let device = connector_core::Device::new("hung-1", "plug", "hung-1");
    connector.unregister(&device).await.unwrap();
    wait_event(&mut events, "the device stopped", |e| {
        *e == Lifecycle::DeviceStopped {
            device: "hung-1".into(),
        }
    })
    .await;
    // The stop was not stuck behind the hung command: it ran, and ended the
    // task `start` spawned.
    eventually("the plugin's stop", || async {
        (record.stops.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    eventually("the background task ended", || async {
        (record.pollers.load(Ordering::SeqCst) == 0).then_some(())
    })
    .await;
    let answer = response_to(&sim, "hung-1", &hung).await;
    assert_eq!(
        error_text(&answer.message.body),
        "device hung-1 stopped before it answered"
    );
    assert_eq!(record.stops.load(Ordering::SeqCst), 1, "stopped once");
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn a_command_whose_deadline_passed_while_it_waited_is_never_given_to_the_async_plugin() {
    let sim = simulator().await;
    let record = Arc::new(Stubborn::default());
    // Long enough for the plugin to start on a slow machine before the
    // first command's deadline; the second one's passes while it waits.
    let config = config_for(&sim, &stubborn_device("gate-1", 2000));
    let connector = connected_with(&sim, with_stubborn(&record), config).await;

    sim.send_command(&Command::new("gate-1", "gated")).await.unwrap();
    eventually("the first command at the plugin", || async {
        (record.seen() == ["gated"]).then_some(())
    })
    .await;
    let second = sim.send_command(&Command::new("gate-1", "second")).await.unwrap();
    let answer = response_to(&sim, "gate-1", &second).await;
    assert!(
        error_text(&answer.message.body).contains("did not answer within"),
        "{}",
        answer.message.body
    );
    record.gate.notify_one();

    // One device's commands run in order: once a later one reaches the
    // plugin, the second one's turn has passed. A probe whose own deadline
    // passes before its turn (a very slow machine) is skipped too; the next
    // one is sent then.
    let mut probes = 0;
    loop {
        probes += 1;
        let endpoint = format!("probe-{probes}");
        let task = sim.send_command(&Command::new("gate-1", &endpoint)).await.unwrap();
        let reached = eventually("the probe at the plugin or its deadline", || async {
            if record.seen().contains(&endpoint) {
                return Some(true);
            }
            let answered = responses(&sim, "gate-1")
                .await
                .iter()
                .any(|r| r.message.task_id == task);
            answered.then_some(false)
        })
        .await;
        if reached {
            break;
        }
    }
    let seen = record.seen();
    assert_eq!(seen[0], "gated");
    assert!(!seen.iter().any(|e| e == "second"), "the second command ran: {seen:?}");
    assert_eq!(seen.last(), Some(&format!("probe-{probes}")));
    connector.shutdown(Duration::from_secs(2)).await;
}
