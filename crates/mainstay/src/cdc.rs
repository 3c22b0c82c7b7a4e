//! `mainstay cdc run|status`: change data capture from PostgreSQL (mainstay-cdc).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use std::sync::Arc;

use mainstay_cdc::{
    CdcConfig, Connector, FileSink, NullSink, Observer, PublicationAutocreate, Sink, SnapshotMode,
    StdoutSink, TableName,
};

#[derive(clap::Subcommand, Debug)]
pub(crate) enum CdcCommand {
    /// Snapshot the tables, then stream their changes as Debezium JSON to a sink until
    /// interrupted (SIGINT/SIGTERM stop cleanly, confirming what the sink holds).
    Run(Box<RunArgs>),
    /// Start an incremental snapshot of TABLEs now (a row in the signal table the running
    /// connector reads: `execute-snapshot`); the connector reads them in primary-key chunks
    /// while streaming, without reordering any key's changes.
    Snapshot {
        /// The source database (postgres:// URL).
        #[arg(long, env = "MAINSTAY_CDC_SOURCE")]
        source: String,
        /// The signal table the connector was started with (--signal-table).
        #[arg(long)]
        signal_table: String,
        /// Tables to snapshot (SCHEMA.TABLE).
        #[arg(required = true)]
        tables: Vec<String>,
    },
    /// Send a signal to the running connector: stop-snapshot (of TABLEs, or all),
    /// pause-snapshot or resume-snapshot (or execute-snapshot, as `cdc snapshot`).
    Signal {
        /// The source database (postgres:// URL).
        #[arg(long, env = "MAINSTAY_CDC_SOURCE")]
        source: String,
        /// The signal table the connector was started with (--signal-table).
        #[arg(long)]
        signal_table: String,
        /// execute-snapshot, stop-snapshot, pause-snapshot or resume-snapshot.
        kind: String,
        /// The tables it is about (execute-snapshot, stop-snapshot).
        tables: Vec<String>,
    },
    /// The replication slot: confirmed position, lag and retained WAL.
    Status {
        /// The source database (postgres:// URL).
        #[arg(long, env = "MAINSTAY_CDC_SOURCE")]
        source: String,
        /// The replication slot.
        #[arg(long, default_value = "mainstay")]
        slot: String,
    },
}

/// `[cdc]` in `mainstay.toml`: the same settings as `mainstay cdc run`'s flags (which win).
#[derive(serde::Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct CdcFile {
    source: Option<String>,
    name: Option<String>,
    slot: Option<String>,
    publication: Option<String>,
    publication_autocreate: Option<String>,
    #[serde(default)]
    tables: Vec<String>,
    #[serde(default)]
    exclude_tables: Vec<String>,
    snapshot_mode: Option<String>,
    sink: Option<String>,
    state_file: Option<std::path::PathBuf>,
    heartbeat: Option<String>,
    decimal_handling: Option<String>,
    nats_stream: Option<String>,
    outbox_table: Option<String>,
    redis_key_template: Option<String>,
    postgres_sink_mode: Option<String>,
    postgres_sink_schema: Option<String>,
    ha: Option<bool>,
    ha_ttl: Option<String>,
    signal_table: Option<String>,
    incremental_chunk_size: Option<usize>,
    transaction_metadata: Option<bool>,
    tombstones_on_delete: Option<bool>,
    #[serde(default)]
    webhook_headers: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    /// The source database (postgres:// URL); its user needs REPLICATION. Or `[cdc] source`.
    #[arg(long, env = "MAINSTAY_CDC_SOURCE")]
    source: Option<String>,
    /// The connector's logical name (`source.name` in every event). Default: mainstay.
    #[arg(long)]
    name: Option<String>,
    /// The replication slot (created if missing, never dropped unless --drop-slot-on-stop).
    /// Default: mainstay.
    #[arg(long)]
    slot: Option<String>,
    /// The publication (created if missing, per --publication-autocreate). Default: mainstay.
    #[arg(long)]
    publication: Option<String>,
    /// all_tables, filtered or disabled. Default: filtered with --table, else all_tables.
    #[arg(long)]
    publication_autocreate: Option<PublicationAutocreate>,
    /// Capture only this table (SCHEMA.TABLE; repeat for more).
    #[arg(long = "table")]
    tables: Vec<String>,
    /// Never capture this table (repeatable).
    #[arg(long = "exclude-table")]
    exclude_tables: Vec<String>,
    /// initial, initial_only, no_data, when_needed or always. Default: initial.
    #[arg(long)]
    snapshot_mode: Option<SnapshotMode>,
    /// stdout, null (encode and discard: benchmarks), file:PATH (fsynced, exactly once),
    /// jetstream:nats://HOST:PORT (subjects NAME.SCHEMA.TABLE, exactly once), events (the
    /// event store `[events]` configures; a stream per row, exactly once) or
    /// redis:redis://HOST:PORT (a key per row holding its JSON, exactly once) or
    /// postgres:postgres://HOST/DB (a replica or audit table, exactly once, fenced) or
    /// webhook:https://HOST/PATH (a POST per batch, retried, at least once). Default: stdout.
    #[arg(long)]
    sink: Option<String>,
    /// The JetStream stream for --sink jetstream: (created if missing). Default: `CDC_<NAME>`.
    #[arg(long)]
    nats_stream: Option<String>,
    /// With --sink redis:, each row's key: {schema}, {table} and {key} (primary key values
    /// joined by ':'). Default: `<name>:{schema}.{table}:{key}`.
    #[arg(long)]
    redis_key_template: Option<String>,
    /// With --sink jetstream:, route this outbox table's inserts as Debezium's outbox
    /// router does (subject `outbox.event.<aggregatetype>`, body = payload, Nats-Msg-Id = id).
    #[arg(long)]
    outbox_table: Option<String>,
    /// Where the connector records that its snapshot finished.
    #[arg(long)]
    state_file: Option<std::path::PathBuf>,
    /// Heartbeat interval (e.g. 10s), or `off`. Default: 10s.
    #[arg(long)]
    heartbeat: Option<String>,
    /// precise (Debezium's default), double or string. Default: precise.
    #[arg(long)]
    decimal_handling: Option<mainstay_cdc::types::DecimalHandling>,
    /// Rows per snapshot fetch.
    #[arg(long, default_value_t = 4096)]
    snapshot_fetch_size: usize,
    /// Drop the slot when stopping (tests only: changes made while stopped are lost).
    #[arg(long)]
    drop_slot_on_stop: bool,
    /// With --sink webhook:, a header for every request, as `NAME: VALUE` (repeatable;
    /// e.g. an Authorization header).
    #[arg(long = "webhook-header")]
    webhook_headers: Vec<String>,
    /// With --sink postgres:, replica (a table per source table, a JSON row per source row)
    /// or audit (every event's envelope). Default: replica.
    #[arg(long)]
    postgres_sink_mode: Option<mainstay_cdc::PostgresSinkMode>,
    /// With --sink postgres:, the schema the sink's tables live in. Default: mainstay_cdc.
    #[arg(long)]
    postgres_sink_schema: Option<String>,
    /// The signal table (created if missing): rows inserted there start, stop, pause and
    /// resume incremental snapshots (`mainstay cdc snapshot` / `cdc signal` write them).
    #[arg(long)]
    signal_table: Option<String>,
    /// Debezium's provide.transaction.metadata: BEGIN/END events around each transaction
    /// and a `transaction` block on each change.
    #[arg(long)]
    transaction_metadata: bool,
    /// Debezium's tombstones.on.delete: a tombstone (key, null value) after each delete.
    #[arg(long)]
    tombstones_on_delete: bool,
    /// Rows per incremental snapshot chunk. Default: 1024.
    #[arg(long)]
    incremental_chunk_size: Option<usize>,
    /// High availability: run as one of several instances of this connector; they elect
    /// one active on the lock backend (--backend/--backend-url or `[lock]`), the others stand
    /// by and take over within --ha-ttl when it dies or stalls. The active instance fences
    /// the sink and the state file with its epoch (share the state file between them).
    #[arg(long)]
    ha: bool,
    /// With --ha, the leadership lease: how long a silent active instance keeps it. Default: 10s.
    #[arg(long)]
    ha_ttl: Option<String>,
}

pub(crate) async fn run(
    mut config: crate::config::Config,
    cmd: CdcCommand,
) -> anyhow::Result<ExitCode> {
    let file = std::mem::take(&mut config.cdc);
    match cmd {
        CdcCommand::Run(args) => run_connector(args.merged(file)?, &config).await,
        CdcCommand::Snapshot {
            source,
            signal_table,
            tables,
        } => send_signal(&source, &signal_table, "execute-snapshot", &tables).await,
        CdcCommand::Signal {
            source,
            signal_table,
            kind,
            tables,
        } => send_signal(&source, &signal_table, &kind, &tables).await,
        CdcCommand::Status { source, slot } => {
            let status = mainstay_cdc::slot_status(&source, &slot).await?;
            match status {
                Some(s) => {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                    Ok(ExitCode::SUCCESS)
                }
                None => anyhow::bail!(
                    "no replication slot {slot:?} on {}",
                    mainstay_core::connect::redact(&source)
                ),
            }
        }
    }
}

/// Inserts a signal row for the running connector.
async fn send_signal(
    source: &str,
    signal_table: &str,
    kind: &str,
    tables: &[String],
) -> anyhow::Result<ExitCode> {
    const KINDS: [&str; 4] = [
        "execute-snapshot",
        "stop-snapshot",
        "pause-snapshot",
        "resume-snapshot",
    ];
    anyhow::ensure!(
        KINDS.contains(&kind),
        "unknown signal {kind:?}: expected one of {}",
        KINDS.join(", ")
    );
    anyhow::ensure!(
        kind != "execute-snapshot" || !tables.is_empty(),
        "execute-snapshot needs at least one table (SCHEMA.TABLE)"
    );
    let signal = TableName::parse(signal_table)?;
    let tables = tables
        .iter()
        .map(|t| TableName::parse(t).map(|t| t.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let data = if tables.is_empty() {
        None
    } else {
        Some(serde_json::json!({ "data-collections": tables, "type": "incremental" }).to_string())
    };
    let (client, connection) = tokio_postgres::connect(source, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {}", mainstay_core::connect::redact(source)))?;
    tokio::spawn(connection);
    let id = mainstay_core::id::unguessable();
    client
        .execute(
            &format!(
                "INSERT INTO {} (id, type, data) VALUES ($1, $2, $3)",
                signal.quoted()
            ),
            &[&id, &kind, &data],
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "writing the signal to {signal}: {} (is the connector running with --signal-table {signal}?)",
                e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string())
            )
        })?;
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

/// The settings after flags override `[cdc]`, and both override the defaults.
struct Settings {
    source: String,
    name: String,
    slot: String,
    publication: String,
    publication_autocreate: Option<PublicationAutocreate>,
    tables: Vec<String>,
    exclude_tables: Vec<String>,
    snapshot_mode: SnapshotMode,
    sink: String,
    state_file: Option<std::path::PathBuf>,
    heartbeat: String,
    decimal_handling: mainstay_cdc::types::DecimalHandling,
    snapshot_fetch_size: usize,
    drop_slot_on_stop: bool,
    nats_stream: Option<String>,
    outbox_table: Option<String>,
    redis_key_template: Option<String>,
    postgres_sink_mode: mainstay_cdc::PostgresSinkMode,
    postgres_sink_schema: String,
    ha: bool,
    ha_ttl: Duration,
    signal_table: Option<String>,
    incremental_chunk_size: usize,
    transaction_metadata: bool,
    tombstones_on_delete: bool,
    webhook_headers: Vec<(String, String)>,
}

impl RunArgs {
    fn merged(self, file: CdcFile) -> anyhow::Result<Settings> {
        let snapshot_mode = match self.snapshot_mode {
            Some(m) => m,
            None => match file.snapshot_mode {
                Some(text) => text
                    .parse()
                    .map_err(|e| anyhow::anyhow!("[cdc] snapshot_mode: {e}"))?,
                None => SnapshotMode::Initial,
            },
        };
        let publication_autocreate = match self.publication_autocreate {
            Some(m) => Some(m),
            None => match file.publication_autocreate {
                Some(text) => Some(
                    text.parse()
                        .map_err(|e| anyhow::anyhow!("[cdc] publication_autocreate: {e}"))?,
                ),
                None => None,
            },
        };
        let decimal_handling = match self.decimal_handling {
            Some(m) => m,
            None => match file.decimal_handling {
                Some(text) => text
                    .parse()
                    .map_err(|e| anyhow::anyhow!("[cdc] decimal_handling: {e}"))?,
                None => Default::default(),
            },
        };
        let postgres_sink_mode = match self.postgres_sink_mode {
            Some(m) => m,
            None => match file.postgres_sink_mode {
                Some(text) => text
                    .parse()
                    .map_err(|e| anyhow::anyhow!("[cdc] postgres_sink_mode: {e}"))?,
                None => Default::default(),
            },
        };
        let ha_ttl = match self.ha_ttl.or(file.ha_ttl) {
            Some(text) => {
                let ttl = mainstay_core::duration::parse(&text)
                    .map_err(|e| anyhow::anyhow!("--ha-ttl: {e}"))?;
                anyhow::ensure!(
                    ttl >= Duration::from_secs(1),
                    "--ha-ttl {text:?}: must be at least 1s (the lease is renewed every third of it)"
                );
                ttl
            }
            None => Duration::from_secs(10),
        };
        let webhook_headers = if self.webhook_headers.is_empty() {
            file.webhook_headers
        } else {
            self.webhook_headers
        }
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| anyhow::anyhow!("--webhook-header {h:?}: expected NAME: VALUE"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Settings {
            webhook_headers,
            postgres_sink_mode,
            postgres_sink_schema: self
                .postgres_sink_schema
                .or(file.postgres_sink_schema)
                .unwrap_or_else(|| "mainstay_cdc".into()),
            ha: self.ha || file.ha.unwrap_or(false),
            signal_table: self.signal_table.or(file.signal_table),
            transaction_metadata: self.transaction_metadata
                || file.transaction_metadata.unwrap_or(false),
            tombstones_on_delete: self.tombstones_on_delete
                || file.tombstones_on_delete.unwrap_or(false),
            incremental_chunk_size: self
                .incremental_chunk_size
                .or(file.incremental_chunk_size)
                .unwrap_or(1024),
            ha_ttl,
            source: self.source.or(file.source).ok_or_else(|| {
                anyhow::anyhow!(
                    "no source database: pass --source postgres://…, set MAINSTAY_CDC_SOURCE, or [cdc] source in mainstay.toml"
                )
            })?,
            name: self.name.or(file.name).unwrap_or_else(|| "mainstay".into()),
            slot: self.slot.or(file.slot).unwrap_or_else(|| "mainstay".into()),
            publication: self
                .publication
                .or(file.publication)
                .unwrap_or_else(|| "mainstay".into()),
            publication_autocreate,
            tables: if self.tables.is_empty() { file.tables } else { self.tables },
            exclude_tables: if self.exclude_tables.is_empty() {
                file.exclude_tables
            } else {
                self.exclude_tables
            },
            snapshot_mode,
            sink: self.sink.or(file.sink).unwrap_or_else(|| "stdout".into()),
            state_file: self.state_file.or(file.state_file),
            heartbeat: self.heartbeat.or(file.heartbeat).unwrap_or_else(|| "10s".into()),
            decimal_handling,
            snapshot_fetch_size: self.snapshot_fetch_size,
            drop_slot_on_stop: self.drop_slot_on_stop,
            nats_stream: self.nats_stream.or(file.nats_stream),
            outbox_table: self.outbox_table.or(file.outbox_table),
            redis_key_template: self.redis_key_template.or(file.redis_key_template),
        })
    }
}

/// What a connector needs from the server's configuration.
struct Env {
    events: mainstay_core::config::BackendConfig,
    data_dir: std::path::PathBuf,
    locks: Option<mainstay_lock::LockClient>,
}

impl Env {
    async fn new(args: &Settings, server: &crate::config::Config) -> anyhow::Result<Env> {
        Ok(Env {
            events: server.events.clone(),
            data_dir: server.data_dir.clone(),
            locks: if args.ha {
                Some(server.lock_client().await?)
            } else {
                None
            },
        })
    }
}

/// `[cdc]` run by `mainstay serve`: when the section names a source, its connector starts
/// with the server (under high availability too, with `ha = true`) and stops with it; its
/// observer feeds `GET /v1/cdc`, the tail and the metrics.
pub(crate) async fn for_serve(
    server: &mut crate::config::Config,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Option<(Arc<Observer>, tokio::task::JoinHandle<()>)>> {
    let file = std::mem::take(&mut server.cdc);
    if file.source.is_none() {
        return Ok(None);
    }
    #[derive(clap::Parser)]
    struct Defaults {
        #[command(flatten)]
        run: RunArgs,
    }
    let args = <Defaults as clap::Parser>::try_parse_from(["mainstay"])
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .run
        .merged(file)
        .context("[cdc]")?;
    let config = cdc_config(&args).context("[cdc]")?;
    let env = Env::new(&args, server).await?;
    let observer = Observer::with_source(&args.name, &args.slot, &args.sink, &args.source);
    let task = {
        let observer = observer.clone();
        tokio::spawn(async move {
            let name = args.name.clone();
            if let Err(e) = drive(&args, config, &env, Some(observer.clone()), stop).await {
                tracing::error!(connector = %name, "cdc connector stopped: {e:#}");
                observer.failed(&format!("{e:#}"));
            }
        })
    };
    Ok(Some((observer, task)))
}

fn cdc_config(args: &Settings) -> anyhow::Result<CdcConfig> {
    let tables = args
        .tables
        .iter()
        .map(|t| TableName::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let exclude = args
        .exclude_tables
        .iter()
        .map(|t| TableName::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let heartbeat = match args.heartbeat.as_str() {
        "off" | "0" => None,
        text => Some(
            mainstay_core::duration::parse(text)
                .map_err(|e| anyhow::anyhow!("--heartbeat: {e}"))?,
        ),
    };
    let mut config = CdcConfig::new(&args.name, &args.source)
        .slot(&args.slot)
        .publication(&args.publication)
        .tables(tables)
        .exclude_tables(exclude)
        .snapshot_mode(args.snapshot_mode)
        .snapshot_fetch_size(args.snapshot_fetch_size)
        .heartbeat_interval(heartbeat)
        .decimal_handling(args.decimal_handling)
        .drop_slot_on_stop(args.drop_slot_on_stop);
    if let Some(mode) = args.publication_autocreate {
        config = config.publication_autocreate(mode);
    }
    if let Some(table) = &args.signal_table {
        config = config.signal_table(TableName::parse(table)?);
    }
    anyhow::ensure!(
        args.incremental_chunk_size > 0,
        "--incremental-chunk-size must be at least 1"
    );
    config = config
        .incremental_chunk_size(args.incremental_chunk_size)
        .transaction_metadata(args.transaction_metadata)
        .tombstones_on_delete(args.tombstones_on_delete);
    if let Some(t) = &args.redis_key_template {
        anyhow::ensure!(
            args.sink.starts_with("redis:"),
            "--redis-key-template {t:?} needs --sink redis:redis://…"
        );
    }
    if args.outbox_table.is_some() && !args.sink.starts_with("jetstream:") {
        anyhow::bail!(
            "--outbox-table routes outbox events to a bus: it needs --sink jetstream:nats://…"
        );
    }
    Ok(config)
}

async fn run_connector(args: Settings, server: &crate::config::Config) -> anyhow::Result<ExitCode> {
    let config = cdc_config(&args)?;
    let env = Env::new(&args, server).await?;
    // On a terminal, a progress bar per table while the snapshot reads it.
    let observer = std::io::IsTerminal::is_terminal(&std::io::stderr())
        .then(|| Observer::new(&args.name, &args.slot, &args.sink));
    if let Some(o) = &observer {
        tokio::spawn(progress(
            o.clone(),
            args.source.clone(),
            args.publication.clone(),
            args.tables.clone(),
        ));
    }
    let stop = tokio_util::sync::CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            stop.cancel();
        });
    }
    drive(&args, config, &env, observer, stop).await
}

/// Draws a bar per snapshot table (rows read of the table's estimated rows) until the
/// snapshot ends.
async fn progress(
    observer: Arc<Observer>,
    source: String,
    publication: String,
    tables: Vec<String>,
) {
    use mainstay_cdc::Phase;
    // Wait for the snapshot to begin (a connector with nothing to read never draws).
    loop {
        match observer.status().phase {
            Phase::Snapshot => break,
            Phase::Starting | Phase::Reconnecting | Phase::Standby => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            _ => return,
        }
    }
    let estimates = match estimate_rows(&source, &publication, &tables).await {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!("no snapshot progress: {e}");
            return;
        }
    };
    let multi = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>28} [{bar:32}] {pos}/{len} rows  {per_sec}  {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    let bars: Vec<(String, indicatif::ProgressBar)> = estimates
        .into_iter()
        .map(|(table, rows)| {
            let bar = multi.add(indicatif::ProgressBar::new(rows.max(1)));
            bar.set_style(style.clone());
            bar.set_prefix(table.clone());
            (table, bar)
        })
        .collect();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let status = observer.status();
        for (table, bar) in &bars {
            let read = status.delivered_by_table.get(table).copied().unwrap_or(0);
            if read > bar.length().unwrap_or(0) {
                bar.set_length(read);
            }
            bar.set_position(read);
        }
        if status.phase != Phase::Snapshot {
            for (_, bar) in &bars {
                bar.finish();
            }
            return;
        }
    }
}

/// The snapshot's tables with the planner's row estimates.
async fn estimate_rows(
    source: &str,
    publication: &str,
    tables: &[String],
) -> anyhow::Result<Vec<(String, u64)>> {
    let (client, connection) = tokio_postgres::connect(source, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let names: Vec<String> = if tables.is_empty() {
        client
            .query(
                "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1",
                &[&publication],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect()
    } else {
        tables
            .iter()
            .map(|t| TableName::parse(t).map(|t| t.to_string()))
            .collect::<Result<_, _>>()?
    };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let rows: Option<f32> = client
            .query_opt(
                "SELECT c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname || '.' || c.relname = $1",
                &[&name],
            )
            .await?
            .map(|r| r.get(0));
        out.push((name, rows.unwrap_or(0.0).max(0.0) as u64));
    }
    Ok(out)
}

/// Runs the connector (or, with --ha, one instance of it) until `stop`.
async fn drive(
    args: &Settings,
    config: CdcConfig,
    env: &Env,
    observer: Option<Arc<Observer>>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<ExitCode> {
    if args.ha {
        return run_ha(args, config, env, observer, stop).await;
    }
    let sink = open_sink(args, env).await?;
    let mut connector = Connector::new(config, sink);
    if let Some(path) = &args.state_file {
        connector = connector.state_file(path);
    }
    if let Some(o) = observer {
        connector = connector.observer(o);
    }
    let started = std::time::Instant::now();
    let summary = connector
        .run(async move { stop.cancelled().await })
        .await
        .context("cdc")?;
    report(&summary, started);
    Ok(ExitCode::SUCCESS)
}

fn report(summary: &mainstay_cdc::RunSummary, started: std::time::Instant) {
    eprintln!(
        "mainstay cdc: {} events delivered ({} snapshot rows, {} already held) in {:.1?}; confirmed {}",
        summary.delivered,
        summary.snapshot_rows,
        summary.skipped,
        started.elapsed(),
        summary.confirmed_lsn.as_deref().unwrap_or("nothing")
    );
}

/// One of several instances of a connector: campaigns for `cdc.<name>` on the lock
/// backend, runs the connector while it leads (fenced with its epoch), and stands by again
/// when it loses the lease or finds itself fenced.
async fn run_ha(
    args: &Settings,
    config: CdcConfig,
    env: &Env,
    observer: Option<Arc<Observer>>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<ExitCode> {
    let Some(locks) = env.locks.clone() else {
        anyhow::bail!("high availability needs the lock backend");
    };
    let election = mainstay_lock::Election::new(locks);
    let name = format!("cdc.{}", args.name);
    let candidate = format!(
        "{}@{}",
        std::process::id(),
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into())
    );
    loop {
        eprintln!("mainstay cdc: standing by for {name} as {candidate}");
        if let Some(o) = &observer {
            o.standby();
        }
        let leadership = tokio::select! {
            won = election.campaign(&name, &candidate, args.ha_ttl, Duration::from_secs(3600)) => won,
            _ = stop.cancelled() => return Ok(ExitCode::SUCCESS),
        };
        let leadership = match leadership {
            Ok(l) => l,
            Err(mainstay_lock::LockError::Busy { .. }) => continue,
            Err(e) => {
                eprintln!("mainstay cdc: campaigning for {name}: {e}; retrying in 1s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.cancelled() => return Ok(ExitCode::SUCCESS),
                }
            }
        };
        let epoch = leadership.epoch();
        eprintln!("mainstay cdc: elected for {name} (epoch {epoch}); running");
        let sink = open_sink(args, env).await?;
        let mut connector = Connector::new(config.clone(), sink).fencing_token(epoch);
        if let Some(o) = &observer {
            connector = connector.observer(o.clone());
        }
        if let Some(path) = &args.state_file {
            connector = connector.state_file(path);
        }
        let started = std::time::Instant::now();
        let stopping = stop.clone();
        let outcome = tokio::select! {
            outcome = connector.run(async move { stopping.cancelled().await }) => outcome,
            // Leadership lost (or about to be): stop touching the slot and the sink at once;
            // dropping the run closes its connections without a final confirmation.
            _ = leadership.lost() => {
                eprintln!("mainstay cdc: lost leadership of {name} (epoch {epoch}); stopped");
                continue;
            }
        };
        match outcome {
            Ok(summary) => {
                report(&summary, started);
                let _ = leadership.resign().await;
                return Ok(ExitCode::SUCCESS);
            }
            Err(e @ mainstay_cdc::CdcError::Fenced { .. }) => {
                eprintln!("mainstay cdc: deposed (epoch {epoch}): {e}");
                continue;
            }
            Err(e) => {
                let _ = leadership.resign().await;
                return Err(anyhow::Error::new(e).context("cdc"));
            }
        }
    }
}

/// The sink `--sink` names.
async fn open_sink(args: &Settings, env: &Env) -> anyhow::Result<Box<dyn Sink>> {
    Ok(match args.sink.as_str() {
        "stdout" => Box::new(StdoutSink::new()),
        "null" => Box::new(NullSink::default()),
        // The event store `[events]` / --events-url names (SQLite by default).
        "events" => {
            let store = mainstay_eventstore::connect(&env.events, &env.data_dir).await?;
            Box::new(mainstay_cdc::EventStoreSink::new(store, &args.name).await?)
        }
        other => {
            if let Some(path) = other.strip_prefix("file:").filter(|p| !p.is_empty()) {
                Box::new(FileSink::open(path)?)
            } else if let Some(url) = other.strip_prefix("redis:").filter(|u| !u.is_empty()) {
                let template = args
                    .redis_key_template
                    .clone()
                    .unwrap_or_else(|| format!("{}:{{schema}}.{{table}}:{{key}}", args.name));
                let checkpoint = format!("{}:cdc-checkpoint", args.name);
                Box::new(mainstay_cdc::RedisSink::connect(url, &template, &checkpoint).await?)
            } else if let Some(url) = other.strip_prefix("jetstream:").filter(|u| !u.is_empty()) {
                let stream = args.nats_stream.clone().unwrap_or_else(|| {
                    format!(
                        "CDC_{}",
                        args.name.to_uppercase().replace(['.', ' ', '*', '>'], "_")
                    )
                });
                Box::new(
                    mainstay_cdc::JetStreamSink::connect(url, &stream, &args.name, &args.name)
                        .await?,
                )
            } else if let Some(url) = other
                .strip_prefix("postgres:")
                .filter(|u| u.contains("://"))
                .or_else(|| {
                    (other.starts_with("postgres://") || other.starts_with("postgresql://"))
                        .then_some(other)
                })
            {
                Box::new(
                    mainstay_cdc::PostgresSink::connect(
                        url,
                        &args.postgres_sink_schema,
                        &args.name,
                        args.postgres_sink_mode,
                    )
                    .await?,
                )
            } else if let Some(url) = other.strip_prefix("webhook:").filter(|u| !u.is_empty()) {
                Box::new(mainstay_cdc::WebhookSink::new(
                    url,
                    args.webhook_headers.clone(),
                )?)
            } else {
                anyhow::bail!(
                    "--sink {other:?}: expected stdout, null, events, file:PATH, redis:redis://HOST:PORT, jetstream:nats://HOST:PORT, postgres:postgres://HOST/DB or webhook:https://HOST/PATH"
                )
            }
        }
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // Give a second signal a way out should the clean stop hang.
    tokio::spawn(async {
        let _ = tokio::time::timeout(Duration::from_secs(3600), tokio::signal::ctrl_c()).await;
        std::process::exit(130);
    });
}
