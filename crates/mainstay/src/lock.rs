//! `mainstay lock acquire|release|status|run`.

use crate::config::Config;
use mainstay_lock::{AcquireOptions, LockError};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::process::ExitCode;
use std::time::Duration;

/// Exit status of `lock run` when the lock was not acquired within the wait.
pub(crate) const EXIT_BUSY: u8 = 75;
/// Exit status of `lock run` when the lease was lost and the command terminated.
pub(crate) const EXIT_LOST: u8 = 76;

fn duration(s: &str) -> Result<Duration, String> {
    mainstay_core::duration::parse(s)
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum LockCommand {
    /// Acquire a lock and print the lease as JSON (release it with `lock release`).
    Acquire {
        /// Lock name (at most 256 characters, no '/').
        name: String,
        /// Lease ttl.
        #[arg(long, default_value = "30s", value_parser = duration)]
        ttl: Duration,
        /// How long to wait for a busy lock.
        #[arg(long, default_value = "0s", value_parser = duration)]
        wait: Duration,
        /// Owner shown to others. Default: pid@hostname.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Release a lease (only its owner can).
    Release {
        /// Lock name.
        name: String,
        /// The lease id printed by `lock acquire`.
        #[arg(long)]
        lease_id: String,
    },
    /// Print the current holder as JSON.
    Status {
        /// Lock name.
        name: String,
    },
    /// Run a command while holding the lock (a distributed flock). The lease is renewed every
    /// ttl/3; the command gets MAINSTAY_FENCING_TOKEN, MAINSTAY_LEASE_ID and
    /// MAINSTAY_LOCK_NAME. If the lease is lost the command's process group is terminated
    /// and mainstay exits 76; if the lock is not acquired within --wait it exits 75.
    /// Otherwise it exits with the command's status.
    Run {
        /// Lock name.
        name: String,
        /// Lease ttl.
        #[arg(long, default_value = "30s", value_parser = duration)]
        ttl: Duration,
        /// How long to wait for a busy lock.
        #[arg(long, default_value = "10s", value_parser = duration)]
        wait: Duration,
        /// Owner shown to others. Default: pid@hostname.
        #[arg(long)]
        owner: Option<String>,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

pub(crate) async fn run(config: Config, cmd: LockCommand) -> anyhow::Result<ExitCode> {
    let client = config.lock_client().await?;
    match cmd {
        LockCommand::Acquire {
            name,
            ttl,
            wait,
            owner,
        } => {
            let lease = client
                .acquire(&name, &AcquireOptions { ttl, wait, owner })
                .await?;
            println!("{}", serde_json::to_string(&lease)?);
            Ok(ExitCode::SUCCESS)
        }
        LockCommand::Release { name, lease_id } => {
            if client.release(&name, &lease_id).await? {
                println!("{}", serde_json::json!({"name": name, "released": true}));
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("mainstay: {}", LockError::NotHolder { name });
                Ok(ExitCode::FAILURE)
            }
        }
        LockCommand::Status { name } => {
            let holder = client.holder(&name).await?;
            println!(
                "{}",
                serde_json::json!({"name": name, "held": holder.is_some(), "holder": holder})
            );
            Ok(ExitCode::SUCCESS)
        }
        LockCommand::Run {
            name,
            ttl,
            wait,
            owner,
            command,
        } => run_locked(client, name, AcquireOptions { ttl, wait, owner }, command).await,
    }
}

async fn run_locked(
    client: mainstay_lock::LockClient,
    name: String,
    opts: AcquireOptions,
    command: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let lease = match client.acquire(&name, &opts).await {
        Ok(l) => l,
        Err(e @ LockError::Busy { .. }) => {
            eprintln!("mainstay: {e}");
            return Ok(ExitCode::from(EXIT_BUSY));
        }
        Err(e) => return Err(e.into()),
    };
    let spawned = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("MAINSTAY_FENCING_TOKEN", lease.fencing_token.to_string())
        .env("MAINSTAY_LEASE_ID", &lease.lease_id)
        .env("MAINSTAY_LOCK_NAME", &name)
        // Its own process group, so a lost lease stops the whole command tree.
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let _ = client.release(&name, &lease.lease_id).await;
            return Err(anyhow::anyhow!("cannot run {:?}: {e}", command[0]));
        }
    };
    let keepalive = client.keep_alive(lease)?;
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let outcome = tokio::select! {
        status = child.wait() => Outcome::Exited(status?),
        _ = keepalive.lost() => Outcome::Lost,
        _ = tokio::signal::ctrl_c() => Outcome::Signalled(130),
        _ = sigterm.recv() => Outcome::Signalled(143),
    };
    let code = match outcome {
        Outcome::Exited(status) => {
            let _ = keepalive.release().await;
            ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8)
        }
        Outcome::Lost => {
            eprintln!("mainstay: lease on {name:?} lost; terminating the command");
            stop(&mut child, pgid).await;
            drop(keepalive);
            ExitCode::from(EXIT_LOST)
        }
        Outcome::Signalled(code) => {
            stop(&mut child, pgid).await;
            let _ = keepalive.release().await;
            ExitCode::from(code)
        }
    };
    Ok(code)
}

enum Outcome {
    Exited(std::process::ExitStatus),
    Lost,
    Signalled(u8),
}

/// SIGTERM the command's process group, then SIGKILL after 5 s.
async fn stop(child: &mut tokio::process::Child, pgid: Option<Pid>) {
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        if let Some(pgid) = pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        let _ = child.wait().await;
    }
}
