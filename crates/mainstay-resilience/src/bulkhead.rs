//! Bulkheads (seed Part II §5): compartments that keep one slow dependency from taking
//! every thread or connection.
//!
//! - [`Bulkhead`]: a semaphore compartment for async work. At most `max_concurrent` calls
//!   run at once; a caller waits at most `max_wait` for a slot, then gets [`BulkheadFull`]
//!   (naming the compartment). Releasing happens when the permit drops, even on panic or
//!   cancellation.
//! - [`ThreadPoolBulkhead`]: its own threads for blocking work, with a bounded queue; a full
//!   queue refuses at once instead of piling up.
//!
//! Give each dependency its own named instance. Metrics: active, waiting, rejected.

pub mod future;
mod layer;
mod pool;

#[cfg(test)]
mod tests;

pub use layer::{BulkheadLayer, BulkheadService};
pub use pool::{Cancelled, ThreadPoolBulkhead};

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// The compartment had no free slot within its wait limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bulkhead {name:?} is full ({max_concurrent} concurrent calls; waited {max_wait:?})")]
pub struct BulkheadFull {
    /// The compartment's name.
    pub name: String,
    /// Its capacity.
    pub max_concurrent: u32,
    /// How long the caller waited.
    pub max_wait: Duration,
}

/// The error of [`Bulkhead::call`].
#[derive(Debug, thiserror::Error)]
pub enum BulkheadError<E> {
    /// No slot within the wait limit; the call was not made.
    #[error(transparent)]
    Full(BulkheadFull),
    /// The call was made and failed.
    #[error("{0}")]
    Inner(E),
}

/// A point-in-time view of a compartment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BulkheadMetrics {
    /// Capacity.
    pub max_concurrent: u32,
    /// Calls running now.
    pub active: u32,
    /// Callers waiting for a slot now.
    pub waiting: u64,
    /// Callers refused since creation.
    pub rejected: u64,
}

#[derive(Debug)]
struct Inner {
    name: String,
    max_concurrent: u32,
    max_wait: Duration,
    semaphore: Arc<Semaphore>,
    waiting: AtomicU64,
    rejected: AtomicU64,
}

/// A semaphore compartment; cheap to clone (clones share the compartment).
#[derive(Clone, Debug)]
pub struct Bulkhead {
    inner: Arc<Inner>,
}

impl Bulkhead {
    /// A compartment named `name` admitting `max_concurrent` (at least 1) calls at once;
    /// callers wait up to `max_wait` (zero: refuse at once) for a slot.
    pub fn new(name: impl Into<String>, max_concurrent: u32, max_wait: Duration) -> Self {
        let max_concurrent = max_concurrent.max(1);
        Bulkhead {
            inner: Arc::new(Inner {
                name: name.into(),
                max_concurrent,
                max_wait,
                semaphore: Arc::new(Semaphore::new(max_concurrent as usize)),
                waiting: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
            }),
        }
    }

    /// The compartment's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn full(&self) -> BulkheadFull {
        event!(debug, bulkhead = %self.inner.name, "bulkhead full; call refused");
        self.inner.rejected.fetch_add(1, Ordering::Relaxed);
        BulkheadFull {
            name: self.inner.name.clone(),
            max_concurrent: self.inner.max_concurrent,
            max_wait: self.inner.max_wait,
        }
    }

    /// Takes a slot, waiting up to `max_wait`. The slot is freed when the permit drops.
    pub async fn acquire(&self) -> Result<SemaphorePermit<'_>, BulkheadFull> {
        if let Ok(p) = self.inner.semaphore.try_acquire() {
            return Ok(p);
        }
        if self.inner.max_wait.is_zero() {
            return Err(self.full());
        }
        self.inner.waiting.fetch_add(1, Ordering::Relaxed);
        let got = tokio::time::timeout(self.inner.max_wait, self.inner.semaphore.acquire()).await;
        self.inner.waiting.fetch_sub(1, Ordering::Relaxed);
        match got {
            Ok(Ok(p)) => Ok(p),
            _ => Err(self.full()),
        }
    }

    /// Takes a slot that owns its handle (for `'static` futures), waiting up to `max_wait`.
    pub async fn acquire_owned(&self) -> Result<tokio::sync::OwnedSemaphorePermit, BulkheadFull> {
        if let Ok(p) = self.inner.semaphore.clone().try_acquire_owned() {
            return Ok(p);
        }
        if self.inner.max_wait.is_zero() {
            return Err(self.full());
        }
        self.inner.waiting.fetch_add(1, Ordering::Relaxed);
        let got = tokio::time::timeout(
            self.inner.max_wait,
            self.inner.semaphore.clone().acquire_owned(),
        )
        .await;
        self.inner.waiting.fetch_sub(1, Ordering::Relaxed);
        match got {
            Ok(Ok(p)) => Ok(p),
            _ => Err(self.full()),
        }
    }

    /// Runs `f` in a slot.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, BulkheadError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let _permit = self.acquire().await.map_err(BulkheadError::Full)?;
        f().await.map_err(BulkheadError::Inner)
    }

    /// Active, waiting and rejected counts.
    pub fn metrics(&self) -> BulkheadMetrics {
        let i = &self.inner;
        BulkheadMetrics {
            max_concurrent: i.max_concurrent,
            active: i.max_concurrent - i.semaphore.available_permits() as u32,
            waiting: i.waiting.load(Ordering::Relaxed),
            rejected: i.rejected.load(Ordering::Relaxed),
        }
    }
}
