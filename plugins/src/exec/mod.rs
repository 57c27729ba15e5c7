//! `exec`: device logic in any language, the way the original client's users
//! wrote Python. A command runs a program; a long-running program's output
//! lines are the device's events. Declared in `connector.yaml`, no Rust.
//!
//! # Settings
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `command` | none | the program run for each command: a list `[program, arg, ...]`, run without a shell |
//! | `commands` | none | a program per endpoint (`{set: [...], get: [...]}`), used instead of `command` for those |
//! | `events` | none | a program that runs as long as the device; each line it prints is an event |
//! | `env` | none | extra environment variables for the programs (a mapping) |
//! | `dir` | the connector's | working directory of the programs; a relative program path starts here |
//! | `max_reply_bytes` | `1048576` | most bytes of output taken as a reply; more is an error reply |
//! | `restart_initial_ms` | `1000` | first delay before an ended `events` program starts again; above 0 |
//! | `restart_max_ms` | `60000` | longest such delay (it doubles, with jitter); at least `restart_initial_ms` |
//!
//! At least one of `command`, `commands` and `events` is needed. Each
//! program must exist when the device is created, so `--check` names a
//! missing one.
//!
//! # Commands
//!
//! The command's body is the program's stdin; `CONNECTOR_DEVICE_ID`,
//! `CONNECTOR_ENDPOINT`, `CONNECTOR_TASK_ID` and `CONNECTOR_HEADER` (the
//! payload header) are in its environment, which is the connector's less
//! `CONNECTOR_PASSWORD`, plus `env`. What it prints on stdout is the
//! reply (one trailing newline removed). A non-zero exit is an error reply
//! with the end of its stderr. A program still running when the device's
//! `command_timeout_ms` passes is killed with its whole process group; the
//! platform has had its error reply by then.
//!
//! # Events
//!
//! The `events` program gets `CONNECTOR_DEVICE_ID`. Each line on its stdout
//! is one event: `endpoint body` (the body is the rest of the line) or a
//! JSON object `{"endpoint": "...", "body": ...}` (a body that is not text
//! is sent as its JSON). Blank lines are skipped; any other line is logged
//! as not an event and skipped. Its stderr lines go to the log. When it
//! exits it is started again after a back-off; when the device stops it is
//! killed with its process group. It has a thread of its own while it runs.
//!
//! # Example
//!
//! ```yaml
//! devices:
//!   - id: plug-1
//!     type: smart-plug
//!     plugin: exec
//!     settings:
//!       command: [python3, examples/python-device/plug.py, command]
//!       events: [python3, examples/python-device/plug.py, watch]
//! ```

mod events;
mod run;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use connector_core::backoff::Backoff;
use connector_core::plugin::{DevicePlugin, DeviceSpec, EventSink, PluginError, Reply};
use connector_core::Message;
use serde::Deserialize;

use crate::settings::{above_zero, refusal};
use events::EventsProgram;
pub use events::{parse_line, LineEvent, MAX_LINE_BYTES};
use run::Outcome;

pub const NAME: &str = "exec";

/// Default of `max_reply_bytes`: 1 MiB.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 1024 * 1024;
/// Default of `restart_initial_ms`.
pub const DEFAULT_RESTART_INITIAL_MS: u64 = 1_000;
/// Default of `restart_max_ms`.
pub const DEFAULT_RESTART_MAX_MS: u64 = 60_000;

/// The `settings:` of an `exec` device; the module doc lists them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub command: Option<Argv>,
    #[serde(default)]
    pub commands: BTreeMap<String, Argv>,
    #[serde(default)]
    pub events: Option<Argv>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub dir: Option<PathBuf>,
    #[serde(default = "default_max_reply_bytes", deserialize_with = "above_zero")]
    pub max_reply_bytes: usize,
    #[serde(default = "default_restart_initial_ms", deserialize_with = "above_zero")]
    pub restart_initial_ms: u64,
    #[serde(default = "default_restart_max_ms", deserialize_with = "above_zero")]
    pub restart_max_ms: u64,
}

fn default_max_reply_bytes() -> usize {
    DEFAULT_MAX_REPLY_BYTES
}

fn default_restart_initial_ms() -> u64 {
    DEFAULT_RESTART_INITIAL_MS
}

fn default_restart_max_ms() -> u64 {
    DEFAULT_RESTART_MAX_MS
}

/// A program and its arguments, as a non-empty list.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct Argv(Vec<String>);

impl TryFrom<Vec<String>> for Argv {
    type Error = String;

    fn try_from(argv: Vec<String>) -> Result<Self, String> {
        match argv.first() {
            None => Err("must name a program: [program, arg, ...]".to_owned()),
            Some(program) if program.is_empty() => Err("the program (first entry) must not be empty".to_owned()),
            Some(_) => Ok(Argv(argv)),
        }
    }
}

impl Argv {
    pub fn program(&self) -> &str {
        &self.0[0]
    }

    fn args(&self) -> &[String] {
        &self.0[1..]
    }
}

/// An `exec` device.
pub struct Exec {
    device_id: String,
    settings: Settings,
    command_timeout: Duration,
    events: Option<EventsProgram>,
}

/// Creates an `exec` device from its config entry: the settings must fit
/// and every program must be found.
pub fn create(spec: &DeviceSpec) -> Result<Box<dyn DevicePlugin>, PluginError> {
    let settings: Settings = spec.settings()?;
    let refuse = |key: &str, why: String| refusal(spec, key, why);
    if settings.command.is_none() && settings.commands.is_empty() && settings.events.is_none() {
        return Err(refuse(
            "command",
            "missing: set `command`, `commands` or `events`, or the device does nothing".to_owned(),
        ));
    }
    if settings.restart_max_ms < settings.restart_initial_ms {
        return Err(refuse(
            "restart_max_ms",
            format!("must be at least restart_initial_ms ({})", settings.restart_initial_ms),
        ));
    }
    if let Some(dir) = &settings.dir {
        if !dir.is_dir() {
            return Err(refuse("dir", format!("{} is not a directory", dir.display())));
        }
    }
    let dir = settings.dir.as_deref();
    let named = settings
        .command
        .iter()
        .map(|argv| ("command".to_owned(), argv))
        .chain(
            settings
                .commands
                .iter()
                .map(|(e, argv)| (format!("commands.{e}"), argv)),
        )
        .chain(settings.events.iter().map(|argv| ("events".to_owned(), argv)));
    for (key, argv) in named {
        find_program(argv.program(), dir).map_err(|why| refuse(&key, why))?;
    }
    Ok(Box::new(Exec {
        device_id: spec.id().to_owned(),
        settings,
        command_timeout: spec.command_timeout(),
        events: None,
    }))
}

impl Exec {
    fn program(&self, argv: &Argv) -> Command {
        let mut command = Command::new(argv.program());
        // The connector's own secret is not the device's business; `env:`
        // can still hand a program what it needs.
        command.env_remove(connector_core::config::ENV_PASSWORD);
        command.args(argv.args()).envs(&self.settings.env);
        command.env("CONNECTOR_DEVICE_ID", &self.device_id);
        if let Some(dir) = &self.settings.dir {
            command.current_dir(dir);
        }
        command
    }
}

impl DevicePlugin for Exec {
    fn start(&mut self, events: EventSink) -> Result<(), PluginError> {
        let Some(argv) = self.settings.events.clone() else {
            return Ok(());
        };
        let template = self.program(&argv);
        let make = move || clone_command(&template);
        let backoff = Backoff::new(
            Duration::from_millis(self.settings.restart_initial_ms),
            Duration::from_millis(self.settings.restart_max_ms),
        );
        let label = format!("`{}`", argv.program());
        let program = EventsProgram::start(make, label, events, backoff)
            .map_err(|e| PluginError::new(format!("cannot start the events thread: {e}")))?;
        self.events = Some(program);
        Ok(())
    }

    fn command(&mut self, command: &Message) -> Result<Reply, PluginError> {
        let deadline = Instant::now() + self.command_timeout;
        let argv = match self
            .settings
            .commands
            .get(&command.endpoint)
            .or(self.settings.command.as_ref())
        {
            Some(argv) => argv.clone(),
            None => {
                return Err(PluginError::new(format!(
                    "no program for endpoint {:?}: set `command`, or `commands.{}`",
                    command.endpoint, command.endpoint
                )))
            }
        };
        let mut program = self.program(&argv);
        program
            .env("CONNECTOR_ENDPOINT", &command.endpoint)
            .env("CONNECTOR_TASK_ID", &command.task_id)
            .env("CONNECTOR_HEADER", &command.payload_header);
        let name = argv.program();
        let outcome = run::run(
            program,
            command.payload.as_bytes(),
            self.settings.max_reply_bytes,
            deadline,
        )
        .map_err(|e| PluginError::new(format!("cannot run `{name}`: {e}")))?;
        match outcome {
            Outcome::Exited { overflowed: true, .. } => Err(PluginError::new(format!(
                "`{name}` printed more than max_reply_bytes ({})",
                self.settings.max_reply_bytes
            ))),
            Outcome::Exited { status, stdout, .. } if status.success() => {
                let mut reply = String::from_utf8_lossy(&stdout).into_owned();
                if reply.ends_with('\n') {
                    reply.pop();
                    if reply.ends_with('\r') {
                        reply.pop();
                    }
                }
                Ok(Reply::body(reply))
            }
            Outcome::Exited {
                status, stderr_tail, ..
            } => Err(PluginError::new(format!(
                "`{name}` failed ({status}){}",
                said(&stderr_tail)
            ))),
            Outcome::TimedOut { stderr_tail } => Err(PluginError::new(format!(
                "`{name}` was still running after {} ms and was killed{}",
                self.command_timeout.as_millis(),
                said(&stderr_tail)
            ))),
        }
    }

    fn stop(&mut self) {
        if let Some(mut events) = self.events.take() {
            events.stop();
        }
    }
}

fn said(stderr_tail: &str) -> String {
    if stderr_tail.is_empty() {
        String::new()
    } else {
        format!(": {stderr_tail}")
    }
}

/// A fresh `Command` with `template`'s program, arguments, environment and
/// directory, for each start of the events program.
fn clone_command(template: &Command) -> Command {
    let mut command = Command::new(template.get_program());
    command.args(template.get_args());
    for (key, value) in template.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    if let Some(dir) = template.get_current_dir() {
        command.current_dir(dir);
    }
    command
}

/// Whether `program` can be started: a path (with a `/`) must be an
/// executable file, relative to `dir` when given; a bare name must be on
/// `PATH`.
fn find_program(program: &str, dir: Option<&Path>) -> Result<(), String> {
    if program.contains('/') {
        let path = match dir {
            Some(dir) if Path::new(program).is_relative() => dir.join(program),
            _ => PathBuf::from(program),
        };
        return match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() && is_executable(&meta) => Ok(()),
            Ok(_) => Err(format!("{} is not an executable file", path.display())),
            Err(e) => Err(format!("cannot run {}: {e}", path.display())),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .any(|dir| std::fs::metadata(dir.join(program)).is_ok_and(|meta| meta.is_file() && is_executable(&meta)));
    if found {
        Ok(())
    } else {
        Err(format!("program `{program}` not found on PATH"))
    }
}

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_: &std::fs::Metadata) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(settings: serde_json::Value) -> DeviceSpec {
        DeviceSpec::new("x-1", "t", "X")
            .with_plugin(NAME)
            .with_settings(settings)
    }

    fn refusal(settings: serde_json::Value) -> String {
        crate::settings::refused(create, &spec(settings))
    }

    #[test]
    fn settings_that_cannot_work_are_refused_naming_the_key() {
        let not_executable = std::env::temp_dir().join(format!("exec-test-plain-{}.txt", std::process::id()));
        std::fs::write(&not_executable, "just text").unwrap();
        let plain = not_executable.display().to_string();
        for (settings, want) in [
            (json!({}), "`settings.command`: missing"),
            (json!({"command": []}), "`settings.command`: must name a program"),
            (json!({"command": [""]}), "must not be empty"),
            (
                json!({"command": ["no-such-program-here"]}),
                "`settings.command`: program `no-such-program-here` not found on PATH",
            ),
            (
                json!({"commands": {"set": ["./nope.py"]}}),
                "`settings.commands.set`: cannot run ./nope.py",
            ),
            (json!({"events": [&plain]}), "is not an executable file"),
            (
                json!({"command": ["sh"], "dir": "/no/such/dir"}),
                "`settings.dir`: /no/such/dir is not a directory",
            ),
            (json!({"command": ["sh"], "restart_initial_ms": 0}), "must be above 0"),
            (
                json!({"command": ["sh"], "restart_initial_ms": 5000, "restart_max_ms": 10}),
                "`settings.restart_max_ms`: must be at least",
            ),
            (json!({"command": "sh"}), "invalid type: string"),
            (json!({"command": ["sh"], "colour": 1}), "unknown field `colour`"),
        ] {
            let err = refusal(settings.clone());
            assert!(err.contains(want), "{settings}: {err}");
            assert!(err.starts_with("device \"x-1\""), "{err}");
        }
        std::fs::remove_file(&not_executable).unwrap();
    }

    #[test]
    fn a_command_runs_with_the_body_on_stdin_and_the_message_in_its_environment() {
        let script = "printf '%s|%s|%s|%s|' \"$CONNECTOR_DEVICE_ID\" \"$CONNECTOR_ENDPOINT\" \"$CONNECTOR_TASK_ID\" \"$GREETING\"; cat; echo";
        let mut device = create(&spec(
            json!({"command": ["sh", "-c", script], "env": {"GREETING": "hi"}}),
        ))
        .unwrap();
        let message = Message {
            endpoint: "set".into(),
            task_id: "t-9".into(),
            payload: "on".into(),
            ..Message::default()
        };
        assert_eq!(device.command(&message).unwrap(), Reply::body("x-1|set|t-9|hi|on"));
    }

    #[test]
    fn each_endpoint_may_have_its_own_program() {
        let settings = json!({"command": ["echo", "default"], "commands": {"get": ["echo", "got"]}});
        let mut device = create(&spec(settings)).unwrap();
        let at = |endpoint: &str| Message {
            endpoint: endpoint.into(),
            ..Message::default()
        };
        assert_eq!(device.command(&at("get")).unwrap(), Reply::body("got"));
        assert_eq!(device.command(&at("set")).unwrap(), Reply::body("default"));
        let mut only_get = create(&spec(json!({"commands": {"get": ["echo", "got"]}}))).unwrap();
        let err = only_get.command(&at("set")).unwrap_err().to_string();
        assert!(err.contains("no program for endpoint \"set\""), "{err}");
    }

    #[test]
    fn a_failing_program_is_an_error_with_its_status_and_the_end_of_stderr() {
        let script = "echo 'relay 2 does not answer' >&2; exit 4";
        let mut device = create(&spec(json!({"command": ["sh", "-c", script]}))).unwrap();
        let err = device.command(&Message::default()).unwrap_err().to_string();
        assert!(
            err.contains("`sh` failed (exit status: 4): relay 2 does not answer"),
            "{err}"
        );
    }

    #[test]
    fn too_much_output_is_an_error_not_a_truncated_reply() {
        let settings = json!({"command": ["head", "-c", "100", "/dev/zero"], "max_reply_bytes": 10});
        let mut device = create(&spec(settings)).unwrap();
        let err = device.command(&Message::default()).unwrap_err().to_string();
        assert!(err.contains("more than max_reply_bytes (10)"), "{err}");
    }
}
