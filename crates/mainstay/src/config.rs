//! `mainstay.toml`, overridden by `MAINSTAY_*` env vars, overridden by flags.

use anyhow::Context;
use mainstay_core::config::{BackendConfig, BackendKind};
use serde::Deserialize;
use std::path::PathBuf;

/// Flags every command takes (each also read from its env var).
#[derive(clap::Args, Debug)]
pub(crate) struct GlobalArgs {
    /// Config file. Default: ./mainstay.toml when it exists.
    #[arg(long, global = true, env = "MAINSTAY_CONFIG")]
    config: Option<PathBuf>,
    /// Where embedded state lives. Default: ./mainstay-data.
    #[arg(long, global = true, env = "MAINSTAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Lock backend: sqlite, postgres, redis, redlock, etcd, zookeeper. Default: sqlite.
    #[arg(long, global = true, env = "MAINSTAY_LOCK_BACKEND")]
    backend: Option<BackendKind>,
    /// Backend address: SQLite file, PostgreSQL/Redis URL, comma-separated Redlock URLs,
    /// etcd endpoints, or ZooKeeper host:port list.
    #[arg(long, global = true, env = "MAINSTAY_LOCK_URL")]
    backend_url: Option<String>,
    /// Where sagas and transactions keep their log: sqlite or postgres. Default: sqlite.
    #[arg(long, global = true, env = "MAINSTAY_TXN_BACKEND")]
    txn_backend: Option<BackendKind>,
    /// The log's address: a SQLite file (default DATA_DIR/txn.db) or a PostgreSQL URL.
    #[arg(long, global = true, env = "MAINSTAY_TXN_URL")]
    txn_url: Option<String>,
    /// Where the event store lives: sqlite or postgres. Default: sqlite.
    #[arg(long, global = true, env = "MAINSTAY_EVENTS_BACKEND")]
    events_backend: Option<BackendKind>,
    /// The event store's address: a SQLite file (default DATA_DIR/events.db) or a
    /// PostgreSQL URL.
    #[arg(long, global = true, env = "MAINSTAY_EVENTS_URL")]
    events_url: Option<String>,
    /// This node's name in the saga log; a restarted node with the same name resumes its
    /// sagas at once. Default: the host name.
    #[arg(long, global = true, env = "MAINSTAY_NODE_ID")]
    node_id: Option<String>,
    /// PostgreSQL databases two-phase commits may run SQL on, as NAME=URL (repeat the
    /// flag, or comma-separate in the env var).
    #[arg(
        long = "postgres-resource",
        global = true,
        env = "MAINSTAY_POSTGRES_RESOURCES",
        value_delimiter = ','
    )]
    postgres_resources: Vec<String>,
    /// Origins (`http://host:port`) saga steps and 2PC HTTP participants may call,
    /// comma-separated. Default: any on a loopback listener, none on another address.
    #[arg(
        long = "allowed-participants",
        global = true,
        env = "MAINSTAY_ALLOWED_PARTICIPANTS",
        value_delimiter = ','
    )]
    allowed_participants: Option<Vec<String>>,
    /// How long connecting (and reconnecting) to PostgreSQL, Redis, etcd or ZooKeeper is
    /// retried before it fails, e.g. `10s`. Default: 10s.
    #[arg(long, global = true, env = "MAINSTAY_CONNECT_TIMEOUT")]
    connect_timeout: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    server: ServerFile,
    #[serde(default)]
    lock: Option<BackendConfig>,
    #[serde(default)]
    txn: Option<TxnFile>,
    #[serde(default)]
    events: Option<BackendConfig>,
    #[serde(default)]
    postgres_resources: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    cdc: crate::cdc::CdcFile,
}

/// `[txn]`: where the saga and 2PC logs live, and which participants the server may call.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct TxnFile {
    #[serde(default)]
    backend: BackendKind,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    allowed_participants: Option<Vec<String>>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    listen: Option<String>,
    token: Option<String>,
    data_dir: Option<PathBuf>,
    node_id: Option<String>,
    connect_timeout: Option<String>,
    max_wait: Option<String>,
}

/// The merged configuration.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) data_dir: PathBuf,
    pub(crate) backend: BackendConfig,
    pub(crate) txn: BackendConfig,
    pub(crate) events: BackendConfig,
    pub(crate) node_id: Option<String>,
    pub(crate) postgres_resources: std::collections::BTreeMap<String, String>,
    /// `None`: the default for the listen address.
    pub(crate) allowed_participants: Option<Vec<String>>,
    /// `[server] max_wait`.
    pub(crate) max_wait: Option<String>,
    pub(crate) listen: Option<String>,
    pub(crate) token: Option<String>,
    /// `[cdc]`: defaults for `mainstay cdc run` (flags win).
    pub(crate) cdc: crate::cdc::CdcFile,
}

impl Config {
    pub(crate) fn load(args: &GlobalArgs) -> anyhow::Result<Self> {
        let path = args.config.clone().or_else(|| {
            let default = PathBuf::from("mainstay.toml");
            default.exists().then_some(default)
        });
        let file: File = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config file {}", p.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("invalid config file {}", p.display()))?
            }
            None => File::default(),
        };
        let mut backend = file.lock.unwrap_or_default();
        if let Some(kind) = args.backend {
            if kind != backend.backend {
                backend.url = None;
            }
            backend.backend = kind;
        }
        if let Some(url) = &args.backend_url {
            backend.url = Some(url.clone());
        }
        let txn_file = file.txn.unwrap_or_default();
        let allowed_participants = args
            .allowed_participants
            .clone()
            .or(txn_file.allowed_participants);
        let mut txn = BackendConfig {
            backend: txn_file.backend,
            url: txn_file.url,
        };
        if let Some(kind) = args.txn_backend {
            if kind != txn.backend {
                txn.url = None;
            }
            txn.backend = kind;
        }
        if let Some(url) = &args.txn_url {
            txn.url = Some(url.clone());
        }
        let mut events = file.events.unwrap_or_default();
        if let Some(kind) = args.events_backend {
            if kind != events.backend {
                events.url = None;
            }
            events.backend = kind;
        }
        if let Some(url) = &args.events_url {
            events.url = Some(url.clone());
        }
        if let Some(text) = args
            .connect_timeout
            .as_ref()
            .or(file.server.connect_timeout.as_ref())
        {
            let deadline = mainstay_core::duration::parse(text)
                .map_err(|e| anyhow::anyhow!("invalid connect timeout: {e}"))?;
            anyhow::ensure!(
                !deadline.is_zero(),
                "invalid connect timeout {text:?}: must be above zero"
            );
            mainstay_core::connect::set_deadline(deadline);
        }
        let mut postgres_resources = file.postgres_resources;
        for spec in &args.postgres_resources {
            let (name, url) = spec.split_once('=').with_context(|| {
                format!("invalid --postgres-resource {spec:?}: expected NAME=URL")
            })?;
            postgres_resources.insert(name.trim().to_string(), url.trim().to_string());
        }
        Ok(Config {
            cdc: file.cdc,
            txn,
            allowed_participants,
            events,
            postgres_resources,
            node_id: args.node_id.clone().or(file.server.node_id),
            data_dir: args
                .data_dir
                .clone()
                .or(file.server.data_dir)
                .unwrap_or_else(|| PathBuf::from("mainstay-data")),
            backend,
            max_wait: file.server.max_wait,
            listen: file.server.listen,
            token: file.server.token,
        })
    }

    pub(crate) async fn saga_log(
        &self,
    ) -> anyhow::Result<std::sync::Arc<dyn mainstay_txn::saga::SagaLog>> {
        mainstay_txn::connect_log(&self.txn, &self.data_dir)
            .await
            .with_context(|| format!("cannot open the {} saga log", self.txn.backend.as_str()))
    }

    pub(crate) async fn event_store(
        &self,
    ) -> anyhow::Result<std::sync::Arc<dyn mainstay_eventstore::EventStore>> {
        mainstay_eventstore::connect(&self.events, &self.data_dir)
            .await
            .with_context(|| {
                format!(
                    "cannot open the {} event store",
                    self.events.backend.as_str()
                )
            })
    }

    pub(crate) async fn coordinator(
        &self,
        postgres: &[mainstay_txn::twopc::pg::PgResource],
    ) -> anyhow::Result<mainstay_txn::twopc::Coordinator> {
        let log = mainstay_txn::connect_decision_log(&self.txn, &self.data_dir)
            .await
            .with_context(|| {
                format!(
                    "cannot open the {} transaction log",
                    self.txn.backend.as_str()
                )
            })?;
        let mut b = mainstay_txn::twopc::Coordinator::builder(log);
        if let Some(id) = &self.node_id {
            b = b.node_id(id);
        }
        for r in postgres {
            b = b.postgres(r.clone());
        }
        Ok(b.build())
    }

    pub(crate) fn pg_resources(&self) -> anyhow::Result<Vec<mainstay_txn::twopc::pg::PgResource>> {
        self.postgres_resources
            .iter()
            .map(|(name, url)| {
                mainstay_txn::twopc::pg::PgResource::connect(name, url)
                    .with_context(|| format!("invalid PostgreSQL resource {name:?}"))
            })
            .collect()
    }

    pub(crate) async fn lock_client(&self) -> anyhow::Result<mainstay_lock::LockClient> {
        mainstay_lock::connect(&self.backend, &self.data_dir)
            .await
            .with_context(|| {
                format!(
                    "cannot open the {} lock backend",
                    self.backend.backend.as_str()
                )
            })
    }
}
