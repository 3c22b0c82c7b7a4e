//! A running connector seen from outside: its phase, what it delivered (per table), how far
//! behind it is, its snapshot progress and its errors — and a live tail of the envelopes it
//! hands the sink. `mainstay serve` exposes these as `GET /v1/cdc`, an SSE tail and
//! Prometheus metrics.
//!
//! Cost: a mutex taken once per delivered batch; envelopes are encoded for the tail only
//! while someone listens.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::event::{format_lsn, now_us, ChangeEvent, SnapshotMarker};

/// What a connector is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Phase {
    /// Connecting and checking the source.
    Starting,
    /// Reading the initial snapshot.
    Snapshot,
    /// Streaming changes (incremental snapshots run in this phase too).
    Streaming,
    /// Lost the source; reconnecting with backoff.
    Reconnecting,
    /// Standing by for leadership (high availability).
    Standby,
    /// Stopped cleanly.
    Stopped,
    /// Stopped on an error (see `last_error`).
    Failed,
}

/// A snapshot of a connector's state.
#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConnectorStatus {
    /// The connector's name.
    pub name: String,
    /// Its replication slot.
    pub slot: String,
    /// The sink's name.
    pub sink: String,
    /// What it is doing.
    pub phase: Phase,
    /// Events handed to the sink since it started.
    pub delivered: u64,
    /// Those events per table (`schema.table`; `""` for messages and transaction events).
    pub delivered_by_table: BTreeMap<String, u64>,
    /// Rows read by the initial snapshot.
    pub snapshot_rows: u64,
    /// Rows read by incremental snapshots.
    pub incremental_rows: u64,
    /// Tables an incremental snapshot still has to read (the first is being read).
    pub incremental_queue: Vec<String>,
    /// The position of the last event delivered.
    pub last_position: Option<String>,
    /// The last LSN confirmed to the slot.
    pub confirmed_lsn: Option<String>,
    /// Commit time of the last streamed change delivered, Unix milliseconds.
    pub last_source_ts_ms: Option<i64>,
    /// Delivery lag of the last streamed change: delivered minus committed, milliseconds.
    pub lag_ms: Option<i64>,
    /// Failed sink writes (each retried by the connector or ending the run).
    pub sink_errors: u64,
    /// Reconnects to the source.
    pub reconnects: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// Shared between a running connector and whoever watches it.
pub struct Observer {
    status: Mutex<ConnectorStatus>,
    tail: broadcast::Sender<Arc<str>>,
    source_url: Option<String>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("status", &self.status())
            .finish()
    }
}

impl Observer {
    /// An observer for connector `name` on `slot` writing to `sink`.
    pub fn new(name: &str, slot: &str, sink: &str) -> Arc<Observer> {
        Arc::new(Observer {
            status: Mutex::new(ConnectorStatus {
                name: name.to_string(),
                slot: slot.to_string(),
                sink: sink.to_string(),
                phase: Phase::Starting,
                delivered: 0,
                delivered_by_table: BTreeMap::new(),
                snapshot_rows: 0,
                incremental_rows: 0,
                incremental_queue: Vec::new(),
                last_position: None,
                confirmed_lsn: None,
                last_source_ts_ms: None,
                lag_ms: None,
                sink_errors: 0,
                reconnects: 0,
                last_error: None,
            }),
            tail: broadcast::channel(1024).0,
            source_url: None,
        })
    }

    /// An observer that can also read the connector's slot on `source_url`
    /// ([`Observer::slot`]).
    pub fn with_source(name: &str, slot: &str, sink: &str, source_url: &str) -> Arc<Observer> {
        let mut observer = Arc::into_inner(Observer::new(name, slot, sink)).expect("fresh");
        observer.source_url = Some(source_url.to_string());
        Arc::new(observer)
    }

    /// The connector's slot as the source reports it (lag and retained WAL in bytes);
    /// `None` without a source URL or when the slot is gone.
    pub async fn slot(&self) -> Result<Option<crate::SlotStatus>, crate::CdcError> {
        let Some(url) = &self.source_url else {
            return Ok(None);
        };
        let slot = self.lock().slot.clone();
        crate::slot_status(url, &slot).await
    }

    /// The state now.
    pub fn status(&self) -> ConnectorStatus {
        self.lock().clone()
    }

    /// Envelopes (JSON text) as they are delivered. A slow listener misses the oldest
    /// (`RecvError::Lagged`); nothing waits for listeners.
    pub fn tail(&self) -> broadcast::Receiver<Arc<str>> {
        self.tail.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConnectorStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn phase(&self, phase: Phase) {
        self.lock().phase = phase;
    }

    pub(crate) fn delivered(&self, events: &[ChangeEvent]) {
        let now = now_us();
        {
            let mut s = self.lock();
            s.delivered += events.len() as u64;
            for e in events {
                let table = if e.table.is_empty() {
                    String::new()
                } else {
                    format!("{}.{}", e.schema, e.table)
                };
                *s.delivered_by_table.entry(table).or_default() += 1;
                match e.snapshot {
                    SnapshotMarker::False => {}
                    SnapshotMarker::Incremental => s.incremental_rows += 1,
                    _ => s.snapshot_rows += 1,
                }
            }
            if let Some(last) = events.last() {
                s.last_position = Some(last.position.to_text());
                if last.snapshot == SnapshotMarker::False && last.tx_id.is_some() {
                    s.last_source_ts_ms = Some(last.source_ts_us.div_euclid(1000));
                    s.lag_ms = Some((now - last.source_ts_us).div_euclid(1000).max(0));
                }
            }
        }
        if self.tail.receiver_count() > 0 {
            for e in events {
                if let Ok(text) = serde_json::to_string(&e.envelope(now)) {
                    let _ = self.tail.send(Arc::from(text));
                }
            }
        }
    }

    pub(crate) fn confirmed(&self, lsn: u64) {
        self.lock().confirmed_lsn = Some(format_lsn(lsn));
    }

    pub(crate) fn incremental_queue(&self, queue: &[String]) {
        self.lock().incremental_queue = queue.to_vec();
    }

    pub(crate) fn sink_error(&self, message: &str) {
        let mut s = self.lock();
        s.sink_errors += 1;
        s.last_error = Some(message.to_string());
    }

    pub(crate) fn reconnecting(&self, message: &str) {
        let mut s = self.lock();
        s.reconnects += 1;
        s.phase = Phase::Reconnecting;
        s.last_error = Some(message.to_string());
    }

    pub(crate) fn ended(&self, error: Option<&str>) {
        let mut s = self.lock();
        match error {
            None => s.phase = Phase::Stopped,
            Some(e) => {
                s.phase = Phase::Failed;
                s.last_error = Some(e.to_string());
            }
        }
    }

    /// Marks the connector as stopped by an error outside the run (setup, the sink).
    pub fn failed(&self, message: &str) {
        self.ended(Some(message));
    }

    /// Marks the connector as standing by (high availability: another instance leads).
    pub fn standby(&self) {
        self.phase(Phase::Standby);
    }
}
