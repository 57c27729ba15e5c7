//! A library whose declaration is that of ABI version 1 as first released
//! cut off before its last function (`destroy`): one pointer short of the
//! smallest declaration the host takes. The static really is that short, so
//! reading the whole first-release layout would read foreign memory.

use std::ffi::c_void;
use std::mem::size_of;

use connector_plugin_sdk::abi::{
    AbiOut, AbiStr, CommandFn, CreateFn, DeclarationHeader, StartFn, Status, StopFn, API_VERSION, BUILD_RUSTC,
    BUILD_TARGET, PANIC_UNWIND,
};

#[repr(C)]
pub struct TruncatedDeclaration {
    header: DeclarationHeader,
    api_version: AbiStr,
    rustc_version: AbiStr,
    target: AbiStr,
    panic_strategy: u32,
    plugin_names: *const AbiStr,
    plugin_count: usize,
    create: Option<CreateFn>,
    start: Option<StartFn>,
    command: Option<CommandFn>,
    stop: Option<StopFn>,
}

// SAFETY: immutable data pointing at statics only.
unsafe impl Sync for TruncatedDeclaration {}

const NAMES: &[AbiStr] = &[AbiStr::from_static("truncated")];

unsafe extern "C" fn create(
    _: AbiStr,
    _: AbiStr,
    _: *const connector_plugin_sdk::abi::HostApi,
    _: *mut c_void,
    _: *mut *mut c_void,
    _: AbiOut,
) -> Status {
    std::process::abort()
}

#[no_mangle]
pub static SEPL_PLUGIN_DECLARATION: TruncatedDeclaration = TruncatedDeclaration {
    header: DeclarationHeader {
        size: size_of::<TruncatedDeclaration>() as u32,
        ..DeclarationHeader::current()
    },
    api_version: AbiStr::from_static(API_VERSION),
    rustc_version: AbiStr::from_static(BUILD_RUSTC),
    target: AbiStr::from_static(BUILD_TARGET),
    panic_strategy: PANIC_UNWIND,
    plugin_names: NAMES.as_ptr(),
    plugin_count: NAMES.len(),
    // A function that aborts, so a host that got past the size check into
    // plugin code would end the test run loudly.
    create: Some(create),
    start: None,
    command: None,
    stop: None,
};
