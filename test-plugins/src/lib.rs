//! A plugin library for the runtime's tests, built as a `cdylib` and loaded
//! like a user's: the plugin types `recorder`, `panicky` and `deferred`.
//!
//! Both journal every call they get to the file named in `settings.journal`
//! (`<instance> <device> <call>` per line), so a test can check which calls
//! reached the library and in which order. A worker thread emits numbered
//! `burst` events on command. `panicky` also panics where told: in `create`
//! (the first `panics_on_create` times per device), on the `boom` command,
//! and in its worker on `boom-thread`.
//!
//! `deferred` answers through [`DevicePlugin::command_deferred`] from a
//! worker thread of its own, several commands at once; see [`Deferred`].
//!
//! The malformed libraries, and one of an older ABI layout, are this
//! package's examples (`examples/`).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use connector_plugin_sdk::{
    export_plugins, log, spawn_worker, DevicePlugin, DeviceSpec, EventSink, Level, Message, PluginError, Reply,
    Responder,
};
use serde::Deserialize;

export_plugins! {
    "recorder" => create_recorder,
    "panicky" => create_panicky,
    "deferred" => create_deferred,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// Where calls are journaled; none: not journaled.
    journal: Option<PathBuf>,
    /// `panicky` only: `create` panics this many times for the device first.
    panics_on_create: u32,
}

/// Numbers the instances, so the journal tells a restarted device's
/// instances apart.
static INSTANCES: AtomicU64 = AtomicU64::new(1);
/// How often `create` has panicked so far, by device id.
static CREATE_PANICS: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());

fn create_recorder(spec: &DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> {
    Ok(Box::new(Recorder::new(spec, false)?))
}

fn create_panicky(spec: &DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> {
    let settings: Settings = spec.settings()?;
    let mut panics = CREATE_PANICS.lock().unwrap_or_else(|e| e.into_inner());
    let count = panics.entry(spec.id().to_owned()).or_default();
    if *count < settings.panics_on_create {
        *count += 1;
        drop(panics);
        panic!("panicky create #{}", INSTANCES.load(Ordering::Relaxed));
    }
    drop(panics);
    Ok(Box::new(Recorder::new(spec, true)?))
}

enum Job {
    Burst(u32),
    Panic,
}

struct Recorder {
    instance: u64,
    device: String,
    journal: Option<PathBuf>,
    panicky: bool,
    worker: Option<(mpsc::Sender<Job>, JoinHandle<()>)>,
}

impl Recorder {
    fn new(spec: &DeviceSpec, panicky: bool) -> Result<Self, PluginError> {
        let settings: Settings = spec.settings()?;
        let recorder = Recorder {
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
            device: spec.id().to_owned(),
            journal: settings.journal,
            panicky,
            worker: None,
        };
        recorder.note("create");
        Ok(recorder)
    }

    fn note(&self, call: &str) {
        journal(self.journal.as_ref(), self.instance, &self.device, call);
    }
}

/// Held while a line is written: devices sharing a journal call from
/// several pool threads at once, and `writeln!` on a file may take several
/// writes, which would interleave into torn lines.
static JOURNAL: Mutex<()> = Mutex::new(());

fn journal(path: Option<&PathBuf>, instance: u64, device: &str, call: &str) {
    if let Some(path) = path {
        let line = format!("{instance} {device} {call}\n");
        let _one_at_a_time = JOURNAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("the journal opens");
        file.write_all(line.as_bytes()).expect("the journal takes a line");
    }
}

impl DevicePlugin for Recorder {
    fn start(&mut self, events: EventSink) -> Result<(), PluginError> {
        self.note("start");
        let (jobs, inbox) = mpsc::channel();
        let (journal_path, instance, device) = (self.journal.clone(), self.instance, self.device.clone());
        let sink = events.clone();
        let worker = spawn_worker(&events, "recorder", move || {
            for job in inbox {
                match job {
                    Job::Burst(count) => {
                        for i in 0..count {
                            if sink.emit("burst", i.to_string()).is_err() {
                                break;
                            }
                        }
                    }
                    Job::Panic => panic!("the worker was told to panic"),
                }
            }
            // The sender is gone: `stop` runs. Events are refused by now.
            let after = match sink.emit("after-stop", "late") {
                Ok(()) => "emit accepted after stop",
                Err(_) => "emit refused after stop",
            };
            journal(journal_path.as_ref(), instance, &device, after);
        })
        .map_err(|e| PluginError::new(format!("cannot start the worker: {e}")))?;
        self.worker = Some((jobs, worker));
        Ok(())
    }

    fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
        self.note(&format!("command {}", command.endpoint));
        let send = |job| {
            let (jobs, _) = self.worker.as_ref().ok_or_else(|| PluginError::new("not started"))?;
            jobs.send(job).map_err(|_| PluginError::new("the worker is gone"))
        };
        match command.endpoint.as_str() {
            "echo" => Ok(Reply::body(command.payload.clone()).with_header(command.payload_header.clone())),
            "burst" => {
                let count = command
                    .payload
                    .trim()
                    .parse()
                    .map_err(|_| PluginError::new(format!("not a count: {:?}", command.payload)))?;
                send(Job::Burst(count))?;
                Ok(Reply::body(format!("bursting {count}")))
            }
            "fail" => Err(PluginError::new(format!("told to fail: {}", command.payload))),
            "log" => {
                log(Level::Info, format_args!("recorder logs {}", command.payload));
                Ok(Reply::body("logged"))
            }
            "boom" if self.panicky => panic!("boom on command {:?}", command.payload),
            "boom-thread" if self.panicky => {
                send(Job::Panic)?;
                Ok(Reply::body("the worker will panic"))
            }
            other => Err(PluginError::new(format!("unknown endpoint {other:?}"))),
        }
    }

    fn stop(&mut self) {
        self.note("stop");
        if let Some((jobs, worker)) = self.worker.take() {
            drop(jobs);
            // A worker that panicked has ended already; its panic was reported.
            let _ = worker.join();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.note("drop");
    }
}

fn create_deferred(spec: &DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> {
    let _: Settings = spec.settings()?;
    Ok(Box::new(Deferred { worker: None }))
}

/// What `deferred`'s worker is told, each with the command's responder.
enum Task {
    /// Answer with this body after a short sleep.
    Later(String, Responder),
    /// Keep the command unanswered until `Release`.
    Hold(String, Responder),
    /// Answer every held command, oldest first, then this one.
    Release(Responder),
    /// Answer with this error.
    Fail(String, Responder),
}

/// Answers every command from its worker thread, in the order the commands
/// came, with the thread's name as the reply's header:
///
/// - `later`: the body, after a short sleep (so replies trail the calls);
/// - `hold`: nothing yet; `release` answers every held command with its
///   body, oldest first, then itself with `released <count>`;
/// - `fail`: an error with the body.
///
/// And in the call itself: `drop` drops the responder unanswered, `boom`
/// panics. A command before `start` is refused.
pub struct Deferred {
    worker: Option<(mpsc::Sender<Task>, JoinHandle<()>)>,
}

/// How long `later` waits before it answers: short, since nothing depends on it.
const LATER: Duration = Duration::from_millis(20);

impl DevicePlugin for Deferred {
    fn start(&mut self, events: EventSink) -> Result<(), PluginError> {
        let (tasks, inbox) = mpsc::channel();
        let worker = spawn_worker(&events, "deferred", move || {
            let me = std::thread::current().name().unwrap_or_default().to_owned();
            let answer = |responder: Responder, body: String| responder.reply(Reply::body(body).with_header(&me));
            let mut held = Vec::new();
            for task in inbox {
                match task {
                    Task::Later(body, responder) => {
                        std::thread::sleep(LATER);
                        answer(responder, body);
                    }
                    Task::Hold(body, responder) => held.push((body, responder)),
                    Task::Release(responder) => {
                        let count = held.len();
                        for (body, held) in held.drain(..) {
                            answer(held, body);
                        }
                        answer(responder, format!("released {count}"));
                    }
                    Task::Fail(text, responder) => responder.error(format!("deferred fails: {text}")),
                }
            }
            // `stop` dropped the sender; responders still held are dropped
            // here and answer with an error of their own.
        })
        .map_err(|e| PluginError::new(format!("cannot start the worker: {e}")))?;
        self.worker = Some((tasks, worker));
        Ok(())
    }

    fn command_deferred(&mut self, command: &Message, reply: Responder) {
        let Some((tasks, _)) = &self.worker else {
            return reply.error("not started");
        };
        let body = command.payload.clone();
        let task = match command.endpoint.as_str() {
            "later" => Task::Later(body, reply),
            "hold" => Task::Hold(body, reply),
            "release" => Task::Release(reply),
            "fail" => Task::Fail(body, reply),
            "drop" => return drop(reply),
            "boom" => panic!("deferred boom on {:?}", command.payload),
            other => return reply.error(format!("unknown endpoint {other:?}")),
        };
        // A worker that is gone gives the task back, whose responder then
        // answers with the "dropped" error.
        let _ = tasks.send(task);
    }

    fn stop(&mut self) {
        if let Some((jobs, worker)) = self.worker.take() {
            drop(jobs);
            let _ = worker.join();
        }
    }
}
