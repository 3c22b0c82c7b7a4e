//! The event store in PostgreSQL (13 or later).
//!
//! Appends run concurrently. An `Exact` append to a live stream is one `INSERT` that
//! writes only its events (the `(stream_id, version)` key refuses a concurrent append to
//! the same version); the other kinds lock only their stream's row. Deletes briefly lock
//! the events table against appends (see `FAST_EXACT` and `docs/events.md`). An event's position is
//! `(commit, prepare)` = (the appending transaction's id, `xid8`; a sequence value).
//! Sequence values are taken in no particular commit order, so `$all` is ordered by
//! transaction id first, and a reader is served only events of transactions **older than
//! the oldest transaction still running** (`pg_snapshot_xmin`): every such transaction has
//! finished, and any transaction that commits later has a larger id, so its events sort
//! after everything already read. No event can appear behind a reader's checkpoint, and no
//! timing heuristic is involved. The price: `$all` trails commits — an append becomes
//! visible there once every transaction that started before it has ended, so a
//! long-running transaction anywhere in the cluster holds `$all` readers (not writers,
//! and not stream reads, which see an append as soon as it commits) until it ends.

use crate::event::{check_snapshot, check_stream};
use crate::subscription::check_name;
use crate::{
    Append, AppendResult, DeleteMode, Direction, EventStore, ExpectedVersion, Position,
    ReadAllFilter, RecordedEvent, Snapshot, StoreError, StreamMetadata, Wakeups,
};
use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use mainstay_core::clock::now_ms;
use mainstay_core::pg::{connection_lost, LOST_RETRIES};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_postgres::Row;

const SCHEMA: &str = "
CREATE SEQUENCE IF NOT EXISTS mainstay_event_seq;
CREATE TABLE IF NOT EXISTS mainstay_streams (
    stream_id       text COLLATE \"C\" PRIMARY KEY,
    version         bigint NOT NULL,
    state           smallint NOT NULL DEFAULT 0,
    truncate_before bigint,
    max_count       bigint,
    max_age_ms      bigint,
    custom          text
);
CREATE TABLE IF NOT EXISTS mainstay_snapshots (
    stream_id     text COLLATE \"C\" PRIMARY KEY,
    version       bigint NOT NULL,
    data          text NOT NULL,
    created_at_ms bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS mainstay_events (
    tx            xid8   NOT NULL DEFAULT pg_current_xact_id(),
    seq           bigint NOT NULL DEFAULT nextval('mainstay_event_seq'),
    stream_id     text   COLLATE \"C\" NOT NULL,
    version       bigint NOT NULL,
    event_id      text   COLLATE \"C\" NOT NULL,
    event_type    text   NOT NULL,
    data          text   NOT NULL,
    metadata      text   NOT NULL,
    created_at_ms bigint NOT NULL,
    stream_deleted boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tx, seq),
    UNIQUE (stream_id, version),
    UNIQUE (stream_id, event_id)
);
-- Tables made before `stream_deleted` existed: add it, and mark the last event of each
-- soft-deleted stream (see FAST_EXACT). Checked first so that a connect does not take
-- the table's exclusive lock when there is nothing to do.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = 'mainstay_events'::regclass AND attname = 'stream_deleted') THEN
        ALTER TABLE mainstay_events ADD COLUMN IF NOT EXISTS stream_deleted boolean NOT NULL DEFAULT false;
        UPDATE mainstay_events e SET stream_deleted = true
          FROM mainstay_streams s
         WHERE s.state = 1 AND e.stream_id = s.stream_id AND e.version = s.version;
    END IF;
END
$$;
-- A soft delete flags the stream's last event, whoever sets the state: this store, an
-- earlier version of it still running during an upgrade, or hand-written SQL.
CREATE OR REPLACE FUNCTION mainstay_flag_soft_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE mainstay_events SET stream_deleted = true
     WHERE stream_id = NEW.stream_id AND version = NEW.version AND NOT stream_deleted;
    RETURN NULL;
END
$$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgrelid = 'mainstay_streams'::regclass
                      AND tgname = 'mainstay_streams_soft_delete') THEN
        CREATE TRIGGER mainstay_streams_soft_delete
            AFTER UPDATE OF state ON mainstay_streams
            FOR EACH ROW WHEN (NEW.state = 1)
            EXECUTE FUNCTION mainstay_flag_soft_delete();
    END IF;
END
$$;
CREATE OR REPLACE FUNCTION mainstay_expected_ok(kind smallint, expected bigint, actual bigint)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(kind = 0 OR (kind = 1 AND actual IS NULL) OR (kind = 2 AND actual IS NOT NULL)
        OR (kind = 3 AND actual IS NOT NULL AND actual = expected), false)
$$;
-- One append to one stream, in one round trip: lock the stream row, recognise a retry
-- of the same event ids, check the expected version, insert, bump the version. Refusals
-- are errors MS001 (wrong expected version; DETAIL = actual or empty), MS002 (ids
-- already stored elsewhere; DETAIL = the first id), MS003 (tombstoned), so the
-- statement (or the caller's transaction) rolls back.
CREATE OR REPLACE FUNCTION mainstay_append(
    p_stream text, p_kind smallint, p_expected bigint,
    p_ids text[], p_types text[], p_data text[], p_meta text[], p_now bigint,
    OUT next_version bigint, OUT first_tx bigint, OUT first_seq bigint,
    OUT last_tx bigint, OUT last_seq bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint; v_state smallint; v_actual bigint; v_n int := cardinality(p_ids);
    v_found int; v_v0 bigint; v_first bigint;
BEGIN
    -- Fast path for NoStream: one UPDATE locks the row, checks that the stream is new
    -- (or soft-deleted) and sets the version. An old id among new events then fails the
    -- INSERT on the (stream_id, event_id) key.
    IF p_kind = 1 THEN
        UPDATE mainstay_streams s
           SET version = CASE WHEN s.version < 0 THEN v_n - 1 ELSE s.version + v_n END, state = 0
         WHERE s.stream_id = p_stream AND s.state <> 2
           AND mainstay_expected_ok(p_kind, p_expected,
                   CASE WHEN s.state = 1 OR s.version < 0 THEN NULL ELSE s.version END)
        RETURNING s.version INTO next_version;
        IF FOUND THEN
            v_first := next_version - v_n + 1;
            WITH ins AS (
                INSERT INTO mainstay_events (stream_id, version, event_id, event_type, data, metadata, created_at_ms)
                SELECT p_stream, v_first + u.k - 1, u.i, u.t, u.d, u.m, p_now
                FROM unnest(p_ids, p_types, p_data, p_meta) WITH ORDINALITY AS u(i, t, d, m, k)
                ORDER BY u.k
                RETURNING seq)
            SELECT min(ins.seq), max(ins.seq) INTO first_seq, last_seq FROM ins;
            first_tx := pg_current_xact_id()::text::bigint;
            last_tx := first_tx;
            RETURN;
        END IF;
    END IF;
    -- Otherwise (Any, StreamExists, a new stream, a refusal, or a retry): lock, then look.
    SELECT s.version, s.state INTO v_version, v_state
        FROM mainstay_streams s WHERE s.stream_id = p_stream FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO mainstay_streams (stream_id, version) VALUES (p_stream, -1) ON CONFLICT DO NOTHING;
        SELECT s.version, s.state INTO v_version, v_state
            FROM mainstay_streams s WHERE s.stream_id = p_stream FOR UPDATE;
    END IF;
    IF v_state = 2 THEN
        RAISE EXCEPTION USING ERRCODE = 'MS003', MESSAGE = 'stream is tombstoned';
    END IF;
    -- Exact appends to a live stream do not write its row: the stream's version is the
    -- greater of the row's and its newest event's.
    IF v_state = 0 THEN
        v_version := greatest(v_version,
            (SELECT max(e.version) FROM mainstay_events e WHERE e.stream_id = p_stream));
    END IF;
    v_actual := CASE WHEN v_state = 1 OR v_version < 0 THEN NULL ELSE v_version END;
    -- Is this a retry of a batch already stored? Only worth asking when the expected
    -- version fails (a retry under Exact/NoStream), or when it cannot tell (Any,
    -- StreamExists). Otherwise new ids are the rule, and an old id among them makes the
    -- INSERT below fail on the (stream_id, event_id) key. Dynamic SQL: planned for these
    -- ids (one index probe each); a cached generic plan may scan the whole stream.
    v_found := 0;
    IF p_kind IN (0, 2) OR NOT mainstay_expected_ok(p_kind, p_expected, v_actual) THEN
        EXECUTE 'SELECT count(*), min(version) FROM mainstay_events
                 WHERE stream_id = $1 AND event_id = ANY($2)'
            INTO v_found, v_v0 USING p_stream, p_ids;
    END IF;
    IF v_found > 0 THEN
        IF v_found = v_n AND NOT EXISTS (
            SELECT 1 FROM unnest(p_ids) WITH ORDINALITY AS u(id, k)
            LEFT JOIN mainstay_events e ON e.stream_id = p_stream AND e.event_id = u.id
            WHERE e.version IS DISTINCT FROM v_v0 + u.k - 1)
        THEN
            IF NOT mainstay_expected_ok(p_kind, p_expected, CASE WHEN v_v0 = 0 THEN NULL ELSE v_v0 - 1 END) THEN
                RAISE EXCEPTION USING ERRCODE = 'MS001', MESSAGE = 'wrong expected version',
                    DETAIL = coalesce(v_actual::text, '');
            END IF;
            next_version := v_v0 + v_n - 1;
            SELECT e.tx::text::bigint, e.seq INTO first_tx, first_seq
                FROM mainstay_events e WHERE e.stream_id = p_stream AND e.version = v_v0;
            SELECT e.tx::text::bigint, e.seq INTO last_tx, last_seq
                FROM mainstay_events e WHERE e.stream_id = p_stream AND e.version = next_version;
            RETURN;
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'MS002', MESSAGE = 'event ids already stored',
            DETAIL = (SELECT u.id FROM unnest(p_ids) WITH ORDINALITY AS u(id, k)
                      JOIN mainstay_events e ON e.stream_id = p_stream AND e.event_id = u.id
                      ORDER BY u.k LIMIT 1);
    END IF;
    IF NOT mainstay_expected_ok(p_kind, p_expected, v_actual) THEN
        RAISE EXCEPTION USING ERRCODE = 'MS001', MESSAGE = 'wrong expected version',
            DETAIL = coalesce(v_actual::text, '');
    END IF;
    -- After a soft delete, versions continue after the old ones.
    v_first := CASE WHEN v_version < 0 THEN 0 ELSE v_version + 1 END;
    next_version := v_first + v_n - 1;
    WITH ins AS (
        INSERT INTO mainstay_events (stream_id, version, event_id, event_type, data, metadata, created_at_ms)
        SELECT p_stream, v_first + u.k - 1, u.i, u.t, u.d, u.m, p_now
        FROM unnest(p_ids, p_types, p_data, p_meta) WITH ORDINALITY AS u(i, t, d, m, k)
        ORDER BY u.k
        RETURNING seq),
    up AS (
        UPDATE mainstay_streams SET version = next_version, state = 0 WHERE stream_id = p_stream)
    SELECT min(ins.seq), max(ins.seq) INTO first_seq, last_seq FROM ins;
    first_tx := pg_current_xact_id()::text::bigint;
    last_tx := first_tx;
END
$$;
CREATE TABLE IF NOT EXISTS mainstay_subscriptions (
    name          text PRIMARY KEY,
    commit_pos    bigint NOT NULL,
    prepare_pos   bigint NOT NULL,
    updated_at_ms bigint NOT NULL
);";

/// The channel appenders `NOTIFY` (payload: the transaction id) and subscribers `LISTEN` on.
pub const CHANNEL: &str = "mainstay_events";

/// How often a caught-up subscription re-reads without a wake-up (a lost notification, a
/// writer that does not notify).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Least time between two notifications from one store instance. Subscribers in the
/// appending process wake at once; other processes' subscribers up to this much later
/// under a steady stream of appends. Each notification is a small transaction, so a
/// shorter interval costs append throughput (at 2 ms: about a tenth, with 16 writers on
/// two cores).
pub const DEFAULT_NOTIFY_INTERVAL: Duration = Duration::from_millis(10);

/// What subscribers of one store instance watch.
#[derive(Clone, Copy, Debug, Default)]
struct Wake {
    /// The largest transaction id known to have committed events.
    max_tx: u64,
    /// Bumped when notifications may have been missed (the listener reconnected).
    resets: u64,
}

const COLUMNS: &str = "stream_id, version, tx, seq, event_id, event_type, data, \
    metadata, created_at_ms";

/// An event store in PostgreSQL tables (`mainstay_events`, `mainstay_streams`,
/// `mainstay_subscriptions`).
#[derive(Clone)]
pub struct PostgresEventStore {
    pool: Pool,
    shared: Arc<Shared>,
    poll: Duration,
    scavenge_batch: usize,
}

struct Shared {
    url: String,
    /// Known commits (local appends and notifications): what subscribers wait on.
    wake: Arc<watch::Sender<Wake>>,
    /// The largest transaction id this instance committed, for the notifier task.
    committed: Arc<watch::Sender<u64>>,
    /// The notifier's least interval (µs), see [`DEFAULT_NOTIFY_INTERVAL`].
    notify_interval_us: Arc<AtomicU64>,
    listening: std::sync::Once,
    /// Dropped with the last store handle: stops the listener task.
    _stop: watch::Sender<()>,
    stop: watch::Receiver<()>,
}

/// Sends `NOTIFY mainstay_events, '<tx>'` for the newest local commit, one at a time:
/// a burst of appends costs one notification, and appends never wait for it.
async fn notifier(pool: Pool, mut committed: watch::Receiver<u64>, interval_us: Arc<AtomicU64>) {
    while committed.changed().await.is_ok() {
        let tx = *committed.borrow_and_update();
        // A NOTIFY takes a transaction id, so its commit would wait for a WAL flush like
        // an append's, competing with the appends for the disk. It is only a wake-up
        // (subscribers also poll), so it commits without waiting for the flush.
        let sql = format!(
            "SELECT set_config('synchronous_commit', 'off', true), pg_notify('{CHANNEL}', $1)"
        );
        let mut backoff = Duration::from_millis(50);
        loop {
            match mainstay_core::pg::execute(&pool, &sql, &[&tx.to_string()]).await {
                Ok(_) => {
                    // At most one notification per interval: under load the commits of
                    // the interval share one (other processes' subscribers wake a little
                    // later; this process's wake at once).
                    let us = interval_us.load(Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_micros(us)).await;
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "event store NOTIFY failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    if committed.has_changed().unwrap_or(true) {
                        break;
                    }
                }
            }
        }
    }
}

/// Keeps a `LISTEN` connection open, feeding notified transaction ids to `wake`;
/// reconnects (and signals a reset) when it drops.
async fn listener(url: String, wake: Arc<watch::Sender<Wake>>, mut stop: watch::Receiver<()>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let session = async {
            let (client, mut conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(pg_err)?;
            let sql = format!("LISTEN {CHANNEL}");
            let listen = client.batch_execute(&sql);
            tokio::pin!(listen);
            // The connection must be polled for LISTEN to complete.
            loop {
                tokio::select! {
                    r = &mut listen => { r.map_err(pg_err)?; break; }
                    m = std::future::poll_fn(|cx| conn.poll_message(cx)) => match m {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(pg_err(e)),
                        None => return Err(pg_err("connection closed")),
                    }
                }
            }
            // Anything committed while no one listened must be read.
            wake.send_modify(|w| w.resets += 1);
            loop {
                match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        if let Ok(tx) = n.payload().parse::<u64>() {
                            wake.send_if_modified(|w| {
                                let newer = tx > w.max_tx;
                                w.max_tx = w.max_tx.max(tx);
                                newer
                            });
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err::<(), StoreError>(pg_err(e)),
                    None => return Err(pg_err("connection closed")),
                }
            }
        };
        tokio::select! {
            r = session => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "event store LISTEN connection lost; reconnecting");
                }
            }
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// A subscriber's wake-ups: a notified commit once `$all` can serve it, a reset, or the
/// poll interval.
struct PgWakeups {
    rx: watch::Receiver<Wake>,
    pool: Pool,
    acked_tx: u64,
    resets: u64,
    poll: Duration,
}

#[async_trait]
impl Wakeups for PgWakeups {
    async fn wait(&mut self) -> Result<(), StoreError> {
        let mut backoff = Duration::from_millis(2);
        loop {
            let w = *self.rx.borrow_and_update();
            if w.resets != self.resets {
                self.resets = w.resets;
                return Ok(());
            }
            if w.max_tx > self.acked_tx {
                // Committed; `$all` serves it once every older transaction has ended.
                let horizon: i64 = mainstay_core::pg::query_one(
                    &self.pool,
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
                    &[],
                )
                .await
                .map_err(pg_err)?
                .get(0);
                if horizon as u64 > w.max_tx {
                    self.acked_tx = w.max_tx;
                    return Ok(());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(100));
                continue;
            }
            match tokio::time::timeout(self.poll, self.rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    tokio::time::sleep(self.poll).await;
                    return Ok(());
                }
                Err(_) => return Ok(()),
            }
        }
    }
}

impl std::fmt::Debug for PostgresEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresEventStore").finish_non_exhaustive()
    }
}

fn pg_err(e: impl mainstay_core::pg::Describe) -> StoreError {
    StoreError::Backend {
        backend: "postgres",
        message: e.describe(),
    }
}

/// Events from rows, into a vector sized once.
fn event_rows(rows: &[Row]) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut events = Vec::with_capacity(rows.len());
    for r in rows {
        events.push(event_row(r)?);
    }
    Ok(events)
}

fn event_row(r: &Row) -> Result<RecordedEvent, StoreError> {
    let json = |i: usize| -> Result<serde_json::Value, StoreError> {
        match r.get::<_, &str>(i) {
            // Most metadata (and some data) is empty: no parse.
            "{}" => Ok(serde_json::Value::Object(Default::default())),
            text => serde_json::from_str(text).map_err(|e| pg_err(e.to_string())),
        }
    };
    Ok(RecordedEvent {
        stream: r.get(0),
        version: r.get::<_, i64>(1) as u64,
        position: Position {
            commit: r.get::<_, Xid8>(2).0,
            prepare: r.get::<_, i64>(3) as u64,
        },
        id: r.get(4),
        event_type: r.get(5),
        data: json(6)?,
        metadata: json(7)?,
        created_at_ms: r.get::<_, i64>(8) as u64,
    })
}

impl PostgresEventStore {
    /// Connects (a pool of up to 32) and creates the tables if missing.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = mainstay_core::pg::pool(url, 32).map_err(|m| StoreError::invalid("url", m))?;
        mainstay_core::pg::ensure_schema(&pool, url, SCHEMA)
            .await
            .map_err(pg_err)?;
        let committed = Arc::new(watch::channel(0u64).0);
        let notify_interval_us =
            Arc::new(AtomicU64::new(DEFAULT_NOTIFY_INTERVAL.as_micros() as u64));
        tokio::spawn(notifier(
            pool.clone(),
            committed.subscribe(),
            notify_interval_us.clone(),
        ));
        let (stop_tx, stop) = watch::channel(());
        Ok(PostgresEventStore {
            pool,
            shared: Arc::new(Shared {
                url: url.to_string(),
                wake: Arc::new(watch::channel(Wake::default()).0),
                committed,
                notify_interval_us,
                listening: std::sync::Once::new(),
                _stop: stop_tx,
                stop,
            }),
            poll: DEFAULT_POLL_INTERVAL,
            scavenge_batch: crate::DEFAULT_SCAVENGE_BATCH,
        })
    }

    /// Most events one scavenge transaction removes (default
    /// [`crate::DEFAULT_SCAVENGE_BATCH`]; at least 1). Each transaction holds appends to
    /// every stream while it runs (see `scavenge`), so a pass with much to remove lets
    /// them through between batches.
    pub fn with_scavenge_batch(mut self, events: usize) -> Self {
        self.scavenge_batch = events.clamp(1, i64::MAX as usize);
        self
    }

    /// How often caught-up subscriptions re-read without a wake-up (default
    /// [`DEFAULT_POLL_INTERVAL`]): the delay before they see a commit whose notification
    /// was lost or never sent (a writer using plain SQL).
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// The least time between two notifications this store sends (default
    /// [`DEFAULT_NOTIFY_INTERVAL`]): other processes' subscribers see a commit up to this
    /// much later under load; shorter costs append throughput. Applies to every clone.
    pub fn with_notify_interval(self, interval: Duration) -> Self {
        self.shared
            .notify_interval_us
            .store(interval.as_micros() as u64, Ordering::Relaxed);
        self
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pg_err)
    }

    async fn stream_row(&self, stream: &str) -> Result<Option<StreamRow>, StoreError> {
        Ok(
            mainstay_core::pg::read_opt(&self.pool, STREAM_ROW, &[&stream])
                .await
                .map_err(pg_err)?
                .map(|r| StreamRow::from_row(&r)),
        )
    }
}

/// How an append attempt failed: its connection was lost (repeat it), or anything else.
enum Failed {
    Lost(String),
    Refused(StoreError),
}

fn lost_or(e: tokio_postgres::Error, a: Option<&Append>) -> Failed {
    use mainstay_core::pg::Describe;
    if connection_lost(&e) {
        Failed::Lost(e.describe())
    } else {
        Failed::Refused(match a {
            Some(a) => append_err(a, e),
            None => pg_err(e),
        })
    }
}

impl PostgresEventStore {
    /// One attempt of [`EventStore::append_many`] (already validated).
    async fn append_once(&self, appends: &[Append]) -> Result<Vec<AppendResult>, Failed> {
        // Opening a connection was already retried until the connect deadline.
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| Failed::Refused(pg_err(e)))?;
        let st = client
            .prepare_cached(APPEND)
            .await
            .map_err(|e| lost_or(e, None))?;
        let mut results = Vec::with_capacity(appends.len());
        if let [a] = appends {
            let args = AppendArgs::new(a);
            // NoStream and Exact: one plain statement does it all (no function call); it
            // writes nothing when its check fails, and the function then sorts that out.
            let mut fast = None;
            // The statement, and for FAST_EXACT the version it appends after.
            let fast_sql = match a.expected {
                ExpectedVersion::NoStream => Some((FAST_APPEND, None)),
                ExpectedVersion::Exact(v) => Some((FAST_EXACT, Some(v))),
                _ => None,
            };
            if let Some((sql, exact)) = fast_sql {
                let fst = client
                    .prepare_cached(sql)
                    .await
                    .map_err(|e| lost_or(e, None))?;
                match client.query(&fst, &args.params(&a.stream)).await {
                    Ok(rows) => {
                        fast = match exact {
                            Some(v) => fast_exact_result(&rows, v),
                            None => rows.first().and_then(|r| {
                                r.get::<_, Option<i64>>(0)
                                    .is_some()
                                    .then(|| append_result(r))
                            }),
                        }
                    }
                    // A version taken meanwhile, or an id already stored (perhaps this
                    // very batch: a retry): the function tells which.
                    Err(e) if unique_violation(&e) => {}
                    Err(e) => return Err(lost_or(e, Some(a))),
                }
            }
            let result = match fast {
                Some(r) => r,
                None => {
                    // The function call is the whole transaction (one round trip).
                    let mut races = 0;
                    loop {
                        match client.query_one(&st, &args.params(&a.stream)).await {
                            Ok(row) => break append_result(&row),
                            Err(e) if version_race(&e) && races < RACE_RETRIES => races += 1,
                            Err(e) => return Err(lost_or(e, Some(a))),
                        }
                    }
                }
            };
            results.push(result);
        } else {
            let args: Vec<AppendArgs> = appends.iter().map(AppendArgs::new).collect();
            let mut races = 0;
            'attempt: loop {
                results.clear();
                let tx = client.transaction().await.map_err(|e| lost_or(e, None))?;
                for (a, args) in appends.iter().zip(&args) {
                    // An error drops `tx`: everything of this call rolls back.
                    match tx.query_one(&st, &args.params(&a.stream)).await {
                        Ok(row) => results.push(append_result(&row)),
                        Err(e) if version_race(&e) && races < RACE_RETRIES => {
                            races += 1;
                            continue 'attempt;
                        }
                        Err(e) => return Err(lost_or(e, Some(a))),
                    }
                }
                tx.commit().await.map_err(|e| lost_or(e, None))?;
                break;
            }
        }
        Ok(results)
    }
}

/// A transaction for anything that deletes events (delete, scavenge). `Exact` appends do
/// not lock the stream row (see `FAST_EXACT`), so such a transaction first locks the
/// events table against them: it waits for every append in flight and holds off new
/// ones until it commits, and their statements then see it (read committed takes the
/// snapshot after the lock). Otherwise an append whose snapshot still shows a deleted
/// event could pass its check and insert after a delete, or into the hole a scavenge
/// leaves (the unique key no longer sees the deleted version). Appends to every stream
/// wait meanwhile.
async fn excluding_appends(
    client: &mut Object,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.batch_execute("LOCK TABLE mainstay_events IN SHARE ROW EXCLUSIVE MODE")
        .await
        .map_err(pg_err)?;
    Ok(tx)
}

/// Scavenge, per group of up to 256 streams with retention after `$1` (by id): raises each
/// row's version to its newest event, and returns `stream_id, newest version,
/// truncate_before, max_count, max_age_ms, first young version` (the oldest event not
/// older than `max_age_ms` at `$2`, found by walking the stream from its oldest).
const SCAVENGE_BOUNDS: &str = "WITH ids AS (
        SELECT stream_id, truncate_before, max_count, max_age_ms FROM mainstay_streams
        WHERE stream_id > $1 AND (truncate_before IS NOT NULL OR max_count IS NOT NULL
                                  OR max_age_ms IS NOT NULL)
        ORDER BY stream_id LIMIT 256),
    top AS (
        SELECT ids.stream_id,
               (SELECT max(e.version) FROM mainstay_events e
                WHERE e.stream_id = ids.stream_id) AS v
        FROM ids),
    raised AS (
        UPDATE mainstay_streams s SET version = top.v FROM top
        WHERE s.stream_id = top.stream_id AND top.v > s.version)
    SELECT ids.stream_id, top.v, ids.truncate_before, ids.max_count, ids.max_age_ms,
           CASE WHEN ids.max_age_ms IS NOT NULL THEN
               (SELECT y.version FROM mainstay_events y
                WHERE y.stream_id = ids.stream_id AND y.created_at_ms >= $2 - ids.max_age_ms
                ORDER BY y.version LIMIT 1) END
    FROM ids JOIN top ON top.stream_id = ids.stream_id
    ORDER BY ids.stream_id";

/// Scavenge: deletes up to `$3` events below each stream's bound (`$1` ids, `$2` bounds),
/// the oldest of each stream first.
const SCAVENGE_BATCH: &str = "DELETE FROM mainstay_events d
    WHERE (d.stream_id, d.version) IN (
        SELECT t.id, e.version
        FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS t(id, below, ord)
        CROSS JOIN LATERAL (
            SELECT x.version FROM mainstay_events x
            WHERE x.stream_id = t.id AND x.version < t.below
            ORDER BY x.version LIMIT $3) e
        ORDER BY t.ord, e.version LIMIT $3)";

const SOFT_DELETED: i16 = 1;
const TOMBSTONED: i16 = 2;

/// The row's version is a floor (see [`FAST_EXACT`]): the stream's version is the greater
/// of it and the newest event's.
const STREAM_ROW: &str = "SELECT greatest(version,
        (SELECT max(e.version) FROM mainstay_events e WHERE e.stream_id = $1)),
    state, truncate_before, max_count, max_age_ms, custom
    FROM mainstay_streams WHERE stream_id = $1";

/// A stream's row: its last version ever (`None`: no events yet), its state, metadata.
struct StreamRow {
    last: Option<u64>,
    state: i16,
    meta: StreamMetadata,
}

impl StreamRow {
    fn from_row(r: &Row) -> Self {
        StreamRow {
            last: Some(r.get::<_, i64>(0))
                .filter(|v| *v >= 0)
                .map(|v| v as u64),
            state: r.get(1),
            meta: StreamMetadata {
                truncate_before: r.get::<_, Option<i64>>(2).map(|v| v as u64),
                max_count: r.get::<_, Option<i64>>(3).map(|v| v as u64),
                max_age_ms: r.get::<_, Option<i64>>(4).map(|v| v as u64),
                custom: r
                    .get::<_, Option<&str>>(5)
                    .and_then(|c| serde_json::from_str(c).ok())
                    .unwrap_or_default(),
            },
        }
    }

    /// The version expected-version checks see: none once soft-deleted.
    fn actual(&self) -> Option<u64> {
        if self.state == SOFT_DELETED {
            None
        } else {
            self.last
        }
    }
}

const APPEND: &str = "SELECT * FROM mainstay_append($1, $2, $3, $4, $5, $6, $7, $8)";

/// A NoStream append as one statement: bump the stream row if the stream is new (or
/// soft-deleted), insert the events at the versions after it. Same parameters as
/// [`APPEND`]; all NULL when nothing was written.
const FAST_APPEND: &str = "
WITH s AS (
    UPDATE mainstay_streams
       SET version = CASE WHEN version < 0 THEN cardinality($4::text[]) - 1
                          ELSE version + cardinality($4::text[]) END,
           state = 0
     WHERE stream_id = $1 AND state <> 2
       AND mainstay_expected_ok($2::smallint, $3::bigint,
               CASE WHEN state = 1 OR version < 0 THEN NULL ELSE version END)
    RETURNING version),
ins AS (
    INSERT INTO mainstay_events (stream_id, version, event_id, event_type, data, metadata, created_at_ms)
    SELECT $1, s.version - cardinality($4::text[]) + u.k, u.i, u.t, u.d, u.m, $8
    FROM s, unnest($4::text[], $5::text[], $6::text[], $7::text[]) WITH ORDINALITY AS u(i, t, d, m, k)
    ORDER BY u.k
    RETURNING seq)
SELECT (SELECT version FROM s), (SELECT pg_current_xact_id()::text::bigint FROM s), min(seq),
       (SELECT pg_current_xact_id()::text::bigint FROM s), max(seq)
FROM ins";

/// An `Exact(v)` append to a live stream as one plain INSERT that writes only the events
/// (no stream-row write: it cost a fifth of the throughput). It inserts only if event `v`
/// exists and is not flagged `stream_deleted` — one index probe, no read of the stream
/// row (reading it as well cost ~7% of single-event appends) — *and* no event `v + 1`
/// exists, which the `(stream_id, version)` key checks when inserting `v + 1`: a
/// concurrent append to the same version fails there (23505) and the caller falls back
/// to the function, which sorts out conflict versus retry. Why the probe suffices: events
/// are only ever removed as a stream's oldest (scavenge) or all at once (hard delete), so
/// while event `v` exists and `v + 1` does not, the stream is at `v`; a soft delete, the
/// one way a stream with events stops being live, flags its last event (a revived stream
/// continues at `v + 1`, so the flag never needs clearing). Anything else — a stream
/// whose events were all scavenged, a tombstone — finds no event and takes the function.
/// Hence the invariants: a live stream's version is `greatest(row.version, max(event
/// version))`; whatever deletes a stream's newest events (delete, scavenge) first records
/// the version in the row and excludes these appends (`LOCK TABLE`, see
/// `excluding_appends`). Same parameters as [`APPEND`]; returns `(tx, seq)` of each
/// inserted event, no rows when its check failed. Not wrapped in a CTE that aggregates
/// the positions: the executor setup of the CTE and aggregate cost PostgreSQL more than
/// sending the rows (pgbench, 16 clients × batches of 10: ~15% less server CPU without).
const FAST_EXACT: &str = "
INSERT INTO mainstay_events (stream_id, version, event_id, event_type, data, metadata, created_at_ms)
SELECT $1, $3::bigint + u.k, u.i, u.t, u.d, u.m, $8
FROM unnest($4::text[], $5::text[], $6::text[], $7::text[]) WITH ORDINALITY AS u(i, t, d, m, k)
WHERE $2::smallint = 3 AND EXISTS (
    SELECT 1 FROM mainstay_events e
     WHERE e.stream_id = $1 AND e.version = $3::bigint AND NOT e.stream_deleted)
ORDER BY u.k
RETURNING tx, seq";

/// A PostgreSQL `xid8` (64-bit transaction id) read in binary: cheaper than a text cast.
struct Xid8(u64);

impl<'a> tokio_postgres::types::FromSql<'a> for Xid8 {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let bytes: [u8; 8] = raw.try_into()?;
        Ok(Xid8(u64::from_be_bytes(bytes)))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        ty.name() == "xid8"
    }
}

/// [`FAST_EXACT`]'s rows (tx, seq per event) as the result of appending them after
/// version `v`; `None` when there are none (its check failed).
fn fast_exact_result(rows: &[Row], v: u64) -> Option<AppendResult> {
    let tx = rows.first()?.get::<_, Xid8>(0).0;
    let seqs = rows.iter().map(|r| r.get::<_, i64>(1) as u64);
    let (first, last) = seqs.fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)));
    Some(AppendResult {
        next_expected_version: v + rows.len() as u64,
        first_position: Position {
            commit: tx,
            prepare: first,
        },
        last_position: Position {
            commit: tx,
            prepare: last,
        },
    })
}

/// A unique-key violation on `(stream_id, version)`: another append took the version
/// between this one's check and its insert.
fn version_race(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && db.constraint() == Some("mainstay_events_stream_id_version_key")
    })
}

/// Any unique-key violation (a version race, or an id already stored).
fn unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// How often an append that lost a version race (its check passed, a concurrent append
/// then took the version) is re-run; each re-run sees that append committed.
const RACE_RETRIES: usize = 100;

/// Maps the append function's refusals (SQLSTATE MS001–MS003) to store errors.
fn append_err(a: &Append, e: tokio_postgres::Error) -> StoreError {
    let Some(db) = e.as_db_error() else {
        return pg_err(e);
    };
    let detail = db.detail().unwrap_or_default();
    match db.code().code() {
        "MS001" => StoreError::WrongExpectedVersion {
            stream: a.stream.clone(),
            expected: a.expected,
            actual: detail.parse().ok(),
        },
        "MS002" => StoreError::IdempotencyConflict {
            stream: a.stream.clone(),
            event_id: detail.to_string(),
        },
        "MS003" => StoreError::StreamDeleted(a.stream.clone()),
        // An id of the batch is already in the stream, and the batch is no retry.
        "23505" if db.constraint() == Some("mainstay_events_stream_id_event_id_key") => {
            StoreError::IdempotencyConflict {
                stream: a.stream.clone(),
                event_id: a
                    .events
                    .iter()
                    .map(|e| e.id.as_str())
                    .find(|id| detail.contains(&format!(", {id})")))
                    .unwrap_or_default()
                    .to_string(),
            }
        }
        _ => pg_err(e),
    }
}

/// One append as the function's arguments.
struct AppendArgs {
    kind: i16,
    expected: i64,
    ids: Vec<String>,
    types: Vec<String>,
    data: Vec<String>,
    meta: Vec<String>,
    now: i64,
}

impl AppendArgs {
    fn new(a: &Append) -> Self {
        let (kind, expected) = match a.expected {
            ExpectedVersion::Any => (0, 0),
            ExpectedVersion::NoStream => (1, 0),
            ExpectedVersion::StreamExists => (2, 0),
            ExpectedVersion::Exact(v) => (3, v.min(i64::MAX as u64) as i64),
        };
        AppendArgs {
            kind,
            expected,
            ids: a.events.iter().map(|e| e.id.clone()).collect(),
            types: a.events.iter().map(|e| e.event_type.clone()).collect(),
            data: a.events.iter().map(|e| e.data.to_string()).collect(),
            meta: a.events.iter().map(|e| e.metadata.to_string()).collect(),
            now: now_ms() as i64,
        }
    }

    fn params<'a>(
        &'a self,
        stream: &'a String,
    ) -> [&'a (dyn tokio_postgres::types::ToSql + Sync); 8] {
        [
            stream,
            &self.kind,
            &self.expected,
            &self.ids,
            &self.types,
            &self.data,
            &self.meta,
            &self.now,
        ]
    }
}

fn append_result(r: &Row) -> AppendResult {
    AppendResult {
        next_expected_version: r.get::<_, i64>(0) as u64,
        first_position: Position {
            commit: r.get::<_, i64>(1) as u64,
            prepare: r.get::<_, i64>(2) as u64,
        },
        last_position: Position {
            commit: r.get::<_, i64>(3) as u64,
            prepare: r.get::<_, i64>(4) as u64,
        },
    }
}

#[async_trait]
impl EventStore for PostgresEventStore {
    async fn append_many(&self, appends: Vec<Append>) -> Result<Vec<AppendResult>, StoreError> {
        crate::event::validate_appends(&appends)?;
        // A connection that the server ended (a restart, a failover, a cut) fails the call
        // without running it — or after its commit, with the reply lost. Either way the
        // append is safe to repeat on another connection: ids make it idempotent. Each
        // attempt uses up one dead pooled connection.
        let mut attempts = 0;
        let results = loop {
            match self.append_once(&appends).await {
                Ok(results) => break results,
                Err(Failed::Lost(e)) if attempts < LOST_RETRIES => {
                    attempts += 1;
                    tracing::debug!(error = %e, attempts, "append lost its connection; retrying");
                }
                Err(Failed::Lost(e)) => return Err(pg_err(e)),
                Err(Failed::Refused(e)) => return Err(e),
            }
        };
        // Every event of the call has the transaction's id as its commit position.
        if let Some(t) = results.iter().map(|r| r.last_position.commit).max() {
            self.shared.wake.send_if_modified(|w| {
                let newer = t > w.max_tx;
                w.max_tx = w.max_tx.max(t);
                newer
            });
            self.shared.committed.send_if_modified(|c| {
                let newer = t > *c;
                *c = (*c).max(t);
                newer
            });
        }
        Ok(results)
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        check_stream(stream)?;
        let row = match self.stream_row(stream).await? {
            Some(r) if r.state == TOMBSTONED => {
                return Err(StoreError::StreamDeleted(stream.to_string()))
            }
            Some(r) if r.actual().is_some() => r,
            _ => return Err(StoreError::StreamNotFound(stream.to_string())),
        };
        let first = row.meta.first_visible(row.last.unwrap_or(0)) as i64;
        let cutoff = row.meta.max_age_ms.map(|age| now_ms() as i64 - age as i64);
        let sql = match direction {
            Direction::Forward => format!(
                "SELECT {COLUMNS} FROM mainstay_events WHERE stream_id = $1 AND version >= $2
                 AND version >= $4 AND ($5::bigint IS NULL OR created_at_ms >= $5)
                 ORDER BY version LIMIT $3"
            ),
            Direction::Backward => format!(
                "SELECT {COLUMNS} FROM mainstay_events WHERE stream_id = $1 AND version <= $2
                 AND version >= $4 AND ($5::bigint IS NULL OR created_at_ms >= $5)
                 ORDER BY version DESC LIMIT $3"
            ),
        };
        let rows = mainstay_core::pg::read(
            &self.pool,
            &sql,
            &[
                &stream,
                &(from.min(i64::MAX as u64) as i64),
                &(max.min(i64::MAX as usize) as i64),
                &first,
                &cutoff,
            ],
        )
        .await
        .map_err(pg_err)?;
        event_rows(&rows)
    }

    async fn read_all(
        &self,
        after: Position,
        max: usize,
        filter: &ReadAllFilter,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM mainstay_events
             WHERE (tx, seq) > ($1::text::xid8, $2)
               AND tx < pg_snapshot_xmin(pg_current_snapshot())
               AND ($3::text IS NULL OR starts_with(stream_id, $3))
               AND (cardinality($4::text[]) = 0 OR event_type = ANY($4))
             ORDER BY mainstay_events.tx, mainstay_events.seq LIMIT $5"
        );
        let rows = mainstay_core::pg::read(
            &self.pool,
            &sql,
            &[
                &after.commit.to_string(),
                &(after.prepare.min(i64::MAX as u64) as i64),
                &filter.stream_prefix,
                &filter.event_types,
                &(max.min(i64::MAX as usize) as i64),
            ],
        )
        .await
        .map_err(pg_err)?;
        event_rows(&rows)
    }

    async fn stream_version(&self, stream: &str) -> Result<Option<u64>, StoreError> {
        check_stream(stream)?;
        match self.stream_row(stream).await? {
            Some(r) if r.state == TOMBSTONED => Err(StoreError::StreamDeleted(stream.to_string())),
            r => Ok(r.and_then(|r| r.actual())),
        }
    }

    async fn stream_metadata(&self, stream: &str) -> Result<StreamMetadata, StoreError> {
        check_stream(stream)?;
        Ok(self
            .stream_row(stream)
            .await?
            .map(|r| r.meta)
            .unwrap_or_default())
    }

    async fn set_stream_metadata(
        &self,
        stream: &str,
        metadata: StreamMetadata,
    ) -> Result<(), StoreError> {
        check_stream(stream)?;
        metadata.validate()?;
        let custom = (!metadata.custom.is_null()).then(|| metadata.custom.to_string());
        // Idempotent (the same values again), so repeated after a lost connection.
        let updated = mainstay_core::pg::write_idempotent(
            &self.pool,
            "INSERT INTO mainstay_streams
                 (stream_id, version, truncate_before, max_count, max_age_ms, custom)
             VALUES ($1, -1, $2, $3, $4, $5)
             ON CONFLICT (stream_id) DO UPDATE SET truncate_before = EXCLUDED.truncate_before,
                 max_count = EXCLUDED.max_count, max_age_ms = EXCLUDED.max_age_ms,
                 custom = EXCLUDED.custom
             WHERE mainstay_streams.state <> 2
             RETURNING 1",
            &[
                &stream,
                &metadata.truncate_before.map(|v| v as i64),
                &metadata.max_count.map(|v| v as i64),
                &metadata.max_age_ms.map(|v| v as i64),
                &custom,
            ],
        )
        .await
        .map_err(pg_err)?;
        match updated.first() {
            Some(_) => Ok(()),
            None => Err(StoreError::StreamDeleted(stream.to_string())),
        }
    }

    async fn delete_stream(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        mode: DeleteMode,
    ) -> Result<(), StoreError> {
        check_stream(stream)?;
        let mut client = self.client().await?;
        let tx = excluding_appends(&mut client).await?;
        tx.execute(
            "INSERT INTO mainstay_streams (stream_id, version) VALUES ($1, -1) ON CONFLICT DO NOTHING",
            &[&stream],
        )
        .await
        .map_err(pg_err)?;
        let row = StreamRow::from_row(
            &tx.query_one(&format!("{STREAM_ROW} FOR UPDATE"), &[&stream])
                .await
                .map_err(pg_err)?,
        );
        if row.state == TOMBSTONED {
            return Err(StoreError::StreamDeleted(stream.to_string()));
        }
        let actual = row.actual();
        if !expected.matches(actual) {
            return Err(StoreError::WrongExpectedVersion {
                stream: stream.to_string(),
                expected,
                actual,
            });
        }
        match mode {
            DeleteMode::Soft => {
                let Some(v) = actual else {
                    // Dropping `tx` rolls back the placeholder row.
                    return Err(StoreError::StreamNotFound(stream.to_string()));
                };
                tx.execute(
                    "UPDATE mainstay_streams SET state = 1, version = $2::bigint, truncate_before = $2::bigint + 1
                     WHERE stream_id = $1",
                    &[&stream, &(v as i64)],
                )
                .await
                .map_err(pg_err)?;
                // The trigger `mainstay_streams_soft_delete` flags event `v`: what an
                // `Exact(v)` append checks instead of the row (see FAST_EXACT).
            }
            DeleteMode::Hard => {
                tx.execute(
                    "DELETE FROM mainstay_events WHERE stream_id = $1",
                    &[&stream],
                )
                .await
                .map_err(pg_err)?;
                tx.execute(
                    "UPDATE mainstay_streams SET state = 2 WHERE stream_id = $1",
                    &[&stream],
                )
                .await
                .map_err(pg_err)?;
            }
        }
        tx.execute(
            "DELETE FROM mainstay_snapshots WHERE stream_id = $1",
            &[&stream],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)
    }

    async fn scavenge(&self) -> Result<u64, StoreError> {
        // Streams with retention, 256 at a time. For each group, one statement first
        // records each stream's version in its row (`Exact` appends leave the row behind),
        // so deleting its newest events cannot lower it, and reads what retention hides:
        // versions below a bound, never above that version (events appended meanwhile are
        // left for the next pass). Time only moves a bound up, so using it a little later
        // is safe; metadata changed during the pass counts from the next pass (events it
        // hid when the pass read it are removed). Then the events below the bound go in
        // batches of `scavenge_batch`, each in its own transaction that excludes appends,
        // oldest first per stream: only a prefix of a stream is ever removed (a hole would
        // let an `Exact` append pass its check in the middle), and an old event after a
        // young one (a skewed clock) stays. The age cutoff is fixed for the pass.
        let (now, batch) = (now_ms() as i64, self.scavenge_batch as i64);
        let mut deleted = 0u64;
        let mut after = String::new();
        loop {
            let rows =
                mainstay_core::pg::write_idempotent(&self.pool, SCAVENGE_BOUNDS, &[&after, &now])
                    .await
                    .map_err(pg_err)?;
            let Some(last) = rows.last() else { break };
            after = last.get::<_, String>(0);
            let (mut ids, mut bounds) = (Vec::new(), Vec::new());
            for r in &rows {
                let Some(v) = r.get::<_, Option<i64>>(1) else {
                    continue; // no events
                };
                // An event goes if any retention rule hides it: below the highest bound.
                let by_truncation = r.get::<_, Option<i64>>(2);
                let by_count = r.get::<_, Option<i64>>(3).map(|n| v - n + 1);
                let by_age = r
                    .get::<_, Option<i64>>(4)
                    .map(|_| r.get::<_, Option<i64>>(5).unwrap_or(v + 1));
                let Some(below) = [by_truncation, by_count, by_age]
                    .into_iter()
                    .flatten()
                    .max()
                else {
                    continue;
                };
                ids.push(r.get::<_, String>(0));
                bounds.push(below.min(v + 1));
            }
            while !ids.is_empty() {
                let mut client = self.client().await?;
                let tx = excluding_appends(&mut client).await?;
                let n = tx
                    .execute(SCAVENGE_BATCH, &[&ids, &bounds, &batch])
                    .await
                    .map_err(pg_err)?;
                tx.commit().await.map_err(pg_err)?;
                deleted += n;
                if n < batch as u64 {
                    break;
                }
            }
        }
        Ok(deleted)
    }

    async fn save_snapshot(
        &self,
        stream: &str,
        version: u64,
        data: serde_json::Value,
    ) -> Result<(), StoreError> {
        check_stream(stream)?;
        let body = check_snapshot(version, &data)?;
        // Idempotent (an older or equal snapshot never replaces a newer one), so repeated
        // after a lost connection.
        mainstay_core::pg::write_idempotent(
            &self.pool,
            "INSERT INTO mainstay_snapshots (stream_id, version, data, created_at_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version,
                 data = EXCLUDED.data, created_at_ms = EXCLUDED.created_at_ms
             WHERE EXCLUDED.version >= mainstay_snapshots.version",
            &[&stream, &(version as i64), &body, &(now_ms() as i64)],
        )
        .await
        .map_err(pg_err)?;
        Ok(())
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        check_stream(stream)?;
        let row = mainstay_core::pg::read_opt(
            &self.pool,
            "SELECT version, data, created_at_ms FROM mainstay_snapshots WHERE stream_id = $1",
            &[&stream],
        )
        .await
        .map_err(pg_err)?;
        row.map(|r| {
            Ok(Snapshot {
                stream: stream.to_string(),
                version: r.get::<_, i64>(0) as u64,
                data: serde_json::from_str(r.get::<_, &str>(1))
                    .map_err(|e| pg_err(e.to_string()))?,
                created_at_ms: r.get::<_, i64>(2) as u64,
            })
        })
        .transpose()
    }

    async fn wakeups(&self) -> Result<Box<dyn Wakeups>, StoreError> {
        let shared = &self.shared;
        shared.listening.call_once(|| {
            tokio::spawn(listener(
                shared.url.clone(),
                shared.wake.clone(),
                shared.stop.clone(),
            ));
        });
        let rx = shared.wake.subscribe();
        let resets = rx.borrow().resets;
        Ok(Box::new(PgWakeups {
            rx,
            pool: self.pool.clone(),
            acked_tx: 0,
            resets,
            poll: self.poll,
        }))
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>, StoreError> {
        check_name(name)?;
        let row = mainstay_core::pg::read_opt(
            &self.pool,
            "SELECT commit_pos, prepare_pos FROM mainstay_subscriptions WHERE name = $1",
            &[&name],
        )
        .await
        .map_err(pg_err)?;
        Ok(row.map(|r| Position {
            commit: r.get::<_, i64>(0) as u64,
            prepare: r.get::<_, i64>(1) as u64,
        }))
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), StoreError> {
        check_name(name)?;
        // Idempotent (the same position again), so repeated after a lost connection.
        mainstay_core::pg::write_idempotent(
            &self.pool,
            "INSERT INTO mainstay_subscriptions (name, commit_pos, prepare_pos, updated_at_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET commit_pos = EXCLUDED.commit_pos,
                 prepare_pos = EXCLUDED.prepare_pos, updated_at_ms = EXCLUDED.updated_at_ms",
            &[
                &name,
                &(position.commit.min(i64::MAX as u64) as i64),
                &(position.prepare.min(i64::MAX as u64) as i64),
                &(now_ms() as i64),
            ],
        )
        .await
        .map_err(pg_err)?;
        Ok(())
    }
}
