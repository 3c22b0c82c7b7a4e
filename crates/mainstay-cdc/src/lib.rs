//! Change data capture from PostgreSQL (the seed's Part III §9): a consistent initial
//! snapshot followed by the logical replication stream (pgoutput), as change events in
//! Debezium's JSON envelope, delivered to a [`Sink`].
//!
//! Guarantees:
//! - **Consistent start**: the snapshot reads the tables with the snapshot the replication
//!   slot exported when it was created, and streaming starts at the slot's consistent
//!   point, so every row is seen once as a read (`r`) and every later change once after it.
//! - **Nothing lost**: a transaction is confirmed to the slot only after the sink returned
//!   from writing all of its events; after a crash PostgreSQL sends the unconfirmed rest
//!   again. Each event carries a [`Position`] `(commit LSN, LSN, index)` that is the same
//!   on every resend — several changes sharing one LSN stay distinct (Debezium DBZ-5915).
//! - **Slot hygiene**: heartbeats (`pg_logical_emit_message`) let the slot advance on an
//!   idle or fully filtered database; the slot is never dropped unless told; a slot that
//!   vanished under a connector that streamed from it is refused, not silently recreated.
//!
//! - **Resumable snapshots**: the initial snapshot records its progress per fetch; a cut
//!   one resumes after its last key as an incremental snapshot (DBLog watermarks, also on
//!   demand through a signal table) without reordering any key's history.
//! - **High availability**: with [`Connector::fencing_token`] the sink, the state file and
//!   the slot are claimed by the instance holding the highest leadership epoch.
//!
//! Limits: at-least-once to sinks that cannot report their position (stdout, webhook);
//! after a crash inside a snapshot, the rows of the fetch or chunk it cut are read again;
//! large transactions are buffered by PostgreSQL until commit (protocol 1).
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod config;
pub mod connector;
pub mod error;
pub mod event;
pub mod observe;
pub mod outbox;
mod postgres;
pub mod sink;
pub mod status;
pub mod types;

pub use config::{CdcConfig, ColumnName, PublicationAutocreate, SnapshotMode, TableName};
pub use connector::{Connector, RunSummary};
pub use error::CdcError;
pub use event::{ChangeEvent, Op, Position, Row};
pub use observe::{ConnectorStatus, Observer, Phase};
pub use outbox::{OutboxEvent, OutboxRouter};
#[cfg(feature = "eventstore")]
pub use sink::eventstore::EventStoreSink;
#[cfg(feature = "nats")]
pub use sink::jetstream::JetStreamSink;
#[cfg(feature = "postgres-sink")]
pub use sink::postgres::{PostgresSink, PostgresSinkMode};
#[cfg(feature = "redis")]
pub use sink::redis::RedisSink;
#[cfg(feature = "webhook")]
pub use sink::webhook::WebhookSink;
pub use sink::{FileSink, NullSink, Sink, StdoutSink};
pub use status::{slot_status, SlotStatus};
