//! The library's side of the boundary: the declaration [`export_plugins!`]
//! exports and the `extern "C"` functions in its table.
//!
//! Each function runs its whole body inside `catch_unwind`: unwinding out of
//! an `extern "C"` function aborts the process, so a plugin panic has to stop
//! here and become [`abi::STATUS_PANIC`] with the panic's message, which the
//! host turns into a restart of that one device.
//!
//! `command_deferred` hands the plugin a [`Responder`] whose answer goes to
//! the host's `reply` with the command's token, from whichever thread the
//! plugin answers on. The host's `reply` is the host program's own code,
//! there for the life of the process, so the responder needs no [`Link`]
//! and may outlive the instance, as the ABI allows. A host older than
//! deferred replies has no `reply` and never calls `command_deferred`.
//!
//! [`export_plugins!`]: crate::export_plugins

use std::ffi::c_void;
use std::mem::{offset_of, size_of, MaybeUninit};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use connector_plugin_api::abi::{
    self, AbiOut, AbiStr, CreateFn, DeclarationHeader, HostApi, PluginDeclaration, PluginFunctions, ReplyFn, Status,
};
use connector_plugin_api::plugin::{CommandResult, DevicePlugin, DeviceSpec, PluginError, Responder};
use connector_plugin_api::Message;

use crate::host::{event_sink, panic_text, remember_host, Current, Gate, HostFns, Level, Link};

/// What `export_plugins!` takes for each plugin type.
pub type FactoryFn = fn(&DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError>;

/// What the host's opaque instance pointer points at.
struct Instance {
    plugin: Box<dyn DevicePlugin>,
    link: Arc<Link>,
    /// The gate of the current `start`, if any.
    gate: Option<Arc<Gate>>,
    /// The host's `reply`, if it has one.
    reply: Option<ReplyFn>,
}

impl Instance {
    fn close_gate(&mut self) {
        if let Some(gate) = self.gate.take() {
            gate.close();
        }
    }
}

/// The declaration of a library providing `names`, all made by `create`.
pub const fn declaration(names: &'static [AbiStr], create: CreateFn, unwind: bool) -> PluginDeclaration {
    PluginDeclaration {
        header: DeclarationHeader::current(),
        api_version: AbiStr::from_static(abi::API_VERSION),
        rustc_version: AbiStr::from_static(abi::BUILD_RUSTC),
        target: AbiStr::from_static(abi::BUILD_TARGET),
        panic_strategy: if unwind { abi::PANIC_UNWIND } else { abi::PANIC_ABORT },
        plugin_names: names.as_ptr(),
        plugin_count: names.len(),
        functions: PluginFunctions {
            create: Some(create),
            start: Some(start),
            command: Some(command),
            stop: Some(stop),
            destroy: Some(destroy),
            command_deferred: Some(command_deferred),
        },
    }
}

/// Hands `text` to the caller's `out`.
fn answer(out: AbiOut, text: &[u8]) {
    // SAFETY: `out` is the caller's writer for this call; `text` outlives it.
    unsafe { (out.write)(out.ctx, AbiStr::new(text)) }
}

fn fail(out: AbiOut, status: Status, text: &str) -> Status {
    answer(out, text.as_bytes());
    status
}

/// Runs a boundary function's body; a panic becomes [`abi::STATUS_PANIC`].
fn boundary(out: Option<AbiOut>, body: impl FnOnce() -> Status) -> Status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(status) => status,
        Err(panic) => {
            let text = panic_text(panic.as_ref());
            match out {
                Some(out) => answer(out, text.as_bytes()),
                None => crate::log(
                    Level::Error,
                    format_args!("plugin panicked while being destroyed: {text}"),
                ),
            }
            abi::STATUS_PANIC
        }
    }
}

/// The instance behind a host pointer.
///
/// # Safety
/// `instance` is null or came from `create` and was not destroyed, and no
/// other call uses it meanwhile (the ABI's one-call-at-a-time rule).
unsafe fn instance<'a>(instance: *mut c_void) -> Option<&'a mut Instance> {
    // SAFETY: see the function's contract.
    unsafe { instance.cast::<Instance>().as_mut() }
}

/// A copy of the host's table at `host`: the fields of the first release of
/// ABI version 1, and `reply` if `size` covers it (`None` otherwise).
///
/// # Safety
/// `host` points at a valid table of `size` readable bytes, `size` at least
/// [`abi::HOST_API_SIZE_V1_0`].
unsafe fn read_host_api(host: *const HostApi, size: usize) -> HostApi {
    let mut copy = MaybeUninit::<HostApi>::zeroed();
    // SAFETY: the caller vouches for the first `HOST_API_SIZE_V1_0` bytes,
    // and the copy, a whole table, has room for them.
    unsafe {
        std::ptr::copy_nonoverlapping(
            host.cast::<u8>(),
            copy.as_mut_ptr().cast::<u8>(),
            abi::HOST_API_SIZE_V1_0,
        );
    }
    // SAFETY: each field is copied whole from the host's table or still zero,
    // a valid value for the one not copied (`None`).
    let mut api = unsafe { copy.assume_init() };
    const REPLY_AT: usize = offset_of!(HostApi, reply);
    if size >= REPLY_AT + size_of::<Option<ReplyFn>>() {
        // SAFETY: `size` covers the field, laid out as in this build (same
        // ABI version) and aligned, since the table is.
        api.reply = unsafe { host.cast::<u8>().add(REPLY_AT).cast::<Option<ReplyFn>>().read() };
    }
    api
}

/// `create` for the factories of one library.
///
/// # Safety
/// The ABI's contract for `create`: `name` and `spec_json` readable for the
/// call, `host` a valid table, `instance` writable, `host_ctx` valid until
/// the instance is destroyed.
#[allow(clippy::too_many_arguments)]
pub unsafe fn create(
    factories: &[(&str, FactoryFn)],
    name: AbiStr,
    spec_json: AbiStr,
    host: *const HostApi,
    host_ctx: *mut c_void,
    instance: *mut *mut c_void,
    out: AbiOut,
) -> Status {
    boundary(Some(out), || {
        if host.is_null() || instance.is_null() {
            return fail(out, abi::STATUS_INVALID, "create was given a null pointer");
        }
        // Read the size alone first: a shorter (older) table may end before
        // the fields this build knows.
        // SAFETY: `host` is valid, and every version of the table starts with `size`.
        let size = unsafe { host.cast::<u32>().read() } as usize;
        if size < abi::HOST_API_SIZE_V1_0 {
            let text = format!(
                "the host's function table has {size} bytes; this plugin needs at least {}",
                abi::HOST_API_SIZE_V1_0
            );
            return fail(out, abi::STATUS_UNSUPPORTED, &text);
        }
        // SAFETY: the table is valid and `size` bytes long, at least the first
        // release's of this ABI version.
        let api = unsafe { read_host_api(host, size) };
        let (Some(emit), Some(log), Some(report_failure)) = (api.emit, api.log, api.report_failure) else {
            return fail(
                out,
                abi::STATUS_UNSUPPORTED,
                "the host's function table has empty entries",
            );
        };
        let fns = HostFns {
            emit,
            log,
            report_failure,
            reply: api.reply,
        };
        remember_host(fns);

        // SAFETY: readable for the call, per the contract.
        let Ok(name) = (unsafe { name.as_str() }) else {
            return fail(out, abi::STATUS_INVALID, "the plugin name is not UTF-8");
        };
        let Some(&(_, factory)) = factories.iter().find(|(known, _)| *known == name) else {
            let known: Vec<&str> = factories.iter().map(|(known, _)| *known).collect();
            let text = format!(
                "this library has no plugin named {name:?} (it has: {})",
                known.join(", ")
            );
            return fail(out, abi::STATUS_INVALID, &text);
        };
        // SAFETY: readable for the call, per the contract.
        let spec: DeviceSpec = match serde_json::from_slice(unsafe { spec_json.as_bytes() }) {
            Ok(spec) => spec,
            Err(e) => {
                return fail(
                    out,
                    abi::STATUS_INVALID,
                    &format!("the device spec does not parse: {e}"),
                )
            }
        };

        let link = Link::new(spec.id().to_owned(), fns, host_ctx);
        let made = {
            let _current = Current::enter(Some(link.clone()));
            catch_unwind(AssertUnwindSafe(|| factory(&spec)))
        };
        match made {
            Ok(Ok(plugin)) => {
                let made = Box::new(Instance {
                    plugin,
                    link,
                    gate: None,
                    reply: fns.reply,
                });
                // SAFETY: `instance` is writable, per the contract.
                unsafe { instance.write(Box::into_raw(made).cast()) };
                abi::STATUS_OK
            }
            Ok(Err(e)) => {
                link.cut();
                fail(out, abi::STATUS_ERROR, &e.message)
            }
            Err(panic) => {
                link.cut();
                fail(out, abi::STATUS_PANIC, &panic_text(panic.as_ref()))
            }
        }
    })
}

unsafe extern "C" fn start(instance_ptr: *mut c_void, out: AbiOut) -> Status {
    boundary(Some(out), || {
        // SAFETY: the host passes a live instance, one call at a time.
        let Some(instance) = (unsafe { instance(instance_ptr) }) else {
            return fail(out, abi::STATUS_INVALID, "start was given a null instance");
        };
        instance.close_gate();
        let gate = Gate::open();
        instance.gate = Some(gate.clone());
        let sink = event_sink(instance.link.clone(), gate);
        let _current = Current::enter(Some(instance.link.clone()));
        match instance.plugin.start(sink) {
            Ok(()) => abi::STATUS_OK,
            Err(e) => fail(out, abi::STATUS_ERROR, &e.message),
        }
    })
}

unsafe extern "C" fn command(instance_ptr: *mut c_void, command_json: AbiStr, out: AbiOut) -> Status {
    boundary(Some(out), || {
        // SAFETY: the host passes a live instance, one call at a time.
        let Some(instance) = (unsafe { instance(instance_ptr) }) else {
            return fail(out, abi::STATUS_INVALID, "command was given a null instance");
        };
        // SAFETY: the command is readable for the call.
        let command: Message = match serde_json::from_slice(unsafe { command_json.as_bytes() }) {
            Ok(command) => command,
            Err(e) => return fail(out, abi::STATUS_INVALID, &format!("the command does not parse: {e}")),
        };
        let _current = Current::enter(Some(instance.link.clone()));
        match instance.plugin.command(&command) {
            Ok(reply) => match serde_json::to_vec(&reply) {
                Ok(json) => {
                    answer(out, &json);
                    abi::STATUS_OK
                }
                Err(e) => fail(out, abi::STATUS_ERROR, &format!("the reply does not serialize: {e}")),
            },
            Err(e) => fail(out, abi::STATUS_ERROR, &e.message),
        }
    })
}

/// Where a deferred command's token stands. The host's contract: after the
/// call returned OK, `reply` exactly once; after it failed, never.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TokenState {
    /// `command_deferred` is still running.
    InCall,
    /// The call returned OK and nothing answered yet.
    Ours,
    /// The responder was dropped while its thread panicked, during the call.
    Abandoned,
    /// The call failed: the host answers.
    GivenUp,
    /// Answered.
    Spent,
}

/// One deferred command's token and the host's `reply` to use it with.
struct Token {
    reply: ReplyFn,
    token: u64,
    state: Mutex<TokenState>,
}

impl Token {
    fn new(reply: ReplyFn, token: u64) -> Arc<Token> {
        Arc::new(Token {
            reply,
            token,
            state: Mutex::new(TokenState::InCall),
        })
    }

    /// The state, locked: every change and every answer happen under this
    /// lock, so no two answers can cross and none is lost between checks.
    fn lock(&self) -> MutexGuard<'_, TokenState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers through the host and marks the token spent.
    fn send(&self, state: &mut TokenState, status: Status, bytes: &[u8]) {
        // SAFETY: the host's `reply` may be called from any thread at any
        // time with a token it handed out; the bytes outlive the call.
        unsafe { (self.reply)(self.token, status, AbiStr::new(bytes)) };
        *state = TokenState::Spent;
    }

    /// The plugin's answer, given during the call or after it returned OK.
    fn answer(&self, status: Status, bytes: &[u8]) {
        let mut state = self.lock();
        if matches!(*state, TokenState::InCall | TokenState::Ours) {
            self.send(&mut state, status, bytes);
        }
    }

    /// The responder is gone without an answer because its thread panicked.
    /// After the call, that is still an answer the host must get; during it,
    /// the call's own outcome decides.
    fn abandon(&self) {
        let mut state = self.lock();
        match *state {
            TokenState::Ours => self.send(&mut state, abi::STATUS_ERROR, ABANDONED),
            TokenState::InCall => *state = TokenState::Abandoned,
            TokenState::Abandoned | TokenState::GivenUp | TokenState::Spent => {}
        }
    }

    /// `command_deferred` returned `status`.
    fn call_returned(&self, status: Status) {
        let mut state = self.lock();
        match (*state, status == abi::STATUS_OK) {
            (TokenState::InCall, true) => *state = TokenState::Ours,
            // Abandoned during a call that still returned OK (a thread of the
            // plugin's panicked meanwhile): the host gets its answer now.
            (TokenState::Abandoned, true) => self.send(&mut state, abi::STATUS_ERROR, ABANDONED),
            // A responder the plugin kept (say, in a thread) before the call
            // failed must not answer: the host answers a failed call itself.
            (TokenState::InCall | TokenState::Abandoned, false) => *state = TokenState::GivenUp,
            (TokenState::Ours | TokenState::GivenUp | TokenState::Spent, _) => {}
        }
    }
}

/// What the host gets for a command whose responder died with a panicking thread.
const ABANDONED: &[u8] = b"the plugin panicked before answering the command";

/// Answers a token once; dropped unused (its responder dropped while
/// panicking, which does not call it), it tells the token so.
struct DeferredAnswer {
    token: Option<Arc<Token>>,
}

impl DeferredAnswer {
    fn send(mut self, result: CommandResult) {
        let Some(token) = self.token.take() else { return };
        match result.map(|reply| serde_json::to_vec(&reply)) {
            Ok(Ok(json)) => token.answer(abi::STATUS_OK, &json),
            Ok(Err(e)) => token.answer(
                abi::STATUS_ERROR,
                format!("the reply does not serialize: {e}").as_bytes(),
            ),
            Err(e) => token.answer(abi::STATUS_ERROR, e.message.as_bytes()),
        }
    }
}

impl Drop for DeferredAnswer {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            token.abandon();
        }
    }
}

/// The responder a deferred command's plugin gets: its answer goes to the
/// host's `reply` with the command's token.
fn responder(token: Arc<Token>) -> Responder {
    let answer = DeferredAnswer { token: Some(token) };
    Responder::new(move |result| answer.send(result))
}

unsafe extern "C" fn command_deferred(
    instance_ptr: *mut c_void,
    command_json: AbiStr,
    token: u64,
    out: AbiOut,
) -> Status {
    let mut handed = None;
    let status = boundary(Some(out), || {
        // SAFETY: the host passes a live instance, one call at a time.
        let Some(instance) = (unsafe { instance(instance_ptr) }) else {
            return fail(out, abi::STATUS_INVALID, "command_deferred was given a null instance");
        };
        let Some(reply) = instance.reply else {
            return fail(
                out,
                abi::STATUS_UNSUPPORTED,
                "the host's function table has no `reply` for command_deferred",
            );
        };
        // SAFETY: the command is readable for the call.
        let command: Message = match serde_json::from_slice(unsafe { command_json.as_bytes() }) {
            Ok(command) => command,
            Err(e) => return fail(out, abi::STATUS_INVALID, &format!("the command does not parse: {e}")),
        };
        let token = Token::new(reply, token);
        handed = Some(token.clone());
        let _current = Current::enter(Some(instance.link.clone()));
        instance.plugin.command_deferred(&command, responder(token));
        abi::STATUS_OK
    });
    if let Some(token) = handed {
        token.call_returned(status);
    }
    status
}

unsafe extern "C" fn stop(instance_ptr: *mut c_void, out: AbiOut) -> Status {
    boundary(Some(out), || {
        // SAFETY: the host passes a live instance, one call at a time.
        let Some(instance) = (unsafe { instance(instance_ptr) }) else {
            return fail(out, abi::STATUS_INVALID, "stop was given a null instance");
        };
        // Refuse events first, as the runtime does for compiled-in plugins:
        // what the plugin's threads emit while it winds down goes nowhere.
        instance.close_gate();
        let _current = Current::enter(Some(instance.link.clone()));
        instance.plugin.stop();
        abi::STATUS_OK
    })
}

unsafe extern "C" fn destroy(instance_ptr: *mut c_void) -> Status {
    if instance_ptr.is_null() {
        return abi::STATUS_INVALID;
    }
    // SAFETY: the pointer came from `create` and the host gives it up with
    // this call, so the box is ours to take back.
    let mut instance = unsafe { Box::from_raw(instance_ptr.cast::<Instance>()) };
    instance.close_gate();
    let link = instance.link.clone();
    let status = boundary(None, || {
        let _current = Current::enter(Some(link.clone()));
        // Dropping runs the plugin's own code (its `Drop`, joining threads).
        drop(instance);
        abi::STATUS_OK
    });
    // The host frees its context once this returns; nothing may reach it after.
    link.cut();
    status
}
