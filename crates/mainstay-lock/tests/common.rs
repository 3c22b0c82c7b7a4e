//! Backends under test, each in a fresh namespace on real servers.

use mainstay_lock::{BackendKind, LockClient};
use mainstay_testkit::FreshBackend;
use std::time::Duration;

/// One backend in a fresh namespace; `client()` makes independent clients on it.
pub struct Env {
    pub kind: BackendKind,
    fresh: FreshBackend,
}

impl Env {
    pub async fn new(kind: BackendKind) -> Env {
        Env {
            kind,
            fresh: FreshBackend::new(kind).await.unwrap(),
        }
    }

    /// A new, independent client (own connections; own session for ZooKeeper).
    pub async fn client(&self) -> LockClient {
        connect(self.kind, &self.fresh.urls, &self.fresh.ns).await
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
