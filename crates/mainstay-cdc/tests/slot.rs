//! Slot hygiene: heartbeats move the slot when nothing captured changes; a slot that
//! vanished is refused, not silently recreated.

use std::time::Duration;

use mainstay_cdc::{CdcConfig, Op, SnapshotMode, TableName};

use crate::common::*;

async fn lag(url: &str, slot: &str) -> i64 {
    mainstay_cdc::slot_status(url, slot)
        .await
        .unwrap()
        .unwrap()
        .lag_bytes
        .unwrap_or(0)
}

/// Churn in `noise` (not captured) for 2 s, with or without heartbeats; returns (WAL
/// written, the slot's lag once the churn stopped and the connector had 3 s to confirm).
async fn churn_only_elsewhere(url: &str, heartbeat: Option<Duration>, slot: &str) -> (i64, i64) {
    let url = url.to_string();
    let db = client(&url).await;
    db.batch_execute(
        "CREATE TABLE captured (id int PRIMARY KEY);
         CREATE TABLE noise (id int PRIMARY KEY, pad text);
         INSERT INTO noise SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let received = Received::default();
    let config = CdcConfig::new("idle", &url)
        .slot(slot)
        .tables(vec![TableName::parse("captured").unwrap()])
        .heartbeat_interval(heartbeat)
        .status_interval(Duration::from_millis(200))
        .drop_slot_on_stop(true);
    let running = start(
        config,
        Box::new(MemorySink::new(&received)),
        &dir.path().join("state"),
    );
    wait_streaming(&url, slot).await;
    let start_lsn: i64 = db
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
        .await
        .unwrap()
        .get(0);
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        db.batch_execute("UPDATE noise SET pad = md5(random()::text) WHERE id % 40 = 0")
            .await
            .unwrap();
    }
    let written: i64 = db
        .query_one(
            "SELECT (pg_current_wal_lsn() - '0/0')::int8 - $1",
            &[&start_lsn],
        )
        .await
        .unwrap()
        .get(0);
    // With heartbeats the lag falls to about one heartbeat's worth of WAL; poll for it
    // (the control run without heartbeats never gets there and reports what it has).
    let mut last = lag(&url, slot).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline && last > 256 * 1024 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = lag(&url, slot).await;
    }
    running.stop().await.expect("clean stop");
    assert_eq!(received.len(), 0, "nothing captured changed");
    (written, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_move_the_slot_while_only_uncaptured_tables_change() {
    // A private server: WAL is cluster-wide, and other tests' writes on the shared one
    // would count as lag here.
    let server =
        mainstay_testkit::PostgresServer::start_with_settings(&[]).expect("private server");
    let on = server.database().await.unwrap();
    let off = server.database().await.unwrap();
    let (written, with) =
        churn_only_elsewhere(&on, Some(Duration::from_millis(500)), "heartbeat_on").await;
    let (written_off, without) = churn_only_elsewhere(&off, None, "heartbeat_off").await;
    eprintln!(
        "uncaptured churn: {written} WAL bytes; slot lag after it with heartbeats {with} bytes; \
         without: {without} of {written_off} bytes"
    );
    assert!(
        written > 4 * 1024 * 1024,
        "the churn wrote only {written} bytes"
    );
    assert!(
        with <= 256 * 1024,
        "with heartbeats the slot lags {with} bytes"
    );
    assert!(
        without >= written_off / 2,
        "without heartbeats the slot should not move ({without} of {written_off})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_slot_is_refused_and_when_needed_snapshots_again() {
    let url = database().await;
    let db = client(&url).await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let received = Received::default();
    let config = CdcConfig::new("gone", &url)
        .slot("vanish")
        .tables(vec![TableName::parse("t").unwrap()]);
    let running = start(config.clone(), Box::new(MemorySink::new(&received)), &state);
    wait_streaming(&url, "vanish").await;
    running.stop().await.expect("clean stop");
    assert_eq!(received.len(), 2);
    // Someone drops the slot; changes made now are lost to it.
    db.batch_execute("SELECT pg_drop_replication_slot('vanish'); INSERT INTO t VALUES (3);")
        .await
        .unwrap();
    let refused = start(config.clone(), Box::new(MemorySink::new(&received)), &state)
        .task
        .await
        .unwrap()
        .expect_err("a vanished slot is refused");
    let text = refused.to_string();
    assert!(
        text.contains("\"vanish\" is gone") && text.contains("when_needed"),
        "{text}"
    );
    let slots: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'vanish'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "the refusal created no slot");
    // when_needed reads the tables again: row 3 arrives as a snapshot read.
    let running = start(
        config
            .snapshot_mode(SnapshotMode::WhenNeeded)
            .drop_slot_on_stop(true),
        Box::new(MemorySink::new(&received)),
        &state,
    );
    received
        .wait(Duration::from_secs(30), "the new snapshot", |e| {
            e.len() >= 5
        })
        .await;
    running.stop().await.expect("clean stop");
    let events = received.snapshot();
    let reread: Vec<_> = events[2..]
        .iter()
        .map(|e| (e.op, e.after.as_ref().unwrap().to_value()))
        .collect();
    assert_eq!(reread.len(), 3);
    assert!(reread.iter().all(|(op, _)| *op == Op::Read));
    assert!(reread.iter().any(|(_, row)| row["id"] == 3));
}

/// The acceptance run: 60 s of churn only in an uncaptured table, heartbeats every 2 s.
/// The slot's retained WAL stays bounded (it would grow with all 60 s of churn without
/// heartbeats, as the short control run above shows); the samples are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_seconds_of_uncaptured_churn_keep_retained_wal_bounded() {
    // A private server: an idle database on a server nobody else writes to (WAL is
    // cluster-wide; the shared server carries other tests' writes).
    let server =
        mainstay_testkit::PostgresServer::start_with_settings(&[]).expect("private server");
    let url = mainstay_testkit::HasUrl::url(&server);
    let db = client(&url).await;
    db.batch_execute(
        "CREATE TABLE captured (id int PRIMARY KEY);
         CREATE TABLE noise (id int PRIMARY KEY, pad text);
         INSERT INTO noise SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let received = Received::default();
    let config = CdcConfig::new("idle", &url)
        .slot("sixty")
        .tables(vec![TableName::parse("captured").unwrap()])
        .heartbeat_interval(Some(Duration::from_secs(2)))
        .drop_slot_on_stop(true);
    let running = start(
        config,
        Box::new(MemorySink::new(&received)),
        &dir.path().join("state"),
    );
    wait_streaming(&url, "sixty").await;
    let start_lsn = current_wal(&db).await;
    let mut samples = Vec::new();
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let started = tokio::time::Instant::now();
    let mut next_sample = started + Duration::from_secs(5);
    while started.elapsed() < Duration::from_secs(60) {
        pace.tick().await;
        db.batch_execute(
            "UPDATE noise SET pad = md5(random()::text) || repeat('y', 150) WHERE id % 50 = 0",
        )
        .await
        .unwrap();
        if tokio::time::Instant::now() >= next_sample {
            next_sample += Duration::from_secs(5);
            let s = mainstay_cdc::slot_status(&url, "sixty")
                .await
                .unwrap()
                .unwrap();
            samples.push((
                started.elapsed().as_secs(),
                s.retained_wal_bytes.unwrap_or(0),
                s.lag_bytes.unwrap_or(0),
            ));
        }
    }
    let written = current_wal(&db).await - start_lsn;
    running.stop().await.expect("clean stop");
    assert_eq!(received.len(), 0, "nothing captured changed");
    eprintln!("60 s of uncaptured churn wrote {written} WAL bytes; (s, retained WAL, confirmed lag) every 5 s:");
    for (t, retained, lag) in &samples {
        eprintln!("  {t:>3} s  retained {retained:>10}  lag {lag:>9}");
    }
    let max_retained = samples.iter().map(|s| s.1).max().unwrap();
    let max_lag = samples.iter().map(|s| s.2).max().unwrap();
    assert!(
        written > 20 * 1024 * 1024,
        "the churn wrote only {written} bytes"
    );
    // The slot confirms within heartbeats; what it retains is at most the WAL since the
    // server's last running-transactions record (logged every 15 s) plus a segment.
    assert!(
        max_lag <= 4 * 1024 * 1024,
        "the confirmed position lagged {max_lag} bytes"
    );
    assert!(
        max_retained <= written / 2,
        "retained WAL reached {max_retained} of the {written} bytes written: it is not bounded"
    );
}

async fn current_wal(db: &tokio_postgres::Client) -> i64 {
    db.query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
        .await
        .unwrap()
        .get(0)
}
