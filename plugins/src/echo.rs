//! `echo`: answers every command with the command's own header and body; for
//! tests, demos and checking a link end to end.

use connector_core::plugin::{DevicePlugin, DeviceSpec, PluginError, Reply};
use connector_core::Message;
use serde::Deserialize;

pub const NAME: &str = "echo";

/// `echo` takes no settings; unknown keys are refused so typos show up.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {}

/// The `echo` device.
#[derive(Debug, Default)]
pub struct Echo;

/// Creates an `echo` device from its config entry.
pub fn create(spec: &DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> {
    let _: Settings = spec.settings()?;
    Ok(Box::new(Echo))
}

impl DevicePlugin for Echo {
    fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
        Ok(Reply::body(command.payload.clone()).with_header(command.payload_header.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_with_the_command_body_and_header() {
        let mut echo = create(&DeviceSpec::new("e", "echo", "Echo")).unwrap();
        let command = Message {
            payload: "ping".into(),
            payload_header: "h".into(),
            task_id: "t".into(),
            ..Message::default()
        };
        assert_eq!(echo.command(&command).unwrap(), Reply::body("ping").with_header("h"));
    }

    #[test]
    fn refuses_settings_it_does_not_know() {
        let spec = DeviceSpec::new("e", "echo", "Echo").with_settings(serde_json::json!({"colour": 1}));
        let err = create(&spec).err().unwrap().to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
    }
}
