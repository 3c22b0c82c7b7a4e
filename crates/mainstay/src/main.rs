//! `mainstay`: the server and CLI over Mainstay's building blocks. It parses flags, reads
//! `mainstay.toml`, and wires the library crates together; every behaviour lives in them.
#![forbid(unsafe_code)]

mod cdc;
mod config;
mod events;
mod fence;
mod lock;
mod saga;
mod serve;
mod txn;

use clap::{Parser, Subcommand};

/// Distributed-systems building blocks: locks with fencing tokens, leader election, durable sagas, an event store, and more.
#[derive(Parser)]
#[command(name = "mainstay", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: config::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (default 127.0.0.1:7070, embedded SQLite in ./mainstay-data/).
    Serve(serve::ServeArgs),
    /// Distributed locks: acquire, release, status, and run a command under a lock.
    #[command(subcommand)]
    Lock(lock::LockCommand),
    /// Fenced resources: install the guards that reject stale fencing tokens.
    #[command(subcommand)]
    Fence(fence::FenceCommand),
    /// Sagas: list, show, retry a parked one, abort.
    #[command(subcommand)]
    Saga(saga::SagaCommand),
    /// Two-phase commits: list and show the decision log.
    #[command(subcommand)]
    Txn(txn::TxnCommand),
    /// The event store: append, read a stream or $all, tail $all.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Change data capture from PostgreSQL: snapshot + WAL streaming as Debezium JSON.
    #[command(subcommand)]
    Cdc(cdc::CdcCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Serve(_) | Command::Cdc(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAINSTAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mainstay: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let config = config::Config::load(&cli.global)?;
        match cli.command {
            Command::Serve(args) => serve::run(config, args).await,
            Command::Lock(cmd) => lock::run(config, cmd).await,
            Command::Fence(cmd) => fence::run(cmd).await,
            Command::Saga(cmd) => saga::run(config, cmd).await,
            Command::Txn(cmd) => txn::run(config, cmd).await,
            Command::Events(cmd) => events::run(config, cmd).await,
            Command::Cdc(cmd) => cdc::run(config, cmd).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mainstay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
