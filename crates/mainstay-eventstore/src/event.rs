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

impl std::str::FromStr for ExpectedVersion {
    type Err = StoreError;

    /// Parses the wire form (HTTP, CLI): `any`, `no_stream`, `stream_exists`, or a
    /// version number.
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "any" => Ok(ExpectedVersion::Any),
            "no_stream" => Ok(ExpectedVersion::NoStream),
            "stream_exists" => Ok(ExpectedVersion::StreamExists),
            n => n.parse().map(ExpectedVersion::Exact).map_err(|_| {
                StoreError::invalid(
                    "expected_version",
                    format!("{n:?} is not any, no_stream, stream_exists or a version number"),
                )
            }),
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

    /// `at` names the event in an error (built only then).
    pub(crate) fn validate(&self, at: impl Fn() -> String) -> Result<(), StoreError> {
        if self.id.is_empty() || self.id.chars().count() > 256 {
            return Err(StoreError::invalid(
                format!("{}.id", at()),
                "event ids must be 1 to 256 characters",
            ));
        }
        if self.event_type.is_empty() || self.event_type.chars().count() > 256 {
            return Err(StoreError::invalid(
                format!("{}.type", at()),
                "event types must be 1 to 256 characters",
            ));
        }
        let size = json_len(&self.data) + json_len(&self.metadata);
        if size > MAX_EVENT_BYTES {
            return Err(StoreError::invalid(
                format!("{}.data", at()),
                format!("event is {size} bytes, more than {MAX_EVENT_BYTES}"),
            ));
        }
        Ok(())
    }
}

/// The length of `value` as compact JSON, counted without building the string.
fn json_len(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value to a sink that cannot fail cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// A place in `$all`, ordered by `commit` then `prepare` (KurrentDB's shape).
///
/// SQLite assigns both in commit order (they are equal). PostgreSQL will set `commit` from
/// the appending transaction's id and `prepare` from a sequence, and serve only
/// transactions older than every one still running, so no later-visible event can sort
/// before one already read.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    /// The committing transaction's order.
    pub commit: u64,
    /// The event's order within it.
    pub prepare: u64,
}

impl Position {
    /// Before every event.
    pub const START: Position = Position {
        commit: 0,
        prepare: 0,
    };
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.commit, self.prepare)
    }
}

impl std::str::FromStr for Position {
    type Err = StoreError;

    /// Parses `commit/prepare` (the `Display` form).
    fn from_str(s: &str) -> Result<Self, StoreError> {
        let bad = || StoreError::invalid("position", format!("{s:?} is not COMMIT/PREPARE"));
        let (c, p) = s.split_once('/').ok_or_else(bad)?;
        Ok(Position {
            commit: c.trim().parse().map_err(|_| bad())?,
            prepare: p.trim().parse().map_err(|_| bad())?,
        })
    }
}

/// A stored event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Its stream.
    pub stream: String,
    /// Its version in the stream (0-based).
    pub version: u64,
    /// Its position in `$all`.
    pub position: Position,
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

impl RecordedEvent {
    /// The event as the HTTP API and the CLI print it: the position as a
    /// `COMMIT/PREPARE` string (the form `after=` and `Last-Event-ID` take back).
    pub fn to_wire_json(&self) -> Value {
        serde_json::to_value(self.to_wire()).unwrap_or_default()
    }

    /// The wire form ([`WireEvent`]).
    pub fn to_wire(&self) -> WireEvent<'_> {
        WireEvent {
            stream: &self.stream,
            version: self.version,
            position: self.position.to_string(),
            id: &self.id,
            event_type: &self.event_type,
            data: &self.data,
            metadata: &self.metadata,
            created_at_ms: self.created_at_ms,
        }
    }
}

/// A recorded event as the HTTP API and the CLI write it: the position as a
/// `COMMIT/PREPARE` string.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WireEvent<'a> {
    /// The stream.
    pub stream: &'a str,
    /// Its version in the stream (0 for the first event).
    pub version: u64,
    /// Its position in `$all`, `COMMIT/PREPARE`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9]{1,19}/[0-9]{1,19}$"))]
    pub position: String,
    /// The event id.
    pub id: &'a str,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: &'a str,
    /// The payload.
    pub data: &'a Value,
    /// The metadata.
    pub metadata: &'a Value,
    /// When it was appended (ms since the epoch).
    pub created_at_ms: u64,
}

/// An append's result as the HTTP API and the CLI write it.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WireAppendResult<'a> {
    /// The stream appended to.
    pub stream: &'a str,
    /// The stream's version after the append: the expected version of the next one.
    pub next_expected_version: u64,
    /// Position of the batch's first event, `COMMIT/PREPARE`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9]{1,19}/[0-9]{1,19}$"))]
    pub first_position: String,
    /// Position of the batch's last event.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9]{1,19}/[0-9]{1,19}$"))]
    pub last_position: String,
}

/// What an append stored (or, for an idempotent retry, had stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    /// The stream's version after the append.
    pub next_expected_version: u64,
    /// Position of the first event of the batch.
    pub first_position: Position,
    /// Position of the last event of the batch.
    pub last_position: Position,
}

impl AppendResult {
    /// The result of an append to `stream` as the HTTP API and the CLI print it
    /// (positions as `COMMIT/PREPARE` strings).
    pub fn to_wire_json(&self, stream: &str) -> Value {
        serde_json::to_value(self.to_wire(stream)).unwrap_or_default()
    }

    /// The wire form ([`WireAppendResult`]) for an append to `stream`.
    pub fn to_wire<'a>(&self, stream: &'a str) -> WireAppendResult<'a> {
        WireAppendResult {
            stream,
            next_expected_version: self.next_expected_version,
            first_position: self.first_position.to_string(),
            last_position: self.last_position.to_string(),
        }
    }
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

/// Checks every append of a call; the error names the first wrong field.
pub(crate) fn validate_appends(appends: &[crate::Append]) -> Result<(), StoreError> {
    if appends.is_empty() {
        return Err(StoreError::invalid("appends", "nothing to append"));
    }
    for (a, append) in appends.iter().enumerate() {
        check_stream(&append.stream)?;
        if append.events.is_empty() {
            return Err(StoreError::invalid(
                format!("appends[{a}].events"),
                "an append needs at least one event",
            ));
        }
        for (i, e) in append.events.iter().enumerate() {
            e.validate(|| format!("appends[{a}].events[{i}]"))?;
            if append.events[..i].iter().any(|o| o.id == e.id) {
                return Err(StoreError::invalid(
                    format!("appends[{a}].events[{i}].id"),
                    format!("event id {:?} appears twice in the batch", e.id),
                ));
            }
        }
    }
    Ok(())
}

pub(crate) fn check_stream(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.chars().count() > 256 || name.starts_with('$') {
        return Err(StoreError::invalid(
            "stream",
            format!("stream name {name:?} must be 1 to 256 characters and not start with '$'"),
        ));
    }
    Ok(())
}

/// A snapshot's version fits the engines, its data is at most [`MAX_EVENT_BYTES`];
/// returns the serialized data.
pub(crate) fn check_snapshot(version: u64, data: &Value) -> Result<String, StoreError> {
    if version > i64::MAX as u64 {
        return Err(StoreError::invalid("version", "out of range"));
    }
    let body = data.to_string();
    if body.len() > MAX_EVENT_BYTES {
        return Err(StoreError::invalid(
            "data",
            format!(
                "snapshot is {} bytes, more than {MAX_EVENT_BYTES}",
                body.len()
            ),
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_versions_parse_from_the_wire_form() {
        for (text, want) in [
            ("any", ExpectedVersion::Any),
            ("no_stream", ExpectedVersion::NoStream),
            ("stream_exists", ExpectedVersion::StreamExists),
            ("7", ExpectedVersion::Exact(7)),
        ] {
            assert_eq!(text.parse::<ExpectedVersion>().unwrap(), want);
        }
        for bad in ["", "-1", "Any", "7x"] {
            assert!(matches!(
                bad.parse::<ExpectedVersion>(),
                Err(StoreError::InvalidArgument { ref field, .. }) if field == "expected_version"
            ));
        }
    }

    #[test]
    fn positions_order_by_commit_then_prepare_and_round_trip() {
        let a = Position {
            commit: 5,
            prepare: 9,
        };
        let b = Position {
            commit: 6,
            prepare: 1,
        };
        assert!(a < b && Position::START < a);
        assert_eq!("5/9".parse::<Position>().unwrap(), a);
        assert_eq!(a.to_string(), "5/9");
        for bad in ["", "5", "5/x", "-1/2", "1/2/3"] {
            assert!(bad.parse::<Position>().is_err(), "{bad}");
        }
    }

    #[test]
    fn expected_version_matches() {
        use ExpectedVersion::*;
        assert!(Any.matches(None) && Any.matches(Some(3)));
        assert!(NoStream.matches(None) && !NoStream.matches(Some(0)));
        assert!(StreamExists.matches(Some(0)) && !StreamExists.matches(None));
        assert!(Exact(2).matches(Some(2)) && !Exact(2).matches(Some(3)) && !Exact(0).matches(None));
    }
}
