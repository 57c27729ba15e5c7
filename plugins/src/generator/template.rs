//! The `body` template of `generator`: text with placeholders, checked once
//! when the device is created and then rendered for every event without
//! parsing again.
//!
//! Placeholders are a known name in braces: `{n}`, `{device}`, `{time}`,
//! `{time_ms}`. Any other brace is plain text, so JSON needs no escaping
//! (`{"n": {n}}` renders as `{"n": 1}`), but a brace around a single word
//! that is not a known name, such as `{count}`, is refused as a likely typo.
//! Values are inserted as they are, without JSON quoting.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// The placeholders a template may use, as written between the braces.
pub const PLACEHOLDERS: [&str; 4] = ["n", "device", "time", "time_ms"];

/// A checked template, ready to render. In settings it is written as a
/// string and checked while the settings are read.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    /// `{n}`: the event counter, 1 for the first event.
    Counter,
    /// `{device}`: the device id.
    Device,
    /// `{time}`: Unix time in whole seconds, like the wire's `time`.
    Time,
    /// `{time_ms}`: Unix time in milliseconds, for measuring latency.
    TimeMs,
}

/// A template that names a placeholder that does not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError {
    pub placeholder: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known: Vec<String> = PLACEHOLDERS.iter().map(|p| format!("{{{p}}}")).collect();
        write!(
            f,
            "unknown placeholder `{{{}}}` (known: {})",
            self.placeholder,
            known.join(", ")
        )
    }
}

impl std::error::Error for TemplateError {}

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let name = after
                .find('}')
                .map(|close| &after[..close])
                .filter(|name| is_word(name));
            let Some(name) = name else {
                // Not a placeholder (JSON's own braces): keep the brace as text.
                literal.push('{');
                rest = after;
                continue;
            };
            let part = match name {
                "n" => Part::Counter,
                "device" => Part::Device,
                "time" => Part::Time,
                "time_ms" => Part::TimeMs,
                other => {
                    return Err(TemplateError {
                        placeholder: other.to_owned(),
                    })
                }
            };
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(part);
            rest = &after[name.len() + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    /// The text for event number `n` of `device` at time `now`.
    pub fn render(&self, n: u64, device: &str, now: SystemTime) -> String {
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Counter => out.push_str(&n.to_string()),
                Part::Device => out.push_str(device),
                Part::Time => out.push_str(&since_epoch.as_secs().to_string()),
                Part::TimeMs => out.push_str(&since_epoch.as_millis().to_string()),
            }
        }
        out
    }
}

/// A placeholder candidate: letters, digits and `_`, not empty.
fn is_word(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl TryFrom<String> for Template {
    type Error = TemplateError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Template::parse(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn render(template: &str, n: u64) -> String {
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        Template::parse(template).unwrap().render(n, "gen-1", now)
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
