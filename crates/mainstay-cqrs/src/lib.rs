//! CQRS (seed Part III §8) over [`mainstay_eventstore`]: the write side as aggregates
//! behind a [`Repository`], the read side as projections that keep a read model current.
//!
//! - **Aggregates** ([`Aggregate`]): `handle(command) → events` decides, `apply(event)`
//!   evolves the state. The [`Repository`] loads an aggregate from its latest snapshot plus
//!   the events after it, runs the command, and appends the new events expecting the
//!   version it loaded; when another writer got there first it **reloads and runs the
//!   command again** (up to a limit), so a read-modify-write never loses an update.
//!   Temporal queries load the state as it was at a version or at a time.
//! - **Projections** keep a read model in SQLite ([`sqlite::SqliteProjector`]) or
//!   PostgreSQL ([`postgres::PgProjector`]). Each batch of events is applied and the
//!   projection's checkpoint advanced **in one transaction of the read model's database**,
//!   so a crash at any point leaves either both or neither: every event takes effect
//!   exactly once, without the projection having to be idempotent. The events themselves
//!   may come from any store. Several projector processes may run the same projection:
//!   each batch re-checks the checkpoint inside its transaction, and a loser retries.
//! - **Rebuild and swap**: a projection's tables are versioned (`NAME_g1`, `NAME_g2`, …)
//!   behind a view named `NAME`; a rebuild projects from the start into the next
//!   generation while the current one keeps serving, then swaps the view in one
//!   transaction and drops the old table.
//! - **At-least-once** handlers for effects outside the read model's database
//!   ([`run_at_least_once`]) use a durable subscription: an event may be handled again
//!   after a crash, so the handler must be idempotent (key its effect by event id or
//!   position).
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod aggregate;
#[cfg(feature = "postgres")]
pub mod postgres;
mod projection;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use aggregate::{Aggregate, CqrsError, Executed, Loaded, Repository};
pub use projection::{run_at_least_once, ProjectionError};
