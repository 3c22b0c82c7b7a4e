//! Event store throughput and subscription lag, Mainstay side by side with the raw floor
//! in one run.
//!
//! Run: `cargo bench -p mainstay-eventstore --features full --bench events`
//! (`MAINSTAY_BENCH_SECS=S` seconds per measurement, default 3;
//! `MAINSTAY_BENCH_ONLY=sqlite|postgres` to run one engine;
//! `MAINSTAY_BENCH_APPEND=16x10,1x1` to measure only those writers×batch shapes).
//!
//! - Append: 1 and 16 writers, each on its own stream, batches of 1, 10 and 100 events,
//!   each append expecting the stream's current version. Floor: the same rows INSERTed
//!   (one multi-row statement per batch, one commit per batch) into a table of the same
//!   shape and indexes, with no version check, no stream row, no idempotency lookup.
//!   Each side runs three alternating thirds of the measurement time.
//! - `$all` read: every event from the start in pages of 1000, vs the same keyset scan of
//!   the floor table.
//! - Subscription lag: 4 writers append single events for the measurement time while a
//!   subscriber follows `$all`; lag = delivery time − append start.
//!
//! PostgreSQL runs with `fsync=on` (a private server), SQLite with WAL and
//! `synchronous=FULL`.

use mainstay_eventstore::postgres::PostgresEventStore;
use mainstay_eventstore::sqlite::SqliteEventStore;
use mainstay_eventstore::{
    subscribe, EventData, EventStore, ExpectedVersion, Position, ReadAllFilter, SubscribeOptions,
};
use mainstay_testkit::{HasUrl, PostgresServer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn secs() -> Duration {
    Duration::from_secs(
        std::env::var("MAINSTAY_BENCH_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3),
    )
}

fn payload(i: u64) -> serde_json::Value {
    serde_json::json!({"order": i, "sku": "sku-1234", "quantity": 2, "price_cents": 1999})
}

/// The floor: plain INSERTs of the same rows.
#[derive(Clone)]
enum Raw {
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
    Postgres(deadpool_postgres::Pool),
}

const RAW_PG: &str = "CREATE TABLE raw_events (
    id bigserial PRIMARY KEY, stream_id text COLLATE \"C\" NOT NULL, version bigint NOT NULL,
    event_id text COLLATE \"C\" NOT NULL, event_type text NOT NULL, data text NOT NULL, metadata text NOT NULL,
    created_at_ms bigint NOT NULL, UNIQUE (stream_id, version), UNIQUE (stream_id, event_id))";

const RAW_SQLITE: &str = "CREATE TABLE raw_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, stream_id TEXT NOT NULL, version INTEGER NOT NULL,
    event_id TEXT NOT NULL, event_type TEXT NOT NULL, data TEXT NOT NULL, metadata TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL, UNIQUE (stream_id, version), UNIQUE (stream_id, event_id))";

impl Raw {
    async fn insert(&self, stream: &str, first_version: i64, batch: &[EventData]) {
        let versions: Vec<i64> = (0..batch.len() as i64).map(|i| first_version + i).collect();
        let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
        let types: Vec<String> = batch.iter().map(|e| e.event_type.clone()).collect();
        let data: Vec<String> = batch.iter().map(|e| e.data.to_string()).collect();
        let meta: Vec<String> = batch.iter().map(|e| e.metadata.to_string()).collect();
        match self {
            Raw::Postgres(pool) => {
                mainstay_core::pg::execute(
                    pool,
                    "INSERT INTO raw_events (stream_id, version, event_id, event_type, data, metadata, created_at_ms)
                     SELECT $1, v, i, t, d, m, 0
                     FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[]) AS u(v, i, t, d, m)",
                    &[&stream, &versions, &ids, &types, &data, &meta],
                )
                .await
                .unwrap();
            }
            Raw::Sqlite(conn) => {
                let conn = conn.clone();
                let stream = stream.to_string();
                tokio::task::spawn_blocking(move || {
                    let mut c = conn.lock().unwrap();
                    let tx = c
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .unwrap();
                    {
                        let mut ins = tx
                            .prepare_cached(
                                "INSERT INTO raw_events (stream_id, version, event_id, event_type, data, metadata, created_at_ms)
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
                            )
                            .unwrap();
                        for k in 0..versions.len() {
                            ins.execute(rusqlite::params![
                                stream, versions[k], ids[k], types[k], data[k], meta[k]
                            ])
                            .unwrap();
                        }
                    }
                    tx.commit().unwrap();
                })
                .await
                .unwrap();
            }
        }
    }

    /// Reads the whole table in pages of 1000 (keyset); returns rows read. Each row's
    /// data is parsed; with `owned`, the page is also built into owned rows (strings,
    /// parsed data and metadata) held until the next page — what a `$all` page returns.
    async fn scan(&self, owned: bool) -> u64 {
        let mut after = 0i64;
        let mut n = 0u64;
        loop {
            let page: Vec<(i64, String)> = match self {
                Raw::Postgres(pool) => {
                    let rows = mainstay_core::pg::query(
                        pool,
                        "SELECT id, stream_id, version, event_id, event_type, data, metadata, created_at_ms
                         FROM raw_events WHERE id > $1 ORDER BY id LIMIT 1000",
                        &[&after],
                    )
                    .await
                    .unwrap();
                    if owned {
                        type Owned = (
                            String,
                            i64,
                            String,
                            String,
                            serde_json::Value,
                            serde_json::Value,
                            i64,
                        );
                        let page: Vec<Owned> = rows
                            .iter()
                            .map(|r| {
                                (
                                    r.get(1),
                                    r.get(2),
                                    r.get(3),
                                    r.get(4),
                                    serde_json::from_str(r.get::<_, &str>(5)).unwrap(),
                                    serde_json::from_str(r.get::<_, &str>(6)).unwrap(),
                                    r.get(7),
                                )
                            })
                            .collect();
                        std::hint::black_box(&page);
                    }
                    rows.iter()
                        .map(|r| {
                            if !owned {
                                let _: serde_json::Value =
                                    serde_json::from_str(r.get::<_, &str>(5)).unwrap();
                            }
                            (r.get(0), r.get(1))
                        })
                        .collect()
                }
                Raw::Sqlite(conn) => {
                    let conn = conn.clone();
                    tokio::task::spawn_blocking(move || {
                        let c = conn.lock().unwrap();
                        let mut q = c
                            .prepare_cached(
                                "SELECT id, stream_id, version, event_id, event_type, data, metadata, created_at_ms
                                 FROM raw_events WHERE id > ?1 ORDER BY id LIMIT 1000",
                            )
                            .unwrap();
                        q.query_map([after], |r| {
                            let d: String = r.get(5)?;
                            let _: serde_json::Value = serde_json::from_str(&d).unwrap();
                            Ok((r.get(0)?, r.get(1)?))
                        })
                        .unwrap()
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .unwrap()
                    })
                    .await
                    .unwrap()
                }
            };
            if page.is_empty() {
                return n;
            }
            n += page.len() as u64;
            after = page.last().unwrap().0;
        }
    }
}

/// Events per second appended by `writers` writers in batches of `batch` for `d`.
async fn append_rate(
    store: Option<Arc<dyn EventStore>>,
    raw: Option<Raw>,
    writers: usize,
    batch: usize,
    tag: &str,
    d: Duration,
) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + d;
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (store, raw, count) = (store.clone(), raw.clone(), count.clone());
            let stream = format!("{tag}-{w}");
            tokio::spawn(async move {
                let mut version: Option<u64> = None;
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let events: Vec<EventData> = (0..batch)
                        .map(|_| {
                            i += 1;
                            EventData::new("ItemAdded", payload(i))
                        })
                        .collect();
                    if let Some(s) = &store {
                        let expected =
                            version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                        let r = s.append(&stream, expected, events).await.unwrap();
                        version = Some(r.next_expected_version);
                    } else if let Some(raw) = &raw {
                        let first = version.map_or(0, |v| v + 1) as i64;
                        raw.insert(&stream, first, &events).await;
                        version = Some((first + batch as i64 - 1) as u64);
                    }
                    count.fetch_add(batch as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

async fn read_all_rate(store: &Arc<dyn EventStore>) -> (u64, f64) {
    let start = Instant::now();
    let mut after = Position::START;
    let mut n = 0u64;
    loop {
        let page = store
            .read_all(after, 1000, &ReadAllFilter::default())
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        n += page.len() as u64;
        after = page.last().unwrap().position;
    }
    (n, n as f64 / start.elapsed().as_secs_f64())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// p50 and p99 of append-to-delivery lag (ms) with 4 writers appending for `d`.
async fn subscription_lag(store: Arc<dyn EventStore>, d: Duration) -> (f64, f64, usize) {
    let (_, tail) = {
        let all = store
            .read_all(Position::START, usize::MAX, &ReadAllFilter::default())
            .await
            .unwrap();
        (
            all.len(),
            all.last().map_or(Position::START, |e| e.position),
        )
    };
    let mut sub = subscribe(store.clone(), SubscribeOptions::after(tail))
        .await
        .unwrap();
    let deadline = Instant::now() + d;
    let sent = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (store, sent) = (store.clone(), sent.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let e = EventData::new("Ping", serde_json::json!({"at_us": now_us()}));
                    store
                        .append(&format!("lag-{w}"), ExpectedVersion::Any, vec![e])
                        .await
                        .unwrap();
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut lags = Vec::new();
    loop {
        let all_sent = writers.iter().all(|w| w.is_finished());
        if all_sent && lags.len() as u64 >= sent.load(Ordering::Relaxed) {
            break;
        }
        let e = match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
            Ok(e) => e.unwrap(),
            Err(_) => break,
        };
        let at = e.data["at_us"].as_u64().unwrap();
        lags.push(now_us().saturating_sub(at) as f64 / 1000.0);
    }
    for w in writers {
        w.await.unwrap();
    }
    lags.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lags[((lags.len() as f64 * p) as usize).min(lags.len() - 1)];
    (pct(0.50), pct(0.99), lags.len())
}

async fn run(name: &str, store: Arc<dyn EventStore>, raw: Raw) {
    let d = secs();
    println!("\n{name}: append (events/s; each writer on its own stream)");
    println!("| writers | batch | Mainstay | raw INSERT floor | ratio |");
    println!("|---|---|---|---|---|");
    // MAINSTAY_BENCH_APPEND=16x10,1x1 measures only those writers×batch shapes.
    let shapes = std::env::var("MAINSTAY_BENCH_APPEND").unwrap_or_default();
    for writers in [1, 16] {
        for batch in [1, 10, 100] {
            if !shapes.is_empty() && !shapes.split(',').any(|s| s == format!("{writers}x{batch}")) {
                continue;
            }
            // Alternating thirds, so drift (checkpoints, a busy neighbour) hits both sides.
            let (mut ours, mut floor) = (0.0, 0.0);
            for round in 0..3 {
                let tag = format!("w{writers}b{batch}r{round}");
                ours +=
                    append_rate(Some(store.clone()), None, writers, batch, &tag, d / 3).await / 3.0;
                floor +=
                    append_rate(None, Some(raw.clone()), writers, batch, &tag, d / 3).await / 3.0;
            }
            println!(
                "| {writers} | {batch} | {ours:.0} | {floor:.0} | {:.2} |",
                ours / floor
            );
        }
    }
    if !shapes.is_empty() {
        return;
    }
    let (n, ours) = read_all_rate(&store).await;
    let start = Instant::now();
    let m = raw.scan(false).await;
    let floor = m as f64 / start.elapsed().as_secs_f64();
    println!("\n{name}: $all read, pages of 1000: Mainstay {ours:.0} events/s ({n} events), floor {floor:.0} rows/s ({m} rows), ratio {:.2}", ours / floor);
    if matches!(raw, Raw::Postgres(_)) {
        let start = Instant::now();
        let m = raw.scan(true).await;
        let owned = m as f64 / start.elapsed().as_secs_f64();
        println!("{name}: $all read vs the floor building the same owned rows per page: floor {owned:.0} rows/s, ratio {:.2}", ours / owned);
    }
    let (p50, p99, n) = subscription_lag(store, d).await;
    println!(
        "{name}: subscription lag under 4 writers: p50 {p50:.2} ms, p99 {p99:.2} ms ({n} events)"
    );
}

#[tokio::main]
async fn main() {
    let only = std::env::var("MAINSTAY_BENCH_ONLY").unwrap_or_default();
    if only != "postgres" {
        sqlite().await;
    }
    if only != "sqlite" {
        postgres().await;
    }
}

async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let sqlite: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(&path).unwrap());
    let raw_conn = rusqlite::Connection::open(dir.path().join("raw.db")).unwrap();
    raw_conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    raw_conn.pragma_update(None, "synchronous", "FULL").unwrap();
    raw_conn.execute_batch(RAW_SQLITE).unwrap();
    run(
        "SQLite",
        sqlite,
        Raw::Sqlite(Arc::new(Mutex::new(raw_conn))),
    )
    .await;
}

async fn postgres() {
    let pg = PostgresServer::start_durable().unwrap();
    let url = pg.database().await.unwrap();
    let store: Arc<dyn EventStore> = Arc::new(PostgresEventStore::connect(&url).await.unwrap());
    let raw_url = pg.database().await.unwrap();
    let pool = mainstay_core::pg::pool(&raw_url, 32).unwrap();
    mainstay_core::pg::ensure_schema(&pool, &raw_url, RAW_PG)
        .await
        .unwrap();
    let _ = pg.url();
    run("PostgreSQL", store, Raw::Postgres(pool)).await;
}
