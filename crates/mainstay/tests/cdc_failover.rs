//! High availability of `mainstay cdc run --ha`: two instances of one connector, a
//! PostgreSQL sink. The active one is SIGKILLed, and later the next active one is
//! SIGSTOPped past its lease: each time the standby takes over within ttl + 1 s; the
//! woken leader stops (lost lease) or is refused by the fenced sink, never writes; and the
//! sink ends equal to the source.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::common::{mainstay, pg as connect};

const TTL: Duration = Duration::from_secs(3);

async fn writer(url: String, seed: u64, stop: Arc<AtomicBool>) {
    let db = connect(&url).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    while !stop.load(Ordering::Relaxed) {
        pace.tick().await;
        let id: i64 = rng.random_range(1..=6000);
        let sql = match rng.random_range(0..5) {
            0..=2 => format!("UPDATE accounts SET balance = balance + 1 WHERE id = {id}"),
            3 => format!("DELETE FROM accounts WHERE id = {id}"),
            _ => format!(
                "INSERT INTO accounts VALUES ({id}, 7) ON CONFLICT (id) DO UPDATE SET balance = 0"
            ),
        };
        db.batch_execute(&sql).await.unwrap();
    }
}

struct Instance {
    process: mainstay_testkit::Process,
    log: PathBuf,
}

impl Instance {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The epoch of this instance's latest election, if it was elected.
    fn epoch(&self) -> Option<u64> {
        let log = self.log();
        let line = log.lines().rev().find(|l| l.contains("elected for"))?;
        let tail = line.split("(epoch ").nth(1)?;
        tail.split(')').next()?.parse().ok()
    }
}

async fn replica(sink: &tokio_postgres::Client) -> BTreeMap<i64, Value> {
    let rows = sink
        .query(r#"SELECT row::text FROM failover."public.accounts""#, &[])
        .await
        .unwrap_or_default();
    rows.iter()
        .map(|r| {
            let row: Value = serde_json::from_str(r.get::<_, &str>(0)).unwrap();
            (row["id"].as_i64().unwrap(), row)
        })
        .collect()
}

async fn offsets(sink: &tokio_postgres::Client) -> Option<(i64, Option<String>)> {
    sink.query_opt(
        "SELECT fencing_token, position FROM failover.mainstay_cdc_offsets WHERE connector = 'ha'",
        &[],
    )
    .await
    .ok()
    .flatten()
    .map(|r| (r.get(0), r.get(1)))
}

/// Waits until `instance` leads and its token is on the sink with a streamed position
/// newer than `after`.
async fn wait_active(
    instance: &Instance,
    sink: &tokio_postgres::Client,
    after: Option<String>,
) -> u64 {
    let mut epoch = None;
    mainstay_testkit::eventually(
        Duration::from_secs(60),
        "the instance to stream to the sink",
        || {
            epoch = instance.epoch();
            let after = after.clone();
            async move {
                let Some(epoch) = epoch else { return false };
                match offsets(sink).await {
                    Some((token, Some(position))) => {
                        token == epoch as i64 && position.ends_with("/c") && Some(position) != after
                    }
                    _ => false,
                }
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- log:\n{}", instance.log()));
    epoch.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_ha_standby_takes_over_from_a_killed_and_from_a_paused_leader() {
    let pg = mainstay_testkit::shared_postgres();
    let url = pg.database().await.unwrap();
    let sink_url = pg.database().await.unwrap();
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO accounts SELECT g, g FROM generate_series(1, 5000) g;",
    )
    .await
    .unwrap();
    let sink = connect(&sink_url).await;
    let dir = tempfile::tempdir().unwrap();
    let mut lives = 0;
    let mut spawn = |dir: &Path| {
        lives += 1;
        let log = dir.join(format!("instance-{lives}.log"));
        let mut cmd = mainstay(dir);
        cmd.args(["cdc", "run", "--ha", "--ha-ttl", "3s", "--name", "ha"])
            .args(["--source", &url, "--table", "accounts", "--slot", "ha"])
            .args(["--heartbeat", "1s", "--postgres-sink-schema", "failover"])
            .args(["--sink", &format!("postgres:{sink_url}")])
            .args([
                "--state-file",
                &dir.join("state.json").display().to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        Instance {
            process: mainstay_testkit::Process::spawn("mainstay cdc run --ha", &mut cmd).unwrap(),
            log,
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|i| tokio::spawn(writer(url.clone(), i, stop.clone())))
        .collect();
    let mut a = spawn(dir.path());
    let mut b = spawn(dir.path());
    mainstay_testkit::eventually(
        Duration::from_secs(30),
        "one instance to be elected",
        || {
            let elected = a.epoch().is_some() || b.epoch().is_some();
            async move { elected }
        },
    )
    .await
    .unwrap();
    if a.epoch().is_none() {
        std::mem::swap(&mut a, &mut b);
    }
    let first_epoch = wait_active(&a, &sink, None).await;
    assert!(
        b.epoch().is_none(),
        "two leaders:\n{}\n---\n{}",
        a.log(),
        b.log()
    );

    // 1. The leader is killed: the standby is elected within ttl + 1 s and streams.
    let killed_at = Instant::now();
    a.process.kill();
    mainstay_testkit::eventually(
        TTL + Duration::from_secs(1),
        "the standby to take over after SIGKILL",
        || {
            let elected = b.epoch().is_some();
            async move { elected }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- standby log:\n{}", b.log()));
    let took_over = killed_at.elapsed();
    let second_epoch = wait_active(&b, &sink, None).await;
    assert!(second_epoch > first_epoch);
    eprintln!(
        "SIGKILL: standby elected {took_over:.2?} after the kill, streaming {:.2?} after it",
        killed_at.elapsed()
    );

    // 2. A new standby; the leader is paused past its lease.
    let mut c = spawn(dir.path());
    mainstay_testkit::eventually(
        Duration::from_secs(30),
        "the new instance to stand by",
        || {
            let waiting = c.log().contains("standing by");
            async move { waiting }
        },
    )
    .await
    .unwrap();
    let before_pause = offsets(&sink).await.and_then(|(_, p)| p);
    let paused_at = Instant::now();
    b.process.pause().unwrap();
    mainstay_testkit::eventually(
        TTL + Duration::from_secs(1),
        "the standby to take over after SIGSTOP",
        || {
            let elected = c.epoch().is_some();
            async move { elected }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- standby log:\n{}", c.log()));
    let took_over = paused_at.elapsed();
    let third_epoch = wait_active(&c, &sink, before_pause).await;
    assert!(third_epoch > second_epoch);
    eprintln!(
        "SIGSTOP: standby elected {took_over:.2?} after the pause, streaming {:.2?} after it",
        paused_at.elapsed()
    );
    // The paused leader wakes: it stops (lease lost) or the sink refuses it; then it
    // stands by again. It never writes: the sink's token stays the new leader's.
    b.process.resume().unwrap();
    mainstay_testkit::eventually(
        Duration::from_secs(30),
        "the woken leader to step down",
        || {
            let log = b.log();
            let stepped_down = (log.contains("lost leadership") || log.contains("deposed"))
                && log.matches("standing by").count() >= 2;
            async move { stepped_down }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- woken leader's log:\n{}", b.log()));
    let how = if b.log().contains("deposed") {
        "refused by the fenced sink"
    } else {
        "stopped on its lost lease"
    };
    eprintln!("the woken leader was {how}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let expected: BTreeMap<i64, Value> = db
        .query("SELECT id, balance FROM accounts", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let balance: i64 = r.get(1);
            (id, serde_json::json!({"id": id, "balance": balance}))
        })
        .collect();
    let sink = &sink;
    let expected = &expected;
    mainstay_testkit::eventually(
        Duration::from_secs(60),
        "the sink to equal the source",
        || async move { replica(sink).await == *expected },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- leader log:\n{}", c.log()));
    let (token, _) = offsets(sink).await.unwrap();
    assert_eq!(
        token, third_epoch as i64,
        "only the current leader's token is on the sink"
    );
    assert_eq!(c.epoch(), Some(third_epoch), "the leader kept its term");
    c.process.terminate(Duration::from_secs(10));
    b.process.terminate(Duration::from_secs(10));
}
