//! Checks shared by the plugins' settings types, used as serde
//! `deserialize_with` functions so that a refused value is reported like any
//! other settings error: naming the device and the key
//! (`device "gen-1" (declared at line 9): `settings.interval_ms`: must be above 0`).

use connector_core::plugin::{DeviceSpec, PluginError};
use serde::de::{Deserialize, Deserializer, Error};

/// A whole number that must not be 0 (intervals, counts, burst sizes).
pub fn above_zero<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default + PartialEq,
{
    let value = T::deserialize(deserializer)?;
    if value == T::default() {
        Err(D::Error::custom("must be above 0"))
    } else {
        Ok(value)
    }
}

/// Like [`above_zero`] for an optional key; use with `#[serde(default)]` so
/// that a missing key reads as `None`.
pub fn optional_above_zero<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default + PartialEq,
{
    above_zero(deserializer).map(Some)
}

/// A string that must not be empty (endpoint names).
pub fn not_empty<'de, D>(deserializer: D) -> Result<String, D::Error>
where
    D: Deserializer<'de>,
{
    let value = String::deserialize(deserializer)?;
    if value.is_empty() {
        Err(D::Error::custom("must not be empty"))
    } else {
        Ok(value)
    }
}

/// A refusal of `settings.<key>`, worded like serde's own settings errors:
/// the device, where it is declared, the key, why.
pub fn refusal(spec: &DeviceSpec, key: &str, why: impl std::fmt::Display) -> PluginError {
    let origin = spec.origin.as_deref().map(|o| format!(" ({o})")).unwrap_or_default();
    PluginError::new(format!("device {:?}{origin}: `settings.{key}`: {why}", spec.id()))
}

/// A JSON pointer (`/state`, `/status/0/temp`), or none.
pub fn check_pointer(pointer: Option<&str>) -> Result<(), String> {
    match pointer {
        Some(pointer) if !pointer.is_empty() && !pointer.starts_with('/') => Err(format!(
            "`{pointer}` is not a JSON pointer; it starts with `/`, like /state or /status/0/temp"
        )),
        _ => Ok(()),
    }
}

/// `text`'s value at `pointer` (a text as it is, anything else as JSON), or
/// the whole text without a pointer.
pub fn pointed(text: &str, pointer: Option<&str>) -> Result<String, String> {
    let Some(pointer) = pointer.filter(|p| !p.is_empty()) else {
        return Ok(text.to_owned());
    };
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    match json.pointer(pointer) {
        Some(serde_json::Value::String(text)) => Ok(text.clone()),
        Some(value) => Ok(value.to_string()),
        None => Err(format!("nothing at {pointer}")),
    }
}

/// For the plugins' tests: why `create` refuses `spec`; a panic naming the
/// settings if it takes them.
#[cfg(test)]
pub(crate) fn refused<T>(create: impl Fn(&DeviceSpec) -> Result<T, PluginError>, spec: &DeviceSpec) -> String {
    match create(spec) {
        Ok(_) => panic!("accepted: {}", spec.settings),
        Err(e) => e.to_string(),
    }
}
