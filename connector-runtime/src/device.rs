//! [`DeviceActor`]: one actor per device, driving that device's plugin.
//!
//! The actor is its plugin's supervisor. A plugin that returns an error
//! answers that command with the error; one that panics is dropped and
//! created anew after a back-off, and after too many restarts in a short
//! window the device is stopped and reported. actix's own `Supervisor` is not
//! used because it restarts for as long as an address exists and so cannot
//! give up on a device.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use connector_core::backoff::Backoff;
use connector_core::codec::{self, FrameKind};
use connector_core::plugin::{DevicePlugin, DeviceSpec, EmitError, EventSink, PluginRegistry, Reply};
use connector_core::Message as PlatformMessage;
use tracing::{error, info, warn};

use crate::lifecycle::{Events, Lifecycle, Stats};
use crate::outbox::{Frame, OutboxHandle};

/// Restart delays of a crashing plugin: quick at first, never a hot loop.
/// Each delay is random up to a ceiling that doubles per restart (jitter, as
/// for reconnects), so devices that crash together do not restart together.
pub const RESTART_INITIAL: Duration = Duration::from_millis(100);
pub const RESTART_MAX: Duration = Duration::from_secs(30);
/// More restarts than this within [`RESTART_WINDOW`] stop the device for good.
pub const MAX_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

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
/// handled, or dropped unhandled because the device is gone.
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

/// Stops the device: its plugin is told, and its events are refused after.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopDevice;

/// The plugin reported a failure outside a call ([`EventSink::report_failure`],
/// e.g. its worker thread panicked): restart it as after a panic.
#[derive(Message)]
#[rtype(result = "()")]
struct PluginFailed {
    /// The `accepting` flag of the instance that failed, to tell it from a
    /// newer one started meanwhile.
    instance: Arc<AtomicBool>,
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

/// Drives one device's plugin; see the module docs.
pub struct DeviceActor {
    /// Shared with the event sink, which names the device when it refuses.
    spec: Arc<DeviceSpec>,
    plugins: Arc<PluginRegistry>,
    plugin: Option<Box<dyn DevicePlugin>>,
    outbox: OutboxHandle,
    events: Events,
    /// Cleared when a plugin instance is dropped, so its event sink (which may
    /// live on in the plugin's threads) refuses events from then on.
    accepting: Arc<AtomicBool>,
    /// Made on the first failure: most devices never fail, and every byte of
    /// this struct is paid once per device (100,000 on a big gateway).
    restarts: Option<Box<Restarts>>,
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
    pub fn new(
        spec: impl Into<Arc<DeviceSpec>>,
        plugins: Arc<PluginRegistry>,
        outbox: OutboxHandle,
        events: Events,
    ) -> Self {
        DeviceActor {
            spec: spec.into(),
            plugins,
            plugin: None,
            outbox,
            events,
            accepting: Arc::new(AtomicBool::new(false)),
            restarts: None,
        }
    }

    /// Starts the actor, but creates its plugin only once `predecessor` is
    /// done: a device restarted under the same id (a reload that changed it)
    /// must not run two plugin instances at once, which a plugin holding a
    /// serial port or a bound socket could not survive. Commands wait in the
    /// mailbox meanwhile.
    pub fn start_after(self, predecessor: impl std::future::Future<Output = ()> + 'static) -> Addr<Self> {
        DeviceActor::create(move |ctx| {
            ctx.wait(actix::fut::wrap_future(predecessor).map(|(), act: &mut Self, ctx| act.launch(ctx)));
            self
        })
    }

    fn id(&self) -> &str {
        self.spec.id()
    }

    fn sink(&self, ctx: &Context<Self>) -> EventSink {
        let (outbox, events, accepting) = (self.outbox.clone(), self.events.clone(), self.accepting.clone());
        let spec = self.spec.clone();
        // Weak: a sink kept by a stray plugin thread must not keep the actor alive.
        let (actor, instance) = (ctx.address().downgrade(), self.accepting.clone());
        EventSink::new(self.spec.id(), move |message| {
            if !accepting.load(Ordering::Acquire) {
                return Err(EmitError::Stopped(spec.id().to_owned()));
            }
            enqueue(&outbox, &events, &message);
            Ok(())
        })
        .on_failure(move |reason| {
            if let Some(actor) = actor.upgrade().filter(|_| instance.load(Ordering::Acquire)) {
                actor.do_send(PluginFailed {
                    instance: instance.clone(),
                    reason,
                });
            }
        })
    }

    /// Creates and starts the plugin; a failure or panic schedules a restart.
    fn launch(&mut self, ctx: &mut Context<Self>) {
        self.accepting = Arc::new(AtomicBool::new(true));
        let sink = self.sink(ctx);
        let (plugins, spec) = (self.plugins.clone(), &self.spec);
        let started = catch_unwind(AssertUnwindSafe(|| {
            let mut plugin = plugins.create(spec)?;
            plugin.start(sink)?;
            Ok::<_, connector_core::plugin::PluginError>(plugin)
        }));
        match started {
            Ok(Ok(plugin)) => {
                self.plugin = Some(plugin);
                info!(device_id = %self.id(), plugin = %self.spec.plugin, "device started");
                self.events.publish(Lifecycle::DeviceStarted {
                    device: self.id().to_owned(),
                });
            }
            Ok(Err(e)) => self.crashed(format!("start failed: {e}"), ctx),
            Err(panic) => self.crashed(format!("panicked on start: {}", panic_text(&panic)), ctx),
        }
    }

    /// Drops the plugin instance after a failure and schedules a new one.
    fn crashed(&mut self, reason: String, ctx: &mut Context<Self>) {
        Stats::bump(&self.events.stats.plugin_errors);
        self.retire_plugin();
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
            self.events.publish(Lifecycle::DeviceFailed {
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
        Stats::bump(&self.events.stats.device_restarts);
        self.events.publish(Lifecycle::DeviceRestarted {
            device: id.to_owned(),
            reason,
            attempt: restarts.times.len(),
            delay,
        });
        ctx.run_later(delay, |act, ctx| act.launch(ctx));
    }

    /// Stops and drops the current plugin instance, containing any panic.
    fn retire_plugin(&mut self) {
        self.accepting.store(false, Ordering::Release);
        if let Some(mut plugin) = self.plugin.take() {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| plugin.stop())) {
                warn!(device_id = %self.id(), "plugin panicked while stopping: {}", panic_text(&panic));
            }
            // Dropping runs the plugin's own code too.
            if catch_unwind(AssertUnwindSafe(move || drop(plugin))).is_err() {
                warn!(device_id = %self.id(), "plugin panicked while being dropped");
            }
        }
    }

    fn respond(&self, reply: PlatformMessage) {
        enqueue(&self.outbox, &self.events, &reply);
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
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
        // Started by `start_after`, the actor waits for its predecessor and
        // launches then. A flag would say the same, but every byte of this
        // struct counts 100,000 times, and one more moves its task up a
        // size class of the allocator (1,713 -> 1,982 bytes per device).
        if !ctx.waiting() {
            self.launch(ctx);
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.retire_plugin();
        info!(device_id = %self.id(), "device stopped");
        self.events.publish(Lifecycle::DeviceStopped {
            device: self.id().to_owned(),
        });
    }
}

impl Handler<DeviceCommand> for DeviceActor {
    type Result = ();

    fn handle(&mut self, DeviceCommand(command, _slot): DeviceCommand, ctx: &mut Self::Context) {
        let Some(plugin) = self.plugin.as_mut() else {
            let reason = match self.restarts.as_ref().and_then(|r| r.failed.as_ref()) {
                Some(why) => format!("device {} is stopped after repeated failures: {why}", self.id()),
                None => format!("device {} is restarting", self.id()),
            };
            warn!(device_id = %self.id(), task_id = %command.task_id, "command answered with an error: {reason}");
            return self.respond(error_reply(&command, &reason));
        };
        match catch_unwind(AssertUnwindSafe(|| plugin.command(&command))) {
            Ok(Ok(Reply { header, body })) => self.respond(command.reply(header, body)),
            Ok(Err(e)) => {
                Stats::bump(&self.events.stats.plugin_errors);
                warn!(device_id = %self.id(), task_id = %command.task_id, endpoint = %command.endpoint, "command failed: {e}");
                self.respond(error_reply(&command, &e.message));
            }
            Err(panic) => {
                let reason = format!("panicked on command {:?}: {}", command.endpoint, panic_text(&panic));
                self.respond(error_reply(&command, &reason));
                self.crashed(reason, ctx);
            }
        }
    }
}

impl Handler<StopDevice> for DeviceActor {
    type Result = ();

    fn handle(&mut self, _: StopDevice, ctx: &mut Self::Context) {
        // Now rather than when the actor has wound down, so whoever awaits
        // this message knows the plugin is gone (see `start_after`).
        self.retire_plugin();
        ctx.stop();
    }
}

impl Handler<PluginFailed> for DeviceActor {
    type Result = ();

    fn handle(&mut self, failed: PluginFailed, ctx: &mut Self::Context) {
        // A report from an instance already retired changes nothing.
        if Arc::ptr_eq(&failed.instance, &self.accepting) && self.plugin.is_some() {
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
