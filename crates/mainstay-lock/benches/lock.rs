//! Lock acquire+release cycles per backend, Mainstay side by side with the raw floor of the
//! same engine (and the `rslock` crate for Redlock), in one run. Prints a markdown table
//! with cycles/s, p50/p99 per cycle, and the ratio Mainstay / peer.
//!
//! Run: `cargo bench -p mainstay-lock --features full --bench lock`
//! (`MAINSTAY_BENCH_CYCLES=N` sets cycles per side; default 2000, a quarter for etcd/ZooKeeper).
//! Each side runs in alternating blocks so drift on a busy machine hits both equally.

use mainstay_lock::{AcquireOptions, LockClient};
use mainstay_testkit::{EtcdServer, HasUrl, PostgresServer, RedisServer, ZooKeeperServer};
use std::future::Future;
use std::time::{Duration, Instant};

struct Stats {
    samples: Vec<Duration>,
    total: Duration,
}

impl Stats {
    fn new() -> Self {
        Stats {
            samples: Vec::new(),
            total: Duration::ZERO,
        }
    }
    fn rate(&self) -> f64 {
        self.samples.len() as f64 / self.total.as_secs_f64()
    }
    fn pct(&mut self, p: f64) -> f64 {
        self.samples.sort();
        let i = ((self.samples.len() as f64 - 1.0) * p).round() as usize;
        self.samples[i].as_secs_f64() * 1e6
    }
}

async fn block<F, Fut>(stats: &mut Stats, n: usize, f: &mut F)
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        f(i).await;
        stats.samples.push(t.elapsed());
    }
    stats.total += start.elapsed();
}

/// Runs `ours` and `peer` for `cycles` each, alternating blocks of 100, after a warm-up.
async fn compare<A, AF, B, BF>(cycles: usize, mut ours: A, mut peer: B) -> (Stats, Stats)
where
    A: FnMut(usize) -> AF,
    AF: Future<Output = ()>,
    B: FnMut(usize) -> BF,
    BF: Future<Output = ()>,
{
    let (mut a, mut b) = (Stats::new(), Stats::new());
    block(&mut Stats::new(), (cycles / 10).max(10), &mut ours).await;
    block(&mut Stats::new(), (cycles / 10).max(10), &mut peer).await;
    let step = 100.min(cycles);
    let mut done = 0;
    while done < cycles {
        block(&mut a, step, &mut ours).await;
        block(&mut b, step, &mut peer).await;
        done += step;
    }
    (a, b)
}

fn row(backend: &str, peer: &str, (mut a, mut b): (Stats, Stats)) -> f64 {
    let ratio = a.rate() / b.rate();
    println!(
        "| {backend} | {:.0} | {:.0} | {:.0} | {peer} | {:.0} | {:.0} | {:.0} | **{ratio:.2}×** |",
        a.rate(),
        a.pct(0.5),
        a.pct(0.99),
        b.rate(),
        b.pct(0.5),
        b.pct(0.99)
    );
    ratio
}

async fn cycle(client: &LockClient, name: &str) {
    let lease = client
        .try_acquire(
            name,
            &AcquireOptions::ttl(Duration::from_secs(30)).owner("bench"),
        )
        .await
        .expect("acquire");
    assert!(client
        .release(name, &lease.lease_id)
        .await
        .expect("release"));
}

/// Lock cycles on `pg` through our backend and through the raw floor, alternated.
async fn postgres_cycles(pg: &PostgresServer, cycles: usize) -> (Stats, Stats) {
    let url = pg.database().await.unwrap();
    let ours = LockClient::new(
        mainstay_lock::postgres::PostgresBackend::connect(&url)
            .await
            .unwrap(),
    );
    let (raw, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    raw.batch_execute(
        "CREATE TABLE raw_locks (name text PRIMARY KEY, owner text, expires_at timestamptz)",
    )
    .await
    .unwrap();
    let ins = raw.prepare("INSERT INTO raw_locks VALUES ($1, 'bench', now() + interval '30 s') ON CONFLICT DO NOTHING").await.unwrap();
    let del = raw
        .prepare("DELETE FROM raw_locks WHERE name = $1 AND owner = 'bench'")
        .await
        .unwrap();
    compare(
        cycles,
        |_| cycle(&ours, "p"),
        |_| async {
            assert_eq!(raw.execute(&ins, &[&"p"]).await.unwrap(), 1);
            assert_eq!(raw.execute(&del, &[&"p"]).await.unwrap(), 1);
        },
    )
    .await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cycles: usize = std::env::var("MAINSTAY_BENCH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let slow = (cycles / 4).max(50);
    // MAINSTAY_BENCH_ONLY=redis,postgres runs a subset.
    let only = std::env::var("MAINSTAY_BENCH_ONLY").unwrap_or_default();
    let run = |b: &str| only.is_empty() || only.split(',').any(|o| o == b);
    println!("Lock acquire+release cycles, one client, sequential; {cycles} cycles per side ({slow} for etcd/ZooKeeper).\n");
    println!("| backend | Mainstay cycles/s | p50 µs | p99 µs | peer | peer cycles/s | p50 µs | p99 µs | ratio |");
    println!("|---|---|---|---|---|---|---|---|---|");

    // SQLite: our backend vs the same upsert/update statements on a bare rusqlite connection.
    if run("sqlite") {
        let dir = tempfile::tempdir().unwrap();
        let ours = LockClient::new(
            mainstay_lock::sqlite::SqliteBackend::open(dir.path().join("m.db")).unwrap(),
        );
        let raw = std::sync::Arc::new(std::sync::Mutex::new(
            rusqlite::Connection::open(dir.path().join("raw.db")).unwrap(),
        ));
        {
            let c = raw.lock().unwrap();
            c.pragma_update(None, "journal_mode", "WAL").unwrap();
            c.pragma_update(None, "synchronous", "FULL").unwrap();
            c.execute_batch(
                "CREATE TABLE l (name TEXT PRIMARY KEY, owner TEXT, token INTEGER NOT NULL)",
            )
            .unwrap();
        }
        let r = compare(
            cycles,
            |_| cycle(&ours, "s"),
            |_| {
                let raw = raw.clone();
                async move {
                    tokio::task::spawn_blocking(move || {
                        let c = raw.lock().unwrap();
                        c.prepare_cached("INSERT INTO l VALUES ('s', 'bench', 1) ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, token = token + 1")
                            .unwrap()
                            .execute([])
                            .unwrap();
                        c.prepare_cached("UPDATE l SET owner = NULL WHERE name = 's'").unwrap().execute([]).unwrap();
                    })
                    .await
                    .unwrap();
                }
            },
        )
        .await;
        row("sqlite", "raw upsert + update (rusqlite, same pragmas)", r);
    }

    // PostgreSQL: our backend vs raw INSERT … ON CONFLICT DO NOTHING + DELETE, on the test
    // kit's server (fsync=off, as the tests run) and on a durable one (fsync=on).
    if run("postgres") {
        let pg = PostgresServer::start().unwrap();
        let r = postgres_cycles(&pg, cycles).await;
        row(
            "postgres (fsync=off)",
            "raw INSERT + DELETE (tokio-postgres)",
            r,
        );
        let pg = PostgresServer::start_durable().unwrap();
        let r = postgres_cycles(&pg, cycles).await;
        row(
            "postgres (fsync=on)",
            "raw INSERT + DELETE (tokio-postgres)",
            r,
        );
    }

    // Redis: our backend vs raw SET NX PX + EVALSHA compare-and-delete.
    let mut redis_ratio = f64::NAN;
    if run("redis") {
        let server = RedisServer::start().unwrap();
        let ours = LockClient::new(
            mainstay_lock::redis::RedisBackend::connect(&server.url())
                .await
                .unwrap(),
        );
        let client = redis::Client::open(server.url()).unwrap();
        let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
        let del = redis::Script::new("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end");
        let r = compare(
            cycles,
            |_| cycle(&ours, "r"),
            |_| {
                let mut conn = conn.clone();
                let del = &del;
                async move {
                    let token = mainstay_core::id::unguessable();
                    let ok: Option<String> = redis::cmd("SET")
                        .arg("raw:r")
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(30_000)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    assert!(ok.is_some());
                    let n: i64 = del
                        .key("raw:r")
                        .arg(&token)
                        .invoke_async(&mut conn)
                        .await
                        .unwrap();
                    assert_eq!(n, 1);
                }
            },
        )
        .await;
        redis_ratio = row("redis", "raw SET NX PX + EVALSHA del (redis-rs)", r);
        // The seed's client: EVAL with the script text on every release.
        let del_src = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
        let r = compare(
            cycles,
            |_| cycle(&ours, "r"),
            |_| {
                let mut conn = conn.clone();
                async move {
                    let token = mainstay_core::id::unguessable();
                    let ok: Option<String> = redis::cmd("SET")
                        .arg("raw:r")
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(30_000)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    assert!(ok.is_some());
                    let n: i64 = redis::cmd("EVAL")
                        .arg(del_src)
                        .arg(1)
                        .arg("raw:r")
                        .arg(&token)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    assert_eq!(n, 1);
                }
            },
        )
        .await;
        row(
            "redis",
            "raw SET NX PX + EVAL del, script sent each time (the seed's client)",
            r,
        );
    }

    // Redlock over 3 instances: our backend (with fencing write-back) vs the rslock crate.
    if run("redlock") {
        let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start().unwrap()).collect();
        let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
        let ours = LockClient::new(mainstay_lock::redlock::RedlockBackend::connect(&urls).unwrap());
        let peer = rslock::LockManager::new(urls.clone());
        let r = compare(
            cycles,
            |_| cycle(&ours, "rl"),
            |_| async {
                let lock = peer
                    .lock(b"rslock-bench".as_slice(), Duration::from_secs(30))
                    .await
                    .expect("rslock");
                peer.unlock(&lock).await;
            },
        )
        .await;
        row("redlock (3)", "rslock 0.10 (no fencing token)", r);
    }

    // etcd: our backend vs raw lease grant + put-if-absent txn + lease revoke.
    if run("etcd") {
        let server = EtcdServer::start().unwrap();
        let ours = LockClient::new(
            mainstay_lock::etcd::EtcdBackend::connect(&[server.url()])
                .await
                .unwrap(),
        );
        let raw = etcd_client::Client::connect([server.url()], None)
            .await
            .unwrap();
        let r = compare(
            slow,
            |_| cycle(&ours, "e"),
            |_| {
                let mut c = raw.clone();
                async move {
                    use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
                    let lease = c.lease_grant(30, None).await.unwrap().id();
                    let txn = Txn::new()
                        .when([Compare::create_revision("raw/e", CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(
                            "raw/e",
                            "bench",
                            Some(PutOptions::new().with_lease(lease)),
                        )]);
                    assert!(c.txn(txn).await.unwrap().succeeded());
                    c.lease_revoke(lease).await.unwrap();
                }
            },
        )
        .await;
        row(
            "etcd",
            "raw lease grant + txn put + revoke (etcd-client)",
            r,
        );
    }

    // ZooKeeper: our backend vs raw create ephemeral-sequential + delete.
    if run("zookeeper") {
        let server = ZooKeeperServer::start().unwrap();
        let ours = LockClient::new(
            mainstay_lock::zookeeper::ZookeeperBackend::connect(&server.url())
                .await
                .unwrap(),
        );
        let raw = zookeeper_client::Client::connect(&server.url())
            .await
            .unwrap();
        raw.create(
            "/raw",
            b"",
            &zookeeper_client::CreateMode::Persistent
                .with_acls(zookeeper_client::Acls::anyone_all()),
        )
        .await
        .unwrap();
        let r = compare(
            slow,
            |_| cycle(&ours, "z"),
            |_| async {
                let opts = zookeeper_client::CreateMode::EphemeralSequential
                    .with_acls(zookeeper_client::Acls::anyone_all());
                let (_, seq) = raw.create("/raw/lock-", b"bench", &opts).await.unwrap();
                raw.delete(&format!("/raw/lock-{seq}"), None).await.unwrap();
            },
        )
        .await;
        row(
            "zookeeper",
            "raw create ephemeral-sequential + delete (zookeeper-client)",
            r,
        );
    }

    println!("\nRedis backend / raw floor: {redis_ratio:.2}× (target ≥ 0.90×)");
}
