//! Distributed transactions (seed Part I §2): durable saga orchestration with
//! compensation and crash recovery.
//!
//! - [`saga`]: an [`saga::Orchestrator`] that runs sagas (HTTP or Rust steps) from a
//!   durable [`saga::SagaLog`] on SQLite (default) or PostgreSQL, resumes every unfinished
//!   saga after a crash, and compensates in reverse order.
//!
//! Each module states its guarantees and their limits.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod connect;
pub mod error;
pub mod saga;

pub use connect::connect_log;
pub use error::TxnError;
