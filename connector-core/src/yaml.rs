//! The only module that reads YAML, so swapping the YAML library touches
//! one file. Config text is parsed once (saphyr-parser) into a tree whose
//! nodes keep their line and column, and the config model is deserialised
//! straight from that tree, one entry at a time, so that every problem of a
//! file is found in one run and each is reported where it stands. A text
//! field gets a scalar's own text (`id: 1001`, `password: 123456`); only
//! where any type will do are plain scalars read as null, booleans and
//! numbers (YAML 1.2 core schema).

use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span};
use serde::de::{self, DeserializeOwned, Deserializer, IntoDeserializer, Visitor};

use crate::problem::Seg;

/// Most nodes that aliases may expand to: a file of aliases of aliases (a
/// "billion laughs") is refused instead of filling the memory.
const MAX_ALIAS_NODES: usize = 1_000_000;

/// 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    fn of(span: Span) -> Pos {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Pos {
            line: clamp(span.start.line()),
            // saphyr counts columns from 0; editors from 1.
            column: clamp(span.start.col().saturating_add(1)),
        }
    }
}

/// A value of the file and where it starts.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub at: Pos,
    pub kind: Kind,
}

#[derive(Clone, Debug)]
pub(crate) enum Kind {
    /// A scalar's text; `plain` when written without quotes, the only way to
    /// write null, a boolean or a number.
    Scalar {
        text: Box<str>,
        plain: bool,
    },
    Seq(Vec<Item>),
    Map(Vec<Entry>),
}

/// An element of a sequence, with its index in the file: it keeps that
/// index when an element before it is left out.
#[derive(Clone, Debug)]
pub(crate) struct Item {
    pub index: usize,
    pub node: Node,
}

/// A mapping entry. Keys are text: every key the config knows is.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub key: Box<str>,
    pub key_at: Pos,
    pub value: Node,
}

/// Something wrong in the file: where, under which key, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Finding {
    pub at: Option<Pos>,
    pub path: Vec<Seg>,
    pub message: String,
}

/// Parses `text` (one YAML document; none reads as an empty value) into a
/// tree. A syntax error ends the reading: nothing after it can be trusted.
pub(crate) fn parse(text: &str) -> Result<Node, Finding> {
    let mut parser = Parser::new_from_str(text);
    let mut tree = Builder::default();
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(syntax_error)?;
        let at = Pos::of(span);
        match event {
            Event::DocumentStart(_) => {
                if tree.documents == 1 {
                    return Err(fatal(at, "a second YAML document (`---`): the file must hold one"));
                }
                tree.documents += 1;
            }
            Event::Scalar(text, style, anchor, tag) => {
                let is_str_tag = tag.is_some_and(|t| t.is_yaml_core_schema() && t.suffix == "str");
                let plain = style == ScalarStyle::Plain && !is_str_tag;
                let kind = Kind::Scalar {
                    text: text.as_ref().into(),
                    plain,
                };
                tree.finish(Node { at, kind }, anchor)?;
            }
            Event::Alias(anchor) => {
                let Some(mut node) = tree
                    .anchors
                    .iter()
                    .find(|(id, _)| *id == anchor)
                    .map(|(_, n)| n.clone())
                else {
                    return Err(fatal(at, "an alias (`*name`) with no anchor (`&name`) before it"));
                };
                tree.alias_nodes += node.count();
                if tree.alias_nodes > MAX_ALIAS_NODES {
                    return Err(fatal(at, "aliases expand to too many values (more than 1,000,000)"));
                }
                // A problem in the copy is best shown where the alias stands.
                node.at = at;
                tree.finish(node, 0)?;
            }
            Event::SequenceStart(anchor, _) => tree.open.push((at, anchor, Open::Seq(Vec::new()))),
            Event::MappingStart(anchor, _) => tree.open.push((at, anchor, Open::Map(Vec::new(), None))),
            Event::SequenceEnd | Event::MappingEnd => {
                let Some((at, anchor, open)) = tree.open.pop() else {
                    return Err(fatal(at, "an end of a list or mapping that was never opened"));
                };
                let kind = match open {
                    Open::Seq(items) => Kind::Seq(items),
                    Open::Map(entries, _) => Kind::Map(entries),
                };
                tree.finish(Node { at, kind }, anchor)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
    Ok(tree.root.unwrap_or(Node {
        at: Pos { line: 1, column: 1 },
        kind: Kind::Scalar {
            text: "".into(),
            plain: true,
        },
    }))
}

fn syntax_error(err: ScanError) -> Finding {
    let marker = err.marker();
    Finding {
        at: Some(Pos::of(Span::empty(*marker))),
        path: Vec::new(),
        message: format!("not valid YAML: {}", err.info()),
    }
}

fn fatal(at: Pos, message: &str) -> Finding {
    Finding {
        at: Some(at),
        path: Vec::new(),
        message: message.to_owned(),
    }
}

enum Open {
    Seq(Vec<Item>),
    /// The entries so far, and a key waiting for its value.
    Map(Vec<Entry>, Option<(Box<str>, Pos)>),
}

#[derive(Default)]
struct Builder {
    open: Vec<(Pos, usize, Open)>,
    root: Option<Node>,
    /// Anchored nodes by anchor id; a file has few, so a list will do.
    anchors: Vec<(usize, Node)>,
    alias_nodes: usize,
    documents: usize,
}

impl Builder {
    /// Puts a complete node where it belongs: in the open list or mapping,
    /// or as the root.
    fn finish(&mut self, node: Node, anchor: usize) -> Result<(), Finding> {
        if anchor != 0 {
            self.anchors.push((anchor, node.clone()));
        }
        match self.open.last_mut() {
            None => self.root = Some(node),
            Some((_, _, Open::Seq(items))) => items.push(Item {
                index: items.len(),
                node,
            }),
            Some((_, _, Open::Map(entries, pending))) => match pending.take() {
                Some((key, key_at)) => entries.push(Entry {
                    key,
                    key_at,
                    value: node,
                }),
                None => match node.kind {
                    Kind::Scalar { text, .. } => *pending = Some((text, node.at)),
                    _ => return Err(fatal(node.at, "a key must be plain text, not a list or a mapping")),
                },
            },
        }
        Ok(())
    }
}

impl Node {
    fn count(&self) -> usize {
        1 + match &self.kind {
            Kind::Scalar { .. } => 0,
            Kind::Seq(items) => items.iter().map(|item| item.node.count()).sum(),
            Kind::Map(entries) => entries.iter().map(|entry| entry.value.count()).sum(),
        }
    }

    /// The node at `path` (indexes as in the file), if it is there.
    pub(crate) fn get(&self, path: &[Seg]) -> Option<&Node> {
        let Some((step, rest)) = path.split_first() else {
            return Some(self);
        };
        let child = match (step, &self.kind) {
            (Seg::Key(name), Kind::Map(entries)) => entries.iter().find(|e| *e.key == **name).map(|e| &e.value),
            (Seg::Index(index), Kind::Seq(items)) => items.get(*index).map(|item| &item.node),
            _ => None,
        }?;
        child.get(rest)
    }

    /// Where the value at `path` starts, or else the nearest enclosing value
    /// that is there, so a problem with a missing key still gets the line of
    /// the entry it belongs to.
    pub(crate) fn nearest(&self, path: &[Seg]) -> Pos {
        let mut node = self;
        for step in path {
            match (step, &node.kind) {
                (Seg::Key(name), Kind::Map(entries)) => match entries.iter().find(|e| *e.key == **name) {
                    Some(entry) => node = &entry.value,
                    None => break,
                },
                (Seg::Index(index), Kind::Seq(items)) => match items.get(*index) {
                    Some(item) => node = &item.node,
                    None => break,
                },
                _ => break,
            }
        }
        node.at
    }

    /// Takes the entry `name` out of a mapping.
    pub(crate) fn take(&mut self, name: &str) -> Option<Entry> {
        let Kind::Map(entries) = &mut self.kind else {
            return None;
        };
        let at = entries.iter().position(|e| *e.key == *name)?;
        Some(entries.remove(at))
    }

    /// Puts an entry taken with [`Node::take`] back, at the end: lookups go
    /// by key.
    pub(crate) fn put(&mut self, entry: Entry) {
        if let Kind::Map(entries) = &mut self.kind {
            entries.push(entry);
        }
    }

    /// Every scalar's text in this value, keys included, for redaction.
    pub(crate) fn texts(&self, out: &mut Vec<String>) {
        match &self.kind {
            Kind::Scalar { text, .. } => out.push(text.to_string()),
            Kind::Seq(items) => items.iter().for_each(|item| item.node.texts(out)),
            Kind::Map(entries) => entries.iter().for_each(|e| {
                out.push(e.key.to_string());
                e.value.texts(out);
            }),
        }
    }
}

/// Drops each repeated key of every mapping under `node`, keeping the first,
/// and reports it: serde would otherwise take the last one silently.
pub(crate) fn drop_repeated_keys(node: &mut Node, path: &mut Vec<Seg>, findings: &mut Vec<Finding>) {
    match &mut node.kind {
        Kind::Scalar { .. } => {}
        Kind::Seq(items) => {
            for item in items {
                path.push(Seg::Index(item.index));
                drop_repeated_keys(&mut item.node, path, findings);
                path.pop();
            }
        }
        Kind::Map(entries) => {
            let mut at = 1;
            while at < entries.len() {
                let first = entries[..at]
                    .iter()
                    .find(|e| e.key == entries[at].key)
                    .map(|e| e.key_at.line);
                match first {
                    Some(first_line) => {
                        let repeat = entries.remove(at);
                        findings.push(Finding {
                            at: Some(repeat.key_at),
                            path: path.clone(),
                            message: format!("duplicate field `{}` (first at line {first_line})", repeat.key),
                        });
                    }
                    None => at += 1,
                }
            }
            for entry in entries {
                path.push(Seg::Key(entry.key.to_string()));
                drop_repeated_keys(&mut entry.value, path, findings);
                path.pop();
            }
        }
    }
}

/// Deserialises a `T` from `node` (which stands at `path`), reading on past
/// problems the way a user fixing a file wants: each entry serde refuses is
/// reported where it stands and left out, and the rest is read again until
/// it reads. `None` when `node` as a whole is refused.
pub(crate) fn read<T: DeserializeOwned>(node: &Node, path: &[Seg], findings: &mut Vec<Finding>) -> Option<T> {
    let mut pruned: Option<Node> = None;
    loop {
        let current = pruned.as_ref().unwrap_or(node);
        let err = match serde_path_to_error::deserialize::<_, T>(current) {
            Ok(value) => return Some(value),
            Err(err) => err,
        };
        let steps: Vec<Seg> = err
            .path()
            .iter()
            .map_while(|segment| match segment {
                serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                _ => None,
            })
            .collect();
        let mut steps = steps;
        let message = err.into_inner().to_string();
        // For an unknown key the path ends with the key itself; the key is
        // what is wrong, so it is blamed in its mapping, where it stands.
        if let Some(name) = unknown_field(&message) {
            if steps.last() == Some(&Seg::key(name)) {
                steps.pop();
            }
        }
        let tree = pruned.get_or_insert_with(|| node.clone());
        let mut at = path.to_vec();
        let (finding, left_out) = refuse(tree, &steps, message, &mut at);
        findings.push(finding);
        if !left_out {
            return None;
        }
    }
}

/// Finds what `message` blames at `steps` below `node` and leaves it out.
/// Says `false` when the blame falls on `node` itself, which only its
/// parent can leave out. Each call leaves something out or reports the
/// node refused, so [`read`] ends.
fn refuse(node: &mut Node, steps: &[Seg], message: String, path: &mut Vec<Seg>) -> (Finding, bool) {
    let Some((step, rest)) = steps.split_first() else {
        // serde names an unknown key in the message, with the mapping's path.
        if let Some(name) = unknown_field(&message) {
            if let Some(entry) = node.take(name) {
                let finding = Finding {
                    at: Some(entry.key_at),
                    path: path.clone(),
                    message,
                };
                return (finding, true);
            }
        }
        let finding = Finding {
            at: Some(node.at),
            path: path.clone(),
            message,
        };
        return (finding, false);
    };
    // `steps` index the values serde saw, which are those still in the tree.
    let child = match (step, &mut node.kind) {
        (Seg::Key(name), Kind::Map(entries)) => entries
            .iter()
            .position(|e| *e.key == **name)
            .map(|at| (at, Seg::Key(name.clone()))),
        (Seg::Index(index), Kind::Seq(items)) => items.get(*index).map(|item| (*index, Seg::Index(item.index))),
        _ => None,
    };
    let Some((at, seg)) = child else {
        let finding = Finding {
            at: Some(node.at),
            path: path.clone(),
            message,
        };
        return (finding, false);
    };
    path.push(seg);
    let result = match &mut node.kind {
        Kind::Map(entries) => refuse(&mut entries[at].value, rest, message, path),
        Kind::Seq(items) => refuse(&mut items[at].node, rest, message, path),
        Kind::Scalar { .. } => unreachable!("only lists and mappings have children"),
    };
    path.pop();
    let (finding, left_out) = result;
    if !left_out {
        match &mut node.kind {
            Kind::Map(entries) => drop(entries.remove(at)),
            Kind::Seq(items) => drop(items.remove(at)),
            Kind::Scalar { .. } => {}
        }
    }
    (finding, true)
}

/// The key serde's "unknown field" message names.
fn unknown_field(message: &str) -> Option<&str> {
    message.strip_prefix("unknown field `")?.split('`').next()
}

/// A plain scalar's value by the YAML 1.2 core schema.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Plain {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Text,
}

/// What a plain scalar is by the YAML 1.2 core schema: null, booleans,
/// integers (decimal, `0x`, `0o`), floats (`.inf`, `.nan` included), and
/// otherwise text.
fn resolve(text: &str) -> Plain {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Plain::Null,
        "true" | "True" | "TRUE" => return Plain::Bool(true),
        "false" | "False" | "FALSE" => return Plain::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Plain::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Plain::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Plain::Float(f64::NAN),
        _ => {}
    }
    if let Some(value) = integer(text) {
        return value;
    }
    if is_float(text) {
        if let Ok(value) = text.parse::<f64>() {
            return Plain::Float(value);
        }
    }
    Plain::Text
}

fn integer(text: &str) -> Option<Plain> {
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(hex) = text.strip_prefix("0x") {
        (16, hex)
    } else if let Some(octal) = text.strip_prefix("0o") {
        (8, octal)
    } else {
        (10, unsigned)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    if !negative {
        return Some(Plain::Unsigned(magnitude));
    }
    Some(Plain::Signed(0i64.checked_sub_unsigned(magnitude)?))
}

/// `[-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`
fn is_float(text: &str) -> bool {
    let text = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", fraction)) => !fraction.is_empty() && digits(fraction),
        Some((whole, fraction)) => digits(whole) && digits(fraction),
        None => !mantissa.is_empty() && digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok && !mantissa.is_empty()
}

/// Why a value does not fit; the position is added by [`read`] from the
/// path serde reports.
#[derive(Debug)]
pub(crate) struct DeError(String);

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        DeError(message.to_string())
    }
}

impl<'de> Deserializer<'de> for &'de Node {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.kind {
            Kind::Scalar { text, plain: true } => match resolve(text) {
                Plain::Null => visitor.visit_unit(),
                Plain::Bool(value) => visitor.visit_bool(value),
                Plain::Unsigned(value) => visitor.visit_u64(value),
                Plain::Signed(value) => visitor.visit_i64(value),
                Plain::Float(value) => visitor.visit_f64(value),
                Plain::Text => visitor.visit_borrowed_str(text),
            },
            Kind::Scalar { text, plain: false } => visitor.visit_borrowed_str(text),
            Kind::Seq(items) => visitor.visit_seq(Items(items.iter())),
            Kind::Map(entries) => visitor.visit_map(Entries {
                entries: entries.iter(),
                value: None,
            }),
        }
    }

    /// Text wanted: any scalar but null is its own text.
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.kind {
            Kind::Scalar { text, plain } if !*plain || resolve(text) != Plain::Null => visitor.visit_borrowed_str(text),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.kind {
            Kind::Scalar { text, plain: true } if resolve(text) == Plain::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.kind {
            Kind::Scalar { text, .. } => visitor.visit_enum(text.as_ref().into_deserializer()),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    /// Only a mapping (or nothing) is a struct: serde would read a list as
    /// its fields in order, which no config means.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.kind {
            Kind::Map(_) => self.deserialize_any(visitor),
            Kind::Seq(_) => Err(de::Error::invalid_type(de::Unexpected::Seq, &visitor)),
            // An empty section (`platform:`, an empty file) is all defaults.
            Kind::Scalar { text, plain: true } if resolve(text) == Plain::Null => visitor.visit_map(Entries {
                entries: [].iter(),
                value: None,
            }),
            Kind::Scalar { .. } => self.deserialize_any(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit unit_struct
        seq tuple tuple_struct map
    }
}

struct Items<'a>(std::slice::Iter<'a, Item>);

impl<'de> de::SeqAccess<'de> for Items<'de> {
    type Error = DeError;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        self.0.next().map(|item| seed.deserialize(&item.node)).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Entries<'a> {
    entries: std::slice::Iter<'a, Entry>,
    value: Option<&'a Node>,
}

impl<'de> de::MapAccess<'de> for Entries<'de> {
    type Error = DeError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(&entry.value);
        let key: &'de str = &entry.key;
        seed.deserialize(de::value::BorrowedStrDeserializer::new(key)).map(Some)
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let value = self.value.take().expect("a value follows its key");
        seed.deserialize(value)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
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

/// `deserialize_with` for a device's `settings`: any YAML mapping, turned
/// into a JSON object here so that nothing outside this module (plugins
/// included) sees a YAML type. A missing or empty (`settings:`) value is an
/// empty object; anything but a mapping is refused.
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
            // Keys are text by the time they get here (see `Entry`).
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
    use crate::problem::parse_path;
    use serde::Deserialize;
    use serde_json::{json, Value};

    fn json_of(node: &Node) -> Value {
        Value::deserialize(node).unwrap()
    }

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

    fn at(text: &str, path: &str) -> Option<(u32, u32)> {
        let tree = parse(text).unwrap();
        tree.get(&parse_path(path)).map(|node| (node.at.line, node.at.column))
    }

    #[test]
    fn every_value_keeps_its_line_and_column() {
        assert_eq!(at(TEXT, "platform.backoff.initial_ms"), Some((3, 17)));
        assert_eq!(at(TEXT, "platform.user"), Some((4, 9)));
        assert_eq!(at(TEXT, "devices[0]"), Some((6, 5)));
        assert_eq!(at(TEXT, "devices[1]"), Some((8, 5)));
        assert_eq!(at(TEXT, "devices[1].plugin"), Some((8, 21)));
        assert_eq!(at(TEXT, "devices[2].id"), Some((10, 9)));
        assert_eq!(at(TEXT, "platform.password"), None);
        assert_eq!(at(TEXT, "devices[7]"), None);
        assert_eq!(at(TEXT, "platform.user.x"), None);
        let tree = parse(TEXT).unwrap();
        let nearest = tree.nearest(&parse_path("devices[0].plugin"));
        assert_eq!((nearest.line, nearest.column), (6, 5));
    }

    #[test]
    fn a_repeated_key_is_reported_at_the_repeat_and_the_first_one_kept() {
        let mut tree = parse(TEXT).unwrap();
        let mut findings = Vec::new();
        drop_repeated_keys(&mut tree, &mut Vec::new(), &mut findings);
        assert_eq!(
            findings,
            [Finding {
                at: Some(Pos { line: 11, column: 5 }),
                path: parse_path("devices[2]"),
                message: "duplicate field `id` (first at line 10)".into(),
            }]
        );
        assert_eq!(json_of(tree.get(&parse_path("devices[2].id")).unwrap()), json!("c"));
    }

    #[test]
    fn plain_scalars_resolve_by_the_core_schema_and_quoted_ones_stay_text() {
        let table: &[(&str, Plain)] = &[
            ("~", Plain::Null),
            ("", Plain::Null),
            ("True", Plain::Bool(true)),
            ("FALSE", Plain::Bool(false)),
            ("42", Plain::Unsigned(42)),
            ("+42", Plain::Unsigned(42)),
            ("-42", Plain::Signed(-42)),
            ("0x1F", Plain::Unsigned(31)),
            ("0o17", Plain::Unsigned(15)),
            ("1.5", Plain::Float(1.5)),
            ("-.5e3", Plain::Float(-500.0)),
            ("6.", Plain::Float(6.0)),
            (".inf", Plain::Float(f64::INFINITY)),
            ("1_000", Plain::Text),
            ("yes", Plain::Text),
            ("0x", Plain::Text),
            ("-0x5", Plain::Text),
            ("1e", Plain::Text),
            (".", Plain::Text),
            ("12:30", Plain::Text),
        ];
        for (text, want) in table {
            assert_eq!(&resolve(text), want, "{text:?}");
        }
        let tree = parse("a: '5'\nb: !!str 5\nc: 5\nd: ~\ne: [true, 1.5]\n").unwrap();
        assert_eq!(
            json_of(&tree),
            json!({"a": "5", "b": "5", "c": 5, "d": null, "e": [true, 1.5]})
        );
    }

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(default)]
    struct Texts {
        id: String,
        password: String,
        name: Option<String>,
    }

    #[test]
    fn a_text_field_takes_a_number_or_a_boolean_as_written() {
        let tree = parse("id: 1001\npassword: 0x1F\nname: true\n").unwrap();
        let texts: Texts = read(&tree, &[], &mut Vec::new()).unwrap();
        assert_eq!(
            texts,
            Texts {
                id: "1001".into(),
                password: "0x1F".into(),
                name: Some("true".into()),
            }
        );
        let tree = parse("id: ~\nname: null\n").unwrap();
        let mut findings = Vec::new();
        let texts: Texts = read(&tree, &[], &mut findings).unwrap();
        assert_eq!(texts.name, None);
        assert_eq!(findings.len(), 1, "a null is no text: {findings:?}");
    }

    #[test]
    fn aliases_copy_their_anchor_and_stand_where_they_are_written() {
        let tree = parse("a: &x {k: 1}\nb: *x\n").unwrap();
        assert_eq!(json_of(tree.get(&parse_path("b.k")).unwrap()), json!(1));
        assert_eq!(tree.get(&parse_path("b")).unwrap().at.line, 2);
        let laughs = "a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n\
                      c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n\
                      e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n";
        let err = parse(laughs).unwrap_err();
        assert!(err.message.contains("too many values"), "{err:?}");
        let err = parse("a: *nothing\n").unwrap_err();
        assert_eq!(err.at.map(|at| at.line), Some(1), "{err:?}");
    }

    #[test]
    fn syntax_errors_and_second_documents_end_the_reading_with_a_position() {
        let err = parse("a: [1, 2\n").unwrap_err();
        assert!(err.message.starts_with("not valid YAML: "), "{err:?}");
        assert!(err.at.is_some());
        let err = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(err.at.map(|at| at.line), Some(2));
        assert_eq!(json_of(&parse("").unwrap()), Value::Null);
        assert_eq!(json_of(&parse("# only a comment\n").unwrap()), Value::Null);
    }

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        n: u32,
        s: String,
    }

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Outer {
        inner: Inner,
        list: Vec<u8>,
        flag: bool,
    }

    #[test]
    fn read_reports_every_refused_entry_and_keeps_the_rest() {
        let text = "inner: {n: -1, s: ok, x: 1}\nlist: [1, 300, 2]\nflag: 7\ncolour: red\n";
        let tree = parse(text).unwrap();
        let mut findings = Vec::new();
        let outer: Outer = read(&tree, &[], &mut findings).unwrap();
        assert_eq!(
            outer,
            Outer {
                inner: Inner { n: 0, s: "ok".into() },
                list: vec![1, 2],
                flag: false,
            }
        );
        let shown: Vec<String> = findings
            .iter()
            .map(|f| {
                let at = f.at.unwrap();
                format!("{}:{} {}", at.line, at.column, crate::problem::path_to_string(&f.path))
            })
            .collect();
        assert_eq!(findings.len(), 5, "{findings:#?}");
        for want in ["1:12 inner.n", "1:23 inner", "2:11 list[1]", "3:7 flag", "4:1 "] {
            assert!(
                shown.iter().any(|s| s.trim_end() == want.trim_end()),
                "{want} not in {shown:?}"
            );
        }
    }

    #[test]
    fn read_gives_none_when_the_value_as_a_whole_does_not_fit() {
        let tree = parse("- 1\n").unwrap();
        let mut findings = Vec::new();
        assert_eq!(read::<Outer>(&tree, &[Seg::key("x")], &mut findings), None);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].path, [Seg::key("x")]);
        assert!(findings[0].message.contains("expected struct Outer"), "{findings:?}");
    }

    #[test]
    fn redact_hides_quoted_and_bare_secrets() {
        let secrets = vec!["hun\tter2".to_owned(), "pw".to_owned()];
        let text = "string \"hun\\tter2\", `pw`, hun\tter2, pwd";
        assert_eq!(redact(text, &secrets), "string \"***\", `***`, ***, pwd");
    }
}
