//! What the projectors share, and at-least-once handlers.

use mainstay_eventstore::{subscribe, EventStore, RecordedEvent, StoreError, SubscribeOptions};
use std::future::Future;
use std::sync::Arc;

/// Why a projection stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The projection's name cannot name tables.
    #[error(
        "invalid projection name {0:?}: use 1 to 40 of a-z, 0-9 and _, starting with a letter"
    )]
    InvalidName(String),
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The read model's database failed (or the projection's SQL did).
    #[error("read model: {0}")]
    ReadModel(String),
    /// The handler failed.
    #[error("handler: {0}")]
    Handler(String),
    /// The connection to the read model's database ended (a restart, a failover, a cut).
    /// A batch in flight committed or not as a whole; its checkpoint tells which.
    #[error("read model connection lost: {0}")]
    ConnectionLost(String),
}

/// Projection names become table and view names.
pub(crate) fn check_name(name: &str) -> Result<(), ProjectionError> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ProjectionError::InvalidName(name.to_string()))
    }
}

/// The table of generation `g` of projection `name`.
pub(crate) fn table(name: &str, g: i64) -> String {
    format!("{name}_g{g}")
}

/// What a projector step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Applied this many events.
    Applied(usize),
    /// Nothing new.
    Idle,
    /// Another projector moved the checkpoint first: read again.
    Raced,
}

/// Runs `handler` on every event of `$all` (after the durable subscription `name`'s
/// checkpoint), saving the checkpoint after each event it handled. At-least-once: after a
/// crash, events after the last saved checkpoint are handled again, so the handler must
/// be idempotent. Returns when the handler fails.
pub async fn run_at_least_once<F, Fut>(
    store: Arc<dyn EventStore>,
    name: &str,
    mut handler: F,
) -> Result<(), ProjectionError>
where
    F: FnMut(RecordedEvent) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut sub = subscribe(store, SubscribeOptions::durable(name)).await?;
    loop {
        let e = sub.next().await?;
        handler(e).await.map_err(ProjectionError::Handler)?;
        sub.checkpoint().await?;
    }
}
