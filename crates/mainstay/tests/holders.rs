//! A real holder process — `mainstay lock run` — paused past its ttl or killed, per backend.
//! The paused holder's writes are rejected by the PostgreSQL and Redis guards.

use crate::common::mainstay;
use mainstay_lock::fence;
use mainstay_lock::{AcquireOptions, BackendKind, LockClient};
use mainstay_testkit::{per_backend, shared_postgres, shared_redis, unique, FreshBackend, Process};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::process::Stdio;
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(2);

/// The backend's URL for `mainstay --backend-url`, and what must outlive the test.
async fn backend_url(kind: BackendKind) -> (String, FreshBackend) {
    let fresh = FreshBackend::new(kind).await.unwrap();
    let url = match kind {
        // The holder's session must expire soon after it is paused.
        BackendKind::Zookeeper => format!("{}?session_timeout=1s", fresh.url()),
        _ => fresh.url(),
    };
    (url, fresh)
}

struct Holder {
    process: Process,
    token: u64,
    command_pid: i32,
}

/// Starts `mainstay lock run NAME` whose command records its token and pid, then sleeps.
async fn start_holder(kind: BackendKind, url: &str, dir: &std::path::Path, name: &str) -> Holder {
    let marker = dir.join(format!("{name}.token"));
    let script = format!(
        "echo \"$MAINSTAY_FENCING_TOKEN $$\" > {}.tmp && mv {0}.tmp {0} && exec sleep 600",
        marker.display()
    );
    let process = Process::spawn(
        "mainstay lock run",
        mainstay(dir)
            .args([
                "--backend",
                kind.as_str(),
                "--backend-url",
                url,
                "lock",
                "run",
                name,
                "--ttl",
                "2s",
                "--wait",
                "20s",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    mainstay_testkit::eventually(Duration::from_secs(30), "holder's command started", || {
        let m = marker.clone();
        async move { m.exists() }
    })
    .await
    .unwrap();
    let text = std::fs::read_to_string(&marker).unwrap();
    let mut parts = text.split_whitespace();
    let token = parts.next().unwrap().parse().unwrap();
    let command_pid = parts.next().unwrap().parse().unwrap();
    Holder {
        process,
        token,
        command_pid,
    }
}

async fn client(kind: BackendKind, url: &str, dir: &std::path::Path) -> LockClient {
    let config = mainstay_lock::BackendConfig {
        backend: kind,
        url: Some(url.to_string()),
    };
    mainstay_lock::connect(&config, dir).await.unwrap()
}

/// Paused past its ttl, the holder loses the lock to a second holder with a higher token;
/// the guards reject the first holder's token; resumed, `lock run` notices and exits 76.
async fn paused_holder_is_fenced(kind: BackendKind) {
    let dir = tempfile::tempdir().unwrap();
    let (url, _backend) = backend_url(kind).await;
    let name = unique("fenced");
    let mut holder = start_holder(kind, &url, dir.path(), &name).await;
    holder.process.pause().unwrap();
    let paused_at = Instant::now();

    let other = client(kind, &url, dir.path()).await;
    let second = other
        .acquire(
            &name,
            &AcquireOptions::ttl(Duration::from_secs(30)).wait(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert!(
        paused_at.elapsed() >= TTL / 2,
        "{kind:?}: granted {:?} after the pause, before the old lease could expire",
        paused_at.elapsed()
    );
    assert!(
        second.fencing_token > holder.token,
        "{kind:?}: {} not above {}",
        second.fencing_token,
        holder.token
    );

    // The protected resource, behind each guard: the new holder writes, the old is refused.
    let pg = shared_postgres();
    let db = pg.database().await.unwrap();
    let (pgc, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    fence::postgres::install(&pgc).await.unwrap();
    fence::postgres::check(&pgc, &name, second.fencing_token)
        .await
        .unwrap();
    assert!(matches!(
        fence::postgres::check(&pgc, &name, holder.token).await,
        Err(fence::postgres::FenceError::Stale(_))
    ));
    let r = shared_redis();
    let mut rc = redis::Client::open(r.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    fence::redis::install(&mut rc).await.unwrap();
    let (key, fk) = (format!("{name}:data"), format!("{name}:fence"));
    fence::redis::fenced_set(&mut rc, &key, &fk, second.fencing_token, "new")
        .await
        .unwrap();
    assert!(matches!(
        fence::redis::fenced_set(&mut rc, &key, &fk, holder.token, "stale").await,
        Err(fence::redis::FenceError::Stale(_))
    ));

    holder.process.resume().unwrap();
    let status = wait_exit(&mut holder.process, Duration::from_secs(30)).await;
    assert_eq!(
        status,
        Some(76),
        "{kind:?}: a resumed holder must detect the lost lease"
    );
    assert!(
        nix::sys::signal::kill(Pid::from_raw(holder.command_pid), None).is_err(),
        "the command was not terminated"
    );
    assert!(other.release(&name, &second.lease_id).await.unwrap());
}

/// kill -9 of the holder: the lock is free again after its ttl.
async fn crashed_holder_frees_lock(kind: BackendKind) {
    let dir = tempfile::tempdir().unwrap();
    let (url, _backend) = backend_url(kind).await;
    let name = unique("crash");
    let mut holder = start_holder(kind, &url, dir.path(), &name).await;
    holder.process.kill();
    let killed_at = Instant::now();
    let _ = killpg(Pid::from_raw(holder.command_pid), Signal::SIGKILL);
    let other = client(kind, &url, dir.path()).await;
    let lease = other
        .acquire(
            &name,
            &AcquireOptions::ttl(Duration::from_secs(30)).wait(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert!(lease.fencing_token > holder.token);
    assert!(
        killed_at.elapsed() < Duration::from_secs(20),
        "{kind:?}: freed only after {:?}",
        killed_at.elapsed()
    );
}

async fn wait_exit(p: &mut Process, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(code) = p.try_exit_code() {
            return code;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

per_backend!(paused_holder_is_fenced);
per_backend!(crashed_holder_frees_lock);
