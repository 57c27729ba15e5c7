//! The `body` template of `generator` (see [`crate::template`]): the
//! placeholders `{n}`, `{device}`, `{time}` and `{time_ms}`, inserted as
//! they are, without JSON quoting.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::template::Placeholders;

/// The placeholders a template may use, as written between the braces.
pub const PLACEHOLDERS: [&str; 4] = ["n", "device", "time", "time_ms"];

/// A checked body template, ready to render.
pub type Template = crate::template::Template<Field>;
pub use crate::template::TemplateError;

/// What a generator's placeholder stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// `{n}`: the event counter, 1 for the first event.
    Counter,
    /// `{device}`: the device id.
    Device,
    /// `{time}`: Unix time in whole seconds, like the wire's `time`.
    Time,
    /// `{time_ms}`: Unix time in milliseconds, for measuring latency.
    TimeMs,
}

impl Placeholders for Field {
    const NAMES: &'static [&'static str] = &PLACEHOLDERS;

    fn named(name: &str) -> Option<Self> {
        Some(match name {
            "n" => Field::Counter,
            "device" => Field::Device,
            "time" => Field::Time,
            "time_ms" => Field::TimeMs,
            _ => return None,
        })
    }
}

impl Template {
    /// The text for event number `n` of `device` at time `now`.
    pub fn render_event(&self, n: u64, device: &str, now: SystemTime) -> String {
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        self.render(|field| match field {
            Field::Counter => Cow::Owned(n.to_string()),
            Field::Device => Cow::Borrowed(device),
            Field::Time => Cow::Owned(since_epoch.as_secs().to_string()),
            Field::TimeMs => Cow::Owned(since_epoch.as_millis().to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn render(template: &str, n: u64) -> String {
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        Template::parse(template).unwrap().render_event(n, "gen-1", now)
    }

    #[test]
    fn placeholders_are_replaced_and_other_braces_kept() {
        let table = [
            (r#"{"n": {n}}"#, 1, r#"{"n": 1}"#),
            (r#"{"n": {n}}"#, 42, r#"{"n": 42}"#),
            ("{n}", 7, "7"),
            ("{n}{n}", 3, "33"),
            ("no placeholders", 1, "no placeholders"),
            ("", 1, ""),
            (
                r#"{"device": "{device}", "time": {time}, "ms": {time_ms}}"#,
                1,
                r#"{"device": "gen-1", "time": 1700000000, "ms": 1700000000123}"#,
            ),
            (r#"{"a": {"b": {}}, "n": {n}}"#, 5, r#"{"a": {"b": {}}, "n": 5}"#),
            ("{{n}}", 2, "{2}"),
            ("{ n }", 2, "{ n }"),
            ("unclosed {n", 2, "unclosed {n"),
            ("{", 2, "{"),
            ("}{n}{", 9, "}9{"),
            ("{ünïcode} {n}", 4, "{ünïcode} 4"),
        ];
        for (template, n, expected) in table {
            assert_eq!(render(template, n), expected, "template {template:?}");
        }
    }

    #[test]
    fn an_unknown_placeholder_is_refused_with_the_known_ones_listed() {
        let err = Template::parse(r#"{"n": {count}}"#).unwrap_err();
        assert_eq!(err.placeholder, "count");
        assert_eq!(
            err.to_string(),
            "unknown placeholder `{count}` (known: {n}, {device}, {time}, {time_ms})"
        );
        assert!(Template::parse("{N}").is_err(), "names are case-sensitive");
    }
}
