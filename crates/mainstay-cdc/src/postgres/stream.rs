//! pgoutput messages to change events.
//!
//! pgwire-replication hands over Begin, Commit and logical messages already parsed, and every
//! other message as raw bytes, which pg_walstream's parser decodes. Relation messages (sent
//! before a table's first change in a session and again after every schema change) replace
//! the table's shape, so `ALTER TABLE … ADD COLUMN` mid-stream shows in the next event.

use std::collections::HashMap;
use std::sync::Arc;

use pg_walstream::{LogicalReplicationMessage, LogicalReplicationParser, TupleData};
use tokio_postgres::Client;

use super::{db_message, key_indexes, snapshot::key_of, Catalog, Column, Table};
use crate::config::{CdcConfig, TableName};
use crate::error::CdcError;
use crate::event::{ChangeEvent, Op, Position, Row, SnapshotMarker, SourceInfo};
use crate::types::{convert, unavailable, DecimalHandling};

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
pub(crate) const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// The prefix of the heartbeat messages the connector writes; they advance the slot and
/// are not handed to sinks.
pub(crate) const HEARTBEAT_PREFIX: &str = "mainstay.heartbeat";
/// The prefix of an incremental snapshot's window watermarks (never delivered).
pub(crate) const WATERMARK_PREFIX: &str = "mainstay.watermark";

struct Transaction {
    xid: u32,
    commit_lsn: u64,
    commit_ts_us: i64,
    next_index: u64,
    /// Transaction metadata: whether BEGIN went out, the change count, and per table.
    began: bool,
    total: u64,
    per_table: Vec<(String, u64)>,
}

struct Relation {
    table: Arc<Table>,
    captured: bool,
}

pub(crate) struct Decoder {
    parser: LogicalReplicationParser,
    relations: HashMap<u32, Relation>,
    catalog: Catalog,
    client: Client,
    config: CdcConfig,
    decimals: DecimalHandling,
    source: Arc<SourceInfo>,
    tx: Option<Transaction>,
}

impl Decoder {
    pub(crate) fn new(client: Client, config: &CdcConfig, source: Arc<SourceInfo>) -> Decoder {
        Decoder {
            parser: LogicalReplicationParser::with_protocol_version(1),
            relations: HashMap::new(),
            catalog: Catalog::new(),
            client,
            decimals: config.decimal_handling,
            config: config.clone(),
            source,
            tx: None,
        }
    }

    /// A regular connection to the source, for heartbeats and catalog reads.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn begin(&mut self, final_lsn: u64, xid: u32, commit_time_micros: i64) {
        self.tx = Some(Transaction {
            xid,
            commit_lsn: final_lsn,
            commit_ts_us: commit_time_micros + PG_EPOCH_OFFSET_US,
            // With transaction metadata, index 0 is the BEGIN event's.
            next_index: u64::from(self.config.transaction_metadata),
            began: false,
            total: 0,
            per_table: Vec::new(),
        });
    }

    /// Ends the transaction; with transaction metadata, its END event (if it had changes).
    pub(crate) fn commit(&mut self) -> Option<ChangeEvent> {
        let tx = self.tx.take()?;
        if !tx.began {
            return None;
        }
        Some(self.boundary(
            &tx,
            tx.next_index,
            tx.commit_lsn,
            Some((tx.total, tx.per_table.clone())),
        ))
    }

    fn transaction_id(tx: &Transaction) -> Arc<str> {
        Arc::from(format!("{}:{}", tx.xid, tx.commit_lsn))
    }

    fn boundary(
        &self,
        tx: &Transaction,
        index: u64,
        lsn: u64,
        counts: Option<(u64, Vec<(String, u64)>)>,
    ) -> ChangeEvent {
        ChangeEvent {
            op: Op::Transaction,
            schema: Arc::from(""),
            table: Arc::from(""),
            key: None,
            before: None,
            after: None,
            message: None,
            position: Position {
                commit_lsn: tx.commit_lsn,
                lsn,
                index,
                snapshot: false,
            },
            tx_id: Some(tx.xid),
            source_ts_us: tx.commit_ts_us,
            snapshot: SnapshotMarker::False,
            source: self.source.clone(),
            transaction: None,
            boundary: Some(Box::new(crate::event::TransactionBoundary {
                begin: counts.is_none(),
                id: Self::transaction_id(tx),
                counts,
            })),
        }
    }

    /// Adds tombstones after deletes and transaction metadata (BEGIN before the first
    /// change, the `transaction` block on each), renumbering the events' indexes so they
    /// stay consecutive in the transaction.
    fn decorate(&mut self, events: Vec<ChangeEvent>) -> Vec<ChangeEvent> {
        let (tombstones, metadata) = (
            self.config.tombstones_on_delete,
            self.config.transaction_metadata,
        );
        if events.is_empty() || !(tombstones || metadata) || self.tx.is_none() {
            return events;
        }
        let start = events[0].position.index;
        let mut out = Vec::with_capacity(events.len() + 2);
        for event in events {
            let tombstone =
                (tombstones && event.op == Op::Delete && event.key.is_some()).then(|| {
                    ChangeEvent {
                        op: Op::Tombstone,
                        before: None,
                        after: None,
                        transaction: None,
                        ..event.clone()
                    }
                });
            out.push(event);
            out.extend(tombstone);
        }
        let tx = self.tx.as_mut().expect("checked above");
        for (i, event) in out.iter_mut().enumerate() {
            event.position.index = start + i as u64;
        }
        tx.next_index = start + out.len() as u64;
        if metadata {
            let id = Self::transaction_id(tx);
            for event in out.iter_mut().filter(|e| e.op != Op::Tombstone) {
                let table = format!("{}.{}", event.schema, event.table);
                tx.total += 1;
                let per_table = match tx.per_table.iter_mut().find(|(t, _)| *t == table) {
                    Some((_, n)) => {
                        *n += 1;
                        *n
                    }
                    None => {
                        tx.per_table.push((table, 1));
                        1
                    }
                };
                event.transaction = Some(crate::event::TransactionOrder {
                    id: id.clone(),
                    total_order: tx.total,
                    data_collection_order: per_table,
                });
            }
            if !tx.began {
                tx.began = true;
                let lsn = out[0].position.lsn;
                let tx = self.tx.as_ref().expect("checked above");
                let begin = self.boundary(tx, 0, lsn, None);
                out.insert(0, begin);
            }
        }
        out
    }

    pub(crate) fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// A logical decoding message; heartbeats are `None`.
    /// A logical decoding message (with transaction metadata, decorated like a change);
    /// heartbeats and watermarks give nothing.
    pub(crate) fn message(
        &mut self,
        transactional: bool,
        lsn: u64,
        prefix: String,
        content: Vec<u8>,
    ) -> Vec<ChangeEvent> {
        match self.raw_message(transactional, lsn, prefix, content) {
            Some(event) if transactional => self.decorate(vec![event]),
            Some(event) => vec![event],
            None => Vec::new(),
        }
    }

    fn raw_message(
        &mut self,
        transactional: bool,
        lsn: u64,
        prefix: String,
        content: Vec<u8>,
    ) -> Option<ChangeEvent> {
        if prefix == HEARTBEAT_PREFIX || prefix == WATERMARK_PREFIX {
            return None;
        }
        let (position, tx_id, ts) = match (&mut self.tx, transactional) {
            (Some(tx), true) => {
                let index = tx.next_index;
                tx.next_index += 1;
                (
                    Position {
                        commit_lsn: tx.commit_lsn,
                        lsn,
                        index,
                        snapshot: false,
                    },
                    Some(tx.xid),
                    tx.commit_ts_us,
                )
            }
            _ => (
                Position {
                    commit_lsn: lsn,
                    lsn,
                    index: 0,
                    snapshot: false,
                },
                None,
                crate::event::now_us(),
            ),
        };
        Some(ChangeEvent {
            op: Op::Message,
            schema: Arc::from(""),
            table: Arc::from(""),
            key: None,
            before: None,
            after: None,
            message: Some((prefix, content)),
            position,
            tx_id,
            source_ts_us: ts,
            snapshot: SnapshotMarker::False,
            source: self.source.clone(),
            transaction: None,
            boundary: None,
        })
    }

    /// Decodes one raw pgoutput message at `lsn` into the events it carries (none for
    /// Relation and Type messages, one per table for a Truncate).
    pub(crate) async fn data(
        &mut self,
        lsn: u64,
        data: bytes::Bytes,
    ) -> Result<Vec<ChangeEvent>, CdcError> {
        let events = self.decode(lsn, data).await?;
        Ok(self.decorate(events))
    }

    async fn decode(&mut self, lsn: u64, data: bytes::Bytes) -> Result<Vec<ChangeEvent>, CdcError> {
        let message = self
            .parser
            .parse_wal_message_bytes(data)
            .map_err(|e| {
                CdcError::Decode(format!(
                    "pgoutput at {}: {e}",
                    crate::event::format_lsn(lsn)
                ))
            })?
            .message;
        match message {
            LogicalReplicationMessage::Relation {
                relation_id,
                namespace,
                relation_name,
                columns,
                ..
            } => {
                self.relation(relation_id, namespace, relation_name, columns)
                    .await?;
                Ok(Vec::new())
            }
            LogicalReplicationMessage::Insert { relation_id, tuple } => {
                let Some(table) = self.captured(relation_id)? else {
                    return Ok(Vec::new());
                };
                let after = self.row(&table, &tuple, None)?;
                Ok(vec![self.event(lsn, Op::Create, &table, None, Some(after))])
            }
            LogicalReplicationMessage::Update {
                relation_id,
                old_tuple,
                new_tuple,
                ..
            } => {
                let Some(table) = self.captured(relation_id)? else {
                    return Ok(Vec::new());
                };
                let before = match &old_tuple {
                    Some(old) => Some(self.row(&table, old, None)?),
                    None => None,
                };
                // An unchanged TOASTed value is absent from the new tuple; with REPLICA
                // IDENTITY FULL the old tuple has it.
                let after = self.row(&table, &new_tuple, old_tuple.as_ref())?;
                // A changed primary key is Debezium's delete of the old key and create of
                // the new one, so a consumer keyed by the primary key drops the old row.
                let old_key = before.as_ref().and_then(|b| key_of(&table, b));
                if old_key.is_some() && old_key != key_of(&table, &after) {
                    let delete = self.event(lsn, Op::Delete, &table, before, None);
                    let create = self.event(lsn, Op::Create, &table, None, Some(after));
                    return Ok(vec![delete, create]);
                }
                Ok(vec![self.event(
                    lsn,
                    Op::Update,
                    &table,
                    before,
                    Some(after),
                )])
            }
            LogicalReplicationMessage::Delete {
                relation_id,
                old_tuple,
                ..
            } => {
                let Some(table) = self.captured(relation_id)? else {
                    return Ok(Vec::new());
                };
                let before = self.row(&table, &old_tuple, None)?;
                Ok(vec![self.event(
                    lsn,
                    Op::Delete,
                    &table,
                    Some(before),
                    None,
                )])
            }
            LogicalReplicationMessage::Truncate { relation_ids, .. } => {
                let mut events = Vec::new();
                for id in relation_ids {
                    if let Some(table) = self.captured(id)? {
                        events.push(self.event(lsn, Op::Truncate, &table, None, None));
                    }
                }
                Ok(events)
            }
            // Type, Origin; streaming and two-phase messages are not negotiated (protocol 1).
            _ => Ok(Vec::new()),
        }
    }

    async fn relation(
        &mut self,
        relation_id: u32,
        namespace: Arc<str>,
        relation_name: Arc<str>,
        columns: Vec<pg_walstream::ColumnInfo>,
    ) -> Result<(), CdcError> {
        let name = TableName {
            // pgoutput sends an empty namespace for pg_catalog.
            schema: if namespace.is_empty() {
                "pg_catalog".into()
            } else {
                namespace.to_string()
            },
            table: relation_name.to_string(),
        };
        // The signal table's inserts reach the connector too (it intercepts them).
        let captured = self.config.captures(&name) || self.config.is_signal_table(&name);
        let mut cols = Vec::with_capacity(columns.len());
        for c in &columns {
            let kind = self
                .catalog
                .kind(&self.client, c.type_id, c.type_modifier)
                .await
                .map_err(|e| {
                    CdcError::Decode(format!(
                        "type {} of {name}.{}: {}",
                        c.type_id,
                        c.name,
                        db_message(&e)
                    ))
                })?;
            cols.push(Column {
                name: c.name.clone(),
                kind,
                policy: self
                    .config
                    .column_policy(&name.schema, &name.table, &c.name),
            });
        }
        let pk = if captured {
            Catalog::primary_key(&self.client, relation_id)
                .await
                .map_err(|e| {
                    CdcError::Decode(format!("primary key of {name}: {}", db_message(&e)))
                })?
        } else {
            Vec::new()
        };
        let key = key_indexes(&cols, &pk);
        self.relations.insert(
            relation_id,
            Relation {
                table: Arc::new(Table {
                    schema: name.schema.into(),
                    name: name.table.into(),
                    columns: cols,
                    key,
                }),
                captured,
            },
        );
        Ok(())
    }

    fn captured(&self, relation_id: u32) -> Result<Option<Arc<Table>>, CdcError> {
        match self.relations.get(&relation_id) {
            Some(r) if r.captured => Ok(Some(r.table.clone())),
            Some(_) => Ok(None),
            None => Err(CdcError::Decode(format!(
                "change for relation {relation_id} before its Relation message"
            ))),
        }
    }

    fn row(
        &self,
        table: &Table,
        tuple: &TupleData,
        old: Option<&TupleData>,
    ) -> Result<Row, CdcError> {
        let mut values = Vec::with_capacity(table.columns.len());
        for (i, column) in table.columns.iter().enumerate() {
            let Some(data) = tuple.get_column(i) else {
                values.push((column.name.clone(), serde_json::Value::Null));
                continue;
            };
            let value = if data.is_unchanged() {
                match old
                    .and_then(|o| o.get_column(i))
                    .filter(|d| !d.is_unchanged())
                {
                    Some(previous) => self.value(table, column, previous)?,
                    None => unavailable(&column.kind),
                }
            } else {
                self.value(table, column, data)?
            };
            values.push((column.name.clone(), value));
        }
        Ok(Row(values))
    }

    fn value(
        &self,
        table: &Table,
        column: &Column,
        data: &pg_walstream::ColumnData,
    ) -> Result<serde_json::Value, CdcError> {
        let text = if data.is_null() {
            None
        } else {
            Some(data.as_str().ok_or_else(|| {
                CdcError::Decode(format!(
                    "{}.{}.{}: not UTF-8 text",
                    table.schema, table.name, column.name
                ))
            })?)
        };
        convert(&column.kind, text.as_deref(), self.decimals).map_err(|e| {
            CdcError::Decode(format!(
                "{}.{}.{}: {e}",
                table.schema, table.name, column.name
            ))
        })
    }

    fn event(
        &mut self,
        lsn: u64,
        op: Op,
        table: &Table,
        before: Option<Row>,
        after: Option<Row>,
    ) -> ChangeEvent {
        let (commit_lsn, index, tx_id, ts) = match &mut self.tx {
            Some(tx) => {
                let index = tx.next_index;
                tx.next_index += 1;
                (tx.commit_lsn, index, Some(tx.xid), tx.commit_ts_us)
            }
            None => (lsn, 0, None, crate::event::now_us()),
        };
        let key = match op {
            Op::Truncate => None,
            _ => after
                .as_ref()
                .or(before.as_ref())
                .and_then(|row| key_of(table, row)),
        };
        // A delete's key comes from its before image (the replica identity's columns).
        let before = before.map(|r| table.image(r));
        let after = after.map(|r| table.image(r));
        ChangeEvent {
            op,
            schema: table.schema.clone(),
            table: table.name.clone(),
            key,
            before,
            after,
            message: None,
            position: Position {
                commit_lsn,
                lsn,
                index,
                snapshot: false,
            },
            tx_id,
            source_ts_us: ts,
            snapshot: SnapshotMarker::False,
            source: self.source.clone(),
            transaction: None,
            boundary: None,
        }
    }
}
