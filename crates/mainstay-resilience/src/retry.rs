//! Retry with exponential backoff, jitter and a retry budget (seed Part II §4).
//!
//! A failed call is retried while the error is retryable, attempts remain, and the
//! [`RetryBudget`] (if any) allows it. The delay before retry *n* (0-based) follows the
//! seed's table, always capped at `max_delay`:
//!
//! | jitter | delay |
//! |---|---|
//! | [`Jitter::None`] | `base · m^n` |
//! | [`Jitter::Full`] | `random(0, base · m^n)` |
//! | [`Jitter::Equal`] | `base · m^n / 2 + random(0, base · m^n / 2)` |
//! | [`Jitter::Decorrelated`] | `random(base, previous · 3)` (previous starts at `base`) |
//!
//! A server's `Retry-After` wins over the computed delay: the predicate returns
//! [`Decision::RetryAfter`]. Randomness comes from a seedable RNG, so a failing case
//! replays; time comes from `tokio::time`, so tests run on paused time.
//!
//! Guarantees: never more than `max_attempts` calls; never sleeps longer than `max_delay`
//! except to honour a server's `Retry-After` (bounded by `max_retry_after`); with a budget,
//! retries in the budget's window never exceed `percent × calls + min_per_sec × ttl`, so a
//! dependency that is down gets at most that much extra load (no retry storm).

mod budget;
pub mod future;
mod layer;

#[cfg(test)]
mod tests;

pub use budget::RetryBudget;
pub use layer::{RetryLayer, RetryService};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How delays are randomized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// `base · m^n`: every client retries in lockstep (testing only).
    None,
    /// `random(0, base · m^n)`: spreads retries best (the default).
    Full,
    /// `base · m^n / 2 + random(0, base · m^n / 2)`: spread, with a minimum delay.
    Equal,
    /// `random(base, previous · 3)`: for long-running operations.
    Decorrelated,
}

/// What to do about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Retry after the computed backoff.
    Retry,
    /// Retry after exactly this long (a server's `Retry-After`).
    RetryAfter(Duration),
    /// Do not retry (e.g. a 4xx business error).
    Stop,
}

/// Why [`Retry::run`] gave up; carries the last error.
#[derive(Debug, thiserror::Error)]
pub enum RetryError<E> {
    /// The error was not retryable.
    #[error("not retryable: {0}")]
    NotRetryable(E),
    /// All attempts were used.
    #[error("gave up after {attempts} attempts: {last}")]
    Exhausted {
        /// Calls made.
        attempts: u32,
        /// The last error.
        last: E,
    },
    /// The retry budget refused another retry.
    #[error("retry budget exhausted after {attempts} attempts: {last}")]
    BudgetExhausted {
        /// Calls made.
        attempts: u32,
        /// The last error.
        last: E,
    },
    /// The server asked to wait longer than `max_retry_after`.
    #[error("server asked to retry after {retry_after:?}, more than allowed: {last}")]
    RetryAfterTooLong {
        /// What the server asked.
        retry_after: Duration,
        /// The last error.
        last: E,
    },
}

impl<E> RetryError<E> {
    /// The last error, whatever the reason.
    pub fn into_inner(self) -> E {
        match self {
            RetryError::NotRetryable(e)
            | RetryError::Exhausted { last: e, .. }
            | RetryError::BudgetExhausted { last: e, .. }
            | RetryError::RetryAfterTooLong { last: e, .. } => e,
        }
    }
}

/// Why retrying stopped (turned into a [`RetryError`] with the last error).
pub(crate) enum Stop {
    NotRetryable,
    Exhausted,
    Budget,
    RetryAfterTooLong(Duration),
}

impl Stop {
    pub(crate) fn with<E>(self, attempts: u32, last: E) -> RetryError<E> {
        match self {
            Stop::NotRetryable => RetryError::NotRetryable(last),
            Stop::Exhausted => RetryError::Exhausted { attempts, last },
            Stop::Budget => RetryError::BudgetExhausted { attempts, last },
            Stop::RetryAfterTooLong(retry_after) => {
                RetryError::RetryAfterTooLong { retry_after, last }
            }
        }
    }
}

/// A backoff schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// First delay. Default: 1 s (the seed's `base_delay`).
    pub base: Duration,
    /// Upper bound of every delay. Default: 60 s.
    pub max: Duration,
    /// Growth per retry. Default: 2.
    pub multiplier: f64,
    /// Randomization. Default: [`Jitter::Full`].
    pub jitter: Jitter,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// The delay before retry `n` (0-based), given the delay before the previous one
    /// (`base` for the first).
    pub fn delay(&self, n: u32, previous: Duration, rng: &mut impl Rng) -> Duration {
        let max = self.max.as_secs_f64();
        let exp = (self.base.as_secs_f64() * self.multiplier.powi(n.min(1024) as i32)).min(max);
        let secs = match self.jitter {
            Jitter::None => exp,
            Jitter::Full => rng.random_range(0.0..=exp),
            Jitter::Equal => exp / 2.0 + rng.random_range(0.0..=exp / 2.0),
            Jitter::Decorrelated => {
                let low = self.base.as_secs_f64().min(max);
                let high = (previous.as_secs_f64() * 3.0).max(low);
                rng.random_range(low..=high).min(max)
            }
        };
        Duration::from_secs_f64(secs.clamp(0.0, max))
    }
}

/// Retries a fallible async operation. Cheap to clone; clones share the RNG and budget.
#[derive(Clone, Debug)]
pub struct Retry {
    max_attempts: u32,
    backoff: Backoff,
    max_retry_after: Duration,
    budget: Option<Arc<RetryBudget>>,
    rng: Arc<Mutex<SmallRng>>,
}

/// Builds a [`Retry`].
#[derive(Clone, Debug)]
pub struct Builder {
    max_attempts: u32,
    backoff: Backoff,
    max_retry_after: Duration,
    budget: Option<Arc<RetryBudget>>,
    seed: Option<u64>,
}

impl Builder {
    /// Total calls, the first included. Default: 3. At least 1.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The backoff schedule. Default: [`Backoff::default`] (1 s base, 60 s max, ×2, full jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The longest server `Retry-After` honoured; longer gives up. Default: 5 minutes.
    pub fn max_retry_after(mut self, d: Duration) -> Self {
        self.max_retry_after = d;
        self
    }

    /// Shares a retry budget (Finagle-style) across calls. Default: none.
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Seeds the jitter RNG so a run replays exactly. Default: seeded from the OS.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Builds.
    pub fn build(self) -> Retry {
        let rng = match self.seed {
            Some(s) => SmallRng::seed_from_u64(s),
            None => SmallRng::from_os_rng(),
        };
        Retry {
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            max_retry_after: self.max_retry_after,
            budget: self.budget,
            rng: Arc::new(Mutex::new(rng)),
        }
    }
}

impl Retry {
    /// A builder: 3 attempts, default backoff, no budget.
    pub fn builder() -> Builder {
        Builder {
            max_attempts: 3,
            backoff: Backoff::default(),
            max_retry_after: Duration::from_secs(300),
            budget: None,
            seed: None,
        }
    }

    /// Calls `op` until it succeeds or retrying stops; `decide` classifies each error.
    /// `on_retry(attempt, delay, &error)` runs before each backoff sleep.
    pub async fn run<F, Fut, T, E, D, H>(
        &self,
        mut op: F,
        decide: D,
        mut on_retry: H,
    ) -> Result<T, RetryError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        D: Fn(&E) -> Decision,
        H: FnMut(u32, Duration, &E),
    {
        self.deposit();
        let mut previous = self.backoff.base;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let err = match op().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let delay = match self.next_delay(attempt, &mut previous, &err, &decide) {
                Ok(d) => d,
                Err(stop) => return Err(stop.with(attempt, err)),
            };
            on_retry(attempt, delay, &err);
            tokio::time::sleep(delay).await;
        }
    }

    /// [`Self::run`] for blocking code: sleeps the calling thread.
    pub fn run_blocking<T, E>(
        &self,
        mut op: impl FnMut() -> Result<T, E>,
        decide: impl Fn(&E) -> Decision,
    ) -> Result<T, RetryError<E>> {
        self.deposit();
        let mut previous = self.backoff.base;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let err = match op() {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let delay = match self.next_delay(attempt, &mut previous, &err, &decide) {
                Ok(d) => d,
                Err(stop) => return Err(stop.with(attempt, err)),
            };
            std::thread::sleep(delay);
        }
    }

    /// Records one call with the budget, if any.
    pub(crate) fn deposit(&self) {
        if let Some(b) = &self.budget {
            b.deposit();
        }
    }

    /// The first backoff "previous delay" (the base).
    pub(crate) fn base(&self) -> Duration {
        self.backoff.base
    }

    /// The delay before the next attempt, or why to stop.
    pub(crate) fn next_delay<E>(
        &self,
        attempt: u32,
        previous: &mut Duration,
        err: &E,
        decide: &impl Fn(&E) -> Decision,
    ) -> Result<Duration, Stop> {
        let decision = decide(err);
        if decision == Decision::Stop {
            return Err(Stop::NotRetryable);
        }
        if attempt >= self.max_attempts {
            return Err(Stop::Exhausted);
        }
        if let Decision::RetryAfter(d) = decision {
            if d > self.max_retry_after {
                return Err(Stop::RetryAfterTooLong(d));
            }
        }
        if let Some(b) = &self.budget {
            if !b.try_withdraw() {
                event!(warn, attempt, "retry budget exhausted; not retrying");
                return Err(Stop::Budget);
            }
        }
        let delay = match decision {
            Decision::RetryAfter(d) => d,
            _ => {
                let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                self.backoff.delay(attempt - 1, *previous, &mut *rng)
            }
        };
        *previous = delay;
        event!(debug, attempt, ?delay, "retrying after a failure");
        Ok(delay)
    }
}
