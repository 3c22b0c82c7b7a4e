//! `mainstay cdc run` with a file sink, killed with SIGKILL 20 times (during the snapshot
//! and while streaming) while 4 writers change the table, restarted each time: the file
//! ends up holding the source table exactly, every streamed change once, in commit order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::common::{mainstay, pg as connect};

async fn writer(url: String, seed: u64, stop: Arc<AtomicBool>) {
    let db = connect(&url).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // A steady load (about 250 statements/s per writer), not a flood: the test is about
    // kill points, and the file must stay small enough to check often.
    let mut pace = tokio::time::interval(Duration::from_millis(4));
    while !stop.load(Ordering::Relaxed) {
        pace.tick().await;
        let id: i64 = rng.random_range(1..=25_000);
        let sql = match rng.random_range(0..6) {
            0..=2 => format!("UPDATE accounts SET balance = balance + 1 WHERE id = {id}"),
            3 => format!("DELETE FROM accounts WHERE id = {id}"),
            _ => format!(
                "INSERT INTO accounts VALUES ({id}, 7) ON CONFLICT (id) DO UPDATE SET balance = accounts.balance * 2"
            ),
        };
        db.batch_execute(&sql).await.unwrap();
    }
}

/// The file's complete lines. A running connector may be in the middle of a write, and a
/// killed one may have left a partial batch (cut off when the sink next opens the file):
/// a last line without its newline is not an event yet.
fn lines(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .map(|l| serde_json::from_str(l).expect("whole lines are whole events"))
        .collect()
}

/// Replays the file into table state. A snapshot cut short by a kill is started over at a
/// new consistent point; its `first` row begins the state again.
fn replay(events: &[Value]) -> BTreeMap<i64, Value> {
    let mut state = BTreeMap::new();
    for e in events {
        if e["source"]["snapshot"] == "first" {
            state.clear();
        }
        match e["op"].as_str().unwrap() {
            "r" | "c" | "u" => {
                state.insert(e["after"]["id"].as_i64().unwrap(), e["after"].clone());
            }
            "d" => {
                state.remove(&e["before"]["id"].as_i64().unwrap());
            }
            other => panic!("unexpected op {other}"),
        }
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_run_killed_20_times_leaves_the_file_equal_to_the_source() {
    let url = mainstay_testkit::shared_postgres()
        .database()
        .await
        .unwrap();
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO accounts SELECT g, g FROM generate_series(1, 20000) g;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("accounts.ndjson");
    let spawn = || {
        let mut cmd = mainstay(dir.path());
        cmd.args([
            "cdc", "run", "--source", &url, "--table", "accounts", "--slot", "crash",
        ])
        .args(["--snapshot-fetch-size", "1000", "--heartbeat", "1s"])
        .args(["--sink", &format!("file:{}", out.display())])
        .args([
            "--state-file",
            &dir.path().join("state.json").display().to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        mainstay_testkit::Process::spawn("mainstay cdc run", &mut cmd).unwrap()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|i| tokio::spawn(writer(url.clone(), i, stop.clone())))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xcdc);
    // The file's size at each kill: kills before the end of the last snapshot row were
    // inside the snapshot (an interrupted snapshot resumes incrementally, so its end is
    // known only afterwards).
    let mut kill_sizes = Vec::new();
    for life in 0..20 {
        let mut child = spawn();
        let size = || std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        let before = size();
        // Kill once the file grew by a random number of bytes (an event is ~300): inside
        // the snapshot for the first lives, then at random points of the stream.
        let grow = if life < 3 {
            rng.random_range(30_000..4_000_000)
        } else {
            rng.random_range(5_000..400_000)
        };
        mainstay_testkit::eventually(Duration::from_secs(60), "the file to grow", || {
            let n = size();
            async move { n >= before + grow }
        })
        .await
        .unwrap_or_else(|e| panic!("life {life}: {e} (exit: {:?})", child.try_exit_code()));
        child.kill();
        kill_sizes.push(size());
        eprintln!("life {life}: killed after {} bytes", size() - before);
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // The last life runs until the file equals the source, then stops cleanly.
    let rows = db
        .query("SELECT id, balance FROM accounts", &[])
        .await
        .unwrap();
    let expected: BTreeMap<i64, Value> = rows
        .iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let balance: i64 = r.get(1);
            (id, serde_json::json!({"id": id, "balance": balance}))
        })
        .collect();
    let mut last = spawn();
    mainstay_testkit::eventually(
        Duration::from_secs(60),
        "the file to equal the source",
        || {
            let equal = replay(&lines(&out)) == expected;
            async move { equal }
        },
    )
    .await
    .unwrap();
    last.terminate(Duration::from_secs(10));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.ends_with('\n'),
        "a cleanly stopped sink leaves whole lines only"
    );
    let events = lines(&out);
    let snapshot_end = {
        let mut offset = 0usize;
        let mut end = 0usize;
        for line in text.lines() {
            offset += line.len() + 1;
            if line.contains(r#""op":"r""#) {
                end = offset;
            }
        }
        end as u64
    };
    let during_snapshot = kill_sizes.iter().filter(|&&s| s < snapshot_end).count();
    assert!(during_snapshot >= 1, "no kill landed inside the snapshot");
    // After the last snapshot began, every event follows the one before it (commit
    // order), and no change is there twice.
    let start = events
        .iter()
        .rposition(|e| e["source"]["snapshot"] == "first")
        .expect("a snapshot");
    let mut previous: Option<(u64, u64, i64)> = None;
    let mut seen = std::collections::HashSet::new();
    for e in &events[start..] {
        let seq: Vec<String> =
            serde_json::from_str(e["source"]["sequence"].as_str().unwrap()).unwrap();
        let commit: u64 = seq[0].parse().unwrap();
        let lsn: u64 = seq[1].parse().unwrap();
        if e["op"] != "r" {
            assert!(
                seen.insert((commit, lsn)),
                "change at {commit}/{lsn} is in the file twice"
            );
            if let Some((pc, pl, _)) = previous {
                assert!(
                    (commit, lsn) > (pc, pl),
                    "out of commit order: {pc}/{pl} then {commit}/{lsn}"
                );
            }
            previous = Some((commit, lsn, 0));
        }
    }
    eprintln!(
        "{} events in the file, {} after the last snapshot began; {during_snapshot} kills inside a snapshot",
        events.len(),
        events.len() - start
    );
}

/// `[cdc]` in mainstay.toml configures `mainstay cdc run`; flags win; bad values and a
/// missing source are named.
#[tokio::test]
async fn cdc_run_reads_its_config_section_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let out = mainstay(dir.path()).args(["cdc", "run"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--source") && err.contains("[cdc] source"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("mainstay.toml"),
        "[cdc]\nsource = \"postgres://127.0.0.1:1/x\"\nsnapshot_mode = \"sometimes\"\n",
    )
    .unwrap();
    let out = mainstay(dir.path()).args(["cdc", "run"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[cdc] snapshot_mode") && err.contains("sometimes"),
        "{err}"
    );

    // The file's source and table, a real database: the connector runs from config alone
    // (initial_only ends after the snapshot) and writes the table's rows to the file sink.
    let url = mainstay_testkit::shared_postgres()
        .database()
        .await
        .unwrap();
    connect(&url)
        .await
        .batch_execute(
            "CREATE TABLE conf (id int PRIMARY KEY); INSERT INTO conf VALUES (1), (2), (3);",
        )
        .await
        .unwrap();
    std::fs::write(
        dir.path().join("mainstay.toml"),
        format!(
            "[cdc]\nsource = \"{url}\"\ntables = [\"public.conf\"]\nslot = \"from_config\"\n\
             snapshot_mode = \"initial_only\"\nsink = \"file:conf.ndjson\"\n"
        ),
    )
    .unwrap();
    let out = mainstay(dir.path()).args(["cdc", "run"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines(&dir.path().join("conf.ndjson")).len(), 3);
    // Flags override the file: another slot and sink.
    let out = mainstay(dir.path())
        .args([
            "cdc",
            "run",
            "--slot",
            "from_flag",
            "--sink",
            "file:flag.ndjson",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines(&dir.path().join("flag.ndjson")).len(), 3);
    // The event store sink: the store `[events]` configures (SQLite in the data dir), a
    // stream per row.
    let out = mainstay(dir.path())
        .args(["cdc", "run", "--slot", "from_events", "--sink", "events"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mainstay(dir.path())
        .args(["events", "read", "mainstay-public.conf-2"])
        .output()
        .unwrap();
    let read = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && read.lines().count() == 1 && read.contains("RowRead"),
        "{read}"
    );
    let db = connect(&url).await;
    db.batch_execute("SELECT pg_drop_replication_slot('from_events')")
        .await
        .unwrap();
    let slots: Vec<String> = db
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name IN ('from_config', 'from_flag') ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(slots, ["from_config", "from_flag"]);
    db.batch_execute(
        "SELECT pg_drop_replication_slot('from_config'); SELECT pg_drop_replication_slot('from_flag');",
    )
    .await
    .unwrap();
}

/// An envelope, as far as the check needs it.
#[derive(serde::Deserialize)]
struct Change {
    op: String,
    before: Option<Account>,
    after: Option<Account>,
}

#[derive(serde::Deserialize, PartialEq, Eq, Debug, Clone)]
struct Account {
    id: i64,
    #[serde(default)]
    balance: Option<i64>,
}

async fn big_writer(url: String, seed: u64, stop: Arc<AtomicBool>) {
    let db = connect(&url).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut pace = tokio::time::interval(Duration::from_millis(2));
    while !stop.load(Ordering::Relaxed) {
        pace.tick().await;
        let id: i64 = rng.random_range(1..=1_020_000);
        let sql = match rng.random_range(0..6) {
            0..=2 => format!("UPDATE accounts SET balance = balance + 1 WHERE id = {id}"),
            3 => format!("DELETE FROM accounts WHERE id = {id}"),
            _ => format!(
                "INSERT INTO accounts VALUES ({id}, 7) ON CONFLICT (id) DO UPDATE SET balance = accounts.balance * 2"
            ),
        };
        db.batch_execute(&sql).await.unwrap();
    }
}

/// The acceptance scale with an exactly-once sink: `mainstay cdc run` into JetStream over a
/// 1M-row table while 8 writers change it, SIGKILLed 20 times (inside the snapshot and
/// while streaming), restarted each time. The stream ends up holding every change once, in
/// order (no position twice), its replay equals the table, and only snapshot rows of a
/// fetch a kill cut are read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_run_to_jetstream_killed_20_times_over_a_million_rows_holds_every_change_once() {
    use futures::StreamExt as _;
    let nats = mainstay_testkit::shared_nats().url();
    let url = mainstay_testkit::shared_postgres()
        .database()
        .await
        .unwrap();
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO accounts SELECT g, g FROM generate_series(1, 1000000) g;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let name = mainstay_testkit::unique("million")
        .to_lowercase()
        .replace('-', "_");
    let stream = format!("CDC_{}", name.to_uppercase());
    let spawn = || {
        let mut cmd = mainstay(dir.path());
        cmd.args(["cdc", "run", "--source", &url, "--table", "accounts"])
            .args(["--name", &name, "--slot", &name, "--heartbeat", "1s"])
            .args(["--sink", &format!("jetstream:{nats}")])
            .args([
                "--state-file",
                &dir.path().join("state.json").display().to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        mainstay_testkit::Process::spawn("mainstay cdc run", &mut cmd).unwrap()
    };
    let js = async_nats::jetstream::new(async_nats::connect(&nats).await.unwrap());
    let messages = || {
        let js = js.clone();
        let stream = stream.clone();
        async move {
            match js.get_stream(&stream).await {
                Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
                Err(_) => 0,
            }
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|i| tokio::spawn(big_writer(url.clone(), 50 + i, stop.clone())))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x1_000_000);
    let mut kills_at = Vec::new();
    let started = std::time::Instant::now();
    for life in 0..20 {
        let mut child = spawn();
        let before = messages().await;
        // The first lives end inside the 1M-row snapshot, the others while streaming.
        let grow = if life < 4 {
            rng.random_range(200_000..320_000)
        } else {
            rng.random_range(2_000..12_000)
        };
        mainstay_testkit::eventually(Duration::from_secs(120), "the stream to grow", || {
            let m = messages();
            async move { m.await >= before + grow }
        })
        .await
        .unwrap_or_else(|e| panic!("life {life}: {e} (exit: {:?})", child.try_exit_code()));
        child.kill();
        kills_at.push(messages().await);
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let rows = db
        .query("SELECT id, balance FROM accounts", &[])
        .await
        .unwrap();
    let expected: BTreeMap<i64, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    drop(rows);
    // The last life runs until the stream holds everything, then stops cleanly.
    let mut last = spawn();
    let marker = 2_000_000i64;
    db.batch_execute(&format!("INSERT INTO accounts VALUES ({marker}, 1)"))
        .await
        .unwrap();
    let read_all = || async {
        let s = js.get_stream(&stream).await.unwrap();
        let consumer = s
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
            .await
            .unwrap();
        let total = s.cached_info().state.messages;
        let mut out = Vec::with_capacity(total as usize);
        let mut msgs = consumer.messages().await.unwrap();
        while (out.len() as u64) < total {
            let m = msgs.next().await.unwrap().unwrap();
            let position: mainstay_cdc::Position = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Mainstay-Position"))
                .unwrap()
                .as_str()
                .parse()
                .unwrap();
            let change: Change = serde_json::from_slice(&m.payload).unwrap();
            out.push((position, change));
        }
        out
    };
    // The replay of the stream: the table's state, and how often each row was read.
    let replay = |events: &[(mainstay_cdc::Position, Change)]| {
        let mut state: BTreeMap<i64, i64> = BTreeMap::new();
        let mut reads: std::collections::HashMap<i64, u32> = Default::default();
        for (_, c) in events {
            match c.op.as_str() {
                "r" | "c" | "u" => {
                    let a = c.after.as_ref().unwrap();
                    state.insert(a.id, a.balance.unwrap());
                    if c.op == "r" {
                        *reads.entry(a.id).or_default() += 1;
                    }
                }
                "d" => {
                    state.remove(&c.before.as_ref().unwrap().id);
                }
                other => panic!("unexpected op {other}"),
            }
        }
        state.remove(&marker);
        (state, reads)
    };
    // Until the replay equals the table: a snapshot cut by a kill may still be finishing
    // incrementally after the last streamed change (the marker) arrived.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let (events, reads) = loop {
        let events = read_all().await;
        let (state, reads) = replay(&events);
        if state == expected {
            break (events, reads);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream's replay never equalled the table ({} rows of {})",
            state.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(2000)).await;
    };
    last.terminate(Duration::from_secs(10));
    // Every event once, in order.
    for pair in events.windows(2) {
        assert!(
            pair[0].0 < pair[1].0,
            "out of order or twice: {:?} then {:?}",
            pair[0].0,
            pair[1].0
        );
    }
    let read_twice = reads.values().filter(|&&n| n > 1).count();
    // Kills before the stream's last snapshot row were inside the snapshot (a cut one
    // resumes incrementally, next to the stream); kills after its first streamed change
    // were while streaming. Both must have happened.
    let snapshot_end = events.iter().rposition(|(_, c)| c.op == "r").unwrap() as u64 + 1;
    let first_change = events.iter().position(|(_, c)| c.op != "r").unwrap() as u64 + 1;
    let in_snapshot = kills_at.iter().filter(|&&n| n < snapshot_end).count();
    let streaming = kills_at.iter().filter(|&&n| n > first_change).count();
    assert!(in_snapshot >= 1, "no kill landed inside the snapshot");
    assert!(streaming >= 1, "no kill landed while streaming");
    // A kill inside the snapshot costs at most the fetch (4096 rows) it cut.
    assert!(
        read_twice <= 4096 * in_snapshot.max(1),
        "{read_twice} rows read twice for {in_snapshot} kills inside the snapshot"
    );
    eprintln!(
        "1M rows, 8 writers, 20 SIGKILLs ({in_snapshot} inside the snapshot, {streaming} while streaming): {} events in the stream, none twice; \
         {read_twice} snapshot rows read again; {:.1?}",
        events.len(),
        started.elapsed()
    );
    let _ = js.delete_stream(&stream).await;
    db.batch_execute(&format!("SELECT pg_drop_replication_slot('{name}')"))
        .await
        .unwrap();
}

/// A CDC event's position from its event-store id (`[s]COMMIT/LSN/INDEX`), ordered as
/// the connector orders them: commit LSN, snapshot rows first, index.
fn store_position(id: &str) -> (u64, bool, u64) {
    let (snapshot, rest) = match id.strip_prefix('s') {
        Some(rest) => (true, rest),
        None => (false, id),
    };
    let parts: Vec<u64> = rest.split('/').map(|p| p.parse().unwrap()).collect();
    (parts[0], !snapshot, parts[2])
}

/// The same acceptance workload into the event store (`--sink events`, the embedded SQLite
/// store): 1M rows, 8 writers, 20 SIGKILLs. Every change is in the store once (ids are
/// the positions and none repeats), each row's stream is in commit order, and the streams'
/// last states equal the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_run_to_the_event_store_killed_20_times_over_a_million_rows_holds_every_change_once() {
    let url = mainstay_testkit::shared_postgres()
        .database()
        .await
        .unwrap();
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO accounts SELECT g, g FROM generate_series(1, 1000000) g;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let name = "estore";
    let spawn = || {
        let mut cmd = mainstay(dir.path());
        cmd.args(["cdc", "run", "--source", &url, "--table", "accounts"])
            .args([
                "--name",
                name,
                "--slot",
                "estore",
                "--heartbeat",
                "1s",
                "--sink",
                "events",
            ])
            .args([
                "--state-file",
                &dir.path().join("state.json").display().to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        mainstay_testkit::Process::spawn("mainstay cdc run", &mut cmd).unwrap()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|i| tokio::spawn(big_writer(url.clone(), 70 + i, stop.clone())))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xe5);
    let started = std::time::Instant::now();
    // Lives end after a random time: long ones first (inside the 1M-row snapshot), short
    // ones after (streaming and the resumed snapshot).
    for life in 0..20 {
        let mut child = spawn();
        let ms = if life < 4 {
            rng.random_range(2_000..6_000)
        } else {
            rng.random_range(300..1_500)
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        assert!(
            child.try_exit_code().is_none(),
            "life {life}: the connector exited early"
        );
        child.kill();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let marker = 2_000_000i64;
    db.batch_execute(&format!("INSERT INTO accounts VALUES ({marker}, 1)"))
        .await
        .unwrap();
    let rows = db
        .query("SELECT id, balance FROM accounts", &[])
        .await
        .unwrap();
    let expected: BTreeMap<i64, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    drop(rows);
    let mut last = spawn();
    // Read the store as it fills (events only append): until the rows' last states equal
    // the table — a snapshot cut by a kill may still be finishing incrementally after the
    // last streamed change arrived.
    let s = mainstay_eventstore::connect(
        &mainstay_core::config::BackendConfig::default(),
        &dir.path().join("mainstay-data"),
    )
    .await
    .unwrap();
    let filter = mainstay_eventstore::ReadAllFilter {
        stream_prefix: Some(format!("{name}-public.accounts-")),
        ..Default::default()
    };
    let mut after = mainstay_eventstore::Position::START;
    let mut ids = std::collections::HashSet::new();
    // Per row: its last event's position and balance (None once deleted).
    type Last = ((u64, bool, u64), Option<i64>);
    let mut per_row: std::collections::HashMap<i64, Last> = Default::default();
    let mut total = 0u64;
    let mut reads: std::collections::HashMap<i64, u32> = Default::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        loop {
            let page = s.read_all(after, 10_000, &filter).await.unwrap();
            let Some(end) = page.last().map(|e| e.position) else {
                break;
            };
            for e in &page {
                total += 1;
                assert!(
                    ids.insert(e.id.clone()),
                    "change {} is in the store twice",
                    e.id
                );
                let position = store_position(&e.id);
                let id: i64 = e.stream.rsplit('-').next().unwrap().parse().unwrap();
                let balance = match e.data["op"].as_str().unwrap() {
                    "d" => None,
                    "r" | "c" | "u" => Some(e.data["after"]["balance"].as_i64().unwrap()),
                    other => panic!("unexpected op {other}"),
                };
                if e.data["op"] == "r" {
                    *reads.entry(id).or_default() += 1;
                }
                if let Some((previous, _)) = per_row.get(&id) {
                    assert!(
                        *previous < position,
                        "stream {} out of commit order: {previous:?} then {position:?}",
                        e.stream
                    );
                }
                per_row.insert(id, (position, balance));
            }
            after = end;
        }
        let equal = per_row.values().filter(|(_, b)| b.is_some()).count() == expected.len()
            && expected
                .iter()
                .all(|(id, balance)| per_row.get(id).and_then(|(_, b)| *b) == Some(*balance));
        if equal {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the row streams' last states never equalled the table ({} rows of {})",
            per_row.values().filter(|(_, b)| b.is_some()).count(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    last.terminate(Duration::from_secs(10));
    let read_twice = reads.values().filter(|&&n| n > 1).count();
    eprintln!(
        "1M rows, 8 writers, 20 SIGKILLs into the event store: {total} events, none twice, every row stream in order; \
         {read_twice} snapshot rows read again; {:.1?}",
        started.elapsed()
    );
    db.batch_execute("SELECT pg_drop_replication_slot('estore')")
        .await
        .unwrap();
}
