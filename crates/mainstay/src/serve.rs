//! `mainstay serve`.

use crate::config::Config;
use anyhow::Context;
use std::net::SocketAddr;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// Address to listen on. Default: 127.0.0.1:7070.
    #[arg(long, env = "MAINSTAY_LISTEN")]
    listen: Option<String>,
    /// Bearer token required on /v1/* (mandatory on a non-loopback address).
    #[arg(long, env = "MAINSTAY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Once listening, write the bound address (IP:PORT) to this file — with
    /// `--listen 127.0.0.1:0` the OS picks a free port and this tells you which.
    #[arg(long, env = "MAINSTAY_ADDR_FILE")]
    addr_file: Option<std::path::PathBuf>,
    /// Longest wait a request may ask for (`wait_ms` of acquire, campaign, saga waits),
    /// e.g. `30s`. Longer asks are refused with 400. Default: 24h.
    #[arg(long, env = "MAINSTAY_MAX_WAIT")]
    max_wait: Option<String>,
}

pub(crate) async fn run(mut config: Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let listen = args
        .listen
        .or(config.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:7070".into());
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("invalid listen address {listen:?} (expected IP:PORT)"))?;
    let token = args
        .token
        .or(config.token.clone())
        .filter(|t| !t.is_empty());
    mainstay_server::check_bind(&addr, token.as_deref()).map_err(anyhow::Error::msg)?;
    let max_wait = match args.max_wait.as_ref().or(config.max_wait.as_ref()) {
        Some(text) => mainstay_core::duration::parse(text)
            .map_err(|e| anyhow::anyhow!("invalid max wait: {e}"))?,
        None => mainstay_lock::MAX_WAIT,
    };
    let locks = config.lock_client().await?;
    let log = config.saga_log().await?;
    let targets =
        mainstay_server::AllowedTargets::for_listen(&addr, config.allowed_participants.as_deref())
            .map_err(anyhow::Error::msg)?;
    let mut sagas = mainstay_txn::saga::Orchestrator::builder_arc(log);
    if let Some(id) = &config.node_id {
        sagas = sagas.node_id(id);
    }
    let sagas = sagas.build();
    let resumed = sagas
        .start()
        .await
        .context("cannot resume unfinished sagas")?;
    let postgres = config.pg_resources()?;
    let txns = config.coordinator(&postgres).await?;
    let recovered = txns
        .start()
        .await
        .context("cannot recover unfinished transactions")?;
    let events = config.event_store().await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let where_ = match config.backend.backend {
        mainstay_lock::BackendKind::Sqlite => config
            .backend
            .sqlite_path(&config.data_dir)
            .display()
            .to_string(),
        _ => config.backend.url.clone().unwrap_or_default(),
    };
    tracing::info!(
        "mainstay listening on http://{} (lock backend {} at {where_}; saga log {}, {resumed} unfinished sagas resumed; {recovered} transactions recovered; event store {}; auth {})",
        listener.local_addr()?,
        locks.kind().as_str(),
        sagas.log_kind(),
        config.events.backend.as_str(),
        if token.is_some() { "on" } else { "off" }
    );
    if let Some(path) = &args.addr_file {
        // Written whole under a temporary name, then renamed: a reader never sees half.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, listener.local_addr()?.to_string())
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write the address file {}", path.display()))?;
    }
    // The `[cdc]` connector, when configured, runs with the server and stops with it.
    let stop = tokio_util::sync::CancellationToken::new();
    let cdc = crate::cdc::for_serve(&mut config, stop.clone()).await?;
    let mut state = mainstay_server::AppState::new(locks, sagas, txns, postgres, events, token)
        .with_allowed_targets(targets)
        .with_max_wait(max_wait);
    let mut cdc_task = None;
    if let Some((observer, task)) = cdc {
        tracing::info!(connector = %observer.status().name, "cdc connector started (GET /v1/cdc)");
        state = state.with_cdc(vec![observer]);
        cdc_task = Some(task);
    }
    let stopping = stop.clone();
    mainstay_server::serve(listener, state, async move {
        shutdown_signal().await;
        stopping.cancel();
    })
    .await?;
    stop.cancel();
    if let Some(task) = cdc_task {
        // A clean stop confirms what the sink holds; bounded, so a stuck sink cannot hold
        // the process.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), task).await;
    }
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
