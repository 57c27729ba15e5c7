//! `Connector::reload` against the simulator: devices come and go while the
//! session and the untouched devices keep running.

mod util;

use connector_runtime::{Connector, Lifecycle};
use platform_sim::{Command, SimConfig};
use util::*;

const GENERATOR: &str =
    "  - { id: gen, type: gen, name: Gen, plugin: generator, settings: { interval_ms: 10, body: \"{n}\" } }\n";
const A: &str = "  - { id: a, type: lamp, name: A, plugin: echo }\n";
const B: &str = "  - { id: b, type: lamp, name: B, plugin: echo }\n";
const C: &str = "  - { id: c, type: lamp, name: C, plugin: echo }\n";

/// The generator's event numbers as received, checked to start at 1 without a gap.
async fn contiguous_events(sim: &platform_sim::SimHandle) -> usize {
    let bodies = event_bodies(sim, "gen").await;
    let expected: Vec<String> = (1..=bodies.len()).map(|n| n.to_string()).collect();
    assert_eq!(bodies, expected, "the generator's events have a gap or a repeat");
    bodies.len()
}

#[actix_rt::test]
async fn a_reload_adds_one_device_and_removes_another_while_events_keep_flowing_without_a_gap() {
    let sim = simulator().await;
    let connector = connected(&sim, config_with(&sim, "", &format!("{GENERATOR}{A}{B}"))).await;
    let sessions = sim.counters().await.sessions_opened;
    eventually("some generator events", || async {
        (event_bodies(&sim, "gen").await.len() >= 5).then_some(())
    })
    .await;

    let report = connector
        .reload(config_with(&sim, "", &format!("{GENERATOR}{B}{C}")))
        .await
        .expect("the reload is accepted");
    assert_eq!(
        (report.added, report.removed, report.changed),
        (vec!["c".to_owned()], vec!["a".to_owned()], vec![])
    );

    eventually("the platform has b, c and gen, not a", || async {
        (device_ids(&sim).await == ["b", "c", "gen"]).then_some(())
    })
    .await;
    let reply = sim
        .command_and_wait(&Command::new("c", "ping").body("hello c"), DEADLINE)
        .await
        .expect("the added device answers");
    assert_eq!(reply.message.body, "hello c");

    let before = contiguous_events(&sim).await;
    eventually("more generator events after the reload", || async {
        (event_bodies(&sim, "gen").await.len() >= before + 5).then_some(())
    })
    .await;
    barrier(&sim, "b").await;
    contiguous_events(&sim).await;
    assert_eq!(
        sim.counters().await.sessions_opened,
        sessions,
        "the session was reopened"
    );
    connector.shutdown(DEADLINE).await;
}

#[actix_rt::test]
async fn a_changed_device_is_restarted_under_the_same_id() {
    let sim = simulator().await;
    let connector = connected(&sim, config_with(&sim, "", &format!("{A}{B}"))).await;
    let renamed = "  - { id: a, type: lamp, name: Renamed, plugin: echo }\n";
    let report = connector
        .reload(config_with(&sim, "", &format!("{renamed}{B}")))
        .await
        .unwrap();
    assert_eq!(report.changed, ["a"]);
    assert!(report.added.is_empty() && report.removed.is_empty(), "{report:?}");
    eventually("a registered under its new name", || async {
        sim.devices()
            .await
            .iter()
            .any(|d| d.id == "a" && d.title == "Renamed")
            .then_some(())
    })
    .await;
    barrier(&sim, "a").await;
    connector.shutdown(DEADLINE).await;
}

#[actix_rt::test]
async fn a_broken_reload_leaves_everything_running() {
    let sim = simulator().await;
    let connector = connected(&sim, config_with(&sim, "", &format!("{A}{B}"))).await;
    let unknown_plugin = "  - { id: x, plugin: nope }\n";
    let bad_settings = "  - { id: g, plugin: generator, settings: { interval_ms: 0 } }\n";
    for (devices, expected) in [
        (format!("{A}{unknown_plugin}"), "no plugin named \"nope\""),
        (format!("{A}{bad_settings}"), "device \"g\""),
    ] {
        let error = connector
            .reload(config_with(&sim, "", &devices))
            .await
            .expect_err("the reload is refused");
        assert!(error.to_string().contains(expected), "{error} lacks {expected:?}");
    }
    // What `Config::load` would refuse, built by hand.
    let mut duplicate = config_with(&sim, "", &format!("{A}{B}"));
    duplicate.devices.push(duplicate.devices[0].clone());
    let error = connector
        .reload(duplicate)
        .await
        .expect_err("an invalid config is refused");
    assert!(error.to_string().contains("duplicate device id"), "{error}");
    for (platform, expected) in [
        ("  buffer: { max_frames: 7 }\n", "platform.buffer changed: restart"),
        (
            "  user: someone-else\n  ca_file: /nonexistent/ca.pem\n",
            "/nonexistent/ca.pem",
        ),
    ] {
        let error = connector
            .reload(config_with(&sim, platform, &format!("{A}{B}")))
            .await
            .expect_err("the platform change is refused");
        assert!(error.to_string().contains(expected), "{error} lacks {expected:?}");
    }

    assert_eq!(device_ids(&sim).await, ["a", "b"]);
    let mut ids: Vec<String> = connector.devices().await.into_iter().map(|d| d.device.id).collect();
    ids.sort();
    assert_eq!(ids, ["a", "b"]);
    barrier(&sim, "a").await;
    barrier(&sim, "b").await;
    let sessions = sim.sessions().await;
    assert_eq!(sessions.len(), 1, "the session was reopened: {sessions:?}");
    assert_eq!(sessions[0].user, "", "{sessions:?}");
    connector.shutdown(DEADLINE).await;
}

fn sim_for(user: &str, password: &str) -> SimConfig {
    SimConfig {
        user: user.into(),
        password: password.into(),
        ..SimConfig::default()
    }
}

#[actix_rt::test]
async fn changing_the_platform_section_reconnects_with_the_new_settings_and_loses_no_event() {
    let old = simulator_with(sim_for("alice", "alice-pw")).await;
    let new = simulator_with(sim_for("bob", "bob-pw")).await;
    let devices = format!("{GENERATOR}{A}");
    let connector = connected(
        &old,
        config_with(&old, "  user: alice\n  password: alice-pw\n", &devices),
    )
    .await;
    let mut events = connector.subscribe();
    eventually("some generator events on the old platform", || async {
        (event_bodies(&old, "gen").await.len() >= 5).then_some(())
    })
    .await;

    let report = connector
        .reload(config_with(&new, "  user: bob\n  password: bob-pw\n", &devices))
        .await
        .expect("the reload is accepted");
    assert!(report.reconnected, "{report:?}");
    assert!(
        report.added.is_empty() && report.removed.is_empty() && report.changed.is_empty(),
        "{report:?}"
    );
    let new_url = new.lookup_url();
    let port = new_url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    wait_event(
        &mut events,
        "connected to the new platform",
        |e| matches!(e, Lifecycle::Connected { url } if url.contains(&format!(":{port}/"))),
    )
    .await;
    eventually("both devices registered with the new platform", || async {
        (device_ids(&new).await == ["a", "gen"]).then_some(())
    })
    .await;
    let sessions = new.sessions().await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!((sessions[0].authenticated, sessions[0].user.as_str()), (true, "bob"));
    eventually("the old platform's session closed", || async {
        (old.counters().await.sessions_closed == 1).then_some(())
    })
    .await;
    assert_eq!(old.counters().await.sessions_refused, 0);

    eventually("generator events on the new platform", || async {
        (event_bodies(&new, "gen").await.len() >= 5).then_some(())
    })
    .await;
    barrier(&new, "a").await;
    // The old session closed with a close handshake: every event is on one
    // platform or the other, once, in order.
    let mut all = event_bodies(&old, "gen").await;
    all.extend(event_bodies(&new, "gen").await);
    let expected: Vec<String> = (1..=all.len()).map(|n| n.to_string()).collect();
    assert_eq!(all, expected, "events were lost or repeated across the switch");
    assert!(connector.stats().is_session_up(), "the session is reported down");
    connector.shutdown(DEADLINE).await;
}

#[actix_rt::test]
async fn a_wrong_password_fixed_by_a_reload_reconnects_without_a_restart() {
    let sim = simulator_with(sim_for("alice", "right")).await;
    let connector = Connector::start(config_with(&sim, "  user: alice\n  password: wrong\n", A))
        .await
        .expect("the connector starts");
    let mut events = connector.subscribe();
    wait_event(&mut events, "the credentials refused", |e| {
        matches!(e, Lifecycle::CredentialsRefused { .. })
    })
    .await;
    assert!(device_ids(&sim).await.is_empty());

    let report = connector
        .reload(config_with(&sim, "  user: alice\n  password: right\n", A))
        .await
        .expect("the reload is accepted");
    assert!(report.reconnected, "{report:?}");
    eventually("the device registered", || async {
        (device_ids(&sim).await == ["a"]).then_some(())
    })
    .await;
    barrier(&sim, "a").await;
    connector.shutdown(DEADLINE).await;
}

/// Sends `ping` commands to device `a` about every millisecond until the
/// returned flag is set; the task answers how many it sent.
fn command_stream(
    sim: &platform_sim::SimHandle,
) -> (std::rc::Rc<std::cell::Cell<bool>>, actix_rt::task::JoinHandle<u64>) {
    let stop = std::rc::Rc::new(std::cell::Cell::new(false));
    let (sim, flag) = (sim.clone(), stop.clone());
    let task = actix_rt::spawn(async move {
        let mut sent = 0;
        while !flag.get() {
            // No session for a moment during a reconnect: not sent, not counted.
            if sim
                .send_command(&Command::new("a", "ping").body(sent.to_string()))
                .await
                .is_ok()
            {
                sent += 1;
            }
            actix_rt::time::sleep(std::time::Duration::from_micros(200)).await;
        }
        sent
    });
    (stop, task)
}

/// Every command the platform wrote got its response, and none was dropped
/// as addressed to an unknown device. (Commands still queued for a session
/// when it ends are never written; the simulator counts them apart.)
async fn every_command_answered(sim: &platform_sim::SimHandle, connector: &Connector, sent: u64) {
    barrier(sim, "a").await;
    let counters = sim.counters().await;
    assert!(sent > 0 && counters.commands_sent >= sent, "{sent} sent, {counters:?}");
    eventually("a response to every command written", || async {
        let counters = sim.counters().await;
        (counters.responses == counters.commands_sent - counters.commands_unsent).then_some(())
    })
    .await;
    let unknown = connector
        .stats()
        .unknown_device_commands
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(unknown, 0, "commands dropped as for an unknown device");
}

#[actix_rt::test]
async fn commands_for_a_device_a_reload_restarts_are_all_answered() {
    let sim = simulator().await;
    let renamed = "  - { id: a, type: lamp, name: A-renamed, plugin: echo }\n";
    let connector = connected(&sim, config_with(&sim, "", &format!("{A}{B}"))).await;
    let (stop, stream) = command_stream(&sim);
    for i in 0..20 {
        let a = if i % 2 == 0 { renamed } else { A };
        let report = connector
            .reload(config_with(&sim, "", &format!("{a}{B}")))
            .await
            .unwrap();
        assert_eq!(report.changed, ["a"]);
        actix_rt::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    stop.set(true);
    let sent = stream.await.unwrap();
    every_command_answered(&sim, &connector, sent).await;
    connector.shutdown(DEADLINE).await;
}

#[actix_rt::test]
async fn commands_arriving_while_a_reload_hands_the_link_over_are_answered() {
    let sim = simulator().await;
    let platform = |limit: u32| format!("  max_frame_bytes: {limit}\n");
    let connector = connected(&sim, config_with(&sim, &platform(1_000_000), &format!("{A}{B}"))).await;
    let (stop, stream) = command_stream(&sim);
    for i in 0..10 {
        let limit = if i % 2 == 0 { 2_000_000 } else { 1_000_000 };
        let report = connector
            .reload(config_with(&sim, &platform(limit), &format!("{A}{B}")))
            .await
            .unwrap();
        assert!(report.reconnected);
        eventually("reconnected", || async {
            connector.stats().is_session_up().then_some(())
        })
        .await;
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.set(true);
    let sent = stream.await.unwrap();
    every_command_answered(&sim, &connector, sent).await;
    connector.shutdown(DEADLINE).await;
}

/// Polls `reload` until `done_enough` says it is under way, then drops it,
/// as a caller's time-out or `select!` would.
async fn abandon<F: std::future::Future>(reload: F, done_enough: impl AsyncFn() -> bool) {
    let mut reload = std::pin::pin!(reload);
    loop {
        let poll = std::future::poll_fn(|cx| std::task::Poll::Ready(reload.as_mut().poll(cx))).await;
        assert!(poll.is_pending(), "the reload finished before it could be abandoned");
        if done_enough().await {
            return;
        }
        actix_rt::task::yield_now().await;
    }
}

fn max_frame_bytes(limit: u32) -> String {
    format!("  max_frame_bytes: {limit}\n")
}

#[actix_rt::test]
async fn a_reload_its_caller_stops_waiting_for_still_reconnects() {
    let sim = simulator().await;
    let connector = connected(&sim, config_with(&sim, &max_frame_bytes(1_000_000), A)).await;
    let reload = connector.reload(config_with(&sim, &max_frame_bytes(2_000_000), A));
    abandon(reload, async || !connector.stats().is_session_up()).await;
    eventually("a new session after the abandoned reload", || async {
        let counters = sim.counters().await;
        (connector.stats().is_session_up() && counters.sessions_authenticated == 2).then_some(())
    })
    .await;
    let reply = sim
        .command_and_wait(&Command::new("a", "ping").body("still here"), DEADLINE)
        .await
        .expect("the device answers over the new link");
    assert_eq!(reply.message.body, "still here");

    // The running config is the new one: going back to the old platform
    // settings is a change again, and reconnects.
    let report = connector
        .reload(config_with(&sim, &max_frame_bytes(1_000_000), A))
        .await
        .unwrap();
    assert!(report.reconnected, "{report:?}");
    eventually("the third session", || async {
        (sim.counters().await.sessions_authenticated == 3).then_some(())
    })
    .await;
    // The connector knows the newest link: a shutdown closes it cleanly.
    connector.shutdown(DEADLINE).await;
    eventually("every session closed", || async {
        (sim.counters().await.sessions_closed == 3).then_some(())
    })
    .await;
    assert_eq!(
        sim.counters().await.close_frames,
        3,
        "each session ended with a close handshake"
    );
}

#[actix_rt::test]
async fn a_shutdown_or_reload_right_after_an_abandoned_one_waits_for_it() {
    let sim = simulator().await;
    let connector = connected(&sim, config_with(&sim, &max_frame_bytes(1_000_000), A)).await;
    let reload = connector.reload(config_with(&sim, &max_frame_bytes(2_000_000), A));
    abandon(reload, async || !connector.stats().is_session_up()).await;
    // The same again at once: no second hand-over, so one link.
    let report = connector
        .reload(config_with(&sim, &max_frame_bytes(2_000_000), A))
        .await
        .unwrap();
    assert!(!report.reconnected, "{report:?}");
    eventually("the new session", || async {
        (sim.counters().await.sessions_authenticated == 2).then_some(())
    })
    .await;
    let reload = connector.reload(config_with(&sim, &max_frame_bytes(3_000_000), A));
    abandon(reload, async || !connector.stats().is_session_up()).await;
    // One more dropped while it waits for that one: the hand-over under way
    // must still be waited for by the shutdown.
    let reload = connector.reload(config_with(&sim, &max_frame_bytes(4_000_000), A));
    abandon(reload, async || true).await;
    connector.shutdown(DEADLINE).await;
    // A link still connecting when the shutdown came is dropped, not closed
    // with a handshake; the simulator sees its socket end a moment later.
    // One that outlived the shutdown would stay open.
    let open = eventually("the links gone", || async {
        let open = sim.sessions().await;
        open.is_empty().then_some(open)
    })
    .await;
    assert!(open.is_empty(), "a link outlived the shutdown: {open:?}");
    // Had the hand-over gone on after the shutdown, its link would show up.
    actix_rt::time::sleep(std::time::Duration::from_millis(300)).await;
    let open = sim.sessions().await;
    assert!(open.is_empty(), "a link started after the shutdown: {open:?}");
}

#[actix_rt::test]
async fn a_reload_dropped_while_it_adds_devices_finishes_and_a_retry_is_a_no_op() {
    let sim = simulator().await;
    let connector = connected(&sim, config_with(&sim, "", A)).await;
    let many: String = (0..200)
        .map(|i| format!("  - {{ id: n{i}, type: lamp, name: N, plugin: echo }}\n"))
        .collect();
    let config = || config_with(&sim, "", &format!("{A}{many}"));
    abandon(connector.reload(config()), async || connector.devices().await.len() > 5).await;
    let report = connector.reload(config()).await.expect("the retry is accepted");
    assert!(
        report.added.is_empty() && report.removed.is_empty() && report.changed.is_empty(),
        "{report:?}"
    );
    assert_eq!(connector.devices().await.len(), 201);
    eventually("all 201 registered", || async {
        (sim.devices().await.len() == 201).then_some(())
    })
    .await;
    connector.shutdown(DEADLINE).await;
}

/// A plugin that, like one owning a serial port, must never run twice at once.
mod exclusive {
    use connector_core::plugin::{DevicePlugin, DeviceSpec, EventSink, PluginError, Reply};
    use connector_core::Message;
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub static LIVE: AtomicUsize = AtomicUsize::new(0);
    pub static MOST: AtomicUsize = AtomicUsize::new(0);

    pub struct Exclusive {
        started: bool,
        /// Its device's name, which each reload changes: the reply tells
        /// which instance answered.
        name: String,
    }

    impl DevicePlugin for Exclusive {
        fn start(&mut self, _: EventSink) -> Result<(), PluginError> {
            let now = LIVE.fetch_add(1, Ordering::SeqCst) + 1;
            MOST.fetch_max(now, Ordering::SeqCst);
            self.started = true;
            Ok(())
        }

        fn command(&mut self, _: &Message) -> Result<Reply, PluginError> {
            Ok(Reply::body(self.name.clone()))
        }

        fn stop(&mut self) {
            if std::mem::take(&mut self.started) {
                LIVE.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    pub fn factory(spec: &DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> {
        Ok(Box::new(Exclusive {
            started: false,
            name: spec.device.name.clone(),
        }))
    }
}

#[actix_rt::test]
async fn a_changed_device_never_runs_two_plugin_instances_at_once() {
    let sim = simulator().await;
    let x = |name: &str| format!("  - {{ id: x, type: lamp, name: {name}, plugin: exclusive }}\n");
    let connector = connected_with(
        &sim,
        |b| b.plugin("exclusive", exclusive::factory),
        config_with(&sim, "", &x("X0")),
    )
    .await;
    for i in 1..=5 {
        let report = connector
            .reload(config_with(&sim, "", &x(&format!("X{i}"))))
            .await
            .unwrap();
        assert_eq!(report.changed, ["x"]);
        let reply = sim
            .command_and_wait(&Command::new("x", "ping"), DEADLINE)
            .await
            .expect("a reply");
        assert_eq!(reply.message.body, format!("X{i}"), "the new instance answers");
    }
    connector.shutdown(DEADLINE).await;
    assert_eq!(exclusive::MOST.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(exclusive::LIVE.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[actix_rt::test]
async fn a_reload_adding_an_id_the_program_registered_is_refused_and_changes_nothing() {
    let sim = simulator().await;
    let connector = connected(&sim, config_with(&sim, "", &format!("{A}{B}"))).await;
    connector
        .register(connector_core::Device::new("c", "lamp", "Program's C"))
        .await
        .unwrap();
    eventually("c registered", || async {
        (device_ids(&sim).await == ["a", "b", "c"]).then_some(())
    })
    .await;

    let refused = connector
        .reload(config_with(&sim, "", &format!("{B}{C}")))
        .await
        .expect_err("c is taken");
    let message = refused.to_string();
    assert!(
        message.contains("device \"c\"") && message.contains("program"),
        "{message}"
    );

    // a was to be removed by the same reload: it still runs.
    let reply = sim
        .command_and_wait(&Command::new("a", "ping").body("still here"), DEADLINE)
        .await
        .expect("a still answers");
    assert_eq!(reply.message.body, "still here");
    assert_eq!(device_ids(&sim).await, ["a", "b", "c"]);
    connector.shutdown(DEADLINE).await;
}
