//! Incremental snapshots (DBLog's watermark algorithm, as Debezium runs it), interleaved
//! with streaming: a table is read in primary-key chunks while its changes keep flowing,
//! without reordering any key's history.
//!
//! One window per chunk: the connector reads the next chunk (`WHERE key > last ORDER BY
//! key LIMIT n`, a fresh statement, so it sees everything committed so far) into a
//! buffer, then writes a watermark (`pg_logical_emit_message`, non-transactional, prefix
//! `mainstay.watermark`). Until the stream reaches that watermark, every change to a
//! buffered key drops it from the buffer — the stream itself carries that key's newer (or
//! equal) state, in order. At the watermark the rows left are emitted as reads (`op = r`,
//! `source.snapshot = "incremental"`), positioned at the watermark, so they sit between
//! the changes before and after it. A truncate of the table during the window empties the
//! buffer.
//!
//! Progress (the queue and the last key emitted) is saved with the connector's state after
//! the chunk reached the sink, so a crash resumes the snapshot at its last chunk.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::{Client, SimpleQueryMessage};

use super::snapshot::key_of;
use super::stream::WATERMARK_PREFIX;
use super::{db_message, quote_literal, Catalog, Table};
use crate::config::{CdcConfig, TableName};
use crate::error::CdcError;
use crate::event::{now_us, ChangeEvent, Op, Position, SnapshotMarker, SourceInfo};
use crate::types::convert;

/// What survives a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Progress {
    /// Tables still to read, in order; the first is being read.
    pub(crate) queue: Vec<String>,
    /// The primary-key values (as text) of the first table's last row emitted.
    pub(crate) last_key: Option<Vec<String>>,
    /// Held by `pause-snapshot`.
    pub(crate) paused: bool,
}

/// The open window: the chunk read, minus the keys the stream changed since.
struct Window {
    id: String,
    schema: Arc<str>,
    table: Arc<str>,
    /// Key text → the row's read event; in key order by `order`.
    rows: HashMap<String, ChangeEvent>,
    order: Vec<String>,
    /// The chunk's last key (raw text), whether or not that row survives.
    last_key: Option<Vec<String>>,
    /// The chunk was short: the table ends with it.
    table_done: bool,
}

pub(crate) struct Incremental {
    progress: Progress,
    /// The current table's shape, loaded when its first chunk is read.
    current: Option<Table>,
    window: Option<Window>,
    catalog: Catalog,
    windows: u64,
    /// Progress changed and is not saved yet.
    pub(crate) dirty: bool,
    /// Rows emitted so far by this run.
    pub(crate) rows: u64,
}

impl Incremental {
    pub(crate) fn new(progress: Progress) -> Incremental {
        Incremental {
            progress,
            current: None,
            window: None,
            catalog: Catalog::new(),
            windows: 0,
            dirty: false,
            rows: 0,
        }
    }

    pub(crate) fn progress(&self) -> &Progress {
        &self.progress
    }

    /// True when a chunk should be read now.
    pub(crate) fn wants_window(&self) -> bool {
        self.window.is_none() && !self.progress.paused && !self.progress.queue.is_empty()
    }

    /// Handles a row inserted into the signal table.
    pub(crate) fn signal(&mut self, config: &CdcConfig, event: &ChangeEvent) {
        let Some(row) = event.after.as_ref() else {
            return;
        };
        let text = |column: &str| row.get(column).and_then(|v| v.as_str()).map(str::to_string);
        let kind = text("type").unwrap_or_default();
        let data: serde_json::Value = text("data")
            .and_then(|d| serde_json::from_str(&d).ok())
            .unwrap_or(serde_json::Value::Null);
        let collections: Vec<String> = data["data-collections"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let id = text("id").unwrap_or_default();
        match kind.as_str() {
            "execute-snapshot" => {
                if let Some(kind) = data["type"]
                    .as_str()
                    .filter(|k| !k.eq_ignore_ascii_case("incremental"))
                {
                    tracing::warn!(signal = %id, "execute-snapshot of type {kind:?} is not supported (only incremental); ignored");
                    return;
                }
                for name in collections {
                    match TableName::parse(&name) {
                        Ok(table) if config.captures(&table) => {
                            let name = table.to_string();
                            if !self.progress.queue.contains(&name) {
                                tracing::info!(signal = %id, table = %name, "incremental snapshot queued");
                                self.progress.queue.push(name);
                                self.dirty = true;
                            }
                        }
                        Ok(table) => {
                            tracing::warn!(signal = %id, "execute-snapshot: {table} is not captured by this connector; ignored")
                        }
                        Err(e) => tracing::warn!(signal = %id, "execute-snapshot: {e}; ignored"),
                    }
                }
            }
            "stop-snapshot" => {
                let stop_all = collections.is_empty();
                let stopped: Vec<String> = collections
                    .iter()
                    .filter_map(|c| TableName::parse(c).ok().map(|t| t.to_string()))
                    .collect();
                let first = self.progress.queue.first().cloned();
                self.progress
                    .queue
                    .retain(|t| !stop_all && !stopped.contains(t));
                if self.progress.queue.first() != first.as_ref() {
                    // The table being read was stopped: drop its window and its place.
                    self.window = None;
                    self.current = None;
                    self.progress.last_key = None;
                }
                tracing::info!(signal = %id, "incremental snapshot stopped for {}", if stop_all { "every table".to_string() } else { stopped.join(", ") });
                self.dirty = true;
            }
            "pause-snapshot" => {
                self.progress.paused = true;
                self.dirty = true;
                tracing::info!(signal = %id, "incremental snapshot paused");
            }
            "resume-snapshot" => {
                self.progress.paused = false;
                self.dirty = true;
                tracing::info!(signal = %id, "incremental snapshot resumed");
            }
            other => tracing::warn!(signal = %id, "unknown signal type {other:?}; ignored"),
        }
    }

    /// Reads the next chunk of the current table into a window and writes its watermark.
    pub(crate) async fn open_window(
        &mut self,
        client: &Client,
        config: &CdcConfig,
        source: &Arc<SourceInfo>,
    ) -> Result<(), CdcError> {
        let err = |what: String, e: tokio_postgres::Error| CdcError::Source {
            address: "incremental snapshot".into(),
            message: format!("{what}: {}", db_message(&e)),
        };
        let Some(name) = self.progress.queue.first().cloned() else {
            return Ok(());
        };
        let table_name = TableName::parse(&name)?;
        if self.current.is_none() {
            let table = self
                .catalog
                .table(client, &table_name)
                .await
                .map_err(|e| err(format!("reading the shape of {name}"), e))?;
            match table {
                Some((_, mut table)) if !table.key.is_empty() => {
                    table.apply_rules(config);
                    self.current = Some(table);
                }
                Some(_) => {
                    tracing::warn!(table = %name, "incremental snapshot skipped: the table has no primary key to read it in chunks by");
                    self.finish_table();
                    return Ok(());
                }
                None => {
                    tracing::warn!(table = %name, "incremental snapshot skipped: the table does not exist");
                    self.finish_table();
                    return Ok(());
                }
            }
        }
        let table = self.current.as_ref().expect("loaded above");
        let columns: Vec<String> = table
            .columns
            .iter()
            .map(|c| super::quote_ident(&c.name))
            .collect();
        let key_columns: Vec<String> = table.key.iter().map(|&i| columns[i].clone()).collect();
        let keys = format!("({})", key_columns.join(", "));
        let filter = match &self.progress.last_key {
            Some(last) => format!(
                "WHERE {keys} > ({})",
                last.iter()
                    .map(|v| quote_literal(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => String::new(),
        };
        let sql = format!(
            "SELECT {} FROM {} {filter} ORDER BY {} LIMIT {}",
            columns.join(", "),
            table_name.quoted(),
            key_columns.join(", "),
            config.incremental_chunk_size
        );
        let messages = client
            .simple_query(&sql)
            .await
            .map_err(|e| err(format!("reading a chunk of {name}"), e))?;
        let started_us = now_us();
        let mut window = Window {
            id: String::new(),
            schema: table.schema.clone(),
            table: table.name.clone(),
            rows: HashMap::new(),
            order: Vec::new(),
            last_key: None,
            table_done: false,
        };
        let mut fetched = 0usize;
        for message in messages {
            let SimpleQueryMessage::Row(row) = message else {
                continue;
            };
            fetched += 1;
            let mut values = Vec::with_capacity(table.columns.len());
            for (i, column) in table.columns.iter().enumerate() {
                let value = convert(&column.kind, row.get(i), config.decimal_handling)
                    .map_err(|e| CdcError::Decode(format!("{name}.{}: {e}", column.name)))?;
                values.push((column.name.clone(), value));
            }
            let after = crate::event::Row(values);
            let key = key_of(table, &after);
            let key_text = key
                .as_ref()
                .map(|k| k.to_value().to_string())
                .unwrap_or_default();
            window.last_key = Some(
                table
                    .key
                    .iter()
                    .map(|&i| row.get(i).unwrap_or_default().to_string())
                    .collect(),
            );
            let event = ChangeEvent {
                op: Op::Read,
                schema: table.schema.clone(),
                table: table.name.clone(),
                key,
                before: None,
                after: Some(table.image(after)),
                message: None,
                // Set at the watermark.
                position: Position {
                    commit_lsn: 0,
                    lsn: 0,
                    index: 0,
                    snapshot: true,
                },
                tx_id: None,
                source_ts_us: started_us,
                snapshot: SnapshotMarker::Incremental,
                source: source.clone(),
                transaction: None,
                boundary: None,
            };
            window.order.push(key_text.clone());
            window.rows.insert(key_text, event);
        }
        window.table_done = fetched < config.incremental_chunk_size;
        self.windows += 1;
        // Unique across runs and reconnects: a watermark replayed from an earlier run (the
        // stream resumes before it) must not close this window.
        window.id = format!(
            "{}:{}:{}",
            config.name,
            mainstay_core::id::unguessable(),
            self.windows
        );
        client
            .execute(
                "SELECT pg_logical_emit_message(false, $1, $2)",
                &[&WATERMARK_PREFIX, &window.id],
            )
            .await
            .map_err(|e| err("writing a watermark".into(), e))?;
        self.window = Some(window);
        Ok(())
    }

    /// Drops buffered rows the stream changed since the chunk was read.
    pub(crate) fn observe(&mut self, events: &[ChangeEvent]) {
        let Some(window) = self.window.as_mut() else {
            return;
        };
        for event in events {
            if event.table != window.table || event.schema != window.schema {
                continue;
            }
            match event.op {
                Op::Truncate => window.rows.clear(),
                Op::Create | Op::Update | Op::Delete => {
                    if let Some(key) = &event.key {
                        window.rows.remove(&key.to_value().to_string());
                    }
                }
                Op::Read | Op::Message | Op::Transaction | Op::Tombstone => {}
            }
        }
    }

    /// A watermark reached the stream at `lsn`: the window it closes yields its rows.
    pub(crate) fn close(&mut self, lsn: u64, content: &[u8]) -> Option<Vec<ChangeEvent>> {
        let window = self.window.as_ref()?;
        if content != window.id.as_bytes() {
            return None;
        }
        let mut window = self.window.take().expect("checked above");
        let mut events = Vec::with_capacity(window.rows.len());
        for key in &window.order {
            if let Some(mut event) = window.rows.remove(key) {
                event.position = Position {
                    commit_lsn: lsn,
                    lsn,
                    index: events.len() as u64,
                    snapshot: true,
                };
                events.push(event);
            }
        }
        self.rows += events.len() as u64;
        if window.table_done {
            tracing::info!(table = %self.progress.queue.first().map(String::as_str).unwrap_or(""), "incremental snapshot: table read");
            self.finish_table();
        } else {
            self.progress.last_key = window.last_key.take();
        }
        self.dirty = true;
        Some(events)
    }

    fn finish_table(&mut self) {
        if !self.progress.queue.is_empty() {
            self.progress.queue.remove(0);
        }
        self.progress.last_key = None;
        self.current = None;
        self.dirty = true;
    }
}
