//! Config reload without a restart ([`Connector::reload`](crate::Connector::reload)):
//! what changed between the running config and a new one, and why a new one
//! may be refused. Pure data: the connector applies the [`DeviceDiff`].
//!
//! Devices are compared by id: one only in the new config is *added*, one
//! only in the running config is *removed*, one in both whose type, name,
//! plugin or settings differ is *changed* and is restarted (stopped,
//! unregistered, then started and registered again under the same id; its
//! new plugin instance is created only once the old one is gone, and its
//! commands wait for it meanwhile). Its line in the file does not count. The platform session stays up, unless
//! the `platform:` settings changed: then the connector reconnects with the
//! new ones and registers every device again. Whatever is still queued then
//! (buffered frames, pending unregistrations) goes to the new platform.
//!
//! Left out: `platform.buffer` (it holds what is not yet sent; a new bound or
//! file would drop or strand frames) and the `plugins:` section (libraries
//! stay loaded for the life of the process) are not applied on a reload. A
//! config that changes them is refused as a whole, so nothing half-applies;
//! restart the connector for those. `metrics` and logging settings in a
//! reloaded file are ignored (with a warning) until a restart.

use std::collections::HashMap;

use connector_core::config::{Config, ConfigError, DeviceConfig};

/// Why a reload was refused; the running devices stay as they were.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config does not pass [`Config::validate`].
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Devices whose plugin is unknown or refuses its settings, or whose id
    /// a program registered itself, one per line.
    #[error("{}", .0.join("\n"))]
    Devices(Vec<String>),
    #[error("platform.buffer changed: restart the connector to apply it (the buffer holds what is not yet sent)")]
    BufferChanged,
    /// `platform.ca_file` of the new config is missing, unreadable or holds no usable CA.
    #[error(transparent)]
    Tls(#[from] connector_core::tls::TlsError),
    #[error("plugins section changed: restart the connector to apply it")]
    PluginsChanged,
    /// The registry refused a change while it was applied (not expected:
    /// removals come first, so an id is free when it is added again).
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error("the runtime stopped during the reload: {0}")]
    Mailbox(#[from] actix::MailboxError),
}

/// What a successful reload did, by device id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// The platform settings changed and the link reconnected with them.
    pub reconnected: bool,
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} added, {} removed, {} changed",
            self.added.len(),
            self.removed.len(),
            self.changed.len()
        )?;
        if self.reconnected {
            write!(f, ", reconnecting with the new platform settings")?;
        }
        Ok(())
    }
}

/// The device changes from `old` to `new`, each list in config order.
#[derive(Debug, Default)]
pub struct DeviceDiff<'a> {
    pub added: Vec<&'a DeviceConfig>,
    pub removed: Vec<&'a DeviceConfig>,
    pub changed: Vec<&'a DeviceConfig>,
}

/// Compares two device lists by id (see the module docs).
pub fn diff<'a>(old: &'a [DeviceConfig], new: &'a [DeviceConfig]) -> DeviceDiff<'a> {
    // Indexed by id: a gateway may have 100,000 devices, and a search of one
    // list per entry of the other would be quadratic.
    let by_id = |list: &'a [DeviceConfig]| -> HashMap<&'a str, &'a DeviceConfig> {
        list.iter().map(|d| (d.id.as_str(), d)).collect()
    };
    let (old_by_id, new_by_id) = (by_id(old), by_id(new));
    let mut diff = DeviceDiff::default();
    for device in new {
        match old_by_id.get(device.id.as_str()) {
            None => diff.added.push(device),
            Some(before) if !same_device(before, device) => diff.changed.push(device),
            Some(_) => {}
        }
    }
    diff.removed = old.iter().filter(|d| !new_by_id.contains_key(d.id.as_str())).collect();
    diff
}

/// Whether a reload would leave the device running as it is: its line in
/// the file may move.
fn same_device(a: &DeviceConfig, b: &DeviceConfig) -> bool {
    a.id == b.id
        && a.device_type == b.device_type
        && a.name == b.name
        && a.plugin == b.plugin
        && a.settings == b.settings
}

/// Refuses a config whose sections a reload does not apply.
pub fn check_sections(old: &Config, new: &Config) -> Result<(), ReloadError> {
    if old.platform.buffer != new.platform.buffer {
        return Err(ReloadError::BufferChanged);
    }
    if old.plugins != new.plugins {
        return Err(ReloadError::PluginsChanged);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, plugin: &str, line: usize) -> DeviceConfig {
        DeviceConfig {
            id: id.into(),
            plugin: plugin.into(),
            line: Some(line),
            ..DeviceConfig::default()
        }
    }

    fn ids(list: &[&DeviceConfig]) -> Vec<String> {
        list.iter().map(|d| d.id.clone()).collect()
    }

    #[test]
    fn diff_finds_added_removed_and_changed_devices_and_ignores_moved_lines() {
        let old = [device("a", "echo", 1), device("b", "echo", 2), device("c", "echo", 3)];
        let new = [
            device("b", "echo", 7),
            device("c", "generator", 8),
            device("d", "echo", 9),
        ];
        let diff = diff(&old, &new);
        assert_eq!(ids(&diff.added), ["d"]);
        assert_eq!(ids(&diff.removed), ["a"]);
        assert_eq!(ids(&diff.changed), ["c"]);
    }

    #[test]
    fn a_report_reads_as_counts() {
        let report = ReloadReport {
            added: vec!["x".into()],
            ..ReloadReport::default()
        };
        assert_eq!(report.to_string(), "1 added, 0 removed, 0 changed");
        let relinked = ReloadReport {
            reconnected: true,
            ..ReloadReport::default()
        };
        assert_eq!(
            relinked.to_string(),
            "0 added, 0 removed, 0 changed, reconnecting with the new platform settings"
        );
    }
}
