//! `generator`: a device that emits events on a timer, for demos, for trying
//! a platform flow without hardware, and for load tests (`burst`).
//!
//! # Settings
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `interval_ms` | `1000` | milliseconds between ticks; above 0 |
//! | `burst` | `1` | events per tick; above 0. Raise it for more load, not the rate |
//! | `count` | none: forever | stop after this many events in all; above 0 |
//! | `endpoint` | `value` | endpoint (`service_url`) of each event; not empty |
//! | `body` | `{"n": {n}}` | body template, see below |
//! | `header` | none | payload header of each event, as written |
//!
//! The `body` template replaces `{n}` by the event counter (1 for the first
//! event after the device starts, counting every event of a burst),
//! `{device}` by the device id, `{time}` by Unix time in seconds and
//! `{time_ms}` in milliseconds. Other braces are text, so JSON needs no
//! escaping; an unknown `{word}` is refused. See [`template`].
//!
//! The first tick comes one interval after the device starts. When `count`
//! is reached the timer ends; the device still answers commands. A restart
//! of the device starts counting at 1 again.
//!
//! # Commands
//!
//! Every endpoint (by convention `get`) answers with the number of events
//! emitted so far since the device started, as decimal text (`"5"`); the
//! command's body is ignored.
//!
//! # Example
//!
//! ```yaml
//! devices:
//!   - id: counter-1
//!     type: counter
//!     plugin: generator
//!     settings:
//!       interval_ms: 500
//!       count: 10
//!       body: '{"n": {n}, "at": {time}}'
//! ```

pub mod template;

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use connector_core::plugin::{DevicePlugin, DeviceSpec, EventSink, PluginError, Reply};
use connector_core::Message;
use serde::Deserialize;

use crate::settings::{above_zero, not_empty, optional_above_zero};
use crate::ticker::Ticker;
pub use template::Template;

pub const NAME: &str = "generator";

/// Default of `interval_ms`: one event a second.
pub const DEFAULT_INTERVAL_MS: u64 = 1000;
/// Default of `burst`.
pub const DEFAULT_BURST: u32 = 1;
/// Default of `endpoint`.
pub const DEFAULT_ENDPOINT: &str = "value";
/// Default of `body`.
pub const DEFAULT_BODY: &str = r#"{"n": {n}}"#;

/// The `settings:` of a `generator` device; the table in the module doc
/// lists them with their defaults.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Milliseconds between ticks; above 0 (a zero interval would spin a
    /// core; use `burst` for more events). Default: 1000.
    #[serde(default = "default_interval_ms", deserialize_with = "above_zero")]
    pub interval_ms: u64,
    /// Events per tick; above 0. Default: 1.
    #[serde(default = "default_burst", deserialize_with = "above_zero")]
    pub burst: u32,
    /// Stop after this many events in all; above 0. Default: none, emit forever.
    #[serde(default, deserialize_with = "optional_above_zero")]
    pub count: Option<u64>,
    /// Endpoint of each event; not empty. Default: `value`.
    #[serde(default = "default_endpoint", deserialize_with = "not_empty")]
    pub endpoint: String,
    /// Body template. Default: `{"n": {n}}`.
    #[serde(default = "default_body")]
    pub body: Template,
    /// Payload header of each event, sent as written. Default: none.
    #[serde(default)]
    pub header: Option<String>,
}

fn default_interval_ms() -> u64 {
    DEFAULT_INTERVAL_MS
}

fn default_burst() -> u32 {
    DEFAULT_BURST
}

fn default_endpoint() -> String {
    DEFAULT_ENDPOINT.to_owned()
}

fn default_body() -> Template {
    Template::parse(DEFAULT_BODY).expect("the default body is a valid template")
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            interval_ms: DEFAULT_INTERVAL_MS,
            burst: DEFAULT_BURST,
            count: None,
            endpoint: default_endpoint(),
            body: default_body(),
            header: None,
        }
    }
}

/// The `generator` device.
#[derive(Debug)]
pub struct Generator {
    device_id: String,
    settings: Arc<Settings>,
    /// Events emitted since start; written by the timer thread only, read
    /// by commands.
    emitted: Arc<AtomicU64>,
    ticker: Option<Ticker>,
}

/// Creates a `generator` device from its config entry.
pub fn create(spec: &DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> {
    Ok(Box::new(Generator::new(spec.id(), spec.settings()?)))
}

impl Generator {
    pub fn new(device_id: impl Into<String>, settings: Settings) -> Self {
        Generator {
            device_id: device_id.into(),
            settings: Arc::new(settings),
            emitted: Arc::new(AtomicU64::new(0)),
            ticker: None,
        }
    }

    /// One tick: up to `burst` events, fewer when `count` is reached or the
    /// device stops. `Break` ends the timer.
    fn tick(
        settings: &Settings,
        emitted: &AtomicU64,
        events: &EventSink,
        stopping: &dyn Fn() -> bool,
    ) -> ControlFlow<()> {
        for _ in 0..settings.burst {
            let n = emitted.load(Ordering::Acquire) + 1;
            if settings.count.is_some_and(|count| n > count) || stopping() {
                break;
            }
            let body = settings.body.render_event(n, events.device_id(), SystemTime::now());
            let mut event = Message::event(events.device_id(), settings.endpoint.as_str(), body);
            if let Some(header) = &settings.header {
                event.payload_header = header.clone();
            }
            if events.send(event).is_err() {
                // The device was stopped under us: nobody takes events any more.
                return ControlFlow::Break(());
            }
            emitted.store(n, Ordering::Release);
        }
        let done = settings
            .count
            .is_some_and(|count| emitted.load(Ordering::Acquire) >= count);
        if done {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

impl DevicePlugin for Generator {
    fn start(&mut self, events: EventSink) -> Result<(), PluginError> {
        self.stop();
        self.emitted.store(0, Ordering::Release);
        let (settings, emitted) = (self.settings.clone(), self.emitted.clone());
        let interval = Duration::from_millis(self.settings.interval_ms);
        let ticker = Ticker::spawn(format!("generator {}", self.device_id), interval, move |stopping| {
            Generator::tick(&settings, &emitted, &events, &|| stopping.requested())
        })
        .map_err(|e| {
            PluginError::new(format!(
                "device {:?}: cannot start the timer thread: {e}",
                self.device_id
            ))
        })?;
        self.ticker = Some(ticker);
        Ok(())
    }

    fn command(&mut self, _command: &Message) -> Result<Reply, PluginError> {
        Ok(Reply::body(self.emitted.load(Ordering::Acquire).to_string()))
    }

    fn stop(&mut self) {
        if let Some(mut ticker) = self.ticker.take() {
            ticker.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(settings: serde_json::Value) -> DeviceSpec {
        DeviceSpec {
            origin: Some("declared at line 9".into()),
            ..DeviceSpec::new("gen-1", "counter", "Counter").with_settings(settings)
        }
    }

    #[test]
    fn no_settings_at_all_give_the_documented_defaults() {
        let settings: Settings = spec(serde_json::Value::Null).settings().unwrap();
        assert_eq!(settings, Settings::default());
        assert_eq!(settings.interval_ms, 1000);
        assert_eq!(settings.burst, 1);
        assert_eq!(settings.count, None);
        assert_eq!(settings.endpoint, "value");
        assert_eq!(settings.body.render_event(3, "g", SystemTime::now()), r#"{"n": 3}"#);
        assert_eq!(settings.header, None);
    }

    #[test]
    fn every_setting_is_read() {
        let settings: Settings = spec(serde_json::json!({
            "interval_ms": 5,
            "burst": 100,
            "count": 7,
            "endpoint": "temperature",
            "body": "{n} from {device}",
            "header": "'Content-Type': 'text/plain'",
        }))
        .settings()
        .unwrap();
        assert_eq!(settings.interval_ms, 5);
        assert_eq!(settings.burst, 100);
        assert_eq!(settings.count, Some(7));
        assert_eq!(settings.endpoint, "temperature");
        assert_eq!(
            settings.body.render_event(2, "gen-1", SystemTime::now()),
            "2 from gen-1"
        );
        assert_eq!(settings.header.as_deref(), Some("'Content-Type': 'text/plain'"));
    }

    #[test]
    fn bad_settings_are_refused_naming_the_device_and_the_key() {
        let table = [
            (
                serde_json::json!({"interval_ms": 0}),
                "`settings.interval_ms`: must be above 0",
            ),
            (
                serde_json::json!({"interval_ms": -5}),
                "`settings.interval_ms`: invalid value",
            ),
            (
                serde_json::json!({"interval_ms": "fast"}),
                "`settings.interval_ms`: invalid type",
            ),
            (serde_json::json!({"burst": 0}), "`settings.burst`: must be above 0"),
            (serde_json::json!({"count": 0}), "`settings.count`: must be above 0"),
            (
                serde_json::json!({"endpoint": ""}),
                "`settings.endpoint`: must not be empty",
            ),
            (
                serde_json::json!({"body": "{\"n\": {count}}"}),
                "`settings.body`: unknown placeholder `{count}`",
            ),
            (serde_json::json!({"header": 3}), "`settings.header`: invalid type"),
            (serde_json::json!({"intervall_ms": 5}), "unknown field `intervall_ms`"),
        ];
        for (settings, fragment) in table {
            let err = create(&spec(settings.clone())).err().expect("refused").to_string();
            assert!(
                err.starts_with("device \"gen-1\" (declared at line 9): "),
                "{settings}: {err}"
            );
            assert!(err.contains(fragment), "{settings}: {err:?} lacks {fragment:?}");
        }
    }

    #[test]
    fn a_tick_emits_a_burst_and_stops_at_count() {
        let settings = Settings {
            burst: 3,
            count: Some(5),
            header: Some("h".into()),
            ..Settings::default()
        };
        let (sink, events) = EventSink::channel("gen-1");
        let emitted = AtomicU64::new(0);
        let never = || false;
        assert_eq!(
            Generator::tick(&settings, &emitted, &sink, &never),
            ControlFlow::Continue(())
        );
        assert_eq!(
            Generator::tick(&settings, &emitted, &sink, &never),
            ControlFlow::Break(())
        );
        let got: Vec<Message> = events.try_iter().collect();
        let bodies: Vec<&str> = got.iter().map(|m| m.payload.as_str()).collect();
        assert_eq!(
            bodies,
            [
                r#"{"n": 1}"#,
                r#"{"n": 2}"#,
                r#"{"n": 3}"#,
                r#"{"n": 4}"#,
                r#"{"n": 5}"#
            ]
        );
        assert!(got
            .iter()
            .all(|m| m.endpoint == "value" && m.payload_header == "h" && !m.is_command()));
        assert_eq!(emitted.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn a_tick_ends_the_timer_when_the_sink_is_gone_or_a_stop_is_requested() {
        let settings = Settings {
            burst: 10,
            ..Settings::default()
        };
        let (sink, events) = EventSink::channel("gen-1");
        let emitted = AtomicU64::new(0);
        let stopping = || true;
        // Continue: the ticker sees the stop request itself and ends.
        assert_eq!(
            Generator::tick(&settings, &emitted, &sink, &stopping),
            ControlFlow::Continue(())
        );
        assert_eq!(
            emitted.load(Ordering::SeqCst),
            0,
            "a requested stop cuts the burst short"
        );
        drop(events);
        assert_eq!(
            Generator::tick(&settings, &emitted, &sink, &|| false),
            ControlFlow::Break(())
        );
        assert_eq!(emitted.load(Ordering::SeqCst), 0);
    }
}
