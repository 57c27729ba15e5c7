//! A device's long-running `events` program: each line it prints is an
//! event; it is started again with back-off when it exits, and stopped (with
//! its process group) when the device stops.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use connector_core::backoff::Backoff;
use connector_core::plugin::EventSink;
use tracing::{info, warn};

use super::run::kill_group;

/// Longest line read as one event; a longer one is dropped with a warning.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// A program that ran this long before it exited starts again after the
/// shortest delay: it was working, not failing over and over.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// How long `stop` waits for the supervisor after the kill. A program that
/// left its process group can hold the pipes open; the device's stop does
/// not wait for that.
const STOP_WAIT: Duration = Duration::from_secs(5);
/// Most characters of a stderr line put in the log.
const LOG_LINE_CHARS: usize = 500;

/// What the device's supervisor thread and `stop` share.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    stopping: bool,
    /// The running program's pid, for `stop` to kill its group.
    running: Option<u32>,
}

/// The running `events` program of one device, with its supervisor thread.
pub struct EventsProgram {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl EventsProgram {
    /// Starts `make()`'s program now and again whenever it exits, until
    /// [`EventsProgram::stop`]. `label` names it in log lines.
    pub fn start(
        make: impl Fn() -> Command + Send + 'static,
        label: String,
        sink: EventSink,
        mut backoff: Backoff,
    ) -> std::io::Result<EventsProgram> {
        let shared = Arc::new(Shared::default());
        let inner = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("exec-events-{}", sink.device_id()))
            .spawn(move || loop {
                let started = Instant::now();
                let ended = match spawn(make(), &inner) {
                    Ok(child) => supervise(child, &label, &sink, &inner),
                    Err(e) => format!("could not start: {e}"),
                };
                if started.elapsed() >= HEALTHY_RUN {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                let state = lock(&inner.state);
                if state.stopping {
                    return;
                }
                warn!(device_id = %sink.device_id(), "events program {label} {ended}; starting it again in {} ms", delay.as_millis());
                let (state, _) = inner
                    .wake
                    .wait_timeout_while(state, delay, |state| !state.stopping)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if state.stopping {
                    return;
                }
            })?;
        Ok(EventsProgram {
            shared,
            thread: Some(thread),
        })
    }

    /// Kills the program's process group and ends the supervisor.
    pub fn stop(&mut self) {
        {
            // Under the lock: while `running` names it, the child is not
            // reaped yet, so its pid is still its own.
            let mut state = lock(&self.shared.state);
            state.stopping = true;
            if let Some(pid) = state.running.take() {
                kill_pid_group(pid);
            }
        }
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let deadline = std::time::Instant::now() + STOP_WAIT;
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                warn!("an events program's output is still open {} s after the kill (a child that left its process group?); its reader is left behind", STOP_WAIT.as_secs());
            }
        }
    }
}

impl Drop for EventsProgram {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(mut command: Command, shared: &Shared) -> std::io::Result<Child> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    // Under the lock, so a `stop` either sees the pid or stops the start.
    let mut state = lock(&shared.state);
    if state.stopping {
        return Err(std::io::Error::other("the device is stopping"));
    }
    let child = command.spawn()?;
    state.running = Some(child.id());
    Ok(child)
}

/// Reads the program's lines into events until it closes its output, then
/// reaps it; says how it ended.
fn supervise(mut child: Child, label: &str, sink: &EventSink, shared: &Shared) -> String {
    let device = sink.device_id().to_owned();
    // stderr is for people: each line goes to the log under the device.
    let stderr = child.stderr.take().map(|stderr| {
        let (device, label) = (device.clone(), label.to_owned());
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match read_line(&mut reader, &mut line) {
                    Ok(Line::Read) => {
                        let text = String::from_utf8_lossy(&line);
                        let shown: String = text.trim_end().chars().take(LOG_LINE_CHARS).collect();
                        info!(device_id = %device, "events program {label}: {shown}");
                    }
                    Ok(Line::TooLong) => {}
                    Ok(Line::End) | Err(_) => return,
                }
            }
        })
    });
    if let Some(stdout) = child.stdout.take() {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match read_line(&mut reader, &mut line) {
                Ok(Line::End) | Err(_) => break,
                Ok(Line::TooLong) => {
                    warn!(device_id = %device, "events program {label} printed a line over {MAX_LINE_BYTES} bytes; it was dropped");
                }
                Ok(Line::Read) => {
                    let text = String::from_utf8_lossy(&line);
                    match parse_line(text.trim_end_matches(['\n', '\r'])) {
                        Ok(None) => {}
                        Ok(Some(event)) => {
                            if sink.emit(event.endpoint, event.body).is_err() {
                                // The device is stopping: no new program.
                                lock(&shared.state).stopping = true;
                                break;
                            }
                        }
                        Err(why) => {
                            let shown: String = text.trim_end().chars().take(200).collect();
                            warn!(device_id = %device, "events program {label} printed a line that is not an event ({why}): {shown:?}");
                        }
                    }
                }
            }
        }
    }
    // Its output is closed: it has ended, or will be made to.
    lock(&shared.state).running = None;
    kill_group(&mut child);
    if let Some(thread) = stderr {
        let _ = thread.join();
    }
    match child.try_wait() {
        Ok(Some(status)) => format!("ended ({status})"),
        _ => "ended".to_owned(),
    }
}

/// An event read from one line.
#[derive(Debug, PartialEq, Eq)]
pub struct LineEvent {
    pub endpoint: String,
    pub body: String,
}

/// Reads one line as an event: `endpoint body` (the body is the rest of the
/// line, possibly empty) or a JSON object with `endpoint` and `body` (a
/// string, or any JSON value sent as its text). A blank line is no event.
pub fn parse_line(line: &str) -> Result<Option<LineEvent>, String> {
    let line = line.trim_start();
    if line.trim().is_empty() {
        return Ok(None);
    }
    if line.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
        let endpoint = match value.get("endpoint") {
            Some(serde_json::Value::String(endpoint)) if !endpoint.is_empty() => endpoint.clone(),
            _ => return Err("a JSON event needs an `endpoint` text".to_owned()),
        };
        let body = match value.get("body") {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(body)) => body.clone(),
            Some(other) => other.to_string(),
        };
        return Ok(Some(LineEvent { endpoint, body }));
    }
    let (endpoint, body) = line.split_once([' ', '\t']).unwrap_or((line, ""));
    Ok(Some(LineEvent {
        endpoint: endpoint.to_owned(),
        body: body.to_owned(),
    }))
}

enum Line {
    Read,
    TooLong,
    End,
}

/// One line into `buf`, newline included; a line over [`MAX_LINE_BYTES`]
/// is read to its end and thrown away.
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Line> {
    let limit = MAX_LINE_BYTES as u64 + 1;
    if reader.by_ref().take(limit).read_until(b'\n', buf)? == 0 {
        return Ok(Line::End);
    }
    if buf.ends_with(b"\n") || buf.len() <= MAX_LINE_BYTES {
        return Ok(Line::Read);
    }
    let mut rest = Vec::new();
    loop {
        rest.clear();
        let n = reader.by_ref().take(64 * 1024).read_until(b'\n', &mut rest)?;
        if n == 0 || rest.ends_with(b"\n") {
            return Ok(Line::TooLong);
        }
    }
}

fn kill_pid_group(pid: u32) {
    #[cfg(unix)]
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) on the program's own process group (it was
        // started with process_group(0)); no memory is touched.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_as_events_in_both_forms() {
        let table: &[(&str, Option<(&str, &str)>)] = &[
            ("temperature 21.5", Some(("temperature", "21.5"))),
            ("motion", Some(("motion", ""))),
            ("state {\"on\": true}", Some(("state", "{\"on\": true}"))),
            ("  \t ", None),
            ("", None),
            (r#"{"endpoint": "t", "body": "21"}"#, Some(("t", "21"))),
            (r#"{"endpoint": "t", "body": {"v": 21}}"#, Some(("t", "{\"v\":21}"))),
            (r#"{"endpoint": "t"}"#, Some(("t", ""))),
        ];
        for (line, want) in table {
            let got = parse_line(line).unwrap();
            let want = want.map(|(endpoint, body)| LineEvent {
                endpoint: endpoint.into(),
                body: body.into(),
            });
            assert_eq!(got, want, "{line:?}");
        }
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        for (line, why) in [
            ("{not json", "not valid JSON"),
            (r#"{"body": 1}"#, "needs an `endpoint`"),
            (r#"{"endpoint": 5}"#, "needs an `endpoint`"),
        ] {
            let err = parse_line(line).unwrap_err();
            assert!(err.contains(why), "{line}: {err}");
        }
    }

    #[test]
    fn an_overlong_line_is_skipped_and_the_next_one_read() {
        let mut text = vec![b'x'; MAX_LINE_BYTES + 10];
        text.extend_from_slice(b"\nnext 1\n");
        let mut reader = BufReader::new(&text[..]);
        let mut buf = Vec::new();
        assert!(matches!(read_line(&mut reader, &mut buf).unwrap(), Line::TooLong));
        buf.clear();
        assert!(matches!(read_line(&mut reader, &mut buf).unwrap(), Line::Read));
        assert_eq!(buf, b"next 1\n");
        buf.clear();
        assert!(matches!(read_line(&mut reader, &mut buf).unwrap(), Line::End));
    }
}
