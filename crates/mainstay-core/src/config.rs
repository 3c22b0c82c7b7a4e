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
