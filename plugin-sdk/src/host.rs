//! The runtime as a plugin inside a library sees it: an [`EventSink`] whose
//! events go through the host's `emit`, [`log`] through the host's `log`,
//! and [`spawn_worker`], a thread whose panic restarts the device.
//!
//! The host's context pointer is only valid until the instance is destroyed,
//! while a plugin's threads (and the sinks they hold) may live longer. So
//! every use of it goes through a [`Link`], a read-write lock around the
//! pointer: a call holds the read side for its duration, and `destroy` takes
//! the write side to cut the link, which waits for calls in flight and makes
//! later ones return "stopped". A [`Gate`] does the same per `start`, so
//! events are refused from the moment `stop` begins, as for a compiled-in
//! plugin.

use std::cell::RefCell;
use std::ffi::c_void;
use std::fmt;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::thread::JoinHandle;

use connector_plugin_api::abi::{self, AbiStr, EmitFn, LogFn, ReplyFn, ReportFailureFn};
use connector_plugin_api::plugin::{EmitError, EventSink};

/// The host's functions, checked to be all there when the first instance is
/// created; `reply` is missing in a host built before deferred replies.
#[derive(Clone, Copy)]
pub(crate) struct HostFns {
    pub emit: EmitFn,
    pub log: LogFn,
    pub report_failure: ReportFailureFn,
    pub reply: Option<ReplyFn>,
}

/// The host's table as seen by the first `create`. Its functions are the
/// host program's own code, loaded for the life of the process, so lines
/// not tied to a device (from threads the SDK did not start) can use them
/// with a null context.
static HOST: OnceLock<HostFns> = OnceLock::new();

pub(crate) fn remember_host(fns: HostFns) {
    let _ = HOST.set(fns);
}

struct HostRef {
    fns: HostFns,
    ctx: *mut c_void,
}

// SAFETY: the ABI lets the host's functions be called from any thread, also
// concurrently, with the context pointer it handed to `create`.
unsafe impl Send for HostRef {}
// SAFETY: as above; the pointer is only passed back to the host, never dereferenced here.
unsafe impl Sync for HostRef {}

/// One instance's connection to the host, cut when the instance is destroyed.
pub(crate) struct Link {
    device_id: String,
    host: RwLock<Option<HostRef>>,
}

impl Link {
    pub fn new(device_id: String, fns: HostFns, ctx: *mut c_void) -> Arc<Link> {
        Arc::new(Link {
            device_id,
            host: RwLock::new(Some(HostRef { fns, ctx })),
        })
    }

    /// Runs `call` while the link is intact; `None` once it is cut.
    fn with_host<R>(&self, call: impl FnOnce(&HostRef) -> R) -> Option<R> {
        let host = self.host.read().unwrap_or_else(PoisonError::into_inner);
        host.as_ref().map(call)
    }

    /// After this returns, no call reaches the host through this link.
    pub fn cut(&self) {
        *self.host.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn log(&self, level: Level, text: &str) -> bool {
        self.with_host(|host| {
            // SAFETY: the link is intact, so `ctx` is still the live context
            // of this instance; the text is borrowed for the call only.
            unsafe { (host.fns.log)(host.ctx, level.code(), AbiStr::new(text.as_bytes())) }
        })
        .is_some()
    }
}

/// Whether the events of one `start` may still flow.
pub(crate) struct Gate {
    open: RwLock<bool>,
}

impl Gate {
    pub fn open() -> Arc<Gate> {
        Arc::new(Gate {
            open: RwLock::new(true),
        })
    }

    /// Waits for emits in flight; later ones are refused.
    pub fn close(&self) {
        *self.open.write().unwrap_or_else(PoisonError::into_inner) = false;
    }

    fn pass<R>(&self, call: impl FnOnce() -> Option<R>) -> Option<R> {
        let open = self.open.read().unwrap_or_else(PoisonError::into_inner);
        if *open {
            call()
        } else {
            None
        }
    }
}

/// The sink a loaded plugin gets in `start`.
pub(crate) fn event_sink(link: Arc<Link>, gate: Arc<Gate>) -> EventSink {
    let device_id = link.device_id.clone();
    let (emit_link, emit_gate) = (link.clone(), gate.clone());
    EventSink::new(link.device_id.as_str(), move |message| {
        let json = serde_json::to_vec(&message).map_err(|_| EmitError::Stopped(device_id.clone()))?;
        let status = emit_gate.pass(|| {
            emit_link.with_host(|host| {
                // SAFETY: the link is intact (context alive) and the gate open;
                // `json` outlives the call.
                unsafe { (host.fns.emit)(host.ctx, AbiStr::new(&json)) }
            })
        });
        match status {
            Some(abi::STATUS_OK) => Ok(()),
            _ => Err(EmitError::Stopped(device_id.clone())),
        }
    })
    .on_failure(move |reason| {
        gate.pass(|| {
            link.with_host(|host| {
                // SAFETY: as for emit.
                unsafe { (host.fns.report_failure)(host.ctx, AbiStr::new(reason.as_bytes())) }
            })
        });
    })
}

thread_local! {
    /// The instance a call into the library (or a worker) is for, so that
    /// [`log`] can name the device.
    static CURRENT: RefCell<Option<Arc<Link>>> = const { RefCell::new(None) };
}

/// Makes `link` the current instance until dropped.
pub(crate) struct Current(Option<Arc<Link>>);

impl Current {
    pub fn enter(link: Option<Arc<Link>>) -> Current {
        Current(CURRENT.with(|current| current.replace(link)))
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        let previous = self.0.take();
        let _ = CURRENT.try_with(|current| current.replace(previous));
    }
}

/// Severity of a [`log`] line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Level {
    fn code(self) -> u32 {
        match self {
            Level::Error => abi::LOG_ERROR,
            Level::Warn => abi::LOG_WARN,
            Level::Info => abi::LOG_INFO,
            Level::Debug => abi::LOG_DEBUG,
            Level::Trace => abi::LOG_TRACE,
        }
    }
}

/// Logs a line through the runtime, tagged with the device when called from
/// one of its calls or workers.
///
/// A library has its own copy of `tracing` with no subscriber, so its
/// `tracing` lines would vanish; this goes to the runtime's log instead.
/// Compiled into a program, it logs through that program's `tracing`.
pub fn log(level: Level, message: impl fmt::Display) {
    let text = message.to_string();
    let current = CURRENT.try_with(|current| current.borrow().clone()).ok().flatten();
    if current.is_some_and(|link| link.log(level, &text)) {
        return;
    }
    if let Some(fns) = HOST.get() {
        // SAFETY: a null context is allowed for `log`; the text outlives the call.
        unsafe { (fns.log)(std::ptr::null_mut(), level.code(), AbiStr::new(text.as_bytes())) };
        return;
    }
    match level {
        Level::Error => tracing::error!(target: "plugin", "{text}"),
        Level::Warn => tracing::warn!(target: "plugin", "{text}"),
        Level::Info => tracing::info!(target: "plugin", "{text}"),
        Level::Debug => tracing::debug!(target: "plugin", "{text}"),
        Level::Trace => tracing::trace!(target: "plugin", "{text}"),
    }
}

/// Starts a thread of the plugin's own whose panic is not silent: it is
/// logged and reported through `events`, and the runtime restarts the device
/// as after a panic in `command`.
///
/// A plain `std::thread::spawn` works too, but its panic only ends that
/// thread: no boundary function is on its stack to catch it, and the device
/// would go on without it.
pub fn spawn_worker<F>(events: &EventSink, name: impl Into<String>, work: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let name = name.into();
    let events = events.clone();
    let link = CURRENT.try_with(|current| current.borrow().clone()).ok().flatten();
    std::thread::Builder::new().name(name.clone()).spawn(move || {
        let _current = Current::enter(link);
        if let Err(panic) = catch_unwind(AssertUnwindSafe(work)) {
            let reason = format!("worker thread {name:?} panicked: {}", panic_text(panic.as_ref()));
            log(Level::Error, &reason);
            events.report_failure(reason);
        }
    })
}

/// The message of a caught panic.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}
