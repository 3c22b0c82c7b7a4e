//! Subscriptions to `$all`: catch up from a position, then follow live.
//!
//! A subscription is one loop — read `$all` after the last delivered position, deliver,
//! and when a read comes back empty wait for a wake-up — so there is no separate
//! "catch-up" and "live" mode to switch between and nothing to lose at the switch. It can
//! never skip or repeat an event because `$all` itself never lets an event appear behind
//! a position a reader has passed (see the crate docs), and the subscription always asks
//! for what comes after the last event it delivered.
//!
//! Wake-ups only make it prompt, never correct:
//! - SQLite: appends through the same [`crate::sqlite::SqliteEventStore`] wake its
//!   subscribers at once; appends by another process are seen at the next poll
//!   (`poll_interval`, default 250 ms).
//! - PostgreSQL: every store instance `LISTEN`s on `mainstay_events`; after each commit an
//!   appender sends the transaction id with `NOTIFY` (coalesced, outside the append
//!   transaction, so appends never queue on the notification lock). A subscriber woken for
//!   transaction `t` waits until `$all` can serve `t` (every older transaction ended)
//!   before reading. Writers that bypass Mainstay (plain SQL) are seen at the next poll.
//!
//! **Durable subscriptions** have a name; the store keeps their checkpoint
//! ([`Subscription::checkpoint`]). Delivery is at-least-once across restarts: events after
//! the last saved checkpoint are delivered again, so a consumer either checkpoints after
//! each effect or makes its effect idempotent by position (a projection that keeps its
//! checkpoint in its own transaction gets exactly-once; see `mainstay-cqrs`).

use crate::{EventStore, Position, ReadAllFilter, RecordedEvent, StoreError};
use async_trait::async_trait;
use std::collections::VecDeque;
use std::sync::Arc;

/// Something that tells a subscription when `$all` may have grown. Made by
/// [`EventStore::wakeups`] *before* the subscription's first read, so nothing that
/// commits after that read goes unnoticed.
#[async_trait]
pub trait Wakeups: Send + Sync {
    /// Returns once events may have become readable since the last return (or since
    /// creation), or when the poll interval has passed.
    async fn wait(&mut self) -> Result<(), StoreError>;
}

/// Where a subscription starts and what it sees.
#[derive(Clone, Debug)]
pub struct SubscribeOptions {
    /// Deliver events after this position ([`Position::START`]: from the beginning).
    /// A durable subscription with a saved checkpoint starts there instead.
    pub after: Position,
    /// Only these events.
    pub filter: ReadAllFilter,
    /// Events read per round trip.
    pub batch: usize,
    /// A durable subscription's name: its checkpoint is kept by the store.
    pub name: Option<String>,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            after: Position::START,
            filter: ReadAllFilter::default(),
            batch: 512,
            name: None,
        }
    }
}

impl SubscribeOptions {
    /// From the beginning of `$all`, every event.
    pub fn from_start() -> Self {
        Self::default()
    }

    /// After `position`.
    pub fn after(position: Position) -> Self {
        SubscribeOptions {
            after: position,
            ..Self::default()
        }
    }

    /// A durable subscription named `name` (from its checkpoint, else from the start).
    pub fn durable(name: impl Into<String>) -> Self {
        SubscribeOptions {
            name: Some(name.into()),
            ..Self::default()
        }
    }

    /// Reading `batch` events per round trip.
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }

    /// With this filter.
    pub fn filter(mut self, filter: ReadAllFilter) -> Self {
        self.filter = filter;
        self
    }
}

/// A subscription to `$all`. Obtain one with [`subscribe`].
pub struct Subscription {
    store: Arc<dyn EventStore>,
    wakeups: Box<dyn Wakeups>,
    after: Position,
    filter: ReadAllFilter,
    batch: usize,
    name: Option<String>,
    buffered: VecDeque<RecordedEvent>,
    live: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("after", &self.after)
            .field("name", &self.name)
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

/// Subscribes to `store`'s `$all`.
pub async fn subscribe(
    store: Arc<dyn EventStore>,
    options: SubscribeOptions,
) -> Result<Subscription, StoreError> {
    if options.batch == 0 {
        return Err(StoreError::invalid("batch", "must be at least 1"));
    }
    let mut after = options.after;
    if let Some(name) = &options.name {
        check_name(name)?;
        if let Some(saved) = store.load_checkpoint(name).await? {
            after = saved;
        }
    }
    let wakeups = store.wakeups().await?;
    Ok(Subscription {
        store,
        wakeups,
        after,
        filter: options.filter,
        batch: options.batch,
        name: options.name,
        buffered: VecDeque::new(),
        live: false,
    })
}

impl Subscription {
    /// The next event, waiting for one to be appended when caught up.
    pub async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        loop {
            if let Some(e) = self.buffered.pop_front() {
                self.after = e.position;
                return Ok(e);
            }
            let batch = self
                .store
                .read_all(self.after, self.batch, &self.filter)
                .await?;
            // A read shorter than a batch reached the end of `$all` as it was then: the
            // subscription has caught up (whether or not more arrived since). Regression:
            // `live` used to wait for an empty read, which a writer faster than the
            // subscriber can postpone indefinitely.
            if batch.len() < self.batch {
                self.live = true;
            }
            if batch.is_empty() {
                self.wakeups.wait().await?;
            } else {
                self.buffered.extend(batch);
            }
        }
    }

    /// The next events, at most `max` (at least one: waits when caught up), for a
    /// consumer that handles a batch in one transaction.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let first = self.next().await?;
        let mut out = vec![first];
        while out.len() < max.max(1) {
            match self.buffered.pop_front() {
                Some(e) => {
                    self.after = e.position;
                    out.push(e);
                }
                None => break,
            }
        }
        Ok(out)
    }

    /// The position of the last event delivered (where a restart would resume).
    pub fn position(&self) -> Position {
        self.after
    }

    /// True once the subscription has caught up: one of its reads returned less than a
    /// full batch, so it had read everything `$all` held at that moment; from then on it
    /// follows live appends.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// The durable subscription's name.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Saves [`Self::position`] as the durable subscription's checkpoint. Call it after
    /// the delivered events took effect.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        let Some(name) = &self.name else {
            return Err(StoreError::invalid(
                "name",
                "only a durable (named) subscription has a checkpoint",
            ));
        };
        self.store.save_checkpoint(name, self.after).await
    }
}

/// A durable subscription's name: 1 to 256 characters.
pub(crate) fn check_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.chars().count() > 256 {
        return Err(StoreError::invalid(
            "name",
            format!("subscription name {name:?} must be 1 to 256 characters"),
        ));
    }
    Ok(())
}
