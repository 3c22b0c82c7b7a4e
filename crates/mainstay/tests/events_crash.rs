//! `mainstay events tail` killed with SIGKILL at 10 random points while 8 writers append
//! 20k events, and restarted from the last position it printed: what it printed across
//! its lives is every event once, in strictly increasing position — on the embedded
//! SQLite store and on PostgreSQL.

use crate::common::mainstay;
use mainstay_eventstore::{EventData, EventStore, ExpectedVersion, Position};
use rand::{Rng, SeedableRng};
use std::io::BufRead;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const EVENTS: usize = 20_000;

type Printed = Arc<Mutex<Vec<(Position, String)>>>;

/// A running tail and the thread that collects its complete output lines.
struct Tail {
    child: std::process::Child,
    reader: std::thread::JoinHandle<()>,
}

impl Tail {
    /// SIGKILL, then wait until the reader has taken every complete line the pipe held
    /// (it ends at end of file, once the process is gone).
    async fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        tokio::task::spawn_blocking(move || self.reader.join().unwrap())
            .await
            .unwrap();
    }
}

/// Starts a tail after `from`; a thread collects its complete output lines.
fn tail(dir: &std::path::Path, store_args: &[String], from: Position, out: Printed) -> Tail {
    let mut child = mainstay(dir)
        .args(store_args)
        .args(["events", "tail", "--after", &from.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                // A line cut by the kill has no newline: it was never printed whole.
                Ok(_) if !line.ends_with(b"\n") => return,
                Ok(_) => {
                    let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
                    let pos: Position = v["position"].as_str().unwrap().parse().unwrap();
                    out.lock()
                        .unwrap()
                        .push((pos, v["id"].as_str().unwrap().to_string()));
                }
            }
        }
    });
    Tail { child, reader }
}

async fn wait_for(out: &Printed, n: usize, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while out.lock().unwrap().len() < n {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

async fn killed_tail_restarts_without_gaps(store: Arc<dyn EventStore>, store_args: Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(w);
                let mut ids = Vec::new();
                while ids.len() < EVENTS / 8 {
                    let n = rng.random_range(1..=10usize).min(EVENTS / 8 - ids.len());
                    let batch: Vec<EventData> = (0..n)
                        .map(|_| EventData::new("E", serde_json::json!({"w": w})))
                        .collect();
                    ids.extend(batch.iter().map(|e| e.id.clone()));
                    store
                        .append(&format!("w-{w}"), ExpectedVersion::Any, batch)
                        .await
                        .unwrap();
                }
                ids
            })
        })
        .collect();
    let out: Printed = Default::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7a11);
    let mut kills: Vec<usize> = (0..10).map(|_| rng.random_range(1..EVENTS)).collect();
    kills.sort();
    for k in &kills {
        let from = out.lock().unwrap().last().map_or(Position::START, |e| e.0);
        let child = tail(dir.path(), &store_args, from, out.clone());
        assert!(
            wait_for(&out, *k, Duration::from_secs(120)).await,
            "the tail stalled before {k} events"
        );
        child.kill().await;
    }
    let mut committed = Vec::new();
    for w in writers {
        committed.extend(w.await.unwrap());
    }
    let from = out.lock().unwrap().last().map_or(Position::START, |e| e.0);
    let child = tail(dir.path(), &store_args, from, out.clone());
    wait_for(&out, EVENTS, Duration::from_secs(30)).await;
    child.kill().await;
    let printed = out.lock().unwrap().clone();
    let out_of_order = printed.windows(2).filter(|p| p[1].0 <= p[0].0).count();
    let mut ids: Vec<&String> = printed.iter().map(|p| &p.1).collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    committed.sort();
    let missing = committed
        .iter()
        .filter(|c| ids.binary_search(c).is_err())
        .count();
    assert_eq!(
        (missing, out_of_order, before - ids.len()),
        (0, 0, 0),
        "missing, out of order, duplicated (of {EVENTS}; kills at {kills:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_tail_restarts_without_gaps_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = Arc::new(mainstay_eventstore::sqlite::SqliteEventStore::open(&path).unwrap());
    killed_tail_restarts_without_gaps(
        store,
        vec!["--events-url".into(), path.display().to_string()],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_tail_restarts_without_gaps_postgres() {
    let pg = mainstay_testkit::shared_postgres();
    let url = pg.database().await.unwrap();
    let store = Arc::new(
        mainstay_eventstore::postgres::PostgresEventStore::connect(&url)
            .await
            .unwrap(),
    );
    killed_tail_restarts_without_gaps(
        store,
        vec![
            "--events-backend".into(),
            "postgres".into(),
            "--events-url".into(),
            url,
        ],
    )
    .await;
}
