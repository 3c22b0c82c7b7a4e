//! Stops and crashes: nothing lost, nothing applied twice by a sink that knows its position.

use std::time::Duration;

use futures::SinkExt as _;
use mainstay_cdc::{CdcConfig, FileSink, Op, TableName};

use crate::common::*;

/// Regression for Debezium DBZ-5915 / PR #7531: a COPY writes many rows in one WAL record,
/// so its changes share one LSN; a crash after the sink took half of them must not lose
/// the other half on restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_sharing_an_lsn_survive_a_crash_between_them() {
    let url = database().await;
    let db = client(&url).await;
    db.batch_execute("CREATE TABLE rows (id bigint PRIMARY KEY, v text)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let received = Received::default();
    let config = CdcConfig::new("copy", &url)
        .slot("shared_lsn")
        .tables(vec![TableName::parse("rows").unwrap()])
        .max_batch(50);
    let mut sink = MemorySink::new(&received);
    // Take 120 events of the 1000 the COPY makes, then fail mid-batch.
    sink.fail_after = Some(120);
    let running = start(config.clone(), Box::new(sink), &state);
    wait_streaming(&url, "shared_lsn").await;
    let copy = db.copy_in("COPY rows (id, v) FROM STDIN").await.unwrap();
    let mut copy = std::pin::pin!(copy);
    let data: String = (1..=1000).map(|i| format!("{i}\trow {i}\n")).collect();
    copy.send(bytes::Bytes::from(data)).await.unwrap();
    copy.as_mut().finish().await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), running.task)
        .await
        .expect("the failing sink ends the run")
        .unwrap();
    assert!(outcome.is_err(), "the injected failure surfaces");
    let first = received.snapshot();
    assert_eq!(first.len(), 120, "the sink took 120 events before failing");
    let shared = first
        .windows(2)
        .filter(|w| w[0].position.lsn == w[1].position.lsn)
        .count();
    assert!(
        shared > 0,
        "COPY's changes should share LSNs (else this test tests nothing)"
    );

    // Restart with the same sink contents: it resumes after its last position.
    let running = start(
        config.drop_slot_on_stop(true),
        Box::new(MemorySink::new(&received)),
        &state,
    );
    received
        .wait(Duration::from_secs(30), "all 1000 rows", |e| {
            e.len() >= 1000
        })
        .await;
    let summary = running.stop().await.expect("clean stop");
    let events = received.snapshot();
    assert_eq!(events.len(), 1000, "every row once");
    assert_in_source_order(&events);
    assert!(
        summary.skipped > 0,
        "the restart skipped what the sink held: {summary:?}"
    );
    let state = apply(&events);
    assert_eq!(state["public.rows"].len(), 1000);
}

/// A file sink across crashes: every event exactly once in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sink_holds_every_event_once_across_crashes() {
    let url = database().await;
    let db = client(&url).await;
    db.batch_execute(
        "CREATE TABLE t (id bigint PRIMARY KEY, v int);
         INSERT INTO t SELECT g, 0 FROM generate_series(1, 3000) g;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = dir.path().join("events.ndjson");
    let config = CdcConfig::new("file", &url)
        .slot("file_sink")
        .tables(vec![TableName::parse("t").unwrap()])
        .snapshot_fetch_size(700)
        .max_batch(100);
    // Complete lines only: the sink may be in the middle of a write.
    let lines = |path: &std::path::Path| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).expect("a whole JSON line"))
            .collect()
    };
    for round in 0..4 {
        let running = start(
            config.clone(),
            Box::new(FileSink::open(&out).unwrap()),
            &state,
        );
        // Each round: some updates, then a crash once the file holds 100 of them (so the
        // snapshot has finished: a snapshot cut short is read again at a new consistent
        // point, which repeats its rows).
        let updates =
            |path: &std::path::Path| lines(path).iter().filter(|e| e["op"] == "u").count();
        let before = updates(&out);
        wait_streaming(&url, "file_sink").await;
        db.batch_execute(&format!(
            "UPDATE t SET v = {round} + 1 WHERE id % 4 = {round}"
        ))
        .await
        .unwrap();
        mainstay_testkit::eventually(Duration::from_secs(30), "the file to grow", || {
            let n = updates(&out);
            async move { n >= before + 100 }
        })
        .await
        .unwrap();
        running.crash().await;
    }
    let running = start(
        config.clone().drop_slot_on_stop(true),
        Box::new(FileSink::open(&out).unwrap()),
        &state,
    );
    // 3000 snapshot rows + 4 rounds of 750 updates.
    mainstay_testkit::eventually(Duration::from_secs(60), "every event in the file", || {
        let n = lines(&out).len();
        async move { n >= 6000 }
    })
    .await
    .unwrap();
    running.stop().await.expect("clean stop");
    let all = lines(&out);
    assert_eq!(all.len(), 6000, "each event exactly once");
    let reads = all.iter().filter(|e| e["op"] == "r").count();
    assert_eq!(reads, 3000);
    let updates = all.iter().filter(|e| e["op"] == Op::Update.code()).count();
    assert_eq!(updates, 3000);
    let mut seen = std::collections::HashSet::new();
    for e in &all {
        let key = (
            e["source"]["sequence"].as_str().unwrap().to_string(),
            e["after"]["id"].as_i64().unwrap(),
            e["op"].as_str().unwrap().to_string(),
        );
        assert!(seen.insert(key.clone()), "duplicate event {key:?}");
    }
}

/// A sink slower than the source (each batch takes 300 ms) on a server that drops a
/// replication connection after 2 s without a status update: the connector stops reading
/// while the sink works (memory stays bounded by one channel and one batch) and still
/// answers, so the connection survives and every change arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_holds_the_stream_back_without_losing_the_connection() {
    struct Slow(MemorySink);
    #[async_trait::async_trait]
    impl mainstay_cdc::Sink for Slow {
        fn name(&self) -> &str {
            "slow"
        }
        async fn write(
            &mut self,
            events: &[mainstay_cdc::ChangeEvent],
        ) -> Result<(), mainstay_cdc::CdcError> {
            // The fault: a sink that takes its time.
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.0.write(events).await
        }
    }
    let server = mainstay_testkit::PostgresServer::start_with_settings(&["wal_sender_timeout=2s"])
        .expect("private server");
    let url = mainstay_testkit::HasUrl::url(&server);
    let db = client(&url).await;
    db.batch_execute("CREATE TABLE t (id bigint PRIMARY KEY, v int)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let received = Received::default();
    let config = CdcConfig::new("slow", &url)
        .slot("slow")
        .tables(vec![TableName::parse("t").unwrap()])
        .max_batch(500)
        .drop_slot_on_stop(true);
    let running = start(
        config,
        Box::new(Slow(MemorySink::new(&received))),
        &dir.path().join("state"),
    );
    wait_streaming(&url, "slow").await;
    // 12k changes: 24 batches of 500 at 300 ms each, over 7 s of holding back.
    db.batch_execute("INSERT INTO t SELECT g, 0 FROM generate_series(1, 12000) g")
        .await
        .unwrap();
    received
        .wait(
            Duration::from_secs(60),
            "every change through the slow sink",
            |e| e.len() >= 12_000,
        )
        .await;
    let summary = running
        .stop()
        .await
        .expect("the connection survived the slow sink");
    assert_eq!(summary.delivered, 12_000);
    assert_in_source_order(&received.snapshot());
}

/// The walsender is terminated twice mid-stream (what a PostgreSQL restart or failover does
/// to the connection): the connector reconnects by itself and every change arrives exactly
/// once — also at a sink that cannot tell its position, since the connector skips what it
/// delivered in this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_replication_connection_is_reconnected_without_loss_or_repeats() {
    let url = database().await;
    let db = client(&url).await;
    db.batch_execute("CREATE TABLE t (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let received = Received::default();
    let mut sink = MemorySink::new(&received);
    sink.forgetful = true;
    let config = CdcConfig::new("cut", &url)
        .slot("cut")
        .tables(vec![TableName::parse("t").unwrap()])
        // Confirm rarely, so a reconnect resends what was already delivered.
        .status_interval(Duration::from_secs(30))
        .drop_slot_on_stop(true);
    let running = start(config, Box::new(sink), &dir.path().join("state"));
    for round in 0..3i64 {
        wait_streaming(&url, "cut").await;
        db.batch_execute(&format!(
            "INSERT INTO t SELECT g FROM generate_series({}, {}) g",
            round * 1000 + 1,
            round * 1000 + 1000
        ))
        .await
        .unwrap();
        received
            .wait(Duration::from_secs(30), "the round's rows", |e| {
                e.len() as i64 >= (round + 1) * 1000
            })
            .await;
        if round < 2 {
            let cut: i64 = db
                .query_one(
                    "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots WHERE slot_name = 'cut'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(cut, 1, "the walsender was terminated");
        }
    }
    let summary = running
        .stop()
        .await
        .expect("clean stop after two reconnects");
    let events = received.snapshot();
    assert_eq!(events.len(), 3000, "every row once");
    assert_in_source_order(&events);
    assert!(
        summary.skipped > 0,
        "the reconnects resent delivered changes: {summary:?}"
    );
}
