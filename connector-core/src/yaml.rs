//! The only module that uses `serde_yaml`: it reads YAML text into the config
//! model, turns serde_yaml's errors into [`Problem`]s, and finds the line of a
//! key, so swapping the YAML library (serde_yaml is deprecated) touches one file.
//!
//! serde_yaml keeps no positions on values. [`locate`] finds one by parsing
//! the text again with a probe that fails on purpose at the wanted key: the
//! failure carries the position. Config files are small, so the extra parses
//! are cheap, and they only run for entries that need a line.

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, IgnoredAny, Visitor};

use crate::config::Problem;

/// One step of a key path: a mapping key or a sequence index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

impl Seg {
    pub(crate) fn key(name: &str) -> Seg {
        Seg::Key(name.to_owned())
    }
}

/// Writes a path the way serde_yaml does: `platform.backoff`, `devices[2].id`.
pub(crate) fn path_to_string(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(name) if out.is_empty() => out.push_str(name),
            Seg::Key(name) => {
                out.push('.');
                out.push_str(name);
            }
            Seg::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

/// Reads serde_yaml's path text back into steps. Keys holding `.` or `[`
/// split wrongly; that only costs a less precise position.
pub(crate) fn parse_path(text: &str) -> Vec<Seg> {
    let mut path = Vec::new();
    for part in text.split('.') {
        let (name, mut indexes) = match part.find('[') {
            Some(at) => part.split_at(at),
            None => (part, ""),
        };
        if !name.is_empty() {
            path.push(Seg::key(name));
        }
        while let Some(rest) = indexes.strip_prefix('[') {
            let Some(end) = rest.find(']') else { break };
            match rest[..end].parse() {
                Ok(index) => path.push(Seg::Index(index)),
                Err(_) => break,
            }
            indexes = &rest[end + 1..];
        }
    }
    path
}

/// Deserializes `text`; a failure becomes one [`Problem`] naming `source`,
/// the 1-based line and column, and the key path.
pub(crate) fn from_str<T: DeserializeOwned>(text: &str, source: &str) -> Result<T, Problem> {
    serde_yaml::from_str(text).map_err(|err| to_problem(&err, text, source))
}

fn to_problem(err: &serde_yaml::Error, text: &str, source: &str) -> Problem {
    let mut message = err.to_string();
    let mut position = err.location().map(|at| (at.line(), at.column()));
    // serde_yaml appends " at line L column C"; the problem carries the
    // position as fields and prints it in front, so drop the copy.
    if let Some((line, column)) = position {
        let suffix = format!(" at line {line} column {column}");
        if let Some(at) = message.find(&suffix) {
            message.replace_range(at..at + suffix.len(), "");
        }
    }
    let (key, message) = split_path(&message);
    let (key, mut message) = (key.to_owned(), message.to_owned());

    // For an unknown or duplicate key serde_yaml points at the start of the
    // enclosing mapping; point at the key itself instead.
    for lead in ["unknown field `", "duplicate field `"] {
        let Some(name) = message.strip_prefix(lead).and_then(|rest| rest.split('`').next()) else {
            continue;
        };
        let mut path = parse_path(&key);
        path.push(Seg::key(name));
        let occurrence = if lead.starts_with("duplicate") { 2 } else { 1 };
        if let Some(found) = locate(text, &path, Target::Key { occurrence }) {
            position = Some(found);
        }
    }

    let secrets = password_candidates(text);
    message = redact(&message, &secrets);
    Problem {
        source: Some(source.to_owned()),
        line: position.map(|(line, _)| line),
        column: position.map(|(_, column)| column),
        key: redact(&key, &secrets),
        message,
    }
}

/// Splits serde_yaml's `path: message`. A path has no white space or quotes,
/// which tells it apart from messages like `invalid type: map, ...` that
/// serde_yaml writes without a path for errors at the top level.
fn split_path(message: &str) -> (&str, &str) {
    if let Some((path, rest)) = message.split_once(": ") {
        let plain = |c: char| !c.is_whitespace() && !matches!(c, '`' | '"' | '\'');
        if !path.is_empty() && path.chars().all(plain) {
            return (path, rest);
        }
    }
    ("", message)
}

/// The strings stored under `platform.password`, read leniently so they are
/// found even when the file is otherwise wrong.
fn password_candidates(text: &str) -> Vec<String> {
    fn collect(value: &serde_yaml::Value, out: &mut Vec<String>) {
        match value {
            serde_yaml::Value::String(s) => out.push(s.clone()),
            serde_yaml::Value::Number(n) => out.push(n.to_string()),
            serde_yaml::Value::Sequence(items) => items.iter().for_each(|v| collect(v, out)),
            serde_yaml::Value::Mapping(map) => map.iter().for_each(|(k, v)| {
                collect(k, out);
                collect(v, out);
            }),
            serde_yaml::Value::Tagged(tagged) => collect(&tagged.value, out),
            serde_yaml::Value::Null | serde_yaml::Value::Bool(_) => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(text) {
        if let Some(password) = doc.get("platform").and_then(|p| p.get("password")) {
            collect(password, &mut out);
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// Replaces each secret in `text` with `***`.
///
/// serde quotes the values it echoes (`"..."` escaped, or in backticks), so
/// those forms are always replaced. A bare occurrence is replaced too unless
/// the secret is so short that this would mangle ordinary words.
pub(crate) fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(&format!("{secret:?}"), "\"***\"");
        out = out.replace(&format!("`{secret}`"), "`***`");
        if secret.chars().count() >= 4 {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

/// What [`locate`] looks for at the end of the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The value at the path (for a mapping or sequence: where it starts).
    Value,
    /// The `occurrence`-th (1-based) key named by the last step of the path.
    Key { occurrence: usize },
}

/// The 1-based line and column of `path` in `text`, if it is there.
pub(crate) fn locate(text: &str, path: &[Seg], target: Target) -> Option<(usize, usize)> {
    if matches!(target, Target::Key { .. }) && !matches!(path.last(), Some(Seg::Key(_))) {
        return None;
    }
    let probe = Probe { path, target };
    match probe.deserialize(serde_yaml::Deserializer::from_str(text)) {
        Err(err) if err.to_string().contains(HERE) => err.location().map(|at| (at.line(), at.column())),
        _ => None,
    }
}

/// [`locate`] for the value at `path`, or else for the nearest enclosing
/// entry that exists, so a problem with a missing key still gets the line
/// of the entry it belongs to.
pub(crate) fn locate_nearest(text: &str, path: &[Seg]) -> Option<(usize, usize)> {
    (1..=path.len())
        .rev()
        .find_map(|len| locate(text, &path[..len], Target::Value))
}

// Text of the deliberate failure; it cannot come from a user's file.
const HERE: &str = "\u{1}connector-config-probe\u{1}";

struct Probe<'p> {
    path: &'p [Seg],
    target: Target,
}

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.path.split_first() {
            None => deserializer.deserialize_any(Stop),
            Some((Seg::Key(name), rest)) => deserializer.deserialize_map(InMapping {
                name,
                rest,
                target: self.target,
            }),
            Some((Seg::Index(index), rest)) => deserializer.deserialize_seq(InSequence {
                index: *index,
                rest,
                target: self.target,
            }),
        }
    }
}

/// Fails on whatever it is given: serde_yaml tags the failure with the
/// position of that value.
struct Stop;

impl Visitor<'_> for Stop {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(HERE)
    }
}

struct InMapping<'p> {
    name: &'p str,
    rest: &'p [Seg],
    target: Target,
}

impl<'de> Visitor<'de> for InMapping<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = 0;
        let stop_at = match self.target {
            Target::Key { occurrence } if self.rest.is_empty() => Some(occurrence),
            _ => None,
        };
        loop {
            let is_wanted = KeyIs {
                name: self.name,
                // Matching keys before the wanted one are let through.
                stop_here: stop_at.is_some_and(|n| seen + 1 == n),
            };
            match map.next_key_seed(is_wanted)? {
                None => return Ok(()),
                Some(true) if stop_at.is_none() => {
                    return map.next_value_seed(Probe {
                        path: self.rest,
                        target: self.target,
                    });
                }
                Some(true) => {
                    seen += 1;
                    map.next_value::<IgnoredAny>()?;
                }
                Some(false) => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
    }
}

/// Reads a key and says whether it is `name`; fails on it when `stop_here`.
struct KeyIs<'p> {
    name: &'p str,
    stop_here: bool,
}

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        match key == self.name {
            true if self.stop_here => Err(E::custom(HERE)),
            matched => Ok(matched),
        }
    }
}

struct InSequence<'p> {
    index: usize,
    rest: &'p [Seg],
    target: Target,
}

impl<'de> Visitor<'de> for InSequence<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for _ in 0..self.index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Probe {
            path: self.rest,
            target: self.target,
        })?;
        Ok(())
    }
}

/// `deserialize_with` for a device's `settings`: any YAML mapping, turned
/// into a JSON object here so that nothing outside this module (plugins
/// included) sees a YAML type. A missing or empty (`settings:`) value is an
/// empty object; anything but a mapping is an error at the value's position.
pub(crate) fn settings<'de, D: Deserializer<'de>>(deserializer: D) -> Result<serde_json::Value, D::Error> {
    struct SettingsVisitor;

    impl<'de> Visitor<'de> for SettingsVisitor {
        type Value = serde_json::Value;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping of plugin settings")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(serde_json::Value::Object(serde_json::Map::new()))
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            self.visit_unit()
        }

        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut object = serde_json::Map::new();
            // YAML allows keys of any type; JSON only strings. serde_yaml
            // hands a scalar key (`3:`, `true:`) over as its text.
            while let Some((key, value)) = map.next_entry::<String, serde_json::Value>()? {
                object.insert(key, value);
            }
            Ok(serde_json::Value::Object(object))
        }
    }

    deserializer.deserialize_any(SettingsVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
platform:
  backoff:
    initial_ms: 5
  user: bob
devices:
  - id: a
    type: t
  - {id: b, plugin: p}
  -
    id: c
    id: d
";

    fn path(text: &str) -> Vec<Seg> {
        parse_path(text)
    }

    #[test]
    fn a_path_reads_back_as_it_was_written() {
        for text in [
            "platform",
            "platform.backoff.max_ms",
            "devices[12].settings.x",
            "devices",
        ] {
            assert_eq!(path_to_string(&path(text)), text);
        }
        assert_eq!(
            path("devices[2].id"),
            vec![Seg::key("devices"), Seg::Index(2), Seg::key("id")]
        );
    }

    #[test]
    fn locate_finds_values_and_entries_by_path() {
        assert_eq!(
            locate(TEXT, &path("platform.backoff.initial_ms"), Target::Value),
            Some((3, 17))
        );
        assert_eq!(locate(TEXT, &path("platform.user"), Target::Value), Some((4, 9)));
        assert_eq!(locate(TEXT, &path("devices[0]"), Target::Value), Some((6, 5)));
        assert_eq!(locate(TEXT, &path("devices[1]"), Target::Value), Some((8, 5)));
        assert_eq!(locate(TEXT, &path("devices[1].plugin"), Target::Value), Some((8, 21)));
        assert_eq!(locate(TEXT, &path("devices[2]"), Target::Value), Some((10, 5)));
    }

    #[test]
    fn locate_finds_keys_and_their_repeats() {
        let first = Target::Key { occurrence: 1 };
        let second = Target::Key { occurrence: 2 };
        assert_eq!(locate(TEXT, &path("platform.user"), first), Some((4, 3)));
        assert_eq!(locate(TEXT, &path("devices[2].id"), first), Some((10, 5)));
        assert_eq!(locate(TEXT, &path("devices[2].id"), second), Some((11, 5)));
    }

    #[test]
    fn locate_says_none_for_what_is_not_there() {
        assert_eq!(locate(TEXT, &path("platform.password"), Target::Value), None);
        assert_eq!(locate(TEXT, &path("devices[7]"), Target::Value), None);
        assert_eq!(locate(TEXT, &path("platform.user.x"), Target::Value), None);
        assert_eq!(locate("[1, 2", &path("a"), Target::Value), None);
        assert_eq!(locate_nearest(TEXT, &path("devices[0].plugin")), Some((6, 5)));
    }

    #[test]
    fn a_path_prefix_is_split_from_the_message_but_not_a_sentence() {
        assert_eq!(
            split_path("platform.backoff: unknown field"),
            ("platform.backoff", "unknown field")
        );
        assert_eq!(
            split_path("invalid type: map, expected x"),
            ("", "invalid type: map, expected x")
        );
        assert_eq!(
            split_path("did not find expected key"),
            ("", "did not find expected key")
        );
    }

    #[test]
    fn redact_hides_quoted_and_bare_secrets() {
        let secrets = vec!["hun\tter2".to_owned(), "pw".to_owned()];
        let text = "string \"hun\\tter2\", `pw`, hun\tter2, pwd";
        assert_eq!(redact(text, &secrets), "string \"***\", `***`, ***, pwd");
    }
}
