//! Devices that block: a plugin call never stalls the platform link or
//! another device, a command not answered in time gets the deadline's error,
//! a plugin may answer later from a thread of its own, and a plugin hung in
//! `stop` does not hang a shutdown.

mod util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use connector_core::plugin::{DevicePlugin, DeviceSpec, PluginError, Reply, Responder};
use connector_core::Message;
use platform_sim::Command;
use util::*;

/// Holds whoever waits on it until the test opens it.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn wait(&self) {
        let (open, changed) = &*self.0;
        let mut open = open.lock().unwrap();
        while !*open {
            open = changed.wait(open).unwrap();
        }
    }

    fn open(&self) {
        let (open, changed) = &*self.0;
        *open.lock().unwrap() = true;
        changed.notify_all();
    }
}

/// A device whose commands block until the gate opens: a hung HTTP API,
/// a serial line that does not answer. Counts the commands it got.
struct Blocking(Gate, Arc<AtomicUsize>);

impl DevicePlugin for Blocking {
    fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.wait();
        Ok(Reply::body(format!("late {}", command.payload)))
    }
}

fn blocking(gate: &Gate) -> impl Fn(&DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> + Send + Sync + 'static {
    blocking_counted(gate, &Arc::default())
}

fn blocking_counted(
    gate: &Gate,
    calls: &Arc<AtomicUsize>,
) -> impl Fn(&DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> + Send + Sync + 'static {
    let (gate, calls) = (gate.clone(), calls.clone());
    move |_: &DeviceSpec| Ok(Box::new(Blocking(gate.clone(), calls.clone())) as Box<dyn DevicePlugin>)
}

#[actix_rt::test]
async fn a_device_blocked_for_three_pong_timeouts_leaves_the_session_up_and_its_neighbour_answers_first() {
    const PONG_TIMEOUT: Duration = Duration::from_millis(1500);
    let sim = simulator().await;
    let gate = Gate::default();
    let devices = format!("{ECHO_DEVICES}  - {{ id: stuck-1, type: plug, name: Stuck, plugin: blocking }}\n");
    let mut config = config_for(&sim, &devices);
    config.platform.ping_interval_ms = 300;
    config.platform.pong_timeout_ms = Some(PONG_TIMEOUT.as_millis() as u64);
    let connector = connected_with(&sim, |builder| builder.plugin("blocking", blocking(&gate)), config).await;

    let stuck = sim
        .send_command(&Command::new("stuck-1", "get").body("1"))
        .await
        .expect("the simulator sends it");
    // Sent after the blocked one, answered while it still blocks.
    let echo = sim
        .command_and_wait(&Command::new("lamp-1", "get").body("meanwhile"), DEADLINE)
        .await
        .expect("the echo device answers while its neighbour blocks");
    assert_eq!(echo.message.body, "meanwhile");

    // Three pong time-outs with the device still blocked: the pings went on.
    let blocked_since = Instant::now();
    while blocked_since.elapsed() < 3 * PONG_TIMEOUT + Duration::from_millis(500) {
        barrier(&sim, "plug-2").await;
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sim.counters().await.sessions_opened, 1, "the session stayed up");
    assert_eq!(connector.stats().sessions.load(Ordering::Relaxed), 1);

    gate.open();
    let late = eventually("the blocked command's answer", || async {
        responses(&sim, "stuck-1")
            .await
            .into_iter()
            .find(|e| e.message.task_id == stuck)
    })
    .await;
    let neighbour = responses(&sim, "lamp-1").await.remove(0);
    assert_eq!(neighbour.message.task_id, echo.message.task_id);
    // `seq` numbers the frames in the order the platform got them.
    assert!(neighbour.seq < late.seq, "the neighbour was answered first");
    assert_eq!(late.message.body, "late 1");
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn a_device_that_does_not_answer_in_time_gets_the_deadlines_error_and_its_late_answer_is_dropped() {
    let sim = simulator().await;
    let (gate, calls) = (Gate::default(), Arc::new(AtomicUsize::new(0)));
    let devices = format!(
        "{ECHO_DEVICES}  - {{ id: stuck-1, type: plug, name: Stuck, plugin: blocking, command_timeout_ms: 1000 }}\n"
    );
    let connector = connected_with(
        &sim,
        |builder| builder.plugin("blocking", blocking_counted(&gate, &calls)),
        config_for(&sim, &devices),
    )
    .await;

    // The first blocks in the plugin; the second waits behind it and is
    // past its deadline before the device is free.
    for body in ["1", "2"] {
        let answer = sim
            .command_and_wait(&Command::new("stuck-1", "get").body(body), DEADLINE)
            .await
            .expect("the deadline answers");
        assert!(
            answer
                .message
                .body
                .contains("device \\\"stuck-1\\\" did not answer within 1 s (command_timeout_ms: 1000)"),
            "{}",
            answer.message.body
        );
    }
    let stats = connector.stats();
    assert_eq!(stats.command_timeouts.load(Ordering::Relaxed), 2);

    // The plugin got the first command (on a machine slow enough, not even
    // that one) and answers it late once the gate opens: dropped, counted.
    // The second, expired while it waited, is never run.
    let started = calls.load(Ordering::SeqCst);
    assert!(started <= 1, "the expired command was run: {started} calls");
    gate.open();
    eventually("the late answer counted", || async {
        (stats.late_replies.load(Ordering::Relaxed) == started as u64).then_some(())
    })
    .await;
    let third = sim
        .command_and_wait(&Command::new("stuck-1", "get").body("3"), DEADLINE)
        .await
        .expect("the device answers again");
    assert_eq!(third.message.body, "late 3");
    assert_eq!(calls.load(Ordering::SeqCst), started + 1);
    let all = responses(&sim, "stuck-1").await;
    assert_eq!(all.len(), 3, "one answer per command: {all:?}");
    assert_eq!(stats.late_replies.load(Ordering::Relaxed), started as u64);
    connector.shutdown(Duration::from_secs(2)).await;
}

/// Answers from a worker thread of its own, the way a serial port's driver
/// would: `command_deferred` only hands the command over.
struct Worker {
    to_worker: Option<std::sync::mpsc::Sender<(Message, Responder)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<(Message, Responder)>();
        let thread = std::thread::spawn(move || {
            // Collects three commands before answering any, in reverse: only
            // a deferred reply can do that.
            let mut held = Vec::new();
            while let Ok(job) = rx.recv() {
                held.push(job);
                if held.len() == 3 {
                    for (command, reply) in held.drain(..).rev() {
                        reply.reply(Reply::body(format!("worker: {}", command.payload)));
                    }
                }
            }
        });
        Worker {
            to_worker: Some(tx),
            thread: Some(thread),
        }
    }
}

impl DevicePlugin for Worker {
    fn command_deferred(&mut self, command: &Message, reply: Responder) {
        if let Some(worker) = &self.to_worker {
            let _ = worker.send((command.clone(), reply));
        }
    }

    fn stop(&mut self) {
        self.to_worker.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[actix_rt::test]
async fn a_plugin_answers_later_from_its_own_thread_each_answer_with_its_task_id() {
    let sim = simulator().await;
    let devices = "  - { id: serial-1, type: plug, name: Serial, plugin: worker }\n";
    let connector = connected_with(
        &sim,
        |builder| {
            builder.plugin("worker", |_: &DeviceSpec| {
                Ok(Box::new(Worker::new()) as Box<dyn DevicePlugin>)
            })
        },
        config_for(&sim, devices),
    )
    .await;
    let mut sent = Vec::new();
    for body in ["a", "b", "c"] {
        let task = sim
            .send_command(&Command::new("serial-1", "read").body(body))
            .await
            .expect("the simulator sends it");
        sent.push((task, body));
    }
    let answers = eventually("three answers", || async {
        let all = responses(&sim, "serial-1").await;
        (all.len() >= 3).then_some(all)
    })
    .await;
    assert_eq!(answers.len(), 3);
    for (task, body) in &sent {
        let answer = answers.iter().find(|e| e.message.task_id == *task).expect("answered");
        assert_eq!(answer.message.body, format!("worker: {body}"));
    }
    // Answered in reverse: the third command's answer came first.
    assert_eq!(answers[0].message.task_id, sent[2].0);
    assert_eq!(connector.stats().command_timeouts.load(Ordering::Relaxed), 0);
    connector.shutdown(Duration::from_secs(2)).await;
}

/// A plugin whose `stop` never returns.
struct HangsOnStop(Gate);

impl DevicePlugin for HangsOnStop {
    fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
        Ok(Reply::body(command.payload.clone()))
    }

    fn stop(&mut self) {
        self.0.wait();
    }
}

#[actix_rt::test]
async fn a_plugin_hung_in_stop_does_not_hang_the_shutdown() {
    let sim = simulator().await;
    let gate = Gate::default();
    let devices = format!("{ECHO_DEVICES}  - {{ id: hangs-1, type: plug, name: Hangs, plugin: hangs }}\n");
    let hangs = gate.clone();
    let connector = connected_with(
        &sim,
        move |builder| {
            builder.plugin("hangs", move |_: &DeviceSpec| {
                Ok(Box::new(HangsOnStop(hangs.clone())) as Box<dyn DevicePlugin>)
            })
        },
        config_for(&sim, &devices),
    )
    .await;
    barrier(&sim, "lamp-1").await;
    let mut lifecycle = connector.subscribe();
    // The shutdown returns (after the stop time-out), with the plugin still hung.
    actix_rt::time::timeout(Duration::from_secs(120), connector.shutdown(Duration::from_secs(2)))
        .await
        .expect("the shutdown returns although a plugin hangs in stop");
    // The other devices were stopped and the session closed with the close handshake.
    let mut stopped = Vec::new();
    while stopped.len() < 2 {
        let event = wait_event(
            &mut lifecycle,
            "the echo devices stopped",
            |e| matches!(e, connector_runtime::Lifecycle::DeviceStopped { device } if device != "hangs-1"),
        )
        .await;
        stopped.push(format!("{event:?}"));
    }
    stopped.sort();
    assert!(
        stopped[0].contains("lamp-1") && stopped[1].contains("plug-2"),
        "{stopped:?}"
    );
    eventually("the session closed", || async {
        (sim.counters().await.close_frames >= 1).then_some(())
    })
    .await;
    gate.open();
}
