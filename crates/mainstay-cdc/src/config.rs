//! A connector's configuration, with Debezium's defaults where Debezium has one.

use std::time::Duration;

use crate::error::CdcError;
use crate::types::DecimalHandling;

/// `schema.table`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// The schema (`public` when the name has none).
    pub schema: String,
    /// The table.
    pub table: String,
}

impl TableName {
    /// Parses `schema.table` or `table` (schema `public`). Names are taken as written:
    /// no quoting, no case folding.
    pub fn parse(text: &str) -> Result<TableName, CdcError> {
        let (schema, table) = text.split_once('.').unwrap_or(("public", text));
        if schema.is_empty() || table.is_empty() || table.contains('.') {
            return Err(CdcError::Config(format!(
                "table name {text:?} is not SCHEMA.TABLE"
            )));
        }
        Ok(TableName {
            schema: schema.to_string(),
            table: table.to_string(),
        })
    }

    /// `"schema"."table"`, quoted for SQL.
    pub fn quoted(&self) -> String {
        format!(
            "{}.{}",
            crate::postgres::quote_ident(&self.schema),
            crate::postgres::quote_ident(&self.table)
        )
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// `schema.table.column`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColumnName {
    /// The schema.
    pub schema: String,
    /// The table.
    pub table: String,
    /// The column.
    pub column: String,
}

impl ColumnName {
    /// Parses `schema.table.column` or `table.column` (schema `public`).
    pub fn parse(text: &str) -> Result<ColumnName, CdcError> {
        let parts: Vec<&str> = text.split('.').collect();
        let (schema, table, column) = match parts.as_slice() {
            [t, c] => ("public", *t, *c),
            [s, t, c] => (*s, *t, *c),
            _ => {
                return Err(CdcError::Config(format!(
                    "column name {text:?} is not SCHEMA.TABLE.COLUMN"
                )))
            }
        };
        if [schema, table, column].iter().any(|p| p.is_empty()) {
            return Err(CdcError::Config(format!(
                "column name {text:?} is not SCHEMA.TABLE.COLUMN"
            )));
        }
        Ok(ColumnName {
            schema: schema.into(),
            table: table.into(),
            column: column.into(),
        })
    }
}

/// What a column rule does to a column's value in row images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnPolicy {
    Keep,
    Exclude,
    Mask(usize),
}

/// When the connector reads the tables' current rows (Debezium's `snapshot.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotMode {
    /// Snapshot once, when the connector has no record of a finished snapshot; then stream.
    /// Default.
    #[default]
    Initial,
    /// Snapshot as `Initial` does, then stop without streaming.
    InitialOnly,
    /// Never snapshot; stream from the slot (changes from its creation on).
    NoData,
    /// As `Initial`, and also when the slot the offsets refer to is gone (dropped or lost
    /// in a failover), instead of refusing to start.
    WhenNeeded,
    /// Snapshot at every start, then stream.
    Always,
}

impl SnapshotMode {
    /// Whether this mode ever reads table rows.
    pub fn may_snapshot(self) -> bool {
        self != SnapshotMode::NoData
    }
}

impl std::str::FromStr for SnapshotMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "initial" => Self::Initial,
            "initial_only" => Self::InitialOnly,
            "no_data" | "never" => Self::NoData,
            "when_needed" => Self::WhenNeeded,
            "always" => Self::Always,
            other => {
                return Err(format!(
                    "unknown snapshot mode {other:?}; expected initial, initial_only, no_data, when_needed or always"
                ))
            }
        })
    }
}

/// Whether a missing publication is created (Debezium's `publication.autocreate.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicationAutocreate {
    /// `CREATE PUBLICATION … FOR ALL TABLES` (needs a superuser).
    AllTables,
    /// `CREATE PUBLICATION … FOR TABLE` the include list, and add included tables an
    /// existing publication lacks.
    Filtered,
    /// Never create or change it; a missing publication is an error.
    Disabled,
}

impl std::str::FromStr for PublicationAutocreate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "all_tables" => Self::AllTables,
            "filtered" => Self::Filtered,
            "disabled" => Self::Disabled,
            other => {
                return Err(format!(
                    "unknown publication autocreate mode {other:?}; expected all_tables, filtered or disabled"
                ))
            }
        })
    }
}

/// Everything a PostgreSQL connector needs. Build with [`CdcConfig::new`] and the setters.
#[derive(Debug, Clone)]
pub struct CdcConfig {
    pub(crate) name: String,
    pub(crate) source_url: String,
    pub(crate) slot: String,
    pub(crate) publication: String,
    pub(crate) publication_autocreate: PublicationAutocreate,
    pub(crate) tables: Vec<TableName>,
    pub(crate) exclude_tables: Vec<TableName>,
    pub(crate) exclude_columns: Vec<ColumnName>,
    pub(crate) mask_columns: Vec<(ColumnName, usize)>,
    pub(crate) snapshot_mode: SnapshotMode,
    pub(crate) snapshot_fetch_size: usize,
    pub(crate) heartbeat_interval: Option<Duration>,
    pub(crate) decimal_handling: DecimalHandling,
    pub(crate) max_batch: usize,
    pub(crate) linger: Duration,
    pub(crate) status_interval: Duration,
    pub(crate) drop_slot_on_stop: bool,
    pub(crate) signal_table: Option<TableName>,
    pub(crate) incremental_chunk_size: usize,
    pub(crate) transaction_metadata: bool,
    pub(crate) tombstones_on_delete: bool,
}

impl CdcConfig {
    /// A connector named `name` reading `source_url` (a `postgres://` URL or a key=value
    /// connection string).
    pub fn new(name: impl Into<String>, source_url: impl Into<String>) -> CdcConfig {
        CdcConfig {
            name: name.into(),
            source_url: source_url.into(),
            slot: "mainstay".into(),
            publication: "mainstay".into(),
            publication_autocreate: PublicationAutocreate::AllTables,
            tables: Vec::new(),
            exclude_tables: Vec::new(),
            exclude_columns: Vec::new(),
            mask_columns: Vec::new(),
            snapshot_mode: SnapshotMode::Initial,
            snapshot_fetch_size: 4096,
            heartbeat_interval: Some(Duration::from_secs(10)),
            decimal_handling: DecimalHandling::Precise,
            max_batch: 4096,
            linger: Duration::from_millis(20),
            status_interval: Duration::from_secs(1),
            drop_slot_on_stop: false,
            signal_table: None,
            incremental_chunk_size: 1024,
            transaction_metadata: false,
            tombstones_on_delete: false,
        }
    }

    /// Debezium's `provide.transaction.metadata`: a BEGIN and an END event around each
    /// transaction's changes (`op = Transaction`; END counts them, per table), and a
    /// `transaction` block {id, total_order, data_collection_order} on each change.
    /// Transactions without a captured change produce none. Default: off.
    pub fn transaction_metadata(mut self, on: bool) -> Self {
        self.transaction_metadata = on;
        self
    }

    /// Debezium's `tombstones.on.delete`: after each delete, a tombstone (the row's key,
    /// a `null` value) for log-compacted consumers. Default: off.
    pub fn tombstones_on_delete(mut self, on: bool) -> Self {
        self.tombstones_on_delete = on;
        self
    }

    /// The signal table (Debezium's `signal.data.collection`): rows inserted into it
    /// (`id text PRIMARY KEY, type text, data text`) steer the connector —
    /// `execute-snapshot` with data `{"data-collections": ["schema.table", …]}` starts an
    /// incremental snapshot of those tables, `stop-snapshot` (optionally with the same
    /// data) cancels it, `pause-snapshot` / `resume-snapshot` hold and continue it. Created
    /// if missing and added to a filtered publication; its own rows never reach the sink.
    /// Default: none.
    pub fn signal_table(mut self, table: TableName) -> Self {
        self.signal_table = Some(table);
        self
    }

    /// Rows per chunk of an incremental snapshot. Default: 1024.
    pub fn incremental_chunk_size(mut self, rows: usize) -> Self {
        self.incremental_chunk_size = rows.max(1);
        self
    }

    /// Whether `table` is the signal table.
    pub fn is_signal_table(&self, table: &TableName) -> bool {
        self.signal_table.as_ref() == Some(table)
    }

    /// The replication slot. Default: `mainstay`. Lowercase letters, digits and `_`.
    pub fn slot(mut self, slot: impl Into<String>) -> Self {
        self.slot = slot.into();
        self
    }

    /// The publication. Default: `mainstay`.
    pub fn publication(mut self, publication: impl Into<String>) -> Self {
        self.publication = publication.into();
        self
    }

    /// Whether a missing publication is created. Default: `AllTables` without an include
    /// list; set `Filtered` to publish only [`CdcConfig::tables`].
    pub fn publication_autocreate(mut self, mode: PublicationAutocreate) -> Self {
        self.publication_autocreate = mode;
        self
    }

    /// Capture only these tables. Default: every table the publication covers. Setting an
    /// include list switches publication autocreation to `Filtered` unless it was disabled.
    pub fn tables(mut self, tables: Vec<TableName>) -> Self {
        if !tables.is_empty() && self.publication_autocreate == PublicationAutocreate::AllTables {
            self.publication_autocreate = PublicationAutocreate::Filtered;
        }
        self.tables = tables;
        self
    }

    /// Never capture these tables. Default: none.
    pub fn exclude_tables(mut self, tables: Vec<TableName>) -> Self {
        self.exclude_tables = tables;
        self
    }

    /// Leave these columns out of `before` and `after` (Debezium's
    /// `column.exclude.list`). Primary-key columns stay in the record key. Default: none.
    pub fn exclude_columns(mut self, columns: Vec<ColumnName>) -> Self {
        self.exclude_columns = columns;
        self
    }

    /// Replace these columns' non-null values with `chars` asterisks (Debezium's
    /// `column.mask.with.N.chars`). Default: none.
    pub fn mask_columns(mut self, columns: Vec<ColumnName>, chars: usize) -> Self {
        self.mask_columns
            .extend(columns.into_iter().map(|c| (c, chars)));
        self
    }

    /// What happens to `column` of `table` in row images.
    pub(crate) fn column_policy(&self, schema: &str, table: &str, column: &str) -> ColumnPolicy {
        let matches = |c: &ColumnName| c.schema == schema && c.table == table && c.column == column;
        if self.exclude_columns.iter().any(matches) {
            return ColumnPolicy::Exclude;
        }
        match self.mask_columns.iter().find(|(c, _)| matches(c)) {
            Some((_, chars)) => ColumnPolicy::Mask(*chars),
            None => ColumnPolicy::Keep,
        }
    }

    /// When to snapshot. Default: `Initial`.
    pub fn snapshot_mode(mut self, mode: SnapshotMode) -> Self {
        self.snapshot_mode = mode;
        self
    }

    /// Rows fetched per round trip by the snapshot. Default: 4096.
    pub fn snapshot_fetch_size(mut self, rows: usize) -> Self {
        self.snapshot_fetch_size = rows.max(1);
        self
    }

    /// How often a heartbeat message is written to the WAL, so the slot advances even when
    /// no captured table changes. `None` turns heartbeats off. Default: 10 s.
    pub fn heartbeat_interval(mut self, interval: Option<Duration>) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// How numeric values are written. Default: `Precise` (as Debezium).
    pub fn decimal_handling(mut self, mode: DecimalHandling) -> Self {
        self.decimal_handling = mode;
        self
    }

    /// Most events handed to the sink at once. Default: 4096.
    pub fn max_batch(mut self, events: usize) -> Self {
        self.max_batch = events.max(1);
        self
    }

    /// How long a non-empty batch waits for more events before it goes to the sink.
    /// Default: 20 ms.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// How often the confirmed position is reported to the server. Default: 1 s.
    pub fn status_interval(mut self, interval: Duration) -> Self {
        self.status_interval = interval;
        self
    }

    /// Drop the slot when the connector stops (tests only: changes made while no connector
    /// runs are then lost). Default: false.
    pub fn drop_slot_on_stop(mut self, drop: bool) -> Self {
        self.drop_slot_on_stop = drop;
        self
    }

    /// The connector's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The slot's name.
    pub fn slot_name(&self) -> &str {
        &self.slot
    }

    /// Whether `table` passes the include and exclude lists.
    pub fn captures(&self, table: &TableName) -> bool {
        (self.tables.is_empty() || self.tables.contains(table))
            && !self.exclude_tables.contains(table)
            && !self.is_signal_table(table)
    }

    pub(crate) fn validate(&self) -> Result<(), CdcError> {
        let valid_slot = !self.slot.is_empty()
            && self.slot.len() <= 63
            && self
                .slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid_slot {
            return Err(CdcError::Config(format!(
                "slot name {:?} must be 1-63 lowercase letters, digits or '_'",
                self.slot
            )));
        }
        if self.publication.is_empty() || self.publication.contains([',', ' ', '\'']) {
            return Err(CdcError::Config(format!(
                "publication name {:?} must be non-empty, without commas, spaces or quotes",
                self.publication
            )));
        }
        if self.name.is_empty() {
            return Err(CdcError::Config("connector name must not be empty".into()));
        }
        Ok(())
    }
}
