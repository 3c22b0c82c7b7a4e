//! Builds a [`LockClient`] from a [`BackendConfig`].

use crate::client::LockClient;
use crate::error::LockError;
use mainstay_core::config::BackendConfig;
#[allow(unused_imports)] // Used only by the arms whose backend feature is on.
use mainstay_core::config::BackendKind;
use std::path::Path;

/// Connects to the backend `config` names; SQLite files default to `data_dir/mainstay.db`.
/// A backend whose cargo feature is off is a [`LockError::Config`] naming the feature.
pub async fn connect(config: &BackendConfig, data_dir: &Path) -> Result<LockClient, LockError> {
    let urls = config.urls();
    let need_url = || {
        LockError::Config(format!(
            "the {} backend needs a url (flag --backend-url, env MAINSTAY_LOCK_URL, or [lock] url)",
            config.backend.as_str()
        ))
    };
    let _ = (&urls, &need_url, data_dir);
    match config.backend {
        #[cfg(feature = "sqlite")]
        BackendKind::Sqlite => Ok(LockClient::new(crate::sqlite::SqliteBackend::open(
            config.sqlite_path(data_dir),
        )?)),
        #[cfg(feature = "postgres")]
        BackendKind::Postgres => {
            let url = urls.first().ok_or_else(need_url)?;
            Ok(LockClient::new(
                crate::postgres::PostgresBackend::connect(url).await?,
            ))
        }
        #[cfg(feature = "redis")]
        BackendKind::Redis => {
            let url = urls.first().ok_or_else(need_url)?;
            Ok(LockClient::new(
                crate::redis::RedisBackend::connect(url).await?,
            ))
        }
        #[cfg(feature = "redlock")]
        BackendKind::Redlock => Ok(LockClient::new(crate::redlock::RedlockBackend::connect(
            &urls,
        )?)),
        #[cfg(feature = "etcd")]
        BackendKind::Etcd => {
            if urls.is_empty() {
                return Err(need_url());
            }
            Ok(LockClient::new(
                crate::etcd::EtcdBackend::connect(&urls).await?,
            ))
        }
        #[cfg(feature = "zookeeper")]
        BackendKind::Zookeeper => {
            let url = config
                .url
                .as_deref()
                .filter(|u| !u.trim().is_empty())
                .ok_or_else(need_url)?;
            Ok(LockClient::new(
                crate::zookeeper::ZookeeperBackend::connect(url).await?,
            ))
        }
        #[allow(unreachable_patterns)]
        other => Err(LockError::Config(format!(
            "the {} backend is not compiled in; rebuild with the cargo feature \"{}\"",
            other.as_str(),
            other.as_str()
        ))),
    }
}
