//! Text with `{name}` placeholders: checked once when a device is created,
//! then rendered for every event or command without parsing again. Each
//! plugin names its own placeholders (the generator's `{n}`, the http
//! plugin's `{body}`, ...).
//!
//! A placeholder is a known name in braces. Any other brace is plain text,
//! so JSON needs no escaping (`{"n": {n}}` renders as `{"n": 1}`), but a
//! brace around a single word that is not a known name, such as `{count}`,
//! is refused as a likely typo.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// The placeholders one kind of template knows.
pub trait Placeholders: Copy + fmt::Debug + PartialEq + 'static {
    /// Every name, as written between the braces, for error messages.
    const NAMES: &'static [&'static str];

    fn named(name: &str) -> Option<Self>;
}

/// A checked template, ready to render. In settings it is written as a
/// string and checked while the settings are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template<P> {
    parts: Vec<Part<P>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part<P> {
    Text(String),
    Value(P),
}

/// A template that names a placeholder that does not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError {
    pub placeholder: String,
    pub known: &'static [&'static str],
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known: Vec<String> = self.known.iter().map(|p| format!("{{{p}}}")).collect();
        write!(
            f,
            "unknown placeholder `{{{}}}` (known: {})",
            self.placeholder,
            known.join(", ")
        )
    }
}

impl std::error::Error for TemplateError {}

impl<P: Placeholders> Template<P> {
    pub fn parse(text: &str) -> Result<Template<P>, TemplateError> {
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
            let Some(value) = P::named(name) else {
                return Err(TemplateError {
                    placeholder: name.to_owned(),
                    known: P::NAMES,
                });
            };
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(Part::Value(value));
            rest = &after[name.len() + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    /// The text, each placeholder replaced by what `value` gives for it.
    pub fn render<'a>(&self, value: impl Fn(P) -> Cow<'a, str>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Value(placeholder) => out.push_str(&value(*placeholder)),
            }
        }
        out
    }
}

/// A placeholder candidate: letters, digits and `_`, not empty.
fn is_word(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl<P: Placeholders> TryFrom<String> for Template<P> {
    type Error = TemplateError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Template::parse(&text)
    }
}

impl<'de, P: Placeholders> serde::Deserialize<'de> for Template<P> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<P>(PhantomData<P>);

        impl<P: Placeholders> serde::de::Visitor<'_> for TextVisitor<P> {
            type Value = Template<P>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a text with {placeholders}")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Template<P>, E> {
                Template::parse(text).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(TextVisitor(PhantomData))
    }
}

/// The placeholders of a template filled from a platform command (the
/// `http` plugin's requests, the `mqtt` plugin's publications).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandField {
    /// `{body}`: the command's body.
    Body,
    /// `{header}`: its payload header.
    Header,
    /// `{endpoint}`: the endpoint it was sent to.
    Endpoint,
    /// `{device}`: the device id.
    Device,
    /// `{task}`: its task id, which the reply carries back.
    Task,
}

impl Placeholders for CommandField {
    const NAMES: &'static [&'static str] = &["body", "header", "endpoint", "device", "task"];

    fn named(name: &str) -> Option<Self> {
        Some(match name {
            "body" => CommandField::Body,
            "header" => CommandField::Header,
            "endpoint" => CommandField::Endpoint,
            "device" => CommandField::Device,
            "task" => CommandField::Task,
            _ => return None,
        })
    }
}

impl CommandField {
    /// The command's value for this placeholder.
    pub fn of<'a>(self, command: &'a connector_core::Message, device: &'a str) -> &'a str {
        match self {
            CommandField::Body => &command.payload,
            CommandField::Header => &command.payload_header,
            CommandField::Endpoint => &command.endpoint,
            CommandField::Device => device,
            CommandField::Task => &command.task_id,
        }
    }
}
