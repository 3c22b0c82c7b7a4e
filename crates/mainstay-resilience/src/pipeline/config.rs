//! A [`Pipeline`] from configuration (feature `serde`).
//!
//! ```toml
//! timeout = "10s"            # whole call, retries included
//! attempt_timeout = "2s"     # each attempt
//!
//! [retry]
//! max_attempts = 4
//! base = "100ms"
//! max = "5s"
//! multiplier = 2.0
//! jitter = "full"            # none | full | equal | decorrelated
//! budget = { ttl = "10s", min_per_sec = 10, percent = 20.0 }
//!
//! [circuit_breaker]
//! failure_rate_threshold = 50.0
//! sliding_window_size = 100  # or: time_window = "60s", time_window_buckets = 60
//! minimum_calls = 20
//! wait_in_open = "30s"
//! permitted_calls_in_half_open = 5
//!
//! [bulkhead]
//! max_concurrent = 20
//! max_wait = "100ms"
//!
//! [rate_limit]
//! rate = 100
//! period = "1s"
//! burst = 20
//! ```
//!
//! Every section is optional; unknown keys are refused by name; durations are written as
//! `"2s"`, `"150ms"`, `"1m 30s"`.

use super::Pipeline;
use crate::bulkhead::Bulkhead;
use crate::circuit_breaker::CircuitBreaker;
use crate::rate_limit::RateLimiter;
use crate::retry::{Backoff, Jitter, Retry, RetryBudget};
use serde::{Deserialize, Deserializer};
use std::sync::Arc;
use std::time::Duration;

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    mainstay_core::duration::parse(&text).map_err(serde::de::Error::custom)
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// The whole pipeline.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Deadline for the whole call.
    #[serde(default, deserialize_with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// Deadline for each attempt.
    #[serde(default, deserialize_with = "opt_duration")]
    pub attempt_timeout: Option<Duration>,
    /// Retries.
    pub retry: Option<RetryConfig>,
    /// Circuit breaker.
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// Bulkhead.
    pub bulkhead: Option<BulkheadConfig>,
    /// Rate limit.
    pub rate_limit: Option<RateLimitConfig>,
}

/// `[retry]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Total calls, the first included. Default: 3.
    #[serde(default = "three")]
    pub max_attempts: u32,
    /// First delay. Default: 1 s.
    #[serde(default = "one_second", deserialize_with = "duration")]
    pub base: Duration,
    /// Largest delay. Default: 60 s.
    #[serde(default = "one_minute", deserialize_with = "duration")]
    pub max: Duration,
    /// Growth per retry. Default: 2.
    #[serde(default = "two")]
    pub multiplier: f64,
    /// `none`, `full` (default), `equal` or `decorrelated`.
    #[serde(default = "full")]
    pub jitter: JitterName,
    /// A retry budget shared by all calls through this pipeline.
    pub budget: Option<BudgetConfig>,
}

/// A jitter kind by name.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JitterName {
    /// [`Jitter::None`].
    None,
    /// [`Jitter::Full`].
    Full,
    /// [`Jitter::Equal`].
    Equal,
    /// [`Jitter::Decorrelated`].
    Decorrelated,
}

/// `[retry.budget]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Window. Default: 10 s.
    #[serde(default = "ten_seconds", deserialize_with = "duration")]
    pub ttl: Duration,
    /// Retries always allowed per second. Default: 10.
    #[serde(default = "ten")]
    pub min_per_sec: u32,
    /// Retries allowed as a percentage of calls. Default: 20.
    #[serde(default = "twenty")]
    pub percent: f64,
}

/// `[circuit_breaker]`; unset keys keep the builder's defaults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Percent.
    pub failure_rate_threshold: Option<f32>,
    /// Percent.
    pub slow_call_rate_threshold: Option<f32>,
    /// Slow-call duration.
    #[serde(default, deserialize_with = "opt_duration")]
    pub slow_call_duration: Option<Duration>,
    /// Count-based window size.
    pub sliding_window_size: Option<u32>,
    /// Time-based window length (instead of a count).
    #[serde(default, deserialize_with = "opt_duration")]
    pub time_window: Option<Duration>,
    /// Buckets of the time window. Default: 10.
    pub time_window_buckets: Option<u32>,
    /// Calls before rates are evaluated.
    pub minimum_calls: Option<u32>,
    /// Wait in OPEN.
    #[serde(default, deserialize_with = "opt_duration")]
    pub wait_in_open: Option<Duration>,
    /// Trial calls in HALF_OPEN.
    pub permitted_calls_in_half_open: Option<u32>,
    /// Close HALF_OPEN as soon as this many trials succeed.
    pub success_threshold: Option<u32>,
    /// Re-open a half-open breaker whose trials do not report within this.
    #[serde(default, deserialize_with = "opt_duration")]
    pub max_wait_in_half_open: Option<Duration>,
}

/// `[bulkhead]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkheadConfig {
    /// Concurrent calls.
    pub max_concurrent: u32,
    /// Wait for a slot. Default: 0 (refuse at once).
    #[serde(default, deserialize_with = "opt_duration")]
    pub max_wait: Option<Duration>,
}

/// `[rate_limit]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Permits per period.
    pub rate: u32,
    /// The period. Default: 1 s.
    #[serde(default = "one_second", deserialize_with = "duration")]
    pub period: Duration,
    /// Largest burst. Default: 1.
    #[serde(default = "one")]
    pub burst: u32,
}

fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}
fn ten() -> u32 {
    10
}
fn two() -> f64 {
    2.0
}
fn twenty() -> f64 {
    20.0
}
fn full() -> JitterName {
    JitterName::Full
}
fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn one_minute() -> Duration {
    Duration::from_secs(60)
}

/// A configuration that parsed but cannot be built; names the section and the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid [{section}] configuration: {reason}")]
pub struct PipelineConfigError {
    /// The section (`circuit_breaker`, `rate_limit`, …).
    pub section: &'static str,
    /// What was wrong.
    pub reason: String,
}

impl PipelineConfig {
    /// Builds the pipeline; `name` names the bulkhead compartment.
    pub fn build(&self, name: &str) -> Result<Pipeline, PipelineConfigError> {
        let mut p = Pipeline::new();
        if let Some(d) = self.timeout {
            p = p.with_timeout(d);
        }
        if let Some(d) = self.attempt_timeout {
            p = p.with_attempt_timeout(d);
        }
        if let Some(r) = &self.retry {
            let jitter = match r.jitter {
                JitterName::None => Jitter::None,
                JitterName::Full => Jitter::Full,
                JitterName::Equal => Jitter::Equal,
                JitterName::Decorrelated => Jitter::Decorrelated,
            };
            if !(r.multiplier >= 1.0 && r.multiplier.is_finite()) {
                return Err(PipelineConfigError {
                    section: "retry",
                    reason: format!("multiplier must be ≥ 1, got {}", r.multiplier),
                });
            }
            let mut b = Retry::builder()
                .max_attempts(r.max_attempts)
                .backoff(Backoff {
                    base: r.base,
                    max: r.max,
                    multiplier: r.multiplier,
                    jitter,
                });
            if let Some(budget) = &r.budget {
                b = b.budget(Arc::new(RetryBudget::new(
                    budget.ttl,
                    budget.min_per_sec,
                    budget.percent / 100.0,
                )));
            }
            p = p.with_retry(b.build());
        }
        if let Some(c) = &self.circuit_breaker {
            let mut b = CircuitBreaker::builder();
            if let Some(v) = c.failure_rate_threshold {
                b = b.failure_rate_threshold(v);
            }
            if let Some(v) = c.slow_call_rate_threshold {
                b = b.slow_call_rate_threshold(v);
            }
            if let Some(v) = c.slow_call_duration {
                b = b.slow_call_duration(v);
            }
            if let Some(v) = c.sliding_window_size {
                b = b.sliding_window_size(v);
            }
            if let Some(v) = c.time_window {
                b = b.time_window(v, c.time_window_buckets.unwrap_or(10));
            }
            if let Some(v) = c.minimum_calls {
                b = b.minimum_calls(v);
            }
            if let Some(v) = c.wait_in_open {
                b = b.wait_in_open(v);
            }
            if let Some(v) = c.permitted_calls_in_half_open {
                b = b.permitted_calls_in_half_open(v);
            }
            if let Some(v) = c.success_threshold {
                b = b.success_threshold(v);
            }
            if let Some(v) = c.max_wait_in_half_open {
                b = b.max_wait_in_half_open(v);
            }
            let breaker = b.build().map_err(|e| PipelineConfigError {
                section: "circuit_breaker",
                reason: e.to_string(),
            })?;
            p = p.with_circuit_breaker(breaker);
        }
        if let Some(b) = &self.bulkhead {
            if b.max_concurrent == 0 {
                return Err(PipelineConfigError {
                    section: "bulkhead",
                    reason: "max_concurrent must be at least 1".into(),
                });
            }
            p = p.with_bulkhead(Bulkhead::new(
                name,
                b.max_concurrent,
                b.max_wait.unwrap_or_default(),
            ));
        }
        if let Some(r) = &self.rate_limit {
            let limiter =
                RateLimiter::new(r.rate, r.period, r.burst).map_err(|e| PipelineConfigError {
                    section: "rate_limit",
                    reason: e.to_string(),
                })?;
            p = p.with_rate_limit(limiter);
        }
        Ok(p)
    }
}
