//! A thread-pool bulkhead for blocking work.

use super::BulkheadFull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// The job was dropped without running (the pool shut down) or panicked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the bulkhead job did not complete (it panicked, or the pool shut down)")]
pub struct Cancelled;

#[derive(Debug, Default)]
struct Counters {
    active: AtomicU64,
    rejected: AtomicU64,
}

/// Own threads plus a bounded queue for blocking work. Dropping it lets queued jobs finish
/// and then stops the threads.
#[derive(Debug)]
pub struct ThreadPoolBulkhead {
    name: String,
    threads: u32,
    queue: SyncSender<Job>,
    counters: Arc<Counters>,
}

impl ThreadPoolBulkhead {
    /// `threads` workers (at least 1) named `bulkhead-{name}-{i}`, and room for
    /// `queue_capacity` jobs waiting; more are refused with [`BulkheadFull`].
    pub fn new(
        name: impl Into<String>,
        threads: u32,
        queue_capacity: usize,
    ) -> std::io::Result<Self> {
        let name = name.into();
        let threads = threads.max(1);
        let (queue, jobs) = sync_channel::<Job>(queue_capacity);
        let jobs: Arc<Mutex<Receiver<Job>>> = Arc::new(Mutex::new(jobs));
        let counters = Arc::new(Counters::default());
        for i in 0..threads {
            let (jobs, counters) = (jobs.clone(), counters.clone());
            std::thread::Builder::new()
                .name(format!("bulkhead-{name}-{i}"))
                .spawn(move || loop {
                    let job = match jobs.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    counters.active.fetch_add(1, Ordering::Relaxed);
                    // A panicking job must not take the worker down; its caller sees Cancelled.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    counters.active.fetch_sub(1, Ordering::Relaxed);
                })?;
        }
        Ok(ThreadPoolBulkhead {
            name,
            threads,
            queue,
            counters,
        })
    }

    /// Queues `f`; the returned future resolves to its result. Refused at once when the
    /// queue is full.
    pub fn execute<F, T>(
        &self,
        f: F,
    ) -> Result<impl std::future::Future<Output = Result<T, Cancelled>>, BulkheadFull>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        match self.queue.try_send(job) {
            Ok(()) => Ok(async move { rx.await.map_err(|_| Cancelled) }),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                Err(BulkheadFull {
                    name: self.name.clone(),
                    max_concurrent: self.threads,
                    max_wait: Duration::ZERO,
                })
            }
        }
    }

    /// Jobs running now.
    pub fn active(&self) -> u64 {
        self.counters.active.load(Ordering::Relaxed)
    }

    /// Jobs refused since creation.
    pub fn rejected(&self) -> u64 {
        self.counters.rejected.load(Ordering::Relaxed)
    }
}
