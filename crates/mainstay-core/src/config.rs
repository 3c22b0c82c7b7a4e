//! Configuration types shared by the server and the CLI (`mainstay.toml`).
//!
//! A missing file means the embedded defaults: SQLite under `./mainstay-data/`.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which engine holds lock and election state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Embedded SQLite file (default): safe across processes on one host.
    #[default]
    Sqlite,
    /// A PostgreSQL lease table.
    Postgres,
    /// A single Redis instance.
    Redis,
    /// Redlock over several independent Redis instances.
    Redlock,
    /// An etcd cluster.
    Etcd,
    /// A ZooKeeper ensemble.
    Zookeeper,
}

impl BackendKind {
    /// All kinds, in documentation order.
    pub const ALL: [BackendKind; 6] = [
        BackendKind::Sqlite,
        BackendKind::Postgres,
        BackendKind::Redis,
        BackendKind::Redlock,
        BackendKind::Etcd,
        BackendKind::Zookeeper,
    ];

    /// The lowercase name used in config, flags and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
            BackendKind::Redis => "redis",
            BackendKind::Redlock => "redlock",
            BackendKind::Etcd => "etcd",
            BackendKind::Zookeeper => "zookeeper",
        }
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BackendKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                format!("unknown backend {s:?}: expected one of sqlite, postgres, redis, redlock, etcd, zookeeper")
            })
    }
}

/// Where a SQLite-or-PostgreSQL store is ([`BackendConfig::store_location`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl StoreLocation {
    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> BackendKind {
        match self {
            StoreLocation::Sqlite(_) => BackendKind::Sqlite,
            StoreLocation::Postgres(_) => BackendKind::Postgres,
        }
    }
}

/// Where the lock service keeps its state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// The engine. Default: `sqlite`.
    #[serde(default)]
    pub backend: BackendKind,
    /// Connection address(es): a file path for SQLite; a URL for PostgreSQL and Redis;
    /// several comma-separated URLs for Redlock; `host:port` endpoints for etcd and
    /// ZooKeeper. Default for SQLite: `<data_dir>/mainstay.db`; required for the others.
    #[serde(default)]
    pub url: Option<String>,
}

impl BackendConfig {
    /// The comma-separated parts of `url`, trimmed; empty when unset.
    pub fn urls(&self) -> Vec<String> {
        self.url
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    /// Where a store that lives in SQLite or PostgreSQL is (the event store, the saga and
    /// decision logs): the SQLite file (`url`, else `data_dir/default_file`) or the
    /// PostgreSQL URL. `what` names the store in errors and `url_from` says where its URL
    /// is set (`"flag --txn-url, env MAINSTAY_TXN_URL, or [txn] url"`).
    pub fn store_location(
        &self,
        what: &str,
        data_dir: &std::path::Path,
        default_file: &str,
        url_from: &str,
    ) -> Result<StoreLocation, String> {
        let url = self.url.as_deref().map(str::trim).filter(|u| !u.is_empty());
        match self.backend {
            BackendKind::Sqlite => Ok(StoreLocation::Sqlite(
                url.map(PathBuf::from)
                    .unwrap_or_else(|| data_dir.join(default_file)),
            )),
            BackendKind::Postgres => url
                .map(|u| StoreLocation::Postgres(u.to_string()))
                .ok_or_else(|| format!("the postgres {what} needs a url ({url_from})")),
            other => Err(format!(
                "the {what} lives in sqlite or postgres, not {}",
                other.as_str()
            )),
        }
    }

    /// The SQLite file to use when the backend is SQLite.
    pub fn sqlite_path(&self, data_dir: &std::path::Path) -> PathBuf {
        match &self.url {
            Some(p) if !p.trim().is_empty() => PathBuf::from(p.trim()),
            _ => data_dir.join("mainstay.db"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn store_location_resolves_sqlite_files_and_postgres_urls() {
        let dir = std::path::Path::new("/data");
        let at = |backend, url: Option<&str>| {
            BackendConfig {
                backend,
                url: url.map(String::from),
            }
            .store_location("saga log", dir, "txn.db", "flag --txn-url")
        };
        assert_eq!(
            at(BackendKind::Sqlite, None),
            Ok(StoreLocation::Sqlite(dir.join("txn.db")))
        );
        assert_eq!(
            at(BackendKind::Sqlite, Some(" /x.db ")),
            Ok(StoreLocation::Sqlite("/x.db".into()))
        );
        assert_eq!(
            at(BackendKind::Postgres, Some("postgres://h/db")),
            Ok(StoreLocation::Postgres("postgres://h/db".into()))
        );
        let missing = at(BackendKind::Postgres, Some("  ")).unwrap_err();
        assert!(
            missing.contains("saga log") && missing.contains("--txn-url"),
            "{missing}"
        );
        let wrong = at(BackendKind::Redis, None).unwrap_err();
        assert!(wrong.contains("not redis"), "{wrong}");
    }

    use super::*;

    #[test]
    fn backend_kind_round_trips_and_rejects_unknown() {
        for k in BackendKind::ALL {
            assert_eq!(k.as_str().parse::<BackendKind>().unwrap(), k);
        }
        let err = "mysql".parse::<BackendKind>().unwrap_err();
        assert!(err.contains("mysql"), "{err}");
    }

    #[test]
    fn urls_split_on_commas() {
        let c = BackendConfig {
            backend: BackendKind::Redlock,
            url: Some("redis://a, redis://b,".into()),
        };
        assert_eq!(
            c.urls(),
            vec!["redis://a".to_string(), "redis://b".to_string()]
        );
    }
}
