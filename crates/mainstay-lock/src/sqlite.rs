//! Embedded SQLite backend (the default).
//!
//! One row per lock name in a WAL-mode file; a grant is a single atomic upsert that only
//! succeeds when the row is free or expired, and bumps the row's fencing counter. Rows are
//! never deleted, so the counter survives release, expiry and restarts; the file is opened
//! with `synchronous=FULL` so a granted token survives power loss too.
//!
//! Guarantees: mutual exclusion among all processes on **one host** that open the same
//! file; tokens strictly increase per name for the life of the file. Not guaranteed:
//! anything across hosts (don't put the file on NFS); expiry uses this host's wall clock,
//! so a clock jump forward expires leases early (fence the resource).

use crate::backend::{LockBackend, TryAcquire};
use crate::error::LockError;
use crate::lease::{Holder, Lease, LockName};
use async_trait::async_trait;
use mainstay_core::clock::now_ms;
use mainstay_core::config::BackendKind;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mainstay_locks (
    name          TEXT PRIMARY KEY,
    lease_id      TEXT,
    owner         TEXT,
    fencing_token INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    ttl_ms        INTEGER NOT NULL
);";

// `excluded.expires_at_ms - excluded.ttl_ms` is "now" as the caller computed it.
const ACQUIRE: &str = "
INSERT INTO mainstay_locks (name, lease_id, owner, fencing_token, expires_at_ms, ttl_ms)
VALUES (?1, ?2, ?3, 1, ?4 + ?5, ?5)
ON CONFLICT (name) DO UPDATE SET
    lease_id = excluded.lease_id, owner = excluded.owner,
    fencing_token = mainstay_locks.fencing_token + 1,
    expires_at_ms = excluded.expires_at_ms, ttl_ms = excluded.ttl_ms
WHERE mainstay_locks.lease_id IS NULL OR mainstay_locks.expires_at_ms <= ?4
RETURNING fencing_token, expires_at_ms";

const HOLDER: &str = "
SELECT owner, fencing_token, expires_at_ms FROM mainstay_locks
WHERE name = ?1 AND lease_id IS NOT NULL AND expires_at_ms > ?2";

const EXTEND: &str = "
UPDATE mainstay_locks SET expires_at_ms = ?3 + ?4, ttl_ms = ?4
WHERE name = ?1 AND lease_id = ?2 AND expires_at_ms > ?3
RETURNING owner, fencing_token, expires_at_ms";

const RELEASE: &str = "
UPDATE mainstay_locks SET lease_id = NULL, owner = NULL, expires_at_ms = 0
WHERE name = ?1 AND lease_id = ?2 AND expires_at_ms > ?3";

/// Locks in a SQLite file shared by the processes of one host.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    conn: mainstay_core::sqlite::SharedConnection,
    released: Arc<Notify>,
}

fn db_err(e: impl std::fmt::Display) -> LockError {
    LockError::backend("sqlite", e)
}

impl SqliteBackend {
    /// Opens (creating if needed) the lock table in the file at `path`; creates parent
    /// directories.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LockError> {
        let conn = mainstay_core::sqlite::open(path.as_ref(), SCHEMA, Duration::from_secs(10))
            .map_err(LockError::Config)?;
        Ok(SqliteBackend {
            conn: mainstay_core::sqlite::SharedConnection::new(conn),
            released: Arc::new(Notify::new()),
        })
    }

    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, LockError> {
        self.conn
            .run(move |c| f(c))
            .await
            .map_err(db_err)?
            .map_err(db_err)
    }
}

fn holder_row(conn: &Connection, name: &str, now: i64) -> rusqlite::Result<Option<Holder>> {
    conn.prepare_cached(HOLDER)?
        .query_row(params![name, now], |r| {
            Ok(Holder {
                owner: r.get(0)?,
                fencing_token: r.get::<_, i64>(1)? as u64,
                expires_at_ms: r.get::<_, i64>(2)? as u64,
            })
        })
        .optional()
}

#[async_trait]
impl LockBackend for SqliteBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Sqlite
    }

    async fn try_acquire(
        &self,
        name: &LockName,
        lease_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<TryAcquire, LockError> {
        let sent = Instant::now();
        let (n, id, o) = (
            name.as_str().to_string(),
            lease_id.to_string(),
            owner.to_string(),
        );
        let ttl_ms = ttl.as_millis() as i64;
        let outcome = self
            .with_conn(move |conn| {
                let now = now_ms() as i64;
                let granted = conn
                    .prepare_cached(ACQUIRE)?
                    .query_row(params![n, id, o, now, ttl_ms], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                    })
                    .optional()?;
                match granted {
                    Some(g) => Ok(Ok(g)),
                    None => Ok(Err(holder_row(conn, &n, now)?)),
                }
            })
            .await?;
        Ok(match outcome {
            Ok((token, expires)) => TryAcquire::Acquired(Lease::new(
                name,
                lease_id,
                owner,
                token as u64,
                expires as u64,
                ttl,
                sent,
            )),
            Err(holder) => TryAcquire::Held(holder),
        })
    }

    async fn extend(
        &self,
        name: &LockName,
        lease_id: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, LockError> {
        let sent = Instant::now();
        let (n, id) = (name.as_str().to_string(), lease_id.to_string());
        let ttl_ms = ttl.as_millis() as i64;
        let row = self
            .with_conn(move |conn| {
                conn.prepare_cached(EXTEND)?
                    .query_row(params![n, id, now_ms() as i64, ttl_ms], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    })
                    .optional()
            })
            .await?;
        Ok(row.map(|(owner, token, expires)| {
            Lease::new(
                name,
                lease_id,
                &owner,
                token as u64,
                expires as u64,
                ttl,
                sent,
            )
        }))
    }

    async fn release(&self, name: &LockName, lease_id: &str) -> Result<bool, LockError> {
        let (n, id) = (name.as_str().to_string(), lease_id.to_string());
        let changed = self
            .with_conn(move |conn| {
                conn.prepare_cached(RELEASE)?
                    .execute(params![n, id, now_ms() as i64])
            })
            .await?;
        if changed > 0 {
            self.released.notify_waiters();
        }
        Ok(changed > 0)
    }

    async fn holder(&self, name: &LockName) -> Result<Option<Holder>, LockError> {
        let n = name.as_str().to_string();
        self.with_conn(move |conn| holder_row(conn, &n, now_ms() as i64))
            .await
    }

    fn release_signal(&self) -> Option<&Notify> {
        Some(&self.released)
    }
}
