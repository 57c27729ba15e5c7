//! Built-in device plugins, each selectable by name in `connector.yaml`.
//!
//! # Layout
//! - [`echo`]: answers every command with the command's body.

use connector_core::plugin::PluginRegistry;

pub mod echo;

/// Every built-in plugin under its config name.
pub fn builtin() -> PluginRegistry {
    let mut plugins = PluginRegistry::new();
    plugins.register(echo::NAME, echo::create);
    plugins
}
