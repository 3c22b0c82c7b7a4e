//! Resilience policies from the seed's Part II, built to cost almost nothing on the
//! success path: atomics instead of mutexes, no allocation per call.
//!
//! - [`circuit_breaker`]: CLOSED → OPEN → HALF_OPEN with a count-based sliding window,
//!   failure-rate and slow-call-rate thresholds, a hard cap on half-open trial calls and a
//!   generation counter so results from an earlier period never move the state.
//! - [`retry`]: exponential backoff with the seed's four jitter kinds, `Retry-After`, and a
//!   Finagle-style retry budget that bounds retry storms.
//! - [`timeout`]: a deadline that cancels (drops) the operation.
//! - [`bulkhead`]: semaphore and thread-pool compartments with a wait limit.
//! - [`rate_limit`]: a GCRA rate limiter that is `Clone`, with wait or reject.
//! - [`queue`]: a bounded MPMC queue with the seed's backpressure strategies (+ sampling).
//! - [`hedge`]: a second attempt after a delay or latency percentile; first success wins.
//! - [`adaptive`]: a concurrency limit that adapts (AIMD, Vegas).
//! - [`pipeline`]: the policies composed, with one error type and a serde config.
//!
//! Observability: every policy has a `metrics()` snapshot; [`metrics::Exposition`] renders
//! them in the Prometheus text format, and the `tracing` feature emits events on state
//! transitions, retries and refusals (never on the success path).
//!
//! Time comes from `tokio::time`, so every policy is tested on paused time.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

/// Emits a `tracing` event when the `tracing` feature is on; compiles to nothing otherwise.
macro_rules! event {
    ($level:ident, $($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        tracing::$level!(target: "mainstay_resilience", $($arg)+);
    }};
}

pub mod adaptive;
pub mod bulkhead;
pub mod circuit_breaker;
pub mod hedge;
pub mod metrics;
pub mod pipeline;
pub mod queue;
pub mod rate_limit;
pub mod retry;
pub mod timeout;
