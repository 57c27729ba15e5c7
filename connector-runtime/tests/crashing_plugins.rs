//! Plugins that crash (issue 7, point 6): on start, and in their own event
//! loop. The device's supervisor restarts them with back-off, gives up after
//! `MAX_RESTARTS` within the window and reports it, and the other devices
//! never notice. (A panic on a command is in `end_to_end.rs`.)

mod util;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connector_core::plugin::{DevicePlugin, DeviceSpec, EventSink, PluginError, Reply};
use connector_core::Message;
use connector_runtime::device::MAX_RESTARTS;
use connector_runtime::Lifecycle;
use platform_sim::Command;
use util::*;

/// Panics every time it is started.
struct Doomed;

impl DevicePlugin for Doomed {
    fn start(&mut self, _events: EventSink) -> Result<(), PluginError> {
        panic!("doomed device cannot start");
    }

    fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
        Ok(Reply::body(command.payload.clone()))
    }
}

#[actix_rt::test]
async fn a_plugin_that_panics_on_start_is_restarted_with_back_off_then_stopped_and_reported() {
    let sim = simulator().await;
    // When each instance was created: the supervisor's own clock, free of
    // the test's lag in reading events.
    let created = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let counted = created.clone();
    let devices = format!("{ECHO_DEVICES}  - {{ id: doomed-1, type: toy, name: Doomed, plugin: doomed }}\n");
    let connector = connected_with(
        &sim,
        |builder| {
            builder.plugin("doomed", move |_: &DeviceSpec| {
                counted.lock().unwrap().push(Instant::now());
                Ok(Box::new(Doomed) as Box<dyn DevicePlugin>)
            })
        },
        config_for(&sim, &devices),
    )
    .await;
    let mut events = connector.subscribe();

    // Restarts seen from here on (the first may have come before subscribing):
    // (attempt, the delay it announced).
    let mut restarts: Vec<(usize, Duration)> = Vec::new();
    let failed = loop {
        let event = wait_event(&mut events, "a restart or the failure", |e| {
            matches!(e, Lifecycle::DeviceRestarted { device, .. } | Lifecycle::DeviceFailed { device, .. } if device == "doomed-1")
        })
        .await;
        match event {
            Lifecycle::DeviceRestarted {
                attempt, delay, reason, ..
            } => {
                assert!(reason.contains("panicked on start"), "{reason}");
                restarts.push((attempt, delay));
                // The other devices keep answering while it crashes.
                barrier(&sim, "lamp-1").await;
            }
            failed => break failed,
        }
    };
    assert!(matches!(&failed, Lifecycle::DeviceFailed { reason, .. } if reason.contains("doomed device cannot start")));

    // Numbered up to the limit, and each restart waited out its back-off
    // before creating the next instance (no hot loop). The delays are random
    // below a doubling ceiling, so the waiting is asserted, not their size.
    assert!(!restarts.is_empty());
    assert_eq!(restarts.last().map(|r| r.0), Some(MAX_RESTARTS));
    for pair in restarts.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "{restarts:?}");
    }
    let starts = created.lock().unwrap().clone();
    assert_eq!(starts.len(), MAX_RESTARTS + 1, "one instance per start");
    for (attempt, delay) in &restarts {
        let waited = starts[*attempt].duration_since(starts[attempt - 1]);
        assert!(
            waited >= *delay,
            "restart {attempt} after {waited:?}, before its back-off {delay:?}"
        );
    }
    let stats = connector.stats();
    assert_eq!(stats.device_restarts.load(Ordering::Relaxed), MAX_RESTARTS as u64);

    // Stopped for good: commands are answered with an error, not lost.
    let answer = sim
        .command_and_wait(&Command::new("doomed-1", "echo").body("x"), DEADLINE)
        .await
        .expect("a stopped device still answers");
    assert!(
        answer.message.body.contains("stopped after repeated failures"),
        "{}",
        answer.message.body
    );
    for device in ["lamp-1", "plug-2"] {
        barrier(&sim, device).await;
    }
    assert_eq!(
        created.lock().unwrap().len(),
        MAX_RESTARTS + 1,
        "no start after giving up"
    );
    connector.shutdown(Duration::from_secs(2)).await;
}

/// Emits from a thread of its own; the first instance's thread panics after
/// its first event, as a plugin's event loop might.
struct Looper {
    instance: usize,
}

impl DevicePlugin for Looper {
    fn start(&mut self, events: EventSink) -> Result<(), PluginError> {
        let instance = self.instance;
        std::thread::spawn(move || {
            // What the SDK's worker threads do: a panic is reported to the
            // runtime, which restarts the device.
            let run = catch_unwind(AssertUnwindSafe(|| {
                let _ = events.emit("loop", format!("instance {instance}"));
                if instance == 1 {
                    panic!("event loop broke");
                }
            }));
            if run.is_err() {
                events.report_failure("event loop thread panicked: event loop broke");
            }
        });
        Ok(())
    }

    fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
        Ok(Reply::body(format!(
            "{} from instance {}",
            command.payload, self.instance
        )))
    }
}

#[actix_rt::test]
async fn a_plugin_whose_event_loop_panics_is_restarted_and_the_others_keep_working() {
    let sim = simulator().await;
    let created = Arc::new(AtomicUsize::new(0));
    let counted = created.clone();
    let devices = format!("{ECHO_DEVICES}  - {{ id: looper-1, type: toy, name: Looper, plugin: looper }}\n");
    let connector = connected_with(
        &sim,
        |builder| {
            builder.plugin("looper", move |_: &DeviceSpec| {
                let instance = counted.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(Box::new(Looper { instance }) as Box<dyn DevicePlugin>)
            })
        },
        config_for(&sim, &devices),
    )
    .await;

    // The second instance's event proves the restart: the first one's
    // thread died after its own event.
    eventually("an event from the restarted instance", || async {
        let bodies = event_bodies(&sim, "looper-1").await;
        bodies.iter().any(|b| b == "instance 2").then_some(())
    })
    .await;
    let reply = sim
        .command_and_wait(&Command::new("looper-1", "echo").body("hi"), DEADLINE)
        .await
        .expect("the restarted device answers");
    assert_eq!(reply.message.body, "hi from instance 2");
    for device in ["lamp-1", "plug-2"] {
        barrier(&sim, device).await;
    }
    let stats = connector.stats();
    assert_eq!(stats.device_restarts.load(Ordering::Relaxed), 1);
    assert_eq!(created.load(Ordering::SeqCst), 2);
    assert_eq!(sim.counters().await.sessions_opened, 1);
    connector.shutdown(Duration::from_secs(2)).await;
}
