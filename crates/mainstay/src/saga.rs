//! `mainstay saga list|show|retry|abort`: operator views and actions on the saga log.
//!
//! These work on the log directly, so they work while the server is down; a retried saga
//! is resumed by the server's next sweep (within a third of its lease, 5 s by default).

use crate::config::Config;
use mainstay_txn::saga::{operator, SagaStatus};
use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub(crate) enum SagaCommand {
    /// List sagas, newest first, as JSON lines.
    List {
        /// Only this status: pending, running, completed, compensating, failed,
        /// compensation_failed, aborted.
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print one saga (steps, outputs, errors) and its history as JSON.
    Show {
        /// Saga id.
        id: String,
    },
    /// Retry a saga parked as compensation_failed: its failed compensation runs again.
    Retry {
        /// Saga id.
        id: String,
    },
    /// Abort a saga: a running one compensates; a parked one becomes aborted.
    Abort {
        /// Saga id.
        id: String,
    },
}

pub(crate) async fn run(config: Config, cmd: SagaCommand) -> anyhow::Result<ExitCode> {
    let log = config.saga_log().await?;
    match cmd {
        SagaCommand::List { status, limit } => {
            let status = status
                .as_deref()
                .map(str::parse::<SagaStatus>)
                .transpose()?;
            for s in log.list(status, limit.clamp(1, 10_000)).await? {
                println!("{}", serde_json::to_string(&s)?);
            }
        }
        SagaCommand::Show { id } => {
            let saga = log
                .get(&id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("saga {id:?} not found"))?;
            let history = log.history(&id, 0).await?;
            let mut v = serde_json::to_value(&saga)?;
            v["history"] = serde_json::to_value(history)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        SagaCommand::Retry { id } => {
            let saga = operator::retry(log.as_ref(), &id).await?;
            println!(
                "{}",
                serde_json::json!({"id": saga.id, "status": saga.status})
            );
        }
        SagaCommand::Abort { id } => {
            let saga = operator::abort(log.as_ref(), &id).await?;
            println!(
                "{}",
                serde_json::json!({"id": saga.id, "status": saga.status, "abort_requested": saga.abort_requested})
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
