//! Opens the event store a [`BackendConfig`] names.

use crate::{EventStore, StoreError};
use mainstay_core::config::BackendConfig;
#[allow(unused_imports)] // Used only by the arms whose store feature is on.
use mainstay_core::config::StoreLocation;
use std::path::Path;
use std::sync::Arc;

/// Opens the event store: SQLite (default file `data_dir/events.db`) or PostgreSQL (a
/// URL). Other backends, and backends whose cargo feature is off, are a
/// [`StoreError::Config`] naming what to do.
pub async fn connect(
    config: &BackendConfig,
    data_dir: &Path,
) -> Result<Arc<dyn EventStore>, StoreError> {
    let at = config
        .store_location(
            "event store",
            data_dir,
            "events.db",
            "flag --events-url, env MAINSTAY_EVENTS_URL, or [events] url",
        )
        .map_err(StoreError::Config)?;
    match at {
        #[cfg(feature = "sqlite")]
        StoreLocation::Sqlite(path) => Ok(Arc::new(crate::sqlite::SqliteEventStore::open(path)?)),
        #[cfg(feature = "postgres")]
        StoreLocation::Postgres(url) => Ok(Arc::new(
            crate::postgres::PostgresEventStore::connect(&url).await?,
        )),
        #[allow(unreachable_patterns)]
        other => {
            let kind = other.kind().as_str();
            Err(StoreError::Config(format!(
                "the {kind} event store is not compiled in; rebuild with the cargo feature \"{kind}\""
            )))
        }
    }
}
