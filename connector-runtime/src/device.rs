//! [`DeviceActor`]: one actor per device, driving that device's plugin.
//!
//! The actor is its plugin's supervisor. A plugin that returns an error
//! answers that command with the error; one that panics is dropped and
//! created anew after a back-off, and after too many restarts in a short
//! window the device is stopped and reported. actix's own `Supervisor` is not
//! used because it restarts for as long as an address exists and so cannot
//! give up on a device.
//!
//! The actor lives on the link's thread but never runs plugin code there.
//! A command goes into its plugin instance's inbox; if the plugin is idle,
//! a job on the [`PluginPool`] takes it and runs the inbox dry, one call at
//! a time (so one device's calls stay in order), then puts the plugin back.
//! Replies go from the pool straight to the outbox, and the link's thread
//! hears from a job only when its plugin failed. Each command has a
//! deadline (`command_timeout_ms`), kept by the actor: the first of the
//! plugin's answer and the deadline's error reply wins; a late answer is
//! dropped and counted, a command already past its deadline is not run.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix::WeakAddr;
use connector_core::backoff::Backoff;
use connector_core::codec::{self, FrameKind};
use connector_core::plugin::{
    CommandResult, DevicePlugin, DeviceSpec, EmitError, EventSink, PluginError, PluginRegistry, Reply, Responder,
};
use connector_core::Message as PlatformMessage;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::lifecycle::{Events, Lifecycle, Stats};
use crate::outbox::{Frame, OutboxHandle};
use crate::pool::PluginPool;

/// Restart delays of a crashing plugin: quick at first, never a hot loop.
/// Each delay is random up to a ceiling that doubles per restart (jitter, as
/// for reconnects), so devices that crash together do not restart together.
pub const RESTART_INITIAL: Duration = Duration::from_millis(100);
pub const RESTART_MAX: Duration = Duration::from_secs(30);
/// More restarts than this within [`RESTART_WINDOW`] stop the device for good.
pub const MAX_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How long stopping a device waits for its plugin's `stop` (and drop) to
/// return before it goes on without it: a plugin hung in `stop` holds a pool
/// thread, never a shutdown or a reload.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How many commands one device may have waiting (routed, not yet handled)
/// unless `ConnectorBuilder::device_mailbox` says otherwise. actix mailboxes
/// take `do_send` without a bound, so the registry keeps this one itself
/// ([`Mailbox`]): a platform sending faster than a device answers gets the
/// excess refused with an error reply, and memory and the wait of the
/// commands accepted stay bounded.
pub const MAILBOX_CAPACITY: usize = 128;

/// Counts one device's waiting commands against its capacity.
#[derive(Debug, Clone)]
pub struct Mailbox {
    pending: Arc<AtomicUsize>,
    capacity: usize,
}

impl Mailbox {
    pub fn new(capacity: usize) -> Self {
        Mailbox {
            pending: Arc::default(),
            capacity,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A place for one more command, or `None` when the device is full.
    pub fn try_reserve(&self) -> Option<Slot> {
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.pending.clone()))
    }

    /// Commands routed to the device and not yet handled (or dropped).
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

/// One command's place in a [`Mailbox`]; given back when the command is
/// answered, or dropped unhandled because the device is gone.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A command for this device, routed here by the registry, holding its
/// place in the device's [`Mailbox`] until handled.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeviceCommand(pub PlatformMessage, pub Slot);

/// Stops the device: its events are refused from now on, commands not yet
/// answered get an error reply, and its plugin is stopped on the pool. The
/// answer comes once the plugin is stopped and dropped, or after
/// [`STOP_TIMEOUT`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopDevice;

/// The plugin failed: it panicked in a call, its creation or start failed
/// (from the pool job), or it reported a failure outside a call
/// ([`EventSink::report_failure`], e.g. its worker thread panicked). The
/// device restarts after a back-off.
#[derive(Message)]
#[rtype(result = "()")]
struct PluginFailed {
    /// The instance that failed, to tell it from a newer one started meanwhile.
    instance: Arc<Instance>,
    reason: String,
}

/// Unix seconds now, the `time` of frames that carry none.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Encodes a message and hands it to the buffer, counting and reporting
/// what the bound gave up. Shared by devices, event sinks and the library API.
pub fn enqueue(outbox: &OutboxHandle, events: &Events, message: &PlatformMessage) -> bool {
    let frame = Frame::new(FrameKind::of(message), codec::encode_message(message, unix_now()));
    enqueue_frame(outbox, events, frame)
}

/// Hands an encoded frame to the buffer; see [`enqueue`].
///
/// Drops are counted in `Stats::frames_dropped` one by one, but logged and
/// published as [`Lifecycle::MessagesDropped`] once per burst (see
/// [`crate::outbox`]), when it starts: a buffer overflowing through a long
/// outage would otherwise flood the log and every subscriber with one line
/// and one event per frame. The event's `count` is the running total of
/// frames dropped since the connector started, so a subscriber can tell how
/// much the bursts between two events cost.
pub fn enqueue_frame(outbox: &OutboxHandle, events: &Events, frame: Frame) -> bool {
    let pushed = outbox.push(frame);
    if pushed.dropped > 0 {
        events.stats.frames_dropped.fetch_add(pushed.dropped, Ordering::Relaxed);
        if pushed.burst_started {
            warn!(
                dropped = pushed.dropped,
                dropped_total = pushed.dropped_total,
                "outgoing buffer full: frames are being dropped until it drains (logged once per burst)"
            );
            events.publish(Lifecycle::MessagesDropped {
                count: pushed.dropped_total,
                reason: "outgoing buffer full".into(),
            });
        }
    }
    pushed.accepted
}

/// The answer the platform gets when a device cannot handle a command, so
/// the task does not wait forever.
pub fn error_reply(command: &PlatformMessage, reason: &str) -> PlatformMessage {
    command.reply("", serde_json::json!({ "error": reason }).to_string())
}

/// What every device actor of one connector shares: one allocation for all
/// of them, since every byte of an actor counts 100,000 times.
pub struct DeviceShared {
    pub plugins: Arc<PluginRegistry>,
    pub outbox: OutboxHandle,
    pub events: Events,
    pub pool: Arc<PluginPool>,
}

impl DeviceShared {
    pub fn new(plugins: Arc<PluginRegistry>, outbox: OutboxHandle, events: Events, pool: Arc<PluginPool>) -> Self {
        DeviceShared {
            plugins,
            outbox,
            events,
            pool,
        }
    }
}

/// One plugin instance, shared by the actor, the pool job running it and
/// its event sink.
///
/// The plugin is either home (idle, in `home.plugin`) or out with a job,
/// which takes commands from the inbox until it is empty and then brings
/// the plugin home. Retiring the instance takes what is in the inbox and
/// stops the plugin: now on the pool if it is home, else by its job when the
/// call it runs returns. Every hand-over happens under the one lock, so a
/// plugin is stopped exactly once, never on the link's thread.
struct Instance {
    /// Cleared on retirement; read without the lock by every event.
    accepting: AtomicBool,
    home: Mutex<Home>,
}

#[derive(Default)]
struct Home {
    plugin: Option<Box<dyn DevicePlugin>>,
    /// Commands for the plugin that no job has taken yet.
    inbox: VecDeque<Arc<Pending>>,
    /// A job runs: with the plugin, or making it.
    out: bool,
    /// Not launched yet, but taking commands.
    waiting: bool,
    /// The launch waits for a predecessor to stop (see `DeviceActor::start_after`).
    held: bool,
    retired: bool,
    /// The actor took in a failure of this instance and schedules the
    /// restart; later reports of it change nothing.
    failure_seen: bool,
    /// Retired, and the plugin stopped and dropped (or never made).
    gone: bool,
    /// Whoever waits for `gone`.
    waiters: Vec<oneshot::Sender<()>>,
}

impl Instance {
    /// An instance that takes commands until it is launched.
    fn waiting() -> Arc<Self> {
        Arc::new(Instance {
            accepting: AtomicBool::new(true),
            home: Mutex::new(Home {
                waiting: true,
                ..Home::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Home> {
        // Plugins are called with the lock released, so a panic while it is
        // held is the runtime's own; the state is still consistent.
        self.home.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a command. The plugin, if it is home and so no job runs, is
    /// returned for the caller to start one; `Err` gives the command back
    /// when the instance takes none (restarting, failed, retired).
    fn post(&self, pending: Arc<Pending>) -> Result<Option<Box<dyn DevicePlugin>>, Arc<Pending>> {
        let mut home = self.lock();
        if home.retired || !(home.out || home.waiting || home.plugin.is_some()) {
            return Err(pending);
        }
        home.inbox.push_back(pending);
        let plugin = if home.out { None } else { home.plugin.take() };
        home.out |= plugin.is_some();
        Ok(plugin)
    }

    /// The launch job is about to make the plugin.
    fn launching(&self) {
        let mut home = self.lock();
        home.waiting = false;
        home.held = false;
        home.out = true;
    }

    /// On the pool: the next command for the plugin the job has, or `None`
    /// once the inbox is empty, the plugin then home again (or stopped, if
    /// the instance was retired meanwhile).
    fn next(&self, plugin: &mut Option<Box<dyn DevicePlugin>>, device_id: &str) -> Option<Arc<Pending>> {
        let mut home = self.lock();
        if let Some(next) = home.inbox.pop_front() {
            return Some(next);
        }
        if home.inbox.capacity() > 16 {
            // A burst is over: an idle device keeps no room for the next one.
            home.inbox = VecDeque::new();
        }
        home.out = false;
        if home.retired {
            drop(home);
            self.finish(plugin.take(), device_id);
        } else {
            home.plugin = plugin.take();
        }
        None
    }

    /// On the pool, after a failure of the plugin the job has (or could not
    /// make): retires the instance, stops the plugin, and gives back what
    /// waited in the inbox.
    fn fail(&self, plugin: Option<Box<dyn DevicePlugin>>, device_id: &str) -> VecDeque<Arc<Pending>> {
        self.accepting.store(false, Ordering::Release);
        let inbox = {
            let mut home = self.lock();
            home.out = false;
            home.retired = true;
            std::mem::take(&mut home.inbox)
        };
        self.finish(plugin, device_id);
        inbox
    }

    /// From the actor: no more events or commands, and the plugin stopped on
    /// the pool, now if it is home, else by its job. Returns the commands no
    /// job took, and a receiver that fires once the plugin is gone.
    fn retire(
        self: &Arc<Self>,
        pool: &PluginPool,
        spec: &Arc<DeviceSpec>,
    ) -> (VecDeque<Arc<Pending>>, oneshot::Receiver<()>) {
        self.accepting.store(false, Ordering::Release);
        let (tx, rx) = oneshot::channel();
        let mut home = self.lock();
        if home.gone {
            let _ = tx.send(());
            return (VecDeque::new(), rx);
        }
        home.waiters.push(tx);
        let inbox = std::mem::take(&mut home.inbox);
        if home.retired {
            return (inbox, rx);
        }
        home.retired = true;
        home.waiting = false;
        match home.plugin.take() {
            Some(plugin) => {
                drop(home);
                let (me, spec) = (self.clone(), spec.clone());
                // Not awaited: the receiver tells when it is done.
                pool.spawn(move || me.finish(Some(plugin), spec.id()));
            }
            None if !home.out => {
                drop(home);
                self.finish(None, spec.id());
            }
            None => {} // its job stops it
        }
        (inbox, rx)
    }

    /// Stops and drops a retired plugin (on the pool), containing any
    /// panic, and wakes whoever waits for it to be gone.
    fn finish(&self, plugin: Option<Box<dyn DevicePlugin>>, device_id: &str) {
        if let Some(mut plugin) = plugin {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| plugin.stop())) {
                warn!(device_id, "plugin panicked while stopping: {}", panic_text(&panic));
            }
            // Dropping runs the plugin's own code too.
            if catch_unwind(AssertUnwindSafe(move || drop(plugin))).is_err() {
                warn!(device_id, "plugin panicked while being dropped");
            }
        }
        let waiters = {
            let mut home = self.lock();
            home.gone = true;
            std::mem::take(&mut home.waiters)
        };
        for waiter in waiters {
            let _ = waiter.send(());
        }
    }
}

/// One command from its arrival to its answer, shared by the actor (for the
/// deadline), the instance's inbox and the plugin's [`Responder`].
struct Pending {
    command: PlatformMessage,
    deadline: Instant,
    /// Set by whoever answers first: the plugin, the deadline, or the
    /// device stopping.
    answered: AtomicBool,
    /// Given back with the answer, so a device's mailbox counts what is
    /// unanswered, deferred answers included.
    slot: Mutex<Option<Slot>>,
}

impl Pending {
    fn new(command: PlatformMessage, slot: Slot, timeout: Duration) -> Arc<Self> {
        Arc::new(Pending {
            command,
            deadline: Instant::now() + timeout,
            answered: AtomicBool::new(false),
            slot: Mutex::new(Some(slot)),
        })
    }

    fn is_answered(&self) -> bool {
        self.answered.load(Ordering::Acquire)
    }

    /// Whether the caller is the one to answer.
    fn claim(&self) -> bool {
        let first = self
            .answered
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            // The place is given back now, not when the last holder of the
            // command lets go of it.
            drop(self.slot.lock().unwrap_or_else(|e| e.into_inner()).take());
        }
        first
    }

    /// The plugin's answer: sent, or dropped and counted if the deadline
    /// answered first.
    fn answer(&self, result: CommandResult, shared: &DeviceShared) {
        let command = &self.command;
        if !self.claim() {
            Stats::bump(&shared.events.stats.late_replies);
            warn!(device_id = %command.device_id, task_id = %command.task_id, endpoint = %command.endpoint,
                "the device answered a command the platform already had an answer to (its deadline, a stop or a restart); the answer was dropped");
            return;
        }
        let reply = match result {
            Ok(Reply { header, body }) => command.reply(header, body),
            Err(e) => {
                Stats::bump(&shared.events.stats.plugin_errors);
                warn!(device_id = %command.device_id, task_id = %command.task_id, endpoint = %command.endpoint, "command failed: {e}");
                error_reply(command, &e.message)
            }
        };
        enqueue(&shared.outbox, &shared.events, &reply);
    }

    /// An error reply from the runtime (a panic, a stop, the deadline), if
    /// nothing answered yet. Whether it was sent.
    fn refuse(&self, reason: &str, shared: &DeviceShared) -> bool {
        let sent = self.claim();
        if sent {
            enqueue(&shared.outbox, &shared.events, &error_reply(&self.command, reason));
        }
        sent
    }
}

fn refuse_each(pending: impl IntoIterator<Item = Arc<Pending>>, reason: &str, shared: &DeviceShared) {
    for pending in pending {
        pending.refuse(reason, shared);
    }
}

/// A device's unanswered commands, for their deadlines. Boxed and made only
/// while there are any: an idle device pays for a pointer.
#[derive(Default)]
struct Work {
    /// In arrival order and so in deadline order (one device has one
    /// timeout); answered ones leave from the front.
    pending: VecDeque<Arc<Pending>>,
    /// The deadline timer of the front command.
    timer: Option<SpawnHandle>,
}

impl Work {
    /// Drops answered commands from the front.
    fn settle(&mut self) {
        while self.pending.front().is_some_and(|p| p.is_answered()) {
            self.pending.pop_front();
        }
    }
}

/// Drives one device's plugin; see the module docs.
pub struct DeviceActor {
    /// Shared with the event sink, which names the device when it refuses.
    spec: Arc<DeviceSpec>,
    shared: Arc<DeviceShared>,
    /// The current plugin instance; a restart makes a new one.
    instance: Arc<Instance>,
    /// Made on the first failure: most devices never fail, and every byte of
    /// this struct is paid once per device (100,000 on a big gateway).
    restarts: Option<Box<Restarts>>,
    /// Made while commands are unanswered.
    work: Option<Box<Work>>,
    /// Set by `start_after` until the launch: a stop before it waits for the
    /// predecessor too, so that a reload right after a reload never runs
    /// the oldest and the newest instance at once.
    predecessor: Option<Shared<BoxFuture<'static, ()>>>,
}

/// A failing device's history, for the back-off and the give-up rule.
struct Restarts {
    backoff: Backoff,
    /// When each restart within the last [`RESTART_WINDOW`] happened.
    times: Vec<Instant>,
    /// Set when the device is given up on: the last failure.
    failed: Option<String>,
}

impl DeviceActor {
    /// `spec` may be a `DeviceSpec` or one already shared.
    pub fn new(spec: impl Into<Arc<DeviceSpec>>, shared: Arc<DeviceShared>) -> Self {
        DeviceActor {
            spec: spec.into(),
            shared,
            instance: Instance::waiting(),
            restarts: None,
            work: None,
            predecessor: None,
        }
    }

    /// Starts the actor, but creates its plugin only once `predecessor` is
    /// done: a device restarted under the same id (a reload that changed it)
    /// must not run two plugin instances at once, which a plugin holding a
    /// serial port or a bound socket could not survive. Commands wait
    /// meanwhile, each with its deadline.
    pub fn start_after(self, predecessor: impl std::future::Future<Output = ()> + Send + 'static) -> Addr<Self> {
        let predecessor = predecessor.boxed().shared();
        DeviceActor::create(move |ctx| {
            let mut actor = self;
            actor.predecessor = Some(predecessor.clone());
            ctx.spawn(actix::fut::wrap_future(predecessor).map(|(), act: &mut Self, ctx| act.launch(ctx)));
            // Tells `started` that the launch is taken care of.
            actor.instance.lock().held = true;
            actor
        })
    }

    fn id(&self) -> &str {
        self.spec.id()
    }

    fn sink(&self, ctx: &Context<Self>) -> EventSink {
        let (shared, instance, spec) = (self.shared.clone(), self.instance.clone(), self.spec.clone());
        // Weak: a sink kept by a stray plugin thread must not keep the actor alive.
        let (actor, failed) = (ctx.address().downgrade(), self.instance.clone());
        EventSink::new(self.spec.id(), move |message| {
            if !instance.accepting.load(Ordering::Acquire) {
                return Err(EmitError::Stopped(spec.id().to_owned()));
            }
            enqueue(&shared.outbox, &shared.events, &message);
            Ok(())
        })
        .on_failure(move |reason| {
            if failed.accepting.load(Ordering::Acquire) {
                report(&actor, &failed, format!("reported a failure: {reason}"));
            }
        })
    }

    /// Creates and starts the plugin on the pool, then runs what waits in
    /// its inbox; a failure or panic schedules a restart.
    fn launch(&mut self, ctx: &mut Context<Self>) {
        self.predecessor = None;
        let fresh = {
            let home = self.instance.lock();
            home.waiting && !home.retired
        };
        if !fresh {
            self.instance = Instance::waiting();
        }
        self.instance.launching();
        let sink = self.sink(ctx);
        let (shared, spec, instance) = (self.shared.clone(), self.spec.clone(), self.instance.clone());
        let actor = ctx.address().downgrade();
        self.shared.pool.spawn(move || {
            if instance.lock().retired {
                // Stopped before its turn came: nothing is made.
                let waited = instance.fail(None, spec.id());
                refuse_each(
                    waited,
                    &format!("device {} stopped before it answered", spec.id()),
                    &shared,
                );
                return;
            }
            let started = catch_unwind(AssertUnwindSafe(|| {
                let mut plugin = shared.plugins.create(&spec)?;
                plugin.start(sink)?;
                Ok::<_, PluginError>(plugin)
            }));
            let reason = match started {
                Ok(Ok(plugin)) => {
                    info!(device_id = %spec.id(), plugin = %spec.plugin, "device started");
                    shared.events.publish(Lifecycle::DeviceStarted {
                        device: spec.id().to_owned(),
                    });
                    return run_inbox(plugin, &instance, &shared, &spec, &actor);
                }
                Ok(Err(e)) => format!("start failed: {e}"),
                Err(panic) => format!("panicked on start: {}", panic_text(&panic)),
            };
            let waited = instance.fail(None, spec.id());
            refuse_each(waited, &format!("device {} is restarting", spec.id()), &shared);
            report(&actor, &instance, reason);
        });
    }

    /// Arms the deadline timer for the front command, if none is armed.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        let Some(work) = self.work.as_mut() else { return };
        if work.timer.is_some() {
            return;
        }
        if let Some(front) = work.pending.front() {
            let wait = front.deadline.saturating_duration_since(Instant::now());
            work.timer = Some(ctx.run_later(wait, |act, ctx| act.expire(ctx)));
        }
    }

    /// The deadline timer: answers every command past its deadline, and
    /// drops the work once nothing is pending.
    fn expire(&mut self, ctx: &mut Context<Self>) {
        let Some(work) = self.work.as_mut() else { return };
        work.timer = None;
        let now = Instant::now();
        let mut expired = false;
        while let Some(front) = work.pending.front() {
            if !front.is_answered() {
                if front.deadline > now {
                    break;
                }
                timed_out(front, &self.spec, &self.shared);
                expired = true;
            }
            work.pending.pop_front();
        }
        if expired {
            // What expired waiting behind a hung call leaves the inbox now,
            // so a device stuck for an hour does not pile up its commands.
            self.instance.lock().inbox.retain(|p| !p.is_answered());
        }
        if work.pending.is_empty() {
            self.work = None;
        } else {
            self.arm(ctx);
        }
    }

    /// Retires the current instance: commands no job took get `reason`
    /// now; the one the plugin runs may still be answered by it, else by
    /// its deadline or the caller. The receiver fires when the plugin is gone.
    fn retire(&mut self, reason: &str) -> oneshot::Receiver<()> {
        let (waited, gone) = self.instance.retire(&self.shared.pool, &self.spec);
        refuse_each(waited, reason, &self.shared);
        gone
    }

    /// Takes the unanswered commands out, with their timer: the actor stops.
    fn take_pending(&mut self, ctx: &mut Context<Self>) -> VecDeque<Arc<Pending>> {
        let Some(work) = self.work.take() else {
            return VecDeque::new();
        };
        if let Some(timer) = work.timer {
            ctx.cancel_future(timer);
        }
        work.pending
    }

    /// Drops the plugin instance after a failure and schedules a new one.
    fn crashed(&mut self, reason: String, ctx: &mut Context<Self>) {
        Stats::bump(&self.shared.events.stats.plugin_errors);
        let gone = self.retire(&format!("device {} is restarting", self.id()));
        // Until the launch the retired instance refuses commands, and a
        // stop waits for it to be gone.
        self.instance.lock().failure_seen = true;
        let now = Instant::now();
        let id = self.spec.id();
        let restarts = self.restarts.get_or_insert_with(|| Box::new(Restarts::new()));
        restarts.times.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        if restarts.times.len() >= MAX_RESTARTS {
            error!(device_id = %id, %reason, restarts = restarts.times.len(), "device failed too often; stopped");
            restarts.failed = Some(reason.clone());
            self.shared.events.publish(Lifecycle::DeviceFailed {
                device: id.to_owned(),
                reason,
            });
            return;
        }
        if restarts.times.is_empty() {
            // No failure within the window: this one starts the delays over,
            // so a device that fails now and then never drifts to long waits.
            restarts.backoff.reset();
        }
        restarts.times.push(now);
        let delay = restarts.backoff.next_delay();
        error!(device_id = %id, %reason, restart_in_ms = delay.as_millis() as u64, "device plugin failed; restarting");
        Stats::bump(&self.shared.events.stats.device_restarts);
        self.shared.events.publish(Lifecycle::DeviceRestarted {
            device: id.to_owned(),
            reason,
            attempt: restarts.times.len(),
            delay,
        });
        // The new instance starts only once the old one is gone, so two
        // never run at once: a plugin hung in a call or in `stop` is not
        // restarted until it returns (its commands are refused meanwhile).
        let device_id = self.spec.clone();
        let wait = async move {
            let mut gone = gone;
            let (_, waited) = tokio::join!(tokio::time::sleep(delay), tokio::time::timeout(STOP_TIMEOUT, &mut gone));
            if waited.is_err() {
                warn!(device_id = %device_id.id(), timeout_s = STOP_TIMEOUT.as_secs(),
                    "the failed plugin has not returned from its call or its stop; the restart waits for it");
                let _ = gone.await;
            }
        };
        ctx.spawn(actix::fut::wrap_future(wait).map(|(), act: &mut Self, ctx| act.launch(ctx)));
    }
}

impl Restarts {
    fn new() -> Self {
        Restarts {
            backoff: Backoff::new(RESTART_INITIAL, RESTART_MAX),
            times: Vec::new(),
            failed: None,
        }
    }
}

/// A pool job: runs the plugin on every command in its instance's inbox,
/// one at a time, until the inbox is empty; a panic retires the instance
/// and tells the actor.
fn run_inbox(
    plugin: Box<dyn DevicePlugin>,
    instance: &Arc<Instance>,
    shared: &Arc<DeviceShared>,
    spec: &Arc<DeviceSpec>,
    actor: &WeakAddr<DeviceActor>,
) {
    let mut plugin = Some(plugin);
    while let Some(pending) = instance.next(&mut plugin, spec.id()) {
        if pending.is_answered() {
            debug!(device_id = %spec.id(), task_id = %pending.command.task_id,
                "command skipped: it was answered (its deadline passed) before the device was free");
            continue;
        }
        if Instant::now() >= pending.deadline {
            // Past its deadline, the timer not yet run: answered here, not run.
            timed_out(&pending, spec, shared);
            continue;
        }
        let responder = {
            let (pending, shared) = (pending.clone(), shared.clone());
            let asked = pending.clone();
            Responder::new(move |result| pending.answer(result, &shared)).with_answered(move || asked.is_answered())
        };
        let Some(running) = plugin.as_mut() else { return };
        let called = catch_unwind(AssertUnwindSafe(|| {
            running.command_deferred(&pending.command, responder)
        }));
        if let Err(panic) = called {
            let reason = format!(
                "panicked on command {:?}: {}",
                pending.command.endpoint,
                panic_text(&panic)
            );
            pending.refuse(&reason, shared);
            let waited = instance.fail(plugin.take(), spec.id());
            refuse_each(waited, &format!("device {} is restarting", spec.id()), shared);
            report(actor, instance, reason);
            return;
        }
    }
}

/// Answers a command past its deadline with the deadline's error, if
/// nothing answered it yet, and counts it.
fn timed_out(pending: &Pending, spec: &DeviceSpec, shared: &DeviceShared) {
    let reason = format!(
        "device {:?} did not answer within {} (command_timeout_ms: {})",
        spec.id(),
        human(spec.command_timeout()),
        spec.command_timeout_ms
    );
    if pending.claim() {
        // Counted before the reply leaves, so whoever sees the reply sees the count.
        Stats::bump(&shared.events.stats.command_timeouts);
        warn!(device_id = %spec.id(), task_id = %pending.command.task_id, endpoint = %pending.command.endpoint,
            "{reason}; the platform got an error reply");
        enqueue(&shared.outbox, &shared.events, &error_reply(&pending.command, &reason));
    }
}

/// Tells the actor, if it still runs, that its plugin failed.
fn report(actor: &WeakAddr<DeviceActor>, instance: &Arc<Instance>, reason: String) {
    if let Some(actor) = actor.upgrade() {
        actor.do_send(PluginFailed {
            instance: instance.clone(),
            reason,
        });
    }
}

/// `30 s`, `1.5 s`, `250 ms`: a deadline as people read it.
fn human(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", duration.as_secs_f64())
    }
}

pub(crate) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

impl Actor for DeviceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Started by `start_after`, the actor launches once its predecessor is gone.
        if !self.instance.lock().held {
            self.launch(ctx);
        }
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        let reason = format!("device {} stopped before it answered", self.id());
        let gone = self.retire(&reason);
        refuse_each(self.take_pending(ctx), &reason, &self.shared);
        // Reported once the plugin's `stop` has returned on the pool (or
        // given up on), so a subscriber knows the plugin is done.
        let (spec, shared) = (self.spec.clone(), self.shared.clone());
        actix_rt::spawn(async move {
            let _ = tokio::time::timeout(STOP_TIMEOUT, gone).await;
            info!(device_id = %spec.id(), "device stopped");
            shared.events.publish(Lifecycle::DeviceStopped {
                device: spec.id().to_owned(),
            });
        });
    }
}

impl Handler<DeviceCommand> for DeviceActor {
    type Result = ();

    fn handle(&mut self, DeviceCommand(command, slot): DeviceCommand, ctx: &mut Self::Context) {
        let pending = Pending::new(command, slot, self.spec.command_timeout());
        match self.instance.post(pending.clone()) {
            Ok(plugin) => {
                if let Some(plugin) = plugin {
                    let (instance, shared, spec) = (self.instance.clone(), self.shared.clone(), self.spec.clone());
                    let actor = ctx.address().downgrade();
                    self.shared
                        .pool
                        .spawn(move || run_inbox(plugin, &instance, &shared, &spec, &actor));
                }
                let work = self.work.get_or_insert_with(Box::default);
                work.settle();
                work.pending.push_back(pending);
                self.arm(ctx);
            }
            Err(pending) => {
                let reason = match self.restarts.as_ref().and_then(|r| r.failed.as_ref()) {
                    Some(why) => format!("device {} is stopped after repeated failures: {why}", self.id()),
                    None => format!("device {} is restarting", self.id()),
                };
                warn!(device_id = %self.id(), task_id = %pending.command.task_id, "command answered with an error: {reason}");
                pending.refuse(&reason, &self.shared);
            }
        }
    }
}

impl Handler<StopDevice> for DeviceActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: StopDevice, ctx: &mut Self::Context) -> Self::Result {
        // Now rather than when the actor has wound down, so whoever awaits
        // this message knows the plugin is gone (see `start_after`).
        let reason = format!("device {} stopped before it answered", self.id());
        let gone = self.retire(&reason);
        // The command the plugin runs now may still be answered by it.
        let unanswered = self.take_pending(ctx);
        let predecessor = self.predecessor.take();
        ctx.stop();
        let (spec, shared) = (self.spec.clone(), self.shared.clone());
        Box::pin(async move {
            let gone = async move {
                if let Some(predecessor) = predecessor {
                    predecessor.await;
                }
                let _ = gone.await;
            };
            if tokio::time::timeout(STOP_TIMEOUT, gone).await.is_err() {
                warn!(device_id = %spec.id(), timeout_s = STOP_TIMEOUT.as_secs(),
                    "the plugin did not stop in time; going on without it (it keeps one plugin thread until it returns)");
            }
            refuse_each(unanswered, &reason, &shared);
        })
    }
}

impl Handler<PluginFailed> for DeviceActor {
    type Result = ();

    fn handle(&mut self, failed: PluginFailed, ctx: &mut Self::Context) {
        // A report about an instance already replaced, or one whose failure
        // was taken in already, changes nothing.
        if Arc::ptr_eq(&failed.instance, &self.instance) && !self.instance.lock().failure_seen {
            self.crashed(failed.reason, ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DeviceActor;

    /// Memory per idle device is a target (BENCHMARKS.md): at 72 bytes the
    /// actor's task fits mimalloc's 640-byte size class; 8 more bytes put it
    /// in the 768-byte one, about 270 bytes more per device in all. Whoever
    /// needs a field should box it with the rarely used ones (`Restarts`).
    #[test]
    fn the_device_actor_stays_small() {
        assert!(
            std::mem::size_of::<DeviceActor>() <= 72,
            "DeviceActor is {} bytes",
            std::mem::size_of::<DeviceActor>()
        );
    }
}
