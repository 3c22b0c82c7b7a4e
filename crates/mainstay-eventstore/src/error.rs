//! Event store errors.

use crate::ExpectedVersion;

/// What went wrong; nothing was written when an append fails.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream is not what the append expected.
    #[error("wrong expected version for stream {stream:?}: expected {expected}, actual {}", actual.map(|v| v.to_string()).unwrap_or_else(|| "no stream".into()))]
    WrongExpectedVersion {
        /// The stream.
        stream: String,
        /// What the append expected.
        expected: ExpectedVersion,
        /// Its version (`None`: no events).
        actual: Option<u64>,
    },
    /// Some of the batch's event ids are already in the stream, but not as this batch at
    /// this place: a retry of a different batch.
    #[error("stream {stream:?} already holds event {event_id} but not this batch in this place")]
    IdempotencyConflict {
        /// The stream.
        stream: String,
        /// The first id found.
        event_id: String,
    },
    /// The stream has no events.
    #[error("stream {0:?} not found")]
    StreamNotFound(String),
    /// The stream was hard-deleted: its name can never be used again.
    #[error("stream {0:?} is deleted (tombstoned)")]
    StreamDeleted(String),
    /// A field of the input is wrong.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// Which.
        field: String,
        /// Why.
        message: String,
    },
    /// The configuration names no usable store.
    #[error("{0}")]
    Config(String),
    /// The engine failed.
    #[error("{backend} error: {message}")]
    Backend {
        /// `sqlite` or `postgres`.
        backend: &'static str,
        /// Its message.
        message: String,
    },
}

impl StoreError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        StoreError::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }
}
