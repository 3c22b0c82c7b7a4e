//! A PostgreSQL connection pool from a URL (feature `postgres`), shared by every crate
//! that keeps state in PostgreSQL, so they all pool, time out and report errors alike.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::str::FromStr;
use std::time::Duration;

/// A pool of up to `max_size` connections to `url` (`postgres://user@host:port/db` or the
/// key=value form). Waiting for a free connection times out after 10 s; opening one is
/// retried with backoff until the [connect deadline](crate::connect::deadline) (a server
/// that is starting, restarting or briefly overloaded is waited for; a refused password
/// is not). Connects lazily: the first `get()` reports an unreachable server. The error
/// names what is wrong with the URL.
pub fn pool(url: &str, max_size: usize) -> Result<Pool, String> {
    let config = tokio_postgres::Config::from_str(url)
        .map_err(|e| format!("invalid PostgreSQL URL: {e}"))?;
    let manager = Manager::from_connect(
        config,
        RetryingConnect,
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
        // Bounds an attempt that hangs (a paused server accepts TCP but never answers).
        .create_timeout(Some(crate::connect::deadline()))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| format!("PostgreSQL pool: {e}"))
}

/// `host:port` of a PostgreSQL URL, for error messages.
pub fn address(url: &str) -> String {
    let Ok(config) = tokio_postgres::Config::from_str(url) else {
        return "(invalid URL)".into();
    };
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// A connection failure that retrying can cure: no answer or refused at the socket, the
/// server starting up or shutting down (57P03, 57P01/02), too many connections (53300),
/// a connection exception (class 08). Not an authentication or unknown-database error.
fn connect_retryable(e: &tokio_postgres::Error) -> bool {
    match e.code().map(|c| c.code()) {
        None => true,
        Some(code) => {
            matches!(code, "57P01" | "57P02" | "57P03" | "53300") || code.starts_with("08")
        }
    }
}

/// Opens connections like deadpool's own connector, retried until the connect deadline.
struct RetryingConnect;

impl deadpool_postgres::Connect for RetryingConnect {
    fn connect(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<
                        (tokio_postgres::Client, tokio::task::JoinHandle<()>),
                        tokio_postgres::Error,
                    >,
                > + Send
                + '_,
        >,
    > {
        let pg_config = pg_config.clone();
        Box::pin(async move {
            let mut backoff = crate::connect::Backoff::new(crate::connect::deadline());
            loop {
                match pg_config.connect(tokio_postgres::NoTls).await {
                    Ok((client, connection)) => {
                        let task = tokio::spawn(async move {
                            let _ = connection.await;
                        });
                        return Ok((client, task));
                    }
                    Err(e) if connect_retryable(&e) && backoff.pause().await => {}
                    Err(e) => return Err(e),
                }
            }
        })
    }
}

/// Runs `schema` (idempotent DDL) on a pooled connection: the first connection, so its
/// failure names the server (`url`'s host and port) and the connect deadline. Concurrent
/// first starts can race on the catalog; the loser's retry sees the tables.
pub async fn ensure_schema(pool: &Pool, url: &str, schema: &str) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| {
        let unreachable = match &e {
            deadpool_postgres::PoolError::Backend(e) => connect_retryable(e),
            deadpool_postgres::PoolError::Timeout(_) => true,
            _ => false,
        };
        if unreachable {
            format!(
                "postgres at {}: not reachable within the connect deadline of {:?}: {}",
                address(url),
                crate::connect::deadline(),
                e.describe()
            )
        } else {
            format!("postgres at {}: {}", address(url), e.describe())
        }
    })?;
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
            // A failure to open a connection was already retried until the connect
            // deadline; only a connection lost under a statement is repeated here.
            let c = pool.get().await.map_err(|e| Ok(e.describe()))?;
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
