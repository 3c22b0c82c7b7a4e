//! A real holder process — `mainstay lock run` — paused past its ttl or killed, per backend.
//! The paused holder's writes are rejected by the PostgreSQL and Redis guards.
//!
//! The ttl is the contract on every backend: the lock is free again within ttl + 1 s of
//! the holder's last renewal, with a ttl (2 s) below the backend's default session or
//! lease length (ZooKeeper's session is left at its 10 s default).

use crate::common::{lock_client, mainstay};
use mainstay_lock::fence;
use mainstay_lock::{AcquireOptions, BackendKind};
use mainstay_testkit::{per_backend, shared_postgres, shared_redis, unique, FreshBackend, Process};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::process::Stdio;
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(2);

/// The bound on how late after the ttl a dead holder's lock is granted again.
const GRACE: Duration = Duration::from_secs(1);

/// The backend's URL for `mainstay --backend-url`, and what must outlive the test. No
/// ZooKeeper session timeout is set: the 10 s default is longer than [`TTL`].
async fn backend_url(kind: BackendKind) -> (String, FreshBackend) {
    let fresh = FreshBackend::new(kind).await.unwrap();
    (fresh.url(), fresh)
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

/// Paused past its ttl, the holder loses the lock to a second holder with a higher token;
/// the guards reject the first holder's token; resumed, `lock run` notices and exits 76.
async fn paused_holder_is_fenced(kind: BackendKind) {
    let dir = tempfile::tempdir().unwrap();
    let (url, _backend) = backend_url(kind).await;
    let name = unique("fenced");
    let mut holder = start_holder(kind, &url, dir.path(), &name).await;
    holder.process.pause().unwrap();
    let paused_at = Instant::now();

    let other = lock_client(kind, &url, dir.path()).await;
    let second = other
        .acquire(
            &name,
            &AcquireOptions::ttl(Duration::from_secs(30)).wait(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let waited = paused_at.elapsed();
    assert!(
        waited >= TTL / 2,
        "{kind:?}: granted {waited:?} after the pause, before the old lease could expire"
    );
    assert!(
        waited <= TTL + GRACE,
        "{kind:?}: a holder paused with a {TTL:?} ttl kept the lock for {waited:?}"
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
    let other = lock_client(kind, &url, dir.path()).await;
    let lease = other
        .acquire(
            &name,
            &AcquireOptions::ttl(Duration::from_secs(30)).wait(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert!(lease.fencing_token > holder.token);
    let waited = killed_at.elapsed();
    assert!(
        waited <= TTL + GRACE,
        "{kind:?}: a holder killed with a {TTL:?} ttl kept the lock for {waited:?}"
    );
}

/// `mainstay lock acquire NAME --ttl 2s` answers and exits without releasing: the lease's
/// reported expiry is the one enforced — status says free after it, and another
/// acquire succeeds within ttl + 1 s.
async fn acquired_lease_ends_at_its_reported_expiry(kind: BackendKind) {
    let dir = tempfile::tempdir().unwrap();
    let (url, _backend) = backend_url(kind).await;
    let name = unique("exit");
    let out = mainstay(dir.path())
        .args(["--backend", kind.as_str(), "--backend-url", &url])
        .args(["lock", "acquire", &name, "--ttl", "2s"])
        .output()
        .unwrap();
    let acquired_at = Instant::now();
    assert!(out.status.success(), "{kind:?}: {out:?}");
    let lease: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expires_at_ms = lease["expires_at_ms"].as_u64().unwrap();
    let token = lease["fencing_token"].as_u64().unwrap();

    let other = lock_client(kind, &url, dir.path()).await;
    let next = other
        .acquire(
            &name,
            &AcquireOptions::ttl(Duration::from_secs(30)).wait(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let waited = acquired_at.elapsed();
    assert!(next.fencing_token > token, "{kind:?}");
    assert!(
        waited <= TTL + GRACE,
        "{kind:?}: a lease with a {TTL:?} ttl, its process gone, kept the lock for {waited:?}"
    );
    // Granted no earlier than the expiry the first lease reported (50 ms for clock reads).
    assert!(
        mainstay_core::clock::now_ms() + 50 >= expires_at_ms,
        "{kind:?}: granted {} ms before the reported expiry",
        expires_at_ms - mainstay_core::clock::now_ms()
    );
    assert!(other.release(&name, &next.lease_id).await.unwrap());
    // And a status read after an expiry does not report the expired holder.
    let out = mainstay(dir.path())
        .args(["--backend", kind.as_str(), "--backend-url", &url])
        .args(["lock", "acquire", &name, "--ttl", "2s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{kind:?}: {out:?}");
    mainstay_testkit::eventually(TTL + GRACE, "status to say free after the ttl", || {
        let other = &other;
        let name = &name;
        async move { matches!(other.holder(name).await, Ok(None)) }
    })
    .await
    .unwrap();
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
per_backend!(acquired_lease_ends_at_its_reported_expiry);
