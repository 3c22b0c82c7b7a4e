//! PostgreSQL as a 2PC participant: `PREPARE TRANSACTION` / `COMMIT PREPARED` /
//! `ROLLBACK PREPARED`, and a sweeper for orphaned prepared transactions.
//!
//! A [`PgBranch`] is one open transaction on a [`PgResource`]: run your statements on it,
//! then hand it to [`super::Coordinator::run`]; phase 1 is `PREPARE TRANSACTION
//! 'mainstay:{txid}:{resource}'`, which survives a crash of either side. Phase 2 needs only
//! the GID, so after a coordinator restart the resource (registered under its name)
//! finishes it from any connection.
//!
//! Orphans — prepared transactions whose coordinator never came back — hold row locks,
//! block VACUUM and risk xid wraparound. [`PgResource::sweep`] finds ours (by the GID
//! prefix) older than a threshold and resolves each through the decision log: the decision
//! that stands, or *abort* written first-wins when there is none (presumed abort). The
//! server needs `max_prepared_transactions > 0`.

use super::{Decision, DecisionLog, Participant, ParticipantError, Vote};
use crate::error::TxnError;
use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use std::time::Duration;
use tokio::sync::Mutex;

/// The prefix of every GID Mainstay prepares.
pub const GID_PREFIX: &str = "mainstay:";

/// The GID of `resource`'s branch of transaction `txid`.
pub fn gid(txid: &str, resource: &str) -> String {
    format!("{GID_PREFIX}{txid}:{resource}")
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn pg_err(e: tokio_postgres::Error) -> ParticipantError {
    ParticipantError(match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    })
}

/// A PostgreSQL database taking part in 2PC, under a name stable across restarts.
#[derive(Clone)]
pub struct PgResource {
    name: String,
    pool: Pool,
}

impl std::fmt::Debug for PgResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgResource")
            .field("name", &self.name)
            .finish()
    }
}

impl PgResource {
    /// A resource called `name` (at most 64 bytes of `[A-Za-z0-9_-]`) at `url`.
    pub fn connect(name: &str, url: &str) -> Result<Self, TxnError> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(TxnError::invalid(
                "postgres resource",
                format!("resource name {name:?} must be 1 to 64 of [A-Za-z0-9_-]"),
            ));
        }
        let pool = mainstay_core::pg::pool(url, 16).map_err(TxnError::Config)?;
        Ok(PgResource {
            name: name.to_string(),
            pool,
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens a transaction (`BEGIN`) for `txid` on a pooled connection.
    pub async fn begin(&self, txid: &str) -> Result<PgBranch, ParticipantError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| ParticipantError(e.to_string()))?;
        client.batch_execute("BEGIN").await.map_err(pg_err)?;
        Ok(PgBranch {
            gid: gid(txid, &self.name),
            client: Mutex::new(Some(client)),
            resource: self.clone(),
        })
    }

    async fn finish_prepared(&self, gid: &str, commit: bool) -> Result<(), ParticipantError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| ParticipantError(e.to_string()))?;
        let verb = if commit { "COMMIT" } else { "ROLLBACK" };
        match client
            .batch_execute(&format!("{verb} PREPARED {}", quote(gid)))
            .await
        {
            Ok(()) => Ok(()),
            // 42704: no such prepared transaction — finished already (idempotent phase 2).
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) => {
                Ok(())
            }
            Err(e) => Err(pg_err(e)),
        }
    }

    /// Prepared transactions of ours on this database, with their age.
    pub async fn prepared(&self) -> Result<Vec<(String, Duration)>, ParticipantError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| ParticipantError(e.to_string()))?;
        let rows = client
            .query(
                "SELECT gid, extract(epoch from (now() - prepared))::float8
                 FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE $1",
                &[&format!("{GID_PREFIX}%")],
            )
            .await
            .map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| {
                let secs: f64 = r.get(1);
                (r.get(0), Duration::from_secs_f64(secs.max(0.0)))
            })
            .collect())
    }

    /// Resolves our prepared transactions older than `older_than` through `log` (presumed
    /// abort when undecided). Returns how many it committed and rolled back.
    pub async fn sweep(
        &self,
        log: &dyn DecisionLog,
        older_than: Duration,
    ) -> Result<(usize, usize), TxnError> {
        let backend = |e: ParticipantError| TxnError::backend("postgres", e);
        let mut done = (0, 0);
        for (gid, age) in self.prepared().await.map_err(backend)? {
            if age < older_than {
                continue;
            }
            let Some(txid) = gid
                .strip_prefix(GID_PREFIX)
                .and_then(|rest| rest.rsplit_once(':'))
                .map(|(txid, _)| txid)
            else {
                continue;
            };
            let decision = log
                .decide(
                    txid,
                    Decision::Abort,
                    Some("orphaned prepared transaction swept"),
                )
                .await?;
            let commit = decision == Decision::Commit;
            self.finish_prepared(&gid, commit).await.map_err(backend)?;
            tracing::info!(%gid, decision = decision.as_str(), "resolved orphaned prepared transaction");
            if commit {
                done.0 += 1;
            } else {
                done.1 += 1;
            }
        }
        Ok(done)
    }
}

/// Phase 2 by GID, for recovery after a restart. (Phase 1 needs the [`PgBranch`] that did
/// the work: preparing here votes no.)
#[async_trait]
impl Participant for PgResource {
    async fn prepare(&self, _txid: &str) -> Result<Vote, ParticipantError> {
        Ok(Vote::Abort(format!(
            "{}: no open branch to prepare (begin one with PgResource::begin)",
            self.name
        )))
    }

    async fn commit(&self, txid: &str) -> Result<(), ParticipantError> {
        self.finish_prepared(&gid(txid, &self.name), true).await
    }

    async fn abort(&self, txid: &str) -> Result<(), ParticipantError> {
        self.finish_prepared(&gid(txid, &self.name), false).await
    }
}

/// One open transaction on a [`PgResource`]: do the work, then let the coordinator prepare
/// and finish it.
pub struct PgBranch {
    gid: String,
    client: Mutex<Option<Object>>,
    resource: PgResource,
}

impl PgBranch {
    /// Runs statements (no parameters) inside the branch's transaction.
    pub async fn batch_execute(&self, sql: &str) -> Result<(), ParticipantError> {
        let guard = self.client.lock().await;
        let client = guard.as_ref().ok_or_else(|| {
            ParticipantError("the branch is already prepared or rolled back".into())
        })?;
        client.batch_execute(sql).await.map_err(pg_err)
    }

    /// Runs one statement with parameters; returns the rows affected.
    pub async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, ParticipantError> {
        let guard = self.client.lock().await;
        let client = guard.as_ref().ok_or_else(|| {
            ParticipantError("the branch is already prepared or rolled back".into())
        })?;
        let statement = client.prepare_cached(sql).await.map_err(pg_err)?;
        client.execute(&statement, params).await.map_err(pg_err)
    }

    /// The resource it runs on.
    pub fn resource(&self) -> &PgResource {
        &self.resource
    }
}

#[async_trait]
impl Participant for PgBranch {
    async fn prepare(&self, _txid: &str) -> Result<Vote, ParticipantError> {
        let Some(client) = self.client.lock().await.take() else {
            return Ok(Vote::Abort(
                "the branch was already prepared or rolled back".into(),
            ));
        };
        match client
            .batch_execute(&format!("PREPARE TRANSACTION {}", quote(&self.gid)))
            .await
        {
            // The connection returns to the pool with no transaction open.
            Ok(()) => Ok(Vote::Commit),
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                Ok(Vote::Abort(format!(
                    "{}: {}",
                    self.resource.name,
                    pg_err(e)
                )))
            }
        }
    }

    async fn commit(&self, txid: &str) -> Result<(), ParticipantError> {
        self.resource.commit(txid).await
    }

    async fn abort(&self, txid: &str) -> Result<(), ParticipantError> {
        // Never prepared: roll the open transaction back; else finish it by GID.
        if let Some(client) = self.client.lock().await.take() {
            return client.batch_execute("ROLLBACK").await.map_err(pg_err);
        }
        self.resource.abort(txid).await
    }
}
