//! Change events, their positions, and Debezium's JSON envelope.
//!
//! A [`Position`] is `(commit LSN, LSN, index in the transaction)`: unique per event and
//! the same when PostgreSQL sends a transaction again after a restart, so it is the
//! deduplication key. Ordering positions orders events as the source committed them.

use std::sync::Arc;

use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};
use serde_json::Value;

/// Where an event sits in the source's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// The commit LSN of the event's transaction; for a snapshot row, the slot's consistent
    /// point (every streamed transaction commits after it).
    pub commit_lsn: u64,
    /// The LSN of the change itself (the consistent point for a snapshot row).
    pub lsn: u64,
    /// The event's index in its transaction, or in the snapshot.
    pub index: u64,
    /// True for snapshot rows, which order before streamed changes at the same commit LSN.
    pub snapshot: bool,
}

impl Position {
    /// A stable text key for sinks that deduplicate (JetStream `Nats-Msg-Id`, idempotent
    /// event ids): `"{commit_lsn}/{lsn}/{index}"`, with an `s` prefix for snapshot rows.
    pub fn dedupe_key(&self) -> String {
        let prefix = if self.snapshot { "s" } else { "" };
        format!("{prefix}{}/{}/{}", self.commit_lsn, self.lsn, self.index)
    }
}

impl Position {
    /// The position as sinks record it next to what they hold:
    /// `commit_lsn/lsn/index/s` for a snapshot row, `…/c` for a streamed change.
    pub fn to_text(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.commit_lsn,
            self.lsn,
            self.index,
            if self.snapshot { "s" } else { "c" }
        )
    }
}

impl std::str::FromStr for Position {
    type Err = String;

    /// Parses [`Position::to_text`]'s form.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a position (COMMIT_LSN/LSN/INDEX/s|c)");
        let mut parts = text.split('/');
        let mut number =
            || -> Result<u64, String> { parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad) };
        let (commit_lsn, lsn, index) = (number()?, number()?, number()?);
        let snapshot = match parts.next() {
            Some("s") => true,
            Some("c") => false,
            _ => return Err(bad()),
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Position {
            commit_lsn,
            lsn,
            index,
            snapshot,
        })
    }
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.commit_lsn, !self.snapshot, self.index).cmp(&(
            other.commit_lsn,
            !other.snapshot,
            other.index,
        ))
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Formats an LSN as PostgreSQL does (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Parses `16/B374D848`.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Debezium's operation codes (more may come: match with a wildcard arm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// `c`: a row was inserted.
    Create,
    /// `u`: a row was updated.
    Update,
    /// `d`: a row was deleted.
    Delete,
    /// `r`: a row read by a snapshot.
    Read,
    /// `t`: the table was truncated.
    Truncate,
    /// `m`: a logical decoding message (`pg_logical_emit_message`).
    Message,
    /// A transaction's BEGIN or END (opt-in transaction metadata; Debezium writes these
    /// to the `<name>.transaction` topic): see [`ChangeEvent::boundary`].
    Transaction,
    /// The tombstone after a delete (opt-in): the deleted row's key with a `null` value,
    /// so a log-compacted topic forgets the key.
    Tombstone,
}

impl Op {
    /// The one-letter code.
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
            Op::Message => "m",
            Op::Transaction => "tx",
            Op::Tombstone => "tombstone",
        }
    }
}

/// Where a change sits in its transaction (Debezium's `transaction` block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionOrder {
    /// The transaction's id: `"<txId>:<commit LSN>"`.
    pub id: Arc<str>,
    /// The event's position among all of the transaction's events, from 1.
    pub total_order: u64,
    /// Its position among the transaction's events of the same table, from 1.
    pub data_collection_order: u64,
}

/// A transaction's BEGIN or END event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionBoundary {
    /// `BEGIN` (true) or `END` (false).
    pub begin: bool,
    /// The transaction's id, as in [`TransactionOrder::id`].
    pub id: Arc<str>,
    /// On END: the number of change events the transaction produced, and per table
    /// (`schema.table`) how many.
    pub counts: Option<(u64, Vec<(String, u64)>)>,
}

/// A row image: column names and values in the table's column order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row(pub Vec<(Arc<str>, Value)>);

impl Row {
    /// The value of `column`, if the row has it.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.0.iter().find(|(c, _)| &**c == column).map(|(_, v)| v)
    }

    /// The values as text (strings as they are, other values as JSON), joined by `sep`:
    /// a primary key as one name for a stream or a cache key.
    pub fn values_text(&self, sep: &str) -> String {
        self.0
            .iter()
            .map(|(_, v)| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(sep)
    }

    /// The row as a JSON object (column order is lost).
    pub fn to_value(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(c, v)| (c.to_string(), v.clone()))
                .collect(),
        )
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (column, value) in &self.0 {
            map.serialize_entry(&**column, value)?;
        }
        map.end()
    }
}

/// What is the same for every event of one connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// The connector's logical name (Debezium's `topic.prefix`, `source.name`).
    pub name: String,
    /// The database.
    pub db: String,
}

/// Debezium's `source.snapshot` marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMarker {
    /// A streamed change: `"false"`.
    False,
    /// A snapshot row: `"true"`, or `"first"` / `"last"` for the first and last row of the
    /// whole snapshot, `"first_in_data_collection"` / `"last_in_data_collection"` for those
    /// of one table.
    True,
    /// See [`SnapshotMarker::True`].
    First,
    /// See [`SnapshotMarker::True`].
    FirstInDataCollection,
    /// See [`SnapshotMarker::True`].
    LastInDataCollection,
    /// See [`SnapshotMarker::True`].
    Last,
    /// A row read by an incremental snapshot: `"incremental"`.
    Incremental,
}

impl SnapshotMarker {
    fn as_str(self) -> &'static str {
        match self {
            SnapshotMarker::False => "false",
            SnapshotMarker::True => "true",
            SnapshotMarker::First => "first",
            SnapshotMarker::FirstInDataCollection => "first_in_data_collection",
            SnapshotMarker::LastInDataCollection => "last_in_data_collection",
            SnapshotMarker::Last => "last",
            SnapshotMarker::Incremental => "incremental",
        }
    }
}

/// One change, ready for a sink.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// What happened.
    pub op: Op,
    /// The table's schema (`""` for a message).
    pub schema: Arc<str>,
    /// The table (`""` for a message).
    pub table: Arc<str>,
    /// The primary key columns (Debezium's record key); `None` for tables without one,
    /// truncates and messages.
    pub key: Option<Row>,
    /// The row before the change: on updates and deletes, as much as the table's REPLICA
    /// IDENTITY lets PostgreSQL send (the key columns by default, every column with FULL).
    pub before: Option<Row>,
    /// The row after the change (creates, updates, snapshot reads).
    pub after: Option<Row>,
    /// A logical message's prefix and content (`op = m`).
    pub message: Option<(String, Vec<u8>)>,
    /// Where the event sits in the source's history.
    pub position: Position,
    /// The transaction id, when the change belongs to a transaction.
    pub tx_id: Option<u32>,
    /// When the change was committed (or the snapshot read), microseconds since the epoch.
    pub source_ts_us: i64,
    /// Snapshot marker.
    pub snapshot: SnapshotMarker,
    /// The connector's name and database.
    pub source: Arc<SourceInfo>,
    /// With transaction metadata on: where the change sits in its transaction.
    pub transaction: Option<TransactionOrder>,
    /// For `op = Transaction`: the BEGIN or END it marks.
    pub boundary: Option<Box<TransactionBoundary>>,
}

/// The connector's version, written to `source.version`.
pub const VERSION: &str = concat!("mainstay-", env!("CARGO_PKG_VERSION"));

impl ChangeEvent {
    /// The event as Debezium's JSON value (schemas disabled), with `ts_ms` / `ts_us` /
    /// `ts_ns` set from `now_us` (when the connector processed it).
    pub fn envelope(&self, now_us: i64) -> Envelope<'_> {
        Envelope {
            event: self,
            now_us,
        }
    }
}

/// Serializes a [`ChangeEvent`] as Debezium's envelope: `before`, `after`, `source`, `op`,
/// `ts_ms`, `ts_us`, `ts_ns` (and `message` for `op = m`).
pub struct Envelope<'a> {
    event: &'a ChangeEvent,
    now_us: i64,
}

struct Source<'a>(&'a ChangeEvent);

impl Serialize for Source<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut s = serializer.serialize_struct("source", 15)?;
        s.serialize_field("version", VERSION)?;
        s.serialize_field("connector", "postgresql")?;
        s.serialize_field("name", &e.source.name)?;
        s.serialize_field("ts_ms", &e.source_ts_us.div_euclid(1000))?;
        s.serialize_field("ts_us", &e.source_ts_us)?;
        s.serialize_field("ts_ns", &e.source_ts_us.saturating_mul(1000))?;
        s.serialize_field("snapshot", e.snapshot.as_str())?;
        s.serialize_field("db", &e.source.db)?;
        // Debezium: a stringified JSON array [lastCommitLsn, lsn] of decimal LSNs.
        let sequence = format!("[\"{}\",\"{}\"]", e.position.commit_lsn, e.position.lsn);
        s.serialize_field("sequence", &sequence)?;
        s.serialize_field("schema", &*e.schema)?;
        s.serialize_field("table", &*e.table)?;
        s.serialize_field("txId", &e.tx_id)?;
        s.serialize_field("lsn", &e.position.lsn)?;
        s.serialize_field("xmin", &Option::<i64>::None)?;
        s.end()
    }
}

struct Message<'a>(&'a (String, Vec<u8>));

impl Serialize for Message<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        let mut s = serializer.serialize_struct("message", 2)?;
        s.serialize_field("prefix", &self.0 .0)?;
        s.serialize_field(
            "content",
            &base64::engine::general_purpose::STANDARD.encode(&self.0 .1),
        )?;
        s.end()
    }
}

struct Order<'a>(&'a TransactionOrder);

impl Serialize for Order<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("transaction", 3)?;
        s.serialize_field("id", &*self.0.id)?;
        s.serialize_field("total_order", &self.0.total_order)?;
        s.serialize_field("data_collection_order", &self.0.data_collection_order)?;
        s.end()
    }
}

struct Collection<'a>(&'a (String, u64));

impl Serialize for Collection<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("data_collection", 2)?;
        s.serialize_field("data_collection", &self.0 .0)?;
        s.serialize_field("event_count", &self.0 .1)?;
        s.end()
    }
}

impl Serialize for Envelope<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let e = self.event;
        match (e.op, &e.boundary) {
            // Debezium's tombstone: a null value under the row's key.
            (Op::Tombstone, _) => return serializer.serialize_unit(),
            (Op::Transaction, Some(b)) => {
                let mut s = serializer.serialize_struct("transaction", 5)?;
                s.serialize_field("status", if b.begin { "BEGIN" } else { "END" })?;
                s.serialize_field("id", &*b.id)?;
                s.serialize_field("event_count", &b.counts.as_ref().map(|c| c.0))?;
                s.serialize_field(
                    "data_collections",
                    &b.counts
                        .as_ref()
                        .map(|c| c.1.iter().map(Collection).collect::<Vec<_>>()),
                )?;
                s.serialize_field("ts_ms", &e.source_ts_us.div_euclid(1000))?;
                return s.end();
            }
            _ => {}
        }
        let mut s = serializer.serialize_struct("envelope", 9)?;
        if !matches!(e.op, Op::Truncate | Op::Message) {
            s.serialize_field("before", &e.before)?;
            s.serialize_field("after", &e.after)?;
        }
        s.serialize_field("source", &Source(e))?;
        s.serialize_field("op", e.op.code())?;
        s.serialize_field("ts_ms", &self.now_us.div_euclid(1000))?;
        s.serialize_field("ts_us", &self.now_us)?;
        s.serialize_field("ts_ns", &self.now_us.saturating_mul(1000))?;
        if let Some(message) = &e.message {
            s.serialize_field("message", &Message(message))?;
        }
        s.serialize_field("transaction", &e.transaction.as_ref().map(Order))?;
        s.end()
    }
}

/// Microseconds since the epoch, now.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
