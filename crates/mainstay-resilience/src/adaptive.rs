//! Adaptive concurrency: a limit on in-flight calls that follows what the dependency can
//! take, instead of a number picked once (Netflix concurrency-limits; failsafe-go,
//! tower-resilience).
//!
//! - [`Algorithm::Aimd`]: additive increase (+1 per limit's worth of successful calls made
//!   while the limit was nearly used), multiplicative decrease (× `backoff` on a drop:
//!   an error, timeout or overload signal). Simple, reacts to failures only.
//! - [`Algorithm::Vegas`]: reacts to latency before failures: the queue the dependency
//!   builds is estimated as `limit · (1 − rtt_min / rtt)`; the limit grows while it is under
//!   α = 3·log10(limit) and shrinks when it is over β = 6·log10(limit).
//!
//! [`AdaptiveLimit::try_acquire`] admits a call if fewer than `limit` are in flight (one
//! atomic add); the returned [`Token`] reports the outcome. Limits stay within
//! `[min, max]`. A token dropped without a report counts as ignored (no signal).

mod layer;
#[cfg(test)]
mod tests;

pub use layer::{AdaptiveError, AdaptiveLimitLayer, AdaptiveLimitService};

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How the limit adapts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Algorithm {
    /// Additive increase, multiplicative decrease on drops.
    Aimd {
        /// Factor applied on a drop (0 < backoff < 1). Netflix's default: 0.9.
        backoff: f64,
    },
    /// Latency-based (TCP Vegas).
    Vegas,
}

/// The call was not admitted: `limit` calls are already in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("concurrency limit reached ({limit} in flight)")]
pub struct LimitExceeded {
    /// The limit at the time.
    pub limit: u32,
}

#[derive(Debug)]
struct Estimate {
    limit: f64,
    rtt_min: Option<Duration>,
}

#[derive(Debug)]
struct Inner {
    algorithm: Algorithm,
    min: u32,
    max: u32,
    /// The current limit, read on every admission.
    limit: AtomicU32,
    in_flight: AtomicU32,
    estimate: Mutex<Estimate>,
}

/// An adaptive concurrency limit; cheap to clone (clones share it).
#[derive(Clone, Debug)]
pub struct AdaptiveLimit {
    inner: Arc<Inner>,
}

/// One admitted call; report how it went.
#[must_use = "report the outcome so the limit can adapt"]
#[derive(Debug)]
pub struct Token {
    limit: AdaptiveLimit,
    started: Instant,
}

impl Token {
    /// The call succeeded; its latency feeds the algorithm.
    pub fn success(self) {
        self.limit.update(Some(self.started.elapsed()));
    }

    /// The call was dropped, failed from overload or timed out: a signal to back off.
    pub fn dropped(self) {
        self.limit.update(None);
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        self.limit.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl AdaptiveLimit {
    /// Starts at `initial`, kept within `[min, max]` (min at least 1).
    pub fn new(algorithm: Algorithm, initial: u32, min: u32, max: u32) -> Self {
        let min = min.max(1);
        let max = max.max(min);
        let initial = initial.clamp(min, max);
        AdaptiveLimit {
            inner: Arc::new(Inner {
                algorithm,
                min,
                max,
                limit: AtomicU32::new(initial),
                in_flight: AtomicU32::new(0),
                estimate: Mutex::new(Estimate {
                    limit: initial as f64,
                    rtt_min: None,
                }),
            }),
        }
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.inner.limit.load(Ordering::Acquire)
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> u32 {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// Admits a call if fewer than `limit` are in flight.
    pub fn try_acquire(&self) -> Result<Token, LimitExceeded> {
        let limit = self.limit();
        if self.inner.in_flight.fetch_add(1, Ordering::AcqRel) >= limit {
            self.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitExceeded { limit });
        }
        Ok(Token {
            limit: self.clone(),
            started: Instant::now(),
        })
    }

    fn update(&self, rtt: Option<Duration>) {
        let i = &self.inner;
        // In flight now, this call included (its token leaves after reporting).
        let in_flight = i.in_flight.load(Ordering::Acquire);
        let mut e = i.estimate.lock().unwrap_or_else(|p| p.into_inner());
        let limit = e.limit;
        let next = match (i.algorithm, rtt) {
            (Algorithm::Aimd { backoff }, None) => limit * backoff.clamp(0.01, 0.99),
            // Grow only when the limit was actually being used.
            (Algorithm::Aimd { .. }, Some(_)) if in_flight as f64 * 2.0 >= limit => {
                limit + 1.0 / limit
            }
            (Algorithm::Aimd { .. }, Some(_)) => limit,
            (Algorithm::Vegas, None) => limit * 0.9,
            (Algorithm::Vegas, Some(rtt)) => {
                let rtt_min = *e.rtt_min.get_or_insert(rtt);
                if rtt < rtt_min {
                    e.rtt_min = Some(rtt);
                }
                let rtt_min = e.rtt_min.unwrap_or(rtt_min).as_secs_f64().max(1e-9);
                let queue = limit * (1.0 - rtt_min / rtt.as_secs_f64().max(1e-9));
                let log = limit.max(1.0).log10().max(1.0);
                if queue <= 3.0 * log {
                    limit + log
                } else if queue >= 6.0 * log {
                    limit - log
                } else {
                    limit
                }
            }
        };
        e.limit = next.clamp(i.min as f64, i.max as f64);
        i.limit.store(e.limit.floor() as u32, Ordering::Release);
    }
}
