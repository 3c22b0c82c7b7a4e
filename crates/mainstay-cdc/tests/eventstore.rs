//! The event store sink across failures: each row's stream holds its history once, in order.

use std::sync::Arc;
use std::time::Duration;

use mainstay_cdc::{CdcConfig, EventStoreSink, TableName};
use mainstay_eventstore::{Direction, EventStore, Position as StorePosition, ReadAllFilter};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_row_stream_holds_its_history_once_across_failures() {
    let url = database().await;
    let db = client(&url).await;
    db.batch_execute(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, v int);
         INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 500) g;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(
        mainstay_eventstore::sqlite::SqliteEventStore::open(dir.path().join("events.db")).unwrap(),
    );
    let state = dir.path().join("state");
    let config = CdcConfig::new("bank", &url)
        .slot("eventstore_sink")
        .tables(vec![TableName::parse("accounts").unwrap()])
        .max_batch(100);
    // Life 0 takes the snapshot and 150 rows of the first update, life 1 300 more; the
    // last life the rest and the second update.
    for (life, room) in [(0, 650), (1, 300)] {
        let sink = FailAfter {
            inner: Box::new(EventStoreSink::new(store.clone(), "bank").await.unwrap()),
            room: Some(room),
        };
        let running = start(config.clone(), Box::new(sink), &state);
        if life == 0 {
            wait_streaming(&url, "eventstore_sink").await;
        }
        db.batch_execute(&format!("UPDATE accounts SET v = {}", life + 1))
            .await
            .unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(60), running.task)
            .await
            .expect("the injected failure ends the run")
            .unwrap();
        assert!(outcome.is_err(), "life {life} should fail");
    }
    let sink = EventStoreSink::new(store.clone(), "bank").await.unwrap();
    let running = start(config.drop_slot_on_stop(true), Box::new(sink), &state);
    let count = || {
        let store = store.clone();
        async move {
            store
                .read_all(StorePosition::START, 100_000, &ReadAllFilter::default())
                .await
                .unwrap()
                .iter()
                .filter(|e| e.stream != "bank-cdc-checkpoint")
                .count()
        }
    };
    mainstay_testkit::eventually(Duration::from_secs(30), "1500 events", || {
        let count = count();
        async move { count.await >= 1500 }
    })
    .await
    .unwrap();
    running.stop().await.expect("clean stop");
    assert_eq!(count().await, 1500, "500 reads and 1000 updates, each once");
    for id in 1..=500 {
        let stream = format!("bank-public.accounts-{id}");
        let events = store
            .read_stream(&stream, 0, Direction::Forward, 10)
            .await
            .unwrap();
        let history: Vec<(String, i64)> = events
            .iter()
            .map(|e| (e.event_type.clone(), e.data["after"]["v"].as_i64().unwrap()))
            .collect();
        assert_eq!(
            history,
            [
                ("RowRead".to_string(), 0),
                ("RowUpdated".to_string(), 1),
                ("RowUpdated".to_string(), 2)
            ],
            "stream {stream}"
        );
    }
}
