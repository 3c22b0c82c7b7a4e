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
