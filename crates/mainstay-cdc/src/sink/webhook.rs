//! An HTTP endpoint as the sink: each batch is one `POST` of a JSON array of Debezium
//! envelopes, in source order, retried until the endpoint takes it.
//!
//! Resilience comes from `mainstay-resilience`, the same policies the proxy uses: a retry
//! with exponential backoff and full jitter (100 ms doubling to 30 s; `Retry-After` on 429
//! and 503 honoured up to 5 minutes), and a circuit breaker (half the calls of the last 20
//! failing opens it for 5 s; while open no request is sent and the batch waits) — a down
//! endpoint is neither hammered nor skipped: the stream waits, and so does the slot.
//!
//! What counts: 2xx is taken; connection errors, timeouts, 408, 429 and 5xx are retried;
//! any other status is a permanent refusal that stops the connector with the status and the
//! start of the body (a 400 means the endpoint cannot take these events; retrying would not
//! change that).
//!
//! Delivery is at-least-once: an endpoint may see a batch again after a crash or a timeout
//! that hid a success. Each request carries `Mainstay-First-Position` and
//! `Mainstay-Last-Position` (positions in [`Position::to_text`](crate::Position::to_text)
//! form), and every envelope its `source.sequence` and `source.lsn`, so a receiver can drop
//! what it has.

use std::time::Duration;

use async_trait::async_trait;
use mainstay_resilience::circuit_breaker::{CallError, CircuitBreaker};
use mainstay_resilience::retry::{Backoff, Decision, Jitter, Retry};

use super::Sink;
use crate::error::CdcError;
use crate::event::{now_us, ChangeEvent};

/// POSTs batches of envelopes to an HTTP endpoint.
pub struct WebhookSink {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: Vec<(String, String)>,
    retry: Retry,
    breaker: CircuitBreaker,
    /// How long one request may take.
    timeout: Duration,
    /// Retries made (for tests and metrics).
    retries: u64,
}

/// Why one attempt failed.
#[derive(Debug)]
enum Attempt {
    /// Worth another try (after this long, when the endpoint said so).
    Transient(String, Option<Duration>),
    /// The endpoint refused the batch for good.
    Refused(String),
}

fn sink_err(message: impl Into<String>) -> CdcError {
    CdcError::Sink {
        sink: "webhook".into(),
        message: message.into(),
    }
}

impl WebhookSink {
    /// A sink posting to `url` (http or https), with `headers` (e.g. `Authorization`) on
    /// every request.
    pub fn new(url: &str, headers: Vec<(String, String)>) -> Result<WebhookSink, CdcError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| CdcError::Config(format!("webhook URL {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(CdcError::Config(format!(
                "webhook URL {url:?}: the scheme must be http or https"
            )));
        }
        for (name, value) in &headers {
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                CdcError::Config(format!("webhook header name {name:?} is not valid"))
            })?;
            reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                CdcError::Config(format!("webhook header {name}: the value is not valid"))
            })?;
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| CdcError::Config(format!("webhook client: {e}")))?;
        let retry = Retry::builder()
            .max_attempts(u32::MAX)
            .backoff(Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_secs(30),
                multiplier: 2.0,
                jitter: Jitter::Full,
            })
            .max_retry_after(Duration::from_secs(300))
            .build();
        let breaker = CircuitBreaker::builder()
            .failure_rate_threshold(50.0)
            .sliding_window_size(20)
            .minimum_calls(10)
            .wait_in_open(Duration::from_secs(5))
            .build()
            .map_err(|e| CdcError::Config(e.to_string()))?;
        Ok(WebhookSink {
            client,
            url: parsed,
            headers,
            retry,
            breaker,
            timeout: Duration::from_secs(30),
            retries: 0,
        })
    }

    /// How long one request may take before it is retried. Default: 30 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Uses `breaker` instead of the default circuit breaker.
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = breaker;
        self
    }

    /// Uses `retry` instead of the default (unbounded attempts, 100 ms → 30 s backoff).
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Retries made so far.
    pub fn retries(&self) -> u64 {
        self.retries
    }

    async fn post(&self, body: bytes::Bytes, first: &str, last: &str) -> Result<(), Attempt> {
        let mut request = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Mainstay-First-Position", first)
            .header("Mainstay-Last-Position", last)
            .body(body);
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Attempt::Transient(format!("POST {}: {e}", self.url), None))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.unwrap_or_default();
        let text: String = text.chars().take(300).collect();
        let message = format!("POST {} answered {status}: {text}", self.url);
        let code = status.as_u16();
        if code == 408 || code == 429 || status.is_server_error() {
            Err(Attempt::Transient(message, retry_after))
        } else {
            Err(Attempt::Refused(message))
        }
    }
}

#[async_trait]
impl Sink for WebhookSink {
    fn name(&self) -> &str {
        "webhook"
    }

    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), CdcError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(());
        };
        let now = now_us();
        let envelopes: Vec<_> = events.iter().map(|e| e.envelope(now)).collect();
        let body: bytes::Bytes = serde_json::to_vec(&envelopes)
            .map_err(|e| CdcError::Decode(format!("encoding events: {e}")))?
            .into();
        let (first, last) = (first.position.to_text(), last.position.to_text());
        let mut retries = 0u64;
        let this = &*self;
        let outcome = this
            .retry
            .run(
                || {
                    let body = body.clone();
                    let (first, last) = (&first, &last);
                    async move { this.breaker.call(|| this.post(body, first, last)).await }
                },
                |e: &CallError<Attempt>| match e {
                    // Open: wait for the breaker's next trial instead of knocking.
                    CallError::Rejected(_) => Decision::RetryAfter(Duration::from_millis(500)),
                    CallError::Inner(Attempt::Transient(_, Some(after))) => {
                        Decision::RetryAfter(*after)
                    }
                    CallError::Inner(Attempt::Transient(_, None)) => Decision::Retry,
                    CallError::Inner(Attempt::Refused(_)) => Decision::Stop,
                },
                |attempt, delay, e| {
                    retries += 1;
                    let why = match e {
                        CallError::Rejected(r) => r.to_string(),
                        CallError::Inner(Attempt::Transient(m, _) | Attempt::Refused(m)) => {
                            m.clone()
                        }
                    };
                    tracing::warn!(attempt, ?delay, "webhook: {why}; retrying");
                },
            )
            .await;
        self.retries += retries;
        outcome.map_err(|e| match e.into_inner() {
            CallError::Rejected(r) => sink_err(r.to_string()),
            CallError::Inner(Attempt::Refused(m)) => sink_err(format!(
                "{m} (a permanent refusal: fix the endpoint or the events it rejects, then restart)"
            )),
            CallError::Inner(Attempt::Transient(m, _)) => sink_err(m),
        })
    }
}
