//! Steps that are HTTP calls, for participants in any language.
//!
//! The request body is the saga context as JSON (see [`StepContext`]); headers carry
//! `Idempotency-Key`, `Mainstay-Saga-Id`, `Mainstay-Saga-Step` and, for compensations,
//! `Mainstay-Compensation: true`. A 2xx is success (its JSON body, or `null`, becomes the
//! step's output); a 4xx other than 408 and 429 is a business failure (compensate, no
//! retry); 408, 429, 5xx, timeouts and connection errors are transient (retried; a
//! `Retry-After` in seconds is honoured).

use super::orchestrator::{StepContext, StepError};
use reqwest::header::RETRY_AFTER;
use std::time::Duration;

/// Longest response body kept in an error message.
const MAX_ERROR_BODY: usize = 512;

pub(crate) async fn call(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    ctx: &StepContext,
    timeout: Duration,
) -> Result<serde_json::Value, StepError> {
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|e| StepError::Business(format!("invalid HTTP method {method:?}: {e}")))?;
    let mut req = client
        .request(method, url)
        .timeout(timeout)
        .header("Idempotency-Key", &ctx.idempotency_key)
        .header("Mainstay-Saga-Id", &ctx.saga_id)
        .header("Mainstay-Saga-Step", &ctx.step_name)
        .json(ctx);
    if ctx.compensating {
        req = req.header("Mainstay-Compensation", "true");
    }
    let resp = req.send().await.map_err(|e| StepError::Transient {
        message: format!("{url}: {}", error_chain(&e)),
        retry_after: None,
    })?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = resp.bytes().await.map_err(|e| StepError::Transient {
        message: format!("{url}: reading the response: {}", error_chain(&e)),
        retry_after: None,
    })?;
    if status.is_success() {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(serde_json::Value::Null);
        }
        return serde_json::from_slice(&body).map_err(|e| {
            StepError::Business(format!("{url}: {status} with a body that is not JSON: {e}"))
        });
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY)]).into_owned();
    let message = format!("{url}: {status}: {text}");
    if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
        Err(StepError::Business(message))
    } else {
        Err(StepError::Transient {
            message,
            retry_after,
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
