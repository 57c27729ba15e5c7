//! The plugin pool: the threads every plugin call runs on (`create`,
//! `start`, `command`, `stop`, the settings check), so that no plugin ever
//! runs on the thread that reads, writes and pings the platform socket.
//!
//! It is a tokio multi-thread runtime of its own with `plugin_threads`
//! workers, each job a task that runs to its end on one worker. A job may
//! block (a plugin waiting on a device): that worker is taken, and the
//! others take the queued jobs, stealing from its queue too. tokio's
//! blocking pool would fit the blocking better, but it wakes a thread per
//! job: in one run it gave pipelined commands half the rate of the
//! work-stealing workers, which hand jobs over without waking anyone while
//! they are busy. Per-device order is kept by the device actor, which lets
//! one job at a time run a device's plugin.

use std::future::Future;
use std::sync::Mutex;

/// Why a pool job gave no result.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The pool was shut down before the job ran.
    #[error("the plugin pool is shut down")]
    ShutDown,
    /// The job panicked; plugin calls catch their own panics, so this is a
    /// bug in the runtime's job.
    #[error("a plugin pool job panicked")]
    Panicked,
}

/// A bounded pool of threads for plugin calls; see the module docs.
pub struct PluginPool {
    /// `Mutex<Option<_>>` so that shutting down, which needs the runtime by
    /// value, works through a shared handle.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    threads: usize,
}

impl std::fmt::Debug for PluginPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginPool").field("threads", &self.threads).finish()
    }
}

impl PluginPool {
    /// A pool of at most `threads` threads (at least one).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        // No I/O or timer driver: jobs are plain calls.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("plugin")
            .build()?;
        Ok(PluginPool {
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
            threads,
        })
    }

    /// The most threads the pool runs at once.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job` on a pool thread; the future, awaitable on any runtime,
    /// gives its result. Jobs beyond the bound wait for a free thread.
    pub fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = Result<T, PoolError>> + Send + 'static {
        let handle = self.handle.spawn(async move { job() });
        async move {
            handle.await.map_err(|e| {
                if e.is_panic() {
                    PoolError::Panicked
                } else {
                    PoolError::ShutDown
                }
            })
        }
    }

    /// Lets go of the threads without waiting for jobs still running (a
    /// plugin hung in a call): they end on their own when it returns.
    pub fn shut_down(&self) {
        let runtime = self.runtime.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(runtime) = runtime {
            runtime.shutdown_background();
        }
    }
}

impl Drop for PluginPool {
    fn drop(&mut self) {
        // Dropping a runtime waits for its blocking jobs, and is not allowed
        // inside another runtime at all.
        self.shut_down();
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
    fn a_job_after_shutdown_reports_it() {
        let pool = PluginPool::new(1).unwrap();
        pool.shut_down();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert!(matches!(rt.block_on(pool.run(|| 1)), Err(PoolError::ShutDown)));
    }
}
