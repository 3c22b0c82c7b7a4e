//! `mainstay-testkit run -- CMD ARGS…`: starts one Redis, PostgreSQL, etcd, ZooKeeper and NATS
//! on free loopback ports, exports their addresses to CMD's environment, runs CMD, stops
//! the servers, and exits with CMD's status.

use mainstay_testkit::{
    EtcdServer, HasUrl, NatsServer, PostgresServer, RedisServer, ZooKeeperServer,
};
use std::process::Command;

fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> anyhow::Result<T> {
    h.join()
        .map_err(|_| anyhow::anyhow!("server start panicked"))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match args.iter().position(|a| a == "--") {
        Some(i) if args.first().map(String::as_str) == Some("run") && i + 1 < args.len() => {
            &args[i + 1..]
        }
        _ => anyhow::bail!("usage: mainstay-testkit run -- CMD [ARGS...]"),
    };
    let started = std::time::Instant::now();
    let (redis, postgres, etcd, zookeeper, nats) = std::thread::scope(|s| {
        let r = s.spawn(RedisServer::start);
        let p = s.spawn(PostgresServer::start);
        let e = s.spawn(EtcdServer::start);
        let z = s.spawn(ZooKeeperServer::start);
        let n = s.spawn(NatsServer::start);
        anyhow::Ok((join(r)??, join(p)??, join(e)??, join(z)??, join(n)??))
    })?;
    let env = [
        ("MAINSTAY_TEST_REDIS_URL", redis.url()),
        ("MAINSTAY_TEST_POSTGRES_URL", postgres.url()),
        ("MAINSTAY_TEST_ETCD", etcd.url()),
        ("MAINSTAY_TEST_ZOOKEEPER", zookeeper.url()),
        ("MAINSTAY_TEST_NATS_URL", nats.url()),
    ];
    eprintln!(
        "mainstay-testkit: shared servers ready in {:.1?}:",
        started.elapsed()
    );
    for (k, v) in &env {
        eprintln!("  {k}={v}");
    }
    let status = Command::new(&cmd[0]).args(&cmd[1..]).envs(env).status()?;
    drop((redis, postgres, etcd, zookeeper, nats));
    std::process::exit(status.code().unwrap_or(1));
}
