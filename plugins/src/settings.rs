//! Checks shared by the plugins' settings types, used as serde
//! `deserialize_with` functions so that a refused value is reported like any
//! other settings error: naming the device and the key
//! (`device "gen-1" (declared at line 9): `settings.interval_ms`: must be above 0`).

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
