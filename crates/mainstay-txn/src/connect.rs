//! Opens the saga log and the decision log a [`BackendConfig`] names.

use crate::error::TxnError;
use crate::saga::SagaLog;
use crate::twopc::DecisionLog;
use mainstay_core::config::BackendConfig;
#[allow(unused_imports)] // Used only by the arms whose store feature is on.
use mainstay_core::config::StoreLocation;
use std::path::Path;
use std::sync::Arc;

const URL_FROM: &str = "flag --txn-url, env MAINSTAY_TXN_URL, or [txn] url";

fn not_compiled(what: &str, at: &StoreLocation) -> TxnError {
    let kind = at.kind().as_str();
    TxnError::Config(format!(
        "the {kind} {what} is not compiled in; rebuild with the cargo feature \"{kind}\""
    ))
}

/// Opens the saga log: SQLite (default file `data_dir/txn.db`) or PostgreSQL (a URL).
/// Other backends, and backends whose cargo feature is off, are a [`TxnError::Config`]
/// naming what to do.
pub async fn connect_log(
    config: &BackendConfig,
    data_dir: &Path,
) -> Result<Arc<dyn SagaLog>, TxnError> {
    let at = config
        .store_location("saga log", data_dir, "txn.db", URL_FROM)
        .map_err(TxnError::Config)?;
    match at {
        #[cfg(feature = "sqlite")]
        StoreLocation::Sqlite(path) => {
            Ok(Arc::new(crate::saga::sqlite::SqliteSagaLog::open(path)?))
        }
        #[cfg(feature = "postgres")]
        StoreLocation::Postgres(url) => Ok(Arc::new(
            crate::saga::postgres::PostgresSagaLog::connect(&url).await?,
        )),
        #[allow(unreachable_patterns)]
        other => Err(not_compiled("saga log", &other)),
    }
}

/// Opens the 2PC decision log, in the same place as [`connect_log`] puts the saga log.
pub async fn connect_decision_log(
    config: &BackendConfig,
    data_dir: &Path,
) -> Result<Arc<dyn DecisionLog>, TxnError> {
    let at = config
        .store_location("transaction log", data_dir, "txn.db", URL_FROM)
        .map_err(TxnError::Config)?;
    match at {
        #[cfg(feature = "sqlite")]
        StoreLocation::Sqlite(path) => Ok(Arc::new(crate::twopc::SqliteDecisionLog::open(path)?)),
        #[cfg(feature = "postgres")]
        StoreLocation::Postgres(url) => Ok(Arc::new(
            crate::twopc::PostgresDecisionLog::connect(&url).await?,
        )),
        #[allow(unreachable_patterns)]
        other => Err(not_compiled("transaction log", &other)),
    }
}
