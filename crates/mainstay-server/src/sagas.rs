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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartBody {
    /// The registered definition to run.
    definition: String,
    /// The saga's input, passed to every step.
    #[serde(default)]
    input: Value,
    /// Starting again with the same key returns the saga it started.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only sagas with this status.
    #[serde(default)]
    #[param(value_type = Option<SagaStatus>)]
    status: Option<String>,
    /// At most this many (1 to 10000). Default: 100.
    #[serde(default)]
    #[param(minimum = 1, maximum = 10_000)]
    limit: Option<usize>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct GetQuery {
    /// Wait up to this long (at most 5 minutes, and this server's max_wait) for a final
    /// status.
    #[serde(default)]
    #[param(minimum = 0, maximum = 300_000)]
    wait_ms: Option<u64>,
}

/// The `{name}` of a saga definition.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Declared for the document.
pub(crate) struct DefinitionPath {
    name: String,
}

/// The `{id}` of a saga.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Declared for the document.
pub(crate) struct SagaPath {
    id: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SagaList {
    sagas: Vec<mainstay_txn::saga::SagaSummary>,
}

#[derive(Serialize, utoipa::ToSchema)]
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

/// Register (or replace) a saga definition.
#[utoipa::path(post, path = "/v1/saga-definitions", tag = "sagas", request_body = SagaDefinition,
    responses((status = 201, description = "registered", body = SagaDefinition),
              (status = 403, description = "a step or compensation URL this server may not call", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn register(
    State(s): State<AppState>,
    Body(def): Body<SagaDefinition>,
) -> Result<Response, Problem> {
    s.targets.check_definition(&def)?;
    s.sagas.register(&def).await?;
    Ok((StatusCode::CREATED, Json(def)).into_response())
}

/// Every registered definition.
#[utoipa::path(get, path = "/v1/saga-definitions", tag = "sagas",
    responses((status = 200, description = "the definitions", body = Vec<SagaDefinition>)))]
pub(crate) async fn definitions(
    State(s): State<AppState>,
) -> Result<Json<Vec<SagaDefinition>>, Problem> {
    Ok(Json(s.sagas.definitions().await?))
}

/// One definition.
#[utoipa::path(get, path = "/v1/saga-definitions/{name}", tag = "sagas", params(DefinitionPath),
    responses((status = 200, description = "the definition", body = SagaDefinition),
              (status = 404, description = "no such definition", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn definition(
    State(s): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<SagaDefinition>, Problem> {
    Ok(Json(s.sagas.definition(&path(name)?).await?))
}

/// 201 with the new saga, or 200 with the existing one for a repeated idempotency key
/// (body field or `Idempotency-Key` header).
#[utoipa::path(post, path = "/v1/sagas", tag = "sagas", request_body = StartBody,
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, description = "the idempotency key, if not in the body")),
    responses((status = 201, description = "started", body = Saga),
              (status = 200, description = "the saga this idempotency key already started", body = Saga),
              (status = 403, description = "the definition calls a URL this server may not call", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 404, description = "no such definition", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
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

/// Sagas, newest first.
#[utoipa::path(get, path = "/v1/sagas", tag = "sagas", params(ListQuery),
    responses((status = 200, description = "saga summaries", body = SagaList)))]
pub(crate) async fn list(
    State(s): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<SagaList>, Problem> {
    let q = query(q)?;
    let status = q
        .status
        .as_deref()
        .map(str::parse::<SagaStatus>)
        .transpose()?;
    let sagas = s.sagas.list(status, crate::limit(q.limit)?).await?;
    Ok(Json(SagaList { sagas }))
}

/// The saga and its full history; with `wait_ms`, first waits (up to 5 minutes) for it to
/// reach a final status.
#[utoipa::path(get, path = "/v1/sagas/{id}", tag = "sagas", params(SagaPath, GetQuery),
    responses((status = 200, description = "the saga with its history", body = SagaWithHistory),
              (status = 404, description = "no such saga", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn get(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<GetQuery>, QueryRejection>,
) -> Result<Json<SagaWithHistory>, Problem> {
    let id = path(id)?;
    let q = query(q)?;
    let wait_ms = s.check_wait(q.wait_ms.unwrap_or(0), MAX_WAIT_MS)?;
    let saga = if wait_ms > 0 {
        s.sagas.wait(&id, Duration::from_millis(wait_ms)).await?
    } else {
        s.sagas.get(&id).await?
    };
    let history = s.sagas.history(&id, 0).await?;
    Ok(Json(SagaWithHistory { saga, history }))
}

/// Retry a saga parked as `compensation_failed`.
#[utoipa::path(post, path = "/v1/sagas/{id}/retry", tag = "sagas", params(SagaPath),
    responses((status = 200, description = "resumed", body = Saga),
              (status = 404, description = "no such saga", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 409, description = "the saga is not parked", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn retry(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Saga>, Problem> {
    Ok(Json(s.sagas.retry(&path(id)?).await?))
}

/// Abort: a running saga compensates; a parked one becomes `aborted`.
#[utoipa::path(post, path = "/v1/sagas/{id}/abort", tag = "sagas", params(SagaPath),
    responses((status = 200, description = "aborting or aborted", body = Saga),
              (status = 404, description = "no such saga", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 409, description = "the saga already finished", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
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
#[utoipa::path(get, path = "/v1/sagas/{id}/events", tag = "sagas",
    params(SagaPath, ("Last-Event-ID" = Option<u64>, Header, nullable = false, description = "resume after this history seq")),
    responses((status = 200, description = "Server-Sent Events: the saga's history entries, then live ones", content_type = "text/event-stream", body = String),
              (status = 404, description = "no such saga", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn events(
    State(s): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, Problem> {
    let shutdown = s.shutdown.clone();
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
    Ok(Sse::new(futures::StreamExt::take_until(
        stream,
        shutdown.cancelled_owned(),
    ))
    .keep_alive(KeepAlive::default()))
}
