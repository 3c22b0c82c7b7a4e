//! Opens the event store a [`BackendConfig`] names.

use crate::{EventStore, StoreError};
use mainstay_core::config::{BackendConfig, BackendKind};
use std::path::Path;
use std::sync::Arc;

/// Opens the event store: SQLite (default file `data_dir/events.db`) or PostgreSQL (a
/// URL). Other backends, and backends whose cargo feature is off, are a
/// [`StoreError::Config`] naming what to do.
pub async fn connect(
    config: &BackendConfig,
    data_dir: &Path,
) -> Result<Arc<dyn EventStore>, StoreError> {
    let url = config
        .url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty());
    let _ = (url, data_dir);
    match config.backend {
        #[cfg(feature = "sqlite")]
        BackendKind::Sqlite => {
            let path = url
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| data_dir.join("events.db"));
            Ok(Arc::new(crate::sqlite::SqliteEventStore::open(path)?))
        }
        #[cfg(feature = "postgres")]
        BackendKind::Postgres => {
            let url = url.ok_or_else(|| {
                StoreError::Config(
                    "the postgres event store needs a url (flag --events-url, env MAINSTAY_EVENTS_URL, or [events] url)".into(),
                )
            })?;
            Ok(Arc::new(
                crate::postgres::PostgresEventStore::connect(url).await?,
            ))
        }
        #[allow(unreachable_patterns)]
        BackendKind::Sqlite | BackendKind::Postgres => Err(StoreError::Config(format!(
            "the {} event store is not compiled in; rebuild with the cargo feature \"{}\"",
            config.backend.as_str(),
            config.backend.as_str()
        ))),
        other => Err(StoreError::Config(format!(
            "the event store lives in sqlite or postgres, not {}",
            other.as_str()
        ))),
    }
}
