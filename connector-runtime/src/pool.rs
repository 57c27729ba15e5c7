//! The plugin pool: the threads every plugin call runs on (`create`,
//! `start`, `command`, `stop`), so that no plugin ever runs on the thread
//! that reads, writes and pings the platform socket.
//!
//! It is a rayon thread pool of `plugin_threads` threads. A job may block (a
//! plugin waiting on a device): that thread is taken, and the others take
//! the queued jobs, stealing from its queue too. Busy threads take the next
//! job without being woken, which tokio's blocking pool does not (it woke a
//! thread per job, half the pipelined command rate in one run). tokio's
//! multi-thread runtime was as quick, but its threads forbid what a plugin
//! may well do: `block_on` an async SDK, `blocking_recv`. These threads are
//! plain ones. Per-device order is kept by the device actor, which lets one
//! job at a time run a device's plugin.

use std::future::Future;
use std::sync::Mutex;

use tracing::error;

use crate::device::panic_text;

/// Why a pool job gave no result.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The job panicked, or it ran on after the pool was shut down and its
    /// result was not awaited any more. Plugin calls catch their own panics,
    /// so a panic here is a bug in the runtime's job.
    #[error("a plugin pool job panicked or was dropped")]
    Lost,
}

/// A bounded pool of threads for plugin calls; see the module docs.
pub struct PluginPool {
    /// `None` once shut down.
    pool: Mutex<Option<rayon_core::ThreadPool>>,
    threads: usize,
}

impl std::fmt::Debug for PluginPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginPool").field("threads", &self.threads).finish()
    }
}

impl PluginPool {
    /// A pool of `threads` threads (at least one).
    pub fn new(threads: usize) -> Result<Self, rayon_core::ThreadPoolBuildError> {
        let threads = threads.max(1);
        let pool = rayon_core::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|n| format!("plugin-{n}"))
            // Without a handler a panicking job aborts the process.
            .panic_handler(|panic| error!("a plugin pool job panicked: {}", panic_text(&panic)))
            .build()?;
        Ok(PluginPool {
            pool: Mutex::new(Some(pool)),
            threads,
        })
    }

    /// The most threads the pool runs at once.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job` on a pool thread, for its effects only (the device
    /// actor's jobs, which report back on their own). Jobs beyond the bound
    /// wait for a free thread. After [`shut_down`](Self::shut_down) a job
    /// gets a thread of its own, so that plugin code never runs on the
    /// caller's thread.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        match &*self.pool.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(pool) => pool.spawn(job),
            None => {
                let _ = std::thread::Builder::new().name("plugin-late".into()).spawn(job);
            }
        }
    }

    /// Runs `job` as [`spawn`](Self::spawn) does; the future, awaitable on
    /// any runtime, gives its result.
    pub fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = Result<T, PoolError>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.spawn(move || {
            let _ = tx.send(job());
        });
        async move { rx.await.map_err(|_| PoolError::Lost) }
    }

    /// Lets go of the threads without waiting for jobs still running (a
    /// plugin hung in a call): they end on their own when it returns.
    pub fn shut_down(&self) {
        // Dropping a rayon pool only tells its threads to end.
        drop(self.pool.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn jobs_run_in_parallel_up_to_the_bound_and_give_their_results() {
        let pool = PluginPool::new(3).unwrap();
        // Three jobs that each wait for the other two: they finish only if
        // all three run at once.
        let barrier = Arc::new(Barrier::new(3));
        let jobs: Vec<_> = (0..3)
            .map(|n| {
                let barrier = barrier.clone();
                pool.run(move || {
                    barrier.wait();
                    n * 10
                })
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let results: Vec<_> = rt.block_on(async {
            let mut out = Vec::new();
            for job in jobs {
                out.push(job.await.unwrap());
            }
            out
        });
        assert_eq!(results, [0, 10, 20]);
        assert_eq!(pool.threads(), 3);
    }

    #[test]
    fn a_job_after_shutdown_still_runs_off_the_callers_thread() {
        let pool = PluginPool::new(1).unwrap();
        pool.shut_down();
        let caller = std::thread::current().id();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let ran_on = rt.block_on(pool.run(|| std::thread::current().id())).unwrap();
        assert_ne!(ran_on, caller);
    }

    #[test]
    fn a_job_may_block_on_a_runtime_of_its_own() {
        // What a plugin wrapping an async SDK does; tokio forbids it on its
        // own worker threads.
        let pool = PluginPool::new(1).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let got = rt.block_on(pool.run(|| {
            let inner = tokio::runtime::Builder::new_current_thread().build().unwrap();
            inner.block_on(async { 7 })
        }));
        assert_eq!(got.unwrap(), 7);
    }
}
