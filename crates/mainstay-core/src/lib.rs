//! Shared plumbing for Mainstay crates: unguessable ids, the wall clock, human durations,
//! connecting to a backing server with retries until a deadline,
//! the configuration types that the library crates, the server and the CLI share, a
//! PostgreSQL pool helper (feature `postgres`), the SQLite open helper (feature `sqlite`), and crash
//! failpoints for fault tests.
//!
//! Nothing here implements a pattern; it exists so that no two crates grow their own copy
//! of the same helper. Time that drives protocol decisions inside a crate comes from
//! `tokio::time` (so tests can pause it); [`clock::now_ms`] is only for values that
//! cross process boundaries (lease expiry stamps stored in a shared database).
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod clock;
pub mod config;
pub mod connect;
pub mod duration;
pub mod failpoint;
pub mod id;
#[cfg(feature = "postgres")]
pub mod pg;
#[cfg(feature = "sqlite")]
pub mod sqlite;
