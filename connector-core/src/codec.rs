//! The wire codec of PROTOCOL.md sections 3-5: platform frames in, [`Message`]s
//! out, and messages back into `response:` / `change:` / `update` frames.
//!
//! Pure: bytes in, values out, no IO and no clock (the caller passes `now`), so
//! the actors own the sockets and this module is tested with tables alone.

use std::fmt;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::model::Message;
use crate::secret::Credentials;

/// Frames larger than this are refused unless the config says otherwise.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;

/// The bare frame sent after a successful (un)registration.
pub const UPDATE_FRAME: &str = "update";

const RESPONSE_PREFIX: &str = "response:";
const CHANGE_PREFIX: &str = "change:";

/// How many bytes of a bad frame go into its error, enough to recognise it in
/// a log line without flooding the log with a megabyte of garbage.
const EXCERPT_BYTES: usize = 80;

/// What a connector sends: the reply to a command, an event, or `update`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    Response,
    Change,
    Update,
}

impl FrameKind {
    /// The frame a message goes out as: a reply when it carries a task id.
    pub fn of(message: &Message) -> FrameKind {
        if message.is_command() {
            FrameKind::Response
        } else {
            FrameKind::Change
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FrameKind::Response => "response",
            FrameKind::Change => "change",
            FrameKind::Update => "update",
        }
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a frame could not be read. Every variant says what was wrong, and
/// [`FrameError::excerpt`] gives the start of the frame for the log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is over the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize, excerpt: String },
    #[error("binary frame of {len} bytes; the protocol uses text frames only")]
    Binary { len: usize, excerpt: String },
    #[error("frame is not valid UTF-8 at byte {valid_up_to}")]
    NotUtf8 { valid_up_to: usize, excerpt: String },
    #[error("frame is not JSON: {reason}")]
    NotJson { reason: String, excerpt: String },
    #[error("frame is JSON but not an object (found {found})")]
    NotObject { found: &'static str, excerpt: String },
    #[error("key `{key}` should be {expected}, found {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
        excerpt: String,
    },
    #[error("key `time` should hold whole Unix seconds, found {value:?}")]
    BadTime { value: String, excerpt: String },
    #[error("frame has no `response:` or `change:` prefix and is not `update`")]
    UnknownPrefix { excerpt: String },
}

impl FrameError {
    /// The start of the offending frame, escaped for a single log line.
    pub fn excerpt(&self) -> &str {
        match self {
            FrameError::TooLarge { excerpt, .. }
            | FrameError::Binary { excerpt, .. }
            | FrameError::NotUtf8 { excerpt, .. }
            | FrameError::NotJson { excerpt, .. }
            | FrameError::NotObject { excerpt, .. }
            | FrameError::WrongType { excerpt, .. }
            | FrameError::BadTime { excerpt, .. }
            | FrameError::UnknownPrefix { excerpt } => excerpt,
        }
    }

    /// A short stable name of the kind of fault, for counters and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => "too_large",
            FrameError::Binary { .. } => "binary",
            FrameError::NotUtf8 { .. } => "not_utf8",
            FrameError::NotJson { .. } => "not_json",
            FrameError::NotObject { .. } => "not_object",
            FrameError::WrongType { .. } => "wrong_type",
            FrameError::BadTime { .. } => "bad_time",
            FrameError::UnknownPrefix { .. } => "unknown_prefix",
        }
    }

    /// The error for a binary WebSocket frame, which the socket layer detects.
    pub fn binary(frame: &[u8]) -> FrameError {
        FrameError::Binary {
            len: frame.len(),
            excerpt: excerpt(frame),
        }
    }
}

/// The first bytes of a frame as one printable line: control characters and
/// invalid UTF-8 are escaped, and a cut frame ends in `…`.
pub fn excerpt(frame: &[u8]) -> String {
    let cut = frame.len() > EXCERPT_BYTES;
    let head = &frame[..frame.len().min(EXCERPT_BYTES)];
    let mut out = String::with_capacity(head.len() + 3);
    for c in String::from_utf8_lossy(head).chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    if cut {
        out.push('…');
    }
    out
}

/// Reads a command frame from the platform (PROTOCOL.md section 4).
///
/// Unknown keys are ignored, missing keys read as empty and `time` may be a
/// string or a number. Anything that is not one JSON object of that shape,
/// or is longer than `max_len` bytes, is an error naming what was wrong.
pub fn decode_command(frame: &[u8], max_len: usize) -> Result<Message, FrameError> {
    if frame.len() > max_len {
        return Err(FrameError::TooLarge {
            len: frame.len(),
            limit: max_len,
            excerpt: excerpt(frame),
        });
    }
    let text = std::str::from_utf8(frame).map_err(|e| FrameError::NotUtf8 {
        valid_up_to: e.valid_up_to(),
        excerpt: excerpt(frame),
    })?;
    decode_object(text)
}

/// Reads a frame the way the platform does: `response:{..}`, `change:{..}`
/// or `update`. The connector never needs this; tests and tools that stand
/// on the platform's side do.
pub fn decode_outgoing(frame: &str) -> Result<(FrameKind, Option<Message>), FrameError> {
    if frame == UPDATE_FRAME {
        return Ok((FrameKind::Update, None));
    }
    if let Some(json) = frame.strip_prefix(RESPONSE_PREFIX) {
        return decode_object(json).map(|m| (FrameKind::Response, Some(m)));
    }
    if let Some(json) = frame.strip_prefix(CHANGE_PREFIX) {
        return decode_object(json).map(|m| (FrameKind::Change, Some(m)));
    }
    Err(FrameError::UnknownPrefix {
        excerpt: excerpt(frame.as_bytes()),
    })
}

fn decode_object(text: &str) -> Result<Message, FrameError> {
    match decode_well_formed(text) {
        Some(message) => Ok(message),
        None => decode_tree(text),
    }
}

/// The general way: a JSON tree first, then each key checked.
fn decode_tree(text: &str) -> Result<Message, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|e| FrameError::NotJson {
        reason: e.to_string(),
        excerpt: excerpt(text.as_bytes()),
    })?;
    let Value::Object(object) = value else {
        return Err(FrameError::NotObject {
            found: json_kind(&value),
            excerpt: excerpt(text.as_bytes()),
        });
    };
    let fields = Fields { object: &object, text };
    let (payload_header, payload) = fields.protocol_parts()?;
    Ok(Message {
        device_id: fields.string("device_url")?,
        endpoint: fields.string("service_url")?,
        endpoint_name: fields.string("service_name")?,
        timestamp: fields.time()?,
        task_id: fields.string("task_id")?,
        instance_id: fields.string("device_instance_id")?,
        worker_id: fields.string("worker_id")?,
        output_name: fields.string("output_name")?,
        payload_header,
        payload,
    })
}

/// The common case in one typed pass, without building a JSON tree first
/// (that tree was most of the cost of a command): an object whose keys all
/// have the expected types. Anything else is `None` and goes the general
/// way, which gives the same message for what this accepts and names what
/// is wrong with the rest.
fn decode_well_formed(text: &str) -> Option<Message> {
    #[derive(Deserialize)]
    struct Wire {
        #[serde(default)]
        device_url: Option<String>,
        #[serde(default)]
        service_url: Option<String>,
        #[serde(default)]
        service_name: Option<String>,
        #[serde(default)]
        time: Option<Time>,
        #[serde(default)]
        task_id: Option<String>,
        #[serde(default)]
        protocol_parts: Option<Vec<Part>>,
        #[serde(default)]
        device_instance_id: Option<String>,
        #[serde(default)]
        worker_id: Option<String>,
        #[serde(default)]
        output_name: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Time {
        Number(u64),
        Text(String),
    }
    #[derive(Deserialize)]
    struct Part {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        value: Option<String>,
    }
    // serde reads a struct from an array too; the protocol wants an object.
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let wire: Wire = serde_json::from_str(text).ok()?;
    let timestamp = match wire.time {
        None => None,
        Some(Time::Number(n)) => Some(n),
        Some(Time::Text(s)) if s.is_empty() => None,
        Some(Time::Text(s)) => Some(s.trim().parse().ok()?),
    };
    let (mut payload_header, mut payload) = (String::new(), String::new());
    for part in wire.protocol_parts.unwrap_or_default() {
        match part.name.as_deref() {
            Some("header") => payload_header = part.value.unwrap_or_default(),
            Some("body") => payload = part.value.unwrap_or_default(),
            _ => {}
        }
    }
    Some(Message {
        device_id: wire.device_url.unwrap_or_default(),
        endpoint: wire.service_url.unwrap_or_default(),
        endpoint_name: wire.service_name.unwrap_or_default(),
        timestamp,
        task_id: wire.task_id.unwrap_or_default(),
        instance_id: wire.device_instance_id.unwrap_or_default(),
        worker_id: wire.worker_id.unwrap_or_default(),
        output_name: wire.output_name.unwrap_or_default(),
        payload_header,
        payload,
    })
}

/// The keys of one decoded object, with the frame text kept for errors.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    text: &'a str,
}

impl Fields<'_> {
    fn wrong_type(&self, key: &str, expected: &'static str, found: &Value) -> FrameError {
        FrameError::WrongType {
            key: key.to_owned(),
            expected,
            found: json_kind(found),
            excerpt: excerpt(self.text.as_bytes()),
        }
    }

    /// A missing key and `null` both read as empty, as PROTOCOL.md asks.
    fn string(&self, key: &str) -> Result<String, FrameError> {
        match self.object.get(key) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }

    fn time(&self) -> Result<Option<u64>, FrameError> {
        let bad = |value: String| FrameError::BadTime {
            value,
            excerpt: excerpt(self.text.as_bytes()),
        };
        match self.object.get("time") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad(s.clone())),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| bad(n.to_string())),
            Some(other) => Err(self.wrong_type("time", "a string or a number", other)),
        }
    }

    /// Returns `(header, body)`. Parts with other names are ignored so a
    /// platform may add some without breaking older connectors.
    fn protocol_parts(&self) -> Result<(String, String), FrameError> {
        const KEY: &str = "protocol_parts";
        let parts = match self.object.get(KEY) {
            None | Some(Value::Null) => return Ok(Default::default()),
            Some(Value::Array(parts)) => parts,
            Some(other) => return Err(self.wrong_type(KEY, "an array", other)),
        };
        let (mut header, mut body) = (String::new(), String::new());
        for (i, part) in parts.iter().enumerate() {
            let Value::Object(part) = part else {
                return Err(self.wrong_type(&format!("{KEY}[{i}]"), "an object", part));
            };
            let field = |name: &str| match part.get(name) {
                None | Some(Value::Null) => Ok(""),
                Some(Value::String(s)) => Ok(s.as_str()),
                Some(other) => Err(self.wrong_type(&format!("{KEY}[{i}].{name}"), "a string", other)),
            };
            match field("name")? {
                "header" => header = field("value")?.to_owned(),
                "body" => body = field("value")?.to_owned(),
                _ => {}
            }
        }
        Ok((header, body))
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Encodes a message as the frame it goes out as: `response:{..}` when it has
/// a task id, `change:{..}` otherwise. A message without a timestamp is
/// stamped with `now` (Unix seconds).
///
/// Written by hand rather than through serde: this runs once per event on
/// the device's thread and was the largest cost of an event. The string is
/// sized exactly first, so it is one allocation whose capacity equals its
/// length (the buffer then takes it over without another allocation). The
/// bytes are the same as `serde_json`'s (compact, same escapes; a test
/// compares them).
pub fn encode_message(message: &Message, now: u64) -> String {
    let prefix = match FrameKind::of(message) {
        FrameKind::Response => RESPONSE_PREFIX,
        _ => CHANGE_PREFIX,
    };
    let time = message.timestamp.unwrap_or(now);
    let mut digits = [0u8; 20];
    let time = decimal(time, &mut digits);
    let (header, body) = (&message.payload_header, &message.payload);
    let fields: [(&str, &str); 8] = [
        ("device_url", &message.device_id),
        ("service_url", &message.endpoint),
        ("service_name", &message.endpoint_name),
        ("time", time),
        ("task_id", &message.task_id),
        ("device_instance_id", &message.instance_id),
        ("worker_id", &message.worker_id),
        ("output_name", &message.output_name),
    ];
    let parts = [("header", header), ("body", body)];
    // Exact length: prefix, braces, `"key":"value"` per field with commas, the parts.
    let mut len = prefix.len() + 2;
    for (key, value) in fields {
        len += key.len() + escaped_len(value) + 4;
    }
    len += r#""protocol_parts":[],"#.len();
    let mut first_part = true;
    for (name, value) in parts.iter().filter(|(_, v)| !v.is_empty()) {
        len += r#"{"name":"","value":}"#.len() + name.len() + escaped_len(value) + usize::from(!first_part);
        first_part = false;
    }
    len -= 1; // no comma after the last field
    let mut out = String::with_capacity(len);
    out.push_str(prefix);
    out.push('{');
    for (i, (key, value)) in fields.iter().enumerate() {
        // `protocol_parts` stands between `task_id` and `device_instance_id`.
        if *key == "device_instance_id" {
            out.push_str(r#""protocol_parts":["#);
            let mut first = true;
            for (name, value) in parts.iter().filter(|(_, v)| !v.is_empty()) {
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str(r#"{"name":""#);
                out.push_str(name);
                out.push_str(r#"","value":"#);
                push_json_str(&mut out, value);
                out.push('}');
            }
            out.push_str("],");
        }
        out.push('"');
        out.push_str(key);
        out.push_str("\":");
        push_json_str(&mut out, value);
        if i + 1 < fields.len() {
            out.push(',');
        }
    }
    out.push('}');
    debug_assert_eq!(out.len(), len, "the length is computed exactly");
    out
}

/// `n` in decimal, written into the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).expect("ASCII digits")
}

/// How a byte is escaped inside a JSON string, as serde_json does it:
/// 0 = as it is, 2 = a two-byte escape (`\n`), 6 = `\u00XX`.
fn escape_width(b: u8) -> usize {
    match b {
        b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
        0..=0x1f => 6,
        _ => 0,
    }
}

/// Length of `s` as a JSON string, quotes included.
fn escaped_len(s: &str) -> usize {
    let extra: usize = s
        .bytes()
        .map(|b| match escape_width(b) {
            0 => 0,
            w => w - 1,
        })
        .sum();
    s.len() + extra + 2
}

/// Appends `s` as a JSON string, quotes included.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        if escape_width(b) == 0 {
            continue;
        }
        out.push_str(&s[plain..i]);
        plain = i + 1;
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 0xf)] as char);
            }
        }
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

/// The first frame of a session (PROTOCOL.md section 3).
pub fn encode_credentials(credentials: &Credentials) -> String {
    serde_json::json!({"user": credentials.user, "pw": credentials.password.expose()}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_message() -> Message {
        Message {
            device_id: "local device id".into(),
            endpoint: "local endpoint".into(),
            endpoint_name: "endpoint name".into(),
            timestamp: Some(1_500_000_000),
            task_id: "platform task id".into(),
            instance_id: "inst".into(),
            worker_id: "worker".into(),
            output_name: "out".into(),
            payload_header: "'Content-Type': 'application/json'".into(),
            payload: "{'unit': 'kW', 'value': '1.43'}".into(),
        }
    }

    /// The example frame of PROTOCOL.md section 4, written out by hand.
    const GOLDEN_COMMAND: &str = r#"{
      "device_url": "local device id",
      "service_url": "local endpoint",
      "service_name": "endpoint name",
      "time": "1500000000",
      "task_id": "platform task id",
      "protocol_parts": [
        {"name": "header", "value": "'Content-Type': 'application/json'"},
        {"name": "body", "value": "{'unit': 'kW', 'value': '1.43'}"}
      ],
      "device_instance_id": "inst",
      "worker_id": "worker",
      "output_name": "out"
    }"#;

    #[test]
    fn decodes_the_protocol_example_command() {
        let message = decode_command(GOLDEN_COMMAND.as_bytes(), DEFAULT_MAX_FRAME_BYTES).unwrap();
        assert_eq!(message, full_message());
    }

    #[test]
    fn encodes_a_reply_as_a_response_frame_with_keys_in_protocol_order() {
        let golden = concat!(
            r#"response:{"device_url":"local device id","service_url":"local endpoint","#,
            r#""service_name":"endpoint name","time":"1500000000","task_id":"platform task id","#,
            r#""protocol_parts":[{"name":"header","value":"'Content-Type': 'application/json'"},"#,
            r#"{"name":"body","value":"{'unit': 'kW', 'value': '1.43'}"}],"#,
            r#""device_instance_id":"inst","worker_id":"worker","output_name":"out"}"#
        );
        assert_eq!(encode_message(&full_message(), 0), golden);
    }

    #[test]
    fn encodes_an_event_as_a_change_frame_stamped_with_now_and_only_the_body_part() {
        let event = Message::event("sensor-1", "temperature", "21.5");
        let golden = concat!(
            r#"change:{"device_url":"sensor-1","service_url":"temperature","service_name":"","#,
            r#""time":"1700000000","task_id":"","protocol_parts":[{"name":"body","value":"21.5"}],"#,
            r#""device_instance_id":"","worker_id":"","output_name":""}"#
        );
        assert_eq!(encode_message(&event, 1_700_000_000), golden);
    }

    #[test]
    fn an_empty_payload_and_header_give_empty_protocol_parts() {
        let frame = encode_message(&Message::event("d", "e", ""), 5);
        assert!(frame.contains(r#""protocol_parts":[]"#), "{frame}");
    }

    #[test]
    fn encoding_escapes_every_string_as_serde_json_does() {
        let tricky = [
            "",
            "plain",
            "q\"uote",
            "back\\slash",
            "nl\ncr\rtab\t",
            "\u{8}\u{c}\u{0}\u{1f}\u{7f}",
            "ünï/cödé €",
        ];
        for text in tricky {
            let message = Message {
                device_id: text.into(),
                endpoint: text.into(),
                payload_header: text.into(),
                payload: text.into(),
                ..Message::default()
            };
            let s = |v: &str| serde_json::to_string(v).unwrap();
            let parts = match text.is_empty() {
                true => String::new(),
                false => format!(
                    r#"{{"name":"header","value":{0}}},{{"name":"body","value":{0}}}"#,
                    s(text)
                ),
            };
            let want = format!(
                r#"change:{{"device_url":{0},"service_url":{0},"service_name":"","time":"7","task_id":"","protocol_parts":[{1}],"device_instance_id":"","worker_id":"","output_name":""}}"#,
                s(text),
                parts
            );
            let got = encode_message(&message, 7);
            assert_eq!(got, want);
            assert_eq!(got.len(), got.capacity(), "sized exactly: {text:?}");
        }
    }

    #[test]
    fn the_typed_fast_path_reads_what_the_general_way_reads() {
        let frames = [
            GOLDEN_COMMAND,
            r#"{}"#,
            r#"{"device_url":"d","time":17,"task_id":"t","extra":{"x":[1,2]}}"#,
            r#"{"device_url":null,"time":" 42 ","protocol_parts":null}"#,
            r#"{"time":"","protocol_parts":[{"name":"body","value":"a"},{"name":"other","value":"x"},{"name":"body","value":"b\n\u00e9"}]}"#,
            r#"{"protocol_parts":[{"name":null},{"value":"v"},{"name":"header","value":null,"more":1}]}"#,
        ];
        for frame in frames {
            let fast = decode_well_formed(frame).unwrap_or_else(|| panic!("fast path refused {frame}"));
            assert_eq!(Ok(fast), decode_tree(frame), "{frame}");
        }
        // What the fast path refuses, the general way explains.
        for frame in [
            r#"[]"#,
            r#"{"time":-1}"#,
            r#"{"time":"soon"}"#,
            r#"{"device_url":1}"#,
            r#"{"task_id":"a","task_id":"b"}"#,
        ] {
            assert_eq!(decode_well_formed(frame), None, "{frame}");
        }
    }

    #[test]
    fn encodes_the_credentials_frame() {
        let frame = encode_credentials(&Credentials::new("alice", "p\"w"));
        assert_eq!(frame, r#"{"pw":"p\"w","user":"alice"}"#);
    }

    #[test]
    fn lenient_decoding_table() {
        // (frame, expected message) pairs for what the protocol allows.
        let table: Vec<(&str, Message)> = vec![
            ("{}", Message::default()),
            (
                r#"{"time": 42}"#,
                Message {
                    timestamp: Some(42),
                    ..Default::default()
                },
            ),
            (
                r#"{"time": " 42 "}"#,
                Message {
                    timestamp: Some(42),
                    ..Default::default()
                },
            ),
            (r#"{"time": ""}"#, Message::default()),
            (r#"{"time": null, "task_id": null}"#, Message::default()),
            (
                r#"{"device_url": "d", "extra": [1, 2], "protocol_parts": [{"name": "other", "value": "x"}]}"#,
                Message {
                    device_id: "d".into(),
                    ..Default::default()
                },
            ),
            (
                r#"{"protocol_parts": [{"name": "body", "value": "b"}, {"name": "header", "value": "h"}]}"#,
                Message {
                    payload: "b".into(),
                    payload_header: "h".into(),
                    ..Default::default()
                },
            ),
            (
                r#"{"device_url": "caf\u00e9 ☕"}"#,
                Message {
                    device_id: "café ☕".into(),
                    ..Default::default()
                },
            ),
        ];
        for (frame, expected) in table {
            assert_eq!(decode_command(frame.as_bytes(), 1024), Ok(expected), "frame {frame}");
        }
    }

    #[test]
    fn bad_frames_table() {
        // (frame, error kind, a fragment the message must contain)
        let table: &[(&[u8], &str, &str)] = &[
            (b"not json", "not_json", "not JSON"),
            (b"", "not_json", "not JSON"),
            (b"{\"device_url\": \"d\"", "not_json", "EOF"),
            (b"[1, 2]", "not_object", "an array"),
            (b"\"text\"", "not_object", "a string"),
            (b"null", "not_object", "null"),
            (
                b"{\"device_url\": 5}",
                "wrong_type",
                "`device_url` should be a string, found a number",
            ),
            (b"{\"task_id\": {}}", "wrong_type", "`task_id`"),
            (
                b"{\"protocol_parts\": \"x\"}",
                "wrong_type",
                "`protocol_parts` should be an array",
            ),
            (
                b"{\"protocol_parts\": [1]}",
                "wrong_type",
                "`protocol_parts[0]` should be an object",
            ),
            (
                b"{\"protocol_parts\": [{\"name\": \"body\", \"value\": 3}]}",
                "wrong_type",
                "`protocol_parts[0].value`",
            ),
            (b"{\"time\": \"yesterday\"}", "bad_time", "\"yesterday\""),
            (b"{\"time\": -1}", "bad_time", "-1"),
            (b"{\"time\": 1.5}", "bad_time", "1.5"),
            (b"{\"time\": true}", "wrong_type", "`time`"),
            (b"{\"a\": \"\xff\"}", "not_utf8", "byte 7"),
        ];
        for (frame, kind, fragment) in table {
            let err = decode_command(frame, 1024).expect_err("a bad frame must be refused");
            assert_eq!(err.kind(), *kind, "frame {:?}: {err}", String::from_utf8_lossy(frame));
            assert!(err.to_string().contains(fragment), "{err} lacks {fragment}");
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_before_parsing_with_a_short_excerpt() {
        let frame = format!("{{\"device_url\": \"{}\"}}", "x".repeat(2000));
        let err = decode_command(frame.as_bytes(), 1000).unwrap_err();
        assert_eq!(err.kind(), "too_large");
        assert!(
            err.to_string().contains("2018 bytes is over the limit of 1000"),
            "{err}"
        );
        assert!(err.excerpt().ends_with('…'));
        assert_eq!(err.excerpt(), format!("{}…", &frame[..EXCERPT_BYTES]));
    }

    #[test]
    fn excerpts_escape_control_characters_and_binary() {
        assert_eq!(excerpt(b"a\nb"), "a\\nb");
        assert_eq!(FrameError::binary(&[0xff, 0]).excerpt(), "\u{fffd}\\0");
    }

    #[test]
    fn decode_outgoing_reads_each_frame_kind() {
        let reply = full_message();
        let event = Message::event("d", "e", "p");
        assert_eq!(decode_outgoing(UPDATE_FRAME), Ok((FrameKind::Update, None)));
        assert_eq!(
            decode_outgoing(&encode_message(&reply, 0)),
            Ok((FrameKind::Response, Some(reply)))
        );
        assert_eq!(
            decode_outgoing(&encode_message(&event, 9)),
            Ok((
                FrameKind::Change,
                Some(Message {
                    timestamp: Some(9),
                    ..event
                })
            ))
        );
        assert_eq!(decode_outgoing("hello").unwrap_err().kind(), "unknown_prefix");
        assert_eq!(decode_outgoing("change:[]").unwrap_err().kind(), "not_object");
    }
}
