//! `mainstay fence install`.

use anyhow::Context;
use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub(crate) enum FenceCommand {
    /// Install the fencing guard: a SQL function in PostgreSQL, or a function library in Redis 7+.
    Install {
        /// PostgreSQL URL: installs mainstay_fence_check(resource text, token bigint).
        #[arg(long, conflicts_with = "redis", required_unless_present = "redis")]
        postgres: Option<String>,
        /// Redis URL: loads the mainstay_fence library (FCALL mainstay_fenced_set / mainstay_fenced_del).
        #[arg(long)]
        redis: Option<String>,
    },
}

pub(crate) async fn run(cmd: FenceCommand) -> anyhow::Result<ExitCode> {
    let FenceCommand::Install { postgres, redis } = cmd;
    if let Some(url) = postgres {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .context("cannot connect to PostgreSQL")?;
        let driver = tokio::spawn(conn);
        mainstay_lock::fence::postgres::install(&client)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "installing the guard failed: {}",
                    e.as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or(e.to_string())
                )
            })?;
        drop(client);
        let _ = driver.await;
        println!(
            "installed mainstay_fence_check(resource text, token bigint) and table mainstay_fence"
        );
    } else if let Some(url) = redis {
        let client = redis::Client::open(url.as_str()).context("invalid Redis URL")?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .context("cannot connect to Redis")?;
        mainstay_lock::fence::redis::install(&mut conn)
            .await
            .context("FUNCTION LOAD failed (Redis 7 or later is required)")?;
        println!("loaded Redis function library mainstay_fence (mainstay_fenced_set, mainstay_fenced_del)");
    }
    Ok(ExitCode::SUCCESS)
}
