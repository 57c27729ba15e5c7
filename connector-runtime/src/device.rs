//! [`DeviceActor`]: one actor per device, driving that device's plugin.
//!
//! The actor is its plugin's supervisor. A plugin that returns an error
//! answers that command with the error; one that panics is dropped and
//! created anew after a back-off, and after too many restarts in a short
//! window the device is stopped and reported. actix's own `Supervisor` is not
//! used because it restarts for as long as an address exists and so cannot
//! give up on a device.
//!
//! The actor lives on the link's thread but never runs plugin code there:
//! it hands its plugin to the [`PluginPool`] with the commands waiting for
//! it, one job at a time (so one device's calls stay in order), and gets it
//! back when the job ends. Replies go from the pool straight to the outbox.
//! Each command has a deadline (`command_timeout_ms`): the first of the
//! plugin's answer and the deadline's error reply wins, and the other is
//! dropped and counted.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix::prelude::*;
use connector_core::backoff::Backoff;
use connector_core::codec::{self, FrameKind};
use connector_core::plugin::{
    CommandResult, DevicePlugin, DeviceSpec, EmitError, EventSink, PluginError, PluginRegistry, Reply, Responder,
};
use connector_core::Message as PlatformMessage;
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

impl Slot {
    /// Gives the place back now, without waiting for the drop.
    fn release(self) {
        drop(self);
    }
}

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

/// The plugin reported a failure outside a call ([`EventSink::report_failure`],
/// e.g. its worker thread panicked): restart it as after a panic.
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

/// One plugin instance's state, shared by the actor, the pool job that has
/// the plugin and the instance's event sink.
///
/// The plugin is either home (in `home.plugin`, idle) or out on a pool job.
/// Retiring it takes it from home and stops it on the pool; if it is out,
/// the job stops it when it ends instead of bringing it home. Both sides
/// decide under the one lock, so a plugin is always stopped exactly once and
/// never on the link's thread.
struct Instance {
    /// Cleared on retirement; read without the lock by every event.
    accepting: AtomicBool,
    home: Mutex<Home>,
}

#[derive(Default)]
struct Home {
    plugin: Option<Box<dyn DevicePlugin>>,
    /// A job has the plugin (or is creating it).
    out: bool,
    retired: bool,
    /// Retired and stopped and dropped (or never made).
    gone: bool,
    /// Whoever waits for `gone`.
    waiters: Vec<oneshot::Sender<()>>,
}

impl Instance {
    /// An instance whose plugin a launch job is about to create.
    fn launching() -> Arc<Self> {
        Arc::new(Instance {
            accepting: AtomicBool::new(true),
            home: Mutex::new(Home {
                out: true,
                ..Home::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Home> {
        // A panic while holding the lock happens in runtime code, never in a
        // plugin's (plugins are called with the lock released).
        self.home.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the idle plugin for a job.
    fn take_out(&self) -> Option<Box<dyn DevicePlugin>> {
        let mut home = self.lock();
        let plugin = home.plugin.take();
        home.out |= plugin.is_some();
        plugin
    }

    /// At a job's end, on the pool: back home, or stopped if it was retired
    /// meanwhile. Whether it came home.
    fn bring_home(&self, plugin: Box<dyn DevicePlugin>, device_id: &str) -> bool {
        let mut home = self.lock();
        home.out = false;
        if home.retired {
            drop(home);
            self.finish(Some(plugin), device_id);
            false
        } else {
            home.plugin = Some(plugin);
            true
        }
    }

    /// A job ends without a plugin to bring home (creating it failed).
    fn came_back_empty(&self, device_id: &str) {
        let mut home = self.lock();
        home.out = false;
        if home.retired {
            drop(home);
            self.finish(None, device_id);
        }
    }

    /// On the pool, with the plugin a job has: retires the instance and
    /// stops the plugin (after a panic in a call).
    fn fail(&self, plugin: Box<dyn DevicePlugin>, device_id: &str) {
        self.accepting.store(false, Ordering::Release);
        {
            let mut home = self.lock();
            home.out = false;
            home.retired = true;
        }
        self.finish(Some(plugin), device_id);
    }

    /// From the actor: no more events, and the plugin stopped on the pool, now
    /// if it is home, else by the job that has it. The receiver fires once it
    /// is gone.
    fn retire(self: &Arc<Self>, pool: &PluginPool, device_id: &Arc<DeviceSpec>) -> oneshot::Receiver<()> {
        self.accepting.store(false, Ordering::Release);
        let (tx, rx) = oneshot::channel();
        let mut home = self.lock();
        if home.gone {
            let _ = tx.send(());
            return rx;
        }
        home.waiters.push(tx);
        if home.retired {
            return rx;
        }
        home.retired = true;
        match home.plugin.take() {
            Some(plugin) => {
                drop(home);
                let (me, spec) = (self.clone(), device_id.clone());
                // Not awaited: the receiver tells when it is done.
                drop(pool.run(move || me.finish(Some(plugin), spec.id())));
            }
            None if !home.out => {
                drop(home);
                self.finish(None, device_id.id());
            }
            None => {} // the job that has it stops it
        }
        rx
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
/// deadline) and the plugin's [`Responder`].
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
            if let Some(slot) = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                slot.release();
            }
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
                "the device answered after its command_timeout; the answer was dropped");
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

/// A device's commands while any are unanswered, and whether a pool job has
/// the plugin. Boxed and made only while there is work: an idle device pays
/// for a pointer.
#[derive(Default)]
struct Work {
    /// A job has the plugin (running commands, or creating and starting it).
    busy: bool,
    /// Every unanswered command, in arrival order and so in deadline order
    /// (one device has one timeout). Answered ones leave from the front.
    pending: VecDeque<Arc<Pending>>,
    /// How many at the front of `pending` were given to the plugin.
    handed: usize,
    /// The deadline timer of the front command.
    timer: Option<SpawnHandle>,
}

impl Work {
    /// Drops answered commands from the front.
    fn settle(&mut self) {
        while self.pending.front().is_some_and(|p| p.is_answered()) {
            self.pending.pop_front();
            self.handed = self.handed.saturating_sub(1);
        }
    }

    fn is_done(&self) -> bool {
        !self.busy && self.pending.is_empty()
    }
}

/// How a pool job ended.
enum JobEnd {
    /// The plugin is home again.
    Home,
    /// The device was retired meanwhile; the job stopped the plugin.
    Retired,
    /// Creating or starting the plugin failed.
    StartFailed(String),
    /// The plugin panicked in a command; the job answered it and stopped the plugin.
    Panicked(String),
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
    /// Made while commands are unanswered or a job has the plugin.
    work: Option<Box<Work>>,
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
        let instance = Instance::launching();
        // Not launched yet: nothing to stop if it never is.
        instance.lock().out = false;
        DeviceActor {
            spec: spec.into(),
            shared,
            instance,
            restarts: None,
            work: None,
        }
    }

    /// Starts the actor, but creates its plugin only once `predecessor` is
    /// done: a device restarted under the same id (a reload that changed it)
    /// must not run two plugin instances at once, which a plugin holding a
    /// serial port or a bound socket could not survive. Commands wait
    /// meanwhile, each with its deadline.
    pub fn start_after(self, predecessor: impl std::future::Future<Output = ()> + 'static) -> Addr<Self> {
        DeviceActor::create(move |ctx| {
            let mut actor = self;
            // `started` sees the work and leaves the launch to this future.
            actor.work_mut().busy = true;
            ctx.spawn(actix::fut::wrap_future(predecessor).map(|(), act: &mut Self, ctx| act.launch(ctx)));
            actor
        })
    }

    fn id(&self) -> &str {
        self.spec.id()
    }

    fn work_mut(&mut self) -> &mut Work {
        self.work.get_or_insert_with(Box::default)
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
            if let Some(actor) = actor.upgrade().filter(|_| failed.accepting.load(Ordering::Acquire)) {
                actor.do_send(PluginFailed {
                    instance: failed.clone(),
                    reason,
                });
            }
        })
    }

    /// Creates and starts the plugin on the pool; commands arriving
    /// meanwhile wait. A failure or panic schedules a restart.
    fn launch(&mut self, ctx: &mut Context<Self>) {
        self.instance = Instance::launching();
        self.work_mut().busy = true;
        let sink = self.sink(ctx);
        let (shared, spec, instance) = (self.shared.clone(), self.spec.clone(), self.instance.clone());
        let job = self.shared.pool.run(move || {
            let started = catch_unwind(AssertUnwindSafe(|| {
                let mut plugin = shared.plugins.create(&spec)?;
                plugin.start(sink)?;
                Ok::<_, PluginError>(plugin)
            }));
            match started {
                Ok(Ok(plugin)) => {
                    if instance.bring_home(plugin, spec.id()) {
                        JobEnd::Home
                    } else {
                        JobEnd::Retired
                    }
                }
                Ok(Err(e)) => {
                    instance.came_back_empty(spec.id());
                    JobEnd::StartFailed(format!("start failed: {e}"))
                }
                Err(panic) => {
                    instance.came_back_empty(spec.id());
                    JobEnd::StartFailed(format!("panicked on start: {}", panic_text(&panic)))
                }
            }
        });
        let instance = self.instance.clone();
        ctx.spawn(actix::fut::wrap_future(job).map(move |end, act: &mut Self, ctx| {
            if !Arc::ptr_eq(&instance, &act.instance) {
                return;
            }
            match end {
                Ok(JobEnd::Home) => {
                    info!(device_id = %act.id(), plugin = %act.spec.plugin, "device started");
                    act.shared.events.publish(Lifecycle::DeviceStarted {
                        device: act.id().to_owned(),
                    });
                    act.job_done(ctx);
                }
                Ok(JobEnd::StartFailed(reason)) => act.crashed(reason, ctx),
                Ok(JobEnd::Retired | JobEnd::Panicked(_)) => {}
                Err(e) => act.crashed(format!("start failed: {e}"), ctx),
            }
        }));
    }

    /// Gives the plugin the commands it has not seen yet, in one pool job.
    fn run_commands(&mut self, plugin: Box<dyn DevicePlugin>, ctx: &mut Context<Self>) {
        let work = self.work.get_or_insert_with(Box::default);
        let batch: Vec<Arc<Pending>> = work.pending.iter().skip(work.handed).cloned().collect();
        work.handed = work.pending.len();
        work.busy = true;
        let (shared, spec, instance) = (self.shared.clone(), self.spec.clone(), self.instance.clone());
        let job = self.shared.pool.run(move || {
            let mut plugin = plugin;
            let mut batch = batch.into_iter();
            while let Some(pending) = batch.next() {
                if !instance.accepting.load(Ordering::Acquire) {
                    // Retired meanwhile (a stop, or a failure reported by the
                    // plugin's own thread): the rest is not run.
                    let reason = format!(
                        "device {} is stopping or restarting; the command was not run",
                        spec.id()
                    );
                    pending.refuse(&reason, &shared);
                    continue;
                }
                if pending.is_answered() {
                    debug!(device_id = %spec.id(), task_id = %pending.command.task_id,
                        "command skipped: its deadline passed before the device was free");
                    continue;
                }
                let responder = {
                    let (pending, shared) = (pending.clone(), shared.clone());
                    Responder::new(move |result| pending.answer(result, &shared))
                };
                let called = catch_unwind(AssertUnwindSafe(|| {
                    plugin.command_deferred(&pending.command, responder)
                }));
                if let Err(panic) = called {
                    let reason = format!(
                        "panicked on command {:?}: {}",
                        pending.command.endpoint,
                        panic_text(&panic)
                    );
                    pending.refuse(&reason, &shared);
                    instance.fail(plugin, spec.id());
                    let restarting = format!("device {} is restarting", spec.id());
                    batch.for_each(|rest| {
                        rest.refuse(&restarting, &shared);
                    });
                    return JobEnd::Panicked(reason);
                }
            }
            if instance.bring_home(plugin, spec.id()) {
                JobEnd::Home
            } else {
                JobEnd::Retired
            }
        });
        let instance = self.instance.clone();
        ctx.spawn(actix::fut::wrap_future(job).map(move |end, act: &mut Self, ctx| {
            if !Arc::ptr_eq(&instance, &act.instance) {
                return;
            }
            match end {
                Ok(JobEnd::Home) => act.job_done(ctx),
                Ok(JobEnd::Panicked(reason)) => act.crashed(reason, ctx),
                Ok(JobEnd::Retired | JobEnd::StartFailed(_)) => {}
                Err(e) => act.crashed(format!("the plugin's job failed: {e}"), ctx),
            }
        }));
    }

    /// A job brought the plugin home: run what came meanwhile, or rest.
    fn job_done(&mut self, ctx: &mut Context<Self>) {
        let Some(work) = self.work.as_mut() else { return };
        work.busy = false;
        work.settle();
        if work.pending.len() > work.handed {
            match self.instance.take_out() {
                Some(plugin) => self.run_commands(plugin, ctx),
                None => self.refuse_all(&format!("device {} is stopping", self.id())),
            }
        } else {
            self.tidy(ctx);
        }
    }

    /// Drops the work once nothing is pending, with its timer.
    fn tidy(&mut self, ctx: &mut Context<Self>) {
        if self.work.as_ref().is_some_and(|w| w.is_done()) {
            if let Some(timer) = self.work.take().and_then(|w| w.timer) {
                ctx.cancel_future(timer);
            }
        }
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

    /// The deadline timer: answers every command past its deadline.
    fn expire(&mut self, ctx: &mut Context<Self>) {
        let Some(work) = self.work.as_mut() else { return };
        work.timer = None;
        let now = Instant::now();
        let timeout = self.spec.command_timeout();
        while let Some(front) = work.pending.front() {
            if !front.is_answered() {
                if front.deadline > now {
                    break;
                }
                let reason = format!(
                    "device {:?} did not answer within {} (command_timeout_ms: {})",
                    self.spec.id(),
                    human(timeout),
                    self.spec.command_timeout_ms
                );
                if front.refuse(&reason, &self.shared) {
                    Stats::bump(&self.shared.events.stats.command_timeouts);
                    warn!(device_id = %self.spec.id(), task_id = %front.command.task_id, endpoint = %front.command.endpoint,
                        "{reason}; the platform got an error reply");
                }
            }
            work.pending.pop_front();
            work.handed = work.handed.saturating_sub(1);
        }
        self.arm(ctx);
        self.tidy(ctx);
    }

    /// Answers every unanswered command with an error.
    fn refuse_all(&mut self, reason: &str) {
        if let Some(work) = self.work.as_mut() {
            for pending in work.pending.drain(..) {
                pending.refuse(reason, &self.shared);
            }
            work.handed = 0;
        }
    }

    /// Retires the current instance: commands not yet given to it get
    /// `reason` now; those it has may still be answered by it (the one it
    /// runs), else by their deadline or the caller. The receiver fires when
    /// the plugin is gone.
    fn retire(&mut self, reason: &str) -> oneshot::Receiver<()> {
        if let Some(work) = self.work.as_mut() {
            let handed = work.handed.min(work.pending.len());
            for pending in work.pending.drain(handed..) {
                pending.refuse(reason, &self.shared);
            }
            work.busy = false;
        }
        self.instance.retire(&self.shared.pool, &self.spec)
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
        self.tidy(ctx);
        let now = Instant::now();
        let id = self.spec.id();
        let restarts = self.restarts.get_or_insert_with(|| {
            Box::new(Restarts {
                backoff: Backoff::new(RESTART_INITIAL, RESTART_MAX),
                times: Vec::new(),
                failed: None,
            })
        });
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
        // The new instance starts only once the old one is gone (or hung in
        // `stop` past its time-out), so two never run at once.
        let wait = async move {
            let (_, _) = tokio::join!(tokio::time::sleep(delay), tokio::time::timeout(STOP_TIMEOUT, gone));
        };
        ctx.spawn(actix::fut::wrap_future(wait).map(|(), act: &mut Self, ctx| act.launch(ctx)));
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
        // Started by `start_after`, the actor has work already and launches
        // once its predecessor is gone.
        if self.work.is_none() {
            self.launch(ctx);
        }
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        let reason = format!("device {} stopped before it answered", self.id());
        let gone = self.retire(&reason);
        for pending in self.take_pending(ctx) {
            pending.refuse(&reason, &self.shared);
        }
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
        let idle = !matches!(self.work.as_deref(), Some(w) if w.busy);
        let plugin = if idle { self.instance.take_out() } else { None };
        if idle && plugin.is_none() {
            let reason = match self.restarts.as_ref().and_then(|r| r.failed.as_ref()) {
                Some(why) => format!("device {} is stopped after repeated failures: {why}", self.id()),
                None => format!("device {} is restarting", self.id()),
            };
            warn!(device_id = %self.id(), task_id = %command.task_id, "command answered with an error: {reason}");
            drop(slot);
            enqueue(
                &self.shared.outbox,
                &self.shared.events,
                &error_reply(&command, &reason),
            );
            return;
        }
        let pending = Pending::new(command, slot, self.spec.command_timeout());
        self.work_mut().pending.push_back(pending);
        if let Some(plugin) = plugin {
            self.run_commands(plugin, ctx);
        }
        self.arm(ctx);
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
        let handed = self.take_pending(ctx);
        ctx.stop();
        let (spec, shared) = (self.spec.clone(), self.shared.clone());
        Box::pin(async move {
            if tokio::time::timeout(STOP_TIMEOUT, gone).await.is_err() {
                warn!(device_id = %spec.id(), timeout_s = STOP_TIMEOUT.as_secs(),
                    "the plugin did not stop in time; going on without it (it keeps one plugin thread until it returns)");
            }
            for pending in handed {
                pending.refuse(&reason, &shared);
            }
        })
    }
}

impl Handler<PluginFailed> for DeviceActor {
    type Result = ();

    fn handle(&mut self, failed: PluginFailed, ctx: &mut Self::Context) {
        // A report from an instance already retired changes nothing.
        if Arc::ptr_eq(&failed.instance, &self.instance) && self.instance.accepting.load(Ordering::Acquire) {
            self.crashed(format!("reported a failure: {}", failed.reason), ctx);
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
