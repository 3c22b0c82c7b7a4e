//! The one way Mainstay opens an embedded SQLite file: parent directories created, a busy
//! timeout, WAL with `synchronous=FULL` (an acknowledged write survives power loss), the
//! caller's schema applied.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One connection shared by async code: each call runs on tokio's blocking pool (SQLite
/// blocks), one at a time. A call that panicked leaves the connection usable for the next.
#[derive(Clone, Debug)]
pub struct SharedConnection(Arc<Mutex<rusqlite::Connection>>);

impl SharedConnection {
    /// Shares `conn` (from [`open`]).
    pub fn new(conn: rusqlite::Connection) -> Self {
        SharedConnection(Arc::new(Mutex::new(conn)))
    }

    /// Runs `f` with the connection on the blocking pool and returns what it returns.
    /// `Err` only when `f` could not finish: it panicked, or the runtime is shutting down.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> R + Send + 'static,
    ) -> Result<R, String> {
        let conn = self.0.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock().unwrap_or_else(|p| p.into_inner())))
            .await
            .map_err(|e| format!("SQLite call did not finish: {e}"))
    }
}

/// Opens (creating if needed) the database at `path` and runs `schema` (idempotent DDL).
/// Writers wait up to `busy` for one another. Errors name the file.
pub fn open(path: &Path, schema: &str, busy: Duration) -> Result<rusqlite::Connection, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
    }
    let at = |e: rusqlite::Error| format!("{}: {e}", path.display());
    let conn = rusqlite::Connection::open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    conn.busy_timeout(busy).map_err(at)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(at)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(at)?;
    conn.execute_batch(schema).map_err(at)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shared_connection_runs_calls_and_survives_a_panicking_one() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(
            &dir.path().join("s.db"),
            "CREATE TABLE IF NOT EXISTS t (x INTEGER)",
            Duration::from_secs(1),
        )
        .unwrap();
        let shared = SharedConnection::new(c);
        shared
            .run(|c| c.execute("INSERT INTO t VALUES (7)", []))
            .await
            .unwrap()
            .unwrap();
        let err = shared.run(|_| -> () { panic!("boom") }).await.unwrap_err();
        assert!(err.contains("did not finish"), "{err}");
        let n: i64 = shared
            .run(|c| c.query_row("SELECT sum(x) FROM t", [], |r| r.get(0)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 7);
    }

    #[test]
    fn creates_directories_applies_the_schema_and_names_the_file_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/x.db");
        let c = open(
            &path,
            "CREATE TABLE IF NOT EXISTS t (x INTEGER)",
            Duration::from_secs(1),
        )
        .unwrap();
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        c.execute("INSERT INTO t VALUES (1)", []).unwrap();
        drop(c);
        // Reopening keeps the data (the schema is idempotent).
        let c = open(
            &path,
            "CREATE TABLE IF NOT EXISTS t (x INTEGER)",
            Duration::from_secs(1),
        )
        .unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        let err = open(&path, "NOT SQL", Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("x.db"), "{err}");
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let err = open(&dir.path().join("file/y.db"), "", Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("cannot create data directory"), "{err}");
    }
}
