//! `/v1/saga-definitions` and `/v1/sagas`: register HTTP sagas, start, query, watch (SSE),
//! retry and abort them.

use crate::locks::Body;
use crate::problem::Problem;
use crate::AppState;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use mainstay_txn::saga::{HistoryEntry, Saga, SagaDefinition, SagaStatus, StartOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// Longest `wait_ms` a request may ask for.
const MAX_WAIT_MS: u64 = 300_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartBody {
    definition: String,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GetQuery {
    #[serde(default)]
    wait_ms: Option<u64>,
}

#[derive(Serialize)]
pub(crate) struct SagaWithHistory {
    #[serde(flatten)]
    saga: Saga,
    history: Vec<HistoryEntry>,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Problem> {
    q.map(|Query(v)| v)
        .map_err(|e| Problem::bad_request(format!("invalid query: {}", e.body_text())))
}

fn path(p: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    p.map(|Path(v)| v).map_err(Problem::from)
}

pub(crate) async fn register(
    State(s): State<AppState>,
    Body(def): Body<SagaDefinition>,
) -> Result<Response, Problem> {
    s.targets.check_definition(&def)?;
    s.sagas.register(&def).await?;
    Ok((StatusCode::CREATED, Json(def)).into_response())
}

pub(crate) async fn definitions(
    State(s): State<AppState>,
) -> Result<Json<Vec<SagaDefinition>>, Problem> {
    Ok(Json(s.sagas.definitions().await?))
}

pub(crate) async fn definition(
    State(s): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<SagaDefinition>, Problem> {
    Ok(Json(s.sagas.definition(&path(name)?).await?))
}

/// 201 with the new saga, or 200 with the existing one for a repeated idempotency key
/// (body field or `Idempotency-Key` header).
pub(crate) async fn start(
    State(s): State<AppState>,
    headers: HeaderMap,
    Body(b): Body<StartBody>,
) -> Result<Response, Problem> {
    let header_key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Problem::bad_request("the Idempotency-Key header must be ASCII"))?
                .to_string(),
        ),
        None => None,
    };
    let key = match (b.idempotency_key, header_key) {
        (Some(a), Some(h)) if a != h => {
            return Err(Problem::bad_request(
                "idempotency_key and the Idempotency-Key header differ",
            )
            .with("field", "idempotency_key"))
        }
        (a, h) => a.or(h),
    };
    // A definition registered under a wider allow-list (or before one existed) is
    // checked again before it runs.
    if let Ok(def) = s.sagas.definition(&b.definition).await {
        s.targets.check_definition(&def)?;
    }
    let (saga, created) = s
        .sagas
        .start_saga(
            &b.definition,
            b.input,
            StartOptions {
                idempotency_key: key,
            },
        )
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(saga)).into_response())
}

pub(crate) async fn list(
    State(s): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let q = query(q)?;
    let status = q
        .status
        .as_deref()
        .map(str::parse::<SagaStatus>)
        .transpose()?;
    let sagas = s.sagas.list(status, q.limit.unwrap_or(100)).await?;
    Ok(Json(serde_json::json!({ "sagas": sagas })))
}

/// The saga and its full history; with `wait_ms`, first waits (up to 5 minutes) for it to
/// reach a final status.
pub(crate) async fn get(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<GetQuery>, QueryRejection>,
) -> Result<Json<SagaWithHistory>, Problem> {
    let id = path(id)?;
    let q = query(q)?;
    let saga = match q.wait_ms {
        Some(ms) if ms > 0 => {
            s.sagas
                .wait(&id, Duration::from_millis(ms.min(MAX_WAIT_MS)))
                .await?
        }
        _ => s.sagas.get(&id).await?,
    };
    let history = s.sagas.history(&id, 0).await?;
    Ok(Json(SagaWithHistory { saga, history }))
}

pub(crate) async fn retry(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Saga>, Problem> {
    Ok(Json(s.sagas.retry(&path(id)?).await?))
}

pub(crate) async fn abort(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Saga>, Problem> {
    Ok(Json(s.sagas.abort(&path(id)?).await?))
}

/// Server-Sent Events: every history entry (`id` = its seq, `event` = its kind, `data` =
/// the entry with the saga's status), from the start or after `Last-Event-ID`, then live;
/// the stream ends after the entry that makes the saga terminal (completed, failed,
/// aborted; a parked saga's stream stays open for an operator's retry or abort).
pub(crate) async fn events(
    State(s): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, Problem> {
    let id = path(id)?;
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| Problem::bad_request("Last-Event-ID must be a history seq (integer)"))?,
        None => 0,
    };
    s.sagas.get(&id).await?;
    let wake = s.sagas.subscribe();
    struct Cursor {
        s: AppState,
        id: String,
        after: u64,
        pending: std::collections::VecDeque<(HistoryEntry, SagaStatus)>,
        wake: tokio::sync::broadcast::Receiver<mainstay_txn::saga::SagaEvent>,
        done: bool,
    }
    let cursor = Cursor {
        s,
        id,
        after,
        pending: Default::default(),
        wake,
        done: false,
    };
    let stream = futures::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some((entry, status)) = c.pending.pop_front() {
                let data = serde_json::json!({ "status": status, "entry": entry });
                let ev = Event::default()
                    .id(entry.seq.to_string())
                    .event(entry.event.clone())
                    .data(data.to_string());
                return Some((Ok(ev), c));
            }
            if c.done {
                return None;
            }
            // Read the log (the truth, also for sagas another node drives), then wait for
            // a local event or poll again after 500 ms.
            match (
                c.s.sagas.get(&c.id).await,
                c.s.sagas.history(&c.id, c.after).await,
            ) {
                (Ok(saga), Ok(entries)) => {
                    let final_now = saga.status.is_terminal();
                    for e in entries {
                        c.after = c.after.max(e.seq);
                        c.pending.push_back((e, saga.status));
                    }
                    if final_now {
                        c.done = true;
                        continue;
                    }
                }
                _ => return None,
            }
            if c.pending.is_empty() {
                let id = c.id.clone();
                let wake = async {
                    loop {
                        match c.wake.recv().await {
                            Ok(e) if e.saga_id == id => return,
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_millis(500), wake).await;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
