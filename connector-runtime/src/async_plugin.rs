//! Async plugins: every [`AsyncDevicePlugin`] runs on one thread of its own with an actix runtime, behind an adapter the device actors drive as an ordinary [`DevicePlugin`].
//!
//! # How it works
//!
//! The thread ("async-plugins") starts on first use and runs an
//! `actix_rt::System`, so `awc` (and so `connector_core::http`) and
//! `actix_rt::spawn` work there; the plugin pool's threads have no System,
//! and `actix_rt::Arbiter::new` needs one on the calling thread, hence a
//! thread of our own. The adapter's `create` (on a pool thread) has the
//! factory run there and waits for it, so a refused setting comes back from
//! `create` as for any plugin (`--check`, a reload). The instance then lives
//! in a local task of that thread for its whole life, taking calls from the
//! adapter one at a time, in order:
//!
//! - `start` and `stop`: the adapter waits for the answer (`stop` at most
//!   [`STOP_WAIT`], so a hung async `stop` holds no pool thread for long);
//! - a command: [`DevicePlugin::command_deferred`] hands it over with its
//!   [`Responder`] and returns at once; the task awaits the plugin's answer
//!   and sends it. While one device awaits, the others' tasks run.
//!
//! Dropping the adapter ends the task at once, even in the middle of a call,
//! and the instance is dropped on its own thread.
//!
//! # Panics
//!
//! A panic in the factory or in `start` comes back as the same panic on the
//! caller's thread, where the runtime catches it as for any plugin. One in a
//! command is caught on the thread (it never takes the other devices down):
//! the command is answered with an error, later ones with "restarting", and
//! the failure is reported through [`EventSink::report_failure`], so the
//! device is stopped and created anew like a sync plugin that panicked. A
//! panic in `stop` or in a drop is logged.

use std::any::Any;
use std::cell::Cell;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::time::Duration;

use connector_core::plugin::{
    AsyncDevicePlugin, DevicePlugin, DeviceSpec, EventSink, PluginError, PluginFactory, Reply, Responder,
};
use connector_core::Message;
use futures_util::FutureExt;
use tracing::{error, warn};

use crate::device::panic_text;

/// How long the adapter's `stop` waits for the async `stop` before it lets
/// the pool thread go; below the device's own
/// [`STOP_TIMEOUT`](crate::device::STOP_TIMEOUT), so the device is not held
/// up either. The task goes on without anyone waiting, and ends when the
/// adapter is dropped right after.
pub const STOP_WAIT: Duration = Duration::from_secs(3);

/// Makes a [`PluginFactory`] of an async plugin's factory, for a
/// [`PluginRegistry`](connector_core::plugin::PluginRegistry); the builder's
/// [`async_plugin`](crate::ConnectorBuilder::async_plugin) does this for you.
///
/// `factory` runs on the async plugins' thread (an `awc` client may be made
/// in it) and should only read the settings: it is also called to check
/// them, and the instance is then dropped unstarted.
///
/// ```
/// use connector_core::plugin::{AsyncDevicePlugin, DeviceSpec, LocalFuture, PluginError, PluginRegistry, Reply};
/// use connector_core::Message;
///
/// struct Echo;
///
/// impl AsyncDevicePlugin for Echo {
///     fn command<'a>(&'a mut self, command: &'a Message) -> LocalFuture<'a, Result<Reply, PluginError>> {
///         Box::pin(async move { Ok(Reply::body(command.payload.clone())) })
///     }
/// }
///
/// let mut registry = PluginRegistry::new();
/// registry.register("echo", connector_runtime::async_plugin::async_factory(|_: &DeviceSpec| Ok(Echo)));
/// let spec = DeviceSpec::new("e1", "echo", "Echo").with_plugin("echo");
/// let mut device = registry.create(&spec).unwrap();
/// let command = Message { payload: "hi".into(), ..Message::default() };
/// assert_eq!(device.command(&command).unwrap().body, "hi");
/// ```
pub fn async_factory<P, F>(factory: F) -> impl PluginFactory
where
    P: AsyncDevicePlugin,
    F: Fn(&DeviceSpec) -> Result<P, PluginError> + Send + Sync + 'static,
{
    AsyncFactory {
        factory: Arc::new(factory),
        plugin: PhantomData,
    }
}

struct AsyncFactory<F, P> {
    factory: Arc<F>,
    /// `fn() -> P`: the factory makes `P`s but holds none, so it is `Send`
    /// and `Sync` whatever `P` is.
    plugin: PhantomData<fn() -> P>,
}

impl<P, F> PluginFactory for AsyncFactory<F, P>
where
    P: AsyncDevicePlugin,
    F: Fn(&DeviceSpec) -> Result<P, PluginError> + Send + Sync + 'static,
{
    fn create(&self, spec: &DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> {
        off_the_thread("create")?;
        let (factory, spec) = (self.factory.clone(), spec.clone());
        let (tx, rx) = mpsc::sync_channel(1);
        run_on_thread(Box::new(move || {
            let made = catch_unwind(AssertUnwindSafe(|| factory(&spec)));
            let link = made.map(|made| made.map(|plugin| spawn_task(plugin, spec.device.id)));
            let _ = tx.send(link);
        }))?;
        match rx.recv() {
            Ok(Ok(link)) => link.map(|link| Box::new(AsyncDevice { link }) as Box<dyn DevicePlugin>),
            Ok(Err(panic)) => resume_unwind(panic),
            Err(_) => Err(thread_gone()),
        }
    }
}

type Panic = Box<dyn Any + Send>;
type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    /// Set on the async plugins' thread, where waiting for it would hang.
    static ON_THE_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Refuses a blocking call made on the async plugins' thread itself (an
/// async plugin driving another device's adapter by hand), which would wait
/// for itself.
fn off_the_thread(call: &str) -> Result<(), PluginError> {
    if ON_THE_THREAD.get() {
        return Err(PluginError::new(format!(
            "an async plugin's {call} was called on the async plugins' own thread, which would wait for itself"
        )));
    }
    Ok(())
}

fn thread_gone() -> PluginError {
    PluginError::new("the async plugins' thread is gone")
}

/// Hands `job` to the async plugins' thread, starting it the first time
/// (and again, should it ever have ended).
fn run_on_thread(job: Job) -> Result<(), PluginError> {
    static JOBS: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Job>>> = Mutex::new(None);
    let mut jobs = JOBS.lock().unwrap_or_else(PoisonError::into_inner);
    let job = match jobs.as_ref() {
        Some(tx) => match tx.send(job) {
            Ok(()) => return Ok(()),
            Err(tokio::sync::mpsc::error::SendError(job)) => job,
        },
        None => job,
    };
    let tx = start_thread()?;
    tx.send(job).map_err(|_| thread_gone())?;
    *jobs = Some(tx);
    Ok(())
}

fn start_thread() -> Result<tokio::sync::mpsc::UnboundedSender<Job>, PluginError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
    std::thread::Builder::new()
        .name("async-plugins".into())
        .spawn(move || {
            ON_THE_THREAD.set(true);
            actix_rt::System::new().block_on(async move {
                while let Some(job) = rx.recv().await {
                    // Jobs catch the plugins' panics; this is for the runtime's own.
                    if catch_unwind(AssertUnwindSafe(job)).is_err() {
                        error!("a job on the async plugins' thread panicked");
                    }
                }
            });
        })
        .map_err(|e| PluginError::new(format!("cannot start the async plugins' thread: {e}")))?;
    Ok(tx)
}

/// A call from the adapter to its task.
enum Call {
    Start(EventSink, SyncSender<Result<Result<(), PluginError>, Panic>>),
    /// Boxed: a message is large, and a queue's slots are as large as its biggest call.
    Command(Box<Message>, Responder),
    Stop(SyncSender<()>),
}

/// One device's calls, from its adapter (on any thread) to its task: a
/// queue of its own rather than a tokio channel, which allocates a block of
/// 32 slots per device up front, and whose receiver could not tell that the
/// adapter is gone without taking the next call.
struct Link {
    device_id: String,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    calls: VecDeque<Call>,
    /// The task, to wake when a call comes or the adapter is dropped.
    task: Option<Waker>,
    /// The adapter was dropped: the task ends.
    dropped: bool,
    /// The task ended: calls are refused.
    ended: bool,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a call for the task; gives it back if the task has ended.
    fn push(&self, call: Call) -> Result<(), Call> {
        let task = {
            let mut queue = self.lock();
            if queue.ended {
                return Err(call);
            }
            queue.calls.push_back(call);
            queue.task.take()
        };
        if let Some(task) = task {
            task.wake();
        }
        Ok(())
    }

    /// Remembers the task to wake, unless it is that one already.
    fn park(queue: &mut Queue, waker: &Waker) {
        if !queue.task.as_ref().is_some_and(|w| w.will_wake(waker)) {
            queue.task = Some(waker.clone());
        }
    }

    /// The next call; `None` once the adapter is dropped.
    async fn next(&self) -> Option<Call> {
        poll_fn(|cx| {
            let mut queue = self.lock();
            if queue.dropped {
                return Poll::Ready(None);
            }
            if let Some(call) = queue.calls.pop_front() {
                return Poll::Ready(Some(call));
            }
            Link::park(&mut queue, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Awaits `work`, or gives up on it (dropping it unfinished) when the
    /// adapter is dropped meanwhile.
    async fn unless_dropped<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        let mut work = std::pin::pin!(work);
        poll_fn(|cx| {
            if let Poll::Ready(done) = work.as_mut().poll(cx) {
                return Poll::Ready(Some(done));
            }
            let mut queue = self.lock();
            if queue.dropped {
                return Poll::Ready(None);
            }
            Link::park(&mut queue, cx.waker());
            Poll::Pending
        })
        .await
    }
}

/// The task's end of the link: when the task ends, however it ends, the
/// adapter's calls are refused and those left are dropped (a command's
/// responder then answers with an error, a waiting `start` or `stop` returns).
struct Ending(Arc<Link>);

impl Drop for Ending {
    fn drop(&mut self) {
        let left = {
            let mut queue = self.0.lock();
            queue.ended = true;
            std::mem::take(&mut queue.calls)
        };
        drop(left);
    }
}

/// On the thread: the instance's task, and the adapter's end of its link.
fn spawn_task<P: AsyncDevicePlugin>(plugin: P, device_id: String) -> Arc<Link> {
    let link = Arc::new(Link {
        device_id,
        queue: Mutex::default(),
    });
    actix_rt::spawn(serve(plugin, Ending(link.clone())));
    link
}

/// Takes the adapter's calls one at a time, in order, until it is dropped.
async fn serve<P: AsyncDevicePlugin>(mut plugin: P, ending: Ending) {
    let link = &*ending.0;
    let id = link.device_id.as_str();
    let mut events: Option<EventSink> = None;
    // Set by a panic in a command: later ones are refused until a stop.
    let mut failed = false;
    while let Some(call) = link.next().await {
        match call {
            Call::Start(sink, done) => {
                let started = AssertUnwindSafe(plugin.start(sink.clone())).catch_unwind();
                let Some(started) = link.unless_dropped(started).await else {
                    break;
                };
                events = Some(sink);
                failed = false;
                let _ = done.send(started);
            }
            Call::Command(command, reply) => {
                if failed {
                    reply.error(format!("device {id} is restarting"));
                    continue;
                }
                let answer = AssertUnwindSafe(plugin.command(&command)).catch_unwind();
                let Some(answer) = link.unless_dropped(answer).await else {
                    reply.error(format!("device {id} stopped before it answered"));
                    break;
                };
                match answer {
                    Ok(result) => reply.send(result),
                    Err(panic) => {
                        let reason = format!("panicked on command {:?}: {}", command.endpoint, panic_text(&panic));
                        reply.error(reason.clone());
                        failed = true;
                        match &events {
                            Some(events) => events.report_failure(reason),
                            None => warn!(device_id = %id, "async plugin {reason} before it was started"),
                        }
                    }
                }
            }
            Call::Stop(done) => {
                let stopped = AssertUnwindSafe(plugin.stop()).catch_unwind();
                let Some(stopped) = link.unless_dropped(stopped).await else {
                    break;
                };
                if let Err(panic) = stopped {
                    warn!(device_id = %id, "plugin panicked while stopping: {}", panic_text(&panic));
                }
                events = None;
                let _ = done.send(());
            }
        }
    }
    if catch_unwind(AssertUnwindSafe(move || drop(plugin))).is_err() {
        warn!(device_id = %id, "plugin panicked while being dropped");
    }
}

/// What the device actor drives: one pointer to the device's link.
struct AsyncDevice {
    link: Arc<Link>,
}

impl AsyncDevice {
    fn gone(&self) -> PluginError {
        PluginError::new(format!(
            "device {}: the async plugin's task has ended",
            self.link.device_id
        ))
    }
}

impl DevicePlugin for AsyncDevice {
    fn start(&mut self, events: EventSink) -> Result<(), PluginError> {
        off_the_thread("start")?;
        let (tx, rx) = mpsc::sync_channel(1);
        self.link.push(Call::Start(events, tx)).map_err(|_| self.gone())?;
        match rx.recv() {
            Ok(Ok(started)) => started,
            Ok(Err(panic)) => resume_unwind(panic),
            Err(_) => Err(self.gone()),
        }
    }

    /// Waits for the answer; the runtime calls
    /// [`command_deferred`](Self::command_deferred) instead. For driving a
    /// device by hand.
    fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
        off_the_thread("command")?;
        let (reply, answer) = Responder::channel();
        self.command_deferred(command, reply);
        answer.recv().unwrap_or_else(|_| Err(self.gone()))
    }

    fn command_deferred(&mut self, command: &Message, reply: Responder) {
        if let Err(_call) = self.link.push(Call::Command(Box::new(command.clone()), reply)) {
            // Only a bug ends the task before the adapter is dropped. The
            // panic makes the pool job answer the command (the responder,
            // dropped while panicking, leaves it to the job) and restart the
            // device.
            panic!("{}", self.gone());
        }
    }

    fn stop(&mut self) {
        if let Err(e) = off_the_thread("stop") {
            return warn!(device_id = %self.link.device_id, "{e}");
        }
        let (tx, rx) = mpsc::sync_channel(1);
        if self.link.push(Call::Stop(tx)).is_err() {
            return;
        }
        if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(STOP_WAIT) {
            warn!(device_id = %self.link.device_id, timeout_s = STOP_WAIT.as_secs(),
                "the async plugin did not stop in time; it is dropped unfinished");
        }
    }
}

impl Drop for AsyncDevice {
    fn drop(&mut self) {
        let task = {
            let mut queue = self.link.lock();
            queue.dropped = true;
            queue.task.take()
        };
        if let Some(task) = task {
            task.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use connector_core::plugin::{CommandResult, LocalFuture, PluginRegistry};
    use std::time::Instant;

    /// What a [`Responder::channel`] answers on.
    type Answer = mpsc::Receiver<CommandResult>;

    /// Answers `echo` after a real wait on the thread's timer, panics on
    /// `boom` after one, hangs on `hang`, and records where it was dropped.
    struct Toy {
        dropped_on: Arc<Mutex<Option<String>>>,
    }

    impl AsyncDevicePlugin for Toy {
        fn command<'a>(&'a mut self, command: &'a Message) -> LocalFuture<'a, Result<Reply, PluginError>> {
            Box::pin(async move {
                actix_rt::time::sleep(Duration::from_millis(1)).await;
                match command.endpoint.as_str() {
                    "boom" => panic!("toy blew up"),
                    "hang" => std::future::pending().await,
                    _ => Ok(Reply::body(command.payload.clone())),
                }
            })
        }
    }

    impl Drop for Toy {
        fn drop(&mut self) {
            let thread = std::thread::current().name().map(str::to_owned);
            *self.dropped_on.lock().unwrap() = thread;
        }
    }

    fn toys() -> (PluginRegistry, Arc<Mutex<Option<String>>>) {
        let dropped_on = Arc::new(Mutex::new(None));
        let on = dropped_on.clone();
        let mut registry = PluginRegistry::new();
        registry.register(
            "toy",
            async_factory(move |spec: &DeviceSpec| {
                if spec.settings.get("refuse").is_some() {
                    return Err(PluginError::new("`refuse` is not a setting"));
                }
                if spec.settings.get("panic").is_some() {
                    panic!("the toy factory fell over");
                }
                Ok(Toy { dropped_on: on.clone() })
            }),
        );
        (registry, dropped_on)
    }

    fn spec(settings: serde_json::Value) -> DeviceSpec {
        DeviceSpec::new("toy-1", "toy", "Toy")
            .with_plugin("toy")
            .with_settings(settings)
    }

    fn command(endpoint: &str, body: &str) -> Message {
        Message {
            device_id: "toy-1".into(),
            endpoint: endpoint.into(),
            payload: body.into(),
            ..Message::default()
        }
    }

    fn deferred(device: &mut Box<dyn DevicePlugin>, endpoint: &str, body: &str) -> Answer {
        let (reply, answer) = Responder::channel();
        device.command_deferred(&command(endpoint, body), reply);
        answer
    }

    const WAIT: Duration = Duration::from_secs(20);

    #[test]
    fn commands_are_answered_in_order_and_the_instance_is_dropped_on_its_thread() {
        let (registry, dropped_on) = toys();
        let mut device = registry.create(&spec(serde_json::json!({}))).unwrap();
        let (sink, _events) = EventSink::channel("toy-1");
        device.start(sink).unwrap();
        let answers: Vec<Answer> = (0..20).map(|i| deferred(&mut device, "echo", &i.to_string())).collect();
        for (i, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.recv_timeout(WAIT).unwrap().unwrap().body, i.to_string());
        }
        device.stop();
        drop(device);
        let start = Instant::now();
        while dropped_on.lock().unwrap().is_none() {
            assert!(start.elapsed() < WAIT, "the instance was never dropped");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(dropped_on.lock().unwrap().as_deref(), Some("async-plugins"));
    }

    /// Every device has an adapter for its whole life; it is one pointer, to
    /// the link its task shares.
    #[test]
    fn the_adapter_stays_one_pointer() {
        assert_eq!(std::mem::size_of::<AsyncDevice>(), std::mem::size_of::<usize>());
    }

    #[test]
    fn settings_refused_or_a_factory_panic_come_back_from_create() {
        let (registry, _) = toys();
        let refused = registry
            .check_settings(&spec(serde_json::json!({"refuse": 1})))
            .unwrap_err();
        assert_eq!(refused.message, "`refuse` is not a setting");
        let panicked = registry
            .check_settings(&spec(serde_json::json!({"panic": 1})))
            .unwrap_err();
        assert_eq!(panicked.message, "the plugin panicked while checking the settings");
        // The thread lived through it.
        assert!(registry.check_settings(&spec(serde_json::json!({}))).is_ok());
    }

    #[test]
    fn a_panic_in_a_command_is_answered_reported_and_refuses_the_next_until_a_stop() {
        let (registry, _) = toys();
        let mut device = registry.create(&spec(serde_json::json!({}))).unwrap();
        let reported = Arc::new(Mutex::new(Vec::<String>::new()));
        let into = reported.clone();
        let (sink, _events) = EventSink::channel("toy-1");
        device
            .start(sink.on_failure(move |reason| into.lock().unwrap().push(reason)))
            .unwrap();
        let boom = deferred(&mut device, "boom", "");
        let after = deferred(&mut device, "echo", "late");
        let error = boom.recv_timeout(WAIT).unwrap().unwrap_err().message;
        assert_eq!(error, "panicked on command \"boom\": toy blew up");
        assert_eq!(
            after.recv_timeout(WAIT).unwrap().unwrap_err().message,
            "device toy-1 is restarting"
        );
        assert_eq!(*reported.lock().unwrap(), [error]);
        // Another device on the same thread is untouched.
        let mut other = registry.create(&spec(serde_json::json!({}))).unwrap();
        assert_eq!(other.command(&command("echo", "fine")).unwrap().body, "fine");
    }

    #[test]
    fn a_stop_behind_a_hung_command_is_given_up_on_and_dropping_the_adapter_ends_the_command() {
        let (registry, dropped_on) = toys();
        let mut device = registry.create(&spec(serde_json::json!({}))).unwrap();
        let (sink, _events) = EventSink::channel("toy-1");
        device.start(sink).unwrap();
        let hung = deferred(&mut device, "hang", "");
        let start = Instant::now();
        device.stop();
        let waited = start.elapsed();
        assert!(waited >= STOP_WAIT, "stop returned after {waited:?}");
        drop(device);
        let answer = hung.recv_timeout(WAIT).unwrap().unwrap_err().message;
        assert_eq!(answer, "device toy-1 stopped before it answered");
        let start = Instant::now();
        while dropped_on.lock().unwrap().is_none() {
            assert!(start.elapsed() < WAIT, "the instance was never dropped");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
