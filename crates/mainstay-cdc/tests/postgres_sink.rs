//! The PostgreSQL sink: a replica and an audit log kept exactly once across a failure, and
//! fencing — a deposed connector's writes are refused by the sink once its successor claimed
//! it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mainstay_cdc::{
    CdcConfig, CdcError, Connector, PostgresSink, PostgresSinkMode, Sink, TableName,
};
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::common::*;

/// Passes every batch to `inner` and keeps a copy of what it took.
struct Tee {
    inner: Box<dyn Sink>,
    copy: Received,
}

#[async_trait::async_trait]
impl Sink for Tee {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn last_position(&mut self) -> Result<Option<mainstay_cdc::Position>, CdcError> {
        self.inner.last_position().await
    }
    async fn fence(&mut self, token: u64) -> Result<bool, CdcError> {
        self.inner.fence(token).await
    }
    async fn write(&mut self, events: &[mainstay_cdc::ChangeEvent]) -> Result<(), CdcError> {
        self.inner.write(events).await?;
        self.copy.events.lock().unwrap().extend_from_slice(events);
        Ok(())
    }
}

async fn writer(url: String, seed: u64, stop: Arc<AtomicBool>) {
    let db = client(&url).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let id: i64 = rng.random_range(1..=3000);
        let sql = match rng.random_range(0..5) {
            0 | 1 => format!("UPDATE items SET qty = qty + 1 WHERE id = {id}"),
            2 => format!("DELETE FROM items WHERE id = {id}"),
            3 => format!(
                "BEGIN; UPDATE items SET qty = qty * 2 WHERE id = {id}; \
                 INSERT INTO items VALUES ({}, 5) ON CONFLICT (id) DO NOTHING; COMMIT",
                id % 1000 + 1
            ),
            _ => {
                format!("INSERT INTO items VALUES ({id}, 1) ON CONFLICT (id) DO UPDATE SET qty = 0")
            }
        };
        db.batch_execute(&sql).await.unwrap();
    }
}

/// The replica table's rows, keyed like `source_rows` keys the source.
async fn replica_rows(sink: &tokio_postgres::Client, table: &str) -> BTreeMap<String, Value> {
    let rows = sink
        .query(&format!("SELECT key::text, row::text FROM {table}"), &[])
        .await
        .unwrap_or_default();
    rows.iter()
        .map(|r| {
            let key: String = r.get(0);
            let row: String = r.get(1);
            (
                serde_json::from_str::<Value>(&key).unwrap().to_string(),
                serde_json::from_str(&row).unwrap(),
            )
        })
        .collect()
}

async fn equal_eventually(db: &tokio_postgres::Client, sink: &tokio_postgres::Client, table: &str) {
    let expected = source_rows(db, "items").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut got = replica_rows(sink, table).await;
    while got != expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        got = replica_rows(sink, table).await;
    }
    assert_eq!(got.len(), expected.len(), "one replica row per source row");
    assert!(got == expected, "the replica differs from the source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_and_audit_log_hold_every_change_once_across_a_failure() {
    let url = database().await;
    let sink_url = database().await;
    let db = client(&url).await;
    db.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, qty bigint NOT NULL);
         INSERT INTO items SELECT g, 0 FROM generate_series(1, 2000) g;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = |slot: &str| {
        CdcConfig::new("pgsink", &url)
            .slot(slot)
            .tables(vec![TableName::parse("items").unwrap()])
            .max_batch(300)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|i| tokio::spawn(writer(url.clone(), i, stop.clone())))
        .collect();
    let mut runs = Vec::new();
    for (mode, connector) in [
        (PostgresSinkMode::Replica, "replica"),
        (PostgresSinkMode::Audit, "audit"),
    ] {
        let sink = PostgresSink::connect(&sink_url, "cdc", connector, mode)
            .await
            .unwrap();
        let state = dir.path().join(connector);
        // The first run fails mid-batch after 2500 events; the second resumes.
        let first = start(
            config(connector),
            Box::new(FailAfter {
                inner: Box::new(sink),
                room: Some(2500),
            }),
            &state,
        );
        let outcome = tokio::time::timeout(Duration::from_secs(60), first.task)
            .await
            .expect("the injected failure ends the first run")
            .unwrap();
        assert!(outcome.is_err(), "{outcome:?}");
        let sink = PostgresSink::connect(&sink_url, "cdc", connector, mode)
            .await
            .unwrap();
        runs.push(start(
            config(connector).drop_slot_on_stop(true),
            Box::new(sink),
            &state,
        ));
        wait_streaming(&url, connector).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let sink_db = client(&sink_url).await;
    equal_eventually(&db, &sink_db, r#"cdc."public.items""#).await;

    // The audit log: every change once (no position twice, in position order by seq), and
    // replaying it gives the source.
    let expected = source_rows(&db, "items").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rows = sink_db
            .query(
                "SELECT position, op, envelope::text FROM cdc.mainstay_cdc_events WHERE connector = 'audit' ORDER BY seq",
                &[],
            )
            .await
            .unwrap();
        let mut state: BTreeMap<String, Value> = BTreeMap::new();
        let mut last: Option<mainstay_cdc::Position> = None;
        for row in &rows {
            let position: mainstay_cdc::Position = row.get::<_, String>(0).parse().unwrap();
            assert!(
                last.is_none_or(|l| l < position),
                "audit log out of order or duplicated: {last:?} then {position:?}"
            );
            last = Some(position);
            let envelope: Value = serde_json::from_str(row.get::<_, &str>(2)).unwrap();
            match row.get::<_, &str>(1) {
                "r" | "c" | "u" => {
                    let id = envelope["after"]["id"].as_i64().unwrap();
                    state.insert(
                        serde_json::json!({ "id": id }).to_string(),
                        envelope["after"].clone(),
                    );
                }
                "d" => {
                    let id = envelope["before"]["id"].as_i64().unwrap();
                    state.remove(&serde_json::json!({ "id": id }).to_string());
                }
                other => panic!("unexpected op {other}"),
            }
        }
        if state == expected {
            eprintln!("audit log: {} events", rows.len());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the audit log's replay differs from the source"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for run in runs {
        run.stop().await.expect("clean stop");
    }
}

/// Failover at the library level: connector A (token 1) streams; B (token 2) starts while
/// A still runs, claims the sink, takes the slot from A's walsender and resumes. A's writes
/// and its reconnect are refused (`Fenced`), and the replica ends equal to the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_connector_is_refused_once_its_successor_claimed_the_sink() {
    let url = database().await;
    let sink_url = database().await;
    let db = client(&url).await;
    db.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, qty bigint NOT NULL);
         INSERT INTO items SELECT g, 0 FROM generate_series(1, 500) g;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let config = CdcConfig::new("fenced", &url)
        .slot("fenced")
        .tables(vec![TableName::parse("items").unwrap()])
        .heartbeat_interval(Some(Duration::from_millis(200)));
    let sink = || PostgresSink::connect(&sink_url, "cdc", "fenced", PostgresSinkMode::Replica);
    let written = Received::default();
    let a = start_connector(
        Connector::new(
            config.clone(),
            Box::new(Tee {
                inner: Box::new(sink().await.unwrap()),
                copy: written.clone(),
            }),
        )
        .state_file(&state)
        .fencing_token(1),
    );
    wait_streaming(&url, "fenced").await;
    // A second handle on the sink with A's token, for a stale write later.
    let mut stale = sink().await.unwrap();
    assert!(stale.fence(1).await.unwrap());
    let sink_db = client(&sink_url).await;
    equal_eventually(&db, &sink_db, r#"cdc."public.items""#).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|i| tokio::spawn(writer(url.clone(), 10 + i, stop.clone())))
        .collect();
    let b = start_connector(
        Connector::new(
            config.clone().drop_slot_on_stop(true),
            Box::new(sink().await.unwrap()),
        )
        .state_file(&state)
        .fencing_token(2),
    );
    // A finds itself fenced: at its next write, or at its reconnect after B ended its
    // walsender.
    let a_outcome = tokio::time::timeout(Duration::from_secs(30), a.task)
        .await
        .expect("the deposed connector stops")
        .unwrap();
    match a_outcome {
        Err(CdcError::Fenced {
            presented: 1,
            current: 2,
            ..
        }) => {}
        other => panic!("expected a fencing refusal for token 1, got {other:?}"),
    }
    // A stale write straight to the sink is refused too, atomically: nothing changes.
    let mut stale = sink().await.unwrap();
    let err = stale.fence(1).await.unwrap_err();
    assert!(
        matches!(
            err,
            CdcError::Fenced {
                presented: 1,
                current: 2,
                ..
            }
        ),
        "{err}"
    );
    wait_streaming(&url, "fenced").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    equal_eventually(&db, &sink_db, r#"cdc."public.items""#).await;
    let token: i64 = sink_db
        .query_one(
            "SELECT fencing_token FROM cdc.mainstay_cdc_offsets WHERE connector = 'fenced'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(token, 2);
    b.stop().await.expect("clean stop");
}
