//! Saga orchestration (seed Part I §2, "Saga Pattern — Orchestration"), made durable.
//!
//! A saga is an ordered list of steps, each an action plus a compensation. The
//! [`Orchestrator`] runs the actions in order; when one fails for business reasons (an
//! HTTP 4xx, a handler's [`StepError::Business`]) or the saga's deadline passes, it runs the
//! compensations of the completed steps in reverse order.
//!
//! **Durability.** Every transition is written to a [`SagaLog`] (SQLite by default,
//! PostgreSQL) *before* the next call starts: one write records a step's outcome and the
//! intent to run the next call, so a crash at any point leaves a log that says exactly
//! which call may have been in flight. On start-up the orchestrator resumes every
//! unfinished saga at once — forward if running, backward if compensating — re-issuing the
//! in-flight call with the **same idempotency key** (`{saga_id}/{step}` for an action,
//! `{saga_id}/{step}/compensate` for a compensation; attempts do not change it).
//!
//! **Guarantees.** Every saga ends `completed`, or `failed` with every step whose action
//! may have taken effect compensated in reverse order, or parked as `compensation_failed`
//! (a compensation kept failing; the error is recorded; an operator can retry or abort).
//! Each call is delivered **at least once**; participants that deduplicate by the
//! idempotency key see **exactly-once effects**. A step whose outcome is unknown
//! (retries exhausted on 5xx/timeouts, deadline hit mid-call) is compensated too, so its
//! compensation must tolerate "nothing to undo". Several orchestrator nodes may share one
//! PostgreSQL log: each saga is driven by the node holding its lease, and every write is
//! fenced by the lease's epoch, so a node that lost its lease cannot overwrite the log.
//!
//! **Not guaranteed.** Isolation: other transactions see intermediate states (the seed's
//! "lack of isolation" trade-off; use semantic locks or commutative updates). Calls to
//! participants that do not deduplicate may apply twice after a crash.

mod definition;
mod http;
pub mod operator;
mod orchestrator;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use definition::{Call, RetrySpec, SagaDefinition, StepDefinition, MAX_NAME_CHARS, MAX_STEPS};
pub use orchestrator::{
    handler_fn, Orchestrator, OrchestratorBuilder, OrchestratorMetrics, StartOptions, StepContext,
    StepError, StepHandler,
};

use crate::error::TxnError;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a saga is (the seed's `SagaStatus`, plus the parked and aborted ends).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SagaStatus {
    /// Created; no step started yet.
    Pending,
    /// Running actions forward.
    Running,
    /// Every action succeeded.
    Completed,
    /// Running compensations backward.
    Compensating,
    /// Rolled back: every step that may have taken effect was compensated.
    Failed,
    /// Parked: a compensation kept failing. An operator retries or aborts it.
    CompensationFailed,
    /// An operator gave up on a parked saga; its remaining compensations will not run.
    Aborted,
}

impl SagaStatus {
    /// All statuses.
    pub const ALL: [SagaStatus; 7] = [
        SagaStatus::Pending,
        SagaStatus::Running,
        SagaStatus::Completed,
        SagaStatus::Compensating,
        SagaStatus::Failed,
        SagaStatus::CompensationFailed,
        SagaStatus::Aborted,
    ];

    /// The snake_case name used in JSON, the log and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Pending => "pending",
            SagaStatus::Running => "running",
            SagaStatus::Completed => "completed",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Failed => "failed",
            SagaStatus::CompensationFailed => "compensation_failed",
            SagaStatus::Aborted => "aborted",
        }
    }

    /// True while an orchestrator must drive it (pending, running, compensating).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            SagaStatus::Pending | SagaStatus::Running | SagaStatus::Compensating
        )
    }

    /// True when nothing more will happen without an operator.
    pub fn is_final(self) -> bool {
        !self.is_active()
    }

    /// True when nothing more can happen at all: completed, failed or aborted (a parked
    /// saga can still be retried or aborted).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SagaStatus::Completed | SagaStatus::Failed | SagaStatus::Aborted
        )
    }
}

impl std::fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SagaStatus {
    type Err = TxnError;

    fn from_str(s: &str) -> Result<Self, TxnError> {
        SagaStatus::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                TxnError::invalid(
                    "status",
                    format!("unknown saga status {s:?}: expected one of pending, running, completed, compensating, failed, compensation_failed, aborted"),
                )
            })
    }
}

/// Where one step is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum StepStatus {
    /// Not started.
    Pending,
    /// Its action is (or may be) in flight: the intent is logged, the outcome is not.
    Running,
    /// Its action succeeded.
    Completed,
    /// Its action failed for business reasons and took no effect; nothing to compensate.
    Failed,
    /// Its compensation is (or may be) in flight.
    Compensating,
    /// Its compensation succeeded (or it had none).
    Compensated,
    /// Its compensation kept failing; the saga is parked.
    CompensationFailed,
}

/// The durable state of one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepState {
    /// The step's name.
    pub name: String,
    /// Where it is.
    pub status: StepStatus,
    /// The action's JSON response, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The last error of the action or compensation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One saga instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Saga {
    /// Unguessable id.
    pub id: String,
    /// The definition as it was when the saga started (later re-registrations do not
    /// change a running saga).
    pub definition: SagaDefinition,
    /// The caller's idempotency key, if given: one saga per key.
    pub idempotency_key: Option<String>,
    /// Where it is.
    pub status: SagaStatus,
    /// The JSON input it started with.
    pub input: Value,
    /// One entry per step of the definition.
    pub steps: Vec<StepState>,
    /// Why it is compensating, failed or parked.
    pub error: Option<String>,
    /// Wall-clock creation time (ms since the epoch).
    pub created_at_ms: u64,
    /// Wall-clock time of the last transition.
    pub updated_at_ms: u64,
    /// When forward progress stops and compensation begins, if the definition has a
    /// deadline.
    pub deadline_at_ms: Option<u64>,
    /// Entries in its history so far (the next entry's `seq` is this + 1).
    pub history_len: u64,
    /// An operator asked to abort it; the driver compensates at the next step boundary.
    pub abort_requested: bool,
}

/// A saga without its definition and step outputs, for listings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SagaSummary {
    /// Its id.
    pub id: String,
    /// Its definition's name.
    pub definition: String,
    /// Where it is.
    pub status: SagaStatus,
    /// Why it is compensating, failed or parked.
    pub error: Option<String>,
    /// Creation time (ms since the epoch).
    pub created_at_ms: u64,
    /// Last transition (ms since the epoch).
    pub updated_at_ms: u64,
}

impl From<&Saga> for SagaSummary {
    fn from(s: &Saga) -> Self {
        SagaSummary {
            id: s.id.clone(),
            definition: s.definition.name.clone(),
            status: s.status,
            error: s.error.clone(),
            created_at_ms: s.created_at_ms,
            updated_at_ms: s.updated_at_ms,
        }
    }
}

/// One transition in a saga's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryEntry {
    /// 1-based position in the saga's history.
    pub seq: u64,
    /// Wall-clock time (ms since the epoch).
    pub at_ms: u64,
    /// What happened: `saga_started`, `step_started`, `step_completed`, `step_failed`,
    /// `compensation_started`, `step_compensated`, `compensation_failed`,
    /// `saga_completed`, `saga_failed`, `saga_parked`, `deadline_exceeded`,
    /// `abort_requested`, `operator_retry`, `operator_abort`.
    pub event: String,
    /// The step it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    /// Details (an error, a response).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

/// A transition, as published to watchers ([`Orchestrator::subscribe`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaEvent {
    /// The saga.
    pub saga_id: String,
    /// Its status after the transition.
    pub status: SagaStatus,
    /// The history entry.
    #[serde(flatten)]
    pub entry: HistoryEntry,
}

/// What [`SagaLog::create`] did.
#[derive(Debug)]
pub enum Created {
    /// Inserted; the caller owns it with this epoch.
    New(u64),
    /// A saga with the same idempotency key exists; nothing was written.
    Existing(Box<Saga>),
}

/// The durable saga log: definitions, saga rows (state + owner lease) and history.
///
/// Each method is one atomic write or read. Writes by a driver are fenced by the epoch
/// its claim returned: [`SagaLog::save`] fails with [`TxnError::Fenced`] once another
/// node has claimed the saga.
#[async_trait]
pub trait SagaLog: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;

    /// Inserts or replaces a definition.
    async fn put_definition(&self, def: &SagaDefinition) -> Result<(), TxnError>;

    /// A definition by name.
    async fn definition(&self, name: &str) -> Result<Option<SagaDefinition>, TxnError>;

    /// All definitions, by name.
    async fn definitions(&self) -> Result<Vec<SagaDefinition>, TxnError>;

    /// Inserts `saga` owned by `owner` (lease `lease_ms`), with its first history
    /// entries; when a saga with the same idempotency key exists, returns it instead.
    async fn create(
        &self,
        saga: &Saga,
        history: &[HistoryEntry],
        owner: &str,
        lease_ms: u64,
    ) -> Result<Created, TxnError>;

    /// Replaces the saga's state and appends `history`, if `epoch` still owns it.
    /// Returns whether an abort was requested. A final status releases ownership.
    async fn save(
        &self,
        saga: &Saga,
        epoch: u64,
        history: &[HistoryEntry],
    ) -> Result<bool, TxnError>;

    /// Replaces the state of an unowned saga whose status is `expected` (operator
    /// actions on parked sagas). Returns false when it was not in that status.
    async fn save_if(
        &self,
        saga: &Saga,
        expected: SagaStatus,
        history: &[HistoryEntry],
    ) -> Result<bool, TxnError>;

    /// Takes ownership of an active saga that is unowned, whose lease expired, or that
    /// `owner` already holds (a restart of the same node). Returns the new epoch and the
    /// saga, or `None` when another node holds a live lease or it is not active.
    async fn claim(
        &self,
        id: &str,
        owner: &str,
        lease_ms: u64,
    ) -> Result<Option<(u64, Saga)>, TxnError>;

    /// Extends the lease of every saga `owner` holds. Returns how many.
    async fn renew(&self, owner: &str, lease_ms: u64) -> Result<u64, TxnError>;

    /// Ids of active sagas `owner` could claim now, oldest first.
    async fn claimable(&self, owner: &str, limit: usize) -> Result<Vec<String>, TxnError>;

    /// Marks an active saga for abort. Returns false when it is not active.
    async fn request_abort(&self, id: &str) -> Result<bool, TxnError>;

    /// One saga.
    async fn get(&self, id: &str) -> Result<Option<Saga>, TxnError>;

    /// Sagas, newest first, optionally of one status; at most `limit`.
    async fn list(
        &self,
        status: Option<SagaStatus>,
        limit: usize,
    ) -> Result<Vec<SagaSummary>, TxnError>;

    /// History entries of a saga with `seq > after`, in order.
    async fn history(&self, id: &str, after: u64) -> Result<Vec<HistoryEntry>, TxnError>;
}
