//! Drives the timer plugins by hand the way the runtime does: created through
//! `builtin()`, started with a channel sink, commanded, stopped. A closed
//! channel (every sink clone dropped) is the proof that no event can follow:
//! the plugin's thread has ended and let go of its sink.

use std::fs;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use connector_core::plugin::{DevicePlugin, DeviceSpec, EventSink};
use connector_core::Message;
use serde_json::{json, Value};

/// Generous bound for anything that should take milliseconds; a slow CI
/// machine must not make the tests flaky.
const PATIENCE: Duration = Duration::from_secs(5);
/// How quickly `stop()` must return.
const PROMPT: Duration = Duration::from_secs(1);

fn device(id: &str, plugin: &str, settings: Value) -> Box<dyn DevicePlugin> {
    let spec = DeviceSpec::new(id, plugin, id)
        .with_plugin(plugin)
        .with_settings(settings);
    connector_plugins::builtin().create(&spec).expect("the settings fit")
}

fn command(endpoint: &str) -> Message {
    Message {
        device_id: "dev".into(),
        endpoint: endpoint.into(),
        task_id: "task-1".into(),
        ..Message::default()
    }
}

fn next_event(events: &Receiver<Message>) -> Message {
    events.recv_timeout(PATIENCE).expect("an event within the deadline")
}

/// Everything still to come, up to the moment the sink is dropped; fails if
/// the sink is still alive after the deadline.
fn rest_until_closed(events: &Receiver<Message>) -> Vec<Message> {
    let mut rest = Vec::new();
    loop {
        match events.recv_timeout(PATIENCE) {
            Ok(event) => rest.push(event),
            Err(RecvTimeoutError::Disconnected) => return rest,
            Err(RecvTimeoutError::Timeout) => panic!("the plugin still holds its sink after {PATIENCE:?}"),
        }
    }
}

fn stop_promptly(device: &mut Box<dyn DevicePlugin>) {
    let started = Instant::now();
    device.stop();
    assert!(started.elapsed() < PROMPT, "stop() took {:?}", started.elapsed());
}

fn counter(body: &str) -> u64 {
    let value: Value = serde_json::from_str(body).unwrap();
    value["n"].as_u64().unwrap()
}

#[test]
fn a_generator_with_count_5_emits_exactly_five_events_in_order_then_nothing() {
    let mut generator = device("gen-1", "generator", json!({"interval_ms": 5, "count": 5}));
    let (sink, events) = EventSink::channel("gen-1");
    generator.start(sink).unwrap();
    let got = rest_until_closed(&events);
    let bodies: Vec<&str> = got.iter().map(|e| e.payload.as_str()).collect();
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
    for event in &got {
        assert_eq!((event.device_id.as_str(), event.endpoint.as_str()), ("gen-1", "value"));
        assert!(!event.is_command(), "an event never carries a task id");
        assert_eq!(event.payload_header, "");
    }
    // The timer is done, the device is not: it still answers.
    assert_eq!(generator.command(&command("get")).unwrap().body, "5");
    assert_eq!(generator.command(&command("anything")).unwrap().body, "5");
    stop_promptly(&mut generator);
}

#[test]
fn a_running_generator_stops_promptly_and_sends_nothing_after_stop() {
    let mut generator = device(
        "gen-2",
        "generator",
        json!({"interval_ms": 1, "endpoint": "tick", "body": "{device}:{n}", "header": "h"}),
    );
    let (sink, events) = EventSink::channel("gen-2");
    generator.start(sink).unwrap();
    let first: Vec<Message> = (0..3).map(|_| next_event(&events)).collect();
    stop_promptly(&mut generator);
    // Stopped and joined: the sink is gone, so whatever is buffered is all there is.
    let mut all = first;
    all.extend(events.try_iter());
    assert_eq!(events.try_recv(), Err(TryRecvError::Disconnected));
    let bodies: Vec<String> = all.iter().map(|e| e.payload.clone()).collect();
    let expected: Vec<String> = (1..=all.len()).map(|n| format!("gen-2:{n}")).collect();
    assert_eq!(bodies, expected);
    assert!(all.iter().all(|e| e.endpoint == "tick" && e.payload_header == "h"));
    assert_eq!(
        generator.command(&command("get")).unwrap().body,
        all.len().to_string(),
        "the counter is the number of events sent"
    );
}

#[test]
fn a_burst_sends_many_events_per_tick_in_order_and_count_cuts_the_last_one() {
    let mut generator = device(
        "load",
        "generator",
        json!({"interval_ms": 10, "burst": 1000, "count": 2500}),
    );
    let (sink, events) = EventSink::channel("load");
    generator.start(sink).unwrap();
    let got = rest_until_closed(&events);
    let counters: Vec<u64> = got.iter().map(|e| counter(&e.payload)).collect();
    assert_eq!(counters, (1..=2500).collect::<Vec<u64>>());
    assert_eq!(generator.command(&command("get")).unwrap().body, "2500");
}

#[test]
fn starting_a_generator_again_stops_the_old_timer_and_counts_from_one() {
    let mut generator = device("gen-3", "generator", json!({"interval_ms": 1}));
    let (old_sink, old_events) = EventSink::channel("gen-3");
    generator.start(old_sink).unwrap();
    next_event(&old_events);
    let (sink, events) = EventSink::channel("gen-3");
    generator.start(sink).unwrap();
    old_events.try_iter().for_each(drop);
    assert_eq!(old_events.try_recv(), Err(TryRecvError::Disconnected));
    assert_eq!(next_event(&events).payload, r#"{"n": 1}"#);
    stop_promptly(&mut generator);
}

#[test]
fn dropping_a_started_generator_without_stop_still_ends_its_thread() {
    let mut generator = device("gen-4", "generator", json!({"interval_ms": 1}));
    let (sink, events) = EventSink::channel("gen-4");
    generator.start(sink).unwrap();
    next_event(&events);
    drop(generator);
    events.try_iter().for_each(drop);
    assert_eq!(events.try_recv(), Err(TryRecvError::Disconnected));
}

/// A directory standing in for `/proc`, removed when dropped.
struct FakeProc(PathBuf);

impl FakeProc {
    fn new(name: &str) -> FakeProc {
        let dir = std::env::temp_dir().join(format!("connector-plugins-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        FakeProc(dir)
    }

    fn write(&self, file: &str, text: &str) {
        fs::write(self.0.join(file), text).unwrap();
    }
}

impl Drop for FakeProc {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn body_json(device: &mut Box<dyn DevicePlugin>, endpoint: &str) -> Value {
    let reply = device
        .command(&command(endpoint))
        .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
    serde_json::from_str(&reply.body).unwrap()
}

#[test]
fn sysmetrics_answers_from_its_proc_files_and_a_missing_file_is_an_error_reply() {
    let proc = FakeProc::new("missing");
    proc.write("uptime", "12.5 3.0\n");
    let mut metrics = device(
        "gw",
        "sysmetrics",
        json!({"proc_path": proc.0, "metrics": [], "disk_paths": ["/"]}),
    );
    let (sink, events) = EventSink::channel("gw");
    metrics.start(sink).unwrap();
    assert_eq!(
        events.try_recv(),
        Err(TryRecvError::Disconnected),
        "`metrics: []` starts no thread and keeps no sink"
    );
    assert_eq!(body_json(&mut metrics, "read_uptime"), json!({"uptime_seconds": 12.5}));
    let loadavg = proc.0.join("loadavg");
    for endpoint in ["read_load", "read"] {
        let err = metrics.command(&command(endpoint)).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("cannot read {}: ", loadavg.display())),
            "{endpoint}: {err}"
        );
    }
    proc.write("loadavg", "not a load\n");
    let err = metrics.command(&command("read_load")).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "cannot understand {}: 1-minute load is not a number: \"not\"",
            loadavg.display()
        )
    );
    let err = metrics.command(&command("temperature")).unwrap_err().to_string();
    assert_eq!(
        err,
        "unknown endpoint \"temperature\"; known: read, read_load, read_memory, read_cpu, read_uptime, read_disk"
    );
    stop_promptly(&mut metrics);
}

#[test]
fn sysmetrics_cpu_on_demand_covers_the_time_since_the_previous_read() {
    let proc = FakeProc::new("cpu");
    proc.write(
        "stat",
        "cpu  1000 0 500 8000 500 0 0 0 0 0\ncpu0 1 1 1 1\ncpu1 1 1 1 1\n",
    );
    let mut metrics = device("gw", "sysmetrics", json!({"proc_path": proc.0, "metrics": []}));
    let (sink, _events) = EventSink::channel("gw");
    metrics.start(sink).unwrap();
    // 1000 ticks later: 250 busy, 50 waiting for IO.
    proc.write(
        "stat",
        "cpu  1200 0 550 8700 550 0 0 0 0 0\ncpu0 1 1 1 1\ncpu1 1 1 1 1\n",
    );
    let cpu = body_json(&mut metrics, "read_cpu");
    assert_eq!(
        (cpu["used_percent"].as_f64(), cpu["iowait_percent"].as_f64()),
        (Some(25.0), Some(5.0))
    );
    assert_eq!(cpu["cores"], 2);
    // No tick since that read: no percentage rather than a made-up one.
    let cpu = body_json(&mut metrics, "read_cpu");
    assert_eq!((&cpu["used_percent"], &cpu["window_ms"]), (&Value::Null, &json!(0)));
    stop_promptly(&mut metrics);
}

#[test]
fn sysmetrics_skips_a_metric_it_cannot_read_and_keeps_sending_the_others() {
    let proc = FakeProc::new("skip");
    proc.write("uptime", "99.0 1.0\n");
    let mut metrics = device(
        "gw",
        "sysmetrics",
        json!({"proc_path": proc.0, "metrics": ["load", "uptime"], "interval_ms": 2}),
    );
    let (sink, events) = EventSink::channel("gw");
    metrics.start(sink).unwrap();
    for _ in 0..3 {
        let event = next_event(&events);
        assert_eq!(
            (event.endpoint.as_str(), event.payload.as_str()),
            ("uptime", r#"{"uptime_seconds":99.0}"#)
        );
    }
    // The file appears: its metric comes back in the next rounds.
    proc.write("loadavg", "0.5 0.25 0.125 1/10 77\n");
    let deadline = Instant::now() + PATIENCE;
    let load = loop {
        assert!(Instant::now() < deadline, "no load event after the file appeared");
        let event = next_event(&events);
        if event.endpoint == "load" {
            break event;
        }
    };
    let load: Value = serde_json::from_str(&load.payload).unwrap();
    assert_eq!(
        load,
        json!({"load_1m": 0.5, "load_5m": 0.25, "load_15m": 0.125, "runnable_tasks": 1, "total_tasks": 10})
    );
    stop_promptly(&mut metrics);
    events.try_iter().for_each(drop);
    assert_eq!(events.try_recv(), Err(TryRecvError::Disconnected));
}

#[cfg(target_os = "linux")]
mod on_this_machine {
    use super::*;

    fn assert_fields(body: &Value, fields: &[&str]) {
        let object = body.as_object().unwrap_or_else(|| panic!("not an object: {body}"));
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        let mut expected = fields.to_vec();
        keys.sort_unstable();
        expected.sort_unstable();
        assert_eq!(keys, expected, "{body}");
    }

    fn assert_metric(endpoint: &str, body: &Value) {
        match endpoint {
            "load" => assert_fields(
                body,
                &["load_1m", "load_5m", "load_15m", "runnable_tasks", "total_tasks"],
            ),
            "memory" => {
                assert_fields(
                    body,
                    &[
                        "total_bytes",
                        "available_bytes",
                        "used_bytes",
                        "used_percent",
                        "free_bytes",
                        "swap_total_bytes",
                        "swap_used_bytes",
                    ],
                );
                assert!(body["total_bytes"].as_u64().unwrap() > 0, "{body}");
                let used = body["used_percent"].as_f64().unwrap();
                assert!((0.0..=100.0).contains(&used), "{body}");
            }
            "cpu" => {
                assert_fields(body, &["used_percent", "iowait_percent", "cores", "window_ms"]);
                assert!(body["cores"].as_u64().unwrap() >= 1, "{body}");
                if let Some(used) = body["used_percent"].as_f64() {
                    assert!((0.0..=100.0).contains(&used), "{body}");
                }
            }
            "uptime" => assert!(body["uptime_seconds"].as_f64().unwrap() > 0.0, "{body}"),
            "disk" => {
                let disks = body["disks"].as_array().unwrap();
                assert_eq!(disks.len(), 1, "{body}");
                assert_eq!(disks[0]["path"], "/");
                assert!(disks[0]["total_bytes"].as_u64().unwrap() > 0, "{body}");
            }
            other => panic!("unexpected metric {other}"),
        }
    }

    #[test]
    fn sysmetrics_sends_every_metric_each_round_in_the_configured_order() {
        let mut metrics = device("gw", "sysmetrics", json!({"interval_ms": 20}));
        let (sink, events) = EventSink::channel("gw");
        metrics.start(sink).unwrap();
        let order = ["load", "memory", "cpu", "uptime", "disk"];
        for round in 0..2 {
            for endpoint in order {
                let event = next_event(&events);
                assert_eq!(event.endpoint, endpoint, "round {round}");
                assert_eq!(event.device_id, "gw");
                assert_metric(endpoint, &serde_json::from_str(&event.payload).unwrap());
            }
        }
        stop_promptly(&mut metrics);
        // A round under way when stop() came is finished, never cut in half.
        let rest: Vec<String> = rest_until_closed(&events).into_iter().map(|e| e.endpoint).collect();
        let whole_rounds: Vec<&str> = order.iter().copied().cycle().take(rest.len()).collect();
        assert_eq!(rest.len() % order.len(), 0, "{rest:?}");
        assert_eq!(rest, whole_rounds);
    }

    #[test]
    fn sysmetrics_reads_every_metric_on_demand() {
        let mut metrics = device("gw", "sysmetrics", json!({"metrics": []}));
        let (sink, _events) = EventSink::channel("gw");
        metrics.start(sink).unwrap();
        let all = body_json(&mut metrics, "read");
        assert_fields(&all, &["load", "memory", "cpu", "uptime", "disk"]);
        for (endpoint, body) in all.as_object().unwrap() {
            assert_metric(endpoint, body);
            assert_metric(endpoint, &body_json(&mut metrics, &format!("read_{endpoint}")));
        }
        stop_promptly(&mut metrics);
    }
}
