//! A PostgreSQL connection pool from a URL (feature `postgres`), shared by every crate
//! that keeps state in PostgreSQL, so they all pool, time out and report errors alike.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::str::FromStr;
use std::time::Duration;

/// A pool of up to `max_size` connections to `url` (`postgres://user@host:port/db` or the
/// key=value form). Waiting for a connection and opening one each time out after 10 s.
/// Connects lazily: the first `get()` reports an unreachable server. The error names what
/// is wrong with the URL.
pub fn pool(url: &str, max_size: usize) -> Result<Pool, String> {
    let config = tokio_postgres::Config::from_str(url)
        .map_err(|e| format!("invalid PostgreSQL URL: {e}"))?;
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        // The most recently used connection first: a few warm server processes serve a
        // light load instead of every request waking a different (cold) one.
        .queue_mode(deadpool_postgres::QueueMode::Lifo)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| format!("PostgreSQL pool: {e}"))
}

/// Runs `schema` (idempotent DDL) on a pooled connection. Concurrent first starts can
/// race on the catalog; the loser's retry sees the tables.
pub async fn ensure_schema(pool: &Pool, schema: &str) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| e.describe())?;
    if client.batch_execute(schema).await.is_err() {
        client
            .batch_execute(schema)
            .await
            .map_err(|e| e.describe())?;
    }
    Ok(())
}

/// An error as text with its cause: tokio-postgres prints a server error as just
/// "db error", and the message the user needs (what failed and why) is in its source.
pub trait Describe {
    /// `kind: cause: …`, following the source chain.
    fn describe(&self) -> String;
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

impl Describe for tokio_postgres::Error {
    fn describe(&self) -> String {
        chain(self)
    }
}

impl Describe for deadpool_postgres::PoolError {
    fn describe(&self) -> String {
        chain(self)
    }
}

impl Describe for String {
    fn describe(&self) -> String {
        self.clone()
    }
}

impl Describe for &str {
    fn describe(&self) -> String {
        self.to_string()
    }
}

type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];

/// A pooled connection with `sql` prepared on it, once per connection: a plain `&str`
/// query would cost a Parse round trip every time.
pub async fn prepared(
    pool: &Pool,
    sql: &str,
) -> Result<(deadpool_postgres::Object, tokio_postgres::Statement), String> {
    let c = pool.get().await.map_err(|e| e.describe())?;
    let st = c.prepare_cached(sql).await.map_err(|e| e.describe())?;
    Ok((c, st))
}

/// [`prepared`], then at most one row.
pub async fn query_opt(
    pool: &Pool,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<tokio_postgres::Row>, String> {
    let (c, st) = prepared(pool, sql).await?;
    c.query_opt(&st, params).await.map_err(|e| e.describe())
}

/// [`prepared`], then exactly one row.
pub async fn query_one(
    pool: &Pool,
    sql: &str,
    params: Params<'_>,
) -> Result<tokio_postgres::Row, String> {
    let (c, st) = prepared(pool, sql).await?;
    c.query_one(&st, params).await.map_err(|e| e.describe())
}

/// [`prepared`], then all rows.
pub async fn query(
    pool: &Pool,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<tokio_postgres::Row>, String> {
    let (c, st) = prepared(pool, sql).await?;
    c.query(&st, params).await.map_err(|e| e.describe())
}

/// [`prepared`], then the number of rows affected.
pub async fn execute(pool: &Pool, sql: &str, params: Params<'_>) -> Result<u64, String> {
    let (c, st) = prepared(pool, sql).await?;
    c.execute(&st, params).await.map_err(|e| e.describe())
}

/// The server ended the connection: terminated by an administrator (57P01), shutting down
/// (57P02), not accepting connections yet (57P03), a connection exception (class 08), or
/// the socket closed. A statement that failed so did not run — or, if it was a commit,
/// may have run with the reply lost.
pub fn connection_lost(e: &tokio_postgres::Error) -> bool {
    let code = e.code().map(|c| c.code()).unwrap_or_default();
    e.is_closed() || matches!(code, "57P01" | "57P02" | "57P03") || code.starts_with("08")
}

/// How often a statement safe to repeat is repeated after losing its connection: one
/// more than a pool of 32 can hold dead connections after a restart (each attempt uses
/// one up).
pub const LOST_RETRIES: usize = 33;

/// [`query`] for a statement that only reads: repeated on a fresh connection when the
/// server ended the one it ran on (a restart, a failover, a cut) — a read is safe to
/// repeat.
pub async fn read(
    pool: &Pool,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<tokio_postgres::Row>, String> {
    let mut attempts = 0;
    loop {
        let outcome = async {
            let c = pool.get().await.map_err(|e| match e {
                deadpool_postgres::PoolError::Backend(e) => Err(e),
                e => Ok(e.describe()),
            })?;
            let st = c.prepare_cached(sql).await.map_err(Err)?;
            c.query(&st, params).await.map_err(Err)
        }
        .await;
        match outcome {
            Ok(rows) => return Ok(rows),
            Err(Err(e)) if connection_lost(&e) && attempts < LOST_RETRIES => attempts += 1,
            Err(Err(e)) => return Err(e.describe()),
            Err(Ok(text)) => return Err(text),
        }
    }
}

/// [`read`] for a write that leaves the same state however often it runs (an upsert of
/// the same values: a checkpoint, a snapshot, stream metadata): repeated on a fresh
/// connection when the server ended the one it ran on — also when the first run had
/// committed and only its reply was lost.
pub async fn write_idempotent(
    pool: &Pool,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<tokio_postgres::Row>, String> {
    read(pool, sql, params).await
}

/// [`read`], then at most one row.
pub async fn read_opt(
    pool: &Pool,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<tokio_postgres::Row>, String> {
    let mut rows = read(pool, sql, params).await?;
    if rows.len() > 1 {
        return Err(format!(
            "query returned {} rows, expected at most one",
            rows.len()
        ));
    }
    Ok(rows.pop())
}
