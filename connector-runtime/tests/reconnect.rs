//! The runtime against the real simulator when the link breaks: dropped
//! sessions, a platform that stops listening, refused credentials and
//! unanswered pings. The connector must come back by itself, register again,
//! and deliver what it accepted meanwhile in order, exactly once.

mod util;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connector_core::plugin::{DevicePlugin, DeviceSpec, EventSink, PluginError, Reply};
use connector_core::{Device, Message};
use connector_runtime::{Connector, Lifecycle};
use platform_sim::{DropMode, RawFrame, SimConfig, SimHandle};
use util::*;

type SinkSlot = Arc<Mutex<Option<EventSink>>>;

/// A device that echoes commands and hands its event sink to the test, so
/// the test can emit events "from the plugin", on a thread of its own, at
/// any moment.
struct Probe {
    slot: SinkSlot,
}

impl DevicePlugin for Probe {
    fn start(&mut self, events: EventSink) -> Result<(), PluginError> {
        *self.slot.lock().unwrap() = Some(events);
        Ok(())
    }

    fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
        Ok(Reply::body(command.payload.clone()))
    }
}

/// The `probe` plugin: each new instance hands its sink to `slot`.
fn probe_plugin(slot: SinkSlot) -> impl Fn(&DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> + Send + Sync {
    move |_: &DeviceSpec| Ok(Box::new(Probe { slot: slot.clone() }) as Box<dyn DevicePlugin>)
}

const DEVICES_WITH_PROBE: &str = "  - { id: lamp-1, type: lamp, name: Lamp, plugin: echo }\n  - { id: probe-1, type: sensor, name: Probe, plugin: probe }\n";

/// How the link is broken.
#[derive(Debug, Clone, Copy)]
enum Outage {
    /// The platform closes the session with a close frame (1001).
    CleanClose,
    /// The platform resets the TCP connection: no close frame.
    Reset,
    /// The platform stops listening and drops every connection.
    NotListening,
}

/// Breaks the link, sends events while it is down (through the library and
/// from a plugin thread), restores it, and checks that the connector came
/// back, registered again, and delivered every event once, in order.
async fn events_accepted_while_down_arrive_once_in_order_after(outage: Outage) {
    const EVENTS: u32 = 100;
    let sim = simulator().await;
    let slot = SinkSlot::default();
    let plugin = probe_plugin(slot.clone());
    let connector = connected_with(
        &sim,
        |builder| builder.plugin("probe", plugin),
        config_for(&sim, DEVICES_WITH_PROBE),
    )
    .await;
    barrier(&sim, "lamp-1").await;
    let mut events = connector.subscribe();
    let before = sim.counters().await;
    assert_eq!(before.sessions_authenticated, 1);

    match outage {
        Outage::CleanClose | Outage::Reset => {
            // Lookups fail until the events are buffered, so the connector
            // cannot come back before the test is ready.
            sim.fail_lookups(503, u32::MAX).await;
            let mode = match outage {
                Outage::Reset => DropMode::Reset,
                _ => DropMode::close(),
            };
            assert_eq!(sim.drop_sessions(mode).await, 1);
        }
        Outage::NotListening => sim.stop_listening().await.unwrap(),
    }
    let down = wait_event(&mut events, "the link down", |e| {
        matches!(e, Lifecycle::Disconnected { .. })
    })
    .await;
    let Lifecycle::Disconnected { reason } = down else {
        unreachable!()
    };
    match outage {
        Outage::CleanClose => assert!(reason.contains("1001"), "the close code is reported: {reason}"),
        Outage::Reset | Outage::NotListening => assert!(!reason.contains("1001"), "no close frame: {reason}"),
    }

    for i in 0..EVENTS {
        connector
            .send(Message::event("lamp-1", "level", i.to_string()))
            .expect("the buffer has room");
    }
    let sink = slot.lock().unwrap().clone().expect("the probe started");
    std::thread::spawn(move || {
        for i in 0..EVENTS {
            sink.emit("tick", i.to_string()).expect("the probe is running");
        }
    })
    .join()
    .unwrap();
    assert_eq!(connector.buffered().0, 2 * EVENTS as usize, "all kept while down");

    // The connector keeps trying meanwhile, and fails.
    let failures = connector.stats().connect_failures.load(Ordering::Relaxed);
    eventually("two more failed attempts", || async {
        (connector.stats().connect_failures.load(Ordering::Relaxed) >= failures + 2).then_some(())
    })
    .await;
    assert_eq!(sim.counters().await.sessions_authenticated, 1, "no session while down");

    match outage {
        Outage::CleanClose | Outage::Reset => sim.fail_lookups(503, 0).await,
        Outage::NotListening => sim.start_listening().await.unwrap(),
    }
    wait_event(&mut events, "connected again", |e| {
        matches!(e, Lifecycle::Connected { .. })
    })
    .await;
    wait_event(
        &mut events,
        "registered again",
        |e| matches!(e, Lifecycle::RegistrationSucceeded { devices } if devices.len() == 2),
    )
    .await;

    eventually("every event delivered", || async {
        let (lamp, probe) = (event_bodies(&sim, "lamp-1").await, event_bodies(&sim, "probe-1").await);
        (lamp.len() >= EVENTS as usize && probe.len() >= EVENTS as usize).then_some(())
    })
    .await;
    barrier(&sim, "probe-1").await;
    assert_eq!(
        event_bodies(&sim, "lamp-1").await,
        numbered(0..EVENTS),
        "library events"
    );
    assert_eq!(
        event_bodies(&sim, "probe-1").await,
        numbered(0..EVENTS),
        "plugin events"
    );
    assert_eq!(connector.buffered(), (0, 0));

    let after = eventually("an update after the new registration", || async {
        let c = sim.counters().await;
        (c.updates > before.updates).then_some(c)
    })
    .await;
    assert_eq!(after.sessions_authenticated, 2, "one new session");
    assert_eq!(
        after.registrations,
        before.registrations + 1,
        "registered again, in one batch"
    );
    assert_eq!(device_ids(&sim).await, ["lamp-1", "probe-1"]);
    assert_eq!(connector.stats().frames_dropped.load(Ordering::Relaxed), 0);
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn after_a_clean_close_the_connector_reconnects_and_delivers_what_it_buffered() {
    events_accepted_while_down_arrive_once_in_order_after(Outage::CleanClose).await;
}

#[actix_rt::test]
async fn after_a_connection_reset_the_connector_reconnects_and_delivers_what_it_buffered() {
    events_accepted_while_down_arrive_once_in_order_after(Outage::Reset).await;
}

#[actix_rt::test]
async fn while_the_platform_is_not_listening_events_wait_and_arrive_once_it_is_back() {
    events_accepted_while_down_arrive_once_in_order_after(Outage::NotListening).await;
}

#[actix_rt::test]
async fn a_paused_platform_is_reconnected_to_without_help() {
    let sim = simulator().await;
    let connector = connected(&sim, config_for(&sim, ECHO_DEVICES)).await;
    let mut events = connector.subscribe();
    sim.pause(Duration::from_millis(300)).await.unwrap();
    wait_event(&mut events, "the link down", |e| {
        matches!(e, Lifecycle::Disconnected { .. })
    })
    .await;
    wait_event(&mut events, "connected again", |e| {
        matches!(e, Lifecycle::Connected { .. })
    })
    .await;
    barrier(&sim, "lamp-1").await;
    assert_eq!(sim.counters().await.sessions_authenticated, 2);
    connector.shutdown(Duration::from_secs(2)).await;
}

/// Connection attempts (WebSocket handshakes) the simulator sees in `window`.
async fn attempts_during(sim: &SimHandle, window: Duration) -> u64 {
    let start = sim.counters().await.sessions_opened;
    // A fixed window on purpose: this measures a rate.
    actix_rt::time::sleep(window).await;
    sim.counters().await.sessions_opened - start
}

#[actix_rt::test]
async fn refused_credentials_are_reported_and_retried_with_back_off_until_accepted() {
    let sim = simulator().await;
    sim.set_refuse_credentials(true).await;
    let connector = Connector::start(config_for(&sim, ECHO_DEVICES)).await.unwrap();
    let mut events = connector.subscribe();
    let refused = wait_event(&mut events, "the refusal", |e| {
        matches!(e, Lifecycle::CredentialsRefused { .. })
    })
    .await;
    assert!(
        matches!(&refused, Lifecycle::CredentialsRefused { context } if context.contains("1008")),
        "{refused:?}"
    );

    // Back-off of 20 ms growing to 200 ms: a handful of attempts a second.
    // Without it, loopback allows hundreds.
    let attempts = attempts_during(&sim, Duration::from_secs(1)).await;
    assert!(attempts >= 1, "it keeps trying");
    assert!(attempts < 50, "{attempts} attempts in a second is a hot loop");
    assert_eq!(sim.counters().await.sessions_authenticated, 0);
    assert!(sim.devices().await.is_empty(), "nothing registered without a session");
    assert_eq!(connector.stats().sessions.load(Ordering::Relaxed), 0);

    sim.set_refuse_credentials(false).await;
    wait_event(&mut events, "connected", |e| matches!(e, Lifecycle::Connected { .. })).await;
    eventually("all devices registered", || async {
        (sim.devices().await.len() == 2).then_some(())
    })
    .await;
    barrier(&sim, "lamp-1").await;
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn only_the_configured_user_and_password_are_accepted() {
    let sim = simulator_with(SimConfig {
        user: "gateway".into(),
        password: "s3cret".into(),
        ..SimConfig::default()
    })
    .await;

    let wrong = Connector::start(config_with(
        &sim,
        "  user: gateway\n  password: guessed\n",
        ECHO_DEVICES,
    ))
    .await
    .unwrap();
    let mut events = wrong.subscribe();
    wait_event(&mut events, "the refusal", |e| {
        matches!(e, Lifecycle::CredentialsRefused { .. })
    })
    .await;
    let attempts = attempts_during(&sim, Duration::from_secs(1)).await;
    assert!(attempts < 50, "{attempts} attempts in a second is a hot loop");
    assert_eq!(sim.counters().await.sessions_authenticated, 0);
    wrong.shutdown(Duration::from_millis(100)).await;

    let right = connected(
        &sim,
        config_with(&sim, "  user: gateway\n  password: s3cret\n", ECHO_DEVICES),
    )
    .await;
    barrier(&sim, "plug-2").await;
    let sessions: Vec<_> = sim.sessions().await.into_iter().filter(|s| s.authenticated).collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].user, "gateway");
    right.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn a_platform_that_stops_answering_pings_is_left_and_reconnected_to() {
    let sim = simulator().await;
    let mut config = config_for(&sim, ECHO_DEVICES);
    config.platform.ping_interval_ms = 100;
    config.platform.pong_timeout_ms = Some(500);
    let connector = connected(&sim, config).await;
    let mut events = connector.subscribe();
    sim.set_ignore_pings(true).await;
    let down = wait_event(&mut events, "the link given up", |e| {
        matches!(e, Lifecycle::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(&down, Lifecycle::Disconnected { reason } if reason.contains("pong")),
        "{down:?}"
    );
    sim.set_ignore_pings(false).await;
    wait_event(&mut events, "connected again", |e| {
        matches!(e, Lifecycle::Connected { .. })
    })
    .await;
    barrier(&sim, "lamp-1").await;
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn devices_added_and_removed_while_the_link_is_down_are_registered_and_unregistered_after_it_returns() {
    let sim = simulator().await;
    let connector = connected(&sim, config_for(&sim, ECHO_DEVICES)).await;
    let mut events = connector.subscribe();
    sim.fail_lookups(503, u32::MAX).await;
    assert_eq!(sim.drop_sessions(DropMode::close()).await, 1);
    wait_event(&mut events, "the link down", |e| {
        matches!(e, Lifecycle::Disconnected { .. })
    })
    .await;

    connector
        .register(Device::new("thermo-9", "thermostat", "Hall"))
        .await
        .unwrap();
    connector
        .unregister(&Device::new("plug-2", "plug", "Plug"))
        .await
        .unwrap();
    let registered = connector.devices().await;
    assert!(
        registered.iter().all(|d| !d.registered),
        "nothing is registered while down"
    );
    assert_eq!(
        device_ids(&sim).await,
        ["lamp-1", "plug-2"],
        "the platform has not heard yet"
    );

    sim.fail_lookups(503, 0).await;
    wait_event(&mut events, "connected again", |e| {
        matches!(e, Lifecycle::Connected { .. })
    })
    .await;
    eventually("the changes applied", || async {
        (device_ids(&sim).await == ["lamp-1", "thermo-9"]).then_some(())
    })
    .await;
    let counters = eventually("an update for each request", || async {
        let c = sim.counters().await;
        (c.updates >= 3).then_some(c)
    })
    .await;
    assert_eq!(counters.unregistrations, 1);
    assert_eq!(
        counters.registrations, 2,
        "the first batch, then one batch after the reconnect"
    );
    barrier(&sim, "lamp-1").await;
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn a_frame_far_over_the_limit_is_counted_and_the_session_stays_up() {
    let sim = simulator().await;
    let config = config_with(&sim, "  max_frame_bytes: 4096\n", ECHO_DEVICES);
    let connector = connected(&sim, config).await;
    // Far past the limit: the socket codec skips it without reading it whole
    // (connection's FrameCodec), so nothing reconnects.
    sim.send_raw(RawFrame::Huge(100_000)).await.unwrap();
    barrier(&sim, "lamp-1").await;
    assert_eq!(connector.stats().bad_frames.load(Ordering::Relaxed), 1);
    assert_eq!(sim.counters().await.sessions_opened, 1, "the session went on");
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn a_registration_refused_for_its_credentials_is_reported_and_retried_with_back_off() {
    let sim = simulator().await;
    let connector = connected(&sim, config_for(&sim, ECHO_DEVICES)).await;
    let mut events = connector.subscribe();
    sim.set_refuse_credentials(true).await;
    connector
        .register(Device::new("thermo-9", "thermostat", "Hall"))
        .await
        .unwrap();
    let refused = wait_event(&mut events, "the refusal", |e| {
        matches!(e, Lifecycle::CredentialsRefused { .. })
    })
    .await;
    assert!(
        matches!(&refused, Lifecycle::CredentialsRefused { context } if context.contains("401")),
        "{refused:?}"
    );
    let start = sim.counters().await.registrations_failed;
    actix_rt::time::sleep(Duration::from_secs(1)).await; // a rate, measured over a window
    let attempts = sim.counters().await.registrations_failed - start;
    assert!(
        attempts < 50,
        "{attempts} registration attempts in a second is a hot loop"
    );

    sim.set_refuse_credentials(false).await;
    eventually("thermo-9 registered", || async {
        (device_ids(&sim).await == ["lamp-1", "plug-2", "thermo-9"]).then_some(())
    })
    .await;
    assert_eq!(
        sim.counters().await.sessions_opened,
        1,
        "the session itself was never in question"
    );
    barrier(&sim, "lamp-1").await;
    connector.shutdown(Duration::from_secs(2)).await;
}
