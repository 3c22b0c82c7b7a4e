//! Operator actions on the log itself, usable without a running orchestrator (the
//! `mainstay saga` CLI): a retried saga is picked up by whichever orchestrator sweeps
//! next; an abort request is seen by the saga's driver at its next write.

use super::{HistoryEntry, Saga, SagaLog, SagaStatus, StepStatus};
use crate::error::TxnError;
use mainstay_core::clock::now_ms;

fn entry(saga: &mut Saga, event: &str) -> Vec<HistoryEntry> {
    saga.history_len += 1;
    vec![HistoryEntry {
        seq: saga.history_len,
        at_ms: now_ms(),
        event: event.to_string(),
        step: None,
        detail: None,
    }]
}

async fn get(log: &dyn SagaLog, id: &str) -> Result<Saga, TxnError> {
    log.get(id).await?.ok_or_else(|| TxnError::NotFound {
        what: "saga",
        id: id.to_string(),
    })
}

async fn changed(log: &dyn SagaLog, id: &str, action: &'static str) -> TxnError {
    match get(log, id).await {
        Ok(now) => TxnError::InvalidState {
            id: id.to_string(),
            status: now.status.to_string(),
            action,
        },
        Err(e) => e,
    }
}

/// Moves a parked (`compensation_failed`) saga back to `compensating`, unowned, with a
/// fresh retry allowance for the compensation that failed. Any orchestrator then resumes
/// it ([`super::Orchestrator::retry`] does so at once).
pub async fn retry(log: &dyn SagaLog, id: &str) -> Result<Saga, TxnError> {
    let mut saga = get(log, id).await?;
    if saga.status != SagaStatus::CompensationFailed {
        return Err(TxnError::InvalidState {
            id: id.to_string(),
            status: saga.status.to_string(),
            action: "retry (only compensation_failed sagas can be retried)",
        });
    }
    for step in &mut saga.steps {
        if step.status == StepStatus::CompensationFailed {
            step.status = StepStatus::Compensating;
        }
    }
    saga.status = SagaStatus::Compensating;
    saga.updated_at_ms = now_ms();
    let history = entry(&mut saga, "operator_retry");
    if !log
        .save_if(&saga, SagaStatus::CompensationFailed, &history)
        .await?
    {
        return Err(changed(log, id, "retry (it changed meanwhile)").await);
    }
    Ok(saga)
}

/// Aborts a saga. A pending or running one stops going forward and compensates (at its
/// next step boundary: an in-flight call finishes first; the returned saga has
/// `abort_requested` set); a parked one becomes `aborted` and its remaining
/// compensations will not run. Anything else is [`TxnError::InvalidState`].
pub async fn abort(log: &dyn SagaLog, id: &str) -> Result<Saga, TxnError> {
    let mut saga = get(log, id).await?;
    match saga.status {
        SagaStatus::Pending | SagaStatus::Running => {
            if log.request_abort(id).await? {
                saga.abort_requested = true;
                return Ok(saga);
            }
            Err(changed(log, id, "abort (it finished meanwhile)").await)
        }
        SagaStatus::CompensationFailed => {
            saga.status = SagaStatus::Aborted;
            saga.updated_at_ms = now_ms();
            let history = entry(&mut saga, "operator_abort");
            if log
                .save_if(&saga, SagaStatus::CompensationFailed, &history)
                .await?
            {
                return Ok(saga);
            }
            Err(changed(log, id, "abort (it changed meanwhile)").await)
        }
        other => Err(TxnError::InvalidState {
            id: id.to_string(),
            status: other.to_string(),
            action: "abort",
        }),
    }
}
