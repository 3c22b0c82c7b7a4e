//! The JetStream sink across failures: every event once in the stream, in source order.

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
        .max_batch(100);
    // Three lives, each failing part-way through a batch. Life 0 fails inside the snapshot
    // (950 of 2000 rows), so life 1 snapshots again at a new consistent point, then fails
    // 300 rows into a 1000-row update; life 2 fails 400 rows later, inside the rest of
    // that transaction.
    for (life, room) in [(0, 950), (1, 2300), (2, 400)] {
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

    // Read the whole stream back.
    let js = async_nats::jetstream::new(async_nats::connect(&nats).await.unwrap());
    // 950 rows of the cut snapshot + 2000 of the repeat + 3 updates (1000, 1000, 100).
    let expected_total = 950 + 2000 + 2100;
    let mut s = js.get_stream(&stream).await.unwrap();
    mainstay_testkit::eventually(Duration::from_secs(30), "every event in the stream", || {
        let mut s = s.clone();
        async move {
            s.info()
                .await
                .map(|i| i.state.messages >= expected_total)
                .unwrap_or(false)
        }
    })
    .await
    .unwrap();
    running.stop().await.expect("clean stop");
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
    assert_eq!(
        events.len() as u64,
        expected_total,
        "each event exactly once"
    );
    // In source order with no repeats: the repeated snapshot sits at a later consistent
    // point than the cut one, and every streamed change is there once.
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
    let updates = events.iter().filter(|(_, _, v)| v["op"] == "u").count();
    assert_eq!(updates, 2100);
    let reads = events.iter().filter(|(_, _, v)| v["op"] == "r").count();
    assert_eq!(reads, 2950);
}
