//! RFC 9457 `application/problem+json` errors with stable `type`s.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use mainstay_eventstore::StoreError;
use mainstay_lock::LockError;
use mainstay_txn::TxnError;
use serde_json::{json, Map, Value};

/// An HTTP error a client can act on.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    kind: &'static str,
    title: String,
    extra: Map<String, Value>,
}

impl Problem {
    /// A problem with `status`, a stable `kind` (the `type` is `urn:mainstay:problem:<kind>`)
    /// and a human `title`.
    pub fn new(status: StatusCode, kind: &'static str, title: impl Into<String>) -> Self {
        Problem {
            status,
            kind,
            title: title.into(),
            extra: Map::new(),
        }
    }

    /// Adds a member the client needs (who holds the lock, until when).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn bad_request(title: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "invalid-request", title)
    }

    /// A 400 naming `field`.
    pub(crate) fn invalid_field(field: &str, title: impl Into<String>) -> Self {
        Problem::bad_request(title).with("field", field)
    }

    pub(crate) fn too_large() -> Self {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "request body is larger than 1 MiB",
        )
    }

    pub(crate) fn not_found() -> Self {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "no such route (lock, election and saga names must not contain '/')",
        )
    }

    pub(crate) fn method_not_allowed() -> Self {
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "method not allowed on this route",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("urn:mainstay:problem:{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
        });
        if let Value::Object(map) = &mut body {
            map.extend(self.extra);
        }
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

impl From<LockError> for Problem {
    fn from(e: LockError) -> Self {
        let title = e.to_string();
        match e {
            LockError::InvalidName { name, .. } => Problem::bad_request(title).with("name", name),
            LockError::InvalidArgument { field, .. } => {
                Problem::bad_request(title).with("field", field)
            }
            LockError::Busy { name, holder } => {
                let mut p =
                    Problem::new(StatusCode::CONFLICT, "lock-busy", title).with("name", name);
                if let Some(h) = holder {
                    p = p
                        .with("holder", h.owner)
                        .with("fencing_token", h.fencing_token)
                        .with("expires_at_ms", h.expires_at_ms);
                }
                p
            }
            LockError::NotHolder { name } => {
                Problem::new(StatusCode::CONFLICT, "not-lock-holder", title).with("name", name)
            }
            LockError::FencingRegression {
                name,
                issued,
                highest_seen,
            } => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "fencing-regression",
                title,
            )
            .with("name", name)
            .with("issued", issued)
            .with("highest_seen", highest_seen),
            LockError::NoQuorum {
                granted,
                needed,
                instances,
            } => Problem::new(StatusCode::SERVICE_UNAVAILABLE, "no-quorum", title)
                .with("granted", granted)
                .with("needed", needed)
                .with("instances", instances),
            LockError::Backend { .. } => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "backend-unavailable",
                title,
            ),
            _ => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", title),
        }
    }
}

impl From<TxnError> for Problem {
    fn from(e: TxnError) -> Self {
        let title = e.to_string();
        match e {
            TxnError::InvalidArgument { field, .. } => {
                Problem::bad_request(title).with("field", field)
            }
            TxnError::NotFound { what, id } => {
                let kind = match what {
                    "definition" => "saga-definition-not-found",
                    "saga" => "saga-not-found",
                    _ => "not-found",
                };
                Problem::new(StatusCode::NOT_FOUND, kind, title).with("id", id)
            }
            TxnError::InvalidState { id, status, .. } => {
                Problem::new(StatusCode::CONFLICT, "saga-state-conflict", title)
                    .with("id", id)
                    .with("saga_status", status)
            }
            TxnError::Fenced { id } => {
                Problem::new(StatusCode::CONFLICT, "saga-owned-elsewhere", title).with("id", id)
            }
            TxnError::Backend { .. } => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "backend-unavailable",
                title,
            ),
            _ => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", title),
        }
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        let title = e.to_string();
        match e {
            StoreError::InvalidArgument { field, .. } => {
                Problem::bad_request(title).with("field", field)
            }
            StoreError::WrongExpectedVersion {
                stream,
                expected,
                actual,
            } => Problem::new(StatusCode::CONFLICT, "wrong-expected-version", title)
                .with("stream", stream)
                .with("expected", expected.to_string())
                .with("actual", actual.map_or(Value::Null, Value::from)),
            StoreError::IdempotencyConflict { stream, event_id } => {
                Problem::new(StatusCode::CONFLICT, "idempotency-conflict", title)
                    .with("stream", stream)
                    .with("event_id", event_id)
            }
            StoreError::StreamNotFound(stream) => {
                Problem::new(StatusCode::NOT_FOUND, "stream-not-found", title)
                    .with("stream", stream)
            }
            StoreError::StreamDeleted(stream) => {
                Problem::new(StatusCode::GONE, "stream-deleted", title).with("stream", stream)
            }
            StoreError::Backend { .. } => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "backend-unavailable",
                title,
            ),
            _ => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", title),
        }
    }
}

impl From<JsonRejection> for Problem {
    fn from(r: JsonRejection) -> Self {
        let detail = r.body_text();
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Problem::too_large(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "send the body as JSON with Content-Type: application/json",
            ),
            _ => Problem::bad_request(format!("invalid JSON body: {detail}")),
        }
    }
}

impl From<PathRejection> for Problem {
    fn from(r: PathRejection) -> Self {
        Problem::bad_request(format!("invalid path: {}", r.body_text()))
    }
}
