//! Plugin libraries, end to end: real `cdylib`s built from the workspace
//! (`test-plugins/`, `examples/my-plugin/`), loaded by the runtime and driven
//! through the platform simulator on loopback.
//!
//! The libraries are built by the test itself with `cargo build`: a
//! `cdylib` of a workspace member is not guaranteed to exist after a plain
//! `cargo test --workspace`, and cargo reports the exact file it wrote.

mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use connector_core::abi;
use connector_core::config::Config;
use connector_core::plugin::{DevicePlugin, DeviceSpec, PluginError, PluginRegistry};
use connector_runtime::{loader, Lifecycle};
use platform_sim::{Command, Event, SimHandle};
use util::*;

/// The libraries the tests load, by cargo target name.
fn libraries() -> &'static BTreeMap<String, PathBuf> {
    static BUILT: OnceLock<BTreeMap<String, PathBuf>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let output = cargo_build()
            .args(["-p", "connector-test-plugins", "-p", "my-plugin", "--lib", "--examples"])
            .stderr(Stdio::inherit())
            .output()
            .expect("cargo runs");
        assert!(output.status.success(), "building the test plugin libraries failed");
        let mut built = BTreeMap::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if message["reason"] != "compiler-artifact" {
                continue;
            }
            let name = message["target"]["name"].as_str().unwrap_or_default().to_owned();
            let files = message["filenames"].as_array().cloned().unwrap_or_default();
            if let Some(file) = files
                .iter()
                .filter_map(|f| f.as_str())
                .find(|f| f.ends_with(std::env::consts::DLL_SUFFIX))
            {
                built.insert(name, PathBuf::from(file));
            }
        }
        built
    })
}

fn library(name: &str) -> PathBuf {
    libraries()
        .get(name)
        .unwrap_or_else(|| panic!("cargo built no library {name:?}: {:?}", libraries()))
        .clone()
}

/// A fresh file path under the system's temp dir.
fn scratch(name: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "dynamic-plugins-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A config for `sim` loading the test library, with `devices` YAML.
fn config_loading(sim: &SimHandle, devices: &str) -> Config {
    let mut config = config_for(sim, devices);
    config.plugins = vec![library("connector_test_plugins")];
    config
}

/// One line of a recorder's journal.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    instance: u64,
    device: String,
    call: String,
}

fn journal(path: &Path) -> Vec<Call> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(3, ' ');
            Call {
                instance: parts.next().unwrap().parse().unwrap(),
                device: parts.next().unwrap().to_owned(),
                call: parts.next().unwrap().to_owned(),
            }
        })
        .collect()
}

/// Checks that every instance of `device` in the journal lived in order:
/// created, started, commands, stopped, dropped, and nothing after its drop;
/// and that each instance was gone before the next one was created. Returns
/// how many instances there were.
fn assert_orderly_lives(calls: &[Call], device: &str) -> usize {
    let mine: Vec<&Call> = calls.iter().filter(|c| c.device == device).collect();
    let mut instances: Vec<u64> = Vec::new();
    for call in &mine {
        if !instances.contains(&call.instance) {
            instances.push(call.instance);
        }
    }
    for (i, instance) in instances.iter().enumerate() {
        let lives: Vec<&str> = mine
            .iter()
            .filter(|c| c.instance == *instance)
            .map(|c| c.call.as_str())
            .collect();
        assert_eq!(lives.first(), Some(&"create"), "{device} #{instance}: {lives:?}");
        assert!(
            !lives.contains(&"emit accepted after stop"),
            "{device} #{instance}: {lives:?}"
        );
        if let Some(stop) = lives.iter().position(|c| *c == "stop") {
            assert!(
                lives[stop..].iter().all(|c| !c.starts_with("command") && *c != "start"),
                "{device} #{instance} was called after stop: {lives:?}"
            );
        }
        let last_of_this = mine.iter().rposition(|c| c.instance == *instance).unwrap();
        if i + 1 < instances.len() {
            // Retired and destroyed before the next instance was made.
            assert_eq!(lives.last(), Some(&"drop"), "{device} #{instance}: {lives:?}");
            let next_create = mine.iter().position(|c| c.instance == instances[i + 1]).unwrap();
            assert!(last_of_this < next_create, "{device}: {mine:?}");
        }
    }
    instances.len()
}

async fn answer(sim: &SimHandle, device: &str, endpoint: &str, body: &str) -> String {
    let command = Command::new(device, endpoint).body(body);
    sim.command_and_wait(&command, DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("{device} answers {endpoint}: {e}"))
        .message
        .body
}

#[actix_rt::test]
async fn a_loaded_plugin_answers_commands_and_its_thread_events_arrive_in_order() {
    let sim = simulator().await;
    let journal_file = scratch("journal");
    let devices = format!(
        "  - {{ id: rec-1, type: recorder, name: Recorder, plugin: recorder, settings: {{ journal: {} }} }}\n",
        journal_file.display()
    );
    let connector = connected(&sim, config_loading(&sim, &devices)).await;

    assert_eq!(answer(&sim, "rec-1", "echo", "hello").await, "hello");
    assert_eq!(answer(&sim, "rec-1", "burst", "200").await, "bursting 200");
    eventually("200 burst events in order", || async {
        (event_bodies(&sim, "rec-1").await == numbered(0..200)).then_some(())
    })
    .await;
    let failed = answer(&sim, "rec-1", "fail", "on purpose").await;
    assert!(failed.contains("told to fail: on purpose"), "{failed}");
    assert_eq!(answer(&sim, "rec-1", "log", "a line").await, "logged");

    connector.shutdown(Duration::from_secs(2)).await;
    let calls = journal(&journal_file);
    assert_eq!(assert_orderly_lives(&calls, "rec-1"), 1);
    let lives: Vec<&str> = calls.iter().map(|c| c.call.as_str()).collect();
    assert_eq!(
        lives,
        [
            "create",
            "start",
            "command echo",
            "command burst",
            "command fail",
            "command log",
            "stop",
            "emit refused after stop",
            "drop"
        ]
    );
}

#[actix_rt::test]
async fn panics_in_create_command_and_a_plugin_thread_restart_only_that_device() {
    let sim = simulator().await;
    let journal_file = scratch("journal");
    let journal = journal_file.display();
    let devices = format!(
        "  - {{ id: shaky-start, type: t, name: S, plugin: panicky, settings: {{ journal: {journal}, panics_on_create: 1 }} }}\n\
         \x20 - {{ id: shaky, type: t, name: P, plugin: panicky, settings: {{ journal: {journal} }} }}\n\
         \x20 - {{ id: steady, type: t, name: R, plugin: recorder, settings: {{ journal: {journal} }} }}\n"
    );
    let connector = connected(&sim, config_loading(&sim, &devices)).await;
    let mut lifecycle = connector.subscribe();

    // Create panicked once; the restarted device works.
    eventually("shaky-start answers after its restart", || async {
        let command = Command::new("shaky-start", "echo").body("up");
        let reply = sim.command_and_wait(&command, DEADLINE).await.ok()?;
        (reply.message.body == "up").then_some(())
    })
    .await;

    // A panic in a command: the command is answered with it, the device restarts.
    let boom = answer(&sim, "shaky", "boom", "now").await;
    assert!(boom.contains("boom on command \\\"now\\\""), "{boom}");
    let restarted = |device: &'static str| move |event: &Lifecycle| matches!(event, Lifecycle::DeviceRestarted { device: d, .. } if d == device);
    let event = wait_event(&mut lifecycle, "shaky restarted after boom", restarted("shaky")).await;
    assert!(format!("{event:?}").contains("boom on command"), "{event:?}");
    wait_event(
        &mut lifecycle,
        "shaky started again",
        |e| matches!(e, Lifecycle::DeviceStarted { device } if device == "shaky"),
    )
    .await;

    // A panic in the plugin's own (SDK-spawned) thread: reported, restarted.
    assert_eq!(answer(&sim, "shaky", "boom-thread", "").await, "the worker will panic");
    let event = wait_event(
        &mut lifecycle,
        "shaky restarted after its thread died",
        restarted("shaky"),
    )
    .await;
    assert!(
        format!("{event:?}").contains("worker thread \\\"recorder\\\" panicked"),
        "{event:?}"
    );
    wait_event(
        &mut lifecycle,
        "shaky started again",
        |e| matches!(e, Lifecycle::DeviceStarted { device } if device == "shaky"),
    )
    .await;
    assert_eq!(answer(&sim, "shaky", "echo", "alive").await, "alive");

    // The other device went on all along, with one instance.
    assert_eq!(answer(&sim, "steady", "burst", "50").await, "bursting 50");
    eventually("steady's burst", || async {
        (event_bodies(&sim, "steady").await == numbered(0..50)).then_some(())
    })
    .await;
    connector.shutdown(Duration::from_secs(2)).await;

    let calls = self::journal(&journal_file);
    assert_eq!(assert_orderly_lives(&calls, "steady"), 1);
    assert_eq!(assert_orderly_lives(&calls, "shaky"), 3);
    // The instance whose create panicked never journaled; one instance remains.
    assert_eq!(assert_orderly_lives(&calls, "shaky-start"), 1);
}

#[actix_rt::test]
async fn no_plugin_function_is_called_after_its_device_was_destroyed() {
    let sim = simulator().await;
    let journal_file = scratch("journal");
    let devices = format!(
        "  - {{ id: gone, type: t, name: G, plugin: recorder, settings: {{ journal: {0} }} }}\n\
         \x20 - {{ id: kept, type: t, name: K, plugin: recorder, settings: {{ journal: {0} }} }}\n",
        journal_file.display()
    );
    let connector = connected(&sim, config_loading(&sim, &devices)).await;
    let mut lifecycle = connector.subscribe();
    assert_eq!(answer(&sim, "gone", "burst", "1000").await, "bursting 1000");

    let device = connector_core::Device::new("gone", "t", "G");
    connector.unregister(&device).await.unwrap();
    wait_event(
        &mut lifecycle,
        "gone stopped",
        |e| matches!(e, Lifecycle::DeviceStopped { device } if device == "gone"),
    )
    .await;
    let at_destroy = journal(&journal_file);
    // More traffic for the library after the destroy: commands to the
    // unregistered device and to its neighbour.
    let command = Command::new("gone", "echo").body("anyone?");
    let _ = sim.command_and_wait(&command, Duration::from_millis(300)).await;
    assert_eq!(answer(&sim, "kept", "echo", "yes").await, "yes");
    connector.shutdown(Duration::from_secs(2)).await;

    let gone = |calls: &[Call]| calls.iter().filter(|c| c.device == "gone").cloned().collect::<Vec<_>>();
    let calls = journal(&journal_file);
    assert_eq!(
        gone(&calls),
        gone(&at_destroy),
        "calls reached `gone` after its destroy"
    );
    assert_eq!(gone(&calls).last().map(|c| c.call.as_str()), Some("drop"));
    assert_orderly_lives(&calls, "gone");
    assert_orderly_lives(&calls, "kept");
}

/// Waits until `device` sent `count` responses, and returns them.
async fn wait_responses(sim: &SimHandle, device: &str, count: usize) -> Vec<Event> {
    eventually(&format!("{count} responses from {device}"), || async {
        let got = responses(sim, device).await;
        (got.len() >= count).then_some(got)
    })
    .await
}

#[actix_rt::test]
async fn deferred_replies_from_a_librarys_own_thread_reach_the_platform_with_their_task_ids() {
    let sim = simulator().await;
    let devices = "  - { id: def-1, type: t, name: D, plugin: deferred }\n";
    let connector = connected(&sim, config_loading(&sim, devices)).await;
    let mut lifecycle = connector.subscribe();

    // Five commands outstanding at once: the plugin holds them all, unanswered,
    // until `release` makes its thread answer them in order.
    let mut held = Vec::new();
    for i in 0..5 {
        let command = Command::new("def-1", "hold").body(format!("held {i}"));
        held.push((sim.send_command(&command).await.unwrap(), format!("held {i}")));
    }
    let release = sim
        .command_and_wait(&Command::new("def-1", "release"), DEADLINE)
        .await
        .expect("def-1 answers release");
    assert_eq!(release.message.body, "released 5");
    let answers = wait_responses(&sim, "def-1", 6).await;
    assert_eq!(answers.len(), 6, "one answer each: {answers:?}");
    let got: Vec<(String, String)> = answers[..5]
        .iter()
        .map(|a| (a.message.task_id.clone(), a.message.body.clone()))
        .collect();
    assert_eq!(got, held, "each held command answered with its own task id, in order");
    assert_eq!(answers[5].message.task_id, release.task_id);
    for answer in &answers {
        // Answered from the library's worker, named by the plugin.
        assert_eq!(answer.message.header, "deferred", "{answer:?}");
    }

    // Answers that trail their calls: all outstanding, all answered in order.
    let mut later = Vec::new();
    for i in 0..5 {
        let command = Command::new("def-1", "later").body(format!("later {i}"));
        later.push((sim.send_command(&command).await.unwrap(), format!("later {i}")));
    }
    let answers = wait_responses(&sim, "def-1", 11).await;
    let got: Vec<(String, String)> = answers[6..]
        .iter()
        .map(|a| (a.message.task_id.clone(), a.message.body.clone()))
        .collect();
    assert_eq!(got, later);

    // Errors travel the same way; a responder dropped unanswered still answers.
    let failed = answer(&sim, "def-1", "fail", "on purpose").await;
    assert!(failed.contains("deferred fails: on purpose"), "{failed}");
    let dropped = answer(&sim, "def-1", "drop", "").await;
    assert!(
        dropped.contains("dropped the command without answering it"),
        "{dropped}"
    );

    // A panic in command_deferred is the library's call failing: the command
    // is answered with it and the device restarts, as for `command`.
    let boom = answer(&sim, "def-1", "boom", "now").await;
    assert!(boom.contains("deferred boom on \\\"now\\\""), "{boom}");
    let event = wait_event(
        &mut lifecycle,
        "def-1 restarted after boom",
        |e| matches!(e, Lifecycle::DeviceRestarted { device, .. } if device == "def-1"),
    )
    .await;
    assert!(format!("{event:?}").contains("deferred boom on"), "{event:?}");
    eventually("def-1 answers after its restart", || async {
        let command = Command::new("def-1", "later").body("again");
        let reply = sim.command_and_wait(&command, DEADLINE).await.ok()?;
        (reply.message.body == "again").then_some(())
    })
    .await;
    connector.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn a_library_of_the_first_v1_layout_loads_without_a_warning_and_answers() {
    let path = library("old_abi");
    let old = loader::open(&path).expect("a library of the first v1 layout loads");
    assert_eq!(old.names(), ["old-echo"]);
    assert!(old.warnings().is_empty(), "{:?}", old.warnings());

    let sim = simulator().await;
    let mut config = config_for(&sim, "  - { id: old-1, type: t, name: O, plugin: old-echo }\n");
    config.plugins = vec![path];
    let connector = connected(&sim, config).await;
    // `start` emitted through the host's table, which it reads in its old length.
    eventually("old-1's started event", || async {
        (event_bodies(&sim, "old-1").await == ["old abi"]).then_some(())
    })
    .await;
    let reply = sim
        .command_and_wait(&Command::new("old-1", "echo").header("h").body("hello"), DEADLINE)
        .await
        .expect("old-1 answers");
    assert_eq!(
        (reply.message.header.as_str(), reply.message.body.as_str()),
        ("h", "hello")
    );
    let failed = answer(&sim, "old-1", "fail", "on purpose").await;
    assert!(failed.contains("old-echo fails: on purpose"), "{failed}");
    connector.shutdown(Duration::from_secs(2)).await;
}

#[test]
fn each_malformed_library_is_refused_with_its_own_message_before_any_plugin_code_runs() {
    // The malformed libraries' functions abort the process: reaching them
    // would end this test run instead of failing it.
    let table = [
        (library("bad_magic"), "is not a plugin declaration (magic number 0x"),
        (
            library("bad_abi_version"),
            "plugin ABI version 42, but this runtime speaks version 1",
        ),
        (
            library("short_declaration"),
            "its declaration is 16 bytes long, shorter than the",
        ),
        (
            library("truncated_declaration"),
            &format!(
                "its declaration is {} bytes long, shorter than the {} bytes of ABI version 1 at its smallest; \
                 rebuild it against connector-plugin-sdk {}",
                abi::DECLARATION_SIZE_V1_0 - 8,
                abi::DECLARATION_SIZE_V1_0,
                abi::API_VERSION
            ),
        ),
        (library("no_declaration"), "exports no `SEPL_PLUGIN_DECLARATION`"),
        (library("panic_abort"), "built with panic = \"abort\""),
        (scratch("libnothing-here.so"), "the file cannot be found or read"),
    ];
    let mut messages = Vec::new();
    for (path, fragment) in table {
        let message = loader::open(&path).unwrap_err().to_string();
        let named = format!("plugin library {}: ", path.display());
        assert!(message.starts_with(&named), "{message}");
        assert!(message.contains(fragment), "{message} lacks {fragment}");
        messages.push(message);
    }
    // Refusals are remembered: the file is not opened (nor inspected) twice.
    assert_eq!(
        loader::open(&library("bad_magic")).unwrap_err().to_string(),
        messages[0]
    );
    for message in &messages {
        println!("{message}");
    }
}

#[test]
fn a_library_is_opened_once_and_its_names_must_not_clash() {
    let path = library("connector_test_plugins");
    let first = loader::open(&path).unwrap();
    assert_eq!(first.names(), ["recorder", "panicky", "deferred"]);
    assert!(std::sync::Arc::ptr_eq(&first, &loader::open(&path).unwrap()));

    // Listed twice: the same library, no clash.
    let mut registry = PluginRegistry::new();
    loader::register_libraries(&mut registry, &[path.clone(), path.clone()]).unwrap();
    assert_eq!(
        registry.names().collect::<Vec<_>>(),
        ["deferred", "panicky", "recorder"]
    );

    // A compiled-in plugin of the same name: an error naming both.
    let mut registry = PluginRegistry::new();
    registry.register(
        "recorder",
        |_: &DeviceSpec| -> Result<Box<dyn DevicePlugin>, PluginError> { unreachable!("never created") },
    );
    let err = loader::register_libraries(&mut registry, &[path.clone(), scratch("libmissing.so")])
        .unwrap_err()
        .to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "every problem is reported: {err}");
    assert_eq!(
        lines[0],
        format!(
            "plugin library {}: provides plugin \"recorder\", but the compiled-in plugin \"recorder\" has that name already",
            path.display()
        )
    );
    assert!(lines[1].contains("libmissing.so: the file cannot be found"), "{err}");
}

fn check(yaml: &str) -> std::process::Output {
    let file = scratch("connector.yaml");
    std::fs::write(&file, yaml).unwrap();
    util::runtime_binary()
        .args(["--check", "--config"])
        .arg(&file)
        .output()
        .expect("the runtime runs")
}

#[test]
fn check_loads_the_users_plugin_library_and_refuses_a_missing_one_with_exit_2() {
    let my_plugin = library("my_plugin");
    let good = check(&format!(
        "plugins: [{}]\ndevices:\n  - {{ id: hall, type: thermostat, plugin: thermostat }}\n",
        my_plugin.display()
    ));
    let out = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{out}{}", String::from_utf8_lossy(&good.stderr));
    assert!(out.contains("OK (1 devices: hall)"), "{out}");

    let bad = check("plugins: [./libnot-built-yet.so]\ndevices:\n  - { id: hall, type: t, plugin: thermostat }\n");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(
        err.contains("libnot-built-yet.so: the file cannot be found or read"),
        "{err}"
    );

    let malformed = check(&format!("plugins: [{}]\n", library("bad_abi_version").display()));
    let err = String::from_utf8_lossy(&malformed.stderr);
    assert_eq!(malformed.status.code(), Some(2), "{err}");
    assert!(err.contains("plugin ABI version 42"), "{err}");
}

#[test]
fn the_my_plugin_config_loads_the_release_library_built_next_to_the_workspace() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let config = Config::load(dir.join("my-plugin.yaml")).expect("config/my-plugin.yaml is valid");
    assert_eq!(config.plugins.len(), 1);
    let library = &config.plugins[0];
    assert!(
        library.starts_with(&dir),
        "resolved against the file's directory: {library:?}"
    );
    assert!(library.ends_with("../target/release/libmy_plugin.so"), "{library:?}");
    assert!(config.devices.iter().all(|d| d.plugin == "thermostat"));
}

/// `config/my-plugin.yaml --embedded-platform`, with the library this test
/// built in place of the release one: the demo driver's commands go to an
/// endpoint the thermostat knows, so they are answered, not warned about.
#[test]
fn the_my_plugin_config_with_the_embedded_platform_gets_answers_not_unknown_endpoint_warnings() {
    use std::io::{BufRead, BufReader};
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/my-plugin.yaml"))
        .expect("config/my-plugin.yaml reads");
    let release = "../target/release/libmy_plugin.so";
    assert!(shipped.contains(release), "the file names {release}");
    let config = scratch("my-plugin.yaml");
    std::fs::write(
        &config,
        shipped.replace(release, &library("my_plugin").display().to_string()),
    )
    .unwrap();
    let mut child = util::runtime_binary()
        .arg("--config")
        .arg(&config)
        .args(["--embedded-platform", "--demo-interval", "0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the runtime starts");
    let (tx, lines) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Three answers: the first is no accident of start-up order.
    let mut log = Vec::new();
    let mut answers = 0;
    while answers < 3 {
        let Ok(line) = lines.recv_timeout(Duration::from_secs(60)) else {
            break;
        };
        if line.contains("got the answer") && line.contains("device_id=hall-thermostat") {
            answers += 1;
        }
        log.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    log.extend(lines.iter());
    let log = log.join("\n");
    assert_eq!(answers, 3, "the thermostat did not answer the demo:\n{log}");
    // `get` answers the configured target.
    assert!(log.contains("answer=21.5"), "{log}");
    assert!(!log.contains("unknown endpoint"), "{log}");
}
