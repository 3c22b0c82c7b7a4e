//! The PostgreSQL source: setup checks, publication and slot management, the catalog
//! (column types, primary keys), the initial snapshot and the pgoutput stream.
//!
//! Nothing is created until every check passed (wal_level, REPLICATION, tables, slot not
//! busy); a publication created by a run that then fails to create its slot is dropped
//! again. A slot is never dropped unless `drop_slot_on_stop` says so, or it was created by a
//! snapshot that never finished and nothing was ever confirmed from it.

pub(crate) mod incremental;
pub(crate) mod snapshot;
pub(crate) mod stream;
pub(crate) mod tls;

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::Client;

use crate::config::{CdcConfig, PublicationAutocreate, TableName};
use crate::error::CdcError;
use crate::types::{ValueKind, SESSION_OPTIONS};

/// Connection facts parsed from the source URL.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) password: String,
    pub(crate) database: String,
    pub(crate) url: String,
    pub(crate) tls: tls::Tls,
}

impl Endpoint {
    pub(crate) fn parse(url: &str) -> Result<Endpoint, CdcError> {
        let (url, tls) = tls::Tls::split(url)?;
        let url = url.as_str();
        let config: tokio_postgres::Config = url.parse().map_err(|e| {
            CdcError::Config(format!(
                "source URL {}: {e}",
                mainstay_core::connect::redact(url)
            ))
        })?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config
            .get_user()
            .map(str::to_string)
            .unwrap_or_else(|| "postgres".to_string());
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let database = config
            .get_dbname()
            .map(str::to_string)
            .unwrap_or_else(|| user.clone());
        Ok(Endpoint {
            host,
            port,
            user,
            password,
            database,
            url: url.to_string(),
            tls,
        })
    }

    pub(crate) fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub(crate) fn error(&self, message: impl std::fmt::Display) -> CdcError {
        CdcError::Source {
            address: self.address(),
            message: message.to_string(),
        }
    }

    /// A regular connection with the session options the value converter expects,
    /// retried until the process-wide connect deadline.
    pub(crate) async fn connect(&self) -> Result<Client, CdcError> {
        let mut config: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| CdcError::Config(format!("source URL: {e}")))?;
        config.options(SESSION_OPTIONS);
        config.application_name("mainstay-cdc");
        config.ssl_mode(self.tls.postgres_mode());
        let address = self.address();
        let tls = self.tls.connector()?;
        let (client, connection) = mainstay_core::connect::with_retry(
            "postgresql",
            &address,
            // A certificate the client refuses is not going to change: fail at once.
            |e: &tokio_postgres::Error| e.as_db_error().is_none() && !tls::refused(e),
            |_| config.connect(tls.clone()),
        )
        .await
        .map_err(|e| match e {
            // The server's refusal (wrong password, unknown database) names the fix itself.
            mainstay_core::connect::ConnectError::Refused { error, .. } => {
                self.error(tls::describe(&error))
            }
            deadline => CdcError::Source {
                address: address.clone(),
                message: deadline.to_string(),
            },
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("cdc source connection ended: {e}");
            }
        });
        Ok(client)
    }
}

/// The server's message for a database error, else the error itself.
pub(crate) fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Quotes an identifier for SQL.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for SQL.
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// One column of a captured table.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub(crate) name: Arc<str>,
    pub(crate) kind: ValueKind,
    pub(crate) policy: crate::config::ColumnPolicy,
}

/// A captured table's shape, as the catalog or the latest pgoutput Relation message says.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub(crate) schema: Arc<str>,
    pub(crate) name: Arc<str>,
    pub(crate) columns: Vec<Column>,
    /// Indexes into `columns` of the primary key, in key order.
    pub(crate) key: Vec<usize>,
}

/// Type and key lookups, cached.
pub(crate) struct Catalog {
    kinds: HashMap<(u32, i32), ValueKind>,
}

impl Catalog {
    pub(crate) fn new() -> Catalog {
        Catalog {
            kinds: HashMap::new(),
        }
    }

    /// The value kind of a type: built-ins at once; enums, domains and arrays of them from
    /// `pg_type`.
    pub(crate) async fn kind(
        &mut self,
        client: &Client,
        oid: u32,
        typmod: i32,
    ) -> Result<ValueKind, tokio_postgres::Error> {
        if let Some(kind) = ValueKind::builtin(oid, typmod) {
            return Ok(kind);
        }
        if let Some(kind) = self.kinds.get(&(oid, typmod)) {
            return Ok(kind.clone());
        }
        let mut current = (oid, typmod);
        let mut depth = 0;
        let kind = loop {
            if let Some(kind) = ValueKind::builtin(current.0, current.1) {
                break kind;
            }
            let row = client
                .query_opt(
                    "SELECT typtype::text, typelem::oid::int8, typbasetype::oid::int8, typtypmod, typcategory::text \
                     FROM pg_type WHERE oid = $1::int8::oid",
                    &[&i64::from(current.0)],
                )
                .await?;
            let Some(row) = row else {
                break ValueKind::Text;
            };
            let typtype: String = row.get(0);
            let elem: i64 = row.get(1);
            let base: i64 = row.get(2);
            let base_mod: i32 = row.get(3);
            let category: String = row.get(4);
            depth += 1;
            if depth > 8 {
                break ValueKind::Text;
            }
            if typtype == "d" {
                current = (base as u32, base_mod);
            } else if category == "A" && elem != 0 {
                let element = Box::pin(self.kind(client, elem as u32, -1)).await?;
                break ValueKind::Array(Box::new(element));
            } else {
                break ValueKind::Text;
            }
        };
        self.kinds.insert((oid, typmod), kind.clone());
        Ok(kind)
    }

    /// Primary-key column names of a table, in key order (empty when it has none).
    pub(crate) async fn primary_key(
        client: &Client,
        table_oid: u32,
    ) -> Result<Vec<String>, tokio_postgres::Error> {
        let rows = client
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = $1::int8::oid AND i.indisprimary \
                 ORDER BY array_position(i.indkey::int2[], a.attnum)",
                &[&i64::from(table_oid)],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// A table's current shape from the catalog (columns pgoutput sends: not dropped, not
    /// generated), with its oid.
    pub(crate) async fn table(
        &mut self,
        client: &Client,
        name: &TableName,
    ) -> Result<Option<(u32, Table)>, tokio_postgres::Error> {
        let Some(row) = client
            .query_opt(
                "SELECT c.oid::int8 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&name.schema, &name.table],
            )
            .await?
        else {
            return Ok(None);
        };
        let oid = row.get::<_, i64>(0) as u32;
        let rows = client
            .query(
                "SELECT attname::text, atttypid::int8, atttypmod FROM pg_attribute \
                 WHERE attrelid = $1::int8::oid AND attnum > 0 AND NOT attisdropped AND attgenerated = '' \
                 ORDER BY attnum",
                &[&i64::from(oid)],
            )
            .await?;
        let mut columns = Vec::with_capacity(rows.len());
        for r in rows {
            let name: String = r.get(0);
            let type_oid: i64 = r.get(1);
            let typmod: i32 = r.get(2);
            columns.push(Column {
                name: name.into(),
                kind: self.kind(client, type_oid as u32, typmod).await?,
                policy: crate::config::ColumnPolicy::Keep,
            });
        }
        let pk = Self::primary_key(client, oid).await?;
        let key = key_indexes(&columns, &pk);
        Ok(Some((
            oid,
            Table {
                schema: name.schema.clone().into(),
                name: name.table.clone().into(),
                columns,
                key,
            },
        )))
    }
}

impl Table {
    /// Sets each column's policy from the configuration's column rules.
    pub(crate) fn apply_rules(&mut self, config: &CdcConfig) {
        for column in &mut self.columns {
            column.policy = config.column_policy(&self.schema, &self.name, &column.name);
        }
    }

    /// A full row image as the sink sees it: excluded columns dropped, masked ones masked.
    pub(crate) fn image(&self, row: crate::event::Row) -> crate::event::Row {
        use crate::config::ColumnPolicy;
        if self.columns.iter().all(|c| c.policy == ColumnPolicy::Keep) {
            return row;
        }
        crate::event::Row(
            row.0
                .into_iter()
                .zip(&self.columns)
                .filter_map(|((name, value), column)| match column.policy {
                    ColumnPolicy::Keep => Some((name, value)),
                    ColumnPolicy::Exclude => None,
                    ColumnPolicy::Mask(_) if value.is_null() => Some((name, value)),
                    ColumnPolicy::Mask(n) => Some((name, serde_json::Value::String("*".repeat(n)))),
                })
                .collect(),
        )
    }
}

pub(crate) fn key_indexes(columns: &[Column], pk: &[String]) -> Vec<usize> {
    pk.iter()
        .filter_map(|k| columns.iter().position(|c| &*c.name == k.as_str()))
        .collect()
}

/// What the slot looks like on the server.
#[derive(Debug, Clone)]
pub(crate) struct SlotRow {
    pub(crate) plugin: Option<String>,
    pub(crate) database: Option<String>,
    pub(crate) active_pid: Option<i32>,
}

pub(crate) async fn slot_row(client: &Client, slot: &str) -> Result<Option<SlotRow>, CdcError> {
    let row = client
        .query_opt(
            "SELECT plugin::text, database::text, active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| CdcError::Setup(format!("reading pg_replication_slots: {}", db_message(&e))))?;
    Ok(row.map(|r| SlotRow {
        plugin: r.get(0),
        database: r.get(1),
        active_pid: r.get(2),
    }))
}

/// The tables the connector captures, resolved and checked.
pub(crate) struct Setup {
    /// Tables to snapshot, in order.
    pub(crate) tables: Vec<TableName>,
    /// Whether this run created the publication (dropped again if the slot cannot be made).
    pub(crate) created_publication: bool,
    /// The slot as it was before this run (None: it does not exist yet).
    pub(crate) slot: Option<SlotRow>,
}

/// Checks the server and the configuration, then makes sure the publication exists and
/// covers the included tables. Creates nothing when a check fails.
pub(crate) async fn prepare(
    client: &Client,
    endpoint: &Endpoint,
    config: &CdcConfig,
) -> Result<Setup, CdcError> {
    let setup_err = |what: &str, e: tokio_postgres::Error| {
        CdcError::Setup(format!("{what}: {}", db_message(&e)))
    };
    let wal_level = client
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(|e| setup_err("reading wal_level", e))?
        .get::<_, String>(0);
    if wal_level != "logical" {
        return Err(CdcError::Setup(format!(
            "postgresql at {} has wal_level = {wal_level}; change data capture needs wal_level = logical \
             (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)",
            endpoint.address()
        )));
    }
    let can_replicate: bool = client
        .query_one(
            "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| setup_err("reading the user's attributes", e))?
        .get(0);
    if !can_replicate {
        return Err(CdcError::Setup(format!(
            "user {:?} lacks the REPLICATION attribute; grant it with ALTER ROLE {} REPLICATION",
            endpoint.user,
            quote_ident(&endpoint.user)
        )));
    }
    // A slot still held by a walsender whose client just died (a restart right after a
    // crash) is released within moments; one held by a live consumer stays busy. Wait up
    // to the connect deadline before calling it busy.
    let mut backoff = mainstay_core::connect::Backoff::new(mainstay_core::connect::deadline());
    let slot = loop {
        let slot = slot_row(client, &config.slot).await?;
        match slot.as_ref().and_then(|s| s.active_pid) {
            Some(pid) => {
                if !backoff.pause().await {
                    return Err(CdcError::SlotBusy {
                        slot: config.slot.clone(),
                        pid,
                    });
                }
            }
            None => break slot,
        }
    };
    if let Some(s) = &slot {
        if s.plugin.as_deref() != Some("pgoutput") {
            return Err(CdcError::Setup(format!(
                "replication slot {:?} uses plugin {:?}, not pgoutput; drop it or choose another --slot",
                config.slot,
                s.plugin.as_deref().unwrap_or("(physical)")
            )));
        }
        if s.database.as_deref() != Some(endpoint.database.as_str()) {
            return Err(CdcError::Setup(format!(
                "replication slot {:?} belongs to database {:?}, not {:?}; choose another --slot",
                config.slot,
                s.database.as_deref().unwrap_or(""),
                endpoint.database
            )));
        }
    }
    if let Some(signal) = &config.signal_table {
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, type text NOT NULL, data text)",
                signal.quoted()
            ))
            .await
            .map_err(|e| {
                setup_err(
                    &format!(
                        "creating the signal table {signal} (create it yourself: id text PRIMARY KEY, type text NOT NULL, data text)"
                    ),
                    e,
                )
            })?;
    }
    // The tables a filtered publication covers: the include list and the signal table.
    let published: Vec<TableName> = config
        .tables
        .iter()
        .chain(
            config
                .signal_table
                .iter()
                .filter(|_| !config.tables.is_empty()),
        )
        .cloned()
        .collect();
    // Every included table must exist, and be readable by the snapshot.
    for table in &config.tables {
        let exists: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p'))",
                &[&table.schema, &table.table],
            )
            .await
            .map_err(|e| setup_err("looking up tables", e))?
            .get(0);
        if !exists {
            return Err(CdcError::Config(format!(
                "table {table} does not exist in database {:?}",
                endpoint.database
            )));
        }
        if config.snapshot_mode.may_snapshot() {
            let readable: bool = client
                .query_one(
                    "SELECT has_table_privilege(format('%I.%I', $1::text, $2::text), 'SELECT')",
                    &[&table.schema, &table.table],
                )
                .await
                .map_err(|e| setup_err("checking table privileges", e))?
                .get(0);
            if !readable {
                return Err(CdcError::Setup(format!(
                    "user {:?} cannot SELECT from {table}, which the snapshot reads; GRANT SELECT ON {table} TO {}",
                    endpoint.user,
                    quote_ident(&endpoint.user)
                )));
            }
        }
    }
    let publication = client
        .query_opt(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&config.publication],
        )
        .await
        .map_err(|e| setup_err("reading pg_publication", e))?;
    let mut created_publication = false;
    match publication {
        Some(row) => {
            let all: bool = row.get(0);
            if !all && config.publication_autocreate == PublicationAutocreate::Filtered {
                // Debezium's filtered mode: make the publication cover the include list.
                for table in &published {
                    let covered: bool = client
                        .query_one(
                            "SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)",
                            &[&config.publication, &table.schema, &table.table],
                        )
                        .await
                        .map_err(|e| setup_err("reading pg_publication_tables", e))?
                        .get(0);
                    if !covered {
                        client
                            .batch_execute(&format!(
                                "ALTER PUBLICATION {} ADD TABLE {}",
                                quote_ident(&config.publication),
                                table.quoted()
                            ))
                            .await
                            .map_err(|e| {
                                setup_err(
                                    &format!(
                                        "adding {table} to publication {:?}",
                                        config.publication
                                    ),
                                    e,
                                )
                            })?;
                    }
                }
            }
        }
        None => {
            let sql = match config.publication_autocreate {
                PublicationAutocreate::Disabled => {
                    return Err(CdcError::Setup(format!(
                        "publication {:?} does not exist and publication_autocreate is disabled; \
                         create it (CREATE PUBLICATION {} FOR TABLE …) or set publication_autocreate = filtered",
                        config.publication,
                        quote_ident(&config.publication)
                    )))
                }
                PublicationAutocreate::AllTables => format!(
                    "CREATE PUBLICATION {} FOR ALL TABLES",
                    quote_ident(&config.publication)
                ),
                PublicationAutocreate::Filtered => {
                    if config.tables.is_empty() {
                        return Err(CdcError::Config(
                            "publication_autocreate = filtered needs at least one table (--table SCHEMA.TABLE)".into(),
                        ));
                    }
                    format!(
                        "CREATE PUBLICATION {} FOR TABLE {}",
                        quote_ident(&config.publication),
                        published
                            .iter()
                            .map(TableName::quoted)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            };
            client.batch_execute(&sql).await.map_err(|e| {
                let hint = if e.as_db_error().is_some_and(|d| d.code().code() == "42501") {
                    " (FOR ALL TABLES needs a superuser: create the publication yourself, or list tables)"
                } else {
                    ""
                };
                CdcError::Setup(format!(
                    "creating publication {:?}: {}{hint}",
                    config.publication,
                    db_message(&e)
                ))
            })?;
            created_publication = true;
        }
    }
    // What the snapshot reads: the include list, else every table the publication covers.
    let mut tables = if config.tables.is_empty() {
        client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2",
                &[&config.publication],
            )
            .await
            .map_err(|e| setup_err("reading pg_publication_tables", e))?
            .iter()
            .map(|r| TableName {
                schema: r.get(0),
                table: r.get(1),
            })
            .collect()
    } else {
        config.tables.clone()
    };
    tables.retain(|t| config.captures(t));
    // Debezium warns about these too: without a key, updates and deletes carry no before image.
    for table in &tables {
        let row = client
            .query_opt(
                "SELECT c.relreplident::text, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                &[&table.schema, &table.table],
            )
            .await
            .map_err(|e| setup_err("reading replica identities", e))?;
        if let Some(row) = row {
            let identity: String = row.get(0);
            let has_pk: bool = row.get(1);
            if identity == "d" && !has_pk {
                tracing::warn!(
                    "table {table} has no primary key and REPLICA IDENTITY DEFAULT: PostgreSQL refuses its updates and deletes \
                     while it is published; add a primary key or ALTER TABLE {} REPLICA IDENTITY FULL",
                    table.quoted()
                );
            }
        }
    }
    Ok(Setup {
        tables,
        created_publication,
        slot,
    })
}

/// Waits, up to 10 s, until no walsender holds `slot` (one whose client just stopped or
/// died lets go within moments).
pub(crate) async fn wait_released(client: &Client, slot: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        match slot_row(client, slot).await {
            Ok(Some(row)) if row.active_pid.is_some() => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            _ => return,
        }
    }
}

/// Ends the walsender holding `slot`, if any, and waits until it let go: the elected
/// instance of a highly available connector takes the slot from its deposed predecessor
/// (paused or cut off, its walsender would hold the slot until `wal_sender_timeout`).
pub(crate) async fn take_over_slot(client: &Client, slot: &str) -> Result<(), CdcError> {
    let rows = client
        .query(
            "SELECT active_pid, pg_terminate_backend(active_pid) FROM pg_replication_slots
             WHERE slot_name = $1 AND active_pid IS NOT NULL AND active_pid <> pg_backend_pid()",
            &[&slot],
        )
        .await
        .map_err(|e| {
            CdcError::Setup(format!(
                "taking over slot {slot:?} from its previous holder: {} \
                 (the connector's user must be the walsender's user, or have pg_signal_backend)",
                db_message(&e)
            ))
        })?;
    for row in rows {
        let pid: i32 = row.get(0);
        tracing::warn!(
            slot,
            pid,
            "terminated the walsender of a deposed instance to take over the slot"
        );
    }
    wait_released(client, slot).await;
    Ok(())
}

/// Drops the slot (tests, `--drop-slot-on-stop`) once its walsender let it go.
pub(crate) async fn drop_slot(client: &Client, slot: &str) -> Result<(), CdcError> {
    wait_released(client, slot).await;
    client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map(|_| ())
        .map_err(|e| CdcError::Setup(format!("dropping slot {slot:?}: {}", db_message(&e))))
}
