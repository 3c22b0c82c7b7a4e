//! Redis kept in sync with tables under writers and a failure: the cache equals the source.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mainstay_cdc::{CdcConfig, RedisSink, TableName};
use rand::{Rng, SeedableRng};

use crate::common::*;

async fn writer(url: String, seed: u64, stop: Arc<AtomicBool>) {
    let db = client(&url).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let id: i64 = rng.random_range(1..=3000);
        let sql = match rng.random_range(0..4) {
            0 | 1 => format!("UPDATE items SET qty = qty + 1 WHERE id = {id}"),
            2 => format!("DELETE FROM items WHERE id = {id}"),
            _ => {
                format!("INSERT INTO items VALUES ({id}, 1) ON CONFLICT (id) DO UPDATE SET qty = 0")
            }
        };
        db.batch_execute(&sql).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_equals_the_source_after_writers_a_failure_and_a_truncate() {
    let redis_url = mainstay_testkit::shared_redis().url();
    let url = database().await;
    let db = client(&url).await;
    db.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, qty bigint NOT NULL);
         INSERT INTO items SELECT g, 0 FROM generate_series(1, 2000) g;
         CREATE TABLE scratch (id int PRIMARY KEY);
         INSERT INTO scratch SELECT generate_series(1, 50);",
    )
    .await
    .unwrap();
    let prefix = mainstay_testkit::unique("cache");
    let template = format!("{prefix}:{{schema}}.{{table}}:{{key}}");
    let checkpoint = format!("{prefix}:checkpoint");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = CdcConfig::new("cache", &url)
        .slot("redis_sink")
        .tables(vec![
            TableName::parse("items").unwrap(),
            TableName::parse("scratch").unwrap(),
        ])
        .max_batch(200);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|i| tokio::spawn(writer(url.clone(), i, stop.clone())))
        .collect();
    let first = start(
        config.clone(),
        Box::new(FailAfter {
            inner: Box::new(
                RedisSink::connect(&redis_url, &template, &checkpoint)
                    .await
                    .unwrap(),
            ),
            room: Some(3100),
        }),
        &state,
    );
    let outcome = tokio::time::timeout(Duration::from_secs(60), first.task)
        .await
        .expect("the injected failure ends the first run")
        .unwrap();
    assert!(outcome.is_err());
    let second = start(
        config.drop_slot_on_stop(true),
        Box::new(
            RedisSink::connect(&redis_url, &template, &checkpoint)
                .await
                .unwrap(),
        ),
        &state,
    );
    wait_streaming(&url, "redis_sink").await;
    db.batch_execute("TRUNCATE scratch").await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let expected = source_rows(&db, "items").await;
    let redis = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let cached = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        let prefix = prefix.clone();
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}:public.*"))
                .query_async(&mut conn)
                .await
                .unwrap();
            let mut rows = std::collections::BTreeMap::new();
            for key in keys {
                // A key can go between KEYS and GET while the connector runs.
                let value: Option<String> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                if let Some(value) = value {
                    rows.insert(
                        key,
                        serde_json::from_str::<serde_json::Value>(&value).unwrap(),
                    );
                }
            }
            rows
        }
    };
    let want: std::collections::BTreeMap<String, serde_json::Value> = expected
        .values()
        .map(|row| (format!("{prefix}:public.items:{}", row["id"]), row.clone()))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut got = cached(&mut conn).await;
    while got != want && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        got = cached(&mut conn).await;
    }
    second.stop().await.expect("clean stop");
    assert_eq!(
        got.len(),
        want.len(),
        "one key per source row, none for the truncated table"
    );
    assert!(got == want, "the cache differs from the source");
}

/// Fencing at the Redis sink: once a successor claimed it with a higher token, the
/// deposed connector's next batch is refused whole (nothing of it lands), and so is its
/// claim; the successor then brings the cache up to date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_connector_is_refused_by_the_redis_sink() {
    let redis_url = mainstay_testkit::shared_redis().url();
    let url = database().await;
    let db = client(&url).await;
    db.batch_execute("CREATE TABLE items (id bigint PRIMARY KEY, qty bigint NOT NULL); INSERT INTO items VALUES (1, 1);")
        .await
        .unwrap();
    let prefix = mainstay_testkit::unique("fenced");
    let template = format!("{prefix}:{{schema}}.{{table}}:{{key}}");
    let checkpoint = format!("{prefix}:checkpoint");
    let sink = || RedisSink::connect(&redis_url, &template, &checkpoint);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = CdcConfig::new("fenced", &url)
        .slot("redis_fenced")
        .tables(vec![TableName::parse("items").unwrap()]);
    let a = start_connector(
        mainstay_cdc::Connector::new(config.clone(), Box::new(sink().await.unwrap()))
            .state_file(&state)
            .fencing_token(1),
    );
    wait_streaming(&url, "redis_fenced").await;
    let redis = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let get = |conn: &mut redis::aio::MultiplexedConnection, id: i64| {
        let mut conn = conn.clone();
        let key = format!("{prefix}:public.items:{id}");
        async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<String>>(&mut conn)
                .await
                .unwrap()
        }
    };
    mainstay_testkit::eventually(
        Duration::from_secs(30),
        "the snapshot row in the cache",
        || {
            let row = get(&mut conn, 1);
            async move { row.await.is_some() }
        },
    )
    .await
    .unwrap();
    // The successor claims the sink; A does not know yet.
    let mut successor = sink().await.unwrap();
    assert!(mainstay_cdc::Sink::fence(&mut successor, 2).await.unwrap());
    db.batch_execute("INSERT INTO items VALUES (2, 2)")
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), a.task)
        .await
        .expect("the deposed connector stops")
        .unwrap();
    match outcome {
        Err(mainstay_cdc::CdcError::Fenced {
            presented: 1,
            current: 2,
            ..
        }) => {}
        other => panic!("expected a fencing refusal, got {other:?}"),
    }
    assert_eq!(get(&mut conn, 2).await, None, "the refused batch landed");
    let mut stale = sink().await.unwrap();
    let err = mainstay_cdc::Sink::fence(&mut stale, 1).await.unwrap_err();
    assert!(
        matches!(
            err,
            mainstay_cdc::CdcError::Fenced {
                presented: 1,
                current: 2,
                ..
            }
        ),
        "{err}"
    );
    // The successor runs and the cache catches up.
    let b = start_connector(
        mainstay_cdc::Connector::new(config.drop_slot_on_stop(true), Box::new(successor))
            .state_file(&state)
            .fencing_token(2),
    );
    mainstay_testkit::eventually(Duration::from_secs(30), "row 2 from the successor", || {
        let row = get(&mut conn, 2);
        async move { row.await.is_some() }
    })
    .await
    .unwrap();
    b.stop().await.expect("clean stop");
}
