//! The two things a connector talks about: a [`Device`] it represents and a
//! [`Message`] it exchanges with the platform about that device.

use serde::{Deserialize, Serialize};

/// A device as the platform knows it (the seed's `Device('id', 'type', 'name')`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Device {
    /// Local id, unique within one connector; commands are routed by it.
    pub id: String,
    /// Device type as registered on the platform.
    #[serde(rename = "type")]
    pub device_type: String,
    /// Human-readable name.
    pub name: String,
}

impl Device {
    pub fn new(id: impl Into<String>, device_type: impl Into<String>, name: impl Into<String>) -> Self {
        Device {
            id: id.into(),
            device_type: device_type.into(),
            name: name.into(),
        }
    }
}

/// One message between platform and connector: a command from the platform,
/// the reply to it, or an event from a device (PROTOCOL.md section 4).
///
/// A message with a non-empty `task_id` is a command or its reply; one
/// without is an event. Empty strings stand for keys the platform left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Local device id (`device_url` on the wire).
    pub device_id: String,
    /// Local endpoint (`service_url`).
    pub endpoint: String,
    /// Endpoint name (`service_name`).
    pub endpoint_name: String,
    /// Unix time in seconds (`time`); `None` lets the connector stamp it when sending.
    pub timestamp: Option<u64>,
    /// Platform task id; set on commands and kept on their replies.
    pub task_id: String,
    /// `device_instance_id`.
    pub instance_id: String,
    pub worker_id: String,
    pub output_name: String,
    /// Payload metadata, the `header` part of `protocol_parts`.
    pub payload_header: String,
    /// Payload content, the `body` part of `protocol_parts`.
    pub payload: String,
}

impl Message {
    /// An event from a device: no `task_id`, so it goes out as a `change:` frame.
    pub fn event(device_id: impl Into<String>, endpoint: impl Into<String>, payload: impl Into<String>) -> Self {
        Message {
            device_id: device_id.into(),
            endpoint: endpoint.into(),
            payload: payload.into(),
            ..Message::default()
        }
    }

    /// Sets the payload header, builder style.
    pub fn with_header(mut self, header: impl Into<String>) -> Self {
        self.payload_header = header.into();
        self
    }

    /// The reply to this command: every field of the command, its `task_id`
    /// included, with the payload replaced, so the platform can match it.
    pub fn reply(&self, header: impl Into<String>, payload: impl Into<String>) -> Message {
        Message {
            payload_header: header.into(),
            payload: payload.into(),
            ..self.clone()
        }
    }

    /// A command carries a task id; an event does not.
    pub fn is_command(&self) -> bool {
        !self.task_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_keeps_every_field_of_the_command_but_the_payload() {
        let command = Message {
            device_id: "lamp-1".into(),
            endpoint: "set".into(),
            endpoint_name: "Set level".into(),
            timestamp: Some(1_500_000_000),
            task_id: "task-7".into(),
            instance_id: "inst".into(),
            worker_id: "w".into(),
            output_name: "out".into(),
            payload_header: "h".into(),
            payload: "{\"level\":3}".into(),
        };
        let reply = command.reply("", "ok");
        assert_eq!(reply.task_id, "task-7");
        assert_eq!(reply.payload, "ok");
        assert_eq!(reply.payload_header, "");
        assert_eq!(
            Message {
                payload: command.payload.clone(),
                payload_header: "h".into(),
                ..reply.clone()
            },
            command
        );
        assert!(reply.is_command());
    }

    #[test]
    fn an_event_has_no_task_id() {
        let event = Message::event("sensor", "temperature", "21.5");
        assert!(!event.is_command());
        assert_eq!(event.timestamp, None);
        assert_eq!(Device::new("a", "b", "c").device_type, "b");
    }
}
