//! `mainstay txn list|show`: the two-phase-commit decision log.

use crate::config::Config;
use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub(crate) enum TxnCommand {
    /// List transactions, newest first, as JSON lines (with their state).
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print one transaction (participants, decision, state) as JSON.
    Show {
        /// Transaction id.
        id: String,
    },
}

fn view(t: &mainstay_txn::twopc::TxRecord) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(t)?;
    v["state"] = serde_json::to_value(t.state())?;
    Ok(v)
}

pub(crate) async fn run(config: Config, cmd: TxnCommand) -> anyhow::Result<ExitCode> {
    let log = mainstay_txn::connect_decision_log(&config.txn, &config.data_dir).await?;
    match cmd {
        TxnCommand::List { limit } => {
            for t in log.list(limit.clamp(1, 10_000)).await? {
                println!("{}", view(&t)?);
            }
        }
        TxnCommand::Show { id } => {
            let t = log
                .get(&id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("transaction {id:?} not found"))?;
            println!("{}", serde_json::to_string_pretty(&view(&t)?)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
