//! The durable decision log: one row per transaction (participants, decision, finished).

use super::{Decision, ParticipantRef};
use crate::error::TxnError;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Where a transaction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TxState {
    /// Phase 1: no decision yet.
    Preparing,
    /// Decided commit; phase 2 not yet acknowledged by everyone.
    Committing,
    /// Decided abort; phase 2 not yet acknowledged by everyone.
    Aborting,
    /// Every participant committed.
    Committed,
    /// Every participant aborted.
    Aborted,
}

/// One transaction in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TxRecord {
    /// Unguessable id (also in PostgreSQL prepared-transaction GIDs).
    pub id: String,
    /// The node that began it.
    pub coordinator: String,
    /// Who takes part, and how to reach them after a restart.
    pub participants: Vec<ParticipantRef>,
    /// The decision, once made.
    pub decision: Option<Decision>,
    /// Why it aborted.
    pub reason: Option<String>,
    /// Every participant acknowledged phase 2.
    pub finished: bool,
    /// Begin time (ms since the epoch).
    pub created_at_ms: u64,
    /// Decision time.
    pub decided_at_ms: Option<u64>,
    /// Phase-2 completion time.
    pub finished_at_ms: Option<u64>,
}

impl TxRecord {
    /// Its state, derived from decision and completion.
    pub fn state(&self) -> TxState {
        match (self.decision, self.finished) {
            (None, _) => TxState::Preparing,
            (Some(Decision::Commit), false) => TxState::Committing,
            (Some(Decision::Abort), false) => TxState::Aborting,
            (Some(Decision::Commit), true) => TxState::Committed,
            (Some(Decision::Abort), true) => TxState::Aborted,
        }
    }
}

/// The coordinator's durable log.
#[async_trait]
pub trait DecisionLog: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;
    /// Records a transaction before phase 1.
    async fn begin(&self, tx: &TxRecord) -> Result<(), TxnError>;
    /// Records `decision` unless one is already recorded (first writer wins; a missing
    /// row is created, decided); returns the decision that stands.
    async fn decide(
        &self,
        id: &str,
        decision: Decision,
        reason: Option<&str>,
    ) -> Result<Decision, TxnError>;
    /// Marks phase 2 complete.
    async fn finish(&self, id: &str) -> Result<(), TxnError>;
    /// One transaction.
    async fn get(&self, id: &str) -> Result<Option<TxRecord>, TxnError>;
    /// Transactions, newest first.
    async fn list(&self, limit: usize) -> Result<Vec<TxRecord>, TxnError>;
    /// Unfinished transactions, oldest first.
    async fn unfinished(&self, limit: usize) -> Result<Vec<TxRecord>, TxnError>;
}

const COLUMNS: &str =
    "id, coordinator, participants, decision, reason, finished, created_at_ms, decided_at_ms, finished_at_ms";

fn parse_decision(s: Option<String>) -> Result<Option<Decision>, String> {
    match s.as_deref() {
        None => Ok(None),
        Some("commit") => Ok(Some(Decision::Commit)),
        Some("abort") => Ok(Some(Decision::Abort)),
        Some(other) => Err(format!("unknown decision {other:?} in the log")),
    }
}

#[cfg(feature = "sqlite")]
pub use self::sqlite::SqliteDecisionLog;

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use mainstay_core::clock::now_ms;
    use rusqlite::{params, Connection, OptionalExtension, Row};
    use std::path::Path;

    const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS mainstay_txns (
        id             TEXT PRIMARY KEY,
        coordinator    TEXT NOT NULL,
        participants   TEXT NOT NULL,
        decision       TEXT,
        reason         TEXT,
        finished       INTEGER NOT NULL DEFAULT 0,
        created_at_ms  INTEGER NOT NULL,
        decided_at_ms  INTEGER,
        finished_at_ms INTEGER
    );
    CREATE INDEX IF NOT EXISTS mainstay_txns_unfinished ON mainstay_txns (finished, created_at_ms);";

    /// The decision log in a SQLite file (WAL, `synchronous=FULL`).
    #[derive(Clone, Debug)]
    pub struct SqliteDecisionLog {
        conn: mainstay_core::sqlite::SharedConnection,
    }

    fn db_err(e: impl std::fmt::Display) -> TxnError {
        TxnError::backend("sqlite", e)
    }

    fn conv(e: impl std::fmt::Display) -> rusqlite::Error {
        rusqlite::Error::ToSqlConversionFailure(e.to_string().into())
    }

    fn row(r: &Row<'_>) -> rusqlite::Result<TxRecord> {
        Ok(TxRecord {
            id: r.get(0)?,
            coordinator: r.get(1)?,
            participants: serde_json::from_str(&r.get::<_, String>(2)?).map_err(conv)?,
            decision: parse_decision(r.get(3)?).map_err(conv)?,
            reason: r.get(4)?,
            finished: r.get::<_, i64>(5)? != 0,
            created_at_ms: r.get::<_, i64>(6)? as u64,
            decided_at_ms: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
            finished_at_ms: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
        })
    }

    impl SqliteDecisionLog {
        /// Opens (creating if needed) the table in the file at `path`.
        pub fn open(path: impl AsRef<Path>) -> Result<Self, TxnError> {
            let conn = mainstay_core::sqlite::open(
                path.as_ref(),
                SCHEMA,
                std::time::Duration::from_secs(10),
            )
            .map_err(TxnError::Config)?;
            Ok(SqliteDecisionLog {
                conn: mainstay_core::sqlite::SharedConnection::new(conn),
            })
        }

        async fn with<T: Send + 'static>(
            &self,
            f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        ) -> Result<T, TxnError> {
            self.conn
                .run(move |c| f(c))
                .await
                .map_err(db_err)?
                .map_err(db_err)
        }
    }

    #[async_trait]
    impl DecisionLog for SqliteDecisionLog {
        fn kind(&self) -> &'static str {
            "sqlite"
        }

        async fn begin(&self, tx: &TxRecord) -> Result<(), TxnError> {
            let tx = tx.clone();
            let parts = serde_json::to_string(&tx.participants).map_err(db_err)?;
            self.with(move |c| {
                c.prepare_cached(
                    "INSERT INTO mainstay_txns (id, coordinator, participants, created_at_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    tx.id,
                    tx.coordinator,
                    parts,
                    tx.created_at_ms as i64
                ])
                .map(drop)
            })
            .await
        }

        async fn decide(
            &self,
            id: &str,
            decision: Decision,
            reason: Option<&str>,
        ) -> Result<Decision, TxnError> {
            let (id, reason) = (id.to_string(), reason.map(String::from));
            let standing = self
                .with(move |c| {
                    c.prepare_cached(
                        "INSERT INTO mainstay_txns (id, coordinator, participants, decision, reason,
                            created_at_ms, decided_at_ms)
                         VALUES (?1, '', '[]', ?2, ?3, ?4, ?4)
                         ON CONFLICT (id) DO UPDATE SET decision = ?2, reason = ?3, decided_at_ms = ?4
                         WHERE mainstay_txns.decision IS NULL",
                    )?
                    .execute(params![id, decision.as_str(), reason, now_ms() as i64])?;
                    c.prepare_cached("SELECT decision FROM mainstay_txns WHERE id = ?1")?
                        .query_row(params![id], |r| r.get::<_, Option<String>>(0))
                })
                .await?;
            parse_decision(standing)
                .map_err(db_err)?
                .ok_or_else(|| db_err("decision missing after it was written"))
        }

        async fn finish(&self, id: &str) -> Result<(), TxnError> {
            let id = id.to_string();
            self.with(move |c| {
                c.prepare_cached(
                    "UPDATE mainstay_txns SET finished = 1, finished_at_ms = ?2
                     WHERE id = ?1 AND finished = 0",
                )?
                .execute(params![id, now_ms() as i64])
                .map(drop)
            })
            .await
        }

        async fn get(&self, id: &str) -> Result<Option<TxRecord>, TxnError> {
            let id = id.to_string();
            self.with(move |c| {
                c.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM mainstay_txns WHERE id = ?1"
                ))?
                .query_row(params![id], row)
                .optional()
            })
            .await
        }

        async fn list(&self, limit: usize) -> Result<Vec<TxRecord>, TxnError> {
            self.with(move |c| {
                c.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM mainstay_txns ORDER BY created_at_ms DESC, id LIMIT ?1"
                ))?
                .query_map(params![limit as i64], row)?
                .collect()
            })
            .await
        }

        async fn unfinished(&self, limit: usize) -> Result<Vec<TxRecord>, TxnError> {
            self.with(move |c| {
                c.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM mainstay_txns WHERE finished = 0
                     ORDER BY created_at_ms LIMIT ?1"
                ))?
                .query_map(params![limit as i64], row)?
                .collect()
            })
            .await
        }
    }
}

#[cfg(feature = "postgres")]
pub use self::postgres::PostgresDecisionLog;

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use deadpool_postgres::Pool;
    use mainstay_core::clock::now_ms;
    use tokio_postgres::Row;

    const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS mainstay_txns (
        id             text PRIMARY KEY,
        coordinator    text NOT NULL,
        participants   text NOT NULL,
        decision       text,
        reason         text,
        finished       boolean NOT NULL DEFAULT false,
        created_at_ms  bigint NOT NULL,
        decided_at_ms  bigint,
        finished_at_ms bigint
    );
    CREATE INDEX IF NOT EXISTS mainstay_txns_unfinished ON mainstay_txns (finished, created_at_ms);";

    /// The decision log in PostgreSQL (`mainstay_txns`).
    #[derive(Clone)]
    pub struct PostgresDecisionLog {
        pool: Pool,
    }

    impl std::fmt::Debug for PostgresDecisionLog {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("PostgresDecisionLog")
                .finish_non_exhaustive()
        }
    }

    fn json_err(e: serde_json::Error) -> TxnError {
        TxnError::backend("postgres", format!("JSON: {e}"))
    }

    fn pg_err(e: impl mainstay_core::pg::Describe) -> TxnError {
        TxnError::backend("postgres", e.describe())
    }

    fn row(r: &Row) -> Result<TxRecord, TxnError> {
        Ok(TxRecord {
            id: r.get(0),
            coordinator: r.get(1),
            participants: serde_json::from_str(r.get::<_, &str>(2)).map_err(json_err)?,
            decision: parse_decision(r.get(3)).map_err(pg_err)?,
            reason: r.get(4),
            finished: r.get(5),
            created_at_ms: r.get::<_, i64>(6) as u64,
            decided_at_ms: r.get::<_, Option<i64>>(7).map(|v| v as u64),
            finished_at_ms: r.get::<_, Option<i64>>(8).map(|v| v as u64),
        })
    }

    impl PostgresDecisionLog {
        /// Connects (pool of up to 16) and creates the table if missing.
        pub async fn connect(url: &str) -> Result<Self, TxnError> {
            let pool = mainstay_core::pg::pool(url, 16).map_err(TxnError::Config)?;
            mainstay_core::pg::ensure_schema(&pool, url, SCHEMA)
                .await
                .map_err(pg_err)?;
            Ok(PostgresDecisionLog { pool })
        }
    }

    #[async_trait]
    impl DecisionLog for PostgresDecisionLog {
        fn kind(&self) -> &'static str {
            "postgres"
        }

        async fn begin(&self, tx: &TxRecord) -> Result<(), TxnError> {
            let parts = serde_json::to_string(&tx.participants).map_err(json_err)?;
            mainstay_core::pg::execute(
                &self.pool,
                "INSERT INTO mainstay_txns (id, coordinator, participants, created_at_ms)
                     VALUES ($1, $2, $3, $4)",
                &[&tx.id, &tx.coordinator, &parts, &(tx.created_at_ms as i64)],
            )
            .await
            .map_err(pg_err)?;
            Ok(())
        }

        async fn decide(
            &self,
            id: &str,
            decision: Decision,
            reason: Option<&str>,
        ) -> Result<Decision, TxnError> {
            let written = mainstay_core::pg::query_opt(
                &self.pool,
                "INSERT INTO mainstay_txns AS t (id, coordinator, participants, decision, reason,
                        created_at_ms, decided_at_ms)
                     VALUES ($1, '', '[]', $2, $3, $4, $4)
                     ON CONFLICT (id) DO UPDATE SET decision = $2, reason = $3, decided_at_ms = $4
                     WHERE t.decision IS NULL
                     RETURNING decision",
                &[&id, &decision.as_str(), &reason, &(now_ms() as i64)],
            )
            .await
            .map_err(pg_err)?;
            // Not written: a decision stood already; read it (a fresh statement sees it).
            let standing: Option<String> = match written {
                Some(r) => r.get(0),
                None => mainstay_core::pg::query_one(
                    &self.pool,
                    "SELECT decision FROM mainstay_txns WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(pg_err)?
                .get(0),
            };
            parse_decision(standing)
                .map_err(pg_err)?
                .ok_or_else(|| pg_err("decision missing after it was written"))
        }

        async fn finish(&self, id: &str) -> Result<(), TxnError> {
            mainstay_core::pg::execute(
                &self.pool,
                "UPDATE mainstay_txns SET finished = true, finished_at_ms = $2
                     WHERE id = $1 AND NOT finished",
                &[&id, &(now_ms() as i64)],
            )
            .await
            .map_err(pg_err)?;
            Ok(())
        }

        async fn get(&self, id: &str) -> Result<Option<TxRecord>, TxnError> {
            let r = mainstay_core::pg::query_opt(
                &self.pool,
                &format!("SELECT {COLUMNS} FROM mainstay_txns WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(pg_err)?;
            r.as_ref().map(row).transpose()
        }

        async fn list(&self, limit: usize) -> Result<Vec<TxRecord>, TxnError> {
            let rows = mainstay_core::pg::query(
                &self.pool,
                &format!(
                    "SELECT {COLUMNS} FROM mainstay_txns ORDER BY created_at_ms DESC, id LIMIT $1"
                ),
                &[&(limit as i64)],
            )
            .await
            .map_err(pg_err)?;
            rows.iter().map(row).collect()
        }

        async fn unfinished(&self, limit: usize) -> Result<Vec<TxRecord>, TxnError> {
            let rows = mainstay_core::pg::query(&self.pool, &format!("SELECT {COLUMNS} FROM mainstay_txns WHERE NOT finished ORDER BY created_at_ms LIMIT $1"),
                    &[&(limit as i64)],
                )
                .await
                .map_err(pg_err)?;
            rows.iter().map(row).collect()
        }
    }
}
