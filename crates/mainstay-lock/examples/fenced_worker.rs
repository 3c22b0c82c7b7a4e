//! Two workers contend for one lock on the embedded SQLite backend; each keeps its lease
//! alive while working and stamps its writes with its fencing token. A fenced store (the
//! same rule the PostgreSQL and Redis guards apply) rejects a stale token.
//!
//! Run: `cargo run -p mainstay-lock --example fenced_worker`

use mainstay_lock::{AcquireOptions, Election, LockClient};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The protected resource: remembers the highest token it accepted.
#[derive(Default)]
struct FencedStore {
    highest: u64,
    log: Vec<String>,
}

impl FencedStore {
    fn write(&mut self, token: u64, entry: String) -> Result<(), String> {
        if token < self.highest {
            return Err(format!(
                "stale fencing token {token} (current {})",
                self.highest
            ));
        }
        self.highest = token;
        self.log.push(entry);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("mainstay-example-{}", std::process::id()));
    let locks = LockClient::new(mainstay_lock::sqlite::SqliteBackend::open(
        dir.join("locks.db"),
    )?);
    let store = Arc::new(Mutex::new(FencedStore::default()));

    let mut workers = Vec::new();
    for worker in ["alice", "bob"] {
        let (locks, store) = (locks.clone(), store.clone());
        workers.push(tokio::spawn(async move {
            let opts = AcquireOptions::ttl(Duration::from_secs(5))
                .wait(Duration::from_secs(10))
                .owner(worker);
            let lease = locks.acquire("report", &opts).await?;
            let guard = locks.keep_alive(lease)?;
            for step in 0..3 {
                if guard.is_lost() {
                    break;
                }
                let token = guard.fencing_token();
                store
                    .lock()
                    .unwrap()
                    .write(token, format!("{worker} step {step} (token {token})"))
                    .map_err(std::io::Error::other)?;
                tokio::task::yield_now().await;
            }
            guard.release().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for w in workers {
        w.await?.map_err(|e| e.to_string())?;
    }
    for line in &store.lock().unwrap().log {
        println!("{line}");
    }
    // A holder that was paused past its lease comes back with an old token: rejected.
    println!(
        "late write with token 1: {:?}",
        store.lock().unwrap().write(1, "late".into())
    );

    let election = Election::new(locks.clone());
    let term = election
        .campaign(
            "primary",
            "node-a",
            Duration::from_secs(5),
            Duration::from_secs(1),
        )
        .await?;
    println!("node-a leads with epoch {}", term.epoch());
    term.resign().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
