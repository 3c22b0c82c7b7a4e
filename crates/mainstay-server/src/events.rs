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
    RecordedEvent, Snapshot, StreamMetadata, SubscribeOptions, WireAppendResult, WireEvent,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppendBody {
    #[serde(default)]
    #[schema(value_type = Option<ExpectedVersionDoc>)]
    expected_version: Option<Value>,
    #[schema(min_items = 1)]
    events: Vec<EventIn>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppendManyBody {
    #[schema(min_items = 1)]
    appends: Vec<StreamAppend>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamAppend {
    #[schema(min_length = 1, max_length = 256, pattern = "^[^$]")]
    stream: String,
    #[serde(default)]
    #[schema(value_type = Option<ExpectedVersionDoc>)]
    expected_version: Option<Value>,
    #[schema(min_items = 1)]
    events: Vec<EventIn>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventIn {
    /// Give one to make retries idempotent; a fresh one is made when missing.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    id: Option<String>,
    #[serde(rename = "type")]
    #[schema(min_length = 1, max_length = 256)]
    event_type: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    metadata: Value,
}

/// `"any"` (the default), `"no_stream"`, `"stream_exists"`, or the stream's current
/// version: a number, or a number in a string — what [`expected_version`] parses.
pub(crate) struct ExpectedVersionDoc;

impl utoipa::PartialSchema for ExpectedVersionDoc {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .description(Some(
                "\"any\" (default), \"no_stream\", \"stream_exists\", or the stream's current version (a number, or a number in a string)",
            ))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["any", "no_stream", "stream_exists"])),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .maximum(Some(u64::MAX)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[0-9]{1,19}$")),
            )
            .into()
    }
}

impl utoipa::ToSchema for ExpectedVersionDoc {
    fn name() -> std::borrow::Cow<'static, str> {
        "ExpectedVersion".into()
    }
}

/// The `{stream}` of a stream route.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Declared for the document.
pub(crate) struct StreamPath {
    /// 1 to 256 characters, not starting with `$`.
    #[param(min_length = 1, max_length = 256, pattern = "^[^$]")]
    stream: String,
}

/// The `{name}` of a durable subscription.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Declared for the document.
pub(crate) struct SubscriptionPath {
    #[param(min_length = 1, max_length = 256)]
    name: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReadQuery {
    /// First version (default 0; backward: the end).
    #[serde(default)]
    #[param(minimum = 0)]
    from: Option<u64>,
    /// Default forward.
    #[serde(default)]
    #[param(value_type = Option<DirectionDoc>)]
    direction: Option<String>,
    /// At most this many (1 to 10000). Default: 100.
    #[serde(default)]
    #[param(minimum = 1, maximum = 10_000)]
    limit: Option<usize>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct AllQuery {
    /// Start after this position (`COMMIT/PREPARE`). Default: the start.
    #[serde(default)]
    #[param(pattern = "^[0-9]{1,19}/[0-9]{1,19}$")]
    after: Option<String>,
    /// At most this many (1 to 10000). Default: 100.
    #[serde(default)]
    #[param(minimum = 1, maximum = 10_000)]
    limit: Option<usize>,
    /// Only streams starting with this.
    #[serde(default)]
    stream_prefix: Option<String>,
    /// Only these event types, comma-separated.
    #[serde(default)]
    event_types: Option<String>,
    /// Subscribe only: a durable subscription's name (start at its checkpoint).
    #[serde(default)]
    #[param(min_length = 1, max_length = 256)]
    subscription: Option<String>,
}

/// `$all` reads take every filter but `subscription`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Declared for the document.
pub(crate) struct AllReadQuery {
    /// Start after this position (`COMMIT/PREPARE`). Default: the start.
    #[param(pattern = "^[0-9]{1,19}/[0-9]{1,19}$")]
    after: Option<String>,
    /// At most this many (1 to 10000). Default: 100.
    #[param(minimum = 1, maximum = 10_000)]
    limit: Option<usize>,
    /// Only streams starting with this.
    stream_prefix: Option<String>,
    /// Only these event types, comma-separated.
    event_types: Option<String>,
}

/// Reading direction.
#[allow(dead_code)] // A schema only.
#[derive(utoipa::ToSchema)]
#[schema(as = Direction)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DirectionDoc {
    Forward,
    Backward,
}

/// How a stream is deleted.
#[allow(dead_code)] // A schema only.
#[derive(utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DeleteModeDoc {
    Soft,
    Hard,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeleteQuery {
    /// `soft` (default: reads 404 until an append revives the stream) or `hard`
    /// (a tombstone: 410 for good).
    #[serde(default)]
    #[param(value_type = Option<DeleteModeDoc>)]
    mode: Option<String>,
    /// Default any.
    #[serde(default)]
    #[param(value_type = Option<ExpectedVersionDoc>)]
    expected_version: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckpointBody {
    /// `COMMIT/PREPARE`.
    #[schema(pattern = "^[0-9]{1,19}/[0-9]{1,19}$")]
    position: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotBody {
    /// The version of the last event folded into `data`.
    version: u64,
    /// The aggregate's state (at most 1 MiB as JSON).
    data: Value,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct StreamRead<'a> {
    stream: String,
    events: Vec<WireEvent<'a>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AllRead<'a> {
    events: Vec<WireEvent<'a>>,
    /// Where to continue: `after=` this.
    #[schema(pattern = "^[0-9]{1,19}/[0-9]{1,19}$")]
    last_position: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AppendManyResult<'a> {
    results: Vec<WireAppendResult<'a>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Checkpoint {
    name: String,
    /// `null` before the first save.
    #[schema(pattern = "^[0-9]{1,19}/[0-9]{1,19}$")]
    position: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Scavenged {
    /// Events removed.
    removed: u64,
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
#[utoipa::path(post, path = "/v1/streams", tag = "events", request_body = AppendManyBody,
    responses((status = 200, description = "one result per append, in order", body = AppendManyResult),
              (status = 409, description = "wrong expected version or idempotency conflict (names the stream)", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 410, description = "a stream is tombstoned", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn append_many(
    State(s): State<AppState>,
    Body(b): Body<AppendManyBody>,
) -> Result<Response, Problem> {
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
    Ok(Json(AppendManyResult {
        results: streams
            .iter()
            .zip(&results)
            .map(|(st, r)| r.to_wire(st))
            .collect(),
    })
    .into_response())
}

/// Appends a batch atomically: 200 with the new version and positions (also for an
/// idempotent retry of the same event ids).
#[utoipa::path(post, path = "/v1/streams/{stream}", tag = "events", params(StreamPath), request_body = AppendBody,
    responses((status = 200, description = "the new version and the batch's positions", body = WireAppendResult),
              (status = 409, description = "wrong expected version (names expected and actual), or the ids are already stored elsewhere in the stream", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 410, description = "the stream is tombstoned", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn append(
    State(s): State<AppState>,
    stream: Result<Path<String>, PathRejection>,
    Body(b): Body<AppendBody>,
) -> Result<Response, Problem> {
    let stream = path(stream)?;
    let expected = expected_version(b.expected_version.as_ref())?;
    let count = b.events.len();
    let r = s
        .events
        .append(&stream, expected, event_data(b.events))
        .await?;
    s.metrics.events_appended(count);
    Ok(Json(r.to_wire(&stream)).into_response())
}

/// Reads a stream forward (default, from version 0) or backward (default, from the end).
#[utoipa::path(get, path = "/v1/streams/{stream}", tag = "events", params(StreamPath, ReadQuery),
    responses((status = 200, description = "the events", body = StreamRead),
              (status = 404, description = "no such stream (or soft-deleted)", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 410, description = "the stream is tombstoned", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn read(
    State(s): State<AppState>,
    stream: Result<Path<String>, PathRejection>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, Problem> {
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
    if q.from.is_some_and(|f| f > i64::MAX as u64) {
        return Err(Problem::invalid_field(
            "from",
            format!("from must be at most {}", i64::MAX),
        ));
    }
    let from = q.from.unwrap_or(match direction {
        Direction::Forward => 0,
        Direction::Backward => u64::MAX,
    });
    let limit = crate::limit(q.limit)?;
    let events = s
        .events
        .read_stream(&stream, from, direction, limit)
        .await?;
    Ok(Json(StreamRead {
        stream,
        events: events.iter().map(RecordedEvent::to_wire).collect(),
    })
    .into_response())
}

/// `$all` after a position, optionally filtered; `last_position` is where to continue.
#[utoipa::path(get, path = "/v1/all", tag = "events", params(AllReadQuery),
    responses((status = 200, description = "events in position order (never skipping one that commits later)", body = AllRead)))]
pub(crate) async fn read_all(
    State(s): State<AppState>,
    q: Result<Query<AllQuery>, QueryRejection>,
) -> Result<Response, Problem> {
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
    let limit = crate::limit(q.limit)?;
    let events = s.events.read_all(after, limit, &filter(&q)).await?;
    let last = events.last().map_or(after, |e| e.position);
    Ok(Json(AllRead {
        events: events.iter().map(RecordedEvent::to_wire).collect(),
        last_position: last.to_string(),
    })
    .into_response())
}

/// Server-Sent Events over `$all`: catch-up then live, never skipping or repeating. Each
/// event's SSE id is its position; a reconnecting client's `Last-Event-ID` resumes right
/// after it. Without one, `after=` or a durable `subscription=`'s checkpoint (saved with
/// `POST /v1/subscriptions/{name}/checkpoint`) says where to start.
#[utoipa::path(get, path = "/v1/all/subscribe", tag = "events",
    params(AllQuery, ("Last-Event-ID" = Option<String>, Header, nullable = false, description = "resume after this position (COMMIT/PREPARE)")),
    responses((status = 200, description = "Server-Sent Events over $all: SSE id = position, event = type, data = the event", content_type = "text/event-stream", body = String)))]
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
        if name.is_empty() || name.chars().count() > 256 {
            return Err(
                Problem::bad_request("subscription names are 1 to 256 characters")
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
    Ok(Sse::new(futures::StreamExt::take_until(
        stream,
        s.shutdown.clone().cancelled_owned(),
    ))
    .keep_alive(KeepAlive::default()))
}

/// A durable subscription's checkpoint (`null` before the first save).
#[utoipa::path(get, path = "/v1/subscriptions/{name}", tag = "events", params(SubscriptionPath),
    responses((status = 200, description = "the checkpoint", body = Checkpoint)))]
pub(crate) async fn checkpoint(
    State(s): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Checkpoint>, Problem> {
    let name = path(name)?;
    let at = s.events.load_checkpoint(&name).await?;
    Ok(Json(Checkpoint {
        name,
        position: at.map(|p| p.to_string()),
    }))
}

/// Saves a durable subscription's checkpoint.
#[utoipa::path(post, path = "/v1/subscriptions/{name}/checkpoint", tag = "events", params(SubscriptionPath),
    request_body = CheckpointBody,
    responses((status = 200, description = "the saved checkpoint", body = Checkpoint)))]
pub(crate) async fn save_checkpoint(
    State(s): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    Body(b): Body<CheckpointBody>,
) -> Result<Json<Checkpoint>, Problem> {
    let name = path(name)?;
    let at = position(&b.position, "position")?;
    s.events.save_checkpoint(&name, at).await?;
    Ok(Json(Checkpoint {
        name,
        position: Some(at.to_string()),
    }))
}

/// Stream metadata (retention, custom).
#[utoipa::path(get, path = "/v1/streams/{stream}/metadata", tag = "events", params(StreamPath),
    responses((status = 200, description = "the metadata", body = StreamMetadata)))]
pub(crate) async fn metadata(
    State(s): State<AppState>,
    stream: Result<Path<String>, PathRejection>,
) -> Result<Json<StreamMetadata>, Problem> {
    Ok(Json(s.events.stream_metadata(&path(stream)?).await?))
}

/// Replace stream metadata: `max_count`, `max_age_ms` and `truncate_before` hide events
/// from reads at once.
#[utoipa::path(put, path = "/v1/streams/{stream}/metadata", tag = "events", params(StreamPath),
    request_body = StreamMetadata,
    responses((status = 200, description = "the metadata stored", body = StreamMetadata),
              (status = 410, description = "the stream is tombstoned", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
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
#[utoipa::path(get, path = "/v1/streams/{stream}/snapshot", tag = "events", params(StreamPath),
    responses((status = 200, description = "the snapshot", body = Snapshot),
              (status = 404, description = "no snapshot saved", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
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
#[utoipa::path(put, path = "/v1/streams/{stream}/snapshot", tag = "events", params(StreamPath),
    request_body = SnapshotBody,
    responses((status = 200, description = "the snapshot stored afterwards", body = Snapshot),
              (status = 404, description = "the stream was hard-deleted meanwhile", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
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
#[utoipa::path(post, path = "/v1/scavenge", tag = "events",
    responses((status = 200, description = "how many events were removed", body = Scavenged)))]
pub(crate) async fn scavenge(State(s): State<AppState>) -> Result<Json<Scavenged>, Problem> {
    let removed = s.events.scavenge().await?;
    Ok(Json(Scavenged {
        removed: removed as u64,
    }))
}

/// `?mode=soft` (default) or `hard`, `&expected_version=` (default any): 204.
#[utoipa::path(delete, path = "/v1/streams/{stream}", tag = "events", params(StreamPath, DeleteQuery),
    responses((status = 204, description = "deleted"),
              (status = 404, description = "no such stream", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 409, description = "wrong expected version", body = crate::openapi::ProblemDoc, content_type = "application/problem+json"),
              (status = 410, description = "already tombstoned", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
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
