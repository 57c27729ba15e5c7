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
//! - `start`: the adapter waits for the answer;
//! - a command: [`DevicePlugin::command_deferred`] hands it over with its
//!   [`Responder`] and returns at once; the task awaits the plugin's answer
//!   and sends it. While one device awaits, the others' tasks run. A command
//!   the platform has its answer to by the time its turn comes (its
//!   `command_timeout_ms` passed while an earlier one ran) is skipped, never
//!   given to the plugin;
//! - `stop`: cuts the command in flight short (its future is dropped, and it
//!   is answered with an error), answers the commands queued before the stop
//!   with an error without running them, and then awaits the plugin's `stop`
//!   for at most [`STOP_WAIT`]; the adapter waits for that, so a hung async
//!   `stop` holds no pool thread for long.
//!
//! # Waits without a limit
//!
//! The factory (in `create`) and `start` are waited for without any time
//! limit, exactly as a sync plugin's are: one that never finishes holds the
//! pool thread that called it, and that device's launch, until it does.
//! Neither the device's `command_timeout_ms` nor its stop time-out applies
//! to them. Only `stop` is bounded.
//!
//! # Dropping the adapter
//!
//! Dropping the adapter ends the task at once, even in the middle of a
//! call: the command in flight is dropped and answered with an error, as are
//! those queued. If the plugin was started and its `stop` has not run since
//! (the adapter's `stop` gave up waiting, or was never called), the task
//! runs it first, for at most [`STOP_WAIT`], so the background tasks the
//! plugin spawned in `start` end with the device instead of piling up, one
//! more per restart. The instance is then dropped on its own thread.
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
use tracing::{debug, error, warn};

use crate::device::panic_text;

/// How long an async plugin's `stop` may run on the thread before its future
/// is dropped unfinished, whether the adapter's `stop` asked for it or the
/// adapter was dropped without one. The adapter's `stop` waits for it (and
/// half a second more), which stays below the device's own
/// [`STOP_TIMEOUT`](crate::device::STOP_TIMEOUT), so the device is not held
/// up either.
pub const STOP_WAIT: Duration = Duration::from_secs(3);

/// How much longer than [`STOP_WAIT`] the adapter's `stop` waits: the limit
/// is counted on the thread, from when the `stop` begins there.
const STOP_SLACK: Duration = Duration::from_millis(500);

/// A link's queue whose capacity grew past this many calls gives it back
/// once it is empty: a burst of commands must not cost one device that
/// memory for its whole life.
const QUEUE_KEEP: usize = 8;

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

#[cfg(feature = "builtin-plugins")]
pub(crate) use builtin::with_builtin_async;

/// The built-in async plugins behind the adapter, when this build has them.
#[cfg(feature = "builtin-plugins")]
mod builtin {
    use connector_core::plugin::{
        AsyncDevicePlugin, DeviceSpec, EventSink, LocalFuture, PluginError, PluginRegistry, Reply,
    };
    use connector_core::Message;

    use super::async_factory;

    /// `plugins` with the built-in async plugins (`http`, `mqtt`) added behind
    /// this adapter: the plugins crate declares them, but cannot adapt them
    /// (the runtime depends on it).
    pub(crate) fn with_builtin_async(mut plugins: PluginRegistry) -> PluginRegistry {
        for (name, factory) in connector_plugins::builtin_async() {
            plugins.register(name, async_factory(move |spec: &DeviceSpec| factory(spec).map(Boxed)));
        }
        plugins
    }

    /// A boxed async plugin, as the built-in ones come.
    struct Boxed(Box<dyn AsyncDevicePlugin>);

    impl AsyncDevicePlugin for Boxed {
        fn start(&mut self, events: EventSink) -> LocalFuture<'_, Result<(), PluginError>> {
            self.0.start(events)
        }

        fn command<'a>(&'a mut self, command: &'a Message) -> LocalFuture<'a, Result<Reply, PluginError>> {
            self.0.command(command)
        }

        fn stop(&mut self) -> LocalFuture<'_, ()> {
            self.0.stop()
        }
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

/// A call from the adapter to its task. Every payload but a stop's is boxed:
/// a queue's slots are as large as its biggest call, and a `start` (a sink
/// and a channel) or a command (a message and its responder) is large.
enum Call {
    Start(Box<Start>),
    Command(Box<Queued>),
    Stop(SyncSender<()>),
}

struct Start {
    events: EventSink,
    done: SyncSender<Result<Result<(), PluginError>, Panic>>,
}

struct Queued {
    command: Message,
    reply: Responder,
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
    /// Stops queued and not taken yet: the command in flight is cut short,
    /// and those queued before the stop are refused.
    stops: usize,
    /// The task, to wake when a call comes or the adapter is dropped.
    task: Option<Waker>,
    /// The adapter was dropped: the task ends.
    dropped: bool,
    /// The task ended: calls are refused.
    ended: bool,
}

impl Queue {
    fn put(&mut self, call: Call) {
        if matches!(call, Call::Stop(_)) {
            self.stops += 1;
        }
        self.calls.push_back(call);
    }

    /// The next call; an emptied queue that had grown gives its memory back.
    fn take(&mut self) -> Option<Call> {
        let call = self.calls.pop_front()?;
        if matches!(call, Call::Stop(_)) {
            self.stops -= 1;
        }
        if self.calls.is_empty() && self.calls.capacity() > QUEUE_KEEP {
            self.calls = VecDeque::new();
        }
        Some(call)
    }

    fn is_dropped(&self) -> bool {
        self.dropped
    }

    /// A stop was asked for, or the adapter dropped: the call in flight ends.
    fn is_stopping(&self) -> bool {
        self.dropped || self.stops > 0
    }
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
            queue.put(call);
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
            if let Some(call) = queue.take() {
                return Poll::Ready(Some(call));
            }
            Link::park(&mut queue, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Awaits `work`, or gives up on it (dropping it unfinished) as soon as
    /// `cut` holds for the queue.
    async fn unless<T>(&self, cut: fn(&Queue) -> bool, work: impl Future<Output = T>) -> Option<T> {
        let mut work = std::pin::pin!(work);
        poll_fn(|cx| {
            if let Poll::Ready(done) = work.as_mut().poll(cx) {
                return Poll::Ready(Some(done));
            }
            let mut queue = self.lock();
            if cut(&queue) {
                return Poll::Ready(None);
            }
            Link::park(&mut queue, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Refuses calls from now on; the calls left, to be dealt with.
    fn end(&self) -> VecDeque<Call> {
        let mut queue = self.lock();
        queue.ended = true;
        queue.stops = 0;
        std::mem::take(&mut queue.calls)
    }
}

/// The task's end of the link: when the task ends, however it ends, the
/// adapter's calls are refused and those left are dropped (a command's
/// responder then answers with an error, a waiting `start` or `stop` returns).
struct Ending(Arc<Link>);

impl Drop for Ending {
    fn drop(&mut self) {
        drop(self.0.end());
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

/// Lets go of the responder of a command the platform has its answer to
/// already (its deadline passed, or the device stopped), without a second
/// answer that would count as a late reply.
fn let_go(reply: Responder) {
    reply.abandon();
}

/// Answers `reply` with an error, unless the platform has its answer already.
fn refuse(reply: Responder, reason: impl FnOnce() -> String) {
    if reply.is_answered() {
        let_go(reply);
    } else {
        reply.error(reason());
    }
}

/// The error of a command the device stopped before answering, as the
/// device actor words it too.
fn stopped_before(id: &str) -> String {
    format!("device {id} stopped before it answered")
}

/// Awaits the plugin's `stop` for at most [`STOP_WAIT`], containing a panic.
async fn stop_plugin<P: AsyncDevicePlugin>(plugin: &mut P, id: &str) {
    // In the future, so that a panic in the call itself is caught too.
    let stopping = AssertUnwindSafe(async { plugin.stop().await }).catch_unwind();
    match actix_rt::time::timeout(STOP_WAIT, stopping).await {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => warn!(device_id = %id, "plugin panicked while stopping: {}", panic_text(&panic)),
        Err(_) => warn!(device_id = %id, timeout_s = STOP_WAIT.as_secs(),
            "the async plugin's stop did not finish in time; it was dropped unfinished"),
    }
}

/// Takes the adapter's calls one at a time, in order, until it is dropped;
/// then stops the plugin if it was left started, and drops it.
async fn serve<P: AsyncDevicePlugin>(mut plugin: P, ending: Ending) {
    let link = &*ending.0;
    let id = link.device_id.as_str();
    let mut events: Option<EventSink> = None;
    // From a successful start until a stop: whatever the plugin spawned in
    // `start` runs until its `stop` ends it.
    let mut owes_stop = false;
    // Set by a panic in a command: later ones are refused until a stop.
    let mut failed = false;
    while let Some(call) = link.next().await {
        match call {
            Call::Start(start) => {
                let Start { events: sink, done } = *start;
                let starting = AssertUnwindSafe(async { plugin.start(sink.clone()).await }).catch_unwind();
                let Some(started) = link.unless(Queue::is_dropped, starting).await else {
                    break;
                };
                owes_stop |= matches!(started, Ok(Ok(())));
                events = Some(sink);
                failed = false;
                let _ = done.send(started);
            }
            Call::Command(queued) => {
                let Queued { command, reply } = *queued;
                if reply.is_answered() {
                    debug!(device_id = %id, task_id = %command.task_id, endpoint = %command.endpoint,
                        "command skipped: it was answered (its deadline passed) before the device was free");
                    let_go(reply);
                    continue;
                }
                if failed {
                    refuse(reply, || format!("device {id} is restarting"));
                    continue;
                }
                if link.lock().is_stopping() {
                    refuse(reply, || stopped_before(id));
                    continue;
                }
                let answering = AssertUnwindSafe(async { plugin.command(&command).await }).catch_unwind();
                let Some(answer) = link.unless(Queue::is_stopping, answering).await else {
                    // The loop goes on to the stop, or ends if the adapter is gone.
                    refuse(reply, || stopped_before(id));
                    continue;
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
                stop_plugin(&mut plugin, id).await;
                owes_stop = false;
                events = None;
                let _ = done.send(());
            }
        }
    }
    // The adapter is gone: answer what it left queued now, not after the stop.
    for call in link.end() {
        if let Call::Command(queued) = call {
            refuse(queued.reply, || stopped_before(id));
        }
    }
    if owes_stop {
        stop_plugin(&mut plugin, id).await;
    }
    drop(events);
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
    /// Waits for the async `start` without a limit, as for a sync plugin.
    fn start(&mut self, events: EventSink) -> Result<(), PluginError> {
        off_the_thread("start")?;
        let (done, rx) = mpsc::sync_channel(1);
        let call = Call::Start(Box::new(Start { events, done }));
        self.link.push(call).map_err(|_| self.gone())?;
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
        let queued = Queued {
            command: command.clone(),
            reply,
        };
        if let Err(_call) = self.link.push(Call::Command(Box::new(queued))) {
            // Only a bug ends the task before the adapter is dropped. The
            // panic makes the pool job answer the command (the responder,
            // dropped while panicking, leaves it to the job) and restart the
            // device.
            panic!("{}", self.gone());
        }
    }

    /// Cuts the command in flight short and waits for the async `stop`, at
    /// most [`STOP_WAIT`] (and a little, as the limit is counted on the
    /// thread).
    fn stop(&mut self) {
        if let Err(e) = off_the_thread("stop") {
            return warn!(device_id = %self.link.device_id, "{e}");
        }
        let (tx, rx) = mpsc::sync_channel(1);
        if self.link.push(Call::Stop(tx)).is_err() {
            return;
        }
        if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(STOP_WAIT + STOP_SLACK) {
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
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Instant;

    /// What a [`Responder::channel`] answers on.
    type Answer = mpsc::Receiver<CommandResult>;

    /// What the toys did, for the tests to look at.
    #[derive(Default)]
    struct Record {
        /// The thread an instance was dropped on.
        dropped_on: Mutex<Option<String>>,
        /// The endpoints of the commands the plugins were given, in order.
        seen: Mutex<Vec<String>>,
        /// How many times `stop` ran.
        stops: AtomicUsize,
        /// Background tasks spawned by `start` still running.
        pollers: AtomicUsize,
        /// Opened by the test; `gated` waits for it.
        gate: tokio::sync::Notify,
    }

    impl Record {
        fn seen(&self) -> Vec<String> {
            self.seen.lock().unwrap().clone()
        }
    }

    /// Polls `done` until it holds, or fails naming `what` after [`WAIT`].
    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Answers `echo` after a real wait on the thread's timer, panics on
    /// `boom` after one, hangs on `hang`, waits for the record's gate on
    /// `gated`. `start` spawns a background task that `stop` ends.
    struct Toy {
        record: Arc<Record>,
        poller: Option<actix_rt::task::JoinHandle<()>>,
    }

    /// Held by a toy's background task, which the runtime drops when it ends.
    struct Polling(Arc<Record>);

    impl Drop for Polling {
        fn drop(&mut self) {
            self.0.pollers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl AsyncDevicePlugin for Toy {
        fn start(&mut self, _events: EventSink) -> LocalFuture<'_, Result<(), PluginError>> {
            self.record.pollers.fetch_add(1, Ordering::SeqCst);
            let polling = Polling(self.record.clone());
            self.poller = Some(actix_rt::spawn(async move {
                let _polling = polling;
                std::future::pending::<()>().await
            }));
            Box::pin(async { Ok(()) })
        }

        fn command<'a>(&'a mut self, command: &'a Message) -> LocalFuture<'a, Result<Reply, PluginError>> {
            Box::pin(async move {
                self.record.seen.lock().unwrap().push(command.endpoint.clone());
                match command.endpoint.as_str() {
                    "hang" => std::future::pending().await,
                    "gated" => self.record.gate.notified().await,
                    _ => actix_rt::time::sleep(Duration::from_millis(1)).await,
                }
                match command.endpoint.as_str() {
                    "boom" => panic!("toy blew up"),
                    _ => Ok(Reply::body(command.payload.clone())),
                }
            })
        }

        fn stop(&mut self) -> LocalFuture<'_, ()> {
            self.record.stops.fetch_add(1, Ordering::SeqCst);
            if let Some(poller) = self.poller.take() {
                poller.abort();
            }
            Box::pin(async {})
        }
    }

    impl Drop for Toy {
        fn drop(&mut self) {
            let thread = std::thread::current().name().map(str::to_owned);
            *self.record.dropped_on.lock().unwrap() = thread;
        }
    }

    fn toys() -> (PluginRegistry, Arc<Record>) {
        let record = Arc::new(Record::default());
        let kept = record.clone();
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
                Ok(Toy {
                    record: kept.clone(),
                    poller: None,
                })
            }),
        );
        (registry, record)
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

    /// A started toy device.
    fn started(registry: &PluginRegistry) -> Box<dyn DevicePlugin> {
        let mut device = registry.create(&spec(serde_json::json!({}))).unwrap();
        let (sink, _events) = EventSink::channel("toy-1");
        device.start(sink).unwrap();
        device
    }

    const WAIT: Duration = Duration::from_secs(20);

    #[test]
    fn commands_are_answered_in_order_and_the_instance_is_dropped_on_its_thread() {
        let (registry, record) = toys();
        let mut device = started(&registry);
        let answers: Vec<Answer> = (0..20).map(|i| deferred(&mut device, "echo", &i.to_string())).collect();
        for (i, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.recv_timeout(WAIT).unwrap().unwrap().body, i.to_string());
        }
        device.stop();
        drop(device);
        wait_until("the instance dropped", || record.dropped_on.lock().unwrap().is_some());
        assert_eq!(record.dropped_on.lock().unwrap().as_deref(), Some("async-plugins"));
        assert_eq!(
            record.stops.load(Ordering::SeqCst),
            1,
            "stopped once, not again when dropped"
        );
    }

    /// Every device has an adapter for its whole life; it is one pointer, to
    /// the link its task shares.
    #[test]
    fn the_adapter_stays_one_pointer() {
        assert_eq!(std::mem::size_of::<AsyncDevice>(), std::mem::size_of::<usize>());
    }

    /// A queue's slots are as large as a call: a tag and a channel at most.
    #[test]
    fn a_call_stays_small() {
        assert!(
            std::mem::size_of::<Call>() <= 3 * std::mem::size_of::<usize>(),
            "Call is {} bytes",
            std::mem::size_of::<Call>()
        );
    }

    #[test]
    fn a_queue_that_grew_gives_its_memory_back_once_empty() {
        let mut queue = Queue::default();
        let stop = || Call::Stop(mpsc::sync_channel(1).0);
        for _ in 0..100 {
            queue.put(stop());
        }
        assert_eq!(queue.stops, 100);
        while queue.take().is_some() {}
        assert_eq!((queue.stops, queue.calls.capacity()), (0, 0));
        // A small one keeps its slots, to be used again without allocating.
        for _ in 0..QUEUE_KEEP {
            queue.put(stop());
        }
        let capacity = queue.calls.capacity();
        while queue.take().is_some() {}
        assert_eq!(queue.calls.capacity(), capacity);
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
    fn a_stop_cuts_a_hung_command_short_refuses_those_queued_and_runs_the_plugins_stop() {
        let (registry, record) = toys();
        let mut device = started(&registry);
        assert_eq!(record.pollers.load(Ordering::SeqCst), 1);
        let hung = deferred(&mut device, "hang", "");
        wait_until("the hung command at the plugin", || record.seen() == ["hang"]);
        let queued = deferred(&mut device, "echo", "never");
        device.stop();
        // The stop was not stuck behind the command: it ran, and ended the
        // background task `start` spawned.
        wait_until("the plugin's stop", || record.stops.load(Ordering::SeqCst) == 1);
        wait_until("the background task ended", || {
            record.pollers.load(Ordering::SeqCst) == 0
        });
        let stopped = "device toy-1 stopped before it answered";
        assert_eq!(hung.recv_timeout(WAIT).unwrap().unwrap_err().message, stopped);
        assert_eq!(queued.recv_timeout(WAIT).unwrap().unwrap_err().message, stopped);
        assert_eq!(record.seen(), ["hang"], "the queued command never ran");
        drop(device);
        wait_until("the instance dropped", || record.dropped_on.lock().unwrap().is_some());
        assert_eq!(record.stops.load(Ordering::SeqCst), 1, "not stopped twice");
    }

    #[test]
    fn dropping_a_started_adapter_without_a_stop_runs_the_plugins_stop_first() {
        let (registry, record) = toys();
        let mut device = started(&registry);
        let hung = deferred(&mut device, "hang", "");
        wait_until("the hung command at the plugin", || record.seen() == ["hang"]);
        drop(device);
        let answer = hung.recv_timeout(WAIT).unwrap().unwrap_err().message;
        assert_eq!(answer, "device toy-1 stopped before it answered");
        wait_until("the instance dropped", || record.dropped_on.lock().unwrap().is_some());
        // Stopped before it was dropped.
        assert_eq!(record.stops.load(Ordering::SeqCst), 1);
        wait_until("the background task ended", || {
            record.pollers.load(Ordering::SeqCst) == 0
        });

        // One never started (a settings check) is dropped without a stop.
        let (registry, record) = toys();
        registry.check_settings(&spec(serde_json::json!({}))).unwrap();
        wait_until("the instance dropped", || record.dropped_on.lock().unwrap().is_some());
        assert_eq!(record.stops.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_command_answered_before_its_turn_is_never_given_to_the_plugin() {
        let (registry, record) = toys();
        let mut device = started(&registry);
        let first = deferred(&mut device, "gated", "first");
        wait_until("the first command at the plugin", || record.seen() == ["gated"]);
        // The second's deadline passes while the first runs.
        let deadline_passed = Arc::new(AtomicBool::new(false));
        let passed = deadline_passed.clone();
        let (reply, _second) = Responder::channel();
        let reply = reply.with_answered(move || passed.load(Ordering::SeqCst));
        device.command_deferred(&command("skipped", ""), reply);
        let third = deferred(&mut device, "echo", "third");
        deadline_passed.store(true, Ordering::SeqCst);
        record.gate.notify_one();
        assert_eq!(first.recv_timeout(WAIT).unwrap().unwrap().body, "first");
        assert_eq!(third.recv_timeout(WAIT).unwrap().unwrap().body, "third");
        assert_eq!(record.seen(), ["gated", "echo"]);
    }
}
