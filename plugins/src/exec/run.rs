//! One run of a command's program: the body on its stdin, its stdout and
//! the end of its stderr read back, and the whole process group killed when
//! the deadline passes, so a hung program (or one it started) never outlives
//! its command.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How much of stderr an error reply quotes: its end, where the reason is.
pub const STDERR_TAIL_BYTES: usize = 1024;

/// What became of a run.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The program exited; what it printed, stdout cut at the limit.
    Exited {
        status: ExitStatus,
        stdout: Vec<u8>,
        /// More than the limit was printed on stdout.
        overflowed: bool,
        stderr_tail: String,
    },
    /// The deadline passed; the process group was killed.
    TimedOut { stderr_tail: String },
}

/// Runs `command` (its argv, environment and directory set) with `stdin` as
/// its input, until it and everything holding its output are done or
/// `deadline` passes.
pub fn run(mut command: Command, stdin: &[u8], max_stdout: usize, deadline: Instant) -> std::io::Result<Outcome> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // A group of its own, so that a kill reaches what it started too.
        command.process_group(0);
    }
    let mut child = command.spawn()?;
    let (done_tx, done) = mpsc::channel::<Output>();

    // Pipes are read and written on threads of their own: a program that
    // prints much before it reads, or reads nothing, must not deadlock us.
    let mut input = child.stdin.take().expect("piped");
    let body = stdin.to_vec();
    std::thread::Builder::new().name("exec-stdin".into()).spawn(move || {
        // A program that does not read its input closes the pipe early.
        let _ = input.write_all(&body);
    })?;
    let mut stdout = child.stdout.take().expect("piped");
    let tx = done_tx.clone();
    std::thread::Builder::new().name("exec-stdout".into()).spawn(move || {
        let (bytes, overflowed) = read_capped(&mut stdout, max_stdout);
        let _ = tx.send(Output::Stdout(bytes, overflowed));
    })?;
    let mut stderr = child.stderr.take().expect("piped");
    std::thread::Builder::new().name("exec-stderr".into()).spawn(move || {
        let _ = done_tx.send(Output::StderrTail(read_tail(&mut stderr, STDERR_TAIL_BYTES)));
    })?;

    let mut out = (None, None);
    let mut status = None;
    // Short sleeps first: most programs a device runs end within milliseconds.
    let mut step = Duration::from_millis(1);
    loop {
        if status.is_none() {
            status = child.try_wait()?;
        }
        while let Ok(piece) = done.try_recv() {
            match piece {
                Output::Stdout(bytes, overflowed) => out.0 = Some((bytes, overflowed)),
                Output::StderrTail(tail) => out.1 = Some(tail),
            }
        }
        if let (Some(status), (Some((stdout, overflowed)), Some(stderr_tail))) = (status, &mut out) {
            return Ok(Outcome::Exited {
                status,
                stdout: std::mem::take(stdout),
                overflowed: *overflowed,
                stderr_tail: std::mem::take(stderr_tail),
            });
        }
        let now = Instant::now();
        if now >= deadline {
            kill_group(&mut child);
            // The pipes close with the group; what stderr said is the reason.
            let stderr_tail = match out.1.take() {
                Some(tail) => tail,
                None => wait_for_stderr(&done),
            };
            return Ok(Outcome::TimedOut { stderr_tail });
        }
        std::thread::sleep(step.min(deadline - now));
        step = (step * 2).min(Duration::from_millis(20));
    }
}

enum Output {
    Stdout(Vec<u8>, bool),
    StderrTail(String),
}

fn wait_for_stderr(done: &mpsc::Receiver<Output>) -> String {
    let limit = Instant::now() + Duration::from_secs(1);
    while let Some(left) = limit.checked_duration_since(Instant::now()) {
        match done.recv_timeout(left) {
            Ok(Output::StderrTail(tail)) => return tail,
            Ok(Output::Stdout(..)) => continue,
            Err(_) => break,
        }
    }
    String::new()
}

/// Kills the child's whole process group and reaps the child.
pub fn kill_group(child: &mut Child) {
    #[cfg(unix)]
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals that process group; it
        // touches no memory of ours. The group is the child's own
        // (process_group(0)), so nothing else of ours is in it.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads everything, keeping at most `limit` bytes; says whether there was more.
fn read_capped(reader: &mut impl Read, limit: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let mut overflowed = false;
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return (kept, overflowed),
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                overflowed |= n > room;
            }
        }
    }
}

/// Reads everything and keeps the last `limit` bytes, as text.
fn read_tail(reader: &mut impl Read, limit: usize) -> String {
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 2 * limit {
                    tail.drain(..tail.len() - limit);
                }
            }
        }
    }
    let start = tail.len().saturating_sub(limit);
    String::from_utf8_lossy(&tail[start..]).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    fn soon() -> Instant {
        // Generous: a loaded CI machine starts a shell slowly.
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn the_body_goes_in_and_stdout_comes_back() {
        let outcome = run(sh("tr a-z A-Z"), b"hello", 1024, soon()).unwrap();
        let Outcome::Exited {
            status,
            stdout,
            overflowed,
            ..
        } = outcome
        else {
            panic!("{outcome:?}")
        };
        assert!(status.success());
        assert_eq!(stdout, b"HELLO");
        assert!(!overflowed);
    }

    #[test]
    fn a_failure_keeps_the_end_of_stderr_and_the_status() {
        let script =
            "i=0; while [ $i -lt 500 ]; do echo \"noise $i\" >&2; i=$((i+1)); done; echo 'the real reason' >&2; exit 3";
        let Outcome::Exited {
            status, stderr_tail, ..
        } = run(sh(script), b"", 1024, soon()).unwrap()
        else {
            panic!("it exits")
        };
        assert_eq!(status.code(), Some(3));
        assert!(stderr_tail.ends_with("the real reason"), "{stderr_tail}");
        assert!(stderr_tail.len() <= STDERR_TAIL_BYTES, "{}", stderr_tail.len());
    }

    #[test]
    fn output_past_the_limit_is_cut_and_said() {
        let Outcome::Exited { stdout, overflowed, .. } = run(sh("head -c 5000 /dev/zero"), b"", 100, soon()).unwrap()
        else {
            panic!("it exits")
        };
        assert_eq!((stdout.len(), overflowed), (100, true));
    }

    #[test]
    fn a_program_that_reads_no_input_still_gets_its_answer_through() {
        let big = vec![b'x'; 1 << 20];
        let Outcome::Exited { status, stdout, .. } = run(sh("echo ignored"), &big, 1024, soon()).unwrap() else {
            panic!("it exits")
        };
        assert!(status.success());
        assert_eq!(stdout, b"ignored\n");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_deadline_kills_the_program_and_what_it_started() {
        let dir = std::env::temp_dir().join(format!("exec-run-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pids = dir.join("pids");
        // The shell and a child of it both hang; both must go.
        let script = format!(
            "sleep 600 & echo $! > {0}; echo $$ >> {0}; echo started >&2; wait",
            pids.display()
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let outcome = run(sh(&script), b"", 1024, deadline).unwrap();
        assert!(Instant::now() >= deadline);
        let Outcome::TimedOut { stderr_tail } = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(stderr_tail, "started");
        let text = std::fs::read_to_string(&pids).unwrap();
        for pid in text.split_whitespace() {
            let stat = std::path::Path::new("/proc").join(pid).join("stat");
            // Gone, or a zombie of a parent that is gone too, soon after.
            let gone = (0..500).any(|_| {
                let state = std::fs::read_to_string(&stat).ok();
                let dead = state.as_deref().is_none_or(|s| s.contains(") Z "));
                if !dead {
                    std::thread::sleep(Duration::from_millis(20));
                }
                dead
            });
            assert!(gone, "process {pid} is still running");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
