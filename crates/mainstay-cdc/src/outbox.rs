//! The transactional outbox, routed as Debezium's Outbox Event Router does: a service writes
//! its event into an outbox table in the same transaction as its state change, and the
//! connector turns each inserted outbox row into a message for the bus — topic by
//! `aggregatetype` (`outbox.event.<aggregatetype>`), key `aggregateid`, body `payload`,
//! with the row's `id` as the deduplication key. Updates and deletes of outbox rows (the
//! service cleaning up) route nothing, and neither do snapshot reads: the outbox is routed
//! from the stream (run it with snapshot mode `no_data`, or rows already in the table at
//! the first start are not sent). The `id` column must be the table's primary key.

use serde_json::Value;

use crate::config::TableName;
use crate::event::{ChangeEvent, Op};

/// Which table is the outbox, and its column names (Debezium's defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRouter {
    /// The outbox table.
    pub table: TableName,
    /// The event id column (the deduplication key). Default: `id`.
    pub id: String,
    /// The column routing the event. Default: `aggregatetype`.
    pub aggregate_type: String,
    /// The message key column. Default: `aggregateid`.
    pub aggregate_id: String,
    /// The event type column (sent as a header). Default: `type`.
    pub event_type: String,
    /// The message body column. Default: `payload`.
    pub payload: String,
    /// The subject (topic) prefix; the aggregate type follows it. Default: `outbox.event`.
    pub route_prefix: String,
}

/// One outbox event, ready for the bus.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// The event id (deduplication key).
    pub id: String,
    /// The subject: `<route_prefix>.<aggregatetype>`.
    pub destination: String,
    /// The aggregate id (message key).
    pub key: String,
    /// The event type, when the table has the column.
    pub event_type: Option<String>,
    /// The body: the payload column's text (a JSON document stays its text).
    pub payload: Vec<u8>,
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

impl OutboxRouter {
    /// The router for `table` with Debezium's default column names.
    pub fn new(table: TableName) -> OutboxRouter {
        OutboxRouter {
            table,
            id: "id".into(),
            aggregate_type: "aggregatetype".into(),
            aggregate_id: "aggregateid".into(),
            event_type: "type".into(),
            payload: "payload".into(),
            route_prefix: "outbox.event".into(),
        }
    }

    /// Whether `event` is a change of the outbox table.
    pub fn owns(&self, event: &ChangeEvent) -> bool {
        *event.table == *self.table.table && *event.schema == *self.table.schema
    }

    /// The message an outbox change becomes: `Some` for a streamed insert, `None` for
    /// anything else. An insert missing the id or aggregate
    /// type is an error naming the column.
    pub fn route(&self, event: &ChangeEvent) -> Result<Option<OutboxEvent>, String> {
        if !self.owns(event) || event.op != Op::Create {
            return Ok(None);
        }
        let Some(row) = &event.after else {
            return Ok(None);
        };
        let need = |column: &str| {
            text(row.get(column)).ok_or_else(|| {
                format!(
                    "outbox row in {} has no {column:?} value (an outbox event needs id, aggregate type and aggregate id)",
                    self.table
                )
            })
        };
        let id = need(&self.id)?;
        let aggregate_type = need(&self.aggregate_type)?;
        let key = need(&self.aggregate_id)?;
        let destination = format!(
            "{}.{}",
            self.route_prefix,
            aggregate_type
                .chars()
                .map(|c| if matches!(c, '.' | ' ' | '*' | '>' | '\t') {
                    '_'
                } else {
                    c
                })
                .collect::<String>()
        );
        Ok(Some(OutboxEvent {
            id,
            destination,
            key,
            event_type: text(row.get(&self.event_type)),
            payload: text(row.get(&self.payload))
                .unwrap_or_default()
                .into_bytes(),
        }))
    }
}
