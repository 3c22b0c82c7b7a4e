//! The event store in an embedded SQLite file (the default).
//!
//! Every append runs in one `BEGIN IMMEDIATE` transaction, so writers — threads or
//! processes on this host — take turns; positions come from an `AUTOINCREMENT` key
//! assigned inside that transaction, so commit order is position order and `$all` has no
//! gap a reader could skip. WAL mode with `synchronous=FULL`: an acknowledged append
//! survives power loss. Not for several hosts (don't put the file on NFS).

use crate::event::{check_snapshot, check_stream};
use crate::subscription::check_name;
use crate::{
    Append, AppendResult, DeleteMode, Direction, EventStore, ExpectedVersion, Position,
    ReadAllFilter, RecordedEvent, Snapshot, StoreError, StreamMetadata, Wakeups,
};
use async_trait::async_trait;
use mainstay_core::clock::now_ms;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mainstay_streams (
    stream_id       TEXT PRIMARY KEY,
    version         INTEGER NOT NULL,
    state           INTEGER NOT NULL DEFAULT 0,
    truncate_before INTEGER,
    max_count       INTEGER,
    max_age_ms      INTEGER,
    custom          TEXT
);
CREATE TABLE IF NOT EXISTS mainstay_snapshots (
    stream_id     TEXT PRIMARY KEY,
    version       INTEGER NOT NULL,
    data          TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS mainstay_events (
    position      INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id     TEXT NOT NULL,
    version       INTEGER NOT NULL,
    event_id      TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    data          TEXT NOT NULL,
    metadata      TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    UNIQUE (stream_id, version),
    UNIQUE (stream_id, event_id)
);
CREATE TABLE IF NOT EXISTS mainstay_subscriptions (
    name          TEXT PRIMARY KEY,
    commit_pos    INTEGER NOT NULL,
    prepare_pos   INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);";

/// How often a caught-up subscription re-reads without a wake-up (appends by other
/// processes sharing the file).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);

const COLUMNS: &str =
    "stream_id, version, position, event_id, event_type, data, metadata, created_at_ms";

/// An event store in a SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteEventStore {
    conn: mainstay_core::sqlite::SharedConnection,
    /// Bumped after every append this instance commits: wakes its subscribers.
    appended: Arc<watch::Sender<u64>>,
    poll: Duration,
    scavenge_batch: usize,
}

/// A subscriber's wake-ups: this instance's appends, or the poll interval.
struct SqliteWakeups {
    rx: watch::Receiver<u64>,
    poll: Duration,
}

#[async_trait]
impl Wakeups for SqliteWakeups {
    async fn wait(&mut self) -> Result<(), StoreError> {
        match tokio::time::timeout(self.poll, self.rx.changed()).await {
            Ok(Ok(())) | Err(_) => {}
            // Every store handle is gone; only polling is left.
            Ok(Err(_)) => tokio::time::sleep(self.poll).await,
        }
        Ok(())
    }
}

/// Why an append inside the transaction stopped.
enum Refused {
    Store(StoreError),
    Db(rusqlite::Error),
}

impl From<rusqlite::Error> for Refused {
    fn from(e: rusqlite::Error) -> Self {
        Refused::Db(e)
    }
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        backend: "sqlite",
        message: e.to_string(),
    }
}

/// SQLite assigns one number in commit order: it is both parts of the position.
fn pos(n: u64) -> Position {
    Position {
        commit: n,
        prepare: n,
    }
}

fn event_row(r: &Row<'_>) -> rusqlite::Result<RecordedEvent> {
    let json = |i: usize| -> rusqlite::Result<serde_json::Value> {
        serde_json::from_str(&r.get::<_, String>(i)?).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        })
    };
    Ok(RecordedEvent {
        stream: r.get(0)?,
        version: r.get::<_, i64>(1)? as u64,
        position: pos(r.get::<_, i64>(2)? as u64),
        id: r.get(3)?,
        event_type: r.get(4)?,
        data: json(5)?,
        metadata: json(6)?,
        created_at_ms: r.get::<_, i64>(7)? as u64,
    })
}

impl SqliteEventStore {
    /// Opens (creating if needed) the store in the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let conn = mainstay_core::sqlite::open(path.as_ref(), SCHEMA, Duration::from_secs(10))
            .map_err(StoreError::Config)?;
        Ok(SqliteEventStore {
            conn: mainstay_core::sqlite::SharedConnection::new(conn),
            appended: Arc::new(watch::channel(0).0),
            poll: DEFAULT_POLL_INTERVAL,
            scavenge_batch: crate::DEFAULT_SCAVENGE_BATCH,
        })
    }

    /// Most events one scavenge statement removes (default
    /// [`crate::DEFAULT_SCAVENGE_BATCH`]; at least 1). SQLite has one writer at a time, so
    /// a pass with much to remove lets appends through between batches.
    pub fn with_scavenge_batch(mut self, events: usize) -> Self {
        self.scavenge_batch = events.clamp(1, i64::MAX as usize);
        self
    }

    /// How often caught-up subscriptions re-read without a wake-up (default
    /// [`DEFAULT_POLL_INTERVAL`]): the delay before they see appends made by another
    /// process. Appends through this instance (or its clones) wake them at once.
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.conn.run(f).await.map_err(db_err)?
    }
}

/// A stream's row: its last version ever (`None`: no events yet), its state, metadata.
struct StreamRow {
    last: Option<u64>,
    state: i64,
    meta: StreamMetadata,
}

impl StreamRow {
    /// The version expected-version checks see: none once soft-deleted.
    fn actual(&self) -> Option<u64> {
        if self.state == SOFT_DELETED {
            None
        } else {
            self.last
        }
    }
}

const SOFT_DELETED: i64 = 1;
const TOMBSTONED: i64 = 2;

fn stream_row(c: &Connection, stream: &str) -> rusqlite::Result<Option<StreamRow>> {
    c.prepare_cached(
        "SELECT version, state, truncate_before, max_count, max_age_ms, custom
         FROM mainstay_streams WHERE stream_id = ?1",
    )?
    .query_row(params![stream], |r| {
        let custom: Option<String> = r.get(5)?;
        Ok(StreamRow {
            last: Some(r.get::<_, i64>(0)?)
                .filter(|v| *v >= 0)
                .map(|v| v as u64),
            state: r.get(1)?,
            meta: StreamMetadata {
                truncate_before: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                max_count: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                max_age_ms: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                custom: custom
                    .and_then(|c| serde_json::from_str(&c).ok())
                    .unwrap_or_default(),
            },
        })
    })
    .optional()
}

/// The row of a stream that has readable events: not found / deleted otherwise.
fn readable(c: &Connection, stream: &str) -> Result<StreamRow, StoreError> {
    match stream_row(c, stream).map_err(db_err)? {
        Some(row) if row.state == TOMBSTONED => Err(StoreError::StreamDeleted(stream.into())),
        Some(row) if row.actual().is_some() => Ok(row),
        _ => Err(StoreError::StreamNotFound(stream.into())),
    }
}

/// One append inside the write transaction.
fn append_one(tx: &Connection, a: &Append, now: i64) -> Result<AppendResult, Refused> {
    let row = stream_row(tx, &a.stream)?;
    if row.as_ref().is_some_and(|r| r.state == TOMBSTONED) {
        return Err(Refused::Store(StoreError::StreamDeleted(a.stream.clone())));
    }
    let last = row.as_ref().and_then(|r| r.last);
    let actual = row.as_ref().and_then(StreamRow::actual);
    if let Some(result) = already_appended(tx, a, actual)? {
        return Ok(result);
    }
    if !a.expected.matches(actual) {
        return Err(Refused::Store(StoreError::WrongExpectedVersion {
            stream: a.stream.clone(),
            expected: a.expected,
            actual,
        }));
    }
    // After a soft delete, versions continue after the old ones.
    let first_version = last.map_or(0, |v| v + 1);
    let mut insert = tx.prepare_cached(
        "INSERT INTO mainstay_events (stream_id, version, event_id, event_type, data, metadata, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let (mut first, mut last) = (0, 0);
    for (i, e) in a.events.iter().enumerate() {
        insert.execute(params![
            a.stream,
            (first_version + i as u64) as i64,
            e.id,
            e.event_type,
            e.data.to_string(),
            e.metadata.to_string(),
            now
        ])?;
        last = tx.last_insert_rowid() as u64;
        if i == 0 {
            first = last;
        }
    }
    let version = first_version + a.events.len() as u64 - 1;
    tx.prepare_cached(
        "INSERT INTO mainstay_streams (stream_id, version) VALUES (?1, ?2)
         ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, state = 0",
    )?
    .execute(params![a.stream, version as i64])?;
    Ok(AppendResult {
        next_expected_version: version,
        first_position: pos(first),
        last_position: pos(last),
    })
}

/// An idempotent retry: the batch's ids are already the stream's events, in order, at a
/// place the expected version allows. `Ok(None)`: none of the ids is in the stream.
fn already_appended(
    tx: &Connection,
    a: &Append,
    actual: Option<u64>,
) -> Result<Option<AppendResult>, Refused> {
    let mut find = tx.prepare_cached(
        "SELECT version, position FROM mainstay_events WHERE stream_id = ?1 AND event_id = ?2",
    )?;
    let mut found = Vec::with_capacity(a.events.len());
    for e in &a.events {
        found.push(
            find.query_row(params![a.stream, e.id], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })
            .optional()?,
        );
    }
    let Some(first_found) = found.iter().flatten().next().copied() else {
        return Ok(None);
    };
    let conflict = || {
        Refused::Store(StoreError::IdempotencyConflict {
            stream: a.stream.clone(),
            event_id: a.events[found.iter().position(Option::is_some).unwrap_or(0)]
                .id
                .clone(),
        })
    };
    let Some((v0, p0)) = found[0] else {
        return Err(conflict());
    };
    let consecutive = found
        .iter()
        .enumerate()
        .all(|(i, f)| matches!(f, Some((v, _)) if *v == v0 + i as u64));
    if !consecutive || first_found != (v0, p0) {
        return Err(conflict());
    }
    // The stream as it was before the original append.
    let before = v0.checked_sub(1);
    if !a.expected.matches(before) {
        return Err(Refused::Store(StoreError::WrongExpectedVersion {
            stream: a.stream.clone(),
            expected: a.expected,
            actual,
        }));
    }
    let last = found
        .last()
        .copied()
        .flatten()
        .map(|(_, p)| p)
        .unwrap_or(p0);
    Ok(Some(AppendResult {
        next_expected_version: v0 + a.events.len() as u64 - 1,
        first_position: pos(p0),
        last_position: pos(last),
    }))
}

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn append_many(&self, appends: Vec<Append>) -> Result<Vec<AppendResult>, StoreError> {
        crate::event::validate_appends(&appends)?;
        let results = self
            .with(move |c| {
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(db_err)?;
                let now = now_ms() as i64;
                let mut results = Vec::with_capacity(appends.len());
                for a in &appends {
                    match append_one(&tx, a, now) {
                        Ok(r) => results.push(r),
                        // Dropping `tx` rolls back every append of the call.
                        Err(Refused::Store(e)) => return Err(e),
                        Err(Refused::Db(e)) => return Err(db_err(e)),
                    }
                }
                tx.commit().map_err(db_err)?;
                Ok(results)
            })
            .await?;
        self.appended.send_modify(|n| *n += 1);
        Ok(results)
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        check_stream(stream)?;
        let stream = stream.to_string();
        self.with(move |c| {
            let row = readable(c, &stream)?;
            let first = row.meta.first_visible(row.last.unwrap_or(0)) as i64;
            let cutoff = row.meta.max_age_ms.map(|age| now_ms() as i64 - age as i64);
            let sql = match direction {
                Direction::Forward => format!(
                    "SELECT {COLUMNS} FROM mainstay_events WHERE stream_id = ?1 AND version >= ?2
                     AND version >= ?4 AND (?5 IS NULL OR created_at_ms >= ?5)
                     ORDER BY version LIMIT ?3"
                ),
                Direction::Backward => format!(
                    "SELECT {COLUMNS} FROM mainstay_events WHERE stream_id = ?1 AND version <= ?2
                     AND version >= ?4 AND (?5 IS NULL OR created_at_ms >= ?5)
                     ORDER BY version DESC LIMIT ?3"
                ),
            };
            let from = from.min(i64::MAX as u64) as i64;
            c.prepare_cached(&sql)
                .and_then(|mut s| {
                    s.query_map(
                        params![
                            stream,
                            from,
                            max.min(i64::MAX as usize) as i64,
                            first,
                            cutoff
                        ],
                        event_row,
                    )?
                    .collect()
                })
                .map_err(db_err)
        })
        .await
    }

    async fn read_all(
        &self,
        after: Position,
        max: usize,
        filter: &ReadAllFilter,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let filter = filter.clone();
        self.with(move |c| {
            let types = serde_json::to_string(&filter.event_types).map_err(db_err)?;
            let sql = format!(
                "SELECT {COLUMNS} FROM mainstay_events
                 WHERE position > ?1
                   AND (?2 IS NULL OR substr(stream_id, 1, length(?2)) = ?2)
                   AND (?3 = '[]' OR event_type IN (SELECT value FROM json_each(?3)))
                 ORDER BY position LIMIT ?4"
            );
            c.prepare_cached(&sql)
                .and_then(|mut s| {
                    s.query_map(
                        params![
                            after.commit.min(i64::MAX as u64) as i64,
                            filter.stream_prefix,
                            types,
                            max.min(i64::MAX as usize) as i64
                        ],
                        event_row,
                    )?
                    .collect()
                })
                .map_err(db_err)
        })
        .await
    }

    async fn stream_version(&self, stream: &str) -> Result<Option<u64>, StoreError> {
        check_stream(stream)?;
        let stream = stream.to_string();
        self.with(move |c| match stream_row(c, &stream).map_err(db_err)? {
            Some(row) if row.state == TOMBSTONED => Err(StoreError::StreamDeleted(stream)),
            row => Ok(row.and_then(|r| r.actual())),
        })
        .await
    }

    async fn stream_metadata(&self, stream: &str) -> Result<StreamMetadata, StoreError> {
        check_stream(stream)?;
        let stream = stream.to_string();
        self.with(move |c| {
            Ok(stream_row(c, &stream)
                .map_err(db_err)?
                .map(|r| r.meta)
                .unwrap_or_default())
        })
        .await
    }

    async fn set_stream_metadata(
        &self,
        stream: &str,
        metadata: StreamMetadata,
    ) -> Result<(), StoreError> {
        check_stream(stream)?;
        metadata.validate()?;
        let stream = stream.to_string();
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            if stream_row(&tx, &stream)
                .map_err(db_err)?
                .is_some_and(|r| r.state == TOMBSTONED)
            {
                return Err(StoreError::StreamDeleted(stream));
            }
            let custom = (!metadata.custom.is_null()).then(|| metadata.custom.to_string());
            tx.execute(
                "INSERT INTO mainstay_streams
                     (stream_id, version, truncate_before, max_count, max_age_ms, custom)
                 VALUES (?1, -1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (stream_id) DO UPDATE SET truncate_before = excluded.truncate_before,
                     max_count = excluded.max_count, max_age_ms = excluded.max_age_ms,
                     custom = excluded.custom",
                params![
                    stream,
                    metadata.truncate_before.map(|v| v as i64),
                    metadata.max_count.map(|v| v as i64),
                    metadata.max_age_ms.map(|v| v as i64),
                    custom
                ],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn delete_stream(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        mode: DeleteMode,
    ) -> Result<(), StoreError> {
        check_stream(stream)?;
        let stream = stream.to_string();
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let row = stream_row(&tx, &stream).map_err(db_err)?;
            if row.as_ref().is_some_and(|r| r.state == TOMBSTONED) {
                return Err(StoreError::StreamDeleted(stream));
            }
            let actual = row.as_ref().and_then(StreamRow::actual);
            if !expected.matches(actual) {
                return Err(StoreError::WrongExpectedVersion {
                    stream,
                    expected,
                    actual,
                });
            }
            match mode {
                DeleteMode::Soft => {
                    let Some(v) = actual else {
                        return Err(StoreError::StreamNotFound(stream));
                    };
                    tx.execute(
                        "UPDATE mainstay_streams SET state = 1, truncate_before = ?2
                         WHERE stream_id = ?1",
                        params![stream, v as i64 + 1],
                    )
                    .map_err(db_err)?;
                }
                DeleteMode::Hard => {
                    tx.execute(
                        "DELETE FROM mainstay_events WHERE stream_id = ?1",
                        params![stream],
                    )
                    .map_err(db_err)?;
                    tx.execute(
                        "INSERT INTO mainstay_streams (stream_id, version, state) VALUES (?1, -1, 2)
                         ON CONFLICT (stream_id) DO UPDATE SET state = 2",
                        params![stream],
                    )
                    .map_err(db_err)?;
                }
            }
            tx.execute(
                "DELETE FROM mainstay_snapshots WHERE stream_id = ?1",
                params![stream],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn scavenge(&self) -> Result<u64, StoreError> {
        // One statement per batch, each its own write: other writers get the database
        // between batches. The cutoff time is fixed for the pass.
        let (now, batch) = (now_ms() as i64, self.scavenge_batch as i64);
        let mut deleted = 0u64;
        loop {
            let n = self
                .with(move |c| {
                    c.prepare_cached(
                        "DELETE FROM mainstay_events WHERE position IN (
                             SELECT e.position FROM mainstay_events e
                             JOIN mainstay_streams s ON s.stream_id = e.stream_id
                             WHERE (s.truncate_before IS NOT NULL AND e.version < s.truncate_before)
                                OR (s.max_count IS NOT NULL AND e.version <= s.version - s.max_count)
                                OR (s.max_age_ms IS NOT NULL AND e.created_at_ms < ?1 - s.max_age_ms)
                             LIMIT ?2)",
                    )
                    .and_then(|mut st| st.execute(params![now, batch]))
                    .map(|n| n as u64)
                    .map_err(db_err)
                })
                .await?;
            deleted += n;
            if n < batch as u64 {
                return Ok(deleted);
            }
        }
    }

    async fn save_snapshot(
        &self,
        stream: &str,
        version: u64,
        data: serde_json::Value,
    ) -> Result<(), StoreError> {
        check_stream(stream)?;
        let body = check_snapshot(version, &data)?;
        let stream = stream.to_string();
        self.with(move |c| {
            c.execute(
                "INSERT INTO mainstay_snapshots (stream_id, version, data, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version,
                     data = excluded.data, created_at_ms = excluded.created_at_ms
                 WHERE excluded.version >= mainstay_snapshots.version",
                params![stream, version as i64, body, now_ms() as i64],
            )
            .map(|_| ())
            .map_err(db_err)
        })
        .await
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        check_stream(stream)?;
        let stream = stream.to_string();
        self.with(move |c| {
            c.prepare_cached(
                "SELECT version, data, created_at_ms FROM mainstay_snapshots WHERE stream_id = ?1",
            )
            .and_then(|mut st| {
                st.query_row(params![stream], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .optional()
            })
            .map_err(db_err)?
            .map(|(v, d, at)| {
                Ok(Snapshot {
                    stream: stream.clone(),
                    version: v as u64,
                    data: serde_json::from_str(&d).map_err(db_err)?,
                    created_at_ms: at as u64,
                })
            })
            .transpose()
        })
        .await
    }

    async fn wakeups(&self) -> Result<Box<dyn Wakeups>, StoreError> {
        Ok(Box::new(SqliteWakeups {
            rx: self.appended.subscribe(),
            poll: self.poll,
        }))
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>, StoreError> {
        check_name(name)?;
        let name = name.to_string();
        self.with(move |c| {
            c.prepare_cached(
                "SELECT commit_pos, prepare_pos FROM mainstay_subscriptions WHERE name = ?1",
            )
            .and_then(|mut s| {
                s.query_row(params![name], |r| {
                    Ok(Position {
                        commit: r.get::<_, i64>(0)? as u64,
                        prepare: r.get::<_, i64>(1)? as u64,
                    })
                })
                .optional()
            })
            .map_err(db_err)
        })
        .await
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), StoreError> {
        check_name(name)?;
        let name = name.to_string();
        self.with(move |c| {
            c.prepare_cached(
                "INSERT INTO mainstay_subscriptions (name, commit_pos, prepare_pos, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET commit_pos = excluded.commit_pos,
                     prepare_pos = excluded.prepare_pos, updated_at_ms = excluded.updated_at_ms",
            )
            .and_then(|mut s| {
                s.execute(params![
                    name,
                    position.commit.min(i64::MAX as u64) as i64,
                    position.prepare.min(i64::MAX as u64) as i64,
                    now_ms() as i64
                ])
            })
            .map(|_| ())
            .map_err(db_err)
        })
        .await
    }
}
