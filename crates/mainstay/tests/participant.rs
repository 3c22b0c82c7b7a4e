//! A saga participant over HTTP (in the test process, so it outlives orchestrator
//! crashes) that applies each idempotency key's effect once and records everything.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One call received.
#[derive(Clone, Debug)]
pub struct Call {
    pub saga_id: String,
    pub step: usize,
    pub compensating: bool,
    pub key: String,
    pub header_key: String,
}

#[derive(Default)]
pub struct Records {
    pub calls: Vec<Call>,
    /// Effects in the order applied: one per idempotency key.
    pub effects: Vec<Call>,
    /// Compensation failures to produce per (saga input tag, step).
    pub compensation_failures: HashMap<usize, u32>,
}

#[derive(Clone, Default)]
pub struct Participant {
    pub records: Arc<Mutex<Records>>,
}

/// Actions refuse (409) when the saga input's `fail_at` equals their step; compensations
/// fail (500) while `compensation_failures[step]` is positive.
async fn handle(
    State(p): State<Participant>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    Json(ctx): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let compensating = kind == "compensate";
    let step = ctx["step"].as_u64().unwrap_or(u64::MAX) as usize;
    let call = Call {
        saga_id: ctx["saga_id"].as_str().unwrap_or_default().to_string(),
        step,
        compensating,
        key: ctx["idempotency_key"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        header_key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
    };
    let mut r = p.records.lock().unwrap();
    r.calls.push(call.clone());
    if !compensating && ctx["input"]["fail_at"].as_u64() == Some(step as u64) {
        return (StatusCode::CONFLICT, Json(json!({"error": "refused"})));
    }
    if compensating {
        if let Some(n) = r.compensation_failures.get_mut(&step) {
            if *n > 0 {
                *n -= 1;
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"error": "down"})),
                );
            }
        }
    }
    if !r.effects.iter().any(|e| e.key == call.key) {
        r.effects.push(call);
    }
    (
        StatusCode::OK,
        Json(json!({ "done": step, "seen": ctx["outputs"].as_object().map(|o| o.len()) })),
    )
}

impl Participant {
    /// Serves on a free port; returns the base URL.
    pub async fn start(&self) -> String {
        let app = Router::new()
            .route("/{kind}", post(handle))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// Effects for one saga as (step, compensating), in order.
    pub fn effects_of(&self, saga_id: &str) -> Vec<(usize, bool)> {
        let r = self.records.lock().unwrap();
        r.effects
            .iter()
            .filter(|e| e.saga_id == saga_id)
            .map(|e| (e.step, e.compensating))
            .collect()
    }

    /// Every call received for one saga, in order.
    pub fn calls_of(&self, saga_id: &str) -> Vec<Call> {
        let r = self.records.lock().unwrap();
        r.calls
            .iter()
            .filter(|c| c.saga_id == saga_id)
            .cloned()
            .collect()
    }

    /// Checks that every call for `saga_id` carried the attempt-independent key, in the
    /// body and the header alike.
    pub fn check_keys(&self, saga_id: &str) {
        let r = self.records.lock().unwrap();
        for c in r.calls.iter().filter(|c| c.saga_id == saga_id) {
            let expected = if c.compensating {
                format!("{saga_id}/{}/compensate", c.step)
            } else {
                format!("{saga_id}/{}", c.step)
            };
            assert_eq!(c.key, expected, "{c:?}");
            assert_eq!(c.header_key, expected, "{c:?}");
        }
    }

    /// The definition JSON of an `n`-step saga whose steps call this participant.
    pub fn definition(base: &str, name: &str, n: usize) -> Value {
        let steps: Vec<Value> = (0..n)
            .map(|i| {
                json!({
                    "name": format!("step{i}"),
                    "action": {"url": format!("{base}/action")},
                    "compensation": {"url": format!("{base}/compensate")},
                    "timeout_ms": 5000,
                    "retry": {"max_attempts": 5, "base_delay_ms": 5, "max_delay_ms": 50},
                    "compensation_retry": {"max_attempts": 3, "base_delay_ms": 5, "max_delay_ms": 50}
                })
            })
            .collect();
        json!({ "name": name, "steps": steps })
    }
}

/// What a saga's effects must be: actions `0..k` then their compensations in reverse
/// when it failed at step `k`; all actions when it completed.
pub fn expected_effects(steps: usize, fail_at: Option<usize>) -> Vec<(usize, bool)> {
    match fail_at {
        None => (0..steps).map(|i| (i, false)).collect(),
        Some(k) => (0..k)
            .map(|i| (i, false))
            .chain((0..k).rev().map(|i| (i, true)))
            .collect(),
    }
}
