//! PostgreSQL backend: a lease table, not session advisory locks.
//!
//! Every operation is one statement in its own transaction, so it works behind
//! transaction-pooling PgBouncer (advisory locks do not: golang-migrate #992). Expiry uses
//! the **database's** clock (`clock_timestamp()`), so clients' clocks do not matter. Rows
//! are never deleted: the fencing counter is durable and survives restarts and failover
//! to a synchronous replica.
//!
//! Guarantees: mutual exclusion while the database is up; tokens strictly increase per
//! name. Not guaranteed: failover to an *asynchronous* replica can lose recent grants (the
//! client's regression check then refuses lower tokens); a paused holder past its ttl is
//! only stopped by a fenced resource.

use crate::backend::{LockBackend, TryAcquire};
use crate::error::LockError;
use crate::lease::{Holder, Lease, LockName};
use async_trait::async_trait;
use deadpool_postgres::Pool;
use mainstay_core::config::BackendKind;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mainstay_locks (
    name          text PRIMARY KEY,
    lease_id      text,
    owner         text,
    fencing_token bigint NOT NULL,
    expires_at_ms bigint NOT NULL,
    ttl_ms        bigint NOT NULL
)";

const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

fn acquire_sql() -> String {
    format!(
        "INSERT INTO mainstay_locks AS l (name, lease_id, owner, fencing_token, expires_at_ms, ttl_ms)
         SELECT $1, $2, $3, 1, n.ms + $4, $4 FROM (SELECT {NOW_MS} AS ms) n
         ON CONFLICT (name) DO UPDATE SET
             lease_id = EXCLUDED.lease_id, owner = EXCLUDED.owner,
             fencing_token = l.fencing_token + 1,
             expires_at_ms = EXCLUDED.expires_at_ms, ttl_ms = EXCLUDED.ttl_ms
         WHERE l.lease_id IS NULL OR l.expires_at_ms <= EXCLUDED.expires_at_ms - EXCLUDED.ttl_ms
         RETURNING fencing_token, expires_at_ms"
    )
}

fn holder_sql() -> String {
    format!(
        "SELECT owner, fencing_token, expires_at_ms FROM mainstay_locks
         WHERE name = $1 AND lease_id IS NOT NULL AND expires_at_ms > {NOW_MS}"
    )
}

fn extend_sql() -> String {
    format!(
        "UPDATE mainstay_locks SET expires_at_ms = {NOW_MS} + $3, ttl_ms = $3
         WHERE name = $1 AND lease_id = $2 AND expires_at_ms > {NOW_MS}
         RETURNING owner, fencing_token, expires_at_ms"
    )
}

fn release_sql() -> String {
    format!(
        "UPDATE mainstay_locks SET lease_id = NULL, owner = NULL, expires_at_ms = 0
         WHERE name = $1 AND lease_id = $2 AND expires_at_ms > {NOW_MS}"
    )
}

/// Locks in a PostgreSQL table (`mainstay_locks`).
#[derive(Clone)]
pub struct PostgresBackend {
    pool: Pool,
    released: std::sync::Arc<Notify>,
    sql: std::sync::Arc<[String; 4]>,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend").finish_non_exhaustive()
    }
}

fn pg_err(e: impl mainstay_core::pg::Describe) -> LockError {
    LockError::backend("postgres", e.describe())
}

impl PostgresBackend {
    /// Connects to `url` (`postgres://user@host:port/db`, or key=value form), with a pool of
    /// up to 16 connections, and creates the lock table if missing.
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        let pool = mainstay_core::pg::pool(url, 16).map_err(LockError::Config)?;
        mainstay_core::pg::ensure_schema(&pool, url, SCHEMA)
            .await
            .map_err(pg_err)?;
        Ok(PostgresBackend {
            pool,
            released: Default::default(),
            sql: std::sync::Arc::new([acquire_sql(), holder_sql(), extend_sql(), release_sql()]),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, LockError> {
        self.pool.get().await.map_err(pg_err)
    }
}

fn holder_from(row: &tokio_postgres::Row) -> Holder {
    Holder {
        owner: row.get(0),
        fencing_token: row.get::<_, i64>(1) as u64,
        expires_at_ms: row.get::<_, i64>(2) as u64,
    }
}

#[async_trait]
impl LockBackend for PostgresBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Postgres
    }

    async fn try_acquire(
        &self,
        name: &LockName,
        lease_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<TryAcquire, LockError> {
        let client = self.client().await?;
        let sent = Instant::now();
        let stmt = client.prepare_cached(&self.sql[0]).await.map_err(pg_err)?;
        let ttl_ms = ttl.as_millis() as i64;
        if let Some(row) = client
            .query_opt(&stmt, &[&name.as_str(), &lease_id, &owner, &ttl_ms])
            .await
            .map_err(pg_err)?
        {
            let (token, expires): (i64, i64) = (row.get(0), row.get(1));
            return Ok(TryAcquire::Acquired(Lease::new(
                name,
                lease_id,
                owner,
                token as u64,
                expires as u64,
                ttl,
                sent,
            )));
        }
        let stmt = client.prepare_cached(&self.sql[1]).await.map_err(pg_err)?;
        let holder = client
            .query_opt(&stmt, &[&name.as_str()])
            .await
            .map_err(pg_err)?;
        Ok(TryAcquire::Held(holder.as_ref().map(holder_from)))
    }

    async fn extend(
        &self,
        name: &LockName,
        lease_id: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, LockError> {
        let client = self.client().await?;
        let sent = Instant::now();
        let stmt = client.prepare_cached(&self.sql[2]).await.map_err(pg_err)?;
        let row = client
            .query_opt(
                &stmt,
                &[&name.as_str(), &lease_id, &(ttl.as_millis() as i64)],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.map(|r| {
            let h = holder_from(&r);
            Lease::new(
                name,
                lease_id,
                &h.owner,
                h.fencing_token,
                h.expires_at_ms,
                ttl,
                sent,
            )
        }))
    }

    async fn release(&self, name: &LockName, lease_id: &str) -> Result<bool, LockError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&self.sql[3]).await.map_err(pg_err)?;
        let changed = client
            .execute(&stmt, &[&name.as_str(), &lease_id])
            .await
            .map_err(pg_err)?;
        if changed > 0 {
            self.released.notify_waiters();
        }
        Ok(changed > 0)
    }

    async fn holder(&self, name: &LockName) -> Result<Option<Holder>, LockError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&self.sql[1]).await.map_err(pg_err)?;
        Ok(client
            .query_opt(&stmt, &[&name.as_str()])
            .await
            .map_err(pg_err)?
            .as_ref()
            .map(holder_from))
    }

    fn release_signal(&self) -> Option<&Notify> {
        Some(&self.released)
    }
}
