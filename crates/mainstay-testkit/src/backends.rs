//! A fresh namespace on each lock backend's real server, and [`per_backend!`] to run one
//! test body against all six.

use crate::servers::{
    shared_etcd, shared_postgres, shared_redis, shared_zookeeper, HasUrl, RedisServer,
};
use crate::unique;
use mainstay_core::config::BackendKind;
use std::any::Any;

/// A backend ready for one test: its address(es) and a namespace no other test uses (a
/// fresh database for PostgreSQL, a fresh file for SQLite, three private instances for
/// Redlock; use `ns` as the key prefix or root elsewhere). Servers it started stop on drop.
pub struct FreshBackend {
    /// Which backend.
    pub kind: BackendKind,
    /// Its address(es): a file path, a URL, or several URLs for Redlock.
    pub urls: Vec<String>,
    /// A name unique to this test (lowercase).
    pub ns: String,
    _keep: Vec<Box<dyn Any + Send>>,
}

impl std::fmt::Debug for FreshBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreshBackend")
            .field("kind", &self.kind)
            .field("urls", &self.urls)
            .finish()
    }
}

impl FreshBackend {
    /// Sets up `kind` on the shared servers (or private ones, see the crate docs).
    pub async fn new(kind: BackendKind) -> anyhow::Result<Self> {
        let ns = unique("ms").to_lowercase();
        let mut keep: Vec<Box<dyn Any + Send>> = Vec::new();
        let urls = match kind {
            BackendKind::Sqlite => {
                let dir = tempfile::tempdir()?;
                let path = dir.path().join("locks.db").display().to_string();
                keep.push(Box::new(dir));
                vec![path]
            }
            BackendKind::Postgres => {
                let pg = shared_postgres();
                let url = pg.database().await?;
                keep.push(Box::new(pg));
                vec![url]
            }
            BackendKind::Redis => {
                let r = shared_redis();
                let url = r.url();
                keep.push(Box::new(r));
                vec![url]
            }
            BackendKind::Redlock => {
                let servers = (0..3)
                    .map(|_| RedisServer::start())
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let urls = servers.iter().map(|s| s.url()).collect();
                keep.push(Box::new(servers));
                urls
            }
            BackendKind::Etcd => {
                let e = shared_etcd();
                let url = e.url();
                keep.push(Box::new(e));
                vec![url]
            }
            BackendKind::Zookeeper => {
                let z = shared_zookeeper();
                let url = z.url();
                keep.push(Box::new(z));
                vec![url]
            }
        };
        Ok(FreshBackend {
            kind,
            urls,
            ns,
            _keep: keep,
        })
    }

    /// The addresses as one `--backend-url` value (comma-separated for Redlock).
    pub fn url(&self) -> String {
        self.urls.join(",")
    }
}

/// Generates a module `$name` with one `#[tokio::test]` per backend, each calling
/// `super::$name(BackendKind::…)`.
#[macro_export]
macro_rules! per_backend {
    ($name:ident) => {
        mod $name {
            use $crate::BackendKind;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(BackendKind::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(BackendKind::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name(BackendKind::Redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redlock() {
                super::$name(BackendKind::Redlock).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                super::$name(BackendKind::Etcd).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn zookeeper() {
                super::$name(BackendKind::Zookeeper).await
            }
        }
    };
}

/// The two stores the event store, the saga and decision logs and the projections run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// An embedded SQLite file.
    Sqlite,
    /// PostgreSQL (a fresh database on the shared server).
    Postgres,
}

/// Generates a module `$name` with one multi-threaded `#[tokio::test]` per store, each
/// calling `super::$name(StoreKind::…)`.
#[macro_export]
macro_rules! per_store {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::StoreKind::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::StoreKind::Postgres).await
            }
        }
    };
}
