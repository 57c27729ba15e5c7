//! The `smart-plug` plugin: an [`AsyncDevicePlugin`] for a plug behind a
//! REST API, through `connector_core::http` (awc).
//!
//! Commands `on` and `off` switch it (`PUT {url}/api/relay`), `state` reads
//! it (`GET {url}/api/relay`); each answers with the plug's [`Relay`] as
//! JSON. While started, it polls the plug every `poll_ms` and emits the
//! state as a `state` event whenever it changed (and the first reading), so
//! the platform also learns of a press on the plug's own button.
//!
//! ```yaml
//! devices:
//!   - id: plug-1
//!     type: smart-plug
//!     name: Kitchen plug
//!     plugin: smart-plug
//!     settings: { url: "http://192.168.1.20", poll_ms: 1000, timeout_ms: 2000 }
//! ```
//!
//! Nothing here blocks: the plugin awaits its requests on the connector's
//! async plugin thread, so a slow plug holds up only its own commands, and
//! no thread waits for it.

use std::time::Duration;

use connector_core::http::{HttpClient, HttpOptions};
use connector_core::plugin::{AsyncDevicePlugin, DeviceSpec, EventSink, LocalFuture, PluginError, Reply};
use connector_core::Message;
use serde::Deserialize;
use tracing::{info, warn};

use crate::{Relay, SetRelay};

/// The name for `plugin:` in the config.
pub const NAME: &str = "smart-plug";

/// The header of every answer and event: the body is JSON.
const JSON: &str = "'Content-Type': 'application/json'";

/// A device's `settings:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where the plug's API is, `http://host[:port]`.
    pub url: String,
    /// Milliseconds between two readings of the state.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// How long one request may take, in milliseconds; never more than the
    /// device's `command_timeout_ms`.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_poll_ms() -> u64 {
    1000
}

fn default_timeout_ms() -> u64 {
    2000
}

/// One plug. Holds an awc client, which is not `Send`: fine for an async
/// plugin, which never leaves its thread.
pub struct SmartPlug {
    device_id: String,
    relay_url: String,
    client: HttpClient,
    poll: Duration,
    /// The polling task, from `start` to `stop`.
    poller: Option<actix_rt::task::JoinHandle<()>>,
}

/// The plugin's factory, for `Connector::builder(config).async_plugin(NAME, create)`.
/// Only reads the settings: it also runs to check them.
pub fn create(spec: &DeviceSpec) -> Result<SmartPlug, PluginError> {
    let settings: Settings = spec.settings()?;
    let refuse = |key: &str, why: &str| PluginError::new(format!("device {:?}: `settings.{key}` {why}", spec.id()));
    let url = settings.url.trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(refuse("url", "must be an http:// or https:// URL"));
    }
    if settings.poll_ms == 0 {
        return Err(refuse("poll_ms", "must be above 0"));
    }
    let timeout = Duration::from_millis(settings.timeout_ms).min(spec.command_timeout());
    let options = HttpOptions {
        timeout,
        ..HttpOptions::default()
    };
    Ok(SmartPlug {
        device_id: spec.id().to_owned(),
        relay_url: format!("{url}/api/relay"),
        client: HttpClient::new().with_options(options),
        poll: Duration::from_millis(settings.poll_ms),
        poller: None,
    })
}

/// Reads or switches the relay; an HTTP error status is an error too.
async fn relay(client: &HttpClient, url: &str, switch: Option<bool>) -> Result<Relay, PluginError> {
    let request = match switch {
        Some(on) => client.put(url, "").json(&SetRelay { on }),
        None => client.get(url),
    };
    let response = request.send().await.map_err(|e| PluginError::new(e.to_string()))?;
    if !response.is_success() {
        return Err(PluginError::new(format!(
            "the plug answered HTTP {}: {}",
            response.status, response.body
        )));
    }
    response
        .json()
        .map_err(|e| PluginError::new(format!("the plug's answer is not a relay state: {e}")))
}

fn to_json(relay: &Relay) -> String {
    serde_json::to_string(relay).unwrap_or_default()
}

/// Reads the state every `every` and emits it when it changed, until the
/// device stops (the sink refuses) or the task is aborted.
async fn poll(client: HttpClient, url: String, every: Duration, events: EventSink) {
    let mut last: Option<Relay> = None;
    let mut failing = false;
    loop {
        match relay(&client, &url, None).await {
            Ok(now) => {
                if failing {
                    info!(device_id = %events.device_id(), "the plug answers again");
                    failing = false;
                }
                if last.as_ref() != Some(&now) {
                    let mut event = Message::event(events.device_id(), "state", to_json(&now));
                    event.payload_header = JSON.into();
                    if events.send(event).is_err() {
                        return;
                    }
                    last = Some(now);
                }
            }
            // Once per outage, not once per reading.
            Err(e) if !failing => {
                warn!(device_id = %events.device_id(), "cannot read the plug: {e}");
                failing = true;
            }
            Err(_) => {}
        }
        actix_rt::time::sleep(every).await;
    }
}

impl AsyncDevicePlugin for SmartPlug {
    fn start(&mut self, events: EventSink) -> LocalFuture<'_, Result<(), PluginError>> {
        // A plug that is unplugged now still starts: the poller reports it
        // once it answers, and commands meanwhile get the error.
        let task = poll(self.client.clone(), self.relay_url.clone(), self.poll, events);
        self.poller = Some(actix_rt::spawn(task));
        Box::pin(async { Ok(()) })
    }

    fn command<'a>(&'a mut self, command: &'a Message) -> LocalFuture<'a, Result<Reply, PluginError>> {
        Box::pin(async move {
            let switch = match command.endpoint.as_str() {
                "on" => Some(true),
                "off" => Some(false),
                "state" => None,
                other => {
                    return Err(PluginError::new(format!(
                        "unknown endpoint {other:?} (known: on, off, state)"
                    )))
                }
            };
            let now = relay(&self.client, &self.relay_url, switch).await?;
            Ok(Reply::body(to_json(&now)).with_header(JSON))
        })
    }

    fn stop(&mut self) -> LocalFuture<'_, ()> {
        if let Some(poller) = self.poller.take() {
            poller.abort();
        }
        Box::pin(async {})
    }
}

impl Drop for SmartPlug {
    fn drop(&mut self) {
        if let Some(poller) = self.poller.take() {
            warn!(device_id = %self.device_id, "dropped without a stop; polling ends now");
            poller.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(settings: serde_json::Value) -> DeviceSpec {
        DeviceSpec::new("plug-1", "smart-plug", "Plug")
            .with_plugin(NAME)
            .with_settings(settings)
    }

    #[test]
    fn settings_that_cannot_work_are_refused_naming_the_key() {
        for (settings, expected) in [
            (serde_json::json!({}), "missing field `url`"),
            (
                serde_json::json!({"url": "plug.local"}),
                "`settings.url` must be an http://",
            ),
            (
                serde_json::json!({"url": "http://p", "poll_ms": 0}),
                "`settings.poll_ms` must be above 0",
            ),
            (
                serde_json::json!({"url": "http://p", "colour": 1}),
                "unknown field `colour`",
            ),
        ] {
            let error = create(&spec(settings)).err().expect("refused").to_string();
            assert!(error.contains("\"plug-1\"") && error.contains(expected), "{error}");
        }
    }

    #[test]
    fn a_trailing_slash_and_a_long_timeout_are_taken_in_stride() {
        let plug = create(&spec(
            serde_json::json!({"url": "http://p:8080/", "timeout_ms": 600000}),
        ))
        .unwrap();
        assert_eq!(plug.relay_url, "http://p:8080/api/relay");
        assert_eq!(
            plug.client.options().timeout,
            spec(serde_json::json!({})).command_timeout()
        );
    }
}
