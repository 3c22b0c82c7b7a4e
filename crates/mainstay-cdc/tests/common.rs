//! Shared helpers: a fresh database per test on the shared PostgreSQL, a sink that keeps
//! what it got (and can refuse on cue), and the model that replays events into table state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mainstay_cdc::{CdcConfig, CdcError, ChangeEvent, Connector, Op, Position, RunSummary, Sink};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A fresh database on the shared server.
pub async fn database() -> String {
    mainstay_testkit::shared_postgres()
        .database()
        .await
        .expect("fresh database")
}

/// A regular client for the test's own SQL.
pub async fn client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// What a [`MemorySink`] got, shared with the test.
#[derive(Clone, Default)]
pub struct Received {
    pub events: Arc<Mutex<Vec<ChangeEvent>>>,
}

impl Received {
    pub fn snapshot(&self) -> Vec<ChangeEvent> {
        self.events.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    /// Polls until `check` holds on the events received, or fails after `timeout`.
    pub async fn wait(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&[ChangeEvent]) -> bool,
    ) {
        let events = self.events.clone();
        mainstay_testkit::eventually(timeout, what, || {
            let ok = check(&events.lock().unwrap());
            async move { ok }
        })
        .await
        .unwrap_or_else(|e| {
            let got = self.len();
            panic!("{e} ({got} events received)")
        });
    }
}

/// Keeps every event; remembers its last position (so restarts skip what it has, as an
/// exactly-once sink does) unless `forgetful`; fails once after `fail_after` events.
pub struct MemorySink {
    pub received: Received,
    pub forgetful: bool,
    pub fail_after: Option<usize>,
}

impl MemorySink {
    pub fn new(received: &Received) -> Self {
        MemorySink {
            received: received.clone(),
            forgetful: false,
            fail_after: None,
        }
    }
}

#[async_trait]
impl Sink for MemorySink {
    fn name(&self) -> &str {
        "memory"
    }

    async fn last_position(&mut self) -> Result<Option<Position>, CdcError> {
        if self.forgetful {
            return Ok(None);
        }
        Ok(self
            .received
            .events
            .lock()
            .unwrap()
            .last()
            .map(|e| e.position))
    }

    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), CdcError> {
        let mut held = self.received.events.lock().unwrap();
        if let Some(limit) = self.fail_after {
            let room = limit.saturating_sub(held.len());
            if room < events.len() {
                // Take part of the batch, then fail: a crash in the middle of a write.
                held.extend_from_slice(&events[..room]);
                self.fail_after = None;
                return Err(CdcError::Sink {
                    sink: "memory".into(),
                    message: "injected failure".into(),
                });
            }
        }
        held.extend_from_slice(events);
        Ok(())
    }
}

/// A running connector and the switch that stops it.
pub struct Running {
    pub stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<RunSummary, CdcError>>,
}

impl Running {
    /// Stops gracefully and returns the run's result.
    pub async fn stop(mut self) -> Result<RunSummary, CdcError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("connector stops within 30 s")
            .expect("connector task")
    }

    /// Ends the run abruptly (the future is dropped: nothing more is confirmed).
    pub async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Logs to the test's output when `MAINSTAY_TEST_LOG` is set (an env-filter directive).
pub fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("MAINSTAY_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

pub fn start(config: CdcConfig, sink: Box<dyn Sink>, state: &std::path::Path) -> Running {
    start_connector(Connector::new(config, sink).state_file(state))
}

/// Runs `connector` in a task until stopped.
pub fn start_connector(connector: Connector) -> Running {
    init_logging();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(connector.run(async move {
        let _ = rx.await;
    }));
    Running {
        stop: Some(tx),
        task,
    }
}

/// Table state rebuilt from events: table -> key (JSON text) -> row.
pub type State = BTreeMap<String, BTreeMap<String, Value>>;

pub fn apply(events: &[ChangeEvent]) -> State {
    let mut state = State::new();
    for e in events {
        let table = format!("{}.{}", e.schema, e.table);
        let rows = state.entry(table).or_default();
        let key = |row: &mainstay_cdc::Row| {
            e.key
                .as_ref()
                .map(|k| k.to_value().to_string())
                .unwrap_or_else(|| row.to_value().to_string())
        };
        match e.op {
            Op::Read | Op::Create | Op::Update => {
                let after = e.after.as_ref().expect("after");
                rows.insert(key(after), after.to_value());
            }
            Op::Delete => {
                let before = e.before.as_ref().expect("before");
                rows.remove(&key(before));
            }
            Op::Truncate => rows.clear(),
            _ => {}
        }
    }
    state
}

/// The rows of `table` read from the source, keyed like [`apply`] keys them (by `id`).
pub async fn source_rows(client: &tokio_postgres::Client, table: &str) -> BTreeMap<String, Value> {
    let rows = client
        .query(&format!("SELECT id, to_jsonb(t)::text FROM {table} t"), &[])
        .await
        .expect("read source");
    rows.iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let row: String = r.get(1);
            (
                serde_json::json!({ "id": id }).to_string(),
                serde_json::from_str(&row).unwrap(),
            )
        })
        .collect()
}

/// Fails unless every event comes after the one before it: snapshot rows first, then
/// transactions in commit order, each in its own order.
pub fn assert_in_source_order(events: &[ChangeEvent]) {
    for pair in events.windows(2) {
        assert!(
            pair[0].position < pair[1].position,
            "out of order or duplicated: {:?} then {:?}",
            pair[0].position,
            pair[1].position
        );
    }
}

/// Waits until a connector streams from `slot`: its walsender has started replication
/// (`pg_stat_replication` says catchup or streaming). The slot alone being active is not
/// enough — it is active while it is being created, before its consistent point, and a
/// change committed then belongs to the snapshot, not the stream.
pub async fn wait_streaming(url: &str, slot: &str) {
    let db = client(url).await;
    let db = &db;
    mainstay_testkit::eventually(Duration::from_secs(30), "the connector to stream", || async move {
        db.query_opt(
            "SELECT r.state FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_name = $1 AND r.state IN ('catchup', 'streaming')",
            &[&slot],
        )
        .await
        .map(|row| row.is_some())
        .unwrap_or(false)
    })
    .await
    .unwrap();
}

/// Passes the first `room` events to `inner`, then fails once (a crash mid-batch).
pub struct FailAfter {
    pub inner: Box<dyn Sink>,
    pub room: Option<usize>,
}

#[async_trait]
impl Sink for FailAfter {
    fn name(&self) -> &str {
        "failing"
    }
    async fn last_position(&mut self) -> Result<Option<Position>, CdcError> {
        self.inner.last_position().await
    }
    async fn fence(&mut self, token: u64) -> Result<bool, CdcError> {
        self.inner.fence(token).await
    }
    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), CdcError> {
        match self.room {
            Some(room) if room < events.len() => {
                self.inner.write(&events[..room]).await?;
                self.room = None;
                Err(CdcError::Sink {
                    sink: "failing".into(),
                    message: "injected failure".into(),
                })
            }
            Some(room) => {
                self.room = Some(room - events.len());
                self.inner.write(events).await
            }
            None => self.inner.write(events).await,
        }
    }
}
