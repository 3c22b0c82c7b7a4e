//! Events, versions and positions.

use crate::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest accepted event (data + metadata, serialized).
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// What an append expects of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedVersion {
    /// Whatever it is.
    Any,
    /// It has no events.
    NoStream,
    /// It has at least one event.
    StreamExists,
    /// Its last event has this version.
    Exact(u64),
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("stream exists"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

impl ExpectedVersion {
    /// Whether a stream at `actual` satisfies it.
    pub fn matches(self, actual: Option<u64>) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual.is_none(),
            ExpectedVersion::StreamExists => actual.is_some(),
            ExpectedVersion::Exact(v) => actual == Some(v),
        }
    }
}

/// An event to append.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventData {
    /// Unique within its stream; retrying an append with the same ids is idempotent.
    pub id: String,
    /// Its type, e.g. `MoneyDeposited`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The payload.
    pub data: Value,
    /// Metadata (correlation and causation ids, …).
    #[serde(default)]
    pub metadata: Value,
}

impl EventData {
    /// An event with a fresh id and no metadata.
    pub fn new(event_type: impl Into<String>, data: Value) -> Self {
        EventData {
            id: mainstay_core::id::unguessable(),
            event_type: event_type.into(),
            data,
            metadata: Value::Null,
        }
    }

    pub(crate) fn validate(&self, at: &str) -> Result<(), StoreError> {
        if self.id.is_empty() || self.id.len() > 256 {
            return Err(StoreError::invalid(
                format!("{at}.id"),
                "event ids must be 1 to 256 bytes",
            ));
        }
        if self.event_type.is_empty() || self.event_type.len() > 256 {
            return Err(StoreError::invalid(
                format!("{at}.type"),
                "event types must be 1 to 256 bytes",
            ));
        }
        let size = self.data.to_string().len() + self.metadata.to_string().len();
        if size > MAX_EVENT_BYTES {
            return Err(StoreError::invalid(
                format!("{at}.data"),
                format!("event is {size} bytes, more than {MAX_EVENT_BYTES}"),
            ));
        }
        Ok(())
    }
}

/// A stored event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Its stream.
    pub stream: String,
    /// Its version in the stream (0-based).
    pub version: u64,
    /// Its position in `$all` (1-based, increasing in commit order).
    pub position: u64,
    /// Its id.
    pub id: String,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The payload.
    pub data: Value,
    /// Metadata.
    pub metadata: Value,
    /// When it was appended (ms since the epoch).
    pub created_at_ms: u64,
}

/// What an append stored (or, for an idempotent retry, had stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    /// The stream's version after the append.
    pub next_expected_version: u64,
    /// Position of the first event of the batch.
    pub first_position: u64,
    /// Position of the last event of the batch.
    pub last_position: u64,
}

/// Reading direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Increasing versions.
    Forward,
    /// Decreasing versions.
    Backward,
}

/// A `$all` filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadAllFilter {
    /// Only streams whose name starts with this.
    pub stream_prefix: Option<String>,
    /// Only these event types.
    pub event_types: Vec<String>,
}

pub(crate) fn check_stream(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > 256 || name.starts_with('$') {
        return Err(StoreError::invalid(
            "stream",
            format!("stream name {name:?} must be 1 to 256 bytes and not start with '$'"),
        ));
    }
    Ok(())
}
