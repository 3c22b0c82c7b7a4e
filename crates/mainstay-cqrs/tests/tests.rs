//! CQRS on SQLite and on a real PostgreSQL: the repository under contention, temporal
//! queries, and projections that stay exactly-once while their process is killed.

use async_trait::async_trait;
use mainstay_cqrs::postgres::{PgProjection, PgProjector};
use mainstay_cqrs::sqlite::{SqliteProjection, SqliteProjector};
use mainstay_cqrs::{run_at_least_once, Aggregate, CqrsError, Repository};
use mainstay_eventstore::postgres::PostgresEventStore;
use mainstay_eventstore::sqlite::SqliteEventStore;
use mainstay_eventstore::{
    Direction, EventData, EventStore, ExpectedVersion, Position, ReadAllFilter, RecordedEvent,
};
use mainstay_testkit::shared_postgres;
use mainstay_testkit::{per_store, StoreKind as Kind};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A fresh store, and where it lives (a SQLite file path or a PostgreSQL URL).
async fn store(kind: Kind) -> (Arc<dyn EventStore>, String, Box<dyn std::any::Any + Send>) {
    match kind {
        Kind::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("cqrs.db");
            let s = SqliteEventStore::open(&path).unwrap();
            (Arc::new(s), path.display().to_string(), Box::new(dir))
        }
        Kind::Postgres => {
            let pg = shared_postgres();
            let url = pg.database().await.unwrap();
            let s = PostgresEventStore::connect(&url).await.unwrap();
            (Arc::new(s), url, Box::new(pg))
        }
    }
}

// --- the write side ------------------------------------------------------------------

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Counter {
    value: i64,
    commands: u64,
}

enum Cmd {
    Add(i64),
    Nothing,
}

#[derive(Serialize, Deserialize)]
struct Added {
    by: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("refused: {0}")]
struct Refused(String);

impl Aggregate for Counter {
    const KIND: &'static str = "counter";
    type Command = Cmd;
    type Event = Added;
    type Error = Refused;

    fn event_type(_: &Added) -> &'static str {
        "Added"
    }

    fn handle(&self, c: &Cmd) -> Result<Vec<Added>, Refused> {
        match c {
            Cmd::Add(0) => Err(Refused("adding zero".into())),
            // Read-modify-write: the decision depends on the state it saw.
            Cmd::Add(by) if self.value + by > 1_000_000 => Err(Refused("too big".into())),
            Cmd::Add(by) => Ok(vec![Added { by: *by }]),
            Cmd::Nothing => Ok(vec![]),
        }
    }

    fn apply(&mut self, e: &Added) {
        self.value += e.by;
        self.commands += 1;
    }
}

/// 16 tasks × 100 read-modify-write commands on one aggregate: all 1600 land, the
/// conflicts among them were retried, and temporal queries see the past.
async fn sixteen_writers_on_one_aggregate_lose_nothing(kind: Kind) {
    let (s, _, _g) = store(kind).await;
    let repo = Repository::<Counter>::new(s.clone()).with_snapshots_every(50);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let repo = repo.clone();
            tokio::spawn(async move {
                let mut attempts = 0;
                for _ in 0..100 {
                    attempts += repo.execute("c1", &Cmd::Add(1)).await.unwrap().attempts;
                }
                attempts
            })
        })
        .collect();
    let mut attempts = 0;
    for t in tasks {
        attempts += t.await.unwrap();
    }
    let now = repo.load("c1").await.unwrap();
    assert_eq!((now.state.value, now.state.commands), (1600, 1600));
    assert_eq!(now.version, Some(1599));
    assert!(
        attempts > 1600,
        "16 concurrent writers never conflicted ({attempts} attempts)"
    );
    // Loading without snapshots folds every event: the same state.
    let plain = Repository::<Counter>::new(s.clone())
        .load("c1")
        .await
        .unwrap();
    assert_eq!(plain.state.value, 1600);
    assert!(
        s.load_snapshot("counter-c1")
            .await
            .unwrap()
            .unwrap()
            .version
            >= 1549
    );

    // Temporal: at a version, and at a time.
    assert_eq!(repo.load_at("c1", 99).await.unwrap().state.value, 100);
    assert_eq!(repo.load_at("c1", 1549).await.unwrap().state.value, 1550);
    let events = s
        .read_stream("counter-c1", 0, Direction::Forward, usize::MAX)
        .await
        .unwrap();
    let t = events[700].created_at_ms;
    let then = repo.load_as_of("c1", t).await.unwrap();
    let expected = events.iter().filter(|e| e.created_at_ms <= t).count() as i64;
    assert_eq!(then.state.value, expected);
    assert!(expected > 700);
}
per_store!(sixteen_writers_on_one_aggregate_lose_nothing);

/// A refused command appends nothing; a no-op command appends nothing; an event that
/// does not decode is reported with its stream and version.
async fn refusals_and_corrupt_events(kind: Kind) {
    let (s, _, _g) = store(kind).await;
    let repo = Repository::<Counter>::new(s.clone());
    repo.execute("c2", &Cmd::Add(5)).await.unwrap();
    assert!(matches!(
        repo.execute("c2", &Cmd::Add(0)).await,
        Err(CqrsError::Rejected(_))
    ));
    assert!(matches!(
        repo.execute("c2", &Cmd::Add(2_000_000)).await,
        Err(CqrsError::Rejected(_))
    ));
    let noop = repo.execute("c2", &Cmd::Nothing).await.unwrap();
    assert_eq!((noop.events, noop.version), (0, Some(0)));
    assert_eq!(s.stream_version("counter-c2").await.unwrap(), Some(0));
    s.append(
        "counter-c2",
        ExpectedVersion::Exact(0),
        vec![EventData::new("Added", json!({"by": "five"}))],
    )
    .await
    .unwrap();
    match repo.load("c2").await {
        Err(CqrsError::Corrupt {
            stream, version, ..
        }) => assert_eq!((stream.as_str(), version), ("counter-c2", 1)),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // A fresh aggregate loads as the default.
    let fresh = repo.load("new").await.unwrap();
    assert_eq!((fresh.state.value, fresh.version), (0, None));
}
per_store!(refusals_and_corrupt_events);

// --- the read side ---------------------------------------------------------------------

/// A read model of per-stream counts and sums; `n = n + 1` is not idempotent, so an event
/// applied twice (or lost) shows.
struct Tally;

impl SqliteProjection for Tally {
    fn name(&self) -> &str {
        "tally"
    }
    fn create(&self, tx: &rusqlite::Transaction<'_>, table: &str) -> rusqlite::Result<()> {
        tx.execute_batch(&format!(
            "CREATE TABLE {table} (stream TEXT PRIMARY KEY, n INTEGER NOT NULL, total INTEGER NOT NULL, last INTEGER NOT NULL)"
        ))
    }
    fn apply(
        &self,
        tx: &rusqlite::Transaction<'_>,
        table: &str,
        e: &RecordedEvent,
    ) -> rusqlite::Result<()> {
        tx.execute(
            &format!(
                "INSERT INTO {table} VALUES (?1, 1, ?2, ?3) ON CONFLICT (stream) DO UPDATE
                 SET n = n + 1, total = total + excluded.total, last = excluded.last"
            ),
            rusqlite::params![
                e.stream,
                e.data["v"].as_i64().unwrap_or(0),
                e.version as i64
            ],
        )?;
        Ok(())
    }
}

#[async_trait]
impl PgProjection for Tally {
    fn name(&self) -> &str {
        "tally"
    }
    async fn create(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        table: &str,
    ) -> Result<(), tokio_postgres::Error> {
        tx.batch_execute(&format!(
            "CREATE TABLE {table} (stream text PRIMARY KEY, n bigint NOT NULL, total bigint NOT NULL, last bigint NOT NULL)"
        ))
        .await
    }
    async fn apply(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        table: &str,
        e: &RecordedEvent,
    ) -> Result<(), tokio_postgres::Error> {
        tx.execute(
            &format!(
                "INSERT INTO {table} VALUES ($1, 1, $2, $3) ON CONFLICT (stream) DO UPDATE
                 SET n = {table}.n + 1, total = {table}.total + excluded.total, last = excluded.last"
            ),
            &[
                &e.stream,
                &e.data["v"].as_i64().unwrap_or(0),
                &(e.version as i64),
            ],
        )
        .await?;
        Ok(())
    }
}

type Rows = BTreeMap<String, (i64, i64, i64)>;

/// What the read model must hold: a fold over every event.
async fn fold(s: &Arc<dyn EventStore>) -> (Rows, Position) {
    let all = s
        .read_all(Position::START, usize::MAX, &ReadAllFilter::default())
        .await
        .unwrap();
    let mut rows = Rows::new();
    for e in &all {
        let r = rows.entry(e.stream.clone()).or_default();
        r.0 += 1;
        r.1 += e.data["v"].as_i64().unwrap_or(0);
        r.2 = e.version as i64;
    }
    (rows, all.last().map_or(Position::START, |e| e.position))
}

/// The read model as its readers see it (through the view).
async fn read_model(kind: Kind, target: &str) -> Rows {
    match kind {
        Kind::Sqlite => {
            let c = rusqlite::Connection::open(target).unwrap();
            c.busy_timeout(Duration::from_secs(30)).unwrap();
            let mut q = c
                .prepare("SELECT stream, n, total, last FROM tally")
                .unwrap();
            q.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))))
                .unwrap()
                .collect::<rusqlite::Result<Rows>>()
                .unwrap()
        }
        Kind::Postgres => {
            let (c, conn) = tokio_postgres::connect(target, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c.query("SELECT stream, n, total, last FROM tally", &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
                .collect()
        }
    }
}

fn applied(rows: &Rows) -> i64 {
    rows.values().map(|r| r.0).sum()
}

enum Projector {
    Sqlite(SqliteProjector<Tally>),
    Postgres(Box<PgProjector<Tally>>),
}

impl Projector {
    async fn open(kind: Kind, target: &str, s: Arc<dyn EventStore>, batch: usize) -> Projector {
        match kind {
            Kind::Sqlite => Projector::Sqlite(
                SqliteProjector::open(target, s, Tally)
                    .unwrap()
                    .with_batch(batch),
            ),
            Kind::Postgres => Projector::Postgres(Box::new(
                PgProjector::connect(target, s, Tally)
                    .await
                    .unwrap()
                    .with_batch(batch),
            )),
        }
    }
    async fn catch_up(&self) -> usize {
        match self {
            Projector::Sqlite(p) => p.catch_up().await.unwrap(),
            Projector::Postgres(p) => p.catch_up().await.unwrap(),
        }
    }
    async fn run(&self) {
        match self {
            Projector::Sqlite(p) => p.run().await.unwrap(),
            Projector::Postgres(p) => p.run().await.unwrap(),
        }
    }
    async fn rebuild(&self) -> usize {
        match self {
            Projector::Sqlite(p) => p.rebuild().await.unwrap(),
            Projector::Postgres(p) => p.rebuild().await.unwrap(),
        }
    }
    async fn checkpoint(&self) -> (i64, Position) {
        match self {
            Projector::Sqlite(p) => p.checkpoint().await.unwrap(),
            Projector::Postgres(p) => p.checkpoint().await.unwrap(),
        }
    }
    async fn table(&self) -> String {
        match self {
            Projector::Sqlite(p) => p.table().await.unwrap(),
            Projector::Postgres(p) => p.table().await.unwrap(),
        }
    }
}

/// Catches up until the read model's checkpoint is `$all`'s last position (on
/// PostgreSQL `$all` may trail the last commits briefly).
async fn settle(p: &Projector, s: &Arc<dyn EventStore>) -> (Rows, Position) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        p.catch_up().await;
        let (rows, last) = fold(s).await;
        if p.checkpoint().await.1 == last || Instant::now() > deadline {
            return (rows, last);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `$all` serves `n` events (PostgreSQL's `$all` trails commits while other
/// transactions on the shared server run).
async fn wait_all(s: &Arc<dyn EventStore>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while s
        .read_all(Position::START, usize::MAX, &ReadAllFilter::default())
        .await
        .unwrap()
        .len()
        < n
    {
        assert!(Instant::now() < deadline, "$all never showed {n} events");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Appends `n` events over 40 streams in batches of 1–5.
async fn append_events(s: Arc<dyn EventStore>, n: usize, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut done = 0;
    while done < n {
        let k = rng.random_range(1..=5usize).min(n - done);
        let batch = (0..k)
            .map(|_| EventData::new("V", json!({"v": rng.random_range(1..100)})))
            .collect();
        s.append(
            &format!("s-{}", rng.random_range(0..40)),
            ExpectedVersion::Any,
            batch,
        )
        .await
        .unwrap();
        done += k;
    }
}

/// The child process of [`projection_is_exactly_once_across_50_kills`]: runs the
/// projector until killed (or until a failpoint aborts it). Ignored: it only runs when
/// the parent starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the projector process of the kill test, started by it"]
async fn projector_child() {
    let kind = match std::env::var("MAINSTAY_CQRS_CHILD").as_deref() {
        Ok("sqlite") => Kind::Sqlite,
        Ok("postgres") => Kind::Postgres,
        _ => panic!("run by projection_is_exactly_once_across_50_kills"),
    };
    let target = std::env::var("MAINSTAY_CQRS_TARGET").unwrap();
    let s: Arc<dyn EventStore> = match kind {
        Kind::Sqlite => Arc::new(SqliteEventStore::open(&target).unwrap()),
        Kind::Postgres => Arc::new(PostgresEventStore::connect(&target).await.unwrap()),
    };
    Projector::open(kind, &target, s, 20).await.run().await;
}

/// Exactly-once projection: a projector process is killed 50 times while it projects
/// (25 × SIGKILL at random progress points, 25 × an abort just before or just after a
/// batch commits) with a writer appending all along; after each restart it resumes from
/// its checkpoint. The read model equals the fold over all events, and the checkpoint is
/// the last position.
async fn projection_is_exactly_once_across_50_kills(kind: Kind) {
    let (s, target, _g) = store(kind).await;
    append_events(s.clone(), 3000, 1).await;
    let writer = tokio::spawn(append_events(s.clone(), 2000, 2));
    let mut total = 5000i64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x50);
    let exe = std::env::current_exe().unwrap();
    let mut aborted = 0;
    let mut killed = 0;
    let mut last_applied = 0;
    // The first child creates the read model; the parent reads it only once it exists.
    for i in 0..50 {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["--exact", "projector_child", "--ignored", "--nocapture"])
            .env(
                "MAINSTAY_CQRS_CHILD",
                match kind {
                    Kind::Sqlite => "sqlite",
                    Kind::Postgres => "postgres",
                },
            )
            .env("MAINSTAY_CQRS_TARGET", &target)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let by_failpoint = i % 2 == 1;
        if by_failpoint && total - last_applied < 400 {
            // A failpoint fires on the projector's 1st-3rd commit, so it needs events to
            // commit: on a fast host the projector can have caught up with every event
            // appended so far. Regression: on a loaded clean-clone run only 17 of 25
            // failpoints fired because later children found nothing left to apply.
            append_events(s.clone(), 400, 1000 + i).await;
            total += 400;
        }
        if by_failpoint {
            let point = if rng.random_bool(0.5) {
                "projection.before_commit"
            } else {
                "projection.after_commit"
            };
            cmd.env(
                "MAINSTAY_FAILPOINTS",
                format!("{point}={}", rng.random_range(1..=3)),
            );
        }
        let mut child = mainstay_testkit::Process::spawn("projector", &mut cmd).unwrap();
        let target_applied = last_applied + rng.random_range(1..150);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(code) = child.try_exit_code() {
                assert_eq!(code, None, "child {i} exited instead of aborting");
                assert!(by_failpoint, "child {i} died without a failpoint");
                aborted += 1;
                break;
            }
            let now = if i == 0 && !read_model_exists(kind, &target).await {
                0
            } else {
                applied(&read_model(kind, &target).await)
            };
            // Everything applied: a failpoint would never fire again.
            let idle = now >= total;
            if (!by_failpoint && now >= target_applied) || idle {
                child.kill();
                killed += 1;
                break;
            }
            assert!(Instant::now() < deadline, "the projector made no progress");
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        if i > 0 || read_model_exists(kind, &target).await {
            last_applied = applied(&read_model(kind, &target).await);
        }
    }
    writer.await.unwrap();
    assert!(aborted >= 20, "failpoints fired {aborted} times");
    assert!(
        last_applied >= 2000,
        "the killed projectors applied only {last_applied} events"
    );
    assert_eq!(aborted + killed, 50);
    wait_all(&s, total as usize).await;
    let p = Projector::open(kind, &target, s.clone(), 100).await;
    let (expected, last) = settle(&p, &s).await;
    let got = read_model(kind, &target).await;
    assert_eq!(applied(&expected), total);
    assert_eq!(
        got, expected,
        "the read model is not the fold of the events"
    );
    assert_eq!(p.checkpoint().await.1, last);
}
per_store!(projection_is_exactly_once_across_50_kills);

/// A running PostgreSQL projector whose database connections are cut (every backend of
/// the database terminated, twice, while events keep coming) reconnects by itself and
/// ends with the read model equal to the fold over all events — nothing lost, nothing
/// applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_projector_reconnects_after_its_connection_is_cut() {
    let (s, url, _d) = store(Kind::Postgres).await;
    let p = Arc::new(
        PgProjector::connect(&url, s.clone(), Tally)
            .await
            .unwrap()
            .with_batch(20),
    );
    let runner = {
        let p = p.clone();
        tokio::spawn(async move { p.run().await })
    };
    let mut total = 0;
    for round in 0..3u64 {
        append_events(s.clone(), 300, round).await;
        total += 300;
        wait_all(&s, total).await;
        if round < 2 {
            // Cut every other connection to this database: the projector's, the store's
            // pool and its LISTEN connection.
            let cut = mainstay_testkit::terminate_connections(&url).await.unwrap();
            assert!(cut > 0);
            // The store's pooled connections die with them; a call that races the cut
            // fails once (appends are safe to retry: idempotent by event id). Wait until
            // the store answers again before the next round.
            let deadline = Instant::now() + Duration::from_secs(20);
            while s.stream_version("s-0").await.is_err() {
                assert!(Instant::now() < deadline, "the store never came back");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // The projector must get there on its own (it is the only one running).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (want, last) = fold(&s).await;
    loop {
        assert!(!runner.is_finished(), "run() returned: {:?}", runner.await);
        let got = read_model(Kind::Postgres, &url).await;
        if got == want {
            assert_eq!(p.checkpoint().await.unwrap().1, last);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "read model never caught up: {} of {} events applied",
            applied(&got),
            total
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    runner.abort();
}

async fn read_model_exists(kind: Kind, target: &str) -> bool {
    match kind {
        Kind::Sqlite => rusqlite::Connection::open(target)
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*) FROM sqlite_master WHERE name = 'tally'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .is_ok_and(|n| n == 1),
        Kind::Postgres => {
            let (c, conn) = tokio_postgres::connect(target, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c.query_one("SELECT to_regclass('tally') IS NOT NULL", &[])
                .await
                .unwrap()
                .get(0)
        }
    }
}

/// Two projectors on one read model (two processes would do the same): every event is
/// still applied once. A rebuild while one of them runs live projects from the start
/// into a fresh table and swaps it in; the live one continues on the new table.
async fn concurrent_projectors_and_rebuild_and_swap(kind: Kind) {
    let (s, target, _g) = store(kind).await;
    append_events(s.clone(), 600, 3).await;
    let a = Arc::new(Projector::open(kind, &target, s.clone(), 7).await);
    let b = Arc::new(Projector::open(kind, &target, s.clone(), 11).await);
    wait_all(&s, 600).await;
    let (ra, rb) = tokio::join!(a.catch_up(), b.catch_up());
    assert_eq!(ra + rb, 600, "each event applied by one of the two");
    let (expected, last) = fold(&s).await;
    assert_eq!(read_model(kind, &target).await, expected);
    assert_eq!(a.checkpoint().await.1, last);

    let live = {
        let a = a.clone();
        tokio::spawn(async move { a.run().await })
    };
    let before = a.table().await;
    let rebuilt = b.rebuild().await;
    assert!(rebuilt >= 600, "rebuilt from {rebuilt} events");
    assert_ne!(a.table().await, before, "the view points at the new table");
    append_events(s.clone(), 100, 4).await;
    wait_all(&s, 700).await;
    // The live projector applies the new events to the new generation.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (want, last) = fold(&s).await;
        if read_model(kind, &target).await == want && a.checkpoint().await.1 == last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the live projector did not follow the swap"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    live.abort();
    assert_eq!(applied(&read_model(kind, &target).await), 700);
    // The old table is gone.
    match kind {
        Kind::Sqlite => {
            let c = rusqlite::Connection::open(&target).unwrap();
            let n: i64 = c
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE name = ?1",
                    [&before],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 0);
        }
        Kind::Postgres => {
            let (c, conn) = tokio_postgres::connect(&target, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let gone: bool = c
                .query_one("SELECT to_regclass($1) IS NULL", &[&before])
                .await
                .unwrap()
                .get(0);
            assert!(gone);
        }
    }
}
per_store!(concurrent_projectors_and_rebuild_and_swap);

/// At-least-once handlers: every event once in a run; after a restart, the handler
/// resumes after the last checkpoint (so it sees nothing twice when it stopped between
/// events); invalid projection names are refused.
async fn at_least_once_handler_resumes_after_its_checkpoint(kind: Kind) {
    let (s, target, _g) = store(kind).await;
    append_events(s.clone(), 50, 5).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Position>::new()));
    let run = |stop_after: usize| {
        let s = s.clone();
        let seen = seen.clone();
        async move {
            let r = run_at_least_once(s, "mailer", move |e| {
                let seen = seen.clone();
                async move {
                    let mut v = seen.lock().unwrap();
                    if v.len() >= stop_after {
                        return Err("stop".to_string());
                    }
                    v.push(e.position);
                    Ok(())
                }
            })
            .await;
            assert!(matches!(r, Err(mainstay_cqrs::ProjectionError::Handler(_))));
        }
    };
    run(20).await;
    // The 21st event failed in the handler: not checkpointed, delivered again now. This
    // run follows live after the 50th event; stop it once it has them all.
    let second = tokio::spawn(run(usize::MAX));
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < 50 {
        assert!(Instant::now() < deadline, "the handler stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    second.abort();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 50);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(seen, {
        s.read_all(Position::START, usize::MAX, &ReadAllFilter::default())
            .await
            .unwrap()
            .iter()
            .map(|e| e.position)
            .collect::<Vec<_>>()
    });
    struct Bad;
    impl SqliteProjection for Bad {
        fn name(&self) -> &str {
            "Drop Table"
        }
        fn create(&self, _: &rusqlite::Transaction<'_>, _: &str) -> rusqlite::Result<()> {
            Ok(())
        }
        fn apply(
            &self,
            _: &rusqlite::Transaction<'_>,
            _: &str,
            _: &RecordedEvent,
        ) -> rusqlite::Result<()> {
            Ok(())
        }
    }
    if let Kind::Sqlite = kind {
        assert!(matches!(
            SqliteProjector::open(&target, s.clone(), Bad),
            Err(mainstay_cqrs::ProjectionError::InvalidName(_))
        ));
    }
}
per_store!(at_least_once_handler_resumes_after_its_checkpoint);
