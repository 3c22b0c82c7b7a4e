//! The initial snapshot: every captured table read in one REPEATABLE READ transaction that
//! imported the snapshot the slot exported when it was created, so the rows are exactly the
//! state at the slot's consistent point and the stream continues from there — no change
//! missed, none applied twice or out of order.
//!
//! Tables are read through a cursor, `fetch_size` rows per round trip, and handed to the
//! sink chunk by chunk (memory stays bounded by one chunk).

use std::sync::Arc;

use tokio_postgres::{Client, SimpleQueryMessage};

use super::{db_message, quote_ident, quote_literal, Catalog, Endpoint, Table};
use crate::config::TableName;
use crate::connector::Delivery;
use crate::error::CdcError;
use crate::event::{now_us, ChangeEvent, Op, Position, Row, SnapshotMarker, SourceInfo};
use crate::types::{convert, DecimalHandling};

use super::incremental::Progress;

/// What a snapshot read.
#[derive(Debug, Clone, Default)]
pub(crate) struct SnapshotStats {
    pub(crate) rows: u64,
    pub(crate) tables: usize,
}

pub(crate) struct SnapshotRun<'a> {
    pub(crate) endpoint: &'a Endpoint,
    pub(crate) tables: &'a [TableName],
    /// The snapshot exported by the slot's creation; `None` reads a fresh snapshot (the
    /// slot existed already: rows may then be newer than the slot's position).
    pub(crate) exported: Option<&'a str>,
    pub(crate) consistent_point: u64,
    pub(crate) fetch_size: usize,
    pub(crate) decimals: DecimalHandling,
    pub(crate) source: Arc<SourceInfo>,
    pub(crate) config: &'a crate::config::CdcConfig,
}

impl SnapshotRun<'_> {
    /// Reads every table, handing rows to `delivery` chunk by chunk; after each chunk the
    /// sink took, `on_progress` gets what is left (the tables not finished, and the raw
    /// primary key of the last row delivered of the first), so a crash can resume there.
    pub(crate) async fn run(
        &self,
        delivery: &mut Delivery,
        on_progress: &mut (dyn FnMut(Progress) -> Result<(), CdcError> + Send),
    ) -> Result<SnapshotStats, CdcError> {
        let client = self.endpoint.connect().await?;
        let err = |what: &str, e: tokio_postgres::Error| {
            self.endpoint
                .error(format!("snapshot: {what}: {}", db_message(&e)))
        };
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| err("BEGIN", e))?;
        if let Some(name) = self.exported {
            client
                .batch_execute(&format!("SET TRANSACTION SNAPSHOT {}", quote_literal(name)))
                .await
                .map_err(|e| err("importing the slot's snapshot", e))?;
        }
        let mut catalog = Catalog::new();
        let mut stats = SnapshotStats::default();
        let started_us = now_us();
        let mut index = 0u64;
        // The last row read is held back until the next one shows whether it ends its table
        // or the whole snapshot (Debezium's last_in_data_collection / last markers).
        let mut held: Option<(ChangeEvent, usize, Vec<String>)> = None;
        // Where the last row handed to the sink came from: table index and raw key.
        let progress_of = |table: usize, key: Vec<String>| Progress {
            queue: self.tables[table..].iter().map(|t| t.to_string()).collect(),
            last_key: Some(key),
            paused: false,
        };
        for (t, name) in self.tables.iter().enumerate() {
            let Some((_, mut table)) = catalog
                .table(&client, name)
                .await
                .map_err(|e| err(&format!("reading the shape of {name}"), e))?
            else {
                return Err(CdcError::Config(format!("table {name} does not exist")));
            };
            table.apply_rules(self.config);
            stats.tables += 1;
            let columns = table
                .columns
                .iter()
                .map(|c| quote_ident(&c.name))
                .collect::<Vec<_>>()
                .join(", ");
            let select_list = if columns.is_empty() {
                "NULL".to_string()
            } else {
                columns
            };
            // In primary-key order, so a crash can resume after the last key delivered.
            let order = if table.key.is_empty() {
                String::new()
            } else {
                format!(
                    " ORDER BY {}",
                    table
                        .key
                        .iter()
                        .map(|&i| quote_ident(&table.columns[i].name))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            client
                .batch_execute(&format!(
                    "DECLARE mainstay_snapshot NO SCROLL CURSOR FOR SELECT {select_list} FROM {}{order}",
                    name.quoted()
                ))
                .await
                .map_err(|e| err(&format!("reading {name}"), e))?;
            let mut first_in_table = true;
            loop {
                let messages = client
                    .simple_query(&format!(
                        "FETCH FORWARD {} FROM mainstay_snapshot",
                        self.fetch_size
                    ))
                    .await
                    .map_err(|e| err(&format!("reading {name}"), e))?;
                let mut chunk = Vec::with_capacity(self.fetch_size + 1);
                let mut chunk_end: Option<(usize, Vec<String>)> = None;
                let mut fetched = 0usize;
                for message in messages {
                    let SimpleQueryMessage::Row(row) = message else {
                        continue;
                    };
                    fetched += 1;
                    let mut event = self.read_event(&table, &row, index, started_us)?;
                    index += 1;
                    if first_in_table {
                        event.snapshot = if stats.rows == 0 {
                            SnapshotMarker::First
                        } else {
                            SnapshotMarker::FirstInDataCollection
                        };
                        first_in_table = false;
                    }
                    stats.rows += 1;
                    let raw_key = table
                        .key
                        .iter()
                        .map(|&k| row.get(k).unwrap_or_default().to_string())
                        .collect();
                    if let Some((prev, prev_table, prev_key)) = held.replace((event, t, raw_key)) {
                        chunk.push(prev);
                        chunk_end = Some((prev_table, prev_key));
                    }
                }
                // A short fetch ends the table (the held row is its last).
                let done = fetched < self.fetch_size;
                if !chunk.is_empty() {
                    delivery.deliver(chunk).await?;
                    if let Some((table, key)) = chunk_end {
                        on_progress(progress_of(table, key))?;
                    }
                }
                if done {
                    break;
                }
            }
            client
                .batch_execute("CLOSE mainstay_snapshot")
                .await
                .map_err(|e| err("closing the cursor", e))?;
            if let Some((last, _, _)) = held.as_mut() {
                if &*last.table == name.table.as_str()
                    && &*last.schema == name.schema.as_str()
                    && last.snapshot != SnapshotMarker::First
                {
                    last.snapshot = SnapshotMarker::LastInDataCollection;
                }
            }
            tracing::info!(table = %name, rows = stats.rows, "snapshot: table {} of {} read", t + 1, self.tables.len());
        }
        if let Some((mut last, _, _)) = held.take() {
            last.snapshot = SnapshotMarker::Last;
            delivery.deliver(vec![last]).await?;
        }
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| err("COMMIT", e))?;
        Ok(stats)
    }

    fn read_event(
        &self,
        table: &Table,
        row: &tokio_postgres::SimpleQueryRow,
        index: u64,
        started_us: i64,
    ) -> Result<ChangeEvent, CdcError> {
        let mut values = Vec::with_capacity(table.columns.len());
        for (i, column) in table.columns.iter().enumerate() {
            let value = convert(&column.kind, row.get(i), self.decimals).map_err(|e| {
                CdcError::Decode(format!(
                    "{}.{}.{}: {e}",
                    table.schema, table.name, column.name
                ))
            })?;
            values.push((column.name.clone(), value));
        }
        let after = Row(values);
        let key = key_of(table, &after);
        Ok(ChangeEvent {
            op: Op::Read,
            schema: table.schema.clone(),
            table: table.name.clone(),
            key,
            before: None,
            after: Some(table.image(after)),
            message: None,
            position: Position {
                commit_lsn: self.consistent_point,
                lsn: self.consistent_point,
                index,
                snapshot: true,
            },
            tx_id: None,
            source_ts_us: started_us,
            snapshot: SnapshotMarker::True,
            source: self.source.clone(),
            transaction: None,
            boundary: None,
        })
    }
}

/// The primary-key columns of `row`, or `None` when the table has no primary key.
pub(crate) fn key_of(table: &Table, row: &Row) -> Option<Row> {
    if table.key.is_empty() {
        return None;
    }
    Some(Row(table
        .key
        .iter()
        .filter_map(|&i| row.0.get(i).cloned())
        .collect()))
}

/// Reads the slot's position for snapshot rows when the slot already existed.
pub(crate) async fn slot_position(client: &Client, slot: &str) -> Result<u64, CdcError> {
    let row = client
        .query_one(
            "SELECT COALESCE(confirmed_flush_lsn, restart_lsn)::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| CdcError::Setup(format!("reading slot {slot:?}: {}", db_message(&e))))?;
    let text: Option<String> = row.get(0);
    Ok(text
        .as_deref()
        .and_then(crate::event::parse_lsn)
        .unwrap_or(0))
}
