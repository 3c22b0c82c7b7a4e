//! Stream metadata (retention), deletion, snapshots, correlation and causation.

use crate::{EventData, RecordedEvent, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The metadata key of the id that ties together everything one request caused.
pub const CORRELATION_ID: &str = "$correlationId";
/// The metadata key of the id of the event (or command) that caused this one.
pub const CAUSATION_ID: &str = "$causationId";

/// A stream's settings. Retention (`max_count`, `max_age_ms`, `truncate_before`) hides
/// events from stream reads at once; [`crate::EventStore::scavenge`] then removes them
/// from storage and from `$all`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamMetadata {
    /// Keep only the newest this many events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_count: Option<u64>,
    /// Keep only events younger than this (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_age_ms: Option<u64>,
    /// Hide events with a lower version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate_before: Option<u64>,
    /// The application's own settings (any JSON).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub custom: Value,
}

impl StreamMetadata {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        if self.max_count == Some(0) {
            return Err(StoreError::invalid("max_count", "must be at least 1"));
        }
        if self.max_age_ms == Some(0) {
            return Err(StoreError::invalid("max_age_ms", "must be at least 1"));
        }
        if self.max_count.is_some_and(|v| v > i64::MAX as u64)
            || self.max_age_ms.is_some_and(|v| v > i64::MAX as u64)
            || self.truncate_before.is_some_and(|v| v > i64::MAX as u64)
        {
            return Err(StoreError::invalid("metadata", "a number is out of range"));
        }
        if self.custom.to_string().len() > crate::MAX_EVENT_BYTES {
            return Err(StoreError::invalid("custom", "larger than 1 MiB"));
        }
        Ok(())
    }

    /// The lowest version a stream read may return for a stream at `version`.
    pub(crate) fn first_visible(&self, version: u64) -> u64 {
        let by_count = self
            .max_count
            .map_or(0, |c| (version + 1).saturating_sub(c));
        by_count.max(self.truncate_before.unwrap_or(0))
    }
}

/// How [`crate::EventStore::delete_stream`] deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteMode {
    /// The stream reads as not found, its events are scavenged; appending again revives
    /// it with versions continuing after the old ones.
    Soft,
    /// The events are removed now (from `$all` too) and the name is tombstoned: every
    /// later append or read is [`StoreError::StreamDeleted`].
    Hard,
}

/// The latest saved state of a stream's aggregate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Snapshot {
    /// The stream.
    pub stream: String,
    /// The version of the last event folded into `data`.
    pub version: u64,
    /// The state.
    pub data: Value,
    /// When it was saved (ms since the epoch).
    pub created_at_ms: u64,
}

fn object(metadata: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !metadata.is_object() {
        let old = std::mem::take(metadata);
        *metadata = if old.is_null() {
            Value::Object(Default::default())
        } else {
            serde_json::json!({ "value": old })
        };
    }
    metadata.as_object_mut().expect("made an object above")
}

impl EventData {
    /// Sets the correlation and causation ids in the metadata (made an object if it is
    /// not one; a non-object value is kept under `"value"`).
    pub fn correlated(mut self, correlation_id: &str, causation_id: &str) -> Self {
        let m = object(&mut self.metadata);
        m.insert(CORRELATION_ID.into(), correlation_id.into());
        m.insert(CAUSATION_ID.into(), causation_id.into());
        self
    }

    /// This event was caused by `cause`: causation = its id, correlation = its
    /// correlation id (or its id when it has none).
    pub fn caused_by(self, cause: &RecordedEvent) -> Self {
        let correlation = cause.correlation_id().unwrap_or(&cause.id).to_string();
        self.correlated(&correlation, &cause.id)
    }
}

impl RecordedEvent {
    /// The correlation id in its metadata.
    pub fn correlation_id(&self) -> Option<&str> {
        self.metadata.get(CORRELATION_ID).and_then(Value::as_str)
    }

    /// The causation id in its metadata.
    pub fn causation_id(&self) -> Option<&str> {
        self.metadata.get(CAUSATION_ID).and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_hides_by_count_and_truncation() {
        let m = StreamMetadata {
            max_count: Some(3),
            truncate_before: Some(5),
            ..Default::default()
        };
        assert_eq!(m.first_visible(9), 7);
        assert_eq!(m.first_visible(6), 5);
        assert_eq!(StreamMetadata::default().first_visible(9), 0);
        assert!(StreamMetadata {
            max_count: Some(0),
            ..Default::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn causation_chains_keep_the_correlation() {
        let first = EventData::new("A", Value::Null).correlated("req-1", "cmd-1");
        assert_eq!(first.metadata[CORRELATION_ID], "req-1");
        let recorded = RecordedEvent {
            stream: "s".into(),
            version: 0,
            position: Default::default(),
            id: first.id.clone(),
            event_type: "A".into(),
            data: Value::Null,
            metadata: first.metadata.clone(),
            created_at_ms: 0,
        };
        let next = EventData::new("B", Value::Null).caused_by(&recorded);
        assert_eq!(next.metadata[CORRELATION_ID], "req-1");
        assert_eq!(next.metadata[CAUSATION_ID], first.id.as_str());
        let odd = EventData {
            metadata: serde_json::json!(7),
            ..EventData::new("C", Value::Null)
        }
        .correlated("c", "d");
        assert_eq!(odd.metadata["value"], 7);
    }
}
