//! The Mainstay event store: one stream per row (`<prefix>-<schema>.<table>-<key>`), so a
//! row's history is a stream its consumers can read, subscribe to or fold; the change's
//! Debezium envelope is the event's data.
//!
//! Exactly once: each batch is one `append_many` — the events, grouped by stream in source
//! order, and the batch's last position on the checkpoint stream `<prefix>-cdc-checkpoint`
//! — so the events and the record of how far the sink got commit together; after a
//! restart the connector skips everything up to that position.

use std::sync::Arc;

use async_trait::async_trait;
use mainstay_eventstore::{
    Append, Direction, EventData, EventStore, ExpectedVersion, StreamMetadata,
};
use serde_json::json;

use super::Sink;
use crate::error::CdcError;
use crate::event::{now_us, ChangeEvent, Op, Position};

/// Appends change events to an event store.
pub struct EventStoreSink {
    store: Arc<dyn EventStore>,
    prefix: String,
    checkpoint: String,
}

fn sink_err(e: impl std::fmt::Display) -> CdcError {
    CdcError::Sink {
        sink: "eventstore".into(),
        message: e.to_string(),
    }
}

/// The event type of a change.
fn event_type(op: Op) -> &'static str {
    match op {
        Op::Create => "RowCreated",
        Op::Update => "RowUpdated",
        Op::Delete => "RowDeleted",
        Op::Read => "RowRead",
        Op::Truncate => "TableTruncated",
        Op::Message => "LogicalMessage",
        Op::Transaction => "TransactionBoundary",
        Op::Tombstone => "RowTombstone",
    }
}

impl EventStoreSink {
    /// A sink writing streams named `<prefix>-…` into `store` (the checkpoint stream keeps
    /// only its newest event).
    pub async fn new(store: Arc<dyn EventStore>, prefix: &str) -> Result<EventStoreSink, CdcError> {
        if prefix.is_empty() || prefix.starts_with('$') || prefix.chars().count() > 64 {
            return Err(CdcError::Config(format!(
                "event store stream prefix {prefix:?} must be 1 to 64 characters, not starting with '$'"
            )));
        }
        let checkpoint = format!("{prefix}-cdc-checkpoint");
        store
            .set_stream_metadata(
                &checkpoint,
                StreamMetadata {
                    max_count: Some(1),
                    ..Default::default()
                },
            )
            .await
            .map_err(sink_err)?;
        Ok(EventStoreSink {
            store,
            prefix: prefix.to_string(),
            checkpoint,
        })
    }

    /// The stream a change belongs to: its row's (by primary key), else its table's.
    pub fn stream_of(&self, event: &ChangeEvent) -> String {
        if event.op == Op::Message {
            return format!("{}-messages", self.prefix);
        }
        if event.op == Op::Transaction {
            return format!("{}-transactions", self.prefix);
        }
        let table = format!("{}-{}.{}", self.prefix, event.schema, event.table);
        let Some(key) = &event.key else { return table };
        let stream = format!("{table}-{}", key.values_text(","));
        if stream.chars().count() <= 256 {
            stream
        } else {
            // A key too long for a stream name: a stable digest of it instead.
            let id = mainstay_core::id::content_id(key.values_text("\u{1f}").as_bytes());
            format!("{table}-{id}")
        }
    }
}

#[async_trait]
impl Sink for EventStoreSink {
    fn name(&self) -> &str {
        "eventstore"
    }

    async fn last_position(&mut self) -> Result<Option<Position>, CdcError> {
        let events = match self
            .store
            .read_stream(&self.checkpoint, u64::MAX, Direction::Backward, 1)
            .await
        {
            Ok(events) => events,
            Err(mainstay_eventstore::StoreError::StreamNotFound(_)) => return Ok(None),
            Err(e) => return Err(sink_err(e)),
        };
        let Some(last) = events.first() else {
            return Ok(None);
        };
        let p = &last.data["position"];
        let field = |name: &str| p[name].as_u64();
        match (
            field("commit_lsn"),
            field("lsn"),
            field("index"),
            p["snapshot"].as_bool(),
        ) {
            (Some(commit_lsn), Some(lsn), Some(index), Some(snapshot)) => Ok(Some(Position {
                commit_lsn,
                lsn,
                index,
                snapshot,
            })),
            _ => Err(sink_err(format!(
                "checkpoint stream {} holds {:?}, not a position",
                self.checkpoint, last.data
            ))),
        }
    }

    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), CdcError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let now = now_us();
        // Group by stream, keeping source order within each (and first-seen stream order).
        let mut appends: Vec<Append> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = Default::default();
        for event in events {
            let stream = self.stream_of(event);
            let data = serde_json::to_value(event.envelope(now))
                .map_err(|e| CdcError::Decode(format!("encoding an event: {e}")))?;
            let mut e = EventData::new(event_type(event.op), data);
            e.id = event.position.dedupe_key();
            e.metadata = json!({ "cdc_position": e.id });
            let at = *index.entry(stream.clone()).or_insert_with(|| {
                appends.push(Append {
                    stream,
                    expected: ExpectedVersion::Any,
                    events: Vec::new(),
                });
                appends.len() - 1
            });
            appends[at].events.push(e);
        }
        let p = last.position;
        appends.push(Append {
            stream: self.checkpoint.clone(),
            expected: ExpectedVersion::Any,
            events: vec![EventData::new(
                "Checkpoint",
                json!({ "position": {
                    "commit_lsn": p.commit_lsn, "lsn": p.lsn, "index": p.index, "snapshot": p.snapshot
                }}),
            )],
        });
        self.store.append_many(appends).await.map_err(sink_err)?;
        Ok(())
    }
}
