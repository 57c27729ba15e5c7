//! The plugin pool: the threads every plugin call runs on (`create`,
//! `start`, `command`, `stop`, the settings check), so that no plugin ever
//! runs on the thread that reads, writes and pings the platform socket.
//!
//! It is tokio's blocking pool, on a runtime of its own: a blocked plugin
//! holds one of its threads and nothing else, and the link's runtime keeps
//! its own blocking pool (DNS look-ups) free. Threads are made on demand up
//! to the bound (`plugin_threads`) and end after a while unused, so idle
//! devices cost none. Per-device order is kept by the device actor, which
//! gives its plugin to the pool one job at a time.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

/// How long an unused pool thread lives before it ends.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

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
    /// Only its blocking pool is used; `Mutex<Option<_>>` so that shutting
    /// down, which needs the runtime by value, works through a shared handle.
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
        let runtime = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(threads)
            .thread_keep_alive(KEEP_ALIVE)
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
    /// gives its result. Jobs beyond the bound wait in order for a thread.
    pub fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = Result<T, PoolError>> + Send + 'static {
        let handle = self.handle.spawn_blocking(job);
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
