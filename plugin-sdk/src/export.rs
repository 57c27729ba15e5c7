//! The library's side of the boundary: the declaration [`export_plugins!`]
//! exports and the `extern "C"` functions in its table.
//!
//! Each function runs its whole body inside `catch_unwind`: unwinding out of
//! an `extern "C"` function aborts the process, so a plugin panic has to stop
//! here and become [`abi::STATUS_PANIC`] with the panic's message, which the
//! host turns into a restart of that one device.
//!
//! [`export_plugins!`]: crate::export_plugins

use std::ffi::c_void;
use std::mem::size_of;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use connector_core::abi::{
    self, AbiOut, AbiStr, CreateFn, DeclarationHeader, HostApi, PluginDeclaration, PluginFunctions, Status,
};
use connector_core::plugin::{DevicePlugin, DeviceSpec, PluginError};
use connector_core::Message;

use crate::host::{event_sink, panic_text, remember_host, Current, Gate, HostFns, Level, Link};

/// What `export_plugins!` takes for each plugin type.
pub type FactoryFn = fn(&DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError>;

/// What the host's opaque instance pointer points at.
struct Instance {
    plugin: Box<dyn DevicePlugin>,
    link: Arc<Link>,
    /// The gate of the current `start`, if any.
    gate: Option<Arc<Gate>>,
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
            command_deferred: None,
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
        let size = unsafe { std::ptr::addr_of!((*host).size).read() } as usize;
        if size < size_of::<HostApi>() {
            let text = format!(
                "the host's function table has {size} bytes; this plugin needs {}",
                size_of::<HostApi>()
            );
            return fail(out, abi::STATUS_UNSUPPORTED, &text);
        }
        // SAFETY: the table is valid and at least as long as this build's `HostApi`.
        let api = unsafe { host.read() };
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
