//! Policies composed into one pipeline with one error type, built in code or from a serde
//! config (TOML, YAML, JSON), so one policy file can configure any service that links it
//! (the planned sidecar is meant to read the same config).
//!
//! Order, outside in: **timeout** (whole call, retries included) → **retry** → **rate
//! limit** → **circuit breaker** → **bulkhead** → **attempt timeout** → the operation.
//! Every layer is optional. One classifier decides, for the operation's own errors, whether
//! to retry ([`Decision::Retry`] / [`Decision::RetryAfter`]: also a breaker failure) or not
//! ([`Decision::Stop`]: a business error, ignored by the breaker). The pipeline's own
//! refusals retry sensibly: an attempt timeout or a full bulkhead is retried, a rate limit
//! is retried after its wait, an open breaker is not (fail fast).
//!
//! The success path of [`Pipeline::call`] allocates nothing: every layer is a generic
//! future, nothing is boxed. [`PipelineLayer`] is the same pipeline as one tower layer with
//! one error type (its response future is boxed).

#[cfg(feature = "serde")]
pub mod config;
mod layer;

pub use layer::{PipelineLayer, PipelineService};

#[cfg(test)]
mod tests;

use crate::bulkhead::{Bulkhead, BulkheadFull};
use crate::circuit_breaker::{CircuitBreaker, Outcome, Rejected};
use crate::rate_limit::{RateLimited, RateLimiter};
use crate::retry::{Decision, Retry};
use crate::timeout::{timeout, Elapsed};
use std::future::Future;
use std::time::Duration;

/// Why a pipelined call failed: a policy refused or gave up, or the operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ResilienceError<E> {
    /// The whole call, or its last attempt, ran out of time (the operation was cancelled).
    #[error(transparent)]
    Timeout(Elapsed),
    /// The circuit breaker refused the call.
    #[error(transparent)]
    CircuitOpen(Rejected),
    /// The bulkhead had no slot in time.
    #[error(transparent)]
    BulkheadFull(BulkheadFull),
    /// The rate limiter refused the call.
    #[error(transparent)]
    RateLimited(RateLimited),
    /// The operation itself failed.
    #[error("{0}")]
    Inner(E),
}

/// Composed policies; cheap to clone (clones share breaker, bulkhead, limiter, budget).
#[derive(Clone, Debug, Default)]
pub struct Pipeline {
    timeout: Option<Duration>,
    retry: Option<Retry>,
    rate_limit: Option<RateLimiter>,
    breaker: Option<CircuitBreaker>,
    bulkhead: Option<Bulkhead>,
    attempt_timeout: Option<Duration>,
}

impl Pipeline {
    /// An empty pipeline (calls pass straight through); add layers with the `with_*` methods.
    pub fn new() -> Self {
        Self::default()
    }

    /// Deadline for the whole call, retries and backoff included. Default: none.
    pub fn with_timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// Retries. Default: none.
    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = Some(retry);
        self
    }

    /// A rate limiter checked before each attempt (refusal is retried after its wait).
    /// Default: none.
    pub fn with_rate_limit(mut self, limiter: RateLimiter) -> Self {
        self.rate_limit = Some(limiter);
        self
    }

    /// A circuit breaker around each attempt. Default: none.
    pub fn with_circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// A bulkhead around each attempt. Default: none.
    pub fn with_bulkhead(mut self, bulkhead: Bulkhead) -> Self {
        self.bulkhead = Some(bulkhead);
        self
    }

    /// Deadline for each attempt (a timed-out attempt is cancelled and retried). Default:
    /// none.
    pub fn with_attempt_timeout(mut self, d: Duration) -> Self {
        self.attempt_timeout = Some(d);
        self
    }

    /// The circuit breaker, if any (state, metrics, manual control).
    pub fn circuit_breaker(&self) -> Option<&CircuitBreaker> {
        self.breaker.as_ref()
    }

    /// The bulkhead, if any.
    pub fn bulkhead(&self) -> Option<&Bulkhead> {
        self.bulkhead.as_ref()
    }

    /// Runs `op` through every layer; `classify` decides about the operation's errors.
    pub async fn call<F, Fut, T, E, C>(
        &self,
        mut op: F,
        classify: C,
    ) -> Result<T, ResilienceError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: Fn(&E) -> Decision,
    {
        let classify = &classify;
        let attempt = || {
            let fut = op();
            self.attempt(fut, classify)
        };
        let retried = async {
            match &self.retry {
                None => {
                    let mut attempt = attempt;
                    attempt().await
                }
                Some(retry) => retry
                    .run(
                        attempt,
                        |e: &ResilienceError<E>| match e {
                            ResilienceError::Inner(e) => classify(e),
                            ResilienceError::Timeout(_) | ResilienceError::BulkheadFull(_) => {
                                Decision::Retry
                            }
                            ResilienceError::RateLimited(r) => Decision::RetryAfter(r.retry_after),
                            ResilienceError::CircuitOpen(_) => Decision::Stop,
                        },
                        |_, _, _| {},
                    )
                    .await
                    .map_err(|e| e.into_inner()),
            }
        };
        match self.timeout {
            None => retried.await,
            Some(d) => timeout(d, retried)
                .await
                .map_err(ResilienceError::Timeout)?,
        }
    }

    /// One attempt: rate limit → breaker → bulkhead → attempt timeout → `fut`.
    async fn attempt<Fut, T, E, C>(&self, fut: Fut, classify: &C) -> Result<T, ResilienceError<E>>
    where
        Fut: Future<Output = Result<T, E>>,
        C: Fn(&E) -> Decision,
    {
        if let Some(limiter) = &self.rate_limit {
            limiter
                .try_acquire()
                .map_err(ResilienceError::RateLimited)?;
        }
        // Taken before the bulkhead: a refused slot drops the permit, which gives a
        // half-open trial back.
        let permit = match &self.breaker {
            Some(b) => Some(b.try_acquire().map_err(ResilienceError::CircuitOpen)?),
            None => None,
        };
        let _slot = match &self.bulkhead {
            Some(b) => Some(b.acquire().await.map_err(ResilienceError::BulkheadFull)?),
            None => None,
        };
        let result = match self.attempt_timeout {
            None => fut.await.map_err(ResilienceError::Inner),
            Some(d) => match timeout(d, fut).await {
                Ok(r) => r.map_err(ResilienceError::Inner),
                Err(elapsed) => Err(ResilienceError::Timeout(elapsed)),
            },
        };
        if let Some(permit) = permit {
            permit.record(match &result {
                Ok(_) => Outcome::Success,
                Err(ResilienceError::Inner(e)) if classify(e) == Decision::Stop => Outcome::Ignore,
                Err(_) => Outcome::Failure,
            });
        }
        result
    }
}
