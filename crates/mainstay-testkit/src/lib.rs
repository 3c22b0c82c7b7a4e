//! Real servers for tests: Redis, PostgreSQL, etcd, ZooKeeper and NATS on free loopback ports in
//! temp dirs, plus fault injection — kill -9, SIGSTOP/SIGCONT, restart on the same data,
//! and a TCP proxy that can cut, black-hole or delay a connection.
//!
//! Shared servers: the `mainstay-testkit` binary starts one of each, exports their
//! addresses (`MAINSTAY_TEST_REDIS_URL`, `MAINSTAY_TEST_POSTGRES_URL`, `MAINSTAY_TEST_ETCD`,
//! `MAINSTAY_TEST_ZOOKEEPER`, `MAINSTAY_TEST_NATS_URL`) and runs the test command, so every test process shares one
//! set; tests take a fresh database, key prefix or root each ([`unique`]). Without those
//! variables (plain `cargo test`), [`shared_redis`] and friends start one server on first
//! use in the test process and share it with every later call there; a watchdog stops it
//! when the process exits. A missing server binary fails naming its Debian package.
//! Fault tests always start private servers so they can kill them.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod backends;
mod process;
mod proxy;
mod servers;

pub use backends::{FreshBackend, StoreKind};
pub use mainstay_core::config::BackendKind;
pub use process::Process;
pub use proxy::{ProxyMode, TcpProxy};
pub use servers::{
    create_database, shared_etcd, shared_nats, shared_postgres, shared_redis, shared_zookeeper,
    terminate_connections, EtcdServer, HasUrl, NatsServer, PostgresServer, RedisServer, Shared,
    ZooKeeperServer,
};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago (bound, then released). Another
/// process may take it before the caller binds it: a server started on it must be
/// checked to hold it ([`Process::listens_on`]), or better, bind port 0 and report the
/// port it got (as `mainstay serve --addr-file` does).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind a loopback port")
}

/// A name unique to this process and call: use it for a database, key prefix or root.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{}_{n}", std::process::id(), nanos)
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("timed out after {timeout:?} waiting for {what}")
}

/// Polls an async `check` every 10 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("timed out after {timeout:?} waiting for {what}")
}
