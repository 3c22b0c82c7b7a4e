//! The JetStream sink across failures: every event once in the stream, in source order;
//! a snapshot cut by a failure resumes, re-reading at most the fetch the failure cut.

use std::time::Duration;

use mainstay_cdc::{CdcConfig, JetStreamSink, Position, TableName};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_holds_every_event_once_across_failures() {
    let nats = mainstay_testkit::shared_nats().url();
    let url = database().await;
    let db = client(&url).await;
    db.batch_execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, v int);
         INSERT INTO orders SELECT g, 0 FROM generate_series(1, 2000) g;",
    )
    .await
    .unwrap();
    let name = mainstay_testkit::unique("js").to_lowercase();
    let stream = name.to_uppercase();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = CdcConfig::new(&name, &url)
        .slot(&name)
        .tables(vec![TableName::parse("orders").unwrap()])
        .snapshot_fetch_size(300)
        .incremental_chunk_size(300)
        .max_batch(100);
    // Three lives, each failing part-way through a batch. Life 0 fails inside the snapshot
    // (950 of 2000 rows; progress was recorded at 900), so life 1 resumes it incrementally
    // from the last recorded key (1100 rows) next to a 1000-row update, and fails inside
    // that; life 2 fails 400 events into another 1000-row update.
    for (life, room) in [(0, 950), (1, 1600), (2, 400)] {
        let sink = FailAfter {
            inner: Box::new(
                JetStreamSink::connect(&nats, &stream, &name, &name)
                    .await
                    .unwrap(),
            ),
            room: Some(room),
        };
        let running = start(config.clone(), Box::new(sink), &state);
        // In life 1 the update must follow the new slot's snapshot to be streamed; from
        // then on the slot exists and keeps changes for the connector.
        if life == 1 {
            wait_streaming(&url, &name).await;
        }
        if life > 0 {
            db.batch_execute(&format!("UPDATE orders SET v = {life} WHERE id <= 1000"))
                .await
                .unwrap();
        }
        let outcome = tokio::time::timeout(Duration::from_secs(60), running.task)
            .await
            .expect("the injected failure ends the run")
            .unwrap();
        assert!(outcome.is_err(), "life {life} should fail");
    }
    let sink = JetStreamSink::connect(&nats, &stream, &name, &name)
        .await
        .unwrap();
    let running = start(
        config.clone().drop_slot_on_stop(true),
        Box::new(sink),
        &state,
    );
    db.batch_execute("UPDATE orders SET v = 9 WHERE id > 1900")
        .await
        .unwrap();

    // Read the whole stream back: until it holds the last update.
    let js = async_nats::jetstream::new(async_nats::connect(&nats).await.unwrap());
    let mut s = js.get_stream(&stream).await.unwrap();
    let read_all = |s: async_nats::jetstream::stream::Stream| async move {
        let mut s = s;
        let last = s.info().await.unwrap().state.last_sequence;
        let mut events = Vec::new();
        for seq in 1..=last {
            let m = s.get_raw_message(seq).await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            let position = m
                .headers
                .get("Mainstay-Position")
                .unwrap()
                .as_str()
                .to_string();
            events.push((position, m.subject.to_string(), v));
        }
        events
    };
    mainstay_testkit::eventually(
        Duration::from_secs(30),
        "the last update in the stream",
        || {
            let s = s.clone();
            async move {
                read_all(s)
                    .await
                    .iter()
                    .filter(|(_, _, v)| v["op"] == "u" && v["after"]["v"] == 9)
                    .count()
                    == 100
            }
        },
    )
    .await
    .unwrap();
    running.stop().await.expect("clean stop");
    let events = read_all(s.clone()).await;
    let _ = s.info().await.unwrap();
    // In source order with no repeats: every event once by position.
    let positions: Vec<Position> = events
        .iter()
        .map(|(p, _, _)| p.parse().expect("a position header"))
        .collect();
    for w in positions.windows(2) {
        assert!(
            w[0] < w[1],
            "out of order or repeated: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
    assert!(events
        .iter()
        .all(|(_, subject, _)| subject == &format!("{name}.public.orders")));
    // Every streamed change exactly once.
    let updates = events.iter().filter(|(_, _, v)| v["op"] == "u").count();
    assert_eq!(updates, 2100, "each update exactly once");
    // Snapshot rows: every row read; read twice at most the rows of the fetch or chunk a
    // failure cut (rows 901-950 in life 0, at most one 300-row chunk in life 1): progress
    // is recorded per chunk the sink took. A resumed row updated during its window comes
    // as the update instead.
    let mut reads = std::collections::BTreeMap::<i64, usize>::new();
    for (_, _, v) in events.iter().filter(|(_, _, v)| v["op"] == "r") {
        *reads.entry(v["after"]["id"].as_i64().unwrap()).or_default() += 1;
    }
    let twice: Vec<i64> = reads
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(&id, _)| id)
        .collect();
    assert!(
        twice.len() <= 50 + 300 && reads.values().all(|&n| n <= 2),
        "rows read again beyond the cut fetch and chunk: {twice:?}"
    );
    eprintln!("{} snapshot rows read twice", twice.len());
    let missing: Vec<i64> = (1..=2000)
        .filter(|id| !reads.contains_key(id))
        .filter(|&id| {
            !events
                .iter()
                .any(|(_, _, v)| v["op"] == "u" && v["after"]["id"] == id)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "rows never read nor updated: {missing:?}"
    );
    // Replaying the stream gives the table.
    let mut state = std::collections::BTreeMap::new();
    for (_, _, v) in &events {
        state.insert(
            v["after"]["id"].as_i64().unwrap(),
            v["after"]["v"].as_i64().unwrap(),
        );
    }
    let rows = db
        .query("SELECT id, v::int8 FROM orders", &[])
        .await
        .unwrap();
    let source: std::collections::BTreeMap<i64, i64> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(state, source);
}
