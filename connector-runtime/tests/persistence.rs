//! The persistent outbox (issue 7, item 3) with the real binary: a connector
//! whose platform is unreachable buffers a generator's events on disk, is
//! killed with SIGKILL, comes back with the same config, and delivers every
//! event from before the kill exactly once, in order, once the platform is up.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use connector_runtime::outbox::journal;
use platform_sim::{SimConfig, SimHandle};
use util::*;

/// Events the generator emits per run of the connector.
const COUNT: usize = 40;

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("connector-persistence-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_config(dir: &Path, sim: &SimHandle, outbox: &Path) -> PathBuf {
    let yaml = format!(
        r#"platform:
  lookup_url: {lookup}
  backoff: {{ initial_ms: 20, max_ms: 200 }}
  buffer: {{ path: {outbox} }}
devices:
  - {{ id: lamp-1, type: lamp, name: Lamp, plugin: echo }}
  - id: gen-1
    type: counter
    plugin: generator
    settings: {{ interval_ms: 5, count: {COUNT}, endpoint: tick, body: "{{n}}" }}
"#,
        lookup = sim.lookup_url(),
        outbox = outbox.display(),
    );
    let path = dir.join("connector.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Starts the binary; its log goes to `run-N.log` beside the config.
fn start(config: &Path, run: u32) -> Child {
    let log = std::fs::File::create(config.with_file_name(format!("run-{run}.log"))).unwrap();
    runtime_binary()
        .arg("--config")
        .arg(config)
        .args(["--log-level", "debug"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the connector binary starts")
}

/// Live frames in the outbox file, read without disturbing the writer.
fn on_disk(outbox: &Path) -> usize {
    if !outbox.exists() {
        return 0;
    }
    journal::read_live(outbox).expect("a readable outbox file").len()
}

fn numbers(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|n| n.to_string()).collect()
}

#[actix_rt::test]
async fn events_buffered_on_disk_survive_a_sigkill_and_arrive_once_in_order_after_the_restart() {
    let sim = simulator_with(SimConfig {
        event_capacity: 100_000,
        ..SimConfig::default()
    })
    .await;
    sim.stop_listening().await.unwrap();
    let dir = scratch_dir();
    let outbox = dir.join("state").join("outbox.log");
    let config = write_config(&dir, &sim, &outbox);

    let mut first = start(&config, 1);
    eventually("the first run's events on disk", || async {
        (on_disk(&outbox) == COUNT).then_some(())
    })
    .await;
    first.kill().unwrap(); // SIGKILL: no shutdown, no flush
    first.wait().unwrap();
    #[cfg(unix)]
    {
        // Every device's events are in it: not for other users' eyes.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&outbox).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the outbox file's mode is {mode:o}");
    }

    // The second run starts from the file and its generator counts from 1
    // again; both runs' events wait on disk while the platform is down.
    let mut second = start(&config, 2);
    eventually("both runs' events on disk", || async {
        (on_disk(&outbox) == 2 * COUNT).then_some(())
    })
    .await;
    assert_eq!(
        sim.counters().await.sessions_opened,
        0,
        "the platform was down throughout"
    );

    sim.start_listening().await.unwrap();
    eventually("every event delivered", || async {
        (event_bodies(&sim, "gen-1").await.len() >= 2 * COUNT).then_some(())
    })
    .await;
    barrier(&sim, "lamp-1").await;
    let mut expected = numbers(1..=COUNT);
    expected.extend(numbers(1..=COUNT));
    assert_eq!(
        event_bodies(&sim, "gen-1").await,
        expected,
        "the first run's events once, in order, then the second run's"
    );
    eventually("the outbox file emptied", || async {
        (on_disk(&outbox) == 0).then_some(())
    })
    .await;
    second.kill().unwrap();
    second.wait().unwrap();
}
