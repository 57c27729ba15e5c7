//! Bad input from the platform that the end-to-end tests do not cover:
//! frames far over the size limit, and a flood of commands faster than a
//! device answers (issue 7, point 4).

mod util;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use connector_core::plugin::{DevicePlugin, DeviceSpec, PluginError, Reply};
use connector_core::Message;
use platform_sim::{Command, EventFilter, EventKind, RawFrame};
use util::*;

const LIMIT: usize = 4096;

#[actix_rt::test]
async fn frames_far_over_the_size_limit_are_counted_and_the_session_goes_on() {
    let sim = simulator().await;
    let platform = format!("  max_frame_bytes: {LIMIT}\n");
    let connector = connected(&sim, config_with(&sim, &platform, ECHO_DEVICES)).await;
    barrier(&sim, "lamp-1").await;

    // Just over the limit, then ten and a hundred times it: all skipped.
    for size in [LIMIT + 1, 10 * LIMIT, 100 * LIMIT] {
        sim.send_raw(RawFrame::Huge(size))
            .await
            .expect("the simulator sends it");
    }
    for device in ["lamp-1", "plug-2"] {
        barrier(&sim, device).await;
    }
    let stats = connector.stats();
    assert_eq!(stats.bad_frames.load(Ordering::Relaxed), 3);
    assert_eq!(sim.counters().await.sessions_opened, 1, "the session went on");
    assert_eq!(stats.sessions.load(Ordering::Relaxed), 1);
    connector.shutdown(Duration::from_secs(2)).await;
}

/// Echoes the body after a short pause: a device slower than the platform.
struct Slow;

impl DevicePlugin for Slow {
    fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
        std::thread::sleep(Duration::from_millis(5));
        Ok(Reply::body(command.payload.clone()))
    }
}

#[actix_rt::test]
async fn a_flood_of_commands_gets_one_answer_each_and_the_mailbox_stays_bounded() {
    const FLOOD: usize = 2000;
    // Small, so that the flood overruns it: the device works its commands
    // off on the plugin pool while the link reads on at full speed.
    const CAPACITY: usize = 4;
    let sim = simulator().await;
    let devices = format!("{ECHO_DEVICES}  - {{ id: slow-1, type: toy, name: Slow, plugin: slow }}\n");
    let connector = connected_with(
        &sim,
        |builder| {
            builder
                .device_mailbox(CAPACITY)
                .plugin("slow", |_: &DeviceSpec| Ok(Box::new(Slow) as Box<dyn DevicePlugin>))
        },
        config_for(&sim, &devices),
    )
    .await;

    let mut sent = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let command = Command::new("slow-1", "echo").body(i.to_string());
        sent.push(sim.send_command(&command).await.expect("the simulator sends it"));
    }
    // The other devices answer while the flood is being worked off.
    for device in ["lamp-1", "plug-2"] {
        barrier(&sim, device).await;
    }

    let answers = eventually("an answer to every command of the flood", || async {
        let responses = sim
            .events_matching(EventFilter {
                device: Some("slow-1".into()),
                kind: Some(EventKind::Response),
                since: None,
                limit: Some(usize::MAX),
            })
            .await;
        (responses.len() >= FLOOD).then_some(responses)
    })
    .await;
    let mut per_task: HashMap<&str, usize> = HashMap::new();
    for answer in &answers {
        *per_task.entry(answer.message.task_id.as_str()).or_default() += 1;
    }
    for task in &sent {
        assert_eq!(per_task.get(task.as_str()), Some(&1), "task {task} answered once");
    }
    assert_eq!(answers.len(), FLOOD, "no answer twice or for nothing");

    let refusals = answers.iter().filter(|a| a.message.body.contains("busy")).count() as u64;
    let stats = connector.stats();
    assert_eq!(stats.commands_refused.load(Ordering::Relaxed), refusals);
    assert!(refusals > 0, "a flood this size overruns the mailbox");
    let peak = stats.mailbox_peak.load(Ordering::Relaxed);
    assert!(peak <= CAPACITY as u64, "peak {peak} over the capacity");
    // And the device is still there for the next command.
    let after = sim
        .command_and_wait(&Command::new("slow-1", "echo").body("after"), DEADLINE)
        .await
        .expect("the slow device still answers");
    assert_eq!(after.message.body, "after");
    connector.shutdown(Duration::from_secs(2)).await;
}
