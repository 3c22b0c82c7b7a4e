//! The snapshot and the stream together: rows changing while the snapshot reads them end
//! up exactly as in the source, each key's history in commit order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mainstay_cdc::{CdcConfig, TableName};
use rand::{Rng, SeedableRng};

use crate::common::*;

/// Random inserts, updates and deletes on `accounts` until `stop`.
async fn writer(url: String, seed: u64, stop: Arc<AtomicBool>) -> u64 {
    let db = client(&url).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut statements = 0;
    while !stop.load(Ordering::Relaxed) {
        let id: i64 = rng.random_range(1..=30_000);
        let sql = match rng.random_range(0..10) {
            0..=3 => format!("UPDATE accounts SET balance = balance + 1, note = 'w{seed}' WHERE id = {id}"),
            4..=5 => format!("DELETE FROM accounts WHERE id = {id}"),
            6..=7 => format!(
                "INSERT INTO accounts VALUES ({id}, {}, 'new') ON CONFLICT (id) DO UPDATE SET balance = 0",
                rng.random_range(0..1000)
            ),
            // A multi-row transaction: several keys change at one commit.
            _ => format!(
                "BEGIN; UPDATE accounts SET balance = balance - 1 WHERE id = {id}; \
                 UPDATE accounts SET balance = balance + 1 WHERE id = {}; COMMIT",
                (id % 30_000) + 1
            ),
        };
        db.batch_execute(&sql).await.expect("writer statement");
        statements += 1;
    }
    statements
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_under_concurrent_writers_matches_the_source() {
    let url = database().await;
    let db = client(&url).await;
    db.batch_execute(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text);
         INSERT INTO accounts SELECT g, g % 1000, 'seed' FROM generate_series(1, 20000) g;",
    )
    .await
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|i| tokio::spawn(writer(url.clone(), i, stop.clone())))
        .collect();
    // Let the writers get going, so the snapshot reads a table that is changing.
    mainstay_testkit::eventually(Duration::from_secs(30), "writers to commit", || {
        let db = &db;
        async move {
            db.query_one("SELECT count(*) FROM accounts WHERE note LIKE 'w%'", &[])
                .await
                .map(|r| r.get::<_, i64>(0) > 50)
                .unwrap_or(false)
        }
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let received = Received::default();
    let config = CdcConfig::new("bank", &url)
        .slot("consistency")
        .tables(vec![TableName::parse("accounts").unwrap()])
        // Small fetches: the snapshot takes many round trips while the writers run.
        .snapshot_fetch_size(500)
        .max_batch(256)
        .drop_slot_on_stop(true);
    let running = start(
        config,
        Box::new(MemorySink::new(&received)),
        &dir.path().join("state"),
    );
    // Keep writing through the snapshot and well into streaming.
    received
        .wait(
            Duration::from_secs(60),
            "the snapshot and some streamed changes",
            |e| e.iter().filter(|e| e.op != mainstay_cdc::Op::Read).count() > 2000,
        )
        .await;
    stop.store(true, Ordering::Relaxed);
    let mut statements = 0;
    for w in writers {
        statements += w.await.unwrap();
    }
    let expected = source_rows(&db, "accounts").await;
    received
        .wait(
            Duration::from_secs(60),
            "the sink to catch up with the source",
            |e| apply(e).get("public.accounts") == Some(&expected),
        )
        .await;
    running.stop().await.expect("clean stop");
    let events = received.snapshot();
    assert_in_source_order(&events);
    let reads = events
        .iter()
        .filter(|e| e.op == mainstay_cdc::Op::Read)
        .count();
    assert!(reads >= 15_000, "snapshot read {reads} rows");
    eprintln!(
        "{statements} writer statements; {} events ({reads} snapshot rows)",
        events.len()
    );
}

/// Folds events into table state as they arrive (memory stays one entry per row), checking
/// that each key's events come in commit order.
#[derive(Clone, Default)]
struct Fold {
    inner: Arc<std::sync::Mutex<FoldState>>,
}

#[derive(Default)]
struct FoldState {
    rows: std::collections::HashMap<i64, (i64, String)>,
    last: std::collections::HashMap<i64, mainstay_cdc::Position>,
    events: u64,
    reads: u64,
    out_of_order: Vec<String>,
    last_position: Option<mainstay_cdc::Position>,
}

#[async_trait::async_trait]
impl mainstay_cdc::Sink for Fold {
    fn name(&self) -> &str {
        "fold"
    }
    async fn last_position(
        &mut self,
    ) -> Result<Option<mainstay_cdc::Position>, mainstay_cdc::CdcError> {
        Ok(self.inner.lock().unwrap().last_position)
    }
    async fn write(
        &mut self,
        events: &[mainstay_cdc::ChangeEvent],
    ) -> Result<(), mainstay_cdc::CdcError> {
        let mut s = self.inner.lock().unwrap();
        for e in events {
            s.events += 1;
            let image = e.after.as_ref().or(e.before.as_ref()).expect("a row image");
            let id = image.get("id").and_then(|v| v.as_i64()).expect("id");
            if let Some(previous) = s.last.insert(id, e.position) {
                if previous >= e.position && s.out_of_order.len() < 10 {
                    s.out_of_order
                        .push(format!("key {id}: {previous:?} then {:?}", e.position));
                }
            }
            match e.op {
                mainstay_cdc::Op::Read | mainstay_cdc::Op::Create | mainstay_cdc::Op::Update => {
                    if e.op == mainstay_cdc::Op::Read {
                        s.reads += 1;
                    }
                    let after = e.after.as_ref().unwrap();
                    let balance = after.get("balance").and_then(|v| v.as_i64()).unwrap();
                    let note = after
                        .get("note")
                        .and_then(|v| v.as_str())
                        .unwrap_or("")
                        .to_string();
                    s.rows.insert(id, (balance, note));
                }
                mainstay_cdc::Op::Delete => {
                    s.rows.remove(&id);
                }
                _ => {}
            }
            s.last_position = Some(e.position);
        }
        Ok(())
    }
}

/// The acceptance scale: a 1M-row initial snapshot while 8 writers insert, update and
/// delete throughout; the folded sink equals the source row for row, and every key's
/// history arrives in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_snapshot_under_8_writers_matches_the_source() {
    let url = database().await;
    let db = client(&url).await;
    db.batch_execute(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text);
         INSERT INTO accounts SELECT g, g % 1000, 'seed' FROM generate_series(1, 1000000) g;",
    )
    .await
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|i| tokio::spawn(big_writer(url.clone(), 100 + i, stop.clone())))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let fold = Fold::default();
    let config = CdcConfig::new("bank", &url)
        .slot("million")
        .tables(vec![TableName::parse("accounts").unwrap()])
        .drop_slot_on_stop(true);
    let started = std::time::Instant::now();
    let running = start(config, Box::new(fold.clone()), &dir.path().join("state"));
    // Writers run through the whole snapshot and into streaming.
    let inner = fold.inner.clone();
    mainstay_testkit::eventually(
        Duration::from_secs(600),
        "the snapshot and streamed changes",
        || {
            let s = inner.lock().unwrap();
            let done = s.reads >= 1_000_000 - 50_000 && s.events > s.reads + 5_000;
            async move { done }
        },
    )
    .await
    .unwrap();
    let snapshot_took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut statements = 0;
    for w in writers {
        statements += w.await.unwrap();
    }
    let rows = db
        .query("SELECT id, balance, coalesce(note, '') FROM accounts", &[])
        .await
        .unwrap();
    let expected: std::collections::HashMap<i64, (i64, String)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    drop(rows);
    let inner = fold.inner.clone();
    let expected = &expected;
    mainstay_testkit::eventually(
        Duration::from_secs(120),
        "the sink to equal the source",
        || {
            let equal = inner.lock().unwrap().rows == *expected;
            async move { equal }
        },
    )
    .await
    .unwrap();
    running.stop().await.expect("clean stop");
    let s = fold.inner.lock().unwrap();
    assert!(
        s.out_of_order.is_empty(),
        "key histories out of commit order: {:?}",
        s.out_of_order
    );
    assert_eq!(s.rows.len(), expected.len());
    eprintln!(
        "1M rows: {statements} writer statements by 8 writers; {} events ({} snapshot rows) in {:.1?} (snapshot and first streaming {:.1?})",
        s.events,
        s.reads,
        started.elapsed(),
        snapshot_took
    );
}

async fn big_writer(url: String, seed: u64, stop: Arc<AtomicBool>) -> u64 {
    let db = client(&url).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut statements = 0;
    while !stop.load(Ordering::Relaxed) {
        let id: i64 = rng.random_range(1..=1_050_000);
        let sql = match rng.random_range(0..10) {
            0..=3 => format!("UPDATE accounts SET balance = balance + 1, note = 'w{seed}' WHERE id = {id}"),
            4..=5 => format!("DELETE FROM accounts WHERE id = {id}"),
            6..=7 => format!(
                "INSERT INTO accounts VALUES ({id}, 5, 'new') ON CONFLICT (id) DO UPDATE SET balance = 0"
            ),
            _ => format!(
                "BEGIN; UPDATE accounts SET balance = balance - 1 WHERE id = {id}; \
                 UPDATE accounts SET balance = balance + 1 WHERE id = {}; COMMIT",
                (id % 1_000_000) + 1
            ),
        };
        db.batch_execute(&sql).await.expect("writer statement");
        statements += 1;
    }
    statements
}
