//! A PostgreSQL database as the sink: a **replica** (one table per captured table, a row per
//! source row as JSON, kept equal to the source) or an **audit log** (every change event's
//! envelope, in order).
//!
//! Exactly once: each batch is one transaction that also moves the connector's row in
//! `<schema>.mainstay_cdc_offsets` to the batch's last position, so the data and the record
//! of how far the sink got commit together; after a restart the connector skips everything
//! up to that position.
//!
//! Fenced: under high availability the connector's leadership epoch is its fencing token.
//! [`Sink::fence`] stores it on the offsets row; every batch locks that row (`FOR UPDATE`)
//! and is refused with [`CdcError::Fenced`] when the row holds a higher token — so a
//! deposed instance (paused past its lease, then woken) cannot write, even a batch it had
//! in hand, once its successor has claimed the sink.
//!
//! Tables (created when first needed, in the sink's schema, default `mainstay_cdc`):
//! - replica: `"<schema>.<table>"` (`key jsonb PRIMARY KEY, row jsonb, position text`):
//!   the key is the primary key's columns as a JSON object (the whole row for a table
//!   without one); creates, updates and snapshot reads upsert, deletes delete, a truncate
//!   empties the table; logical messages are not kept.
//! - audit: `mainstay_cdc_events` (`seq bigserial, position text UNIQUE, topic, op, key
//!   jsonb, envelope jsonb, written_at`): every event, messages included, in source order.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use tokio_postgres::Client;

use super::Sink;
use crate::error::CdcError;
use crate::event::{now_us, ChangeEvent, Op, Position};
use crate::postgres::{db_message, quote_ident};

/// How the PostgreSQL sink keeps what it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PostgresSinkMode {
    /// One table per source table holding each row's current JSON (the default).
    #[default]
    Replica,
    /// One table holding every change event's envelope.
    Audit,
}

impl std::str::FromStr for PostgresSinkMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "replica" => Ok(PostgresSinkMode::Replica),
            "audit" => Ok(PostgresSinkMode::Audit),
            other => Err(format!(
                "unknown PostgreSQL sink mode {other:?}: expected replica or audit"
            )),
        }
    }
}

/// Writes change events into a PostgreSQL database.
pub struct PostgresSink {
    client: Client,
    address: String,
    schema: String,
    connector: String,
    mode: PostgresSinkMode,
    token: Option<u64>,
    /// Replica tables known to exist.
    tables: HashSet<(String, String)>,
}

fn sink_err(e: impl std::fmt::Display) -> CdcError {
    CdcError::Sink {
        sink: "postgres".into(),
        message: e.to_string(),
    }
}

/// What a replica batch does to one table, collapsed per key (the batch commits as one).
#[derive(Default)]
struct TablePlan {
    /// Emptied by a truncate first (what came before it in the batch is moot).
    truncated: bool,
    /// Key text → the row's JSON text, or `None` for a delete; with its position.
    rows: HashMap<String, (Option<String>, String)>,
}

impl PostgresSink {
    /// Connects to `url` and creates the sink's schema and offsets table if missing.
    /// `connector` names this connector's offsets row (several connectors may share one
    /// database).
    pub async fn connect(
        url: &str,
        schema: &str,
        connector: &str,
        mode: PostgresSinkMode,
    ) -> Result<PostgresSink, CdcError> {
        if schema.is_empty() || connector.is_empty() {
            return Err(CdcError::Config(
                "the PostgreSQL sink needs a schema and a connector name".into(),
            ));
        }
        let address = mainstay_core::connect::redact(url);
        // The same sslmode / sslrootcert handling as the source's.
        let (clean, tls) = crate::postgres::tls::Tls::split(url)?;
        let mut config: tokio_postgres::Config = clean
            .parse()
            .map_err(|e| CdcError::Config(format!("PostgreSQL sink URL {address}: {e}")))?;
        config.ssl_mode(tls.postgres_mode());
        let tls_connector = tls.connector()?;
        let (client, connection) = mainstay_core::connect::with_retry(
            "postgresql",
            &address,
            |e: &tokio_postgres::Error| {
                e.as_db_error().is_none() && !crate::postgres::tls::refused(e)
            },
            |_| config.connect(tls_connector.clone()),
        )
        .await
        .map_err(|e| match e {
            mainstay_core::connect::ConnectError::Refused { error, .. } => sink_err(format!(
                "{address}: {}",
                crate::postgres::tls::describe(&error)
            )),
            deadline => sink_err(format!("{address}: {deadline}")),
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("cdc postgres sink connection ended: {e}");
            }
        });
        let q = quote_ident(schema);
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {q};
                 CREATE TABLE IF NOT EXISTS {q}.mainstay_cdc_offsets (
                     connector text PRIMARY KEY,
                     position text,
                     fencing_token bigint,
                     updated_at timestamptz NOT NULL DEFAULT now()
                 );"
            ))
            .await
            .map_err(|e| {
                sink_err(format!(
                    "{address}: creating schema {schema:?} and its offsets table: {}",
                    db_message(&e)
                ))
            })?;
        if mode == PostgresSinkMode::Audit {
            client
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {q}.mainstay_cdc_events (
                         seq bigserial PRIMARY KEY,
                         connector text NOT NULL,
                         position text NOT NULL,
                         topic text NOT NULL,
                         op text NOT NULL,
                         key jsonb,
                         envelope jsonb NOT NULL,
                         written_at timestamptz NOT NULL DEFAULT now(),
                         UNIQUE (connector, position)
                     );"
                ))
                .await
                .map_err(|e| {
                    sink_err(format!(
                        "{address}: creating the audit table: {}",
                        db_message(&e)
                    ))
                })?;
        }
        Ok(PostgresSink {
            client,
            address,
            schema: schema.to_string(),
            connector: connector.to_string(),
            mode,
            token: None,
            tables: HashSet::new(),
        })
    }

    /// The replica table of a source table, quoted: `"<sink schema>"."<schema>.<table>"`.
    pub fn replica_table(&self, schema: &str, table: &str) -> String {
        format!(
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(&format!("{schema}.{table}"))
        )
    }

    fn db_err(&self, what: &str, e: &tokio_postgres::Error) -> CdcError {
        sink_err(format!("{}: {what}: {}", self.address, db_message(e)))
    }

    fn offsets(&self) -> String {
        format!("{}.mainstay_cdc_offsets", quote_ident(&self.schema))
    }

    fn plan(events: &[ChangeEvent]) -> Vec<((String, String), TablePlan)> {
        let mut order: Vec<(String, String)> = Vec::new();
        let mut plans: HashMap<(String, String), TablePlan> = HashMap::new();
        for event in events {
            let id = (event.schema.to_string(), event.table.to_string());
            let plan = plans.entry(id.clone()).or_insert_with(|| {
                order.push(id.clone());
                TablePlan::default()
            });
            let position = event.position.to_text();
            // The row's identity: its primary key, else (no key) the whole row.
            let key_of = |image: Option<&crate::event::Row>| {
                event
                    .key
                    .as_ref()
                    .or(image)
                    .map(|row| row.to_value().to_string())
            };
            match event.op {
                Op::Create | Op::Read => {
                    if let (Some(key), Some(after)) = (key_of(event.after.as_ref()), &event.after) {
                        plan.rows
                            .insert(key, (Some(after.to_value().to_string()), position));
                    }
                }
                Op::Update => {
                    if event.key.is_none() {
                        // A keyless row's identity is its old image.
                        if let Some(before) = key_of(event.before.as_ref()) {
                            plan.rows.insert(before, (None, position.clone()));
                        }
                    }
                    if let (Some(key), Some(after)) = (key_of(event.after.as_ref()), &event.after) {
                        plan.rows
                            .insert(key, (Some(after.to_value().to_string()), position));
                    }
                }
                Op::Delete => {
                    if let Some(key) = key_of(event.before.as_ref()) {
                        plan.rows.insert(key, (None, position));
                    }
                }
                Op::Truncate => {
                    plan.truncated = true;
                    plan.rows.clear();
                }
                Op::Message | Op::Transaction | Op::Tombstone => {}
            }
        }
        order
            .into_iter()
            .filter_map(|id| plans.remove(&id).map(|p| (id, p)))
            .filter(|(_, p)| p.truncated || !p.rows.is_empty())
            .collect()
    }
}

#[async_trait]
impl Sink for PostgresSink {
    fn name(&self) -> &str {
        "postgres"
    }

    async fn last_position(&mut self) -> Result<Option<Position>, CdcError> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT position FROM {} WHERE connector = $1",
                    self.offsets()
                ),
                &[&self.connector],
            )
            .await
            .map_err(|e| self.db_err("reading the offsets row", &e))?;
        match row.and_then(|r| r.get::<_, Option<String>>(0)) {
            None => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|e| {
                sink_err(format!(
                    "offsets row of {:?} in {}: {e}",
                    self.connector,
                    self.offsets()
                ))
            }),
        }
    }

    async fn fence(&mut self, token: u64) -> Result<bool, CdcError> {
        let offsets = self.offsets();
        let row = self
            .client
            .query_opt(
                &format!(
                    "INSERT INTO {offsets} AS o (connector, fencing_token) VALUES ($1, $2)
                     ON CONFLICT (connector) DO UPDATE SET fencing_token = EXCLUDED.fencing_token, updated_at = now()
                     WHERE o.fencing_token IS NULL OR o.fencing_token <= EXCLUDED.fencing_token
                     RETURNING fencing_token"
                ),
                &[&self.connector, &(token as i64)],
            )
            .await
            .map_err(|e| self.db_err("claiming the offsets row", &e))?;
        if row.is_none() {
            let current: Option<i64> = self
                .client
                .query_one(
                    &format!("SELECT fencing_token FROM {offsets} WHERE connector = $1"),
                    &[&self.connector],
                )
                .await
                .map_err(|e| self.db_err("reading the offsets row", &e))?
                .get(0);
            return Err(CdcError::Fenced {
                sink: "postgres".into(),
                presented: token,
                current: current.unwrap_or_default() as u64,
            });
        }
        self.token = Some(token);
        Ok(true)
    }

    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), CdcError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let offsets = self.offsets();
        let plans = match self.mode {
            PostgresSinkMode::Replica => Self::plan(events),
            PostgresSinkMode::Audit => Vec::new(),
        };
        // Replica tables first seen in this batch are created in its transaction.
        let mut names = Vec::with_capacity(plans.len());
        let mut new_tables = Vec::new();
        for ((schema, table), _) in &plans {
            names.push(self.replica_table(schema, table));
            if !self.tables.contains(&(schema.clone(), table.clone())) {
                new_tables.push((schema.clone(), table.clone()));
            }
        }
        let audit_table = format!("{}.mainstay_cdc_events", quote_ident(&self.schema));
        let (address, connector, token) =
            (self.address.clone(), self.connector.clone(), self.token);
        let err = |what: &str, e: tokio_postgres::Error| {
            sink_err(format!("{address}: {what}: {}", db_message(&e)))
        };
        let tx = self
            .client
            .transaction()
            .await
            .map_err(|e| err("BEGIN", e))?;
        // Lock this connector's offsets row and refuse a stale token.
        let row = tx
            .query_opt(
                &format!("SELECT fencing_token FROM {offsets} WHERE connector = $1 FOR UPDATE"),
                &[&connector],
            )
            .await
            .map_err(|e| err("reading the offsets row", e))?;
        let current: Option<i64> = row.and_then(|r| r.get(0));
        if let (Some(current), Some(token)) = (current, token) {
            if current as u64 > token {
                return Err(CdcError::Fenced {
                    sink: "postgres".into(),
                    presented: token,
                    current: current as u64,
                });
            }
        }
        for (((schema, table), plan), name) in plans.iter().zip(&names) {
            if new_tables.iter().any(|(s, t)| s == schema && t == table) {
                tx.batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {name} (
                     key jsonb PRIMARY KEY,
                     row jsonb NOT NULL,
                     position text NOT NULL
                 )"
                ))
                .await
                .map_err(|e| err(&format!("creating {name}"), e))?;
            }
            if plan.truncated {
                tx.execute(&format!("DELETE FROM {name}"), &[])
                    .await
                    .map_err(|e| err(&format!("emptying {name}"), e))?;
            }
            let mut deletes = Vec::new();
            let (mut keys, mut rows, mut positions) = (Vec::new(), Vec::new(), Vec::new());
            for (key, (row, position)) in &plan.rows {
                match row {
                    None => deletes.push(key.as_str()),
                    Some(row) => {
                        keys.push(key.as_str());
                        rows.push(row.as_str());
                        positions.push(position.as_str());
                    }
                }
            }
            if !deletes.is_empty() {
                tx.execute(
                    &format!("DELETE FROM {name} WHERE key = ANY($1::text[]::jsonb[])"),
                    &[&deletes],
                )
                .await
                .map_err(|e| err(&format!("deleting from {name}"), e))?;
            }
            if !keys.is_empty() {
                tx.execute(
                    &format!(
                        "INSERT INTO {name} (key, row, position)
                         SELECT k::jsonb, r::jsonb, p FROM unnest($1::text[], $2::text[], $3::text[]) AS u(k, r, p)
                         ON CONFLICT (key) DO UPDATE SET row = EXCLUDED.row, position = EXCLUDED.position"
                    ),
                    &[&keys, &rows, &positions],
                )
                .await
                .map_err(|e| err(&format!("writing {name}"), e))?;
            }
        }
        if self.mode == PostgresSinkMode::Audit {
            let now = now_us();
            let mut columns: [Vec<String>; 4] = Default::default();
            let mut keys: Vec<Option<String>> = Vec::with_capacity(events.len());
            for e in events {
                columns[0].push(e.position.to_text());
                columns[1].push(format!("{}.{}.{}", connector, e.schema, e.table));
                columns[2].push(e.op.code().to_string());
                columns[3].push(
                    serde_json::to_string(&e.envelope(now))
                        .map_err(|e| CdcError::Decode(format!("encoding an event: {e}")))?,
                );
                keys.push(e.key.as_ref().map(|k| k.to_value().to_string()));
            }
            tx.execute(
                &format!(
                    "INSERT INTO {audit_table} (connector, position, topic, op, key, envelope)
                     SELECT $1, p, t, o, k::jsonb, v::jsonb
                     FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) WITH ORDINALITY AS u(p, t, o, k, v, n)
                     ORDER BY n
                     ON CONFLICT (connector, position) DO NOTHING"
                ),
                &[&connector, &columns[0], &columns[1], &columns[2], &keys, &columns[3]],
            )
            .await
            .map_err(|e| err("appending to the audit table", e))?;
        }
        tx.execute(
            &format!(
                "INSERT INTO {offsets} AS o (connector, position, fencing_token) VALUES ($1, $2, $3)
                 ON CONFLICT (connector) DO UPDATE SET position = EXCLUDED.position, updated_at = now(),
                     fencing_token = GREATEST(o.fencing_token, EXCLUDED.fencing_token)"
            ),
            &[&connector, &last.position.to_text(), &token.map(|t| t as i64)],
        )
        .await
        .map_err(|e| err("moving the offsets row", e))?;
        tx.commit().await.map_err(|e| err("COMMIT", e))?;
        self.tables.extend(new_tables);
        Ok(())
    }
}
