//! Write a device plugin as an ordinary [`DevicePlugin`] and turn it into a
//! library the stock `connector-runtime` loads from `connector.yaml`.
//!
//! ```
//! use connector_plugin_sdk::{DevicePlugin, DeviceSpec, EventSink, Message, PluginError, Reply};
//!
//! struct Counter {
//!     count: u64,
//! }
//!
//! impl DevicePlugin for Counter {
//!     fn command(&mut self, _command: &Message) -> Result<Reply, PluginError> {
//!         self.count += 1;
//!         Ok(Reply::body(self.count.to_string()))
//!     }
//! }
//!
//! pub fn create(_spec: &DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> {
//!     Ok(Box::new(Counter { count: 0 }))
//! }
//!
//! // The library provides the plugin type "counter" (more pairs for more types).
//! connector_plugin_sdk::export_plugins! {
//!     "counter" => create,
//! }
//! # fn main() {}
//! ```
//!
//! with, in the plugin's `Cargo.toml`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]          # add "rlib" to also compile it into a program
//!
//! [dependencies]
//! connector-plugin-sdk = { path = "..." }
//! ```
//!
//! and in `connector.yaml`: `plugins: [path/to/libcounter.so]` and
//! `plugin: counter` on a device. The same `create` works compiled in, with
//! `Connector::builder(config).plugin("counter", create)`.
//!
//! A plugin that answers from a thread of its own (a serial port's worker)
//! implements [`DevicePlugin::command_deferred`] and answers through the
//! [`Responder`] it gets, from any thread, also after the device stopped; the
//! next command comes as soon as `command_deferred` returns. In a library,
//! the answer travels to the runtime with the command's token (see
//! [`abi`]); a runtime too old for that drives the plugin
//! through `command`, so a plugin meant for old runtimes implements both.
//!
//! A plugin library must be built with `panic = "unwind"` (the default): the
//! runtime refuses a `panic = "abort"` one, because a plugin panic would end
//! the whole connector. Build it with the same toolchain as the runtime
//! where you can; the runtime warns when the compilers differ.
//!
//! The SDK and [`connector_plugin_api`] under it depend on serde,
//! serde_json and tracing only (no async runtime, HTTP or TLS), so a plugin
//! library builds from scratch in well under a minute, and compiles for
//! another target (a Raspberry Pi, say) without a C cross-compiler: only
//! the final link needs the target's linker.
//!
//! # Layout
//! - [`export_plugins!`]: the macro writing the library's declaration.
//! - `export`: the `extern "C"` functions behind it, which catch every panic
//!   so none unwinds into the host (see [`abi`]).
//! - `host`: the runtime's side as the plugin sees it: the [`EventSink`]
//!   over the host's functions, [`log`] and [`spawn_worker`].

mod export;
mod host;

pub use connector_plugin_api;
pub use connector_plugin_api::abi;
pub use connector_plugin_api::plugin::{
    CommandResult, DevicePlugin, DeviceSpec, EmitError, EventSink, PluginError, Reply, Responder,
};
pub use connector_plugin_api::{Device, Message};
pub use host::{log, spawn_worker, Level};

/// What the macro expands to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::export::{create, declaration, FactoryFn};
}

/// Exports plugin types from a `cdylib`: `"name" => factory` pairs, where a
/// factory is a `fn(&DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError>`
/// (the same function you would register with a compiled-in runtime).
///
/// Writes the library's one exported declaration (see
/// [`abi`]); use it once per library, at the crate root.
#[macro_export]
macro_rules! export_plugins {
    ($($name:literal => $factory:expr),+ $(,)?) => {
        #[no_mangle]
        pub static SEPL_PLUGIN_DECLARATION: $crate::abi::PluginDeclaration = {
            const __SEPL_NAMES: &[$crate::abi::AbiStr] = &[$($crate::abi::AbiStr::from_static($name)),+];
            static __SEPL_FACTORIES: &[(&str, $crate::__private::FactoryFn)] = &[$(($name, $factory)),+];

            unsafe extern "C" fn __sepl_create(
                name: $crate::abi::AbiStr,
                spec_json: $crate::abi::AbiStr,
                host: *const $crate::abi::HostApi,
                host_ctx: *mut ::std::ffi::c_void,
                instance: *mut *mut ::std::ffi::c_void,
                out: $crate::abi::AbiOut,
            ) -> $crate::abi::Status {
                // SAFETY: the host keeps the ABI's contract for `create`, which
                // is what `__private::create` needs.
                unsafe { $crate::__private::create(__SEPL_FACTORIES, name, spec_json, host, host_ctx, instance, out) }
            }

            // The block's own items are named so as not to shadow the factories,
            // which are resolved in this block. `cfg!` is evaluated in the
            // plugin's own crate, so it gives that build's panic strategy.
            $crate::__private::declaration(__SEPL_NAMES, __sepl_create, cfg!(panic = "unwind"))
        };
    };
}
