//! `/v1/streams`, `/v1/all` and `/v1/subscriptions`: the event store over HTTP.
//!
//! Positions travel as `COMMIT/PREPARE` strings (the SSE event id, `after=`,
//! `Last-Event-ID`), versions as numbers, expected versions as `"any"`, `"no_stream"`,
//! `"stream_exists"` or a number.

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
use mainstay_eventstore::{
    subscribe, DeleteMode, Direction, EventData, ExpectedVersion, Position, ReadAllFilter,
    RecordedEvent, Snapshot, StreamMetadata, SubscribeOptions,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// Most events one read returns.
const MAX_READ: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppendBody {
    #[serde(default)]
    expected_version: Option<Value>,
    events: Vec<EventIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppendManyBody {
    appends: Vec<StreamAppend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamAppend {
    stream: String,
    #[serde(default)]
    expected_version: Option<Value>,
    events: Vec<EventIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventIn {
    /// Give one to make retries idempotent; a fresh one is made when missing.
    #[serde(default)]
    id: Option<String>,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    metadata: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadQuery {
    #[serde(default)]
    from: Option<u64>,
    #[serde(default)]
    direction: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AllQuery {
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    stream_prefix: Option<String>,
    /// Comma-separated.
    #[serde(default)]
    event_types: Option<String>,
    /// Subscribe only: a durable subscription's name (start at its checkpoint).
    #[serde(default)]
    subscription: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteQuery {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    expected_version: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckpointBody {
    position: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotBody {
    version: u64,
    data: Value,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Problem> {
    q.map(|Query(v)| v)
        .map_err(|e| Problem::bad_request(format!("invalid query: {}", e.body_text())))
}

fn path(p: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    p.map(|Path(v)| v).map_err(Problem::from)
}

fn bad_expected() -> Problem {
    Problem::bad_request(
        "expected_version must be \"any\", \"no_stream\", \"stream_exists\" or a version number (0 or more)",
    )
    .with("field", "expected_version")
}

/// `"any"`, `"no_stream"`, `"stream_exists"`, a number, or a number in a string.
fn expected_version(v: Option<&Value>) -> Result<ExpectedVersion, Problem> {
    match v {
        None | Some(Value::Null) => Ok(ExpectedVersion::Any),
        Some(Value::String(s)) => parse_expected(s),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(ExpectedVersion::Exact)
            .ok_or_else(bad_expected),
        Some(_) => Err(bad_expected()),
    }
}

fn parse_expected(s: &str) -> Result<ExpectedVersion, Problem> {
    s.parse().map_err(|_| bad_expected())
}

fn position(s: &str, field: &str) -> Result<Position, Problem> {
    s.parse::<Position>().map_err(|_| {
        Problem::bad_request(format!(
            "{field} must be a position COMMIT/PREPARE (as events carry it), got {s:?}"
        ))
        .with("field", field.to_string())
    })
}

fn filter(q: &AllQuery) -> ReadAllFilter {
    ReadAllFilter {
        stream_prefix: q.stream_prefix.clone().filter(|p| !p.is_empty()),
        event_types: q
            .event_types
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect(),
    }
}

fn event_data(events: Vec<EventIn>) -> Vec<EventData> {
    events
        .into_iter()
        .map(|e| EventData {
            id: e.id.unwrap_or_else(mainstay_core::id::unguessable),
            event_type: e.event_type,
            data: e.data,
            metadata: e.metadata,
        })
        .collect()
}

/// Appends to several streams in one transaction: all or nothing. 200 with one result
/// per append, in order; a refusal names the stream it concerns.
pub(crate) async fn append_many(
    State(s): State<AppState>,
    Body(b): Body<AppendManyBody>,
) -> Result<Json<Value>, Problem> {
    let mut appends = Vec::with_capacity(b.appends.len());
    let mut count = 0;
    for (i, a) in b.appends.into_iter().enumerate() {
        let expected = expected_version(a.expected_version.as_ref())
            .map_err(|p| p.with("field", format!("appends[{i}].expected_version")))?;
        count += a.events.len();
        appends.push(mainstay_eventstore::Append {
            stream: a.stream,
            expected,
            events: event_data(a.events),
        });
    }
    let streams: Vec<String> = appends.iter().map(|a| a.stream.clone()).collect();
    let results = s.events.append_many(appends).await?;
    s.metrics.events_appended(count);
    Ok(Json(json!({
        "results": streams.iter().zip(&results).map(|(st, r)| r.to_wire_json(st)).collect::<Vec<_>>(),
    })))
}

/// Appends a batch atomically: 200 with the new version and positions (also for an
/// idempotent retry of the same event ids).
pub(crate) async fn append(
    State(s): State<AppState>,
    stream: Result<Path<String>, PathRejection>,
    Body(b): Body<AppendBody>,
) -> Result<Json<Value>, Problem> {
    let stream = path(stream)?;
    let expected = expected_version(b.expected_version.as_ref())?;
    let count = b.events.len();
    let r = s
        .events
        .append(&stream, expected, event_data(b.events))
        .await?;
    s.metrics.events_appended(count);
    Ok(Json(r.to_wire_json(&stream)))
}

/// Reads a stream forward (default, from version 0) or backward (default, from the end).
pub(crate) async fn read(
    State(s): State<AppState>,
    stream: Result<Path<String>, PathRejection>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let stream = path(stream)?;
    let q = query(q)?;
    let direction = match q.direction.as_deref() {
        None | Some("forward") => Direction::Forward,
        Some("backward") => Direction::Backward,
        Some(other) => {
            return Err(Problem::bad_request(format!(
                "direction must be forward or backward, got {other:?}"
            ))
            .with("field", "direction"))
        }
    };
    let from = q.from.unwrap_or(match direction {
        Direction::Forward => 0,
        Direction::Backward => u64::MAX,
    });
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_READ);
    let events = s
        .events
        .read_stream(&stream, from, direction, limit)
        .await?;
    Ok(Json(json!({
        "stream": stream,
        "events": events.iter().map(RecordedEvent::to_wire_json).collect::<Vec<_>>(),
    })))
}

/// `$all` after a position, optionally filtered; `last_position` is where to continue.
pub(crate) async fn read_all(
    State(s): State<AppState>,
    q: Result<Query<AllQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let q = query(q)?;
    if q.subscription.is_some() {
        return Err(
            Problem::bad_request("subscription applies to /v1/all/subscribe only")
                .with("field", "subscription"),
        );
    }
    let after = match &q.after {
        Some(a) => position(a, "after")?,
        None => Position::START,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_READ);
    let events = s.events.read_all(after, limit, &filter(&q)).await?;
    let last = events.last().map_or(after, |e| e.position);
    Ok(Json(json!({
        "events": events.iter().map(RecordedEvent::to_wire_json).collect::<Vec<_>>(),
        "last_position": last.to_string(),
    })))
}

/// Server-Sent Events over `$all`: catch-up then live, never skipping or repeating. Each
/// event's SSE id is its position; a reconnecting client's `Last-Event-ID` resumes right
/// after it. Without one, `after=` or a durable `subscription=`'s checkpoint (saved with
/// `POST /v1/subscriptions/{name}/checkpoint`) says where to start.
pub(crate) async fn subscribe_all(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<AllQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, Problem> {
    let q = query(q)?;
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => Some(position(
            v.to_str()
                .map_err(|_| Problem::bad_request("Last-Event-ID must be ASCII"))?
                .trim(),
            "Last-Event-ID",
        )?),
        None => None,
    };
    let after = match &q.after {
        Some(a) => Some(position(a, "after")?),
        None => None,
    };
    let mut options = SubscribeOptions::after(last_event_id.or(after).unwrap_or(Position::START))
        .filter(filter(&q));
    // A durable subscription's checkpoint applies only when the client names no position
    // (a reconnect carries Last-Event-ID, which is more recent than any saved checkpoint).
    if let Some(name) = &q.subscription {
        if name.is_empty() || name.len() > 256 {
            return Err(
                Problem::bad_request("subscription names are 1 to 256 bytes")
                    .with("field", "subscription"),
            );
        }
        if last_event_id.is_none() && after.is_none() {
            options.name = Some(name.clone());
        }
    }
    let sub = subscribe(s.events.clone(), options).await?;
    let stream = futures::stream::unfold(sub, |mut sub| async move {
        match sub.next().await {
            Ok(e) => {
                let ev = Event::default()
                    .id(e.position.to_string())
                    .event(e.event_type.clone())
                    .data(e.to_wire_json().to_string());
                Some((Ok(ev), sub))
            }
            Err(e) => {
                tracing::warn!(error = %e, "event subscription ended");
                None
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// A durable subscription's checkpoint (`null` before the first save).
pub(crate) async fn checkpoint(
    State(s): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, Problem> {
    let name = path(name)?;
    let at = s.events.load_checkpoint(&name).await?;
    Ok(Json(
        json!({ "name": name, "position": at.map(|p| p.to_string()) }),
    ))
}

/// Saves a durable subscription's checkpoint.
pub(crate) async fn save_checkpoint(
    State(s): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    Body(b): Body<CheckpointBody>,
) -> Result<Json<Value>, Problem> {
    let name = path(name)?;
    let at = position(&b.position, "position")?;
    s.events.save_checkpoint(&name, at).await?;
    Ok(Json(json!({ "name": name, "position": at.to_string() })))
}

pub(crate) async fn metadata(
    State(s): State<AppState>,
    stream: Result<Path<String>, PathRejection>,
) -> Result<Json<StreamMetadata>, Problem> {
    Ok(Json(s.events.stream_metadata(&path(stream)?).await?))
}

pub(crate) async fn set_metadata(
    State(s): State<AppState>,
    stream: Result<Path<String>, PathRejection>,
    Body(m): Body<StreamMetadata>,
) -> Result<Json<StreamMetadata>, Problem> {
    let stream = path(stream)?;
    s.events.set_stream_metadata(&stream, m.clone()).await?;
    Ok(Json(m))
}

/// The latest snapshot of the stream's aggregate; 404 `snapshot-not-found` when none.
pub(crate) async fn snapshot(
    State(s): State<AppState>,
    stream: Result<Path<String>, PathRejection>,
) -> Result<Json<Snapshot>, Problem> {
    stored_snapshot(&s, path(stream)?).await
}

/// The snapshot stored for `stream`, or 404 `snapshot-not-found`.
async fn stored_snapshot(s: &AppState, stream: String) -> Result<Json<Snapshot>, Problem> {
    match s.events.load_snapshot(&stream).await? {
        Some(snapshot) => Ok(Json(snapshot)),
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "snapshot-not-found",
            format!("no snapshot saved for stream {stream:?}"),
        )
        .with("stream", stream)),
    }
}

/// Saves `{version, data}` as the stream's snapshot unless a newer one is stored; answers
/// with the snapshot stored afterwards (the caller sees whether theirs was kept).
pub(crate) async fn save_snapshot(
    State(s): State<AppState>,
    stream: Result<Path<String>, PathRejection>,
    Body(b): Body<SnapshotBody>,
) -> Result<Json<Snapshot>, Problem> {
    let stream = path(stream)?;
    s.events.save_snapshot(&stream, b.version, b.data).await?;
    // 404 only if a hard delete raced the save.
    stored_snapshot(&s, stream).await
}

/// Removes the events retention and soft deletes hide (in batches; appends continue
/// meanwhile): `{"removed": n}`.
pub(crate) async fn scavenge(State(s): State<AppState>) -> Result<Json<Value>, Problem> {
    let removed = s.events.scavenge().await?;
    Ok(Json(json!({ "removed": removed })))
}

/// `?mode=soft` (default) or `hard`, `&expected_version=` (default any): 204.
pub(crate) async fn delete(
    State(s): State<AppState>,
    stream: Result<Path<String>, PathRejection>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let stream = path(stream)?;
    let q = query(q)?;
    let mode = match q.mode.as_deref() {
        None | Some("soft") => DeleteMode::Soft,
        Some("hard") => DeleteMode::Hard,
        Some(other) => {
            return Err(
                Problem::bad_request(format!("mode must be soft or hard, got {other:?}"))
                    .with("field", "mode"),
            )
        }
    };
    let expected = match q.expected_version.as_deref() {
        None => ExpectedVersion::Any,
        Some(v) => parse_expected(v)?,
    };
    s.events.delete_stream(&stream, expected, mode).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
