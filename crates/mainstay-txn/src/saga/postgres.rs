//! The saga log in PostgreSQL, for several orchestrator nodes (or one that outgrew a
//! single host).
//!
//! Each transition is **one statement** (a data-modifying CTE that updates the saga row
//! and appends its history), so it is atomic, costs one round trip, and works behind
//! transaction-pooling PgBouncer. Leases use the **database's** clock, so node clocks do
//! not matter. Guarantees: a saga is driven by one node at a time in the steady state,
//! and a node that lost its lease cannot write (every write checks the owner epoch).
//! Not guaranteed: failover to an asynchronous replica may lose the last transitions; the
//! orchestrator then repeats those calls with the same idempotency keys.

use crate::error::TxnError;
use crate::saga::{Created, HistoryEntry, Saga, SagaDefinition, SagaLog, SagaStatus, SagaSummary};
use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::Row;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mainstay_saga_definitions (
    name text PRIMARY KEY,
    body text NOT NULL
);
CREATE TABLE IF NOT EXISTS mainstay_saga_definition_snapshots (
    hash text PRIMARY KEY,
    body text NOT NULL
);
CREATE TABLE IF NOT EXISTS mainstay_sagas (
    id              text PRIMARY KEY,
    definition_name text NOT NULL,
    definition_hash text NOT NULL,
    idempotency_key text,
    status          text NOT NULL,
    input           text NOT NULL,
    steps           text NOT NULL,
    error           text,
    created_at_ms   bigint NOT NULL,
    updated_at_ms   bigint NOT NULL,
    deadline_at_ms  bigint,
    history_len     bigint NOT NULL,
    abort_requested boolean NOT NULL DEFAULT false,
    owner           text,
    owner_epoch     bigint NOT NULL DEFAULT 0,
    lease_until_ms  bigint NOT NULL DEFAULT 0,
    UNIQUE (definition_name, idempotency_key)
) WITH (fillfactor = 70);
CREATE INDEX IF NOT EXISTS mainstay_sagas_by_status ON mainstay_sagas (status, created_at_ms);
CREATE TABLE IF NOT EXISTS mainstay_saga_history (
    saga_id text NOT NULL,
    seq     bigint NOT NULL,
    at_ms   bigint NOT NULL,
    event   text NOT NULL,
    step    bigint,
    detail  text,
    PRIMARY KEY (saga_id, seq)
);";

// The definition snapshot lives in its own content-addressed table, so the saga row that
// every transition rewrites stays small (and HOT-updatable: fillfactor 70).
const COLUMNS: &str = "id, (SELECT body FROM mainstay_saga_definition_snapshots d \
    WHERE d.hash = definition_hash), idempotency_key, status, input, steps, error, \
    created_at_ms, updated_at_ms, deadline_at_ms, history_len, abort_requested";

const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

const ACTIVE: &str = "('pending', 'running', 'compensating')";

// History rows travel as five typed arrays expanded server-side by `unnest`, so a
// transition is one statement whatever its number of entries.
fn history_rows(first: usize) -> String {
    format!(
        "SELECT * FROM unnest(${}::bigint[], ${}::bigint[], ${}::text[], ${}::bigint[], ${}::text[])",
        first,
        first + 1,
        first + 2,
        first + 3,
        first + 4
    )
}

/// A saga log in PostgreSQL tables (`mainstay_sagas`, `mainstay_saga_history`,
/// `mainstay_saga_definitions`).
#[derive(Clone)]
pub struct PostgresSagaLog {
    pool: Pool,
}

impl std::fmt::Debug for PostgresSagaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSagaLog").finish_non_exhaustive()
    }
}

fn json_err(e: serde_json::Error) -> TxnError {
    TxnError::backend("postgres", format!("JSON: {e}"))
}

fn pg_err(e: impl mainstay_core::pg::Describe) -> TxnError {
    TxnError::backend("postgres", e.describe())
}

fn corrupt(e: impl std::fmt::Display) -> TxnError {
    TxnError::backend("postgres", format!("unreadable saga row: {e}"))
}

fn saga_row(r: &Row) -> Result<Saga, TxnError> {
    saga_row_at(r, 0)
}

/// Maps the [`COLUMNS`] starting at column `o`.
fn saga_row_at(r: &Row, o: usize) -> Result<Saga, TxnError> {
    let text =
        |i: usize| -> Result<String, TxnError> { r.try_get::<_, String>(o + i).map_err(corrupt) };
    Ok(Saga {
        id: text(0)?,
        definition: serde_json::from_str(&text(1)?).map_err(corrupt)?,
        idempotency_key: r.try_get(o + 2).map_err(corrupt)?,
        status: text(3)?.parse()?,
        input: serde_json::from_str(&text(4)?).map_err(corrupt)?,
        steps: serde_json::from_str(&text(5)?).map_err(corrupt)?,
        error: r.try_get(o + 6).map_err(corrupt)?,
        created_at_ms: r.try_get::<_, i64>(o + 7).map_err(corrupt)? as u64,
        updated_at_ms: r.try_get::<_, i64>(o + 8).map_err(corrupt)? as u64,
        deadline_at_ms: r
            .try_get::<_, Option<i64>>(o + 9)
            .map_err(corrupt)?
            .map(|v| v as u64),
        history_len: r.try_get::<_, i64>(o + 10).map_err(corrupt)? as u64,
        abort_requested: r.try_get(o + 11).map_err(corrupt)?,
    })
}

/// History entries as the five arrays [`history_rows`] expands.
type HistoryArrays = (
    Vec<i64>,
    Vec<i64>,
    Vec<String>,
    Vec<Option<i64>>,
    Vec<Option<String>>,
);

fn history_arrays(history: &[HistoryEntry]) -> Result<HistoryArrays, TxnError> {
    let mut h: HistoryArrays = Default::default();
    for e in history {
        h.0.push(e.seq as i64);
        h.1.push(e.at_ms as i64);
        h.2.push(e.event.clone());
        h.3.push(e.step.map(|s| s as i64));
        h.4.push(
            e.detail
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(json_err)?,
        );
    }
    Ok(h)
}

impl PostgresSagaLog {
    /// Connects to `url` with a pool of up to 32 connections and creates the tables if
    /// missing.
    pub async fn connect(url: &str) -> Result<Self, TxnError> {
        let pool = mainstay_core::pg::pool(url, 32).map_err(TxnError::Config)?;
        mainstay_core::pg::ensure_schema(&pool, url, SCHEMA)
            .await
            .map_err(pg_err)?;
        Ok(PostgresSagaLog { pool })
    }
}

#[async_trait]
impl SagaLog for PostgresSagaLog {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn put_definition(&self, def: &SagaDefinition) -> Result<(), TxnError> {
        let body = serde_json::to_string(def).map_err(json_err)?;
        mainstay_core::pg::execute(
            &self.pool,
            "INSERT INTO mainstay_saga_definitions (name, body) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET body = EXCLUDED.body",
            &[&def.name, &body],
        )
        .await
        .map_err(pg_err)?;
        Ok(())
    }

    async fn definition(&self, name: &str) -> Result<Option<SagaDefinition>, TxnError> {
        let row = mainstay_core::pg::query_opt(
            &self.pool,
            "SELECT body FROM mainstay_saga_definitions WHERE name = $1",
            &[&name],
        )
        .await
        .map_err(pg_err)?;
        row.map(|r| serde_json::from_str(r.get::<_, &str>(0)).map_err(corrupt))
            .transpose()
    }

    async fn definitions(&self) -> Result<Vec<SagaDefinition>, TxnError> {
        let rows = mainstay_core::pg::query(
            &self.pool,
            "SELECT body FROM mainstay_saga_definitions ORDER BY name",
            &[],
        )
        .await
        .map_err(pg_err)?;
        rows.iter()
            .map(|r| serde_json::from_str(r.get::<_, &str>(0)).map_err(corrupt))
            .collect()
    }

    async fn create(
        &self,
        saga: &Saga,
        history: &[HistoryEntry],
        owner: &str,
        lease_ms: u64,
    ) -> Result<Created, TxnError> {
        let sql = format!(
            "WITH d AS (
                INSERT INTO mainstay_saga_definition_snapshots (hash, body) VALUES ($20, $3)
                ON CONFLICT (hash) DO NOTHING),
             s AS (
                INSERT INTO mainstay_sagas (id, definition_name, definition_hash, idempotency_key,
                    status, input, steps, error, created_at_ms, updated_at_ms, deadline_at_ms,
                    history_len, owner, owner_epoch, lease_until_ms)
                VALUES ($1, $2, $20, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 1, {NOW_MS} + $14)
                ON CONFLICT (definition_name, idempotency_key) DO NOTHING
                RETURNING id),
             h AS (
                INSERT INTO mainstay_saga_history (saga_id, seq, at_ms, event, step, detail)
                SELECT s.id, x.* FROM s, ({rows}) x(seq, at_ms, event, step, detail))
             SELECT count(*) FROM s",
            rows = history_rows(15)
        );
        let definition = serde_json::to_string(&saga.definition).map_err(json_err)?;
        let hash = mainstay_core::id::content_id(definition.as_bytes());
        let input = serde_json::to_string(&saga.input).map_err(json_err)?;
        let steps = serde_json::to_string(&saga.steps).map_err(json_err)?;
        let h = history_arrays(history)?;
        let inserted: i64 = mainstay_core::pg::query_one(
            &self.pool,
            &sql,
            &[
                &saga.id,
                &saga.definition.name,
                &definition,
                &saga.idempotency_key,
                &saga.status.as_str(),
                &input,
                &steps,
                &saga.error,
                &(saga.created_at_ms as i64),
                &(saga.updated_at_ms as i64),
                &saga.deadline_at_ms.map(|v| v as i64),
                &(saga.history_len as i64),
                &owner,
                &(lease_ms as i64),
                &h.0,
                &h.1,
                &h.2,
                &h.3,
                &h.4,
                &hash,
            ],
        )
        .await
        .map_err(pg_err)?
        .get(0);
        if inserted == 1 {
            return Ok(Created::New(1));
        }
        let row = mainstay_core::pg::query_one(
            &self.pool,
            &format!(
                "SELECT {COLUMNS} FROM mainstay_sagas
                     WHERE definition_name = $1 AND idempotency_key = $2"
            ),
            &[&saga.definition.name, &saga.idempotency_key],
        )
        .await
        .map_err(pg_err)?;
        Ok(Created::Existing(Box::new(saga_row(&row)?)))
    }

    async fn save(
        &self,
        saga: &Saga,
        epoch: u64,
        history: &[HistoryEntry],
    ) -> Result<bool, TxnError> {
        let sql = format!(
            "WITH u AS (
                UPDATE mainstay_sagas SET status = $3, steps = $4, error = $5,
                    updated_at_ms = $6, history_len = $7,
                    owner = CASE WHEN $8 THEN NULL ELSE owner END
                WHERE id = $1 AND owner_epoch = $2
                RETURNING id, abort_requested),
             h AS (
                INSERT INTO mainstay_saga_history (saga_id, seq, at_ms, event, step, detail)
                SELECT u.id, x.* FROM u, ({rows}) x(seq, at_ms, event, step, detail))
             SELECT abort_requested FROM u",
            rows = history_rows(9)
        );
        let steps = serde_json::to_string(&saga.steps).map_err(json_err)?;
        let h = history_arrays(history)?;
        let row = mainstay_core::pg::query_opt(
            &self.pool,
            &sql,
            &[
                &saga.id,
                &(epoch as i64),
                &saga.status.as_str(),
                &steps,
                &saga.error,
                &(saga.updated_at_ms as i64),
                &(saga.history_len as i64),
                &saga.status.is_final(),
                &h.0,
                &h.1,
                &h.2,
                &h.3,
                &h.4,
            ],
        )
        .await
        .map_err(pg_err)?;
        match row {
            Some(r) => Ok(r.get(0)),
            None => Err(TxnError::Fenced {
                id: saga.id.clone(),
            }),
        }
    }

    async fn save_if(
        &self,
        saga: &Saga,
        expected: SagaStatus,
        history: &[HistoryEntry],
    ) -> Result<bool, TxnError> {
        let sql = format!(
            "WITH u AS (
                UPDATE mainstay_sagas SET status = $3, steps = $4, error = $5,
                    updated_at_ms = $6, history_len = $7, abort_requested = false
                WHERE id = $1 AND status = $2 AND owner IS NULL
                RETURNING id),
             h AS (
                INSERT INTO mainstay_saga_history (saga_id, seq, at_ms, event, step, detail)
                SELECT u.id, x.* FROM u, ({rows}) x(seq, at_ms, event, step, detail))
             SELECT count(*) FROM u",
            rows = history_rows(8)
        );
        let steps = serde_json::to_string(&saga.steps).map_err(json_err)?;
        let h = history_arrays(history)?;
        let n: i64 = mainstay_core::pg::query_one(
            &self.pool,
            &sql,
            &[
                &saga.id,
                &expected.as_str(),
                &saga.status.as_str(),
                &steps,
                &saga.error,
                &(saga.updated_at_ms as i64),
                &(saga.history_len as i64),
                &h.0,
                &h.1,
                &h.2,
                &h.3,
                &h.4,
            ],
        )
        .await
        .map_err(pg_err)?
        .get(0);
        Ok(n == 1)
    }

    async fn claim(
        &self,
        id: &str,
        owner: &str,
        lease_ms: u64,
    ) -> Result<Option<(u64, Saga)>, TxnError> {
        let sql = format!(
            "UPDATE mainstay_sagas
             SET owner = $2, owner_epoch = owner_epoch + 1, lease_until_ms = {NOW_MS} + $3
             WHERE id = $1 AND status IN {ACTIVE}
               AND (owner IS NULL OR owner = $2 OR lease_until_ms <= {NOW_MS})
             RETURNING owner_epoch, {COLUMNS}"
        );
        let row =
            mainstay_core::pg::query_opt(&self.pool, &sql, &[&id, &owner, &(lease_ms as i64)])
                .await
                .map_err(pg_err)?;
        let Some(row) = row else { return Ok(None) };
        let epoch: i64 = row.get(0);
        let saga = saga_row_at(&row, 1)?;
        Ok(Some((epoch as u64, saga)))
    }

    async fn renew(&self, owner: &str, lease_ms: u64) -> Result<u64, TxnError> {
        mainstay_core::pg::execute(
            &self.pool,
            &format!("UPDATE mainstay_sagas SET lease_until_ms = {NOW_MS} + $2 WHERE owner = $1"),
            &[&owner, &(lease_ms as i64)],
        )
        .await
        .map_err(pg_err)
    }

    async fn claimable(&self, owner: &str, limit: usize) -> Result<Vec<String>, TxnError> {
        let rows = mainstay_core::pg::query(
            &self.pool,
            &format!(
                "SELECT id FROM mainstay_sagas
                     WHERE status IN {ACTIVE}
                       AND (owner IS NULL OR owner = $1 OR lease_until_ms <= {NOW_MS})
                     ORDER BY created_at_ms LIMIT $2"
            ),
            &[&owner, &(limit as i64)],
        )
        .await
        .map_err(pg_err)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn request_abort(&self, id: &str) -> Result<bool, TxnError> {
        let n = mainstay_core::pg::execute(
            &self.pool,
            &format!(
                "UPDATE mainstay_sagas SET abort_requested = true
                     WHERE id = $1 AND status IN {ACTIVE}"
            ),
            &[&id],
        )
        .await
        .map_err(pg_err)?;
        Ok(n > 0)
    }

    async fn get(&self, id: &str) -> Result<Option<Saga>, TxnError> {
        let row = mainstay_core::pg::query_opt(
            &self.pool,
            &format!("SELECT {COLUMNS} FROM mainstay_sagas WHERE id = $1"),
            &[&id],
        )
        .await
        .map_err(pg_err)?;
        row.as_ref().map(saga_row).transpose()
    }

    async fn list(
        &self,
        status: Option<SagaStatus>,
        limit: usize,
    ) -> Result<Vec<SagaSummary>, TxnError> {
        let rows = mainstay_core::pg::query(
            &self.pool,
            "SELECT id, definition_name, status, error, created_at_ms, updated_at_ms
                 FROM mainstay_sagas WHERE ($1::text IS NULL OR status = $1)
                 ORDER BY created_at_ms DESC, id LIMIT $2",
            &[&status.map(|s| s.as_str()), &(limit as i64)],
        )
        .await
        .map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                Ok(SagaSummary {
                    id: r.get(0),
                    definition: r.get(1),
                    status: r.get::<_, &str>(2).parse()?,
                    error: r.get(3),
                    created_at_ms: r.get::<_, i64>(4) as u64,
                    updated_at_ms: r.get::<_, i64>(5) as u64,
                })
            })
            .collect()
    }

    async fn history(&self, id: &str, after: u64) -> Result<Vec<HistoryEntry>, TxnError> {
        let rows = mainstay_core::pg::query(
            &self.pool,
            "SELECT seq, at_ms, event, step, detail FROM mainstay_saga_history
                 WHERE saga_id = $1 AND seq > $2 ORDER BY seq",
            &[&id, &(after as i64)],
        )
        .await
        .map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                Ok(HistoryEntry {
                    seq: r.get::<_, i64>(0) as u64,
                    at_ms: r.get::<_, i64>(1) as u64,
                    event: r.get(2),
                    step: r.get::<_, Option<i64>>(3).map(|s| s as usize),
                    detail: r
                        .get::<_, Option<String>>(4)
                        .map(|d| serde_json::from_str(&d).map_err(corrupt))
                        .transpose()?,
                })
            })
            .collect()
    }
}
