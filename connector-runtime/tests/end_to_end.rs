//! The runtime against the real platform simulator over loopback: what the
//! connector does is checked by what crossed the wire.

mod util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connector_core::plugin::{DevicePlugin, DeviceSpec, EventSink, PluginError, Reply};
use connector_core::{Device, Message};
use connector_runtime::registry::RegistryError;
use connector_runtime::{Connector, Lifecycle};
use platform_sim::{Command, EventKind, RawFrame};
use util::*;

#[actix_rt::test]
async fn registers_the_configured_devices_and_answers_commands_with_the_task_id() {
    let sim = simulator().await;
    let connector = connected(&sim, config_for(&sim, ECHO_DEVICES)).await;

    let mut ids: Vec<String> = sim.devices().await.into_iter().map(|d| d.id).collect();
    ids.sort();
    assert_eq!(ids, ["lamp-1", "plug-2"]);
    eventually("update frame", || async {
        (sim.counters().await.updates >= 1).then_some(())
    })
    .await;

    let command = Command::new("lamp-1", "set")
        .header("'Content-Type': 'text/plain'")
        .body("on");
    let response = sim
        .command_and_wait(&command, DEADLINE)
        .await
        .expect("the device answers");
    assert_eq!(response.message.device_id, "lamp-1");
    assert_eq!(response.message.endpoint, "set");
    assert_eq!(response.message.body, "on");
    assert_eq!(response.message.header, "'Content-Type': 'text/plain'");
    assert_eq!(response.raw["task_id"], response.task_id);

    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn events_sent_through_the_library_reach_the_platform_in_order() {
    let sim = simulator().await;
    let connector = connected(&sim, config_for(&sim, ECHO_DEVICES)).await;
    for i in 0..100 {
        connector
            .send(connector_core::Message::event("lamp-1", "level", i.to_string()))
            .unwrap();
    }
    let events = eventually("100 events", || async {
        let events = sim.events().await;
        (events.len() >= 100).then_some(events)
    })
    .await;
    let bodies: Vec<String> = events.iter().map(|e| e.message.body.clone()).collect();
    let expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(bodies, expected);
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn lifecycle_reports_connected_and_registration() {
    let sim = simulator().await;
    let connector = Connector::start(config_for(&sim, ECHO_DEVICES)).await.unwrap();
    let mut events = connector.subscribe();
    wait_event(&mut events, "connected", |e| matches!(e, Lifecycle::Connected { .. })).await;
    wait_event(&mut events, "registered", |e| {
        matches!(e, Lifecycle::RegistrationSucceeded { .. })
    })
    .await;
    connector.shutdown(Duration::from_secs(2)).await;
}

// ---- test plugins: small devices defined here, added with `ConnectorBuilder::plugin` ----

/// Answers with the command's body and remembers every command it was given.
struct Recorder {
    seen: Arc<Mutex<Vec<Message>>>,
}

impl DevicePlugin for Recorder {
    fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
        self.seen.lock().unwrap().push(command.clone());
        Ok(Reply::body(command.payload.clone()))
    }
}

/// On the command `emit` with a number N as body, emits the events `0` to
/// `N-1` (endpoint `tick`) from a thread of its own.
#[derive(Default)]
struct Emitter {
    sink: Option<EventSink>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl DevicePlugin for Emitter {
    fn start(&mut self, events: EventSink) -> Result<(), PluginError> {
        self.sink = Some(events);
        Ok(())
    }

    fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
        let count: u32 = command
            .payload
            .parse()
            .map_err(|_| PluginError::new("the body must be a number"))?;
        let sink = self.sink.clone().expect("started before any command");
        self.threads.push(std::thread::spawn(move || {
            for i in 0..count {
                // Stops quietly once the device is stopped.
                if sink.emit("tick", i.to_string()).is_err() {
                    return;
                }
                if i % 16 == 0 {
                    std::thread::yield_now();
                }
            }
        }));
        Ok(Reply::body("emitting"))
    }

    fn stop(&mut self) {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Answers with the command's body, but panics on the endpoint `boom`.
struct Fragile;

impl DevicePlugin for Fragile {
    fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
        if command.endpoint == "boom" {
            panic!("fragile device hit by {:?}", command.task_id);
        }
        Ok(Reply::body(command.payload.clone()))
    }
}

// ---- commands and registration ----

#[actix_rt::test]
async fn a_reply_keeps_the_task_id_and_every_other_field_of_the_command() {
    let sim = simulator().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let factory_seen = seen.clone();
    let devices = "  - { id: meter-1, type: meter, name: Meter, plugin: recorder }\n";
    let connector = connected_with(
        &sim,
        |builder| {
            builder.plugin("recorder", move |_: &DeviceSpec| {
                Ok(Box::new(Recorder {
                    seen: factory_seen.clone(),
                }) as Box<dyn DevicePlugin>)
            })
        },
        config_for(&sim, devices),
    )
    .await;

    let command = Command {
        endpoint_name: Some("Read the meter".into()),
        ..Command::new("meter-1", "read").header("unit: kW").body("1.43")
    };
    let response = sim
        .command_and_wait(&command, DEADLINE)
        .await
        .expect("the device answers");

    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "the plugin got the command once: {got:?}");
    let command_seen = &got[0];
    // What the plugin was given is what the platform sent...
    assert_eq!(command_seen.task_id, response.task_id);
    assert_eq!(command_seen.endpoint_name, "Read the meter");
    for (field, value) in [
        ("instance id", &command_seen.instance_id),
        ("worker id", &command_seen.worker_id),
        ("output name", &command_seen.output_name),
    ] {
        assert!(!value.is_empty(), "the simulator sends a {field}");
    }
    // ...and the response carries all of it back, with the plugin's payload.
    let reply = &response.message;
    assert_eq!(reply.task_id, response.task_id);
    assert_eq!(reply.device_id, "meter-1");
    assert_eq!(reply.endpoint, "read");
    assert_eq!(reply.endpoint_name, "Read the meter");
    assert_eq!(reply.instance_id, command_seen.instance_id);
    assert_eq!(reply.worker_id, command_seen.worker_id);
    assert_eq!(reply.output_name, command_seen.output_name);
    assert_eq!(Some(reply.time.clone()), command_seen.timestamp.map(|t| t.to_string()));
    assert_eq!(reply.body, "1.43");
    assert_eq!(reply.header, "", "the recorder answers without a header");
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
        assert!(
            response.raw.get(key).is_some(),
            "the response lacks {key}: {}",
            response.raw
        );
    }
    assert_eq!(connector.stats().commands_received.load(Ordering::Relaxed), 1);
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn the_configured_devices_are_registered_in_one_batch_and_update_follows_only_success() {
    let sim = simulator().await;
    sim.fail_registrations(503, 2).await;
    let connector = Connector::start(config_for(&sim, ECHO_DEVICES)).await.unwrap();
    let mut events = connector.subscribe();

    wait_event(
        &mut events,
        "a failed registration",
        |e| matches!(e, Lifecycle::RegistrationFailed { devices, .. } if devices.len() == 2),
    )
    .await;
    let registered = wait_event(&mut events, "the registration", |e| {
        matches!(e, Lifecycle::RegistrationSucceeded { .. })
    })
    .await;
    assert_eq!(
        registered,
        Lifecycle::RegistrationSucceeded {
            devices: vec!["lamp-1".into(), "plug-2".into()]
        }
    );
    assert_eq!(device_ids(&sim).await, ["lamp-1", "plug-2"]);
    // The update goes out after the success; the failures sent none.
    let counters = eventually("the update frame", || async {
        let c = sim.counters().await;
        (c.updates >= 1).then_some(c)
    })
    .await;
    barrier(&sim, "lamp-1").await;
    let counters_after = sim.counters().await;
    assert_eq!(counters.registrations_failed, 2);
    assert_eq!(counters_after.registrations, 1, "both devices in one request");
    assert_eq!(counters_after.devices_registered, 2);
    assert_eq!(counters_after.updates, 1, "one update, for the one success");
    assert!(connector.stats().registration_failures.load(Ordering::Relaxed) >= 2);
    assert!(connector.devices().await.iter().all(|d| d.registered));
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn a_failing_lookup_is_retried_until_the_platform_answers() {
    let sim = simulator().await;
    sim.fail_lookups(503, 3).await;
    let connector = Connector::start(config_for(&sim, ECHO_DEVICES)).await.unwrap();
    let mut events = connector.subscribe();
    let down = wait_event(&mut events, "a failed lookup", |e| {
        matches!(e, Lifecycle::Disconnected { .. })
    })
    .await;
    let Lifecycle::Disconnected { reason } = down else {
        unreachable!()
    };
    assert!(reason.contains("503"), "the reason names the status: {reason}");
    wait_event(&mut events, "connected", |e| matches!(e, Lifecycle::Connected { .. })).await;
    eventually("all devices registered", || async {
        (sim.devices().await.len() == 2).then_some(())
    })
    .await;
    let counters = sim.counters().await;
    assert_eq!(counters.lookups_failed, 3);
    assert_eq!(counters.sessions_authenticated, 1);
    assert!(connector.stats().connect_failures.load(Ordering::Relaxed) >= 3);
    barrier(&sim, "plug-2").await;
    connector.shutdown(Duration::from_secs(2)).await;
}

// ---- events from plugins ----

#[actix_rt::test]
async fn events_a_plugin_emits_from_its_own_thread_arrive_in_order() {
    let sim = simulator().await;
    let devices = format!("{ECHO_DEVICES}  - {{ id: emitter-1, type: sensor, name: Emitter, plugin: emitter }}\n");
    let connector = connected_with(
        &sim,
        |builder| {
            builder.plugin("emitter", |_: &DeviceSpec| {
                Ok(Box::new(Emitter::default()) as Box<dyn DevicePlugin>)
            })
        },
        config_for(&sim, &devices),
    )
    .await;

    let started = sim
        .command_and_wait(&Command::new("emitter-1", "emit").body("500"), DEADLINE)
        .await
        .expect("the emitter answers");
    assert_eq!(started.message.body, "emitting");
    eventually("500 ticks", || async {
        (event_bodies(&sim, "emitter-1").await.len() >= 500).then_some(())
    })
    .await;
    barrier(&sim, "lamp-1").await;
    assert_eq!(
        event_bodies(&sim, "emitter-1").await,
        numbered(0..500),
        "in order, each once"
    );
    let changes: Vec<_> = sim
        .events()
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::Change)
        .collect();
    assert_eq!(changes.len(), 500, "no other device sent events");
    assert!(changes
        .iter()
        .all(|e| e.message.endpoint == "tick" && e.message.task_id.is_empty() && !e.message.time.is_empty()));
    connector.shutdown(Duration::from_secs(2)).await;
}

// ---- devices added and removed at run time ----

#[actix_rt::test]
async fn an_unregistered_device_is_gone_from_the_platform_and_update_follows() {
    let sim = simulator().await;
    let connector = connected(&sim, config_for(&sim, ECHO_DEVICES)).await;
    let mut events = connector.subscribe();
    // The device actor's stop and the unregistration are reported in either order.
    let mut device_events = connector.subscribe();
    let updates_before = eventually("the first update", || async {
        let updates = sim.counters().await.updates;
        (updates >= 1).then_some(updates)
    })
    .await;

    connector
        .unregister(&Device::new("plug-2", "plug", "Plug"))
        .await
        .expect("plug-2 is known");
    wait_event(&mut events, "the unregistration", |e| {
        *e == Lifecycle::UnregistrationSucceeded {
            device: "plug-2".into(),
        }
    })
    .await;
    assert_eq!(device_ids(&sim).await, ["lamp-1"]);
    assert_eq!(sim.counters().await.unregistrations, 1);
    eventually("an update after the unregistration", || async {
        (sim.counters().await.updates > updates_before).then_some(())
    })
    .await;
    wait_event(&mut device_events, "the device actor stopped", |e| {
        *e == Lifecycle::DeviceStopped {
            device: "plug-2".into(),
        }
    })
    .await;

    // Its commands are now for an unknown device; the others still answer.
    sim.send_command(&Command::new("plug-2", "toggle")).await.unwrap();
    barrier(&sim, "lamp-1").await;
    assert_eq!(connector.stats().unknown_device_commands.load(Ordering::Relaxed), 1);
    assert_eq!(
        connector.unregister(&Device::new("plug-2", "plug", "Plug")).await,
        Err(RegistryError::Unknown("plug-2".into()))
    );
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn a_device_the_program_registers_gets_its_commands_through_receive_and_answers_with_send() {
    let sim = simulator().await;
    let connector = connected(&sim, config_for(&sim, ECHO_DEVICES)).await;
    let updates_before = eventually("the first update", || async {
        let updates = sim.counters().await.updates;
        (updates >= 1).then_some(updates)
    })
    .await;

    connector
        .register(Device::new("thermo-9", "thermostat", "Hall"))
        .await
        .expect("a new id is accepted");
    eventually("thermo-9 registered", || async {
        (device_ids(&sim).await == ["lamp-1", "plug-2", "thermo-9"]).then_some(())
    })
    .await;
    let thermo = sim.devices().await.into_iter().find(|d| d.id == "thermo-9").unwrap();
    assert_eq!(
        (thermo.zway_type.as_str(), thermo.title.as_str()),
        ("thermostat", "Hall")
    );
    eventually("an update after the registration", || async {
        (sim.counters().await.updates > updates_before).then_some(())
    })
    .await;
    assert_eq!(
        connector.register(Device::new("thermo-9", "thermostat", "Hall")).await,
        Err(RegistryError::Duplicate("thermo-9".into()))
    );

    let command = Command::new("thermo-9", "get_target").body("{}");
    let program = async {
        let command = actix_rt::time::timeout(DEADLINE, connector.receive())
            .await
            .expect("a command in time")
            .expect("the connector runs");
        connector.send(command.reply("unit: C", "21.5")).unwrap();
        command
    };
    let (response, received) = tokio::join!(sim.command_and_wait(&command, DEADLINE), program);
    let response = response.expect("the program answered");
    assert_eq!(received.device_id, "thermo-9");
    assert_eq!(received.endpoint, "get_target");
    assert_eq!(received.task_id, response.task_id);
    assert_eq!(response.message.body, "21.5");
    assert_eq!(response.message.header, "unit: C");
    assert_eq!(response.message.instance_id, received.instance_id);

    // Unregistering a program device works the same way.
    connector
        .unregister(&Device::new("thermo-9", "thermostat", "Hall"))
        .await
        .unwrap();
    eventually("thermo-9 unregistered", || async {
        (device_ids(&sim).await == ["lamp-1", "plug-2"]).then_some(())
    })
    .await;
    connector.shutdown(Duration::from_secs(2)).await;
}

// ---- what the platform gets wrong ----

#[actix_rt::test]
async fn a_command_for_an_unknown_device_is_counted_and_dropped_and_the_session_goes_on() {
    let sim = simulator().await;
    let connector = connected(&sim, config_for(&sim, ECHO_DEVICES)).await;

    let ghost_task = sim.send_command(&Command::new("ghost-7", "haunt")).await.unwrap();
    eventually("the unknown device counted", || async {
        (connector.stats().unknown_device_commands.load(Ordering::Relaxed) == 1).then_some(())
    })
    .await;
    for device in ["lamp-1", "plug-2"] {
        barrier(&sim, device).await;
    }
    let counters = sim.counters().await;
    assert_eq!(counters.sessions_opened, 1, "the session was kept");
    assert_eq!(sim.sessions().await.len(), 1);
    let answered_ghost = sim.events().await.iter().any(|e| e.message.task_id == ghost_task);
    assert!(!answered_ghost, "nothing answers for a device that does not exist");
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn malformed_frames_are_counted_and_dropped_and_the_session_goes_on() {
    let sim = simulator().await;
    let config = config_with(&sim, "  max_frame_bytes: 4096\n", ECHO_DEVICES);
    let connector = connected(&sim, config).await;

    let frames = [
        RawFrame::Text("{not json".into()),
        RawFrame::Text("[1, 2, 3]".into()),
        RawFrame::Text("\"just a string\"".into()),
        RawFrame::Binary(vec![0x00, 0xff, 0x10]),
        RawFrame::Text(r#"{"device_url": 5, "service_url": "set", "task_id": "t"}"#.into()),
        RawFrame::Text(r#"{"device_url": "lamp-1", "protocol_parts": "body"}"#.into()),
        RawFrame::Text(r#"{"device_url": "lamp-1", "time": "yesterday"}"#.into()),
        // Over the configured limit, but within what the socket reads whole.
        RawFrame::Huge(10_000),
    ];
    let bad = frames.len() as u64;
    for frame in frames {
        assert_eq!(sim.send_raw(frame).await.unwrap(), 1);
    }
    eventually("every bad frame counted", || async {
        (connector.stats().bad_frames.load(Ordering::Relaxed) == bad).then_some(())
    })
    .await;
    for device in ["lamp-1", "plug-2"] {
        barrier(&sim, device).await;
    }
    assert_eq!(sim.counters().await.sessions_opened, 1, "the session was kept");
    let stats = connector.stats();
    assert_eq!(stats.bad_frames.load(Ordering::Relaxed), bad);
    assert_eq!(stats.commands_received.load(Ordering::Relaxed), 2, "only the barriers");
    assert_eq!(stats.unknown_device_commands.load(Ordering::Relaxed), 0);
    connector.shutdown(Duration::from_secs(2)).await;
}

// ---- plugins that fail ----

#[actix_rt::test]
async fn a_plugin_that_panics_on_a_command_answers_with_an_error_and_is_restarted() {
    let sim = simulator().await;
    let created = Arc::new(AtomicUsize::new(0));
    let counted = created.clone();
    let devices = format!("{ECHO_DEVICES}  - {{ id: fragile-1, type: toy, name: Fragile, plugin: fragile }}\n");
    let connector = connected_with(
        &sim,
        |builder| {
            builder.plugin("fragile", move |_: &DeviceSpec| {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(Box::new(Fragile) as Box<dyn DevicePlugin>)
            })
        },
        config_for(&sim, &devices),
    )
    .await;
    let mut events = connector.subscribe();
    let before = sim
        .command_and_wait(&Command::new("fragile-1", "echo").body("hello"), DEADLINE)
        .await
        .unwrap();
    assert_eq!(before.message.body, "hello");

    let crashed = sim
        .command_and_wait(&Command::new("fragile-1", "boom").body("x"), DEADLINE)
        .await
        .expect("a panic is still answered");
    assert_eq!(crashed.message.device_id, "fragile-1");
    assert_eq!(crashed.message.endpoint, "boom");
    let error: serde_json::Value = serde_json::from_str(&crashed.message.body).expect("the error body is JSON");
    let text = error["error"].as_str().expect("an error text");
    assert!(text.contains("panicked"), "{text}");
    let restarted = wait_event(&mut events, "the restart", |e| {
        matches!(e, Lifecycle::DeviceRestarted { .. })
    })
    .await;
    assert!(matches!(&restarted, Lifecycle::DeviceRestarted { device, .. } if device == "fragile-1"));

    // The other devices never noticed.
    for device in ["lamp-1", "plug-2"] {
        barrier(&sim, device).await;
    }
    wait_event(&mut events, "the device back", |e| {
        *e == Lifecycle::DeviceStarted {
            device: "fragile-1".into(),
        }
    })
    .await;
    assert_eq!(created.load(Ordering::SeqCst), 2, "a new plugin instance");
    let after = sim
        .command_and_wait(&Command::new("fragile-1", "echo").body("again"), DEADLINE)
        .await
        .unwrap();
    assert_eq!(after.message.body, "again");
    let stats = connector.stats();
    assert_eq!(stats.device_restarts.load(Ordering::Relaxed), 1);
    assert_eq!(sim.counters().await.sessions_opened, 1);
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn a_device_removed_and_added_again_while_its_registration_is_under_way_ends_up_registered() {
    let sim = simulator().await;
    let connector = connected(&sim, config_for(&sim, ECHO_DEVICES)).await;
    let thermo = Device::new("thermo-9", "thermostat", "Hall");

    // Back to back, so the second and third arrive while the registration
    // the first started is still under way: its answer is about the old
    // entry, and the queued unregistration then removes the id from the
    // platform. The new entry must be registered after that.
    connector.register(thermo.clone()).await.unwrap();
    connector.unregister(&thermo).await.unwrap();
    connector.register(thermo.clone()).await.unwrap();

    eventually("the old entry unregistered", || async {
        (sim.counters().await.unregistrations >= 1).then_some(())
    })
    .await;
    eventually("thermo-9 registered again after its unregistration", || async {
        (device_ids(&sim).await == ["lamp-1", "plug-2", "thermo-9"]).then_some(())
    })
    .await;
    // The platform has it before the connector has read the answer.
    eventually("the connector says thermo-9 is registered", || async {
        let listed = connector.devices().await;
        listed
            .iter()
            .any(|d| d.device.id == "thermo-9" && d.registered)
            .then_some(())
    })
    .await;
    connector.shutdown(Duration::from_secs(2)).await;
}
