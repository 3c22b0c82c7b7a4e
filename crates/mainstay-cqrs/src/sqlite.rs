//! Projections into a SQLite read model.

use crate::projection::{check_name, table, Step};
use crate::ProjectionError;
use mainstay_core::failpoint;
use mainstay_eventstore::{EventStore, Position, ReadAllFilter, RecordedEvent};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A read model kept in SQLite tables.
pub trait SqliteProjection: Send + Sync + 'static {
    /// Its name: the view readers query, and the prefix of its tables.
    fn name(&self) -> &str;
    /// The events it wants.
    fn filter(&self) -> ReadAllFilter {
        ReadAllFilter::default()
    }
    /// Creates the (empty) table `table` (a fresh one for each generation).
    fn create(&self, tx: &rusqlite::Transaction<'_>, table: &str) -> rusqlite::Result<()>;
    /// Applies one event to `table`, inside the batch's transaction.
    fn apply(
        &self,
        tx: &rusqlite::Transaction<'_>,
        table: &str,
        event: &RecordedEvent,
    ) -> rusqlite::Result<()>;
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mainstay_projections (
    name       TEXT PRIMARY KEY,
    generation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS mainstay_projection_checkpoints (
    name          TEXT NOT NULL,
    generation    INTEGER NOT NULL,
    commit_pos    INTEGER NOT NULL,
    prepare_pos   INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (name, generation)
);";

fn db(e: rusqlite::Error) -> ProjectionError {
    ProjectionError::ReadModel(e.to_string())
}

/// Runs one projection into a SQLite file (often the event store's own file).
pub struct SqliteProjector<P> {
    conn: mainstay_core::sqlite::SharedConnection,
    store: Arc<dyn EventStore>,
    projection: Arc<P>,
    batch: usize,
}

fn checkpoint(c: &Connection, name: &str, g: i64) -> rusqlite::Result<Option<Position>> {
    c.query_row(
        "SELECT commit_pos, prepare_pos FROM mainstay_projection_checkpoints
         WHERE name = ?1 AND generation = ?2",
        params![name, g],
        |r| {
            Ok(Position {
                commit: r.get::<_, i64>(0)? as u64,
                prepare: r.get::<_, i64>(1)? as u64,
            })
        },
    )
    .optional()
}

fn active(c: &Connection, name: &str) -> rusqlite::Result<Option<i64>> {
    c.query_row(
        "SELECT generation FROM mainstay_projections WHERE name = ?1",
        params![name],
        |r| r.get(0),
    )
    .optional()
}

fn start_generation<P: SqliteProjection>(
    tx: &rusqlite::Transaction<'_>,
    p: &P,
    g: i64,
) -> rusqlite::Result<()> {
    p.create(tx, &table(p.name(), g))?;
    tx.execute(
        "INSERT INTO mainstay_projection_checkpoints
             (name, generation, commit_pos, prepare_pos, updated_at_ms) VALUES (?1, ?2, 0, 0, 0)",
        params![p.name(), g],
    )?;
    Ok(())
}

impl<P: SqliteProjection> SqliteProjector<P> {
    /// Opens the read model in the SQLite file at `path` (creating generation 1, its
    /// table and the view on first use).
    pub fn open(
        path: impl AsRef<Path>,
        store: Arc<dyn EventStore>,
        projection: P,
    ) -> Result<Self, ProjectionError> {
        check_name(projection.name())?;
        let mut conn = mainstay_core::sqlite::open(path.as_ref(), SCHEMA, Duration::from_secs(30))
            .map_err(ProjectionError::ReadModel)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let name = projection.name().to_string();
        if active(&tx, &name).map_err(db)?.is_none() {
            start_generation(&tx, &projection, 1).map_err(db)?;
            tx.execute(
                "INSERT INTO mainstay_projections (name, generation) VALUES (?1, 1)",
                params![name],
            )
            .map_err(db)?;
            tx.execute_batch(&format!(
                "CREATE VIEW {name} AS SELECT * FROM {}",
                table(&name, 1)
            ))
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(SqliteProjector {
            conn: mainstay_core::sqlite::SharedConnection::new(conn),
            store,
            projection: Arc::new(projection),
            batch: 500,
        })
    }

    /// Events per transaction (default 500).
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, ProjectionError> + Send + 'static,
    ) -> Result<T, ProjectionError> {
        self.conn.run(f).await.map_err(ProjectionError::ReadModel)?
    }

    /// The active generation and its checkpoint.
    pub async fn checkpoint(&self) -> Result<(i64, Position), ProjectionError> {
        let name = self.projection.name().to_string();
        self.with(move |c| {
            let g = active(c, &name).map_err(db)?.unwrap_or(1);
            let at = checkpoint(c, &name, g)
                .map_err(db)?
                .unwrap_or(Position::START);
            Ok((g, at))
        })
        .await
    }

    /// The table the view currently points at.
    pub async fn table(&self) -> Result<String, ProjectionError> {
        let (g, _) = self.checkpoint().await?;
        Ok(table(self.projection.name(), g))
    }

    /// One batch into generation `g` (`None`: the active one).
    async fn step(&self, g: Option<i64>) -> Result<Step, ProjectionError> {
        let name = self.projection.name().to_string();
        let (g, seen) = {
            let name = name.clone();
            self.with(move |c| {
                let g = match g {
                    Some(g) => g,
                    None => active(c, &name).map_err(db)?.unwrap_or(1),
                };
                let at = checkpoint(c, &name, g).map_err(db)?.ok_or_else(|| {
                    ProjectionError::ReadModel(format!("generation {g} of {name} is gone"))
                })?;
                Ok((g, at))
            })
            .await?
        };
        let events = self
            .store
            .read_all(seen, self.batch, &self.projection.filter())
            .await?;
        if events.is_empty() {
            return Ok(Step::Idle);
        }
        let p = self.projection.clone();
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            // Another projector may have applied these already: the checkpoint decides.
            if checkpoint(&tx, &name, g).map_err(db)? != Some(seen) {
                return Ok(Step::Raced);
            }
            let t = table(&name, g);
            for e in &events {
                p.apply(&tx, &t, e).map_err(db)?;
            }
            let last = events.last().expect("not empty").position;
            tx.execute(
                "UPDATE mainstay_projection_checkpoints SET commit_pos = ?3, prepare_pos = ?4,
                     updated_at_ms = ?5 WHERE name = ?1 AND generation = ?2",
                params![
                    name,
                    g,
                    last.commit as i64,
                    last.prepare as i64,
                    mainstay_core::clock::now_ms() as i64
                ],
            )
            .map_err(db)?;
            failpoint::hit("projection.before_commit");
            tx.commit().map_err(db)?;
            failpoint::hit("projection.after_commit");
            Ok(Step::Applied(events.len()))
        })
        .await
    }

    /// Projects everything `$all` holds now into the active generation; returns how many
    /// events it applied.
    pub async fn catch_up(&self) -> Result<usize, ProjectionError> {
        self.catch_up_generation(None).await
    }

    async fn catch_up_generation(&self, g: Option<i64>) -> Result<usize, ProjectionError> {
        let mut applied = 0;
        loop {
            match self.step(g).await? {
                Step::Applied(n) => applied += n,
                Step::Raced => {}
                Step::Idle => return Ok(applied),
            }
        }
    }

    /// Projects forever: catches up, then applies new events as they are appended.
    /// Returns only on an error (the caller decides whether to restart).
    pub async fn run(&self) -> Result<(), ProjectionError> {
        let mut wakeups = self.store.wakeups().await?;
        loop {
            if self.step(None).await? == Step::Idle {
                wakeups.wait().await?;
            }
        }
    }

    /// Rebuilds the read model from the first event into a fresh table, then points the
    /// view at it and drops the old table. Readers see the old model until the swap;
    /// a running [`Self::run`] continues on the new one from its checkpoint.
    pub async fn rebuild(&self) -> Result<usize, ProjectionError> {
        let p = self.projection.clone();
        let name = p.name().to_string();
        let next = {
            let name = name.clone();
            self.with(move |c| {
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(db)?;
                let current = active(&tx, &name).map_err(db)?.unwrap_or(1);
                let next: i64 = tx
                    .query_row(
                        "SELECT max(generation) + 1 FROM mainstay_projection_checkpoints WHERE name = ?1",
                        params![name],
                        |r| r.get(0),
                    )
                    .map_err(db)?;
                // A rebuild that died half-way leaves a generation behind: start clean.
                for g in (current + 1)..next {
                    tx.execute_batch(&format!("DROP TABLE IF EXISTS {}", table(&name, g)))
                        .map_err(db)?;
                    tx.execute(
                        "DELETE FROM mainstay_projection_checkpoints WHERE name = ?1 AND generation = ?2",
                        params![name, g],
                    )
                    .map_err(db)?;
                }
                start_generation(&tx, p.as_ref(), next).map_err(db)?;
                tx.commit().map_err(db)?;
                Ok(next)
            })
            .await?
        };
        let applied = self.catch_up_generation(Some(next)).await?;
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            let old = active(&tx, &name).map_err(db)?.unwrap_or(1);
            tx.execute(
                "UPDATE mainstay_projections SET generation = ?2 WHERE name = ?1",
                params![name, next],
            )
            .map_err(db)?;
            tx.execute_batch(&format!(
                "DROP VIEW IF EXISTS {name}; CREATE VIEW {name} AS SELECT * FROM {};
                 DROP TABLE IF EXISTS {};",
                table(&name, next),
                table(&name, old)
            ))
            .map_err(db)?;
            tx.execute(
                "DELETE FROM mainstay_projection_checkpoints WHERE name = ?1 AND generation = ?2",
                params![name, old],
            )
            .map_err(db)?;
            tx.commit().map_err(db)
        })
        .await?;
        Ok(applied)
    }
}
