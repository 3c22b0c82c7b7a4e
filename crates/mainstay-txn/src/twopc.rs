//! Two-phase commit (seed Part I §2, "Two-Phase Commit"): a coordinator with a durable
//! decision log, presumed abort, timeouts and recovery.
//!
//! Phase 1 asks every participant to **prepare** (each votes; a timeout or error is a "no").
//! The coordinator then writes its **decision** to the [`DecisionLog`] — commit only if all
//! voted yes — *before* phase 2 tells anyone. Phase 2 delivers the decision, retrying until
//! every participant acknowledges; a participant that is down gets it later from the
//! background recovery loop, or asks ([`Coordinator::decision`], `GET /v1/txns/{id}`).
//!
//! **Presumed abort.** A transaction with no decision was never committed: recovery (at
//! start-up for this node's own transactions, after the prepare timeout for others) and the
//! PostgreSQL sweeper decide *abort* for it. Decisions are first-writer-wins in the log, so a
//! late coordinator that then tries to commit sees the abort and follows it: atomicity holds
//! whoever writes first.
//!
//! **Guarantees.** All participants commit or all abort, across coordinator crashes (kill -9
//! between any two steps) and participant restarts, provided participants are idempotent and
//! keep prepared state durably (PostgreSQL's `PREPARE TRANSACTION` does). **Not guaranteed:**
//! progress while the coordinator is down — prepared participants hold their locks until it
//! (or the sweeper) returns; that blocking is 2PC's known cost (three-phase commit is the
//! protocol that trades it for a partition hazard, in the crate docs).

mod coordinator;
mod http;
mod log;
#[cfg(feature = "postgres")]
pub mod pg;

pub use coordinator::{Coordinator, CoordinatorBuilder};
pub use http::HttpParticipant;
#[cfg(feature = "postgres")]
pub use log::PostgresDecisionLog;
#[cfg(feature = "sqlite")]
pub use log::SqliteDecisionLog;
pub use log::{DecisionLog, TxRecord, TxState};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A participant's phase-1 answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vote {
    /// Prepared: it will commit or abort on the coordinator's word, even after a crash.
    Commit,
    /// Refused (the reason); it has already rolled back.
    Abort(String),
}

/// The coordinator's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Decision {
    /// Every participant voted to commit.
    Commit,
    /// Someone voted no, timed out, or the coordinator died undecided (presumed abort).
    Abort,
}

impl Decision {
    /// `commit` or `abort`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Commit => "commit",
            Decision::Abort => "abort",
        }
    }
}

/// How to reach a participant again after a coordinator restart; stored in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParticipantRef {
    /// Unique within the transaction.
    pub name: String,
    /// An HTTP participant's base URL (it serves `POST {url}/prepare|commit|abort`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A PostgreSQL resource name: phase 2 runs `COMMIT PREPARED` / `ROLLBACK PREPARED`
    /// there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<String>,
}

/// A participant failed to answer (phase 2 retries it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParticipantError(pub String);

/// One side of a two-phase commit. Every method must be idempotent per `txid`: after a
/// crash the coordinator repeats phase 2, and a prepared participant must survive its own
/// restart still prepared.
#[async_trait]
pub trait Participant: Send + Sync + 'static {
    /// Phase 1: make the work durable without making it visible, then vote.
    async fn prepare(&self, txid: &str) -> Result<Vote, ParticipantError>;
    /// Phase 2 after a commit decision.
    async fn commit(&self, txid: &str) -> Result<(), ParticipantError>;
    /// Phase 2 after an abort decision (also for a participant that never prepared).
    async fn abort(&self, txid: &str) -> Result<(), ParticipantError>;
}

/// How a transaction ended, as [`Coordinator::run`] reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Outcome {
    /// The transaction id.
    pub id: String,
    /// The decision.
    pub decision: Decision,
    /// Why it aborted (the first "no" vote or timeout), if it did.
    pub reason: Option<String>,
    /// Whether every participant acknowledged phase 2 (if not, recovery finishes it).
    pub finished: bool,
}
