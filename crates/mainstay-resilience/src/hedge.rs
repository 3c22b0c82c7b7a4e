//! Hedging: when an attempt is slow, start another; the first success wins and the rest are
//! cancelled (dropped). For idempotent reads where tail latency matters (Polly's hedging,
//! tower's `Hedge`, "The Tail at Scale").
//!
//! The hedge delay is fixed, or a latency percentile of recent successful calls (e.g.
//! p95: only the slowest 5% get a second attempt). A failed attempt makes way for the next
//! at once instead of waiting out the delay. Each extra attempt is withdrawn from a
//! [`RetryBudget`] when one is shared, so hedging cannot double the load on a struggling
//! dependency. If every attempt fails, the last error is returned.
//!
//! Guarantees: at most `1 + max_hedges` attempts per call; losers are dropped as soon as a
//! winner is known; with a budget, extra attempts stay within it.

mod layer;
#[cfg(test)]
mod tests;

pub use layer::{HedgeLayer, HedgeService};

use crate::retry::RetryBudget;
use futures::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// When to start the next attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HedgeDelay {
    /// After a fixed delay.
    Fixed(Duration),
    /// After the given percentile (0–100) of recent successful latencies; `fallback` until
    /// 20 samples exist.
    Percentile {
        /// E.g. 95.0.
        percentile: f64,
        /// Delay used before enough samples exist.
        fallback: Duration,
    },
}

const SAMPLES: usize = 128;

#[derive(Debug)]
struct Latencies {
    ring: [u64; SAMPLES],
    len: usize,
    next: usize,
    since_update: usize,
}

/// Hedged calls; cheap to clone (clones share latency samples and budget).
#[derive(Clone, Debug)]
pub struct Hedge {
    delay: HedgeDelay,
    max_hedges: u32,
    budget: Option<Arc<RetryBudget>>,
    latencies: Arc<Mutex<Latencies>>,
    /// The current percentile delay in nanoseconds (recomputed every 16 samples).
    cached_delay: Arc<AtomicU64>,
}

impl Hedge {
    /// Hedging with `delay` and up to `max_hedges` (at least 1) extra attempts, no budget.
    pub fn new(delay: HedgeDelay, max_hedges: u32) -> Self {
        let initial = match delay {
            HedgeDelay::Fixed(d) => d,
            HedgeDelay::Percentile { fallback, .. } => fallback,
        };
        Hedge {
            delay,
            max_hedges: max_hedges.max(1),
            budget: None,
            latencies: Arc::new(Mutex::new(Latencies {
                ring: [0; SAMPLES],
                len: 0,
                next: 0,
                since_update: 0,
            })),
            cached_delay: Arc::new(AtomicU64::new(initial.as_nanos() as u64)),
        }
    }

    /// Shares a retry budget: each extra attempt withdraws from it. Default: none.
    pub fn with_budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The delay the next call would hedge after.
    pub fn current_delay(&self) -> Duration {
        Duration::from_nanos(self.cached_delay.load(Ordering::Relaxed))
    }

    fn observe(&self, latency: Duration) {
        let HedgeDelay::Percentile { percentile, .. } = self.delay else {
            return;
        };
        let mut l = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        let next = l.next;
        l.ring[next] = latency.as_nanos() as u64;
        l.next = (next + 1) % SAMPLES;
        l.len = (l.len + 1).min(SAMPLES);
        l.since_update += 1;
        if l.len >= 20 && l.since_update >= 16 {
            l.since_update = 0;
            let mut sorted = l.ring;
            let live = &mut sorted[..l.len];
            live.sort_unstable();
            let rank =
                ((percentile.clamp(0.0, 100.0) / 100.0) * (live.len() - 1) as f64).round() as usize;
            self.cached_delay.store(live[rank], Ordering::Relaxed);
        }
    }

    /// Runs `op`, starting another attempt after the hedge delay (or at once after a
    /// failure) while hedges remain; returns the first success or the last error.
    pub async fn run<F, Fut, T, E>(&self, mut op: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if let Some(b) = &self.budget {
            b.deposit();
        }
        let start = Instant::now();
        let delay = self.current_delay();
        let mut running = FuturesUnordered::new();
        running.push(op());
        let mut hedges_left = self.max_hedges;
        let mut next_hedge = start + delay;
        let mut last_err = None;
        loop {
            let may_hedge = hedges_left > 0;
            tokio::select! {
                biased;
                done = running.next(), if !running.is_empty() => match done {
                    Some(Ok(v)) => {
                        self.observe(start.elapsed());
                        return Ok(v);
                    }
                    Some(Err(e)) => {
                        last_err = Some(e);
                        // A failure makes way for the next attempt now.
                        next_hedge = Instant::now();
                    }
                    None => {}
                },
                _ = tokio::time::sleep_until(next_hedge), if may_hedge => {
                    if self.budget.as_ref().is_none_or(|b| b.try_withdraw()) {
                        running.push(op());
                        hedges_left -= 1;
                        event!(debug, ?delay, "hedging: started another attempt");
                        next_hedge = Instant::now() + delay;
                    } else {
                        hedges_left = 0;
                    }
                }
            }
            if running.is_empty() && hedges_left == 0 {
                // Every attempt failed and no more may start.
                if let Some(e) = last_err {
                    return Err(e);
                }
            }
        }
    }
}
