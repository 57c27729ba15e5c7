//! A working library built against ABI version 1 as first released, before
//! `command_deferred` and the host's `reply` were appended: its declaration
//! has the original layout and says so in `header.size`, and it reads only
//! the original part of the host's table. Written by hand, as the SDK of
//! that release would have generated it, so the test proves that libraries
//! built then keep loading and answering.
//!
//! The plugin type `old-echo` emits a `started` event in `start` (through
//! the host's `emit`) and answers every command with its body and header,
//! except `fail`, which is answered with an error.

use std::ffi::c_void;
use std::mem::size_of;
use std::panic::{catch_unwind, AssertUnwindSafe};

use connector_plugin_sdk::abi::{
    AbiOut, AbiStr, CommandFn, CreateFn, DeclarationHeader, DestroyFn, EmitFn, HostApi, LogFn, ReportFailureFn,
    StartFn, Status, StopFn, API_VERSION, BUILD_RUSTC, BUILD_TARGET, DECLARATION_SIZE_V1_0, HOST_API_SIZE_V1_0,
    LOG_INFO, PANIC_ABORT, PANIC_UNWIND, STATUS_ERROR, STATUS_INVALID, STATUS_OK, STATUS_PANIC, STATUS_UNSUPPORTED,
};
use connector_plugin_sdk::{DeviceSpec, Message, Reply};

/// `PluginFunctions` of the first release.
#[repr(C)]
pub struct FunctionsV1_0 {
    create: Option<CreateFn>,
    start: Option<StartFn>,
    command: Option<CommandFn>,
    stop: Option<StopFn>,
    destroy: Option<DestroyFn>,
}

/// `PluginDeclaration` of the first release.
#[repr(C)]
pub struct DeclarationV1_0 {
    header: DeclarationHeader,
    api_version: AbiStr,
    rustc_version: AbiStr,
    target: AbiStr,
    panic_strategy: u32,
    plugin_names: *const AbiStr,
    plugin_count: usize,
    functions: FunctionsV1_0,
}

// SAFETY: immutable data pointing at statics only.
unsafe impl Sync for DeclarationV1_0 {}

/// `HostApi` of the first release: what this library reads of the host's table.
#[repr(C)]
#[derive(Clone, Copy)]
struct HostApiV1_0 {
    size: u32,
    emit: Option<EmitFn>,
    log: Option<LogFn>,
    report_failure: Option<ReportFailureFn>,
}

// The layouts are the first release's, as the host knows them.
const _: () = assert!(size_of::<DeclarationV1_0>() == DECLARATION_SIZE_V1_0);
const _: () = assert!(size_of::<HostApiV1_0>() == HOST_API_SIZE_V1_0);

const NAME: &str = "old-echo";
const NAMES: &[AbiStr] = &[AbiStr::from_static(NAME)];

#[no_mangle]
pub static SEPL_PLUGIN_DECLARATION: DeclarationV1_0 = DeclarationV1_0 {
    header: DeclarationHeader {
        size: size_of::<DeclarationV1_0>() as u32,
        ..DeclarationHeader::current()
    },
    api_version: AbiStr::from_static(API_VERSION),
    rustc_version: AbiStr::from_static(BUILD_RUSTC),
    target: AbiStr::from_static(BUILD_TARGET),
    panic_strategy: if cfg!(panic = "unwind") {
        PANIC_UNWIND
    } else {
        PANIC_ABORT
    },
    plugin_names: NAMES.as_ptr(),
    plugin_count: NAMES.len(),
    functions: FunctionsV1_0 {
        create: Some(create),
        start: Some(start),
        command: Some(command),
        stop: Some(stop),
        destroy: Some(destroy),
    },
};

/// One instance: the device it is for and the host to tell.
struct Echo {
    device: String,
    emit: EmitFn,
    log: LogFn,
    ctx: *mut c_void,
}

fn answer(out: AbiOut, text: &[u8]) {
    // SAFETY: `out` is the caller's writer for this call; `text` outlives it.
    unsafe { (out.write)(out.ctx, AbiStr::new(text)) }
}

fn fail(out: AbiOut, status: Status, text: &str) -> Status {
    answer(out, text.as_bytes());
    status
}

/// Runs a function's body; a panic must not unwind into the host.
fn guarded(out: AbiOut, body: impl FnOnce() -> Status) -> Status {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| fail(out, STATUS_PANIC, "old-echo panicked"))
}

/// # Safety
/// `instance` is null or an `Echo` made by `create` and not destroyed.
unsafe fn echo<'a>(instance: *mut c_void) -> Option<&'a mut Echo> {
    // SAFETY: see the contract; the host calls one function at a time.
    unsafe { instance.cast::<Echo>().as_mut() }
}

unsafe extern "C" fn create(
    name: AbiStr,
    spec_json: AbiStr,
    host: *const HostApi,
    host_ctx: *mut c_void,
    instance: *mut *mut c_void,
    out: AbiOut,
) -> Status {
    guarded(out, || {
        if host.is_null() || instance.is_null() {
            return fail(out, STATUS_INVALID, "create was given a null pointer");
        }
        // SAFETY: every version of the table starts with its size.
        let size = unsafe { host.cast::<u32>().read() } as usize;
        if size < size_of::<HostApiV1_0>() {
            return fail(out, STATUS_UNSUPPORTED, "the host's function table is too short");
        }
        // SAFETY: the table is at least as long as the part this library knows.
        let api = unsafe { host.cast::<HostApiV1_0>().read() };
        let (Some(emit), Some(log)) = (api.emit, api.log) else {
            return fail(out, STATUS_UNSUPPORTED, "the host's function table has empty entries");
        };
        // SAFETY: both are readable for the call.
        let (name, spec) = unsafe { (name.as_bytes(), spec_json.as_bytes()) };
        if name != NAME.as_bytes() {
            return fail(out, STATUS_INVALID, "this library has only old-echo");
        }
        let spec: DeviceSpec = match serde_json::from_slice(spec) {
            Ok(spec) => spec,
            Err(e) => return fail(out, STATUS_INVALID, &format!("the device spec does not parse: {e}")),
        };
        let made = Box::new(Echo {
            device: spec.id().to_owned(),
            emit,
            log,
            ctx: host_ctx,
        });
        // SAFETY: `instance` is writable, per the contract of `create`.
        unsafe { instance.write(Box::into_raw(made).cast()) };
        STATUS_OK
    })
}

unsafe extern "C" fn start(instance: *mut c_void, out: AbiOut) -> Status {
    guarded(out, || {
        // SAFETY: a live instance, one call at a time.
        let Some(echo) = (unsafe { echo(instance) }) else {
            return fail(out, STATUS_INVALID, "start was given a null instance");
        };
        let line = format!("old-echo {} starts", echo.device);
        let event = Message::event(echo.device.as_str(), "started", "old abi");
        let Ok(json) = serde_json::to_vec(&event) else {
            return fail(out, STATUS_ERROR, "the event does not serialize");
        };
        // SAFETY: the context is live until destroy; the texts outlive the calls.
        unsafe {
            (echo.log)(echo.ctx, LOG_INFO, AbiStr::new(line.as_bytes()));
            match (echo.emit)(echo.ctx, AbiStr::new(&json)) {
                STATUS_OK => STATUS_OK,
                other => fail(
                    out,
                    STATUS_ERROR,
                    &format!("the host refused the event: status {other}"),
                ),
            }
        }
    })
}

unsafe extern "C" fn command(instance: *mut c_void, command_json: AbiStr, out: AbiOut) -> Status {
    guarded(out, || {
        // SAFETY: a live instance, one call at a time.
        if unsafe { echo(instance) }.is_none() {
            return fail(out, STATUS_INVALID, "command was given a null instance");
        }
        // SAFETY: the command is readable for the call.
        let command: Message = match serde_json::from_slice(unsafe { command_json.as_bytes() }) {
            Ok(command) => command,
            Err(e) => return fail(out, STATUS_INVALID, &format!("the command does not parse: {e}")),
        };
        if command.endpoint == "fail" {
            return fail(out, STATUS_ERROR, &format!("old-echo fails: {}", command.payload));
        }
        let reply = Reply::body(command.payload).with_header(command.payload_header);
        match serde_json::to_vec(&reply) {
            Ok(json) => {
                answer(out, &json);
                STATUS_OK
            }
            Err(_) => fail(out, STATUS_ERROR, "the reply does not serialize"),
        }
    })
}

unsafe extern "C" fn stop(instance: *mut c_void, out: AbiOut) -> Status {
    guarded(out, || {
        // SAFETY: a live instance, one call at a time.
        match unsafe { echo(instance) } {
            Some(_) => STATUS_OK,
            None => fail(out, STATUS_INVALID, "stop was given a null instance"),
        }
    })
}

unsafe extern "C" fn destroy(instance: *mut c_void) -> Status {
    if instance.is_null() {
        return STATUS_INVALID;
    }
    // SAFETY: the pointer came from `create`, and the host gives it up here.
    drop(unsafe { Box::from_raw(instance.cast::<Echo>()) });
    STATUS_OK
}
