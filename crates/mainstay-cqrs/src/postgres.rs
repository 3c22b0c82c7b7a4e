//! Projections into a PostgreSQL read model.

use crate::projection::{check_name, table, Step};
use crate::ProjectionError;
use async_trait::async_trait;
use mainstay_core::failpoint;
use mainstay_eventstore::{EventStore, Position, ReadAllFilter, RecordedEvent, StoreError};
use std::sync::Arc;
use tokio_postgres::{Client, GenericClient, NoTls, Transaction};

/// A read model kept in PostgreSQL tables.
#[async_trait]
pub trait PgProjection: Send + Sync + 'static {
    /// Its name: the view readers query, and the prefix of its tables.
    fn name(&self) -> &str;
    /// The events it wants.
    fn filter(&self) -> ReadAllFilter {
        ReadAllFilter::default()
    }
    /// Creates the (empty) table `table` (a fresh one for each generation).
    async fn create(&self, tx: &Transaction<'_>, table: &str) -> Result<(), tokio_postgres::Error>;
    /// Applies one event to `table`, inside the batch's transaction.
    async fn apply(
        &self,
        tx: &Transaction<'_>,
        table: &str,
        event: &RecordedEvent,
    ) -> Result<(), tokio_postgres::Error>;
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mainstay_projections (
    name       text PRIMARY KEY,
    generation bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS mainstay_projection_checkpoints (
    name          text NOT NULL,
    generation    bigint NOT NULL,
    commit_pos    bigint NOT NULL,
    prepare_pos   bigint NOT NULL,
    updated_at_ms bigint NOT NULL,
    PRIMARY KEY (name, generation)
);";

fn db(e: tokio_postgres::Error) -> ProjectionError {
    use mainstay_core::pg::Describe;
    if mainstay_core::pg::connection_lost(&e) {
        ProjectionError::ConnectionLost(e.describe())
    } else {
        ProjectionError::ReadModel(e.describe())
    }
}

/// A connection whose driver runs in the background (and logs how it ended).
async fn connect_client(url: &str) -> Result<Client, ProjectionError> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.map_err(db)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "projection connection ended");
        }
    });
    Ok(client)
}

const RECONNECT_MIN: std::time::Duration = std::time::Duration::from_millis(100);
const RECONNECT_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs one projection into a PostgreSQL database (often the event store's own).
pub struct PgProjector<P> {
    url: String,
    client: tokio::sync::Mutex<Client>,
    store: Arc<dyn EventStore>,
    projection: Arc<P>,
    batch: usize,
}

async fn checkpoint(
    c: &impl GenericClient,
    name: &str,
    g: i64,
    lock: bool,
) -> Result<Option<Position>, ProjectionError> {
    let sql = format!(
        "SELECT commit_pos, prepare_pos FROM mainstay_projection_checkpoints
         WHERE name = $1 AND generation = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    Ok(c.query_opt(&sql, &[&name, &g])
        .await
        .map_err(db)?
        .map(|r| Position {
            commit: r.get::<_, i64>(0) as u64,
            prepare: r.get::<_, i64>(1) as u64,
        }))
}

async fn active(
    c: &impl GenericClient,
    name: &str,
    lock: bool,
) -> Result<Option<i64>, ProjectionError> {
    let sql = format!(
        "SELECT generation FROM mainstay_projections WHERE name = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    Ok(c.query_opt(&sql, &[&name])
        .await
        .map_err(db)?
        .map(|r| r.get(0)))
}

async fn start_generation<P: PgProjection>(
    tx: &Transaction<'_>,
    p: &P,
    g: i64,
) -> Result<(), ProjectionError> {
    p.create(tx, &table(p.name(), g)).await.map_err(db)?;
    tx.execute(
        "INSERT INTO mainstay_projection_checkpoints
             (name, generation, commit_pos, prepare_pos, updated_at_ms) VALUES ($1, $2, 0, 0, 0)",
        &[&p.name(), &g],
    )
    .await
    .map_err(db)?;
    Ok(())
}

impl<P: PgProjection> PgProjector<P> {
    /// Connects to the read model's database at `url` (creating generation 1, its table
    /// and the view on first use).
    pub async fn connect(
        url: &str,
        store: Arc<dyn EventStore>,
        projection: P,
    ) -> Result<Self, ProjectionError> {
        check_name(projection.name())?;
        let mut client = connect_client(url).await?;
        // Concurrent first starts: the advisory lock orders them.
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock(7202611)", &[])
            .await
            .map_err(db)?;
        tx.batch_execute(SCHEMA).await.map_err(db)?;
        let name = projection.name().to_string();
        if active(&tx, &name, true).await?.is_none() {
            start_generation(&tx, &projection, 1).await?;
            tx.execute(
                "INSERT INTO mainstay_projections (name, generation) VALUES ($1, 1)",
                &[&name],
            )
            .await
            .map_err(db)?;
            tx.batch_execute(&format!(
                "CREATE VIEW {name} AS SELECT * FROM {}",
                table(&name, 1)
            ))
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(PgProjector {
            url: url.to_string(),
            client: tokio::sync::Mutex::new(client),
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

    /// The active generation and its checkpoint.
    pub async fn checkpoint(&self) -> Result<(i64, Position), ProjectionError> {
        let c = self.client.lock().await;
        let name = self.projection.name();
        let g = active(&*c, name, false).await?.unwrap_or(1);
        let at = checkpoint(&*c, name, g, false)
            .await?
            .unwrap_or(Position::START);
        Ok((g, at))
    }

    /// The table the view currently points at.
    pub async fn table(&self) -> Result<String, ProjectionError> {
        let (g, _) = self.checkpoint().await?;
        Ok(table(self.projection.name(), g))
    }

    async fn step(&self, g: Option<i64>) -> Result<Step, ProjectionError> {
        let name = self.projection.name();
        let (g, seen) = {
            let c = self.client.lock().await;
            let g = match g {
                Some(g) => g,
                None => active(&*c, name, false).await?.unwrap_or(1),
            };
            let at = checkpoint(&*c, name, g, false).await?.ok_or_else(|| {
                ProjectionError::ReadModel(format!("generation {g} of {name} is gone"))
            })?;
            (g, at)
        };
        let events = self
            .store
            .read_all(seen, self.batch, &self.projection.filter())
            .await?;
        if events.is_empty() {
            return Ok(Step::Idle);
        }
        let mut c = self.client.lock().await;
        let tx = c.transaction().await.map_err(db)?;
        // Another projector may have applied these already: the checkpoint decides.
        if checkpoint(&tx, name, g, true).await? != Some(seen) {
            return Ok(Step::Raced);
        }
        let t = table(name, g);
        for e in &events {
            self.projection.apply(&tx, &t, e).await.map_err(db)?;
        }
        let last = events.last().expect("not empty").position;
        tx.execute(
            "UPDATE mainstay_projection_checkpoints SET commit_pos = $3, prepare_pos = $4,
                 updated_at_ms = $5 WHERE name = $1 AND generation = $2",
            &[
                &name,
                &g,
                &(last.commit as i64),
                &(last.prepare as i64),
                &(mainstay_core::clock::now_ms() as i64),
            ],
        )
        .await
        .map_err(db)?;
        failpoint::hit("projection.before_commit");
        tx.commit().await.map_err(db)?;
        failpoint::hit("projection.after_commit");
        Ok(Step::Applied(events.len()))
    }

    /// Projects everything `$all` serves now into the active generation; returns how
    /// many events it applied.
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
    ///
    /// A lost connection to the read model's database (a restart, a failover, a network
    /// cut) is not an error here: the batch in flight committed with its checkpoint or
    /// not at all, so `run` reconnects — backing off from 100 ms to 5 s — and goes on
    /// from the stored checkpoint, still exactly once. Event store backend failures are
    /// retried with the same backoff. It returns on any other error (a projection that
    /// fails to apply an event, say), and the caller decides whether to restart.
    /// [`Self::catch_up`] and [`Self::rebuild`] return every error.
    pub async fn run(&self) -> Result<(), ProjectionError> {
        let mut wakeups = self.store.wakeups().await?;
        let mut backoff = RECONNECT_MIN;
        loop {
            let outcome = match self.step(None).await {
                Ok(Step::Idle) => wakeups.wait().await.map_err(ProjectionError::from),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => backoff = RECONNECT_MIN,
                Err(ProjectionError::ConnectionLost(e)) => {
                    tracing::warn!(projection = self.projection.name(), error = %e,
                        "read model connection lost; reconnecting");
                    loop {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(RECONNECT_MAX);
                        match connect_client(&self.url).await {
                            Ok(c) => {
                                *self.client.lock().await = c;
                                break;
                            }
                            Err(e) => tracing::warn!(error = %e, "reconnect failed"),
                        }
                    }
                }
                // The event store's own connections failing (the same restart or cut):
                // reading again later is safe.
                Err(ProjectionError::Store(StoreError::Backend { message, .. })) => {
                    tracing::warn!(projection = self.projection.name(), error = %message,
                        "event store failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Rebuilds the read model from the first event into a fresh table, then points the
    /// view at it and drops the old table, in one transaction. Readers see the old model
    /// until the swap; a running [`Self::run`] continues on the new one.
    pub async fn rebuild(&self) -> Result<usize, ProjectionError> {
        let name = self.projection.name().to_string();
        let next = {
            let mut c = self.client.lock().await;
            let tx = c.transaction().await.map_err(db)?;
            let current = active(&tx, &name, true).await?.unwrap_or(1);
            let next: i64 = tx
                .query_one(
                    "SELECT max(generation) + 1 FROM mainstay_projection_checkpoints WHERE name = $1",
                    &[&name],
                )
                .await
                .map_err(db)?
                .get(0);
            for g in (current + 1)..next {
                tx.batch_execute(&format!("DROP TABLE IF EXISTS {}", table(&name, g)))
                    .await
                    .map_err(db)?;
                tx.execute(
                    "DELETE FROM mainstay_projection_checkpoints WHERE name = $1 AND generation = $2",
                    &[&name, &g],
                )
                .await
                .map_err(db)?;
            }
            start_generation(&tx, self.projection.as_ref(), next).await?;
            tx.commit().await.map_err(db)?;
            next
        };
        let applied = self.catch_up_generation(Some(next)).await?;
        let mut c = self.client.lock().await;
        let tx = c.transaction().await.map_err(db)?;
        let old = active(&tx, &name, true).await?.unwrap_or(1);
        tx.execute(
            "UPDATE mainstay_projections SET generation = $2 WHERE name = $1",
            &[&name, &next],
        )
        .await
        .map_err(db)?;
        tx.batch_execute(&format!(
            "DROP VIEW IF EXISTS {name}; CREATE VIEW {name} AS SELECT * FROM {};
             DROP TABLE IF EXISTS {};",
            table(&name, next),
            table(&name, old)
        ))
        .await
        .map_err(db)?;
        tx.execute(
            "DELETE FROM mainstay_projection_checkpoints WHERE name = $1 AND generation = $2",
            &[&name, &old],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(applied)
    }
}
