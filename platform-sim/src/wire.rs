//! The wire formats of PROTOCOL.md as the platform sees them: pure
//! bytes-in, values-out code with no IO, so each rule is tested by a table.
//!
//! - [`classify`] sorts a connector text frame into `response:`, `change:`,
//!   `update` or unknown (section 5) by prefix only, which is all the
//!   counting-only mode needs.
//! - [`Message`] is a parsed section 4 object; [`Message::from_json`] is
//!   lenient the way section 4 asks (unknown keys ignored, missing keys empty,
//!   `time` a string or a number).
//! - [`command_frame`] writes the JSON command frame of section 4.
//! - [`encode_masked`] writes a client's WebSocket frame, for tests and
//!   benchmarks that speak raw WebSocket to the simulator.
//! - [`RegistrationBody`] and [`UnregistrationBody`] are section 6 bodies.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Prefix of a reply to a command (section 5).
pub const RESPONSE_PREFIX: &str = "response:";
/// Prefix of a device event (section 5).
pub const CHANGE_PREFIX: &str = "change:";
/// The bare word sent after an (un)registration (section 5).
pub const UPDATE_FRAME: &str = "update";

/// What kind of connector frame a text frame is, judged by its prefix alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind<'a> {
    /// `response:{json}`; holds the JSON part.
    Response(&'a str),
    /// `change:{json}`; holds the JSON part.
    Change(&'a str),
    /// The bare word `update`.
    Update,
    /// Anything else: a bad frame.
    Unknown,
}

/// Sorts a text frame by prefix without parsing the JSON.
pub fn classify(text: &str) -> FrameKind<'_> {
    if let Some(json) = text.strip_prefix(CHANGE_PREFIX) {
        FrameKind::Change(json)
    } else if let Some(json) = text.strip_prefix(RESPONSE_PREFIX) {
        FrameKind::Response(json)
    } else if text == UPDATE_FRAME {
        FrameKind::Update
    } else {
        FrameKind::Unknown
    }
}

/// One message of section 4, with the field names of the message model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `device_url`: the connector's local device id.
    pub device_id: String,
    /// `service_url`: the local endpoint.
    pub endpoint: String,
    /// `service_name`.
    pub endpoint_name: String,
    /// `time`, as the decimal string it arrived as (a JSON number is
    /// written out in decimal).
    pub time: String,
    /// `task_id`: non-empty on a `response:`.
    pub task_id: String,
    /// `device_instance_id`.
    pub instance_id: String,
    /// `worker_id`.
    pub worker_id: String,
    /// `output_name`.
    pub output_name: String,
    /// The `protocol_parts` item named `header`.
    pub header: String,
    /// The `protocol_parts` item named `body`.
    pub body: String,
}

/// Why a frame's JSON part could not be read as a section 4 object.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Not JSON at all.
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not an object.
    #[error("not a JSON object")]
    NotAnObject,
}

impl Message {
    /// Parses the JSON object of a `response:` or `change:` frame. Returns the
    /// message and the object itself, kept so a waiter sees exactly what the
    /// connector sent.
    pub fn from_json(json: &str) -> Result<(Message, Value), WireError> {
        let value: Value = serde_json::from_str(json)?;
        let object = value.as_object().ok_or(WireError::NotAnObject)?;
        let text = |key: &str| match object.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Bool(b)) => b.to_string(),
            _ => String::new(),
        };
        let mut message = Message {
            device_id: text("device_url"),
            endpoint: text("service_url"),
            endpoint_name: text("service_name"),
            time: text("time"),
            task_id: text("task_id"),
            instance_id: text("device_instance_id"),
            worker_id: text("worker_id"),
            output_name: text("output_name"),
            header: String::new(),
            body: String::new(),
        };
        if let Some(Value::Array(parts)) = object.get("protocol_parts") {
            for part in parts {
                let name = part.get("name").and_then(Value::as_str);
                let value = part.get("value").and_then(Value::as_str).unwrap_or("");
                match name {
                    Some("header") => message.header = value.to_owned(),
                    Some("body") => message.body = value.to_owned(),
                    _ => {}
                }
            }
        }
        Ok((message, value))
    }

    /// The section 4 JSON object of this message. Both protocol parts are
    /// always written, header first, as in the seed's example command.
    pub fn to_json(&self) -> Value {
        json!({
            "device_url": self.device_id,
            "service_url": self.endpoint,
            "service_name": self.endpoint_name,
            "time": self.time,
            "task_id": self.task_id,
            "protocol_parts": [
                {"name": "header", "value": self.header},
                {"name": "body", "value": self.body},
            ],
            "device_instance_id": self.instance_id,
            "worker_id": self.worker_id,
            "output_name": self.output_name,
        })
    }
}

/// The text of a command frame (section 4) for `message`.
pub fn command_frame(message: &Message) -> String {
    message.to_json().to_string()
}

/// The credentials of the first socket frame and of registration bodies.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// Platform user.
    #[serde(default)]
    pub user: String,
    /// Platform password; never logged (see the `Debug` impl).
    #[serde(default)]
    pub pw: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("pw", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Reads the first socket frame. `None` when it is not a JSON object
    /// with string `user` and `pw` keys.
    pub fn from_frame(text: &str) -> Option<Credentials> {
        let value: Value = serde_json::from_str(text).ok()?;
        let user = value.get("user")?.as_str()?.to_owned();
        let pw = value.get("pw")?.as_str()?.to_owned();
        Some(Credentials { user, pw })
    }
}

/// One device as registered (section 6).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Local device id.
    pub id: String,
    /// Device type.
    #[serde(default)]
    pub zway_type: String,
    /// Device name.
    #[serde(default)]
    pub title: String,
}

/// Body of `POST /<registration path>` (section 6).
#[derive(Debug, Clone, Deserialize)]
pub struct RegistrationBody {
    /// Who registers.
    pub credentials: Credentials,
    /// The batch of devices.
    #[serde(default)]
    pub devices: Vec<Device>,
}

/// Body of `DELETE /<registration path>/<id>` (section 6).
#[derive(Debug, Clone, Deserialize)]
pub struct UnregistrationBody {
    /// Who unregisters.
    pub credentials: Credentials,
}

/// Decodes `%XX` escapes of a path segment. `None` on a broken escape or
/// when the result is not UTF-8.
pub fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// At most `max` characters of `text`, for log lines about bad frames.
pub fn excerpt(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Appends one final, masked frame as a client sends it (RFC 6455, 5.2),
/// written independently of actix's codec so that tests check the
/// simulator against the RFC rather than against itself.
pub fn encode_masked(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_masked_frame_unmasks_to_its_payload() {
        for len in [9, 126, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            encode_masked(&mut out, 0x1, &payload, [1, 2, 3, 4]);
            assert_eq!(out[0], 0x81);
            let (header, len_field) = match len {
                9 => (2, 9),
                126 => (4, 0x80 | 126),
                _ => (10, 0x80 | 127),
            };
            assert_eq!(out[1] & 0x7f, len_field & 0x7f, "length {len}");
            assert_eq!(out[1] & 0x80, 0x80, "masked");
            let mask = &out[header..header + 4];
            let text: Vec<u8> = out[header + 4..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(text, payload, "length {len}");
        }
    }

    #[test]
    fn classify_sorts_frames_by_prefix() {
        let table = [
            ("change:{}", FrameKind::Change("{}")),
            ("response:{\"a\":1}", FrameKind::Response("{\"a\":1}")),
            ("update", FrameKind::Update),
            ("update ", FrameKind::Unknown),
            ("changes:{}", FrameKind::Unknown),
            ("{}", FrameKind::Unknown),
            ("", FrameKind::Unknown),
        ];
        for (text, want) in table {
            assert_eq!(classify(text), want, "frame {text:?}");
        }
    }

    #[test]
    fn message_reads_all_keys_and_parts() {
        let json = r#"{"device_url":"d","service_url":"e","service_name":"n","time":"15",
            "task_id":"t","protocol_parts":[{"name":"header","value":"h"},{"name":"body","value":"b"}],
            "device_instance_id":"i","worker_id":"w","output_name":"o","extra":1}"#;
        let (m, _) = Message::from_json(json).unwrap();
        assert_eq!(
            m,
            Message {
                device_id: "d".into(),
                endpoint: "e".into(),
                endpoint_name: "n".into(),
                time: "15".into(),
                task_id: "t".into(),
                instance_id: "i".into(),
                worker_id: "w".into(),
                output_name: "o".into(),
                header: "h".into(),
                body: "b".into(),
            }
        );
    }

    #[test]
    fn message_is_lenient_about_missing_keys_and_numeric_time() {
        let (m, _) = Message::from_json(r#"{"time":1500000000}"#).unwrap();
        assert_eq!(m.time, "1500000000");
        assert_eq!(m.device_id, "");
        assert_eq!(m.body, "");
    }

    #[test]
    fn message_rejects_non_objects() {
        assert!(matches!(Message::from_json("[1]"), Err(WireError::NotAnObject)));
        assert!(matches!(Message::from_json("{nope"), Err(WireError::Json(_))));
    }

    #[test]
    fn command_frame_round_trips() {
        let m = Message {
            device_id: "d".into(),
            endpoint: "e".into(),
            task_id: "t".into(),
            header: "h".into(),
            body: "b".into(),
            ..Message::default()
        };
        let (back, value) = Message::from_json(&command_frame(&m)).unwrap();
        assert_eq!(back, m);
        for key in [
            "device_url",
            "service_url",
            "service_name",
            "time",
            "task_id",
            "protocol_parts",
            "device_instance_id",
            "worker_id",
            "output_name",
        ] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
    }

    #[test]
    fn credentials_frame_needs_both_string_keys() {
        let ok = Credentials::from_frame(r#"{"user":"u","pw":"p"}"#).unwrap();
        assert_eq!((ok.user.as_str(), ok.pw.as_str()), ("u", "p"));
        assert!(Credentials::from_frame(r#"{"user":"u"}"#).is_none());
        assert!(Credentials::from_frame(r#"{"user":1,"pw":"p"}"#).is_none());
        assert!(Credentials::from_frame("nope").is_none());
        assert!(!format!("{ok:?}").contains("\"p\""));
    }

    #[test]
    fn percent_decode_handles_escapes() {
        let table = [
            ("plain", Some("plain")),
            ("a%20b", Some("a b")),
            ("a%2Fb", Some("a/b")),
            ("%C3%A4", Some("ä")),
            ("bad%2", None),
            ("bad%zz", None),
            ("%FF", None),
        ];
        for (input, want) in table {
            assert_eq!(percent_decode(input).as_deref(), want, "input {input:?}");
        }
    }

    #[test]
    fn excerpt_cuts_on_char_boundaries() {
        assert_eq!(excerpt("äöü", 2), "äö");
        assert_eq!(excerpt("ab", 5), "ab");
    }
}
