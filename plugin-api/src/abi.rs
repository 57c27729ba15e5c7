//! The C-ABI boundary between the runtime and a plugin library (a `cdylib`
//! loaded at run time): one definition that host and plugins both compile.
//!
//! Rust has no stable ABI: a `Box<dyn DevicePlugin>` made by another build
//! may have another vtable layout, another allocator, other `TypeId`s and its
//! own copy of every thread-local and global (the async runtime's, tracing's).
//! So nothing Rust-shaped crosses the boundary. Only `#[repr(C)]` structs,
//! `extern "C"` function pointers, integers and borrowed byte slices do, and
//! every structured value travels as JSON (`serde_json` of [`DeviceSpec`],
//! [`Message`] and [`Reply`]).
//!
//! Plugin authors never touch this module: the `connector-plugin-sdk` crate's
//! `export_plugins!` macro writes the declaration and the shims, and the
//! runtime's `loader` reads them. It holds types and constants only, no IO.
//!
//! # The declaration
//!
//! A library exports one static named [`DECLARATION_SYMBOL`] of type
//! [`PluginDeclaration`]. It starts with a [`DeclarationHeader`] (magic,
//! ABI version, size of the whole declaration) whose layout never changes,
//! so a host of any version can read those 16 bytes and decide whether to
//! read further. Then come the crate-API version, rustc version and target the
//! library was built with, its panic strategy, the names of the plugin types
//! it provides, and the [`PluginFunctions`] table.
//!
//! # Calls
//!
//! Every function returns a [`Status`]. Text coming back (a reply's JSON or an
//! error message) is handed to an [`AbiOut`] callback during the call, as a
//! borrowed slice the caller copies: no allocation ever changes sides, so the
//! two allocators never meet. Inputs are borrowed for the duration of the call
//! only.
//!
//! - `create(name, spec_json, host, host_ctx, &mut instance, out)`: makes an
//!   instance of the plugin type `name` for the device in `spec_json` (a
//!   [`DeviceSpec`]). `host` and `host_ctx` stay valid until `destroy` of this
//!   instance returns.
//! - `start(instance, out)`: the device starts; events may flow from now on.
//! - `command(instance, command_json, out)`: a [`Message`]; on [`STATUS_OK`]
//!   `out` gets a [`Reply`] as JSON, otherwise the error text.
//! - `command_deferred(instance, command_json, token, out)` (optional: null
//!   in a library built before it existed, which the host then drives with
//!   `command`): a [`Message`] to answer now or later. On [`STATUS_OK`] the
//!   library answers it, or already did, by calling the host's
//!   `reply(token, status, bytes)` exactly once, from any thread and at any
//!   time, also after `destroy`. On any other status the library never uses
//!   the token, and `out` has the error or panic text, as for `command`. The
//!   host calls the next function of the instance as soon as this returns,
//!   so a library that keeps tokens answers several commands at once.
//! - `stop(instance, out)`: the device stops; the library emits nothing for
//!   this instance after `stop` returns.
//! - `destroy(instance)`: frees the instance. The host calls nothing with it
//!   afterwards.
//!
//! An instance's functions are called one at a time, possibly from different
//! threads. The [`HostApi`] functions may be called from any thread at any
//! time between `create` and the return of `destroy`, concurrently; `reply`
//! also afterwards.
//!
//! The host's `reply(token, status, bytes)` (optional: null in a host built
//! before it existed, which never calls `command_deferred`): on
//! [`STATUS_OK`], `bytes` are a [`Reply`] as JSON; otherwise the error text.
//! A token is a plain number into a table of the host's, not a pointer, so a
//! wrong or repeated one is ignored: a library can do no harm with it. A
//! library whose thread answers while the call that handed out the token is
//! still running, and which then fails that call, has answered anyway; the
//! host keeps whichever came first.
//!
//! # Versioning rules
//!
//! - [`MAGIC`] never changes; a symbol without it is not a plugin declaration.
//! - [`ABI_VERSION`] changes with any incompatible change of this module:
//!   a field moved, removed or retyped, a function's signature or meaning
//!   changed. The host refuses every other version.
//! - Within one ABI version, [`PluginDeclaration`] and [`HostApi`] only grow
//!   at their end. Each carries its own size; a reader refuses one shorter
//!   than what it needs and ignores bytes beyond what it knows. A field
//!   added this way is optional: a reader takes it only when the size covers
//!   it, and does without it otherwise.
//! - Version 1 as first released ended before `command_deferred` and `reply`
//!   ([`DECLARATION_SIZE_V1_0`], [`HOST_API_SIZE_V1_0`]); both sides still
//!   accept a table of that size.
//! - [`API_VERSION`] is this crate's version. The JSON shapes of the spec,
//!   messages and replies follow it, so the host refuses a library whose
//!   version is not semver-compatible with its own (see [`api_compatible`]).
//!
//! [`DeviceSpec`]: crate::plugin::DeviceSpec
//! [`Message`]: crate::Message
//! [`Reply`]: crate::plugin::Reply

use std::ffi::c_void;
use std::mem::{offset_of, size_of};

/// First field of every declaration: `"SEPLPLUG"` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SEPLPLUG");

/// Version of this boundary; see the module's versioning rules.
pub const ABI_VERSION: u32 = 1;

/// The name of the exported declaration static.
pub const DECLARATION_SYMBOL: &str = "SEPL_PLUGIN_DECLARATION";

/// This crate's version, which fixes the JSON shapes crossing the boundary.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `rustc -V` of the compiler building this crate (and so the whole build).
pub const BUILD_RUSTC: &str = env!("CONNECTOR_BUILD_RUSTC");

/// The target triple of this build.
pub const BUILD_TARGET: &str = env!("CONNECTOR_BUILD_TARGET");

/// What a boundary function returns.
pub type Status = i32;
/// Done; for `command`, `out` got the reply.
pub const STATUS_OK: Status = 0;
/// The plugin reported an error; `out` got its text.
pub const STATUS_ERROR: Status = 1;
/// The plugin panicked; the panic was caught at the boundary and `out` got its
/// message. The instance must be stopped and destroyed, not used further.
pub const STATUS_PANIC: Status = 2;
/// The arguments did not fit: a null pointer, text that is not UTF-8, JSON of
/// the wrong shape, an unknown plugin name. `out` got a description.
pub const STATUS_INVALID: Status = 3;
/// The device is stopped; the event was not accepted (returned by `emit`).
pub const STATUS_STOPPED: Status = 4;
/// The other side's table is too short for this side's needs.
pub const STATUS_UNSUPPORTED: Status = 5;

/// [`PluginDeclaration::panic_strategy`] of a library built with `panic = "unwind"`.
pub const PANIC_UNWIND: u32 = 1;
/// [`PluginDeclaration::panic_strategy`] of a library built with `panic = "abort"`,
/// which the host refuses: a plugin panic would end the whole process.
pub const PANIC_ABORT: u32 = 2;

/// Log levels of [`HostApi::log`].
pub const LOG_ERROR: u32 = 1;
pub const LOG_WARN: u32 = 2;
pub const LOG_INFO: u32 = 3;
pub const LOG_DEBUG: u32 = 4;
pub const LOG_TRACE: u32 = 5;

/// A borrowed byte slice (UTF-8 text or JSON). A null `ptr` means empty.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AbiStr {
    pub ptr: *const u8,
    pub len: usize,
}

impl AbiStr {
    /// Borrows `bytes`; the result must not outlive them.
    pub fn new(bytes: &[u8]) -> Self {
        AbiStr {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// For the declaration's constant texts.
    pub const fn from_static(text: &'static str) -> Self {
        AbiStr {
            ptr: text.as_ptr(),
            len: text.len(),
        }
    }

    /// The bytes this points at.
    ///
    /// # Safety
    /// `ptr` is null or points at `len` readable bytes that stay unchanged
    /// for `'a`.
    pub unsafe fn as_bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            &[]
        } else {
            // SAFETY: non-null, and the caller promises `len` readable bytes for 'a.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }

    /// The text this points at, if it is UTF-8.
    ///
    /// # Safety
    /// As for [`AbiStr::as_bytes`].
    pub unsafe fn as_str<'a>(self) -> Result<&'a str, std::str::Utf8Error> {
        // SAFETY: passed on to the caller.
        std::str::from_utf8(unsafe { self.as_bytes() })
    }
}

/// Where a callee writes its answer: `write(ctx, bytes)`, at most once per
/// call, with bytes the caller copies before `write` returns.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AbiOut {
    pub ctx: *mut c_void,
    pub write: unsafe extern "C" fn(ctx: *mut c_void, bytes: AbiStr),
}

/// The part of a declaration every ABI version shares: read it, check it,
/// and only then read the rest.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeclarationHeader {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`ABI_VERSION`] of the library's build.
    pub abi_version: u32,
    /// `size_of::<PluginDeclaration>()` in the library's build.
    pub size: u32,
}

impl DeclarationHeader {
    /// The header of a declaration made by this build.
    pub const fn current() -> Self {
        DeclarationHeader {
            magic: MAGIC,
            abi_version: ABI_VERSION,
            size: size_of::<PluginDeclaration>() as u32,
        }
    }
}

/// Makes an instance. `instance` receives it on [`STATUS_OK`].
pub type CreateFn = unsafe extern "C" fn(
    name: AbiStr,
    spec_json: AbiStr,
    host: *const HostApi,
    host_ctx: *mut c_void,
    instance: *mut *mut c_void,
    out: AbiOut,
) -> Status;
/// Starts an instance; `out` gets an error text on failure.
pub type StartFn = unsafe extern "C" fn(instance: *mut c_void, out: AbiOut) -> Status;
/// Handles one command; `out` gets the reply JSON or an error text.
pub type CommandFn = unsafe extern "C" fn(instance: *mut c_void, command_json: AbiStr, out: AbiOut) -> Status;
/// Stops an instance; `out` gets a panic message if there was one.
pub type StopFn = unsafe extern "C" fn(instance: *mut c_void, out: AbiOut) -> Status;
/// Frees an instance; nothing may use it afterwards.
pub type DestroyFn = unsafe extern "C" fn(instance: *mut c_void) -> Status;
/// Takes one command to answer through the host's `reply` with `token`; on a
/// status other than [`STATUS_OK`], `out` gets the error text and the token
/// is never used. See the module docs.
pub type CommandDeferredFn =
    unsafe extern "C" fn(instance: *mut c_void, command_json: AbiStr, token: u64, out: AbiOut) -> Status;

/// The library's functions. `None` (a null pointer) in one of the first five
/// makes the host refuse the library, so a half-filled table is an error
/// message, not a crash.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PluginFunctions {
    pub create: Option<CreateFn>,
    pub start: Option<StartFn>,
    pub command: Option<CommandFn>,
    pub stop: Option<StopFn>,
    pub destroy: Option<DestroyFn>,
    /// Optional, and missing from a declaration of [`DECLARATION_SIZE_V1_0`]
    /// bytes: the host uses `command` without it.
    pub command_deferred: Option<CommandDeferredFn>,
}

/// The one static a plugin library exports, under [`DECLARATION_SYMBOL`].
#[repr(C)]
#[derive(Debug)]
pub struct PluginDeclaration {
    pub header: DeclarationHeader,
    /// The library's [`API_VERSION`].
    pub api_version: AbiStr,
    /// The library's [`BUILD_RUSTC`].
    pub rustc_version: AbiStr,
    /// The library's [`BUILD_TARGET`].
    pub target: AbiStr,
    /// [`PANIC_UNWIND`] or [`PANIC_ABORT`].
    pub panic_strategy: u32,
    /// The plugin type names the library provides, for `plugin:` in the config.
    pub plugin_names: *const AbiStr,
    pub plugin_count: usize,
    pub functions: PluginFunctions,
}

// SAFETY: a declaration is immutable data whose pointers lead to immutable
// statics of the same library, so sharing it between threads is sound.
unsafe impl Sync for PluginDeclaration {}

/// The size of a [`PluginDeclaration`] of ABI version 1 as first released,
/// before `command_deferred` was added at the end of [`PluginFunctions`]:
/// what libraries of that time report in `header.size`. The host refuses a
/// shorter declaration.
pub const DECLARATION_SIZE_V1_0: usize =
    offset_of!(PluginDeclaration, functions) + offset_of!(PluginFunctions, command_deferred);

/// Records an event for the device; [`STATUS_STOPPED`] once it is stopped.
pub type EmitFn = unsafe extern "C" fn(ctx: *mut c_void, event_json: AbiStr) -> Status;
/// Logs a line at a `LOG_*` level. `ctx` may be null for lines not tied to a device.
pub type LogFn = unsafe extern "C" fn(ctx: *mut c_void, level: u32, message: AbiStr);
/// The plugin failed outside a call (e.g. its own thread panicked): the host
/// stops this instance and starts a new one after a back-off.
pub type ReportFailureFn = unsafe extern "C" fn(ctx: *mut c_void, reason: AbiStr);
/// Answers the command `command_deferred` handed out `token` for: on
/// [`STATUS_OK`] `bytes` are a [`Reply`] as JSON, otherwise the error text.
/// Takes no context: it may come after the instance is destroyed.
///
/// [`Reply`]: crate::plugin::Reply
pub type ReplyFn = unsafe extern "C" fn(token: u64, status: Status, bytes: AbiStr);

/// The host's functions, handed to `create` with the device's context pointer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HostApi {
    /// `size_of::<HostApi>()` in the host's build.
    pub size: u32,
    pub emit: Option<EmitFn>,
    pub log: Option<LogFn>,
    pub report_failure: Option<ReportFailureFn>,
    /// Optional, and missing from a table of [`HOST_API_SIZE_V1_0`] bytes:
    /// such a host never calls `command_deferred`.
    pub reply: Option<ReplyFn>,
}

/// The size of a [`HostApi`] of ABI version 1 as first released, before
/// `reply` was added: what hosts of that time report in `size`.
pub const HOST_API_SIZE_V1_0: usize = offset_of!(HostApi, reply);

/// Whether a library of crate-API version `library` may talk to a host of
/// version `host`: cargo's semver rule (same major; for `0.x`, same minor).
/// Anything that does not parse as `x.y.z` is incompatible.
pub fn api_compatible(host: &str, library: &str) -> bool {
    fn parts(version: &str) -> Option<(u64, u64)> {
        let core = version.split(['-', '+']).next()?;
        let mut numbers = core.split('.').map(|n| n.parse::<u64>().ok());
        let (major, minor, _patch) = (numbers.next()??, numbers.next()??, numbers.next()??);
        Some((major, minor))
    }
    match (parts(host), parts(library)) {
        (Some((0, host_minor)), Some((0, lib_minor))) => host_minor == lib_minor,
        (Some((host_major, _)), Some((lib_major, _))) => host_major == lib_major,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_sixteen_bytes_at_the_start_of_the_declaration() {
        // These offsets are the one thing every ABI version must keep.
        assert_eq!(size_of::<DeclarationHeader>(), 16);
        assert_eq!(std::mem::offset_of!(PluginDeclaration, header), 0);
        assert_eq!(
            DeclarationHeader::current().size as usize,
            size_of::<PluginDeclaration>()
        );
        assert_eq!(&MAGIC.to_le_bytes(), b"SEPLPLUG");
    }

    /// [`PluginDeclaration`] and [`HostApi`] as ABI version 1 was first
    /// released, copied from that release: what old builds still report.
    mod v1_0 {
        use super::*;

        #[repr(C)]
        pub struct PluginFunctions {
            pub create: Option<CreateFn>,
            pub start: Option<StartFn>,
            pub command: Option<CommandFn>,
            pub stop: Option<StopFn>,
            pub destroy: Option<DestroyFn>,
        }

        #[repr(C)]
        pub struct PluginDeclaration {
            pub header: DeclarationHeader,
            pub api_version: AbiStr,
            pub rustc_version: AbiStr,
            pub target: AbiStr,
            pub panic_strategy: u32,
            pub plugin_names: *const AbiStr,
            pub plugin_count: usize,
            pub functions: PluginFunctions,
        }

        #[repr(C)]
        pub struct HostApi {
            pub size: u32,
            pub emit: Option<EmitFn>,
            pub log: Option<LogFn>,
            pub report_failure: Option<ReportFailureFn>,
        }
    }

    #[test]
    fn the_first_v1_sizes_are_what_old_builds_report_and_new_fields_come_after() {
        assert_eq!(DECLARATION_SIZE_V1_0, size_of::<v1_0::PluginDeclaration>());
        assert_eq!(HOST_API_SIZE_V1_0, size_of::<v1_0::HostApi>());
        #[cfg(target_pointer_width = "64")]
        {
            // The numbers themselves, as a library built then has them.
            assert_eq!(DECLARATION_SIZE_V1_0, 128);
            assert_eq!(HOST_API_SIZE_V1_0, 32);
        }
        // Every old field stays where it was; the new ones only append.
        assert_eq!(
            offset_of!(PluginDeclaration, functions),
            offset_of!(v1_0::PluginDeclaration, functions)
        );
        assert_eq!(
            offset_of!(PluginFunctions, destroy),
            offset_of!(v1_0::PluginFunctions, destroy)
        );
        assert_eq!(
            offset_of!(HostApi, report_failure),
            offset_of!(v1_0::HostApi, report_failure)
        );
        let deferred_end = offset_of!(PluginDeclaration, functions)
            + offset_of!(PluginFunctions, command_deferred)
            + size_of::<Option<CommandDeferredFn>>();
        assert_eq!(deferred_end, size_of::<PluginDeclaration>());
        assert_eq!(
            offset_of!(HostApi, reply) + size_of::<Option<ReplyFn>>(),
            size_of::<HostApi>()
        );
        assert!(DECLARATION_SIZE_V1_0 < size_of::<PluginDeclaration>());
        assert!(HOST_API_SIZE_V1_0 < size_of::<HostApi>());
    }

    #[test]
    fn api_versions_are_compatible_by_cargos_semver_rule() {
        let table = [
            ("0.1.0", "0.1.7", true),
            ("0.1.0", "0.2.0", false),
            ("1.2.0", "1.0.3", true),
            ("1.2.0", "2.0.0", false),
            ("1.0.0-rc.1", "1.4.0", true),
            ("0.1.0", "garbage", false),
            ("0.1.0", "", false),
        ];
        for (host, library, expected) in table {
            assert_eq!(api_compatible(host, library), expected, "{host} vs {library}");
        }
    }

    #[test]
    fn an_abi_str_reads_back_its_text_and_null_as_empty() {
        let text = String::from("héllo");
        // SAFETY: `text` outlives the borrow.
        assert_eq!(unsafe { AbiStr::new(text.as_bytes()).as_str() }, Ok("héllo"));
        let null = AbiStr {
            ptr: std::ptr::null(),
            len: 5,
        };
        // SAFETY: a null pointer is read as empty without being dereferenced.
        assert_eq!(unsafe { null.as_bytes() }, b"");
    }
}
