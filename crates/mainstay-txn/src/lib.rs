//! Distributed transactions (seed Part I §2): durable saga orchestration with
//! compensation and crash recovery.
//!
//! - [`saga`]: an [`saga::Orchestrator`] that runs sagas (HTTP or Rust steps) from a
//!   durable [`saga::SagaLog`] on SQLite (default) or PostgreSQL, resumes every unfinished
//!   saga after a crash, and compensates in reverse order.
//! - [`twopc`]: a two-phase-commit [`twopc::Coordinator`] with a durable decision log,
//!   presumed abort and recovery; PostgreSQL (`PREPARE TRANSACTION`) and HTTP participants;
//!   a sweeper for orphaned prepared transactions.
//! - [`choreography`]: services that react to each other's events (and compensate on
//!   failure events) over an in-process bus or NATS JetStream.
//! - [`threepc`]: three-phase commit as sans-IO state machines with a deterministic network
//!   simulation, which shows both its non-blocking recovery and its partition hazard.
//!
//! Each module states its guarantees and their limits.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod choreography;
mod connect;
pub mod error;
pub mod saga;
pub mod threepc;
pub mod twopc;

pub use connect::{connect_decision_log, connect_log};
pub use error::TxnError;

/// The HTTP client saga steps and 2PC participants are called with unless the builder is
/// given another: it does not follow redirects, so a participant cannot bounce a call (and
/// the request body and idempotency key with it) to a host the caller never named. A 3xx
/// answer is an answer: a failed step or a "no" vote.
pub fn participant_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}
