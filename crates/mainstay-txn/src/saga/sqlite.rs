//! The saga log in an embedded SQLite file (the default).
//!
//! WAL mode with `synchronous=FULL`: a transition the orchestrator acted on survives
//! power loss. Guarantees: every orchestrator process on **one host** that opens the same
//! file shares the log safely (writes are fenced by the saga's owner epoch). Not for
//! several hosts: use PostgreSQL (don't put the file on NFS).

use crate::error::TxnError;
use crate::saga::{
    Created, HistoryEntry, Saga, SagaDefinition, SagaLog, SagaStatus, SagaSummary, StepState,
};
use async_trait::async_trait;
use mainstay_core::clock::now_ms;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::Path;
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mainstay_saga_definitions (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mainstay_saga_definition_snapshots (
    hash TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mainstay_sagas (
    id              TEXT PRIMARY KEY,
    definition_name TEXT NOT NULL,
    definition_hash TEXT NOT NULL,
    idempotency_key TEXT,
    status          TEXT NOT NULL,
    input           TEXT NOT NULL,
    steps           TEXT NOT NULL,
    error           TEXT,
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    deadline_at_ms  INTEGER,
    history_len     INTEGER NOT NULL,
    abort_requested INTEGER NOT NULL DEFAULT 0,
    owner           TEXT,
    owner_epoch     INTEGER NOT NULL DEFAULT 0,
    lease_until_ms  INTEGER NOT NULL DEFAULT 0,
    UNIQUE (definition_name, idempotency_key)
);
CREATE INDEX IF NOT EXISTS mainstay_sagas_by_status ON mainstay_sagas (status, created_at_ms);
CREATE TABLE IF NOT EXISTS mainstay_saga_history (
    saga_id TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    at_ms   INTEGER NOT NULL,
    event   TEXT NOT NULL,
    step    INTEGER,
    detail  TEXT,
    PRIMARY KEY (saga_id, seq)
) WITHOUT ROWID;";

// The definition snapshot lives in its own content-addressed table, so the saga row that
// every transition rewrites stays small.
const COLUMNS: &str = "id, (SELECT body FROM mainstay_saga_definition_snapshots d \
    WHERE d.hash = definition_hash), idempotency_key, status, input, steps, error, \
    created_at_ms, updated_at_ms, deadline_at_ms, history_len, abort_requested";

const ACTIVE: &str = "('pending', 'running', 'compensating')";

/// A saga log in a SQLite file shared by the processes of one host.
#[derive(Clone, Debug)]
pub struct SqliteSagaLog {
    conn: mainstay_core::sqlite::SharedConnection,
}

fn db_err(e: impl std::fmt::Display) -> TxnError {
    TxnError::backend("sqlite", e)
}

fn json_err(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

fn to_json<T: serde::Serialize>(v: &T) -> rusqlite::Result<String> {
    serde_json::to_string(v).map_err(json_err)
}

fn from_json<T: serde::de::DeserializeOwned>(idx: usize, s: &str) -> rusqlite::Result<T> {
    serde_json::from_str(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn saga_row(r: &Row<'_>) -> rusqlite::Result<Saga> {
    let status: String = r.get(3)?;
    Ok(Saga {
        id: r.get(0)?,
        definition: from_json(1, &r.get::<_, String>(1)?)?,
        idempotency_key: r.get(2)?,
        status: status.parse().map_err(|e: TxnError| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
        })?,
        input: from_json(4, &r.get::<_, String>(4)?)?,
        steps: from_json::<Vec<StepState>>(5, &r.get::<_, String>(5)?)?,
        error: r.get(6)?,
        created_at_ms: r.get::<_, i64>(7)? as u64,
        updated_at_ms: r.get::<_, i64>(8)? as u64,
        deadline_at_ms: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
        history_len: r.get::<_, i64>(10)? as u64,
        abort_requested: r.get::<_, i64>(11)? != 0,
    })
}

fn insert_history(
    tx: &Connection,
    saga_id: &str,
    history: &[HistoryEntry],
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO mainstay_saga_history (saga_id, seq, at_ms, event, step, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for h in history {
        let detail = h.detail.as_ref().map(to_json).transpose()?;
        stmt.execute(params![
            saga_id,
            h.seq as i64,
            h.at_ms as i64,
            h.event,
            h.step.map(|s| s as i64),
            detail
        ])?;
    }
    Ok(())
}

impl SqliteSagaLog {
    /// Opens (creating if needed) the saga tables in the file at `path`; creates parent
    /// directories.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, TxnError> {
        let conn = mainstay_core::sqlite::open(path.as_ref(), SCHEMA, Duration::from_secs(10))
            .map_err(TxnError::Config)?;
        Ok(SqliteSagaLog {
            conn: mainstay_core::sqlite::SharedConnection::new(conn),
        })
    }

    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, TxnError> {
        self.conn.run(f).await.map_err(db_err)?.map_err(db_err)
    }
}

#[async_trait]
impl SagaLog for SqliteSagaLog {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn put_definition(&self, def: &SagaDefinition) -> Result<(), TxnError> {
        let name = def.name.clone();
        let body = serde_json::to_string(def).map_err(db_err)?;
        self.with_conn(move |c| {
            c.prepare_cached(
                "INSERT INTO mainstay_saga_definitions (name, body) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET body = excluded.body",
            )?
            .execute(params![name, body])
            .map(drop)
        })
        .await
    }

    async fn definition(&self, name: &str) -> Result<Option<SagaDefinition>, TxnError> {
        let name = name.to_string();
        self.with_conn(move |c| {
            c.prepare_cached("SELECT body FROM mainstay_saga_definitions WHERE name = ?1")?
                .query_row(params![name], |r| from_json(0, &r.get::<_, String>(0)?))
                .optional()
        })
        .await
    }

    async fn definitions(&self) -> Result<Vec<SagaDefinition>, TxnError> {
        self.with_conn(|c| {
            c.prepare_cached("SELECT body FROM mainstay_saga_definitions ORDER BY name")?
                .query_map([], |r| from_json(0, &r.get::<_, String>(0)?))?
                .collect()
        })
        .await
    }

    async fn create(
        &self,
        saga: &Saga,
        history: &[HistoryEntry],
        owner: &str,
        lease_ms: u64,
    ) -> Result<Created, TxnError> {
        let saga = saga.clone();
        let history = history.to_vec();
        let owner = owner.to_string();
        self.with_conn(move |c| {
            let tx = c.transaction()?;
            let body = to_json(&saga.definition)?;
            let hash = mainstay_core::id::content_id(body.as_bytes());
            tx.prepare_cached(
                "INSERT INTO mainstay_saga_definition_snapshots (hash, body) VALUES (?1, ?2)
                 ON CONFLICT (hash) DO NOTHING",
            )?
            .execute(params![hash, body])?;
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO mainstay_sagas (id, definition_name, definition_hash, idempotency_key,
                        status, input, steps, error, created_at_ms, updated_at_ms, deadline_at_ms,
                        history_len, owner, owner_epoch, lease_until_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 1, ?14)
                     ON CONFLICT (definition_name, idempotency_key) DO NOTHING",
                )?
                .execute(params![
                    saga.id,
                    saga.definition.name,
                    hash,
                    saga.idempotency_key,
                    saga.status.as_str(),
                    to_json(&saga.input)?,
                    to_json(&saga.steps)?,
                    saga.error,
                    saga.created_at_ms as i64,
                    saga.updated_at_ms as i64,
                    saga.deadline_at_ms.map(|v| v as i64),
                    saga.history_len as i64,
                    owner,
                    (now_ms() + lease_ms) as i64,
                ])?;
            if inserted == 0 {
                let existing = tx
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM mainstay_sagas
                         WHERE definition_name = ?1 AND idempotency_key = ?2"
                    ))?
                    .query_row(
                        params![saga.definition.name, saga.idempotency_key],
                        saga_row,
                    )?;
                return Ok(Created::Existing(Box::new(existing)));
            }
            insert_history(&tx, &saga.id, &history)?;
            tx.commit()?;
            Ok(Created::New(1))
        })
        .await
    }

    async fn save(
        &self,
        saga: &Saga,
        epoch: u64,
        history: &[HistoryEntry],
    ) -> Result<bool, TxnError> {
        let saga = saga.clone();
        let history = history.to_vec();
        let id = saga.id.clone();
        let result = self
            .with_conn(move |c| {
                let tx = c.transaction()?;
                let abort = tx
                    .prepare_cached(
                        "UPDATE mainstay_sagas SET status = ?3, steps = ?4, error = ?5,
                            updated_at_ms = ?6, history_len = ?7,
                            owner = CASE WHEN ?8 THEN NULL ELSE owner END
                         WHERE id = ?1 AND owner_epoch = ?2
                         RETURNING abort_requested",
                    )?
                    .query_row(
                        params![
                            saga.id,
                            epoch as i64,
                            saga.status.as_str(),
                            to_json(&saga.steps)?,
                            saga.error,
                            saga.updated_at_ms as i64,
                            saga.history_len as i64,
                            saga.status.is_final(),
                        ],
                        |r| r.get::<_, i64>(0),
                    )
                    .optional()?;
                let Some(abort) = abort else {
                    return Ok(None);
                };
                insert_history(&tx, &saga.id, &history)?;
                tx.commit()?;
                Ok(Some(abort != 0))
            })
            .await?;
        result.ok_or(TxnError::Fenced { id })
    }

    async fn save_if(
        &self,
        saga: &Saga,
        expected: SagaStatus,
        history: &[HistoryEntry],
    ) -> Result<bool, TxnError> {
        let saga = saga.clone();
        let history = history.to_vec();
        self.with_conn(move |c| {
            let tx = c.transaction()?;
            let n = tx
                .prepare_cached(
                    "UPDATE mainstay_sagas SET status = ?3, steps = ?4, error = ?5,
                        updated_at_ms = ?6, history_len = ?7, abort_requested = 0
                     WHERE id = ?1 AND status = ?2 AND owner IS NULL",
                )?
                .execute(params![
                    saga.id,
                    expected.as_str(),
                    saga.status.as_str(),
                    to_json(&saga.steps)?,
                    saga.error,
                    saga.updated_at_ms as i64,
                    saga.history_len as i64,
                ])?;
            if n == 0 {
                return Ok(false);
            }
            insert_history(&tx, &saga.id, &history)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn claim(
        &self,
        id: &str,
        owner: &str,
        lease_ms: u64,
    ) -> Result<Option<(u64, Saga)>, TxnError> {
        let id = id.to_string();
        let owner = owner.to_string();
        self.with_conn(move |c| {
            let now = now_ms() as i64;
            let epoch = c
                .prepare_cached(&format!(
                    "UPDATE mainstay_sagas
                     SET owner = ?2, owner_epoch = owner_epoch + 1, lease_until_ms = ?3 + ?4
                     WHERE id = ?1 AND status IN {ACTIVE}
                       AND (owner IS NULL OR owner = ?2 OR lease_until_ms <= ?3)
                     RETURNING owner_epoch"
                ))?
                .query_row(params![id, owner, now, lease_ms as i64], |r| {
                    r.get::<_, i64>(0)
                })
                .optional()?;
            let Some(epoch) = epoch else { return Ok(None) };
            let saga = c
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM mainstay_sagas WHERE id = ?1"
                ))?
                .query_row(params![id], saga_row)?;
            Ok(Some((epoch as u64, saga)))
        })
        .await
    }

    async fn renew(&self, owner: &str, lease_ms: u64) -> Result<u64, TxnError> {
        let owner = owner.to_string();
        self.with_conn(move |c| {
            c.prepare_cached("UPDATE mainstay_sagas SET lease_until_ms = ?2 + ?3 WHERE owner = ?1")?
                .execute(params![owner, now_ms() as i64, lease_ms as i64])
                .map(|n| n as u64)
        })
        .await
    }

    async fn claimable(&self, owner: &str, limit: usize) -> Result<Vec<String>, TxnError> {
        let owner = owner.to_string();
        self.with_conn(move |c| {
            c.prepare_cached(&format!(
                "SELECT id FROM mainstay_sagas
                 WHERE status IN {ACTIVE} AND (owner IS NULL OR owner = ?1 OR lease_until_ms <= ?2)
                 ORDER BY created_at_ms LIMIT ?3"
            ))?
            .query_map(params![owner, now_ms() as i64, limit as i64], |r| r.get(0))?
            .collect()
        })
        .await
    }

    async fn request_abort(&self, id: &str) -> Result<bool, TxnError> {
        let id = id.to_string();
        self.with_conn(move |c| {
            c.prepare_cached(&format!(
                "UPDATE mainstay_sagas SET abort_requested = 1 WHERE id = ?1 AND status IN {ACTIVE}"
            ))?
            .execute(params![id])
            .map(|n| n > 0)
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<Saga>, TxnError> {
        let id = id.to_string();
        self.with_conn(move |c| {
            c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM mainstay_sagas WHERE id = ?1"
            ))?
            .query_row(params![id], saga_row)
            .optional()
        })
        .await
    }

    async fn list(
        &self,
        status: Option<SagaStatus>,
        limit: usize,
    ) -> Result<Vec<SagaSummary>, TxnError> {
        self.with_conn(move |c| {
            let sql = "SELECT id, definition_name, status, error, created_at_ms, updated_at_ms
                 FROM mainstay_sagas WHERE (?1 IS NULL OR status = ?1)
                 ORDER BY created_at_ms DESC, id LIMIT ?2";
            c.prepare_cached(sql)?
                .query_map(params![status.map(|s| s.as_str()), limit as i64], |r| {
                    let status: String = r.get(2)?;
                    Ok(SagaSummary {
                        id: r.get(0)?,
                        definition: r.get(1)?,
                        status: status.parse().map_err(|e: TxnError| {
                            rusqlite::Error::FromSqlConversionFailure(
                                2,
                                rusqlite::types::Type::Text,
                                e.into(),
                            )
                        })?,
                        error: r.get(3)?,
                        created_at_ms: r.get::<_, i64>(4)? as u64,
                        updated_at_ms: r.get::<_, i64>(5)? as u64,
                    })
                })?
                .collect()
        })
        .await
    }

    async fn history(&self, id: &str, after: u64) -> Result<Vec<HistoryEntry>, TxnError> {
        let id = id.to_string();
        self.with_conn(move |c| {
            c.prepare_cached(
                "SELECT seq, at_ms, event, step, detail FROM mainstay_saga_history
                 WHERE saga_id = ?1 AND seq > ?2 ORDER BY seq",
            )?
            .query_map(params![id, after as i64], |r| {
                Ok(HistoryEntry {
                    seq: r.get::<_, i64>(0)? as u64,
                    at_ms: r.get::<_, i64>(1)? as u64,
                    event: r.get(2)?,
                    step: r.get::<_, Option<i64>>(3)?.map(|s| s as usize),
                    detail: r
                        .get::<_, Option<String>>(4)?
                        .map(|d| from_json(4, &d))
                        .transpose()?,
                })
            })?
            .collect()
        })
        .await
    }
}
