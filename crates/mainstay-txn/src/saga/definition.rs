//! Saga definitions: ordered steps, each an action and an optional compensation.

use crate::error::TxnError;
use mainstay_resilience::retry::{Backoff, Jitter, Retry};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Longest accepted definition name.
pub const MAX_NAME_CHARS: usize = 256;
/// Most steps one saga may have.
pub const MAX_STEPS: usize = 64;

/// A registered saga type: an ordered list of steps and an optional deadline.
///
/// Serializes to the JSON the HTTP API accepts:
/// `{"name": "order", "steps": [{"name": "reserve", "action": {"method": "POST", "url":
/// "http://inventory/reserve"}, "compensation": {"url": "http://inventory/release"}}],
/// "deadline_ms": 60000}`. A step whose call names a `handler` instead of a `url` runs a
/// Rust function registered with [`crate::saga::OrchestratorBuilder::handler`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SagaDefinition {
    /// Unique name; at most 256 characters, no `/`.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 256, pattern = "^[^/]+$")
    )]
    pub name: String,
    /// Steps, run forward in order and compensated in reverse.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 64))]
    pub steps: Vec<StepDefinition>,
    /// Saga-level deadline from start: past it, no further step starts and the saga
    /// compensates. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub deadline_ms: Option<u64>,
}

/// One step: an action, its compensation, and how each call is bounded and retried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepDefinition {
    /// Name, unique within the saga; appears in the context later steps receive.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 256, pattern = "^[^/]+$")
    )]
    pub name: String,
    /// The forward call.
    pub action: Call,
    /// The call that semantically undoes the action. Default: none (nothing to undo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<Call>,
    /// Per-attempt timeout. Default: 30 s.
    #[serde(default = "default_timeout_ms")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3_600_000))]
    pub timeout_ms: u64,
    /// How the action is retried on transient failures (5xx, timeouts, connection
    /// errors). Default: 3 attempts, 100 ms base, 10 s max, full jitter.
    #[serde(default)]
    pub retry: RetrySpec,
    /// How the compensation is retried (on any failure) before the saga is parked as
    /// `compensation_failed`. Default: 3 attempts, 100 ms base, 10 s max, full jitter.
    #[serde(default)]
    pub compensation_retry: RetrySpec,
}

fn default_timeout_ms() -> u64 {
    30_000
}

/// A call: an HTTP request (`url`, `method`), or a registered Rust handler (`handler`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Call {
    /// HTTP method. Default: `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `http://` or `https://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^\\s]*)?$")
    )]
    pub url: Option<String>,
    /// Name of a handler registered in the orchestrator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
}

impl Call {
    /// An HTTP `POST` to `url`.
    pub fn post(url: impl Into<String>) -> Self {
        Call {
            method: None,
            url: Some(url.into()),
            handler: None,
        }
    }

    /// A registered Rust handler.
    pub fn handler(name: impl Into<String>) -> Self {
        Call {
            method: None,
            url: None,
            handler: Some(name.into()),
        }
    }

    /// The HTTP method, `POST` when unset.
    pub fn method(&self) -> &str {
        self.method.as_deref().unwrap_or("POST")
    }
}

/// Retry settings of a step (JSON: `{"max_attempts": 3, "base_delay_ms": 100,
/// "max_delay_ms": 10000}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RetrySpec {
    /// Calls in total, the first included. Default: 3.
    #[serde(default = "default_attempts")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub max_attempts: u32,
    /// First backoff delay. Default: 100 ms.
    #[serde(default = "default_base_ms")]
    pub base_delay_ms: u64,
    /// Largest backoff delay. Default: 10 s.
    #[serde(default = "default_max_ms")]
    pub max_delay_ms: u64,
}

fn default_attempts() -> u32 {
    3
}
fn default_base_ms() -> u64 {
    100
}
fn default_max_ms() -> u64 {
    10_000
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            max_attempts: default_attempts(),
            base_delay_ms: default_base_ms(),
            max_delay_ms: default_max_ms(),
        }
    }
}

impl RetrySpec {
    /// The [`Retry`] policy these settings describe (exponential ×2, full jitter).
    pub fn policy(&self) -> Retry {
        Retry::builder()
            .max_attempts(self.max_attempts)
            .backoff(Backoff {
                base: Duration::from_millis(self.base_delay_ms),
                max: Duration::from_millis(self.max_delay_ms),
                multiplier: 2.0,
                jitter: Jitter::Full,
            })
            .build()
    }
}

impl StepDefinition {
    /// A step with an action, no compensation, and default timeout and retries.
    pub fn new(name: impl Into<String>, action: Call) -> Self {
        StepDefinition {
            name: name.into(),
            action,
            compensation: None,
            timeout_ms: default_timeout_ms(),
            retry: RetrySpec::default(),
            compensation_retry: RetrySpec::default(),
        }
    }

    /// Sets the compensation.
    pub fn compensate_with(mut self, call: Call) -> Self {
        self.compensation = Some(call);
        self
    }

    /// The per-attempt timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Checks a name used in a URL path: non-empty, at most 256 characters, no `/`.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), TxnError> {
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || name.contains('/') {
        return Err(TxnError::invalid(
            what,
            format!("{what} {name:?} must be 1 to {MAX_NAME_CHARS} characters without '/'"),
        ));
    }
    Ok(())
}

impl SagaDefinition {
    /// A definition with no deadline.
    pub fn new(name: impl Into<String>, steps: Vec<StepDefinition>) -> Self {
        SagaDefinition {
            name: name.into(),
            steps,
            deadline_ms: None,
        }
    }

    /// Checks every field; the error names the first one that is wrong.
    pub fn validate(&self) -> Result<(), TxnError> {
        check_name("name", &self.name)?;
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            return Err(TxnError::invalid(
                "steps",
                format!(
                    "a saga needs 1 to {MAX_STEPS} steps, got {}",
                    self.steps.len()
                ),
            ));
        }
        if self.deadline_ms == Some(0) {
            return Err(TxnError::invalid("deadline_ms", "deadline_ms must be > 0"));
        }
        for (i, step) in self.steps.iter().enumerate() {
            let at = |field: &str| format!("steps[{i}].{field}");
            check_name("step name", &step.name).map_err(|_| {
                TxnError::invalid_at(
                    at("name"),
                    "step names must be 1 to 256 characters without '/'",
                )
            })?;
            if self.steps[..i].iter().any(|s| s.name == step.name) {
                return Err(TxnError::invalid_at(
                    at("name"),
                    format!("duplicate step name {:?}", step.name),
                ));
            }
            step.action.validate(&at("action"))?;
            if let Some(c) = &step.compensation {
                c.validate(&at("compensation"))?;
            }
            if step.timeout_ms == 0 || step.timeout_ms > 3_600_000 {
                return Err(TxnError::invalid_at(
                    at("timeout_ms"),
                    "timeout_ms must be between 1 and 3600000",
                ));
            }
            for (field, r) in [
                ("retry", step.retry),
                ("compensation_retry", step.compensation_retry),
            ] {
                if r.max_attempts == 0 || r.max_attempts > 100 || r.base_delay_ms > r.max_delay_ms {
                    return Err(TxnError::invalid_at(
                        at(field),
                        "max_attempts must be 1..=100 and base_delay_ms <= max_delay_ms",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Call {
    fn validate(&self, at: &str) -> Result<(), TxnError> {
        match (&self.url, &self.handler) {
            (Some(url), None) => {
                let parsed = reqwest::Url::parse(url).map_err(|e| {
                    TxnError::invalid_at(format!("{at}.url"), format!("invalid URL {url:?}: {e}"))
                })?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                    return Err(TxnError::invalid_at(
                        format!("{at}.url"),
                        format!("invalid URL {url:?}: needs http:// or https:// and a host"),
                    ));
                }
                let method = self.method();
                if reqwest::Method::from_bytes(method.as_bytes()).is_err() {
                    return Err(TxnError::invalid_at(
                        format!("{at}.method"),
                        format!("invalid HTTP method {method:?}"),
                    ));
                }
                Ok(())
            }
            (None, Some(h)) if !h.is_empty() && self.method.is_none() => Ok(()),
            _ => Err(TxnError::invalid_at(
                at.to_string(),
                "a call has either a url (with an optional method) or a handler",
            )),
        }
    }
}
