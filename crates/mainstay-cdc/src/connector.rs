//! The apply loop: snapshot when needed, then stream; batch events to the sink; confirm a
//! transaction to the slot only after the sink took all of it.
//!
//! Guarantees: every committed change of a captured table reaches the sink at least once,
//! in commit order, each transaction's changes in their order; the slot's confirmed
//! position never passes what the sink holds, so a crash at any point loses nothing.
//! Limits: a sink that cannot report its position sees the unconfirmed tail again after a
//! crash (duplicates, same [`Position`]); the connector's own record of a
//! finished snapshot lives in a state file (shared between the instances of a connector
//! under high availability: put it on storage they all reach).
//!
//! High availability: several instances of one connector elect one active (the caller
//! runs the election); the active one passes its epoch to [`Connector::fencing_token`].
//! It then claims the sink with that token before reading anything ([`Sink::fence`]),
//! ends whatever walsender still holds the slot (its deposed predecessor's), and checks the
//! claim again before every reconnect and before moving the slot on a clean stop — so a
//! deposed instance that wakes up can neither write to a fencing sink nor advance the
//! slot once its successor has started.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};

use crate::config::{CdcConfig, SnapshotMode};
use crate::error::CdcError;
use crate::event::{format_lsn, ChangeEvent, Position, SourceInfo};
use crate::observe::{Observer, Phase};
use crate::postgres::incremental::{Incremental, Progress};
use crate::postgres::stream::WATERMARK_PREFIX;
use crate::postgres::{self, db_message, snapshot::SnapshotRun, stream::Decoder, Endpoint};
use crate::sink::Sink;
use crate::types::SESSION_OPTIONS;

/// Hands events to the sink, dropping those it already holds.
pub(crate) struct Delivery {
    sink: Box<dyn Sink>,
    pub(crate) observer: Option<Arc<Observer>>,
    /// Events at or before this position are already in the sink.
    skip_through: Option<Position>,
    pub(crate) delivered: u64,
    pub(crate) skipped: u64,
}

impl Delivery {
    pub(crate) async fn deliver(&mut self, mut events: Vec<ChangeEvent>) -> Result<(), CdcError> {
        if let Some(skip) = self.skip_through {
            let before = events.len();
            events.retain(|e| e.position > skip);
            self.skipped += (before - events.len()) as u64;
        }
        if events.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.sink.write(&events).await {
            if let Some(o) = &self.observer {
                o.sink_error(&e.to_string());
            }
            return Err(e);
        }
        if let Some(o) = &self.observer {
            o.delivered(&events);
        }
        self.delivered += events.len() as u64;
        // What this process delivered is skipped when a reconnect sends it again, for
        // every sink (a sink's own last_position covers restarts of the process).
        if let Some(last) = events.last() {
            self.skip_through = Some(
                self.skip_through
                    .map_or(last.position, |s| s.max(last.position)),
            );
        }
        Ok(())
    }
}

/// What the connector remembers between runs.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct State {
    /// The slot the record is about.
    slot: String,
    /// True once a snapshot finished (or was not wanted) for this slot.
    snapshot_done: bool,
    /// True while a snapshot runs from a slot this connector created for it; such a slot
    /// has confirmed nothing and is recreated if the snapshot did not finish.
    snapshot_slot_created: bool,
    /// The fencing token of the instance that wrote the record (high availability): an
    /// instance with a lower token may not overwrite it.
    #[serde(default)]
    fencing_token: Option<u64>,
    /// The incremental snapshot under way (queue, last key emitted), if any.
    #[serde(default)]
    incremental: Progress,
    /// How far the initial snapshot got (tables left, last key delivered), while it runs.
    #[serde(default)]
    snapshot_progress: Option<Progress>,
}

/// What one run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Rows read by the snapshot (0 when none ran).
    pub snapshot_rows: u64,
    /// Events handed to the sink.
    pub delivered: u64,
    /// Events the sink already held (after a restart).
    pub skipped: u64,
    /// The last position confirmed to the slot.
    pub confirmed_lsn: Option<String>,
    /// Whether the source was reached at least once.
    pub reached_source: bool,
    /// Rows read by incremental snapshots.
    pub incremental_rows: u64,
}

/// A PostgreSQL connector feeding one sink.
pub struct Connector {
    config: CdcConfig,
    sink: Box<dyn Sink>,
    state: StateFile,
    fencing_token: Option<u64>,
    observer: Option<Arc<Observer>>,
}

/// The file holding [`State`], replaced atomically.
struct StateFile(PathBuf);

/// The fencing token of this run, if it runs under high availability.
#[derive(Clone, Copy)]
struct Fence(Option<u64>);

impl Fence {
    /// Claims (first time) or re-checks (later) the sink and the state file for this token.
    async fn check(&self, delivery: &mut Delivery, state_file: &StateFile) -> Result<(), CdcError> {
        let Some(token) = self.0 else { return Ok(()) };
        delivery.sink.fence(token).await?;
        let state = state_file.load()?;
        match state.fencing_token {
            Some(current) if current > token => Err(CdcError::Fenced {
                sink: format!("state file {}", state_file.0.display()),
                presented: token,
                current,
            }),
            _ => Ok(()),
        }
    }
}

impl Connector {
    /// A connector; its state file defaults to `./<name>.cdc-state.json`.
    pub fn new(config: CdcConfig, sink: Box<dyn Sink>) -> Connector {
        let state = StateFile(PathBuf::from(format!("{}.cdc-state.json", config.name)));
        Connector {
            config,
            sink,
            state,
            fencing_token: None,
            observer: None,
        }
    }

    /// Reports the connector's phase, deliveries, lag and errors to `observer` (for a
    /// status endpoint, metrics and a live tail).
    pub fn observer(mut self, observer: Arc<Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Runs as the elected active instance of a highly available connector, `token` being
    /// its leadership epoch (strictly higher for each new leader): the sink and the state
    /// file are claimed with it and refuse the writes of any instance with a lower token;
    /// a walsender still holding the slot (a deposed predecessor's) is terminated.
    pub fn fencing_token(mut self, token: u64) -> Self {
        self.fencing_token = Some(token);
        self
    }

    /// Where the connector records whether its snapshot finished. Default:
    /// `./<name>.cdc-state.json`.
    pub fn state_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.state = StateFile(path.into());
        self
    }
}

impl StateFile {
    fn load(&self) -> Result<State, CdcError> {
        match std::fs::read(&self.0) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                CdcError::Config(format!("state file {} is corrupt: {e}", self.0.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(CdcError::Config(format!(
                "reading state file {}: {e}",
                self.0.display()
            ))),
        }
    }

    /// Replaces the record. Under high availability (`state.fencing_token` set) this holds
    /// an exclusive lock on `<file>.lock` and refuses to overwrite a record written with a
    /// higher token (a deposed instance may not undo its successor's record).
    fn save(&self, state: &State) -> Result<(), CdcError> {
        let err = |e: std::io::Error| {
            CdcError::Config(format!("writing state file {}: {e}", self.0.display()))
        };
        let _lock = match state.fencing_token {
            None => None,
            Some(token) => {
                let lock = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(format!("{}.lock", self.0.display()))
                    .map_err(err)?;
                lock.lock().map_err(err)?;
                if let Some(current) = self.load()?.fencing_token.filter(|&c| c > token) {
                    return Err(CdcError::Fenced {
                        sink: format!("state file {}", self.0.display()),
                        presented: token,
                        current,
                    });
                }
                Some(lock)
            }
        };
        let tmp = PathBuf::from(format!("{}.tmp", self.0.display()));
        let bytes = serde_json::to_vec(state).map_err(|e| CdcError::Config(e.to_string()))?;
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(&bytes).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, &self.0).map_err(err)
    }
}

impl Connector {
    /// Runs until `shutdown` completes (then confirms what the sink holds and returns), the
    /// snapshot ends in `initial_only` mode, or an error.
    ///
    /// A lost connection to the source (PostgreSQL restarted, the walsender terminated, the
    /// network cut) is not the end: the connector reconnects with backoff (100 ms doubling
    /// to 5 s, for as long as it takes) and resumes from the slot, skipping what it already
    /// delivered. Configuration, setup and sink errors end the run.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<RunSummary, CdcError> {
        let Connector {
            config,
            mut sink,
            state: state_file,
            fencing_token,
            observer,
        } = self;
        config.validate()?;
        let fence = Fence(fencing_token);
        if let Some(token) = fencing_token {
            // Claim the sink before reading how far it got: from here on a predecessor's
            // late write is refused, so the position read below stays true.
            if !sink.fence(token).await? {
                tracing::warn!(
                    sink = sink.name(),
                    "this sink cannot refuse a deposed instance's writes; after a failover it may \
                     receive duplicates (use the postgres or redis sink for fenced delivery)"
                );
            }
        }
        let skip_through = sink.last_position().await?;
        let mut delivery = Delivery {
            sink,
            observer: observer.clone(),
            skip_through,
            delivered: 0,
            skipped: 0,
        };
        let mut summary = RunSummary::default();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut pause = Duration::from_millis(100);
        let outcome = loop {
            match attempt(
                &config,
                fence,
                &state_file,
                &mut delivery,
                &mut summary,
                shutdown.as_mut(),
            )
            .await
            {
                // Reconnects are for a connector that got going: one that never reached the
                // source (a wrong URL) reports that at once instead of retrying forever.
                Err(CdcError::Source { address, message }) if summary.reached_source => {
                    tracing::warn!(%address, %message, "lost the source; reconnecting in {pause:?}");
                    if let Some(o) = &observer {
                        o.reconnecting(&format!("{address}: {message}"));
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.as_mut() => break Ok(()),
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                other => break other,
            }
        };
        summary.delivered = delivery.delivered;
        summary.skipped = delivery.skipped;
        if config.drop_slot_on_stop {
            if let Ok(endpoint) = Endpoint::parse(&config.source_url) {
                if let Ok(client) = endpoint.connect().await {
                    postgres::drop_slot(&client, &config.slot).await?;
                }
            }
        }
        if let Some(o) = &observer {
            o.ended(outcome.as_ref().err().map(|e| e.to_string()).as_deref());
        }
        outcome.map(|()| summary)
    }
}

/// One connection's worth of work: setup, snapshot if needed, stream until shutdown.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    config: &CdcConfig,
    fence: Fence,
    state_file: &StateFile,
    delivery: &mut Delivery,
    summary: &mut RunSummary,
    shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<(), CdcError> {
    let observe = |phase: Phase| {
        if let Some(o) = &delivery.observer {
            o.phase(phase);
        }
    };
    observe(Phase::Starting);
    let endpoint = Endpoint::parse(&config.source_url)?;
    let client = endpoint.connect().await?;
    summary.reached_source = true;
    // A deposed instance stops here on a reconnect: its successor claimed the sink.
    fence.check(delivery, state_file).await?;
    if fence.0.is_some() {
        postgres::take_over_slot(&client, &config.slot).await?;
    }
    let mut state = state_file.load()?;
    if state.slot != config.slot {
        state = State {
            slot: config.slot.clone(),
            ..State::default()
        };
    }
    if fence.0.is_some() {
        // The check above found no higher token on the record.
        state.fencing_token = fence.0;
    }
    let setup = postgres::prepare(&client, &endpoint, config).await?;
    let mut slot_exists = setup.slot.is_some();
    if !slot_exists && state.snapshot_done && !state.snapshot_slot_created {
        match config.snapshot_mode {
            SnapshotMode::WhenNeeded | SnapshotMode::Always => state.snapshot_done = false,
            SnapshotMode::NoData => {}
            SnapshotMode::Initial | SnapshotMode::InitialOnly => {
                return Err(CdcError::Setup(format!(
                    "replication slot {:?} is gone although this connector streamed from it (state file {}): \
                     changes made since it was dropped are lost to it. Rerun with snapshot mode when_needed \
                     or always to read the tables again, or delete the state file to start over",
                    config.slot,
                    state_file.0.display()
                )));
            }
        }
    }
    if slot_exists && state.snapshot_slot_created && !state.snapshot_done {
        // Our own slot from a snapshot that never finished: it has confirmed nothing, so
        // it still streams every change since the snapshot's consistent point. What the
        // snapshot did not deliver is read as an incremental snapshot from where it
        // stopped (chunks by primary key, consistent with the stream) — or, when a table
        // left has no primary key to resume by, a new slot and a new snapshot lose nothing.
        match resumable(&client, state.snapshot_progress.as_ref()).await? {
            Some(left) => {
                tracing::info!(
                    slot = %config.slot,
                    tables = left.queue.len(),
                    "the initial snapshot did not finish; resuming it incrementally from {} after its last key delivered",
                    left.queue.first().map(String::as_str).unwrap_or("")
                );
                let mut queue = left.queue.clone();
                queue.extend(
                    state
                        .incremental
                        .queue
                        .iter()
                        .filter(|t| !left.queue.contains(t))
                        .cloned(),
                );
                state.incremental = Progress {
                    queue,
                    last_key: left.last_key,
                    paused: false,
                };
                state.snapshot_done = true;
                state.snapshot_slot_created = false;
                state.snapshot_progress = None;
                state_file.save(&state)?;
            }
            None => {
                tracing::info!(slot = %config.slot, "the last snapshot did not finish; recreating its slot and starting it again");
                postgres::drop_slot(&client, &config.slot).await?;
                slot_exists = false;
            }
        }
    }
    let need_snapshot = match config.snapshot_mode {
        SnapshotMode::NoData => false,
        SnapshotMode::Always => true,
        _ => !state.snapshot_done,
    };

    let replication = ReplicationConfig::new(
        endpoint.host.clone(),
        endpoint.user.clone(),
        endpoint.password.clone(),
        endpoint.database.clone(),
        config.slot.clone(),
        config.publication.clone(),
    )
    .with_port(endpoint.port)
    .with_tls(endpoint.tls.replication(&endpoint.host))
    .with_options(SESSION_OPTIONS)
    .with_status_interval(config.status_interval)
    .with_wakeup_interval(Duration::from_secs(5))
    .with_buffer_size(8192)
    .with_application_name(format!("mainstay-cdc {}", config.name));
    let mut repl = ReplicationClient::connect_gated(replication)
        .await
        .map_err(|e| endpoint.error(format!("replication connection: {e}")))?;

    let source = Arc::new(SourceInfo {
        name: config.name.clone(),
        db: endpoint.database.clone(),
    });

    let mut exported = None;
    let mut consistent_point = 0;
    if !slot_exists {
        let export = if need_snapshot { "export" } else { "nothing" };
        let rows = repl
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT '{export}')",
                config.slot
            ))
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                if setup.created_publication {
                    let _ = client
                        .batch_execute(&format!(
                            "DROP PUBLICATION IF EXISTS {}",
                            postgres::quote_ident(&config.publication)
                        ))
                        .await;
                }
                return Err(CdcError::Setup(format!(
                    "creating replication slot {:?}: {e}",
                    config.slot
                )));
            }
        };
        let row = rows
            .into_iter()
            .next()
            .ok_or_else(|| CdcError::Setup("CREATE_REPLICATION_SLOT returned no row".into()))?;
        let text = |i: usize| {
            row.get(i)
                .and_then(|v| v.as_ref())
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        consistent_point = text(1)
            .as_deref()
            .and_then(crate::event::parse_lsn)
            .unwrap_or(0);
        exported = text(2);
        state.snapshot_slot_created = need_snapshot;
        state.snapshot_done = !need_snapshot;
        state_file.save(&state)?;
        tracing::info!(slot = %config.slot, consistent_point = %format_lsn(consistent_point), "created replication slot");
    } else if need_snapshot {
        consistent_point = postgres::snapshot::slot_position(&client, &config.slot).await?;
        tracing::warn!(
            slot = %config.slot,
            "snapshot of tables with an existing slot: rows are read as of now, and changes the slot \
             still holds from before are streamed after them (at-least-once, final state converges)"
        );
    }

    if need_snapshot {
        if let Some(o) = &delivery.observer {
            o.phase(Phase::Snapshot);
        }
        let run = SnapshotRun {
            endpoint: &endpoint,
            tables: &setup.tables,
            exported: exported.as_deref(),
            consistent_point,
            fetch_size: config.snapshot_fetch_size,
            decimals: config.decimal_handling,
            source: source.clone(),
            config,
        };
        let resumable_slot = state.snapshot_slot_created;
        let stats = {
            let state = &mut state;
            let mut on_progress = |progress: Progress| {
                // Only a slot created for this snapshot can be resumed from (it holds
                // every change since the rows were read).
                if !resumable_slot {
                    return Ok(());
                }
                state.snapshot_progress = Some(progress);
                state_file.save(state)
            };
            run.run(delivery, &mut on_progress).await?
        };
        summary.snapshot_rows = stats.rows;
        state.snapshot_done = true;
        state.snapshot_slot_created = false;
        state.snapshot_progress = None;
        state_file.save(&state)?;
        tracing::info!(
            rows = stats.rows,
            tables = stats.tables,
            "snapshot finished"
        );
    } else if !state.snapshot_done {
        state.snapshot_done = true;
        state_file.save(&state)?;
    }
    if config.snapshot_mode == SnapshotMode::InitialOnly {
        drop(repl);
        return Ok(());
    }

    repl.start()
        .await
        .map_err(|e| endpoint.error(format!("START_REPLICATION: {e}")))?;
    if let Err(e) = repl.wait_started().await {
        let text = e.to_string();
        if text.contains("is active for PID") {
            let pid = text
                .rsplit(' ')
                .next()
                .and_then(|p| {
                    p.trim_end_matches(|c: char| !c.is_ascii_digit())
                        .parse()
                        .ok()
                })
                .unwrap_or(0);
            return Err(CdcError::SlotBusy {
                slot: config.slot.clone(),
                pid,
            });
        }
        return Err(endpoint.error(format!("START_REPLICATION: {text}")));
    }

    let decoder_client = endpoint.connect().await?;
    if let Some(o) = &delivery.observer {
        o.phase(Phase::Streaming);
        o.incremental_queue(&state.incremental.queue);
    }
    let mut decoder = Decoder::new(decoder_client, config, source.clone());
    let mut incremental = Incremental::new(state.incremental.clone());
    let mut saver = Saver {
        file: state_file,
        state: &mut state,
    };
    let outcome = stream(
        config,
        &mut repl,
        &mut decoder,
        delivery,
        &mut incremental,
        &mut saver,
        &source,
        shutdown,
    )
    .await;
    summary.incremental_rows += incremental.rows;
    let confirmed = match &outcome {
        Ok(lsn) => *lsn,
        Err(_) => None,
    };
    repl.stop();
    let _ = repl.shutdown().await;
    // A clean stop returns with the slot released. The worker sends no final status
    // on stop: persist the last confirmed position then, so nothing is sent twice — unless
    // this instance was deposed meanwhile (its successor owns the slot now).
    let confirmed = match fence.check(delivery, state_file).await {
        Ok(()) => confirmed,
        Err(e) => {
            tracing::warn!("not moving the slot on stop: {e}");
            None
        }
    };
    advance_slot(&client, &config.slot, confirmed).await;
    if let Some(lsn) = confirmed {
        summary.confirmed_lsn = Some(format_lsn(lsn));
    }
    outcome.map(|_| ())
}

/// What is left of an interrupted initial snapshot, if it can be resumed: some progress
/// was recorded and every table left has a primary key to read it on by.
async fn resumable(
    client: &tokio_postgres::Client,
    progress: Option<&Progress>,
) -> Result<Option<Progress>, CdcError> {
    let Some(progress) = progress else {
        return Ok(None);
    };
    for table in &progress.queue {
        let name = crate::config::TableName::parse(table)?;
        let keyed: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary)",
                &[&name.schema, &name.table],
            )
            .await
            .map_err(|e| {
                CdcError::Setup(format!(
                    "looking up the primary key of {name}: {}",
                    db_message(&e)
                ))
            })?
            .get(0);
        if !keyed {
            return Ok(None);
        }
    }
    Ok(Some(progress.clone()))
}

/// Saves the connector's record while streaming (incremental snapshot progress).
struct Saver<'a> {
    file: &'a StateFile,
    state: &'a mut State,
}

impl Saver<'_> {
    fn save_progress(&mut self, progress: &Progress) -> Result<(), CdcError> {
        self.state.incremental = progress.clone();
        self.file.save(self.state)
    }
}

/// Streams until shutdown; returns the last LSN confirmed.
#[allow(clippy::too_many_arguments)]
async fn stream(
    config: &CdcConfig,
    repl: &mut ReplicationClient,
    decoder: &mut Decoder,
    delivery: &mut Delivery,
    incremental: &mut Incremental,
    saver: &mut Saver<'_>,
    source: &Arc<SourceInfo>,
    shutdown: impl Future<Output = ()>,
) -> Result<Option<u64>, CdcError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut batch: Vec<ChangeEvent> = Vec::with_capacity(config.max_batch);
    // End LSN of the last commit seen whose events are all in `batch` or delivered.
    let mut last_commit_end: Option<u64> = None;
    let mut confirmed: Option<u64> = None;
    let mut flush_at: Option<tokio::time::Instant> = None;
    let heartbeat_every = config
        .heartbeat_interval
        .unwrap_or(Duration::from_secs(3600));
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + heartbeat_every,
        heartbeat_every,
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    macro_rules! flush {
        () => {{
            if !batch.is_empty() {
                delivery.deliver(std::mem::take(&mut batch)).await?;
                batch.reserve(config.max_batch);
            }
            // Snapshot progress is recorded once the rows it covers are in the sink.
            if incremental.dirty {
                saver.save_progress(incremental.progress())?;
                incremental.dirty = false;
                if let Some(o) = &delivery.observer {
                    o.incremental_queue(&incremental.progress().queue);
                }
            }
            if let Some(end) = last_commit_end {
                if confirmed.is_none_or(|c| end > c) {
                    repl.update_applied_lsn(Lsn::from_u64(end));
                    confirmed = Some(end);
                    if let Some(o) = &delivery.observer {
                        o.confirmed(end);
                    }
                }
            }
        }};
    }

    loop {
        if incremental.wants_window() {
            incremental
                .open_window(decoder.client(), config, source)
                .await?;
        }
        let event = tokio::select! {
            biased;
            _ = &mut shutdown => {
                flush!();
                return Ok(confirmed);
            }
            _ = async { tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)).await }, if flush_at.is_some() => {
                flush!();
                flush_at = None;
                continue;
            }
            _ = heartbeat.tick(), if config.heartbeat_interval.is_some() => {
                if let Err(e) = decoder
                    .client()
                    .batch_execute(&format!(
                        "SELECT pg_logical_emit_message(false, '{}', '')",
                        crate::postgres::stream::HEARTBEAT_PREFIX
                    ))
                    .await
                {
                    tracing::warn!("heartbeat failed: {}", db_message(&e));
                }
                continue;
            }
            event = repl.recv() => event,
        };
        let event = match event {
            Ok(Some(e)) => e,
            Ok(None) => {
                flush!();
                return Ok(confirmed);
            }
            Err(e) => {
                return Err(CdcError::Source {
                    address: "replication stream".into(),
                    message: e.to_string(),
                })
            }
        };
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => decoder.begin(final_lsn.as_u64(), xid, commit_time_micros),
            ReplicationEvent::XLogData {
                wal_start, data, ..
            } => {
                let mut events = decoder.data(wal_start.as_u64(), data).await?;
                if let Some(signal) = &config.signal_table {
                    events.retain(|e| {
                        let is_signal = *e.table == *signal.table && *e.schema == *signal.schema;
                        if is_signal && e.op == crate::event::Op::Create {
                            incremental.signal(config, e);
                        }
                        !is_signal
                    });
                }
                incremental.observe(&events);
                batch.extend(events);
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                batch.extend(decoder.commit());
                last_commit_end = Some(end_lsn.as_u64());
            }
            ReplicationEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => {
                let in_tx = decoder.in_transaction();
                if prefix == WATERMARK_PREFIX {
                    if let Some(rows) = incremental.close(lsn.as_u64(), &content) {
                        batch.extend(rows);
                    }
                } else {
                    batch.extend(decoder.message(
                        transactional,
                        lsn.as_u64(),
                        prefix,
                        content.to_vec(),
                    ));
                }
                if !transactional && !in_tx {
                    // A non-transactional message stands alone: once it (and everything
                    // before it) is delivered, its position may be confirmed. For a
                    // heartbeat on an idle or filtered database this is what moves the slot.
                    last_commit_end = Some(lsn.as_u64());
                }
            }
            ReplicationEvent::KeepAlive { .. } | ReplicationEvent::StoppedAt { .. } => {}
        }
        if batch.len() >= config.max_batch {
            flush!();
            flush_at = None;
        } else if flush_at.is_none()
            && (!batch.is_empty()
                || last_commit_end.is_some_and(|end| confirmed.is_none_or(|c| end > c)))
        {
            flush_at = Some(tokio::time::Instant::now() + config.linger);
        }
    }
}

/// Waits (bounded) for the walsender to let the slot go — a clean stop returns with the
/// slot free for the next run — then moves its confirmed position to `lsn` (best effort:
/// a position the server already has is left as it is).
async fn advance_slot(client: &tokio_postgres::Client, slot: &str, lsn: Option<u64>) {
    postgres::wait_released(client, slot).await;
    let Some(lsn) = lsn else { return };
    if let Err(e) = client
        .execute(
            "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
            &[&slot, &format_lsn(lsn)],
        )
        .await
    {
        tracing::debug!(
            "advancing slot {slot} to {}: {}",
            format_lsn(lsn),
            db_message(&e)
        );
    }
}
