//! Durable saga and 2PC throughput, Mainstay side by side with the raw floor in one run.
//!
//! Run: `cargo bench -p mainstay-txn --features full --bench txn`
//! (`MAINSTAY_BENCH_SAGAS=N` sagas per side, default 2000; `MAINSTAY_BENCH_CONCURRENCY=C`
//! in flight, default 64; `MAINSTAY_BENCH_TXNS=N` 2PC transactions, default 2000).
//!
//! - Sagas: five steps, each a no-op HTTP call to a local axum server. Mainstay writes 6
//!   log transitions per saga (creation, then one per step outcome with the next intent).
//!   Floors: the same 6 single-row INSERT commits per saga into the same engine, with and
//!   without the same 5 HTTP calls.
//! - 2PC: a transfer between two PostgreSQL instances (PREPARE TRANSACTION on both, the
//!   decision in a PostgreSQL log, COMMIT PREPARED on both) vs the same two UPDATEs
//!   committed in one database.
//!
//! PostgreSQL servers run with `fsync=on`; SQLite with `synchronous=FULL`.

use mainstay_testkit::{HasUrl, PostgresServer};
use mainstay_txn::saga::{
    Call, Orchestrator, SagaDefinition, SagaLog, StartOptions, StepDefinition,
};
use mainstay_txn::twopc::pg::PgResource;
use mainstay_txn::twopc::{Coordinator, Participant, ParticipantRef};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `n` jobs with at most `c` in flight; returns jobs per second.
async fn closed_loop<F, Fut>(n: usize, c: usize, job: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..c)
        .map(|_| {
            let (job, next) = (job.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    job(i).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn noop_participant() -> String {
    let app = axum::Router::new().route(
        "/{step}",
        axum::routing::post(|| async { axum::Json(serde_json::json!({})) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn definition(base: &str) -> SagaDefinition {
    SagaDefinition::new(
        "bench",
        (0..5)
            .map(|i| StepDefinition::new(format!("s{i}"), Call::post(format!("{base}/s{i}"))))
            .collect(),
    )
}

/// Sagas/s through the orchestrator: a closed loop of `c` clients, each starting a saga
/// and waiting for its completion event.
async fn sagas(log: Arc<dyn SagaLog>, base: &str, n: usize, c: usize) -> f64 {
    let o = Orchestrator::builder_arc(log).node_id("bench").build();
    o.register(&definition(base)).await.unwrap();
    let mut events = o.subscribe();
    // Completions seen, and clients waiting for one; both under one lock so a saga that
    // finishes before its client registers is not missed.
    type Book = (
        std::collections::HashSet<String>,
        std::collections::HashMap<String, tokio::sync::oneshot::Sender<()>>,
    );
    let book: Arc<std::sync::Mutex<Book>> = Default::default();
    let b2 = book.clone();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(e) if e.status.is_final() => {
                    let mut b = b2.lock().unwrap();
                    match b.1.remove(&e.saga_id) {
                        Some(tx) => {
                            let _ = tx.send(());
                        }
                        None => {
                            b.0.insert(e.saga_id);
                        }
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    panic!("the benchmark's listener lagged by {n} events")
                }
                Err(_) => return,
            }
        }
    });
    let o2 = o.clone();
    closed_loop(n, c, move |_| {
        let (o, book) = (o2.clone(), book.clone());
        async move {
            let (saga, _) = o
                .start_saga("bench", serde_json::json!({}), StartOptions::default())
                .await
                .unwrap();
            let rx = {
                let mut b = book.lock().unwrap();
                if b.0.remove(&saga.id) {
                    return;
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                b.1.insert(saga.id.clone(), tx);
                rx
            };
            rx.await.unwrap();
        }
    })
    .await
}

/// The floor: 6 INSERT commits per "saga", optionally with the 5 HTTP calls between them.
async fn floor_pg(url: &str, base: &str, n: usize, c: usize, http: bool) -> f64 {
    let pool = mainstay_core::pg::pool(url, 32).unwrap();
    pool.get()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS floor (id bigserial PRIMARY KEY, saga text, body text)",
        )
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let base = base.to_string();
    closed_loop(n, c, move |i| {
        let (pool, client, base) = (pool.clone(), client.clone(), base.clone());
        async move {
            for w in 0..6 {
                let conn = pool.get().await.unwrap();
                let st = conn
                    .prepare_cached("INSERT INTO floor (saga, body) VALUES ($1, $2)")
                    .await
                    .unwrap();
                conn.execute(
                    &st,
                    &[&i.to_string(), &"{\"status\":\"running\",\"steps\":[]}"],
                )
                .await
                .unwrap();
                drop(conn);
                if http && w < 5 {
                    client
                        .post(format!("{base}/s{w}"))
                        .json(&serde_json::json!({}))
                        .send()
                        .await
                        .unwrap();
                }
            }
        }
    })
    .await
}

async fn floor_sqlite(path: &std::path::Path, base: &str, n: usize, c: usize, http: bool) -> f64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS floor (id INTEGER PRIMARY KEY, saga TEXT, body TEXT)",
    )
    .unwrap();
    let conn = Arc::new(std::sync::Mutex::new(conn));
    let client = reqwest::Client::new();
    let base = base.to_string();
    closed_loop(n, c, move |i| {
        let (conn, client, base) = (conn.clone(), client.clone(), base.clone());
        async move {
            for w in 0..6 {
                let conn = conn.clone();
                tokio::task::spawn_blocking(move || {
                    conn.lock()
                        .unwrap()
                        .execute(
                            "INSERT INTO floor (saga, body) VALUES (?1, ?2)",
                            rusqlite::params![
                                i.to_string(),
                                "{\"status\":\"running\",\"steps\":[]}"
                            ],
                        )
                        .unwrap();
                })
                .await
                .unwrap();
                if http && w < 5 {
                    client
                        .post(format!("{base}/s{w}"))
                        .json(&serde_json::json!({}))
                        .send()
                        .await
                        .unwrap();
                }
            }
        }
    })
    .await
}

async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

fn row(name: &str, ours: f64, peer_name: &str, peer: f64) {
    println!(
        "| {name} | {ours:.0}/s | {peer_name} | {peer:.0}/s | {:.2} |",
        ours / peer
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n = env("MAINSTAY_BENCH_SAGAS", 2000);
    let c = env("MAINSTAY_BENCH_CONCURRENCY", 64);
    let txns = env("MAINSTAY_BENCH_TXNS", 2000);
    let base = noop_participant().await;
    let pg_a = PostgresServer::start_durable().unwrap();
    let pg_b = PostgresServer::start_durable().unwrap();
    let admin = pg_client(&pg_a.url()).await;
    for db in ["sagas", "floor", "twopc", "single"] {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
    }
    let url = |server: &PostgresServer, db: &str| {
        let u = server.url();
        format!(
            "{}/{db}",
            u.rsplit_once('/').map(|(head, _)| head).unwrap_or(&u)
        )
    };
    let dir = tempfile::tempdir().unwrap();

    println!("5-step sagas, no-op HTTP participants, {n} per side, {c} in flight\n");
    println!("| log | Mainstay | floor | floor rate | ratio |");
    println!("|---|---|---|---|---|");
    let log = mainstay_txn::saga::sqlite::SqliteSagaLog::open(dir.path().join("txn.db")).unwrap();
    let ours = sagas(Arc::new(log), &base, n, c).await;
    let floor_http = floor_sqlite(&dir.path().join("floor.db"), &base, n, c, true).await;
    let floor = floor_sqlite(&dir.path().join("floor2.db"), &base, n, c, false).await;
    row("SQLite", ours, "6 INSERTs + 5 HTTP calls", floor_http);
    row("SQLite", ours, "6 INSERTs", floor);
    let log = mainstay_txn::saga::postgres::PostgresSagaLog::connect(&url(&pg_a, "sagas"))
        .await
        .unwrap();
    let ours = sagas(Arc::new(log), &base, n, c).await;
    let floor_http = floor_pg(&url(&pg_a, "floor"), &base, n, c, true).await;
    let floor = floor_pg(&url(&pg_a, "floor"), &base, n, c, false).await;
    row("PostgreSQL", ours, "6 INSERTs + 5 HTTP calls", floor_http);
    row("PostgreSQL", ours, "6 INSERTs", floor);

    // 2PC: accounts 0..c in each database, one per client so transfers do not contend.
    let tc = c.min(16);
    for (server, db) in [(&pg_a, "twopc"), (&pg_b, "postgres"), (&pg_a, "single")] {
        let cl = pg_client(&url(server, db)).await;
        cl.batch_execute(&format!(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO accounts SELECT g, 1000000 FROM generate_series(0, {tc}) g;
             CREATE TABLE accounts2 (id int PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO accounts2 SELECT g, 1000000 FROM generate_series(0, {tc}) g;"
        ))
        .await
        .unwrap();
    }
    let a = PgResource::connect("a", &url(&pg_a, "twopc")).unwrap();
    let b = PgResource::connect("b", &pg_b.url()).unwrap();
    let dlog = mainstay_txn::twopc::PostgresDecisionLog::connect(&url(&pg_a, "sagas"))
        .await
        .unwrap();
    let coord = Coordinator::builder(Arc::new(dlog))
        .node_id("bench")
        .postgres(a.clone())
        .postgres(b.clone())
        .build();
    let slot = Arc::new(AtomicUsize::new(0));
    let ours = closed_loop(txns, tc, move |_| {
        let (a, b, coord) = (a.clone(), b.clone(), coord.clone());
        let id = (slot.fetch_add(1, Ordering::Relaxed) % tc) as i32;
        async move {
            let txid = Coordinator::new_txid();
            let ba = a.begin(&txid).await.unwrap();
            ba.execute(
                "UPDATE accounts SET balance = balance - 1 WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
            let bb = b.begin(&txid).await.unwrap();
            bb.execute(
                "UPDATE accounts SET balance = balance + 1 WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
            let branches: Vec<(ParticipantRef, Arc<dyn Participant>)> = vec![
                (
                    ParticipantRef {
                        name: "a".into(),
                        url: None,
                        postgres: Some("a".into()),
                    },
                    Arc::new(ba),
                ),
                (
                    ParticipantRef {
                        name: "b".into(),
                        url: None,
                        postgres: Some("b".into()),
                    },
                    Arc::new(bb),
                ),
            ];
            let out = coord.run(&txid, branches).await.unwrap();
            assert_eq!(out.decision, mainstay_txn::twopc::Decision::Commit);
        }
    })
    .await;
    let single = mainstay_core::pg::pool(&url(&pg_a, "single"), 32).unwrap();
    let slot = Arc::new(AtomicUsize::new(0));
    let peer = closed_loop(txns, tc, move |_| {
        let single = single.clone();
        let id = (slot.fetch_add(1, Ordering::Relaxed) % tc) as i32;
        async move {
            let mut conn = single.get().await.unwrap();
            let debit = conn
                .prepare_cached("UPDATE accounts SET balance = balance - 1 WHERE id = $1")
                .await
                .unwrap();
            let credit = conn
                .prepare_cached("UPDATE accounts2 SET balance = balance + 1 WHERE id = $1")
                .await
                .unwrap();
            let tx = conn.transaction().await.unwrap();
            tx.execute(&debit, &[&id]).await.unwrap();
            tx.execute(&credit, &[&id]).await.unwrap();
            tx.commit().await.unwrap();
        }
    })
    .await;
    println!("\n2PC transfers across two PostgreSQL instances, {txns} per side, {tc} in flight\n");
    println!("| what | Mainstay | peer | peer rate | ratio |");
    println!("|---|---|---|---|---|");
    row(
        "2PC (2 instances, PostgreSQL decision log)",
        ours,
        "one-database commit",
        peer,
    );
}
