//! The outbox event router to JetStream: 10k outbox rows from 4 writers reach the bus
//! exactly once, in per-aggregate order, across a failure mid-batch.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use mainstay_cdc::{CdcConfig, JetStreamSink, OutboxRouter, SnapshotMode, TableName};

use crate::common::*;

const PER_WRITER: i64 = 2500;

async fn writer(url: String, w: i64) {
    let db = client(&url).await;
    for n in 0..PER_WRITER {
        // Each writer owns ten aggregates; `seq` counts one aggregate's events.
        let aggregate = format!("w{w}-{}", n % 10);
        let seq = n / 10 + 1;
        let kind = if n % 10 < 5 { "order" } else { "payment" };
        db.execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ($1, $2, 'Changed', $3::text::jsonb)",
            &[&kind, &aggregate, &format!("{{\"aggregate\": \"{aggregate}\", \"seq\": {seq}}}")],
        )
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_reach_jetstream_once_in_per_aggregate_order() {
    let nats = mainstay_testkit::shared_nats().url();
    let url = database().await;
    let db = client(&url).await;
    db.batch_execute(
        "CREATE TABLE outbox (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), aggregatetype text NOT NULL,
                              aggregateid text NOT NULL, type text NOT NULL, payload jsonb NOT NULL)",
    )
    .await
    .unwrap();
    let name = mainstay_testkit::unique("ob").to_lowercase();
    let stream = name.to_uppercase();
    // Each test its own route prefix, so parallel tests' streams do not overlap.
    let mut router = OutboxRouter::new(TableName::parse("outbox").unwrap());
    router.route_prefix = format!("{name}.outbox");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = CdcConfig::new(&name, &url)
        .slot(&name)
        .tables(vec![TableName::parse("outbox").unwrap()])
        .snapshot_mode(SnapshotMode::NoData)
        .max_batch(200);
    let sink = |room| {
        let nats = nats.clone();
        let stream = stream.clone();
        let name = name.clone();
        let router = router.clone();
        async move {
            FailAfter {
                inner: Box::new(
                    JetStreamSink::connect_with_outbox(
                        &nats,
                        &stream,
                        &format!("{name}.cdc"),
                        &name,
                        Some(router),
                    )
                    .await
                    .unwrap(),
                ),
                room,
            }
        }
    };
    let first = start(config.clone(), Box::new(sink(Some(3333)).await), &state);
    wait_streaming(&url, &name).await;
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(writer(url.clone(), w)))
        .collect();
    let outcome = tokio::time::timeout(Duration::from_secs(60), first.task)
        .await
        .expect("the injected failure ends the first run")
        .unwrap();
    assert!(outcome.is_err());
    let second = start(
        config.drop_slot_on_stop(true),
        Box::new(sink(None).await),
        &state,
    );
    for w in writers {
        w.await.unwrap();
    }
    let js = async_nats::jetstream::new(async_nats::connect(&nats).await.unwrap());
    let mut s = js.get_stream(&stream).await.unwrap();
    let total = 4 * PER_WRITER as u64;
    mainstay_testkit::eventually(
        Duration::from_secs(60),
        "every outbox event on the bus",
        || {
            let mut s = s.clone();
            async move {
                s.info()
                    .await
                    .map(|i| i.state.messages >= total)
                    .unwrap_or(false)
            }
        },
    )
    .await
    .unwrap();
    second.stop().await.expect("clean stop");
    let last = s.info().await.unwrap().state.last_sequence;
    assert_eq!(last, total, "exactly {total} messages");
    let mut ids = HashSet::new();
    let mut seqs: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for seq in 1..=last {
        let m = s.get_raw_message(seq).await.unwrap();
        let id = m.headers.get("Nats-Msg-Id").unwrap().as_str().to_string();
        assert!(ids.insert(id.clone()), "event {id} twice");
        let key = m
            .headers
            .get("Mainstay-Aggregate-Id")
            .unwrap()
            .as_str()
            .to_string();
        let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(body["aggregate"], key.as_str());
        let kind = if key.rsplit('-').next().unwrap().parse::<i64>().unwrap() < 5 {
            "order"
        } else {
            "payment"
        };
        assert_eq!(m.subject.to_string(), format!("{name}.outbox.{kind}"));
        seqs.entry(key)
            .or_default()
            .push(body["seq"].as_i64().unwrap());
    }
    assert_eq!(seqs.len(), 40);
    for (aggregate, s) in &seqs {
        let expected: Vec<i64> = (1..=PER_WRITER / 10).collect();
        assert_eq!(
            s, &expected,
            "aggregate {aggregate}: events missing, repeated or out of order"
        );
    }
}
