//! Backends under test, each in a fresh namespace on real servers.

use mainstay_lock::{BackendKind, LockClient};
use mainstay_testkit::{
    shared_etcd, shared_postgres, shared_redis, shared_zookeeper, unique, HasUrl, RedisServer,
};
use std::any::Any;
use std::time::Duration;

/// One backend in a fresh namespace; `client()` makes independent clients on it.
pub struct Env {
    pub kind: BackendKind,
    urls: Vec<String>,
    ns: String,
    _keep: Vec<Box<dyn Any + Send>>,
}

impl Env {
    pub async fn new(kind: BackendKind) -> Env {
        let ns = unique("ms").to_lowercase();
        let mut keep: Vec<Box<dyn Any + Send>> = Vec::new();
        let urls = match kind {
            BackendKind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("locks.db").display().to_string();
                keep.push(Box::new(dir));
                vec![path]
            }
            BackendKind::Postgres => {
                let pg = shared_postgres();
                let url = pg.database().await.unwrap();
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
                let servers: Vec<RedisServer> =
                    (0..3).map(|_| RedisServer::start().unwrap()).collect();
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
        Env {
            kind,
            urls,
            ns,
            _keep: keep,
        }
    }

    /// A new, independent client (own connections; own session for ZooKeeper).
    pub async fn client(&self) -> LockClient {
        connect(self.kind, &self.urls, &self.ns).await
    }

    /// The shortest ttl the backend honours exactly (etcd leases are whole seconds, ≥ 2 s).
    pub fn short_ttl(&self) -> Duration {
        match self.kind {
            BackendKind::Etcd => Duration::from_secs(2),
            _ => Duration::from_millis(1000),
        }
    }
}

pub async fn connect(kind: BackendKind, urls: &[String], ns: &str) -> LockClient {
    use mainstay_lock::*;
    match kind {
        BackendKind::Sqlite => LockClient::new(sqlite::SqliteBackend::open(&urls[0]).unwrap()),
        BackendKind::Postgres => {
            LockClient::new(postgres::PostgresBackend::connect(&urls[0]).await.unwrap())
        }
        BackendKind::Redis => LockClient::new(
            redis::RedisBackend::connect_with_prefix(&urls[0], &format!("{ns}:"))
                .await
                .unwrap(),
        ),
        BackendKind::Redlock => LockClient::new(
            redlock::RedlockBackend::connect_with_prefix(urls, &format!("{ns}:")).unwrap(),
        ),
        BackendKind::Etcd => LockClient::new(
            etcd::EtcdBackend::connect_with_prefix(urls, &format!("{ns}/"))
                .await
                .unwrap(),
        ),
        BackendKind::Zookeeper => LockClient::new(
            zookeeper::ZookeeperBackend::connect_with(
                &urls[0],
                &format!("/{ns}"),
                Duration::from_secs(2),
            )
            .await
            .unwrap(),
        ),
    }
}

/// Generates one `#[tokio::test]` per backend calling `$body(kind)`.
#[macro_export]
macro_rules! per_backend {
    ($name:ident) => {
        mod $name {
            use mainstay_lock::BackendKind;
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
