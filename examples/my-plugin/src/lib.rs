//! A user's own device plugin: a thermostat that heats a simulated room
//! towards its target and reports the temperature from a thread of its own.
//!
//! Built as a library and loaded by the stock runtime:
//!
//! ```text
//! cargo build --release -p my-plugin        # target/release/libmy_plugin.so
//! cargo run --release -p connector-runtime -- --config config/my-plugin.yaml --embedded-platform
//! ```
//!
//! or compiled into a program of your own, see `examples/embedded-plugin`.
//!
//! Commands: `get` (the target), `set` (a new target, e.g. `22.5`) and
//! `temperature` (the room now). Events: `temperature`, every `interval_ms`.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use connector_plugin_sdk::{
    export_plugins, log, spawn_worker, DevicePlugin, DeviceSpec, EventSink, Level, Message, PluginError, Reply,
};
use serde::Deserialize;

/// The name devices use in `plugin:`.
pub const NAME: &str = "thermostat";

export_plugins! {
    "thermostat" => create,
}

/// A thermostat's `settings:` in `connector.yaml`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Target temperature in °C. Default: 21.
    target: f64,
    /// The room's temperature at start, in °C. Default: 18.
    room: f64,
    /// Milliseconds between `temperature` events. Default: 1000.
    interval_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            target: 21.0,
            room: 18.0,
            interval_ms: 1000,
        }
    }
}

/// Target and room temperature, shared with the reporting thread.
#[derive(Debug)]
struct State {
    target: f64,
    room: f64,
}

/// Makes a thermostat for one device; register it as [`NAME`].
pub fn create(spec: &DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> {
    let settings: Settings = spec.settings()?;
    if settings.interval_ms == 0 {
        return Err(PluginError::new(format!(
            "device {:?}: `settings.interval_ms` must be above 0",
            spec.id()
        )));
    }
    Ok(Box::new(Thermostat {
        state: Arc::new(Mutex::new(State {
            target: settings.target,
            room: settings.room,
        })),
        interval: Duration::from_millis(settings.interval_ms),
        reporter: None,
    }))
}

struct Thermostat {
    state: Arc<Mutex<State>>,
    interval: Duration,
    /// Dropping the sender tells the reporting thread to end.
    reporter: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl Thermostat {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DevicePlugin for Thermostat {
    fn start(&mut self, events: EventSink) -> Result<(), PluginError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let (state, interval) = (self.state.clone(), self.interval);
        let sink = events.clone();
        // spawn_worker, not thread::spawn: a panic here restarts the device.
        let reporter = spawn_worker(&events, "thermostat", move || loop {
            let room = {
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                // The heater closes a tenth of the gap per interval.
                state.room += (state.target - state.room) / 10.0;
                state.room
            };
            if sink.emit("temperature", format!("{room:.2}")).is_err() {
                return;
            }
            match stopped.recv_timeout(interval) {
                Err(RecvTimeoutError::Timeout) => continue,
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        })
        .map_err(|e| PluginError::new(format!("cannot start the reporting thread: {e}")))?;
        self.reporter = Some((stop, reporter));
        log(
            Level::Info,
            format_args!("thermostat started, target {}", self.state().target),
        );
        Ok(())
    }

    fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
        match command.endpoint.as_str() {
            "get" => Ok(Reply::body(self.state().target.to_string())),
            "set" => {
                let target: f64 = command
                    .payload
                    .trim()
                    .parse()
                    .map_err(|_| PluginError::new(format!("not a temperature: {:?}", command.payload)))?;
                self.state().target = target;
                log(Level::Info, format_args!("target set to {target}"));
                Ok(Reply::body("ok"))
            }
            "temperature" => Ok(Reply::body(format!("{:.2}", self.state().room))),
            other => Err(PluginError::new(format!(
                "unknown endpoint {other:?} (known: get, set, temperature)"
            ))),
        }
    }

    fn stop(&mut self) {
        if let Some((stop, reporter)) = self.reporter.take() {
            drop(stop);
            let _ = reporter.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thermostat_takes_a_new_target_and_reports_the_room() {
        let spec = DeviceSpec::new("t", "thermostat", "T")
            .with_settings(serde_json::json!({"target": 22.0, "room": 20.0, "interval_ms": 5}));
        let mut plugin = create(&spec).unwrap();
        let (sink, events) = EventSink::channel("t");
        plugin.start(sink).unwrap();
        assert_eq!(events.recv().unwrap().payload, "20.20");
        let set = Message {
            endpoint: "set".into(),
            payload: "23".into(),
            ..Message::default()
        };
        assert_eq!(plugin.command(&set).unwrap().body, "ok");
        let get = Message {
            endpoint: "get".into(),
            ..Message::default()
        };
        assert_eq!(plugin.command(&get).unwrap().body, "23");
        plugin.stop();
    }
}
