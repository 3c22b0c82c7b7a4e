//! An event store (seed Part III §7): streams of immutable events appended with an
//! expected version, and one global order over all of them (`$all`).
//!
//! - **Optimistic concurrency.** An append states what it expects the stream to be
//!   ([`ExpectedVersion`]); a mismatch is [`StoreError::WrongExpectedVersion`] carrying the
//!   expected and the actual version, and nothing is written.
//! - **Idempotent appends.** Every event has an id. Appending a batch whose ids are already
//!   the stream's events at that place returns the original result and writes nothing — under
//!   `Exact` and under `Any` alike — so a client may retry after a timeout.
//! - **Atomic batches, several streams at once** ([`EventStore::append_many`]).
//! - **A gap-free `$all`.** A reader that has seen [`Position`] `p` will never later see
//!   an event below `p` appear (SQLite: one writer at a time, positions assigned inside the
//!   write transaction, so commit order is position order; PostgreSQL: positions ordered
//!   by transaction id, and only transactions older than every running one are served).
//!
//! Versions are 0-based: a stream's first event has version 0, and a stream's version is
//! the version of its last event.
//!
//! - **Subscriptions** ([`subscribe`]): catch-up then live in one loop, durable ones with
//!   a checkpoint kept by the store; see [`subscription`] for the wake-ups and limits.
//!
//! - **Retention and deletion** ([`StreamMetadata`], [`DeleteMode`]): max count, max age
//!   and truncate-before hide events from stream reads at once; a soft delete makes the
//!   stream read as not found until an append revives it (versions continue); a hard
//!   delete removes the events now and tombstones the name. Hidden events stay in `$all`
//!   until [`EventStore::scavenge`] removes them — so a subscriber may still see events a
//!   stream read no longer shows, and an idempotent retry of a scavenged batch appends it
//!   again.
//! - **Snapshots** (latest per stream, never replaced by an older version) and
//!   **correlation / causation ids** in the metadata ([`EventData::caused_by`]).
#![forbid(unsafe_code)]
// Built without a backend (a crate that only needs the trait), the validation helpers
// the backends share are unused.
#![cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
#![warn(missing_docs, unreachable_pub)]

mod connect;
mod error;
mod event;
mod meta;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod subscription;

pub use connect::connect;
pub use error::StoreError;
pub use event::{
    AppendResult, Direction, EventData, ExpectedVersion, Position, ReadAllFilter, RecordedEvent,
    WireAppendResult, WireEvent, MAX_EVENT_BYTES,
};
pub use meta::{DeleteMode, Snapshot, StreamMetadata, CAUSATION_ID, CORRELATION_ID};
pub use subscription::{subscribe, SubscribeOptions, Subscription, Wakeups};

/// Most events one scavenge transaction removes (see `with_scavenge_batch` on each store):
/// appends wait for at most one such batch, not for the whole pass.
pub const DEFAULT_SCAVENGE_BATCH: usize = 10_000;

use async_trait::async_trait;

/// One append of [`EventStore::append_many`]: a stream, what it is expected to be, events.
#[derive(Clone, Debug)]
pub struct Append {
    /// The stream.
    pub stream: String,
    /// Its expected version.
    pub expected: ExpectedVersion,
    /// The events, in order.
    pub events: Vec<EventData>,
}

/// An event store backend.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` atomically if the stream matches `expected`.
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        let mut r = self
            .append_many(vec![Append {
                stream: stream.to_string(),
                expected,
                events,
            }])
            .await?;
        Ok(r.remove(0))
    }

    /// Appends to several streams in one transaction: all or nothing.
    async fn append_many(&self, appends: Vec<Append>) -> Result<Vec<AppendResult>, StoreError>;

    /// Up to `max` events of `stream` from version `from` (inclusive), forward or backward.
    /// An unknown stream is [`StoreError::StreamNotFound`].
    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Up to `max` events of `$all` after `after` ([`Position::START`]: from the
    /// beginning), in position order, optionally filtered.
    async fn read_all(
        &self,
        after: Position,
        max: usize,
        filter: &ReadAllFilter,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The stream's version (its last event's), or `None` when it has no events.
    async fn stream_version(&self, stream: &str) -> Result<Option<u64>, StoreError>;

    /// Wake-ups for one subscription (see [`subscription`]).
    async fn wakeups(&self) -> Result<Box<dyn Wakeups>, StoreError>;

    /// The saved checkpoint of the durable subscription `name`.
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>, StoreError>;

    /// Saves the checkpoint of the durable subscription `name`.
    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), StoreError>;

    /// The stream's metadata (the default when none was set).
    async fn stream_metadata(&self, stream: &str) -> Result<StreamMetadata, StoreError>;

    /// Replaces the stream's metadata (the stream need not have events yet).
    async fn set_stream_metadata(
        &self,
        stream: &str,
        metadata: StreamMetadata,
    ) -> Result<(), StoreError>;

    /// Deletes the stream if it matches `expected` (see [`DeleteMode`]). A stream without
    /// events is [`StoreError::StreamNotFound`] for a soft delete; a hard delete
    /// tombstones the name whatever it holds.
    async fn delete_stream(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        mode: DeleteMode,
    ) -> Result<(), StoreError>;

    /// Removes from storage (and `$all`) the events that retention or a soft delete
    /// hides; returns how many. Runs in batches (see `with_scavenge_batch` on each store),
    /// each its own transaction: appends get through between them, and an error part-way
    /// leaves the batches before it done (call again to finish).
    async fn scavenge(&self) -> Result<u64, StoreError>;

    /// Saves the state of the stream's aggregate at `version`, replacing an older one.
    async fn save_snapshot(
        &self,
        stream: &str,
        version: u64,
        data: serde_json::Value,
    ) -> Result<(), StoreError>;

    /// The stream's latest snapshot.
    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError>;
}
