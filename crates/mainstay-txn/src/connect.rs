//! Opens the saga log a [`BackendConfig`] names.

use crate::error::TxnError;
use crate::saga::SagaLog;
use crate::twopc::DecisionLog;
use mainstay_core::config::{BackendConfig, BackendKind};
use std::path::Path;
use std::sync::Arc;

/// Opens the saga log: SQLite (default file `data_dir/txn.db`) or PostgreSQL (a URL).
/// Other backends, and backends whose cargo feature is off, are a [`TxnError::Config`]
/// naming what to do.
pub async fn connect_log(
    config: &BackendConfig,
    data_dir: &Path,
) -> Result<Arc<dyn SagaLog>, TxnError> {
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
                .unwrap_or_else(|| data_dir.join("txn.db"));
            Ok(Arc::new(crate::saga::sqlite::SqliteSagaLog::open(path)?))
        }
        #[cfg(feature = "postgres")]
        BackendKind::Postgres => {
            let url = url.ok_or_else(|| {
                TxnError::Config(
                    "the postgres saga log needs a url (flag --txn-url, env MAINSTAY_TXN_URL, or [txn] url)".into(),
                )
            })?;
            Ok(Arc::new(
                crate::saga::postgres::PostgresSagaLog::connect(url).await?,
            ))
        }
        #[allow(unreachable_patterns)]
        BackendKind::Sqlite | BackendKind::Postgres => Err(TxnError::Config(format!(
            "the {} saga log is not compiled in; rebuild with the cargo feature \"{}\"",
            config.backend.as_str(),
            config.backend.as_str()
        ))),
        other => Err(TxnError::Config(format!(
            "sagas and transactions keep their log in sqlite or postgres, not {}",
            other.as_str()
        ))),
    }
}

/// Opens the 2PC decision log, in the same place as [`connect_log`] puts the saga log.
pub async fn connect_decision_log(
    config: &BackendConfig,
    data_dir: &Path,
) -> Result<Arc<dyn DecisionLog>, TxnError> {
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
                .unwrap_or_else(|| data_dir.join("txn.db"));
            Ok(Arc::new(crate::twopc::SqliteDecisionLog::open(path)?))
        }
        #[cfg(feature = "postgres")]
        BackendKind::Postgres => {
            let url = url.ok_or_else(|| {
                TxnError::Config(
                    "the postgres transaction log needs a url (flag --txn-url, env MAINSTAY_TXN_URL, or [txn] url)".into(),
                )
            })?;
            Ok(Arc::new(
                crate::twopc::PostgresDecisionLog::connect(url).await?,
            ))
        }
        #[allow(unreachable_patterns)]
        BackendKind::Sqlite | BackendKind::Postgres => Err(TxnError::Config(format!(
            "the {} transaction log is not compiled in; rebuild with the cargo feature \"{}\"",
            config.backend.as_str(),
            config.backend.as_str()
        ))),
        other => Err(TxnError::Config(format!(
            "sagas and transactions keep their log in sqlite or postgres, not {}",
            other.as_str()
        ))),
    }
}
