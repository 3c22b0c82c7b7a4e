//! A local rate limiter: GCRA (the generic cell rate algorithm), i.e. a token bucket kept
//! as one "theoretical arrival time" word updated by compare-and-swap.
//!
//! `rate` permits per `period` are spread evenly (one every `period / rate`), and up to
//! `burst` may be taken at once after a quiet spell. Over any interval of length `w`, at most
//! `burst + w · rate / period` permits are granted. [`RateLimiter`] is `Clone` (clones
//! share the limit), so it needs no `Buffer` to share across tasks (tower #794).
//! [`RateLimiter::try_acquire`] rejects with the wait a permit needs;
//! [`RateLimiter::acquire`] waits. Time comes from `tokio::time` (pausable in tests).
//! Limits: local to this process; for a cluster-wide limit use a shared store.

mod layer;

#[cfg(test)]
mod tests;

pub use layer::{RateLimitLayer, RateLimitService};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// No permit now; one is available after `retry_after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rate limited; retry after {retry_after:?}")]
pub struct RateLimited {
    /// How long until a permit is available.
    pub retry_after: Duration,
}

/// A rate limiter setting the builder refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate limit: {0}")]
pub struct InvalidRate(&'static str);

#[derive(Debug)]
struct Inner {
    /// Nanoseconds between permits.
    interval: u64,
    /// How far the theoretical arrival time may run ahead of now: (burst − 1) · interval.
    tolerance: u64,
    /// Theoretical arrival time, nanoseconds since `epoch`.
    tat: AtomicU64,
    epoch: Instant,
}

/// A GCRA rate limiter; cheap to clone.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

impl RateLimiter {
    /// `rate` permits per `period`, bursts of up to `burst`. Errors name the bad argument.
    pub fn new(rate: u32, period: Duration, burst: u32) -> Result<Self, InvalidRate> {
        if rate == 0 {
            return Err(InvalidRate("rate must be at least 1"));
        }
        if period.is_zero() {
            return Err(InvalidRate("period must be positive"));
        }
        if burst == 0 {
            return Err(InvalidRate("burst must be at least 1"));
        }
        let interval = (period.as_nanos() / rate as u128).max(1) as u64;
        Ok(RateLimiter {
            inner: Arc::new(Inner {
                interval,
                tolerance: interval.saturating_mul(burst as u64 - 1),
                tat: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        })
    }

    fn now(&self) -> u64 {
        // Offset by one interval so "tat = 0" means idle even at the epoch.
        self.inner.epoch.elapsed().as_nanos() as u64 + self.inner.interval
    }

    /// Takes `n` permits now, or says how long until they would be available.
    pub fn try_acquire_n(&self, n: u32) -> Result<(), RateLimited> {
        let i = &self.inner;
        let cost = i.interval.saturating_mul(n.max(1) as u64);
        let now = self.now();
        let mut tat = i.tat.load(Ordering::Acquire);
        loop {
            let start = tat.max(now);
            let new_tat = start.saturating_add(cost);
            // Conforms if the new arrival time is within the burst tolerance of now.
            let allowed_at = new_tat.saturating_sub(i.tolerance + i.interval);
            if allowed_at > now {
                return Err(RateLimited {
                    retry_after: Duration::from_nanos(allowed_at - now),
                });
            }
            match i
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }

    /// Takes one permit now, or says how long until one is available.
    pub fn try_acquire(&self) -> Result<(), RateLimited> {
        self.try_acquire_n(1)
    }

    /// Waits until a permit is available and takes it.
    pub async fn acquire(&self) {
        while let Err(limited) = self.try_acquire() {
            tokio::time::sleep(limited.retry_after).await;
        }
    }

    /// Waits at most `max_wait` for a permit.
    pub async fn acquire_timeout(&self, max_wait: Duration) -> Result<(), RateLimited> {
        let deadline = Instant::now() + max_wait;
        loop {
            match self.try_acquire() {
                Ok(()) => return Ok(()),
                Err(limited) if Instant::now() + limited.retry_after > deadline => {
                    return Err(limited)
                }
                Err(limited) => tokio::time::sleep(limited.retry_after).await,
            }
        }
    }
}
