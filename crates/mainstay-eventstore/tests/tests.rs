//! Event store behaviour, on SQLite and on a real PostgreSQL.

use mainstay_eventstore::postgres::PostgresEventStore;
use mainstay_eventstore::sqlite::SqliteEventStore;
use mainstay_eventstore::{
    subscribe, Append, DeleteMode, Direction, EventData, EventStore, ExpectedVersion, Position,
    ReadAllFilter, StoreError, StreamMetadata, SubscribeOptions,
};
use mainstay_testkit::shared_postgres;
use mainstay_testkit::{per_store, StoreKind as Kind};
use serde_json::json;
use std::sync::Arc;

/// A fresh store: a SQLite file in a temp dir, or a fresh PostgreSQL database.
async fn store(kind: Kind) -> (Arc<dyn EventStore>, Box<dyn std::any::Any + Send>) {
    store_batched(kind, mainstay_eventstore::DEFAULT_SCAVENGE_BATCH).await
}

/// A fresh store whose scavenge removes at most `batch` events per transaction.
async fn store_batched(
    kind: Kind,
    batch: usize,
) -> (Arc<dyn EventStore>, Box<dyn std::any::Any + Send>) {
    match kind {
        Kind::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let s = SqliteEventStore::open(dir.path().join("events.db"))
                .unwrap()
                .with_scavenge_batch(batch);
            (Arc::new(s), Box::new(dir))
        }
        Kind::Postgres => {
            let pg = shared_postgres();
            let url = pg.database().await.unwrap();
            let s = PostgresEventStore::connect(&url)
                .await
                .unwrap()
                .with_scavenge_batch(batch);
            (Arc::new(s), Box::new((pg, url)))
        }
    }
}

/// Waits until `$all` shows at least `n` events. On PostgreSQL `$all` serves a committed
/// append only once every transaction older than it has ended (other tests' transactions
/// on the shared server count), so a reader may trail a writer briefly; never by skipping.
async fn settle(s: &Arc<dyn EventStore>, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let seen = s
            .read_all(Position::START, usize::MAX, &ReadAllFilter::default())
            .await
            .unwrap()
            .len();
        if seen >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "$all shows {seen} of {n} events"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

fn ev(t: &str, n: i64) -> EventData {
    EventData::new(t, json!({ "n": n }))
}

async fn expected_versions_and_conflicts_carry_both_sides(kind: Kind) {
    let (s, _d) = store(kind).await;
    use ExpectedVersion::*;
    let r = s
        .append(
            "acct-1",
            NoStream,
            vec![ev("Opened", 0), ev("Deposited", 1)],
        )
        .await
        .unwrap();
    assert_eq!(r.next_expected_version, 1);
    assert!(r.first_position < r.last_position);
    s.append("acct-1", Exact(1), vec![ev("Deposited", 2)])
        .await
        .unwrap();
    s.append("acct-1", StreamExists, vec![ev("Deposited", 3)])
        .await
        .unwrap();
    s.append("acct-1", Any, vec![ev("Deposited", 4)])
        .await
        .unwrap();
    assert_eq!(s.stream_version("acct-1").await.unwrap(), Some(4));

    for (expected, actual) in [(Exact(1), Some(4)), (NoStream, Some(4))] {
        match s.append("acct-1", expected, vec![ev("X", 9)]).await {
            Err(StoreError::WrongExpectedVersion {
                stream,
                expected: e,
                actual: a,
            }) => {
                assert_eq!((stream.as_str(), e, a), ("acct-1", expected, actual));
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    match s.append("acct-2", StreamExists, vec![ev("X", 9)]).await {
        Err(StoreError::WrongExpectedVersion { actual: None, .. }) => {}
        other => panic!("{other:?}"),
    }
    match s.append("acct-2", Exact(0), vec![ev("X", 9)]).await {
        Err(e @ StoreError::WrongExpectedVersion { .. }) => {
            assert!(
                e.to_string().contains("expected 0, actual no stream"),
                "{e}"
            )
        }
        other => panic!("{other:?}"),
    }
    // Nothing was written by the refused appends.
    assert_eq!(s.stream_version("acct-1").await.unwrap(), Some(4));
    assert!(matches!(
        s.read_stream("acct-2", 0, Direction::Forward, 10).await,
        Err(StoreError::StreamNotFound(_))
    ));
}

async fn reads_forward_backward_and_all_with_filters(kind: Kind) {
    let (s, _d) = store(kind).await;
    for i in 0..5 {
        s.append(
            "order-1",
            ExpectedVersion::Any,
            vec![ev(if i % 2 == 0 { "A" } else { "B" }, i)],
        )
        .await
        .unwrap();
        s.append("cart-1", ExpectedVersion::Any, vec![ev("C", i)])
            .await
            .unwrap();
    }
    let fwd = s
        .read_stream("order-1", 1, Direction::Forward, 3)
        .await
        .unwrap();
    assert_eq!(
        fwd.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let back = s
        .read_stream("order-1", 3, Direction::Backward, 10)
        .await
        .unwrap();
    assert_eq!(
        back.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![3, 2, 1, 0]
    );
    assert_eq!(back[0].data, json!({"n": 3}));

    settle(&s, 10).await;
    let all = s
        .read_all(Position::START, 100, &ReadAllFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 10);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    let after = s
        .read_all(all[4].position, 100, &ReadAllFilter::default())
        .await
        .unwrap();
    assert_eq!(after.len(), 5);
    let orders = ReadAllFilter {
        stream_prefix: Some("order-".into()),
        event_types: vec![],
    };
    assert_eq!(
        s.read_all(Position::START, 100, &orders)
            .await
            .unwrap()
            .len(),
        5
    );
    let bs = ReadAllFilter {
        stream_prefix: None,
        event_types: vec!["B".into(), "C".into()],
    };
    assert_eq!(
        s.read_all(Position::START, 100, &bs).await.unwrap().len(),
        7
    );
}

/// Acceptance: the same batch replayed 1000 times under `Exact` and under `Any` stores one
/// copy and returns the same positions.
async fn idempotent_append_replayed_1000_times(kind: Kind) {
    let (s, _d) = store(kind).await;
    s.append("s", ExpectedVersion::NoStream, vec![ev("First", 0)])
        .await
        .unwrap();
    let batch = vec![ev("A", 1), ev("B", 2), ev("C", 3)];
    for expected in [ExpectedVersion::Exact(0), ExpectedVersion::Any] {
        let stream = if expected == ExpectedVersion::Any {
            "t"
        } else {
            "s"
        };
        if stream == "t" {
            s.append("t", ExpectedVersion::NoStream, vec![ev("First", 0)])
                .await
                .unwrap();
        }
        let first = s.append(stream, expected, batch.clone()).await.unwrap();
        for _ in 0..1000 {
            assert_eq!(
                s.append(stream, expected, batch.clone()).await.unwrap(),
                first
            );
        }
        let events = s
            .read_stream(stream, 0, Direction::Forward, 100)
            .await
            .unwrap();
        assert_eq!(events.len(), 4, "one copy in {stream}");
        assert_eq!(s.stream_version(stream).await.unwrap(), Some(3));
    }
    // Part of a stored batch with new events is not a retry.
    let mut mixed = batch.clone();
    mixed.push(ev("D", 4));
    assert!(matches!(
        s.append("s", ExpectedVersion::Any, mixed).await,
        Err(StoreError::IdempotencyConflict { .. })
    ));
    // A retry whose expected version contradicts where the batch went is a conflict.
    assert!(matches!(
        s.append("s", ExpectedVersion::Exact(2), batch.clone())
            .await,
        Err(StoreError::WrongExpectedVersion { .. })
    ));
    // The right current version, but a stored id in a new batch: refused, naming it.
    let stale = vec![ev("E", 5), batch[1].clone()];
    match s.append("s", ExpectedVersion::Exact(3), stale).await {
        Err(StoreError::IdempotencyConflict { event_id, .. }) => {
            assert_eq!(event_id, batch[1].id)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.stream_version("s").await.unwrap(), Some(3));
}

async fn multi_stream_append_is_all_or_nothing(kind: Kind) {
    let (s, _d) = store(kind).await;
    let ok = s
        .append_many(vec![
            Append {
                stream: "from".into(),
                expected: ExpectedVersion::NoStream,
                events: vec![ev("Debited", 10)],
            },
            Append {
                stream: "to".into(),
                expected: ExpectedVersion::NoStream,
                events: vec![ev("Credited", 10)],
            },
        ])
        .await
        .unwrap();
    assert_eq!(ok.len(), 2);
    assert!(ok[1].first_position > ok[0].last_position);
    let refused = s
        .append_many(vec![
            Append {
                stream: "from".into(),
                expected: ExpectedVersion::Exact(0),
                events: vec![ev("Debited", 5)],
            },
            Append {
                stream: "to".into(),
                expected: ExpectedVersion::NoStream,
                events: vec![ev("Credited", 5)],
            },
        ])
        .await;
    assert!(
        matches!(refused, Err(StoreError::WrongExpectedVersion { ref stream, .. }) if stream == "to")
    );
    assert_eq!(
        s.stream_version("from").await.unwrap(),
        Some(0),
        "the first append was rolled back"
    );
    settle(&s, 2).await;
    assert_eq!(
        s.read_all(Position::START, 100, &ReadAllFilter::default())
            .await
            .unwrap()
            .len(),
        2
    );
}

async fn bad_input_is_refused_and_changes_nothing(kind: Kind) {
    let (s, _d) = store(kind).await;
    let field = |r: Result<_, StoreError>| match r {
        Err(StoreError::InvalidArgument { field, .. }) => field,
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    assert_eq!(
        field(s.append("", ExpectedVersion::Any, vec![ev("A", 1)]).await),
        "stream"
    );
    assert_eq!(
        field(
            s.append("$all", ExpectedVersion::Any, vec![ev("A", 1)])
                .await
        ),
        "stream"
    );
    assert_eq!(
        field(s.append("s", ExpectedVersion::Any, vec![]).await),
        "appends[0].events"
    );
    let big = EventData::new(
        "Big",
        json!({"blob": "x".repeat(mainstay_eventstore::MAX_EVENT_BYTES)}),
    );
    assert_eq!(
        field(
            s.append("s", ExpectedVersion::Any, vec![ev("A", 1), big])
                .await
        ),
        "appends[0].events[1].data"
    );
    let a = ev("A", 1);
    assert_eq!(
        field(
            s.append("s", ExpectedVersion::Any, vec![a.clone(), a])
                .await
        ),
        "appends[0].events[1].id"
    );
    assert!(s
        .read_all(Position::START, 10, &ReadAllFilter::default())
        .await
        .unwrap()
        .is_empty());
}

/// Writers on many streams and a reader polling `$all`: the reader never sees a position
/// below one it already saw, and in the end has every event exactly once.
async fn all_is_gap_free_under_concurrent_writers(kind: Kind) {
    let (s, _d) = store(kind).await;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    let batch = (0..(i % 3 + 1)).map(|k| ev("E", k)).collect();
                    s.append(&format!("w-{w}"), ExpectedVersion::Any, batch)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let total: usize = 8 * (0..50).map(|i| i % 3 + 1).sum::<usize>();
    let mut seen = Vec::new();
    let mut after = Position::START;
    while seen.len() < total {
        let page = s
            .read_all(after, 64, &ReadAllFilter::default())
            .await
            .unwrap();
        for e in page {
            assert!(
                e.position > after,
                "went backwards: {} after {after}",
                e.position
            );
            after = e.position;
            seen.push(e.position);
        }
        tokio::task::yield_now().await;
    }
    for w in writers {
        w.await.unwrap();
    }
    let all = s
        .read_all(Position::START, usize::MAX, &ReadAllFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), total);
    assert_eq!(
        seen,
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        "no event skipped or repeated"
    );
}
per_store!(expected_versions_and_conflicts_carry_both_sides);
per_store!(reads_forward_backward_and_all_with_filters);
per_store!(idempotent_append_replayed_1000_times);
per_store!(multi_stream_append_is_all_or_nothing);
per_store!(bad_input_is_refused_and_changes_nothing);
per_store!(all_is_gap_free_under_concurrent_writers);

/// PostgreSQL: sequence values are taken in one order and commits land in another. 16
/// writers hold their transactions open for random times and roll ~10% back while a
/// reader follows `$all`: it must see every committed event once, in increasing position,
/// and never an event behind its checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_all_skips_nothing_under_slow_commits_and_rollbacks() {
    use rand::{Rng, SeedableRng};
    let pg = shared_postgres();
    let url = pg.database().await.unwrap();
    let s = Arc::new(PostgresEventStore::connect(&url).await.unwrap());
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let url = url.clone();
            tokio::spawn(async move {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(conn);
                let mut rng = rand::rngs::StdRng::seed_from_u64(w);
                let mut version = 0i64;
                let mut committed = Vec::new();
                for t in 0..25 {
                    client.batch_execute("BEGIN").await.unwrap();
                    let n = rng.random_range(1..=3);
                    let mut ids = Vec::new();
                    for k in 0..n {
                        let id = format!("w{w}-t{t}-{k}");
                        client
                            .execute(
                                "INSERT INTO mainstay_events (stream_id, version, event_id, event_type, data, metadata, created_at_ms)
                                 VALUES ($1, $2, $3, 'E', '{}', 'null', 0)",
                                &[&format!("w-{w}"), &(version + k), &id],
                            )
                            .await
                            .unwrap();
                        ids.push(id);
                    }
                    let delay = rng.random_range(0..20);
                    client.batch_execute(&format!("SELECT pg_sleep({delay} / 1000.0)")).await.unwrap();
                    if rng.random_bool(0.1) {
                        client.batch_execute("ROLLBACK").await.unwrap();
                    } else {
                        client.batch_execute("COMMIT").await.unwrap();
                        version += n;
                        committed.extend(ids);
                    }
                }
                committed
            })
        })
        .collect();
    let mut seen: Vec<String> = Vec::new();
    let mut after = Position::START;
    let mut writers_done = false;
    let mut committed: Vec<String> = Vec::new();
    let mut handles = writers;
    let mut deadline = std::time::Instant::now();
    loop {
        let page = s
            .read_all(after, 100, &ReadAllFilter::default())
            .await
            .unwrap();
        for e in &page {
            assert!(e.position > after, "{} is not after {after}", e.position);
            after = e.position;
            seen.push(e.id.clone());
        }
        // $all may trail the last commits while other transactions on the shared server
        // run: wait for the count (a missing event then shows up as a timeout below).
        if writers_done && seen.len() >= committed.len() {
            break;
        }
        assert!(
            !writers_done || std::time::Instant::now() < deadline,
            "$all shows {} of {} committed events",
            seen.len(),
            committed.len()
        );
        if !writers_done && handles.iter().all(|h| h.is_finished()) {
            for h in handles.drain(..) {
                committed.extend(h.await.unwrap());
            }
            writers_done = true;
            deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        }
        tokio::task::yield_now().await;
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "an event was delivered twice");
    committed.sort();
    let missing: Vec<&String> = committed
        .iter()
        .filter(|c| sorted.binary_search(c).is_err())
        .collect();
    let phantom: Vec<&String> = sorted
        .iter()
        .filter(|e| committed.binary_search(e).is_err())
        .collect();
    assert!(
        missing.is_empty() && phantom.is_empty(),
        "{} missing (e.g. {:?}), {} phantom (e.g. {:?})",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        phantom.len(),
        phantom.iter().take(5).collect::<Vec<_>>()
    );
    assert!(committed.len() > 500, "{} events", committed.len());
}

// --- subscriptions ----------------------------------------------------------------------

/// Events the acceptance run appends (across 32 writers).
const SUBSCRIPTION_EVENTS: usize = 100_000;

/// One writer of the subscription test: transactions of 1–10 events on its own stream,
/// each held open for a random time before it commits, ~10% rolled back. Writes with plain
/// SQL on its own connection (as another process would), so the store under test sees
/// these commits only through `$all`. Returns the ids it committed.
async fn raw_writer(kind: Kind, target: String, w: u64, events: usize) -> Vec<String> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed ^ w);
    let mut committed = Vec::new();
    let mut version = 0i64;
    let mut t = 0;
    let pg = match kind {
        Kind::Postgres => {
            let (client, conn) = tokio_postgres::connect(&target, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            Some(client)
        }
        Kind::Sqlite => None,
    };
    let sqlite = match kind {
        Kind::Sqlite => {
            let c = rusqlite::Connection::open(&target).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(30)).unwrap();
            c.pragma_update(None, "synchronous", "NORMAL").unwrap();
            Some(Arc::new(std::sync::Mutex::new(c)))
        }
        Kind::Postgres => None,
    };
    while committed.len() < events {
        t += 1;
        let n = rng.random_range(1..=10usize).min(events - committed.len());
        let ids: Vec<String> = (0..n).map(|k| format!("w{w}-t{t}-{k}")).collect();
        let rollback = rng.random_bool(0.1);
        let stream = format!("w-{w}");
        match kind {
            Kind::Postgres => {
                let c = pg.as_ref().unwrap();
                c.batch_execute("BEGIN").await.unwrap();
                for (k, id) in ids.iter().enumerate() {
                    c.execute(
                        "INSERT INTO mainstay_events (stream_id, version, event_id, event_type, data, metadata, created_at_ms)
                         VALUES ($1, $2, $3, 'E', '{}', 'null', 0)",
                        &[&stream, &(version + k as i64), id],
                    )
                    .await
                    .unwrap();
                }
                // What a writer outside Mainstay does to wake subscribers at once
                // (delivered only if the transaction commits).
                c.batch_execute("SELECT pg_notify('mainstay_events', pg_current_xact_id()::text)")
                    .await
                    .unwrap();
                let delay = rng.random_range(0..20);
                c.batch_execute(&format!("SELECT pg_sleep({delay} / 1000.0)"))
                    .await
                    .unwrap();
                c.batch_execute(if rollback { "ROLLBACK" } else { "COMMIT" })
                    .await
                    .unwrap();
            }
            Kind::Sqlite => {
                let c = sqlite.clone().unwrap();
                let ids = ids.clone();
                let stream = stream.clone();
                let delay = rng.random_range(0..2000u64);
                tokio::task::spawn_blocking(move || {
                    let mut c = c.lock().unwrap();
                    let tx = c
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .unwrap();
                    for (k, id) in ids.iter().enumerate() {
                        tx.execute(
                            "INSERT INTO mainstay_events (stream_id, version, event_id, event_type, data, metadata, created_at_ms)
                             VALUES (?1, ?2, ?3, 'E', '{}', 'null', 0)",
                            rusqlite::params![stream, version + k as i64, id],
                        )
                        .unwrap();
                    }
                    std::thread::sleep(std::time::Duration::from_micros(delay));
                    if rollback {
                        tx.rollback().unwrap();
                    } else {
                        tx.commit().unwrap();
                    }
                })
                .await
                .unwrap();
            }
        }
        if !rollback {
            version += n as i64;
            committed.extend(ids);
        }
    }
    committed
}

/// The acceptance run: 32 writers with random commit delays and ~10% rollbacks append
/// 100k events while a catch-up subscriber reads `$all`; the subscriber is killed (its
/// task aborted wherever it is) at 10 random points and restarted from its checkpoint —
/// the position of the last event it recorded. In the end it has recorded every committed
/// event once, in strictly increasing position, and nothing else.
async fn subscriber_restarted_10_times_misses_and_repeats_nothing(kind: Kind) {
    use rand::{Rng, SeedableRng};
    let (s, target, _guard): (Arc<dyn EventStore>, String, Box<dyn std::any::Any + Send>) =
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("events.db");
                // The writers are other connections: their commits wake nobody, polling
                // finds them.
                let s = SqliteEventStore::open(&path)
                    .unwrap()
                    .with_poll_interval(std::time::Duration::from_millis(20));
                (Arc::new(s), path.display().to_string(), Box::new(dir))
            }
            Kind::Postgres => {
                let pg = shared_postgres();
                let url = pg.database().await.unwrap();
                let s = PostgresEventStore::connect(&url).await.unwrap();
                (Arc::new(s), url.clone(), Box::new(pg))
            }
        };
    let writers: Vec<_> = (0..32u64)
        .map(|w| {
            tokio::spawn(raw_writer(
                kind,
                target.clone(),
                w,
                SUBSCRIPTION_EVENTS / 32,
            ))
        })
        .collect();
    let total = SUBSCRIPTION_EVENTS / 32 * 32;
    let recorded: Arc<std::sync::Mutex<Vec<(Position, String)>>> = Default::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xc0ffee);
    let mut kills: Vec<usize> = (0..10).map(|_| rng.random_range(1..total)).collect();
    kills.sort();
    let life = |s: Arc<dyn EventStore>, rec: Arc<std::sync::Mutex<Vec<(Position, String)>>>| {
        tokio::spawn(async move {
            let from = rec.lock().unwrap().last().map_or(Position::START, |e| e.0);
            let mut sub = subscribe(s, SubscribeOptions::after(from).batch(256))
                .await
                .unwrap();
            loop {
                let e = sub.next().await.unwrap();
                rec.lock().unwrap().push((e.position, e.id));
            }
        })
    };
    // Polls until `n` events are recorded; false if `within` passed first.
    let wait_for = |n: usize, within: u64, rec: Arc<std::sync::Mutex<Vec<(Position, String)>>>| async move {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(within);
        while rec.lock().unwrap().len() < n {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        true
    };
    for k in &kills {
        let task = life(s.clone(), recorded.clone());
        assert!(
            wait_for(*k, 150, recorded.clone()).await,
            "the subscriber stalled before {k} events"
        );
        task.abort();
        let _ = task.await;
    }
    let task = life(s.clone(), recorded.clone());
    let mut committed = Vec::new();
    for w in writers {
        committed.extend(w.await.unwrap());
    }
    assert_eq!(committed.len(), total);
    // Everything is committed: the subscriber must get it all soon (else the counts
    // below say what it lacks).
    wait_for(total, 30, recorded.clone()).await;
    task.abort();
    let recorded = recorded.lock().unwrap().clone();
    let out_of_order = recorded.windows(2).filter(|p| p[1].0 <= p[0].0).count();
    let mut ids: Vec<&String> = recorded.iter().map(|e| &e.1).collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    let duplicates = before - ids.len();
    committed.sort();
    let missing = committed
        .iter()
        .filter(|c| ids.binary_search(c).is_err())
        .count();
    let phantom = ids
        .iter()
        .filter(|i| committed.binary_search(i).is_err())
        .count();
    assert_eq!(
        (missing, out_of_order, duplicates, phantom),
        (0, 0, 0, 0),
        "missing, out of order, duplicated, never committed (of {total}; kills at {kills:?})"
    );
}
per_store!(subscriber_restarted_10_times_misses_and_repeats_nothing);

/// Live delivery: a subscriber that has caught up is woken by new appends (through the
/// store) and delivers them in order; a filter keeps only what it names.
async fn caught_up_subscriber_follows_live_appends(kind: Kind) {
    let (s, _d) = store(kind).await;
    s.append("a-1", ExpectedVersion::Any, vec![ev("Old", 0)])
        .await
        .unwrap();
    let mut all = subscribe(s.clone(), SubscribeOptions::from_start())
        .await
        .unwrap();
    let mut only_b = subscribe(
        s.clone(),
        SubscribeOptions::from_start().filter(ReadAllFilter {
            stream_prefix: Some("b-".into()),
            event_types: vec![],
        }),
    )
    .await
    .unwrap();
    assert_eq!(all.next().await.unwrap().event_type, "Old");
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..20 {
                let stream = if i % 2 == 0 { "a-1" } else { "b-1" };
                s.append(stream, ExpectedVersion::Any, vec![ev("New", i)])
                    .await
                    .unwrap();
            }
        })
    };
    let mut last = Position::START;
    for i in 0..20 {
        let e = tokio::time::timeout(std::time::Duration::from_secs(20), all.next())
            .await
            .expect("a live event")
            .unwrap();
        assert_eq!(e.data["n"], i, "in append order");
        assert!(e.position > last);
        last = e.position;
    }
    assert!(all.is_live());
    for i in 0..10 {
        let e = tokio::time::timeout(std::time::Duration::from_secs(20), only_b.next())
            .await
            .expect("a live event")
            .unwrap();
        assert_eq!(e.stream, "b-1");
        assert_eq!(e.data["n"], 2 * i + 1);
    }
    writer.await.unwrap();
}
per_store!(caught_up_subscriber_follows_live_appends);

/// A durable subscription resumes after its saved checkpoint (redelivering what came
/// after it: at-least-once), and checkpoints survive reopening the store; a subscription
/// without a name has no checkpoint to save; bad names are refused.
async fn durable_subscription_resumes_after_its_checkpoint(kind: Kind) {
    let (s, _d) = store(kind).await;
    for i in 0..10 {
        s.append("d-1", ExpectedVersion::Any, vec![ev("E", i)])
            .await
            .unwrap();
    }
    settle(&s, 10).await;
    let mut sub = subscribe(s.clone(), SubscribeOptions::durable("reports"))
        .await
        .unwrap();
    for _ in 0..4 {
        sub.next().await.unwrap();
    }
    sub.checkpoint().await.unwrap();
    let saved = sub.position();
    // Two more delivered, not checkpointed: they come again.
    sub.next().await.unwrap();
    sub.next().await.unwrap();
    drop(sub);
    assert_eq!(s.load_checkpoint("reports").await.unwrap(), Some(saved));
    let mut again = subscribe(s.clone(), SubscribeOptions::durable("reports"))
        .await
        .unwrap();
    let e = again.next().await.unwrap();
    assert_eq!(e.data["n"], 4, "resumes right after the checkpoint");
    assert!(e.position > saved);
    assert_eq!(s.load_checkpoint("other").await.unwrap(), None);

    let plain = subscribe(s.clone(), SubscribeOptions::from_start())
        .await
        .unwrap();
    assert!(matches!(
        plain.checkpoint().await,
        Err(StoreError::InvalidArgument { ref field, .. }) if field == "name"
    ));
    for bad in ["", &"x".repeat(257)] {
        assert!(matches!(
            subscribe(s.clone(), SubscribeOptions::durable(bad)).await,
            Err(StoreError::InvalidArgument { ref field, .. }) if field == "name"
        ));
    }
    assert!(matches!(
        subscribe(s.clone(), SubscribeOptions::from_start().batch(0)).await,
        Err(StoreError::InvalidArgument { ref field, .. }) if field == "batch"
    ));
}
per_store!(durable_subscription_resumes_after_its_checkpoint);

// --- retention, deletion, snapshots, metadata ----------------------------------------------

async fn versions(s: &Arc<dyn EventStore>, stream: &str) -> Vec<u64> {
    s.read_stream(stream, 0, Direction::Forward, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect()
}

async fn all_streams(s: &Arc<dyn EventStore>) -> Vec<(String, u64)> {
    s.read_all(Position::START, usize::MAX, &ReadAllFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.stream, e.version))
        .collect()
}

/// Retention by count, age and truncation hides events from stream reads at once;
/// scavenging removes them from `$all` (in batches of 2 here, so over several
/// transactions); bad metadata is refused and changes nothing.
async fn retention_hides_then_scavenge_removes(kind: Kind) {
    let (s, _d) = store_batched(kind, 2).await;
    let batch = |n| (0..n).map(|i| ev("E", i)).collect::<Vec<_>>();
    s.append("count-1", ExpectedVersion::Any, batch(10))
        .await
        .unwrap();
    s.append("trunc-1", ExpectedVersion::Any, batch(5))
        .await
        .unwrap();
    s.append("age-1", ExpectedVersion::Any, batch(3))
        .await
        .unwrap();
    s.append("keep-1", ExpectedVersion::Any, batch(2))
        .await
        .unwrap();
    settle(&s, 20).await;
    let meta = StreamMetadata {
        max_count: Some(3),
        custom: json!({"owner": "billing"}),
        ..Default::default()
    };
    s.set_stream_metadata("count-1", meta.clone())
        .await
        .unwrap();
    assert_eq!(s.stream_metadata("count-1").await.unwrap(), meta);
    assert_eq!(versions(&s, "count-1").await, vec![7, 8, 9]);
    let back: Vec<u64> = s
        .read_stream("count-1", u64::MAX, Direction::Backward, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(back, vec![9, 8, 7]);
    s.set_stream_metadata(
        "trunc-1",
        StreamMetadata {
            truncate_before: Some(2),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(versions(&s, "trunc-1").await, vec![2, 3, 4]);
    s.set_stream_metadata(
        "age-1",
        StreamMetadata {
            max_age_ms: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !versions(&s, "age-1").await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "max age never hid");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    // Metadata on a stream without events is kept for when it gets some.
    s.set_stream_metadata(
        "later-1",
        StreamMetadata {
            max_count: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        s.read_stream("later-1", 0, Direction::Forward, 10).await,
        Err(StoreError::StreamNotFound(_))
    ));
    assert_eq!(s.stream_version("later-1").await.unwrap(), None);
    s.append("later-1", ExpectedVersion::NoStream, batch(2))
        .await
        .unwrap();
    assert_eq!(versions(&s, "later-1").await, vec![1]);
    // Bad metadata: refused, the old kept.
    for bad in [
        StreamMetadata {
            max_count: Some(0),
            ..Default::default()
        },
        StreamMetadata {
            max_age_ms: Some(0),
            ..Default::default()
        },
    ] {
        assert!(matches!(
            s.set_stream_metadata("count-1", bad).await,
            Err(StoreError::InvalidArgument { .. })
        ));
    }
    assert_eq!(s.stream_metadata("count-1").await.unwrap(), meta);

    // $all still has everything until a scavenge.
    settle(&s, 22).await;
    assert_eq!(all_streams(&s).await.len(), 22);
    let removed = s.scavenge().await.unwrap();
    assert_eq!(removed, 7 + 2 + 3 + 1);
    let left = all_streams(&s).await;
    assert_eq!(left.len(), 22 - 13);
    assert!(left.contains(&("keep-1".into(), 0)) && left.contains(&("count-1".into(), 7)));
    assert!(!left.iter().any(|(st, _)| st == "age-1"));
    assert_eq!(s.scavenge().await.unwrap(), 0);
}
per_store!(retention_hides_then_scavenge_removes);

/// Soft delete: reads say not found, an append revives the stream with versions
/// continuing; hard delete: gone from `$all` at once, and the name is dead for good.
async fn soft_and_hard_delete(kind: Kind) {
    let (s, _d) = store(kind).await;
    s.append("soft-1", ExpectedVersion::Any, vec![ev("E", 0), ev("E", 1)])
        .await
        .unwrap();
    s.append("hard-1", ExpectedVersion::Any, vec![ev("E", 0), ev("E", 1)])
        .await
        .unwrap();
    s.save_snapshot("soft-1", 1, json!({"sum": 1}))
        .await
        .unwrap();
    settle(&s, 4).await;
    // Wrong expected version: nothing deleted.
    assert!(matches!(
        s.delete_stream("soft-1", ExpectedVersion::Exact(0), DeleteMode::Soft)
            .await,
        Err(StoreError::WrongExpectedVersion {
            actual: Some(1),
            ..
        })
    ));
    assert_eq!(versions(&s, "soft-1").await, vec![0, 1]);
    s.delete_stream("soft-1", ExpectedVersion::Exact(1), DeleteMode::Soft)
        .await
        .unwrap();
    assert!(matches!(
        s.read_stream("soft-1", 0, Direction::Forward, 10).await,
        Err(StoreError::StreamNotFound(_))
    ));
    assert_eq!(s.stream_version("soft-1").await.unwrap(), None);
    assert_eq!(s.load_snapshot("soft-1").await.unwrap(), None);
    assert!(matches!(
        s.delete_stream("soft-1", ExpectedVersion::Any, DeleteMode::Soft)
            .await,
        Err(StoreError::StreamNotFound(_))
    ));
    assert!(matches!(
        s.delete_stream("never-1", ExpectedVersion::Any, DeleteMode::Soft)
            .await,
        Err(StoreError::StreamNotFound(_))
    ));
    // Expecting the old version is a conflict: the stream is gone (on PostgreSQL this
    // is the flag on the last event that the one-statement Exact append checks).
    for old in [0, 1] {
        assert!(
            matches!(
                s.append("soft-1", ExpectedVersion::Exact(old), vec![ev("E", 9)])
                    .await,
                Err(StoreError::WrongExpectedVersion { actual: None, .. })
            ),
            "Exact({old}) appended to a soft-deleted stream"
        );
    }
    let r = s
        .append("soft-1", ExpectedVersion::NoStream, vec![ev("E", 2)])
        .await
        .unwrap();
    assert_eq!(r.next_expected_version, 2, "versions continue");
    assert_eq!(versions(&s, "soft-1").await, vec![2]);
    assert!(matches!(
        s.append("soft-1", ExpectedVersion::Exact(1), vec![ev("E", 9)])
            .await,
        Err(StoreError::WrongExpectedVersion {
            actual: Some(2),
            ..
        })
    ));
    let r = s
        .append("soft-1", ExpectedVersion::Exact(2), vec![ev("E", 3)])
        .await
        .unwrap();
    assert_eq!(r.next_expected_version, 3);
    assert_eq!(versions(&s, "soft-1").await, vec![2, 3]);
    settle(&s, 6).await;
    assert_eq!(s.scavenge().await.unwrap(), 2);

    s.delete_stream("hard-1", ExpectedVersion::StreamExists, DeleteMode::Hard)
        .await
        .unwrap();
    assert!(!all_streams(&s).await.iter().any(|(st, _)| st == "hard-1"));
    assert!(matches!(
        s.read_stream("hard-1", 0, Direction::Forward, 10).await,
        Err(StoreError::StreamDeleted(_))
    ));
    assert!(matches!(
        s.append("hard-1", ExpectedVersion::Any, vec![ev("E", 9)])
            .await,
        Err(StoreError::StreamDeleted(_))
    ));
    assert!(matches!(
        s.stream_version("hard-1").await,
        Err(StoreError::StreamDeleted(_))
    ));
    assert!(matches!(
        s.set_stream_metadata("hard-1", Default::default()).await,
        Err(StoreError::StreamDeleted(_))
    ));
    assert!(matches!(
        s.delete_stream("hard-1", ExpectedVersion::Any, DeleteMode::Hard)
            .await,
        Err(StoreError::StreamDeleted(_))
    ));
    // A name can be tombstoned before it is ever used.
    s.delete_stream("reserved-1", ExpectedVersion::NoStream, DeleteMode::Hard)
        .await
        .unwrap();
    assert!(matches!(
        s.append("reserved-1", ExpectedVersion::Any, vec![ev("E", 0)])
            .await,
        Err(StoreError::StreamDeleted(_))
    ));
}
per_store!(soft_and_hard_delete);

/// Appends a marker event and waits until `$all` shows it: from then on `$all` shows
/// every event committed before the marker's append began (on PostgreSQL it serves a
/// commit only once every older transaction has ended).
async fn settle_marker(s: &Arc<dyn EventStore>) {
    let marker = format!("marker-{}", mainstay_core::id::unguessable());
    s.append(&marker, ExpectedVersion::NoStream, vec![ev("Marker", 0)])
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let head = s
            .read_all(Position::START, usize::MAX, &ReadAllFilter::default())
            .await
            .unwrap();
        if head.iter().any(|e| e.stream == marker) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "$all never showed the marker"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Eight writers append to one stream with `Exact` (re-reading the version on a conflict)
/// until it is deleted under them. `Exact` appends do not lock the stream row on
/// PostgreSQL, so this is what keeps an append from landing after a delete: a hard delete
/// leaves no event of the stream anywhere and refuses later appends; after a soft delete
/// and a revival only the revival's event is visible.
async fn deletes_racing_exact_appends(kind: Kind) {
    use std::sync::atomic::{AtomicU64, Ordering};
    for mode in [DeleteMode::Hard, DeleteMode::Soft] {
        let (s, _d) = store(kind).await;
        let stream = format!("race-{mode:?}");
        s.append(&stream, ExpectedVersion::NoStream, vec![ev("Opened", 0)])
            .await
            .unwrap();
        let appended = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let (s, stream, appended) = (s.clone(), stream.clone(), appended.clone());
                tokio::spawn(async move {
                    loop {
                        let v = match s.stream_version(&stream).await {
                            Ok(Some(v)) => v,
                            // Soft-deleted (no version) or tombstoned: the race is over.
                            Ok(None) | Err(StoreError::StreamDeleted(_)) => return,
                            Err(e) => panic!("writer {w}: {e}"),
                        };
                        match s
                            .append(&stream, ExpectedVersion::Exact(v), vec![ev("Added", w)])
                            .await
                        {
                            Ok(_) => {
                                appended.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(StoreError::WrongExpectedVersion { actual: None, .. })
                            | Err(StoreError::StreamDeleted(_)) => return,
                            Err(StoreError::WrongExpectedVersion { .. }) => {}
                            Err(e) => panic!("writer {w}: {e}"),
                        }
                    }
                })
            })
            .collect();
        // Delete in the middle of the appends.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while appended.load(Ordering::Relaxed) < 100 {
            assert!(std::time::Instant::now() < deadline, "writers stalled");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        s.delete_stream(&stream, ExpectedVersion::Any, mode)
            .await
            .unwrap();
        for w in writers {
            w.await.unwrap();
        }
        match mode {
            DeleteMode::Hard => {
                settle_marker(&s).await;
                let left: Vec<_> = s
                    .read_all(
                        Position::START,
                        usize::MAX,
                        &ReadAllFilter {
                            stream_prefix: Some(stream.clone()),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                assert!(
                    left.is_empty(),
                    "{} events outlived the hard delete",
                    left.len()
                );
                assert!(matches!(
                    s.append(&stream, ExpectedVersion::Any, vec![ev("Late", 0)])
                        .await,
                    Err(StoreError::StreamDeleted(_))
                ));
            }
            DeleteMode::Soft => {
                s.append(&stream, ExpectedVersion::NoStream, vec![ev("Revived", 0)])
                    .await
                    .unwrap();
                let visible = s
                    .read_stream(&stream, 0, Direction::Forward, usize::MAX)
                    .await
                    .unwrap();
                let types: Vec<&str> = visible.iter().map(|e| e.event_type.as_str()).collect();
                assert_eq!(
                    types,
                    ["Revived"],
                    "events from before the soft delete showed up"
                );
                // Versions continue after every event appended before the delete.
                let total = 1 + appended.load(Ordering::Relaxed);
                assert_eq!(visible[0].version, total);
            }
        }
    }
}
per_store!(deletes_racing_exact_appends);

/// `scavenge` (in batches of 2) runs over and over while eight writers append with
/// `Exact` to a stream kept to its last 5 events: the version never goes back, no append
/// is lost, and the stream ends with exactly its last 5 events.
async fn scavenge_racing_appends_keeps_versions(kind: Kind) {
    let (s, _d) = store_batched(kind, 2).await;
    let stream = "kept";
    s.append(stream, ExpectedVersion::NoStream, vec![ev("Opened", 0)])
        .await
        .unwrap();
    s.set_stream_metadata(
        stream,
        StreamMetadata {
            max_count: Some(5),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scavenger = {
        let (s, stop) = (s.clone(), stop.clone());
        tokio::spawn(async move {
            let mut passes = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                s.scavenge().await.unwrap();
                passes += 1;
            }
            passes
        })
    };
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut mine = 0;
                let mut last = 0;
                while mine < 25 {
                    let v = s.stream_version(stream).await.unwrap().unwrap();
                    assert!(v >= last, "version went back from {last} to {v}");
                    last = v;
                    match s
                        .append(stream, ExpectedVersion::Exact(v), vec![ev("Added", w)])
                        .await
                    {
                        Ok(r) => {
                            assert_eq!(r.next_expected_version, v + 1);
                            mine += 1;
                        }
                        Err(StoreError::WrongExpectedVersion { .. }) => {}
                        Err(e) => panic!("writer {w}: {e}"),
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(scavenger.await.unwrap() > 0);
    s.scavenge().await.unwrap();
    assert_eq!(s.stream_version(stream).await.unwrap(), Some(200));
    assert_eq!(versions(&s, stream).await, vec![196, 197, 198, 199, 200]);
    // A few uncontended appends (on PostgreSQL these leave the stream row behind), then
    // truncate everything and scavenge it away: the version stays, and appends continue
    // after it.
    for v in 200..203 {
        s.append(stream, ExpectedVersion::Exact(v), vec![ev("More", 0)])
            .await
            .unwrap();
    }
    s.set_stream_metadata(
        stream,
        StreamMetadata {
            truncate_before: Some(204),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(s.scavenge().await.unwrap() > 0);
    settle_marker(&s).await;
    let left: Vec<(String, u64)> = all_streams(&s)
        .await
        .into_iter()
        .filter(|(name, _)| name == stream)
        .collect();
    assert!(left.is_empty(), "scavenge left {left:?}");
    assert_eq!(s.stream_version(stream).await.unwrap(), Some(203));
    assert!(versions(&s, stream).await.is_empty());
    let r = s
        .append(stream, ExpectedVersion::Exact(203), vec![ev("After", 0)])
        .await
        .unwrap();
    assert_eq!(r.next_expected_version, 204);
    assert!(matches!(
        s.append(stream, ExpectedVersion::Exact(202), vec![ev("Stale", 0)])
            .await,
        Err(StoreError::WrongExpectedVersion {
            actual: Some(204),
            ..
        })
    ));
}
per_store!(scavenge_racing_appends_keeps_versions);

/// A scavenge with much to remove does not hold appends for the whole pass: 40000 events
/// truncated away are removed 500 per transaction, and an append made once the first
/// batches are gone completes while the oldest remaining event of `$all` is still one
/// the scavenge has yet to remove. (In one transaction, the append would wait for the
/// whole delete: the first event seen after the first progress is already the end.)
async fn scavenge_lets_appends_through_between_batches(kind: Kind) {
    let (s, _d) = store_batched(kind, 500).await;
    let total = 40_000u64;
    for _ in 0..total / 1000 {
        let events = (0..1000).map(|i| ev("Big", i)).collect();
        s.append("big", ExpectedVersion::Any, events).await.unwrap();
    }
    s.set_stream_metadata(
        "big",
        StreamMetadata {
            truncate_before: Some(total),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let first = |s: Arc<dyn EventStore>| async move {
        s.read_all(Position::START, 1, &ReadAllFilter::default())
            .await
            .unwrap()
            .into_iter()
            .next()
            .map(|e| (e.stream, e.version))
    };
    assert_eq!(first(s.clone()).await, Some(("big".into(), 0)));
    let scavenger = {
        let s = s.clone();
        tokio::spawn(async move { s.scavenge().await.unwrap() })
    };
    // Progress: the oldest event of `big` is gone, not all of them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match first(s.clone()).await {
            Some((stream, v)) if stream == "big" && v > 0 => break,
            Some((stream, 0)) if stream == "big" => {}
            other => panic!("no partial progress seen; $all starts at {other:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "scavenge never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    s.append("other", ExpectedVersion::NoStream, vec![ev("Other", 0)])
        .await
        .unwrap();
    let head = first(s.clone()).await;
    assert!(
        matches!(&head, Some((stream, v)) if stream == "big" && *v < total - 1),
        "the append waited for the whole scavenge: $all starts at {head:?}"
    );
    assert_eq!(scavenger.await.unwrap(), total);
    settle_marker(&s).await;
    let left = all_streams(&s).await;
    assert_eq!(
        left[0],
        ("other".into(), 0),
        "left: {:?}",
        &left[..3.min(left.len())]
    );
    assert!(!left.iter().any(|(st, _)| st == "big"));
}
per_store!(scavenge_lets_appends_through_between_batches);

/// A database made before events carried `stream_deleted` (the flag an `Exact` append
/// checks): connecting adds the column and flags the last event of every soft-deleted
/// stream, so an append expecting a soft-deleted stream's old version is still refused;
/// and a soft delete written the old way (no flag) is flagged by the trigger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_upgrade_keeps_soft_deletes() {
    let url = shared_postgres().database().await.unwrap();
    {
        let s = PostgresEventStore::connect(&url).await.unwrap();
        for stream in ["gone-1", "live-1"] {
            s.append(
                stream,
                ExpectedVersion::NoStream,
                vec![ev("E", 0), ev("E", 1)],
            )
            .await
            .unwrap();
        }
        s.delete_stream("gone-1", ExpectedVersion::Exact(1), DeleteMode::Soft)
            .await
            .unwrap();
    }
    // The table as an older Mainstay left it.
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("ALTER TABLE mainstay_events DROP COLUMN stream_deleted")
        .await
        .unwrap();
    let s = PostgresEventStore::connect(&url).await.unwrap();
    assert!(matches!(
        s.append("gone-1", ExpectedVersion::Exact(1), vec![ev("E", 2)])
            .await,
        Err(StoreError::WrongExpectedVersion { actual: None, .. })
    ));
    let r = s
        .append("live-1", ExpectedVersion::Exact(1), vec![ev("E", 2)])
        .await
        .unwrap();
    assert_eq!(r.next_expected_version, 2);
    let r = s
        .append("gone-1", ExpectedVersion::NoStream, vec![ev("E", 2)])
        .await
        .unwrap();
    assert_eq!(
        r.next_expected_version, 2,
        "versions continue after the upgrade"
    );
    // A soft delete by a process of the earlier version, still running during a rolling
    // upgrade (its statement, which knows nothing of the flag), is seen all the same.
    client
        .execute(
            "UPDATE mainstay_streams SET state = 1, version = 2, truncate_before = 3
             WHERE stream_id = 'live-1'",
            &[],
        )
        .await
        .unwrap();
    assert!(matches!(
        s.append("live-1", ExpectedVersion::Exact(2), vec![ev("E", 3)])
            .await,
        Err(StoreError::WrongExpectedVersion { actual: None, .. })
    ));
}

/// Every connection to the database is terminated (as a restart or failover would) right
/// before each of 20 appends, 20 reads and 20 of each idempotent write (checkpoint,
/// snapshot, stream metadata); each append still succeeds exactly once — it is repeated
/// on a fresh connection, safely, because its event ids make it idempotent — each read
/// answers, and each write lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_append_survives_its_connections_being_cut() {
    let pg = shared_postgres();
    let url = pg.database().await.unwrap();
    let s = PostgresEventStore::connect(&url).await.unwrap();
    // Fill the pool with several connections, so several of them die at each cut.
    let warm: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.append(
                    &format!("warm-{i}"),
                    ExpectedVersion::NoStream,
                    vec![ev("W", i)],
                )
                .await
                .unwrap()
            })
        })
        .collect();
    for w in warm {
        w.await.unwrap();
    }
    let mut version = None;
    for i in 0..20 {
        let cut = mainstay_testkit::terminate_connections(&url).await.unwrap();
        assert!(cut > 0);
        let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        let r = s
            .append("cut", expected, vec![ev("Added", i)])
            .await
            .unwrap_or_else(|e| panic!("append {i} after the cut: {e}"));
        version = Some(r.next_expected_version);
        // Reads are repeated the same way.
        mainstay_testkit::terminate_connections(&url).await.unwrap();
        let seen = s
            .read_stream("cut", 0, Direction::Forward, usize::MAX)
            .await
            .unwrap_or_else(|e| panic!("read {i} after the cut: {e}"));
        assert_eq!(seen.len(), i as usize + 1);
        // So are the idempotent writes: checkpoint, snapshot, stream metadata.
        mainstay_testkit::terminate_connections(&url).await.unwrap();
        s.save_checkpoint("cut-sub", r.last_position)
            .await
            .unwrap_or_else(|e| panic!("checkpoint {i} after the cut: {e}"));
        mainstay_testkit::terminate_connections(&url).await.unwrap();
        s.save_snapshot("cut", r.next_expected_version, json!({"n": i}))
            .await
            .unwrap_or_else(|e| panic!("snapshot {i} after the cut: {e}"));
        mainstay_testkit::terminate_connections(&url).await.unwrap();
        let meta = StreamMetadata {
            max_count: Some(1000 + i as u64),
            ..Default::default()
        };
        s.set_stream_metadata("cut", meta)
            .await
            .unwrap_or_else(|e| panic!("metadata {i} after the cut: {e}"));
        assert_eq!(
            s.load_checkpoint("cut-sub").await.unwrap(),
            Some(r.last_position)
        );
    }
    assert_eq!(
        s.load_snapshot("cut").await.unwrap().unwrap().data,
        json!({"n": 19})
    );
    assert_eq!(
        s.stream_metadata("cut").await.unwrap().max_count,
        Some(1019)
    );
    let events = s
        .read_stream("cut", 0, Direction::Forward, usize::MAX)
        .await
        .unwrap();
    let ns: Vec<i64> = events
        .iter()
        .map(|e| e.data["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, (0..20).collect::<Vec<i64>>());
}

/// Snapshots: the latest is kept, an older one never replaces it, oversize is refused;
/// correlation and causation ids travel in the metadata.
async fn snapshots_and_causation(kind: Kind) {
    let (s, _d) = store(kind).await;
    assert_eq!(s.load_snapshot("acc-1").await.unwrap(), None);
    s.save_snapshot("acc-1", 5, json!({"balance": 50}))
        .await
        .unwrap();
    s.save_snapshot("acc-1", 3, json!({"balance": 30}))
        .await
        .unwrap();
    let snap = s.load_snapshot("acc-1").await.unwrap().unwrap();
    assert_eq!(
        (snap.version, snap.data.clone()),
        (5, json!({"balance": 50}))
    );
    s.save_snapshot("acc-1", 9, json!({"balance": 90}))
        .await
        .unwrap();
    assert_eq!(s.load_snapshot("acc-1").await.unwrap().unwrap().version, 9);
    let huge = json!({ "x": "y".repeat(mainstay_eventstore::MAX_EVENT_BYTES) });
    assert!(matches!(
        s.save_snapshot("acc-1", 10, huge).await,
        Err(StoreError::InvalidArgument { ref field, .. }) if field == "data"
    ));
    assert_eq!(s.load_snapshot("acc-1").await.unwrap().unwrap().version, 9);

    let cmd = EventData::new("Deposit", json!({})).correlated("req-7", "cmd-7");
    s.append("acc-1", ExpectedVersion::Any, vec![cmd])
        .await
        .unwrap();
    let first = s
        .read_stream("acc-1", 0, Direction::Forward, 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(first.correlation_id(), Some("req-7"));
    assert_eq!(first.causation_id(), Some("cmd-7"));
    let next = EventData::new("Notified", json!({})).caused_by(&first);
    s.append("mail-1", ExpectedVersion::Any, vec![next])
        .await
        .unwrap();
    let second = s
        .read_stream("mail-1", 0, Direction::Forward, 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.correlation_id(), Some("req-7"));
    assert_eq!(second.causation_id(), Some(first.id.as_str()));
}
per_store!(snapshots_and_causation);
