//! Built-in device plugins, each selectable by name in `connector.yaml`.
//! `config/<name>.yaml` holds a commented example for each one.
//!
//! # Layout
//! - [`echo`]: answers every command with the command's body.
//! - [`exec`]: device logic in any language: programs run per command, and
//!   a long-running program's lines as events.
//! - [`http`]: a device behind a REST API: polls as events, commands as
//!   requests. An async plugin, see [`builtin_async`].
//! - [`mqtt`]: a device or a bridge (zigbee2mqtt, Tasmota) on an MQTT
//!   broker: subscriptions as events, commands as publications. Async too.
//! - [`generator`]: emits events on a timer from a body template; for demos
//!   and load tests. [`generator::template`] names its placeholders.
//! - [`sysmetrics`]: the gateway's own load, memory, CPU, uptime and disk
//!   usage, as periodic events and on demand. [`sysmetrics::procfs`] parses
//!   `/proc` (pure functions), [`sysmetrics::disk`] reads disk usage.
//! - [`ticker`]: the plugins' periodic thread, started in `start` and
//!   stopped and joined in `stop`.
//! - [`settings`]: value checks shared by the plugins' settings.
//! - [`template`]: text with `{placeholders}`, checked once, rendered often.

use connector_core::plugin::{AsyncDevicePlugin, DeviceSpec, PluginError, PluginRegistry};

pub mod echo;
pub mod exec;
pub mod generator;
pub mod http;
pub mod mqtt;
pub mod settings;
pub mod sysmetrics;
pub mod template;
pub mod ticker;

/// Makes a built-in async plugin's devices; the runtime runs them behind
/// its async adapter (this crate cannot: the runtime depends on it).
pub type AsyncFactory = fn(&DeviceSpec) -> Result<Box<dyn AsyncDevicePlugin>, PluginError>;

/// Every built-in async plugin under its config name. The runtime's
/// `builtin_plugins()` adds them to [`builtin`]'s.
pub fn builtin_async() -> Vec<(&'static str, AsyncFactory)> {
    vec![
        (http::NAME, |spec| Ok(Box::new(http::create(spec)?))),
        (mqtt::NAME, |spec| Ok(Box::new(mqtt::create(spec)?))),
    ]
}

/// Every built-in blocking plugin under its config name; the runtime's
/// `builtin_plugins()` has the async ones too.
pub fn builtin() -> PluginRegistry {
    let mut plugins = PluginRegistry::new();
    plugins.register(echo::NAME, echo::create);
    plugins.register(exec::NAME, exec::create);
    plugins.register(generator::NAME, generator::create);
    plugins.register(sysmetrics::NAME, sysmetrics::create);
    plugins
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_builtin_plugin_is_registered_under_its_name() {
        let plugins = super::builtin();
        let names: Vec<&str> = plugins.names().collect();
        assert_eq!(names, ["echo", "exec", "generator", "sysmetrics"]);
        let names: Vec<&str> = super::builtin_async().iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["http", "mqtt"]);
    }
}
