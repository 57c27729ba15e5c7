//! [`Ticker`]: a thread of a plugin's own that runs a job at a fixed rate
//! until the job says it is done or the plugin stops it. The periodic half of
//! `generator` and `sysmetrics`; plugin methods run on the runtime's thread
//! and must not sleep there.

use std::io;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Tells a running job that [`Ticker::stop`] was called, so a long tick (a
/// big burst of events) can end early instead of holding up the stop.
#[derive(Clone, Debug, Default)]
pub struct Stopping(Arc<AtomicBool>);

impl Stopping {
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A running periodic thread. Stopping (or dropping) it wakes the thread at
/// once and joins it, so no tick runs after [`Ticker::stop`] returns.
#[derive(Debug)]
pub struct Ticker {
    /// Dropping the sender is the wake-up call: the thread sleeps in
    /// `recv_timeout` on the other end, which returns at once on disconnect.
    wake: Option<mpsc::Sender<()>>,
    stopping: Stopping,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Starts a thread named `name` that calls `tick` every `interval`, the
    /// first time one interval from now, until `tick` returns `Break`.
    ///
    /// Ticks are at a fixed rate; when a tick overruns, the missed ones are
    /// skipped rather than run back to back.
    pub fn spawn<F>(name: String, interval: Duration, mut tick: F) -> io::Result<Ticker>
    where
        F: FnMut(&Stopping) -> ControlFlow<()> + Send + 'static,
    {
        let (wake, woken) = mpsc::channel::<()>();
        let stopping = Stopping::default();
        let job_stopping = stopping.clone();
        let thread = thread::Builder::new().name(name).spawn(move || {
            let mut next = Instant::now() + interval;
            loop {
                match woken.recv_timeout(next.saturating_duration_since(Instant::now())) {
                    Err(RecvTimeoutError::Timeout) => {}
                    // Stopped: the sender is gone (nothing is ever sent on it).
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                if tick(&job_stopping).is_break() || job_stopping.requested() {
                    return;
                }
                next += interval;
                let now = Instant::now();
                if next < now {
                    next = now + interval;
                }
            }
        })?;
        Ok(Ticker {
            wake: Some(wake),
            stopping,
            thread: Some(thread),
        })
    }

    /// Whether the thread has ended, by itself or by [`Ticker::stop`].
    pub fn is_finished(&self) -> bool {
        match &self.thread {
            Some(thread) => thread.is_finished(),
            None => true,
        }
    }

    /// Wakes the thread, waits for it to end and returns; calling it again
    /// does nothing. A panic of the job is not passed on: the job is gone
    /// either way, and the caller is usually already stopping.
    pub fn stop(&mut self) {
        self.stopping.0.store(true, Ordering::Release);
        self.wake.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn ticks_until_the_job_breaks_then_ends_by_itself() {
        let ticks = Arc::new(AtomicU32::new(0));
        let counted = ticks.clone();
        let mut ticker = Ticker::spawn("test-ticker".into(), Duration::from_millis(1), move |_| {
            if counted.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ticker.is_finished() {
            assert!(Instant::now() < deadline, "the ticker never finished");
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(ticks.load(Ordering::SeqCst), 3);
        ticker.stop();
        assert!(ticker.is_finished());
    }

    #[test]
    fn stop_wakes_a_sleeping_thread_at_once_and_joins_it() {
        let ticks = Arc::new(AtomicU32::new(0));
        let counted = ticks.clone();
        let mut ticker = Ticker::spawn("test-ticker".into(), Duration::from_secs(3600), move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            ControlFlow::Continue(())
        })
        .unwrap();
        let started = Instant::now();
        ticker.stop();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "stop took {:?}",
            started.elapsed()
        );
        assert!(ticker.is_finished());
        assert_eq!(ticks.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_long_tick_sees_the_stop_request() {
        let (entered_tx, entered) = mpsc::channel();
        let mut ticker = Ticker::spawn("test-ticker".into(), Duration::from_millis(1), move |stopping| {
            let _ = entered_tx.send(());
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stopping.requested() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            ControlFlow::Continue(())
        })
        .unwrap();
        entered.recv_timeout(Duration::from_secs(5)).unwrap();
        let started = Instant::now();
        ticker.stop();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "stop took {:?}",
            started.elapsed()
        );
    }
}
