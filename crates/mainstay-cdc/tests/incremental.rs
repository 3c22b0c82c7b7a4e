//! Incremental snapshots through the signal table (DBLog watermarks): chunks read while
//! writers change the table end up exactly as the source, each key's history in order;
//! pause and resume hold the reads; a crash resumes at the last chunk, not the start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mainstay_cdc::event::SnapshotMarker;
use mainstay_cdc::{CdcConfig, SnapshotMode, TableName};
use rand::{Rng, SeedableRng};

use crate::common::*;

async fn writer(url: String, seed: u64, stop: Arc<AtomicBool>) {
    let db = client(&url).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let id: i64 = rng.random_range(1..=6000);
        let sql = match rng.random_range(0..6) {
            0..=2 => format!("UPDATE items SET qty = qty + 1 WHERE id = {id}"),
            3 => format!("DELETE FROM items WHERE id = {id}"),
            4 => format!(
                "BEGIN; UPDATE items SET qty = qty - 1 WHERE id = {id}; \
                 UPDATE items SET qty = qty + 1 WHERE id = {}; COMMIT",
                id % 6000 + 1
            ),
            _ => {
                format!("INSERT INTO items VALUES ({id}, 1) ON CONFLICT (id) DO UPDATE SET qty = 0")
            }
        };
        db.batch_execute(&sql).await.unwrap();
    }
}

fn incremental_rows(events: &[mainstay_cdc::ChangeEvent]) -> usize {
    events
        .iter()
        .filter(|e| e.snapshot == SnapshotMarker::Incremental)
        .count()
}

async fn signal(db: &tokio_postgres::Client, id: &str, kind: &str, data: &str) {
    db.execute(
        "INSERT INTO cdc_signal (id, type, data) VALUES ($1, $2, $3)",
        &[&id, &kind, &data],
    )
    .await
    .unwrap();
}

fn config(url: &str, slot: &str) -> CdcConfig {
    CdcConfig::new("inc", url)
        .slot(slot)
        .tables(vec![TableName::parse("items").unwrap()])
        .snapshot_mode(SnapshotMode::NoData)
        .signal_table(TableName::parse("cdc_signal").unwrap())
        .incremental_chunk_size(250)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_snapshot_under_writers_matches_the_source() {
    let url = database().await;
    let db = client(&url).await;
    db.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, qty bigint NOT NULL);
         INSERT INTO items SELECT g, g % 100 FROM generate_series(1, 5000) g;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let received = Received::default();
    let running = start(
        config(&url, "incremental").drop_slot_on_stop(true),
        Box::new(MemorySink::new(&received)),
        &dir.path().join("state"),
    );
    wait_streaming(&url, "incremental").await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|i| tokio::spawn(writer(url.clone(), i, stop.clone())))
        .collect();
    // Paused before it starts: the signal is taken, no chunk is read until resumed.
    signal(&db, "p1", "pause-snapshot", "").await;
    signal(
        &db,
        "s1",
        "execute-snapshot",
        r#"{"data-collections": ["public.items"], "type": "incremental"}"#,
    )
    .await;
    db.batch_execute("INSERT INTO items VALUES (100001, 1)")
        .await
        .unwrap();
    received
        .wait(
            Duration::from_secs(30),
            "a change after the signals",
            |events| {
                events.iter().any(|e| {
                    e.key
                        .as_ref()
                        .and_then(|k| k.get("id"))
                        .and_then(|v| v.as_i64())
                        == Some(100001)
                })
            },
        )
        .await;
    assert_eq!(
        incremental_rows(&received.snapshot()),
        0,
        "paused, yet chunks were read"
    );
    signal(&db, "r1", "resume-snapshot", "").await;
    received
        .wait(Duration::from_secs(60), "incremental rows", |events| {
            incremental_rows(events) > 1000
        })
        .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // A marker row after the writers stopped: once it arrives, so has every change.
    db.batch_execute("INSERT INTO items VALUES (100002, 2)")
        .await
        .unwrap();
    let expected = source_rows(&db, "items").await;
    received
        .wait(
            Duration::from_secs(60),
            "the snapshot and the stream to equal the source",
            |events| {
                apply(events)
                    .get("public.items")
                    .cloned()
                    .unwrap_or_default()
                    == expected
            },
        )
        .await;
    let events = received.snapshot();
    assert_in_source_order(&events);
    assert!(
        events.iter().all(|e| e.table.as_ref() != "cdc_signal"),
        "signal rows reached the sink"
    );
    eprintln!(
        "{} events, {} incremental rows",
        events.len(),
        incremental_rows(&events)
    );
    running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_snapshot_resumes_at_its_last_chunk_after_a_crash() {
    let url = database().await;
    let db = client(&url).await;
    db.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, qty bigint NOT NULL);
         INSERT INTO items SELECT g, 0 FROM generate_series(1, 6000) g;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let received = Received::default();
    // Batches of at most 500 events: progress is saved after each, so a crash can cost at
    // most the chunks of the batch it cut.
    let first = start(
        config(&url, "resume").max_batch(500),
        Box::new(MemorySink {
            fail_after: Some(3100),
            ..MemorySink::new(&received)
        }),
        &state,
    );
    wait_streaming(&url, "resume").await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|i| tokio::spawn(writer(url.clone(), 20 + i, stop.clone())))
        .collect();
    signal(
        &db,
        "s1",
        "execute-snapshot",
        r#"{"data-collections": ["public.items"]}"#,
    )
    .await;
    let outcome = tokio::time::timeout(Duration::from_secs(60), first.task)
        .await
        .expect("the injected failure ends the first run")
        .unwrap();
    assert!(outcome.is_err());
    let first_events = received.len();
    let first_rows = incremental_rows(&received.snapshot());
    assert!(first_rows > 750, "the crash came before three chunks");
    let second = start(
        config(&url, "resume").drop_slot_on_stop(true),
        Box::new(MemorySink::new(&received)),
        &state,
    );
    wait_streaming(&url, "resume").await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    db.batch_execute("INSERT INTO items VALUES (100002, 2)")
        .await
        .unwrap();
    let expected = source_rows(&db, "items").await;
    received
        .wait(
            Duration::from_secs(60),
            "the rows to equal the source",
            |events| {
                apply(events)
                    .get("public.items")
                    .cloned()
                    .unwrap_or_default()
                    == expected
            },
        )
        .await;
    let events = received.snapshot();
    assert_in_source_order(&events);
    // Resumed, not restarted: the second run reads the rest, plus at most the chunks of
    // the batch the crash cut (500 events); never the first chunk again.
    let total = incremental_rows(&events);
    let again: Vec<i64> = events[first_events..]
        .iter()
        .filter(|e| e.snapshot == SnapshotMarker::Incremental)
        .filter_map(|e| e.key.as_ref()?.get("id")?.as_i64())
        .filter(|&id| id <= 250)
        .collect();
    assert!(
        again.is_empty(),
        "the second run read the first chunk again ({} rows): the snapshot started over",
        again.len()
    );
    assert!(
        total <= 6000 + 750,
        "{total} incremental rows ({first_rows} before the crash): more read again than one batch's chunks"
    );
    eprintln!("{first_rows} incremental rows before the crash, {total} in all");
    second.stop().await.expect("clean stop");
}

/// An initial snapshot cut by a crash goes on where it stopped: the slot it was created
/// with still holds every change since its rows were read, and the rows it did not deliver
/// are read incrementally — none of the delivered ones again, and the result equals the
/// source under writers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_snapshot_cut_by_a_crash_resumes_after_its_last_key() {
    let url = database().await;
    let db = client(&url).await;
    db.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, qty bigint NOT NULL);
         INSERT INTO items SELECT g, 0 FROM generate_series(1, 6000) g;
         CREATE TABLE other (id bigint PRIMARY KEY, qty bigint NOT NULL);
         INSERT INTO other SELECT g, 1 FROM generate_series(1, 700) g;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = CdcConfig::new("resume_initial", &url)
        .slot("resume_initial")
        .tables(vec![
            TableName::parse("items").unwrap(),
            TableName::parse("other").unwrap(),
        ])
        .snapshot_fetch_size(500)
        .incremental_chunk_size(400);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|i| tokio::spawn(writer(url.clone(), 40 + i, stop.clone())))
        .collect();
    let received = Received::default();
    let first = start(
        config.clone(),
        Box::new(MemorySink {
            fail_after: Some(2700),
            ..MemorySink::new(&received)
        }),
        &state,
    );
    let outcome = tokio::time::timeout(Duration::from_secs(60), first.task)
        .await
        .expect("the injected failure ends the first run")
        .unwrap();
    assert!(outcome.is_err());
    let first_events = received.len();
    assert!(
        received
            .snapshot()
            .iter()
            .all(|e| e.snapshot != SnapshotMarker::Last),
        "the crash came after the snapshot"
    );
    let second = start(
        config.clone().drop_slot_on_stop(true),
        Box::new(MemorySink::new(&received)),
        &state,
    );
    wait_streaming(&url, "resume_initial").await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    db.batch_execute("INSERT INTO items VALUES (100002, 2)")
        .await
        .unwrap();
    let expected = source_rows(&db, "items").await;
    let other = source_rows(&db, "other").await;
    received
        .wait(
            Duration::from_secs(60),
            "both tables to equal the source",
            |events| {
                let state = apply(events);
                state.get("public.items").cloned().unwrap_or_default() == expected
                    && state.get("public.other").cloned().unwrap_or_default() == other
            },
        )
        .await;
    let events = received.snapshot();
    assert_in_source_order(&events);
    let later = &events[first_events..];
    assert!(
        later.iter().all(|e| e.snapshot != SnapshotMarker::First),
        "the snapshot started over"
    );
    // The first run delivered every row up to its last whole fetch (2500 rows): the second
    // reads none of the first 2000 again.
    let again = later
        .iter()
        .filter(|e| e.op == mainstay_cdc::Op::Read && e.table.as_ref() == "items")
        .filter_map(|e| e.key.as_ref()?.get("id")?.as_i64())
        .filter(|&id| id <= 2000)
        .count();
    assert_eq!(again, 0, "rows the first run delivered were read again");
    let resumed = incremental_rows(later);
    assert!(resumed > 3000, "only {resumed} rows read after the crash");
    eprintln!("{first_events} events before the crash; {resumed} rows read incrementally after it");
    second.stop().await.expect("clean stop");
}
