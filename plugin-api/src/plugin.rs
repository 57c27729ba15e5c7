//! The one trait a device author implements: [`DevicePlugin`], created by a
//! [`PluginFactory`] from the device's entry in `connector.yaml`.
//!
//! A plugin never sees sockets, actors or the wire format: it gets commands as
//! [`Message`]s, returns a [`Reply`], and emits events through an [`EventSink`]
//! it may clone into its own threads or timers.
//!
//! # Example
//!
//! ```
//! use connector_plugin_api::plugin::{DevicePlugin, DeviceSpec, EventSink, PluginError, Reply};
//! use connector_plugin_api::Message;
//! use serde::Deserialize;
//!
//! /// Settings of one thermostat, read from the device's `settings:` in the config.
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Settings {
//!     target: f64,
//! }
//!
//! struct Thermostat {
//!     target: f64,
//!     events: Option<EventSink>,
//! }
//!
//! impl DevicePlugin for Thermostat {
//!     fn start(&mut self, events: EventSink) -> Result<(), PluginError> {
//!         // Report the initial state; a real device might start a polling thread here.
//!         events.emit("target", self.target.to_string())?;
//!         self.events = Some(events);
//!         Ok(())
//!     }
//!
//!     fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
//!         match command.endpoint.as_str() {
//!             "get" => Ok(Reply::body(self.target.to_string())),
//!             "set" => {
//!                 self.target = command.payload.trim().parse().map_err(|_| {
//!                     PluginError::new(format!("not a number: {:?}", command.payload))
//!                 })?;
//!                 Ok(Reply::body("ok"))
//!             }
//!             other => Err(PluginError::new(format!("unknown endpoint {other:?}"))),
//!         }
//!     }
//! }
//!
//! fn create(spec: &DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> {
//!     let settings: Settings = spec.settings()?;
//!     Ok(Box::new(Thermostat { target: settings.target, events: None }))
//! }
//!
//! // What the runtime does with it, in short:
//! let spec = DeviceSpec::new("t1", "thermostat", "Hall")
//!     .with_settings(serde_json::json!({"target": 21.0}));
//! let mut device = create(&spec).unwrap();
//! let (sink, events) = EventSink::channel("t1");
//! device.start(sink).unwrap();
//! assert_eq!(events.try_recv().unwrap().payload, "21");
//! let command = Message { device_id: "t1".into(), endpoint: "get".into(), task_id: "1".into(), ..Message::default() };
//! assert_eq!(device.command(&command).unwrap().body, "21");
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::mpsc;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::{Device, Message};

/// What went wrong inside a plugin. The runtime logs it with the device id
/// and, for a command, answers the platform with the error text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PluginError {
    pub message: String,
}

impl PluginError {
    pub fn new(message: impl Into<String>) -> Self {
        PluginError {
            message: message.into(),
        }
    }
}

/// The answer to a command. The runtime turns it into a `response:` frame
/// that keeps the command's task id and every other field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reply {
    /// `payload_header` of the response, often empty.
    pub header: String,
    /// `payload` of the response.
    pub body: String,
}

impl Reply {
    pub fn body(body: impl Into<String>) -> Self {
        Reply {
            header: String::new(),
            body: body.into(),
        }
    }

    pub fn with_header(mut self, header: impl Into<String>) -> Self {
        self.header = header.into();
        self
    }
}

/// One device's entry from `connector.yaml`, as its plugin is given it.
/// Plugin libraries get it as JSON (see [`crate::abi`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceSpec {
    pub device: Device,
    /// Name of the plugin that drives the device.
    #[serde(default)]
    pub plugin: String,
    /// The free `settings:` mapping, as JSON so that plugin libraries can take it too.
    #[serde(default)]
    pub settings: serde_json::Value,
    /// Where the entry stands, for error messages (`connector.yaml:12`).
    #[serde(default)]
    pub origin: Option<String>,
    /// How long the platform waits for this device's answer to a command
    /// (`command_timeout_ms`): past it, the runtime answers with an error and
    /// drops the plugin's late answer. A plugin doing I/O per command may
    /// bound its own waits by it.
    #[serde(default = "default_command_timeout_ms")]
    pub command_timeout_ms: u64,
}

/// How long a device has to answer a command before the platform gets an
/// error reply instead: 30 s. The default of `command_timeout_ms` in
/// `connector.yaml` too.
pub const DEFAULT_COMMAND_TIMEOUT_MS: u64 = 30_000;

fn default_command_timeout_ms() -> u64 {
    DEFAULT_COMMAND_TIMEOUT_MS
}

impl DeviceSpec {
    pub fn new(id: impl Into<String>, device_type: impl Into<String>, name: impl Into<String>) -> Self {
        DeviceSpec {
            device: Device::new(id, device_type, name),
            plugin: String::new(),
            settings: serde_json::Value::Object(Default::default()),
            origin: None,
            command_timeout_ms: default_command_timeout_ms(),
        }
    }

    pub fn with_plugin(mut self, plugin: impl Into<String>) -> Self {
        self.plugin = plugin.into();
        self
    }

    pub fn with_settings(mut self, settings: serde_json::Value) -> Self {
        self.settings = settings;
        self
    }

    pub fn id(&self) -> &str {
        &self.device.id
    }

    pub fn with_command_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.command_timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// [`command_timeout_ms`](Self::command_timeout_ms) as a duration.
    pub fn command_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.command_timeout_ms)
    }

    /// Deserializes `settings` into the plugin's own type. A mismatch names the
    /// device, where it is declared, and the key path that did not fit.
    pub fn settings<T: DeserializeOwned>(&self) -> Result<T, PluginError> {
        // `null` (no settings at all) reads as an empty mapping so that a
        // settings type with only defaults needs no `settings: {}` line.
        let value = match &self.settings {
            serde_json::Value::Null => serde_json::Value::Object(Default::default()),
            other => other.clone(),
        };
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let key = if path == "." {
                "settings".to_owned()
            } else {
                format!("settings.{path}")
            };
            let origin = self.origin.as_deref().map(|o| format!(" ({o})")).unwrap_or_default();
            PluginError::new(format!("device {:?}{origin}: `{key}`: {}", self.device.id, e.inner()))
        })
    }
}

/// Why an event could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The device was stopped; events after that have nowhere to go.
    #[error("device {0:?} is stopped; the event was not accepted")]
    Stopped(String),
}

impl From<EmitError> for PluginError {
    fn from(e: EmitError) -> Self {
        PluginError::new(e.to_string())
    }
}

type EmitFn = dyn Fn(Message) -> Result<(), EmitError> + Send + Sync;
type FailFn = dyn Fn(String) + Send + Sync;

/// Sends a device's events to the platform. Cheap to clone and usable from
/// any thread; the device id is filled in for the plugin.
#[derive(Clone)]
pub struct EventSink {
    device_id: Arc<str>,
    emit: Arc<EmitFn>,
    fail: Option<Arc<FailFn>>,
}

impl fmt::Debug for EventSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSink").field("device_id", &self.device_id).finish()
    }
}

impl EventSink {
    /// A sink that hands each event to `emit`; the runtime builds these.
    pub fn new(
        device_id: impl Into<Arc<str>>,
        emit: impl Fn(Message) -> Result<(), EmitError> + Send + Sync + 'static,
    ) -> Self {
        EventSink {
            device_id: device_id.into(),
            emit: Arc::new(emit),
            fail: None,
        }
    }

    /// Adds what [`report_failure`](Self::report_failure) calls; the runtime
    /// turns it into a restart of the device.
    pub fn on_failure(mut self, fail: impl Fn(String) + Send + Sync + 'static) -> Self {
        self.fail = Some(Arc::new(fail));
        self
    }

    /// A sink feeding a channel, for tests and for driving a plugin by hand.
    pub fn channel(device_id: &str) -> (EventSink, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel();
        let id = device_id.to_owned();
        let sink = EventSink::new(device_id, move |m| {
            tx.send(m).map_err(|_| EmitError::Stopped(id.clone()))
        });
        (sink, rx)
    }

    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Emits an event with an endpoint and a body.
    pub fn emit(&self, endpoint: impl Into<String>, body: impl Into<String>) -> Result<(), EmitError> {
        self.send(Message::event(self.device_id.as_ref(), endpoint, body))
    }

    /// Emits a whole message; its device id is set to this device's and its
    /// task id cleared, so it always leaves as an event.
    pub fn send(&self, mut message: Message) -> Result<(), EmitError> {
        if message.device_id != *self.device_id {
            message.device_id = self.device_id.to_string();
        }
        message.task_id.clear();
        (self.emit)(message)
    }

    /// Tells the runtime the plugin failed outside a call, for example its
    /// own thread died: the device is stopped and started anew after a
    /// back-off, as after a panic in `command`. Does nothing on a sink
    /// without a runtime behind it (such as [`EventSink::channel`]).
    pub fn report_failure(&self, reason: impl Into<String>) {
        if let Some(fail) = &self.fail {
            fail(reason.into());
        }
    }
}

/// What a [`Responder`] is given: the reply, or why there is none.
pub type CommandResult = Result<Reply, PluginError>;

type RespondFn = dyn FnOnce(CommandResult) + Send;

/// The answer to one command, to be given later and from any thread: what
/// [`DevicePlugin::command_deferred`] gets. Answer it once with
/// [`send`](Self::send); a responder dropped unanswered answers the platform
/// with an error, so no task waits forever (one dropped when the platform has
/// its answer already, or while its thread panics, sends nothing: a panic in the call is answered by the runtime with
/// the panic's text, one on a plugin's own thread by the deadline). An
/// answer after the device's `command_timeout` is logged, counted and
/// dropped: the platform already has the deadline's error.
pub struct Responder {
    respond: Option<Box<RespondFn>>,
    /// Whether the command was answered already by someone else (its
    /// deadline, a stop); see [`Responder::is_answered`].
    answered: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("answered", &self.respond.is_none())
            .finish()
    }
}

impl Responder {
    /// A responder that hands the answer to `respond`; the runtime builds these.
    pub fn new(respond: impl FnOnce(CommandResult) + Send + 'static) -> Self {
        Responder {
            respond: Some(Box::new(respond)),
            answered: None,
        }
    }

    /// Adds what [`is_answered`](Self::is_answered) asks; the runtime sets it.
    pub fn with_answered(mut self, answered: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.answered = Some(Arc::new(answered));
        self
    }

    /// Whether the platform has its answer already without this responder:
    /// the command's deadline passed, or the device was stopped. A plugin
    /// that queues commands (for a worker thread) may skip those, so that a
    /// "switch on" the platform was told failed does not run after all.
    pub fn is_answered(&self) -> bool {
        self.respond.is_none() || self.answered.as_ref().is_some_and(|answered| answered())
    }

    /// A responder feeding a channel, for tests and for driving a plugin by hand.
    pub fn channel() -> (Responder, mpsc::Receiver<CommandResult>) {
        let (tx, rx) = mpsc::channel();
        (
            Responder::new(move |result| {
                let _ = tx.send(result);
            }),
            rx,
        )
    }

    /// Answers the command.
    pub fn send(mut self, result: CommandResult) {
        if let Some(respond) = self.respond.take() {
            respond(result);
        }
    }

    /// Answers the command with a reply.
    pub fn reply(self, reply: Reply) {
        self.send(Ok(reply));
    }

    /// Answers the command with an error.
    pub fn error(self, error: impl Into<String>) {
        self.send(Err(PluginError::new(error)));
    }

    /// Lets go of a command without answering it: for one the platform has
    /// its answer to already ([`is_answered`](Self::is_answered)), which a
    /// dropped responder would otherwise answer once more (dropped, and
    /// counted as a late reply).
    pub fn abandon(mut self) {
        self.respond = None;
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(respond) = self.respond.take() {
            if !std::thread::panicking() && !self.answered.as_ref().is_some_and(|answered| answered()) {
                respond(Err(PluginError::new(
                    "the plugin dropped the command without answering it",
                )));
            }
        }
    }
}

/// A device driver. One instance drives one device; the runtime calls it one
/// call at a time, so `&mut self` needs no locking.
///
/// # Threads
/// Every call (`create` of its factory, `start`, `command`, `stop`, drop)
/// runs on the runtime's plugin pool (plain threads; the settings check of
/// `--check` on a thread of its own), never on the thread that talks to the
/// platform. A call may block (a device's HTTP API, a serial read): it holds
/// up this device's next command and one pool thread, nothing else. A
/// command not answered within the device's `command_timeout_ms` gets the
/// platform an error reply. A device that answers from a thread of its own
/// (a serial port's worker) implements [`command_deferred`](Self::command_deferred)
/// instead and answers through the [`Responder`]; one that awaits I/O can be
/// an [`AsyncDevicePlugin`] instead. The pool is a rayon pool: a plugin
/// compiled into the program that uses rayon itself should give it a pool
/// of its own, since the global `rayon::join` or `par_iter` called in a
/// plugin call would run on (and wait for) the plugin pool.
pub trait DevicePlugin: Send + 'static {
    /// The device starts (also after a restart). Keep the sink to emit events.
    fn start(&mut self, events: EventSink) -> Result<(), PluginError> {
        let _ = events;
        Ok(())
    }

    /// A command for this device: endpoint, header, body and the rest of the
    /// message. The reply goes back to the platform with the command's task id.
    ///
    /// A plugin that implements [`command_deferred`](Self::command_deferred)
    /// need not implement this one.
    fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
        Err(PluginError::new(format!(
            "the plugin does not handle commands (endpoint {:?})",
            command.endpoint
        )))
    }

    /// A command to answer through `reply`, now or later and from any thread.
    /// The next command comes as soon as this returns, so a plugin that keeps
    /// responders answers several commands at once; each answer keeps its own
    /// command's task id. The default answers with [`command`](Self::command).
    fn command_deferred(&mut self, command: &Message, reply: Responder) {
        reply.send(self.command(command));
    }

    /// The device stops; stop threads and timers started in `start`.
    fn stop(&mut self) {}
}

/// A boxed future that need not be `Send`, as [`AsyncDevicePlugin`] returns.
pub type LocalFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>>;

/// A device driver that awaits I/O instead of blocking: for a device behind
/// a REST API (with `connector_core::http`) or another async client.
///
/// The runtime runs every async device on one thread of its own with an
/// actix/tokio runtime, so an instance need not be `Send` (an `awc` client
/// is not) and waits cost no thread. One device's commands are awaited one
/// at a time, in order; different devices' overlap. Never block in these
/// methods: that stalls every async device (a blocking device is a
/// [`DevicePlugin`]). Registered with the runtime's `async_plugin`.
///
/// A panic in a command is answered with an error and the device is
/// created anew, as for a [`DevicePlugin`]; the other async devices go on.
/// A background task of the plugin's own that fails should say so with
/// [`EventSink::report_failure`].
pub trait AsyncDevicePlugin: 'static {
    /// The device starts (also after a restart). Keep the sink to emit events;
    /// a background task of the plugin's own may run with
    /// `actix_rt::spawn` until `stop`.
    fn start(&mut self, events: EventSink) -> LocalFuture<'_, Result<(), PluginError>> {
        let _ = events;
        Box::pin(async { Ok(()) })
    }

    /// A command for this device; the reply goes back with its task id.
    fn command<'a>(&'a mut self, command: &'a Message) -> LocalFuture<'a, Result<Reply, PluginError>>;

    /// The device stops; end what `start` began.
    fn stop(&mut self) -> LocalFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Makes plugins of one kind, named in the config's `plugin:` key.
pub trait PluginFactory: Send + Sync + 'static {
    fn create(&self, spec: &DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError>;
}

impl<F> PluginFactory for F
where
    F: Fn(&DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> + Send + Sync + 'static,
{
    fn create(&self, spec: &DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> {
        self(spec)
    }
}

/// The plugins a runtime knows by name: built-in ones, a program's own, and
/// those loaded from libraries.
#[derive(Clone, Default)]
pub struct PluginRegistry {
    factories: BTreeMap<String, Arc<dyn PluginFactory>>,
}

impl fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.factories.keys()).finish()
    }
}

impl PluginRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a plugin under `name`, replacing one of the same name.
    pub fn register(&mut self, name: impl Into<String>, factory: impl PluginFactory) -> &mut Self {
        self.factories.insert(name.into(), Arc::new(factory));
        self
    }

    pub fn contains(&self, name: &str) -> bool {
        self.factories.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Whether the plugin takes `spec`'s settings, without starting anything:
    /// an instance is created and dropped unstarted (plugins do nothing until
    /// `start`). A factory that panics refuses too, instead of crashing the
    /// check.
    pub fn check_settings(&self, spec: &DeviceSpec) -> Result<(), PluginError> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.create(spec).map(drop))) {
            Ok(result) => result,
            Err(_) => Err(PluginError::new("the plugin panicked while checking the settings")),
        }
    }

    /// Creates the plugin a device asks for; an unknown name lists the known ones.
    pub fn create(&self, spec: &DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> {
        match self.factories.get(&spec.plugin) {
            Some(factory) => factory.create(spec),
            None => Err(PluginError::new(format!(
                "device {:?}: no plugin named {:?} (known: {})",
                spec.id(),
                spec.plugin,
                self.names().collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Settings {
        interval_ms: u64,
        #[serde(default)]
        inner: Inner,
    }

    #[derive(Debug, Default, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        level: u8,
    }

    #[test]
    fn settings_that_do_not_fit_name_the_device_and_the_key() {
        let spec = |settings| DeviceSpec {
            origin: Some("connector.yaml:7".into()),
            ..DeviceSpec::new("lamp-1", "lamp", "Lamp").with_settings(settings)
        };
        let table = [
            (
                serde_json::json!({"interval_ms": "fast"}),
                "`settings.interval_ms`: invalid type: string",
            ),
            (
                serde_json::json!({"interval_ms": 1, "inner": {"level": 300}}),
                "`settings.inner.level`",
            ),
            (
                serde_json::json!({"interval_ms": 1, "colour": 2}),
                "unknown field `colour`",
            ),
            (serde_json::json!({}), "missing field `interval_ms`"),
            (serde_json::Value::Null, "missing field `interval_ms`"),
        ];
        for (settings, fragment) in table {
            let err = spec(settings).settings::<Settings>().unwrap_err().to_string();
            assert!(err.starts_with("device \"lamp-1\" (connector.yaml:7): "), "{err}");
            assert!(err.contains(fragment), "{err} lacks {fragment}");
        }
    }

    struct Echo;
    impl DevicePlugin for Echo {
        fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
            Ok(Reply::body(command.payload.clone()))
        }
    }

    #[test]
    fn the_registry_creates_plugins_by_name_and_lists_the_known_ones_otherwise() {
        let mut registry = PluginRegistry::new();
        registry.register("echo", |_: &DeviceSpec| Ok(Box::new(Echo) as Box<dyn DevicePlugin>));
        let spec = DeviceSpec::new("d", "t", "n").with_plugin("echo");
        let mut plugin = registry.create(&spec).unwrap();
        let command = Message {
            payload: "hi".into(),
            ..Message::default()
        };
        assert_eq!(plugin.command(&command).unwrap().body, "hi");
        let err = registry.create(&spec.with_plugin("lamp")).err().unwrap().to_string();
        assert_eq!(err, "device \"d\": no plugin named \"lamp\" (known: echo)");
    }

    #[test]
    fn check_settings_reports_a_refusal_and_a_panic_without_crashing() {
        let mut registry = PluginRegistry::new();
        registry.register("echo", |_: &DeviceSpec| Ok(Box::new(Echo) as Box<dyn DevicePlugin>));
        registry.register(
            "picky",
            |_: &DeviceSpec| -> Result<Box<dyn DevicePlugin>, PluginError> {
                Err(PluginError::new("`rate` must be above 0"))
            },
        );
        registry.register(
            "broken",
            |_: &DeviceSpec| -> Result<Box<dyn DevicePlugin>, PluginError> { panic!("the factory fell over") },
        );
        let spec = DeviceSpec::new("d", "t", "n");
        assert!(registry.check_settings(&spec.clone().with_plugin("echo")).is_ok());
        let refused = registry.check_settings(&spec.clone().with_plugin("picky")).unwrap_err();
        assert_eq!(refused.to_string(), "`rate` must be above 0");
        let panicked = registry.check_settings(&spec.with_plugin("broken")).unwrap_err();
        assert_eq!(panicked.to_string(), "the plugin panicked while checking the settings");
    }

    #[test]
    fn the_sink_stamps_the_device_id_and_never_sends_a_task_id() {
        let (sink, rx) = EventSink::channel("dev");
        let sneaky = Message {
            device_id: "other".into(),
            task_id: "t".into(),
            ..Message::default()
        };
        sink.send(sneaky).unwrap();
        let got = rx.recv().unwrap();
        assert_eq!((got.device_id.as_str(), got.task_id.as_str()), ("dev", ""));
        drop(rx);
        assert_eq!(sink.emit("e", "b"), Err(EmitError::Stopped("dev".into())));
    }
}
