//! A hand-written declaration for the malformed libraries: well formed
//! except for what each example changes. Its functions abort the process,
//! so a test that got past the loader's checks into plugin code would die
//! loudly instead of passing.

use std::ffi::c_void;

use connector_plugin_sdk::abi::{
    AbiOut, AbiStr, DeclarationHeader, HostApi, PluginDeclaration, PluginFunctions, Status, API_VERSION, BUILD_RUSTC,
    BUILD_TARGET,
};

const NAMES: &[AbiStr] = &[AbiStr::from_static("malformed")];

unsafe extern "C" fn create(
    _: AbiStr,
    _: AbiStr,
    _: *const HostApi,
    _: *mut c_void,
    _: *mut *mut c_void,
    _: AbiOut,
) -> Status {
    std::process::abort()
}

unsafe extern "C" fn start(_: *mut c_void, _: AbiOut) -> Status {
    std::process::abort()
}

unsafe extern "C" fn command(_: *mut c_void, _: AbiStr, _: AbiOut) -> Status {
    std::process::abort()
}

unsafe extern "C" fn stop(_: *mut c_void, _: AbiOut) -> Status {
    std::process::abort()
}

unsafe extern "C" fn destroy(_: *mut c_void) -> Status {
    std::process::abort()
}

/// A declaration with `header`, otherwise as the SDK would write it.
pub const fn declaration(header: DeclarationHeader, panic_strategy: u32) -> PluginDeclaration {
    PluginDeclaration {
        header,
        api_version: AbiStr::from_static(API_VERSION),
        rustc_version: AbiStr::from_static(BUILD_RUSTC),
        target: AbiStr::from_static(BUILD_TARGET),
        panic_strategy,
        plugin_names: NAMES.as_ptr(),
        plugin_count: NAMES.len(),
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
