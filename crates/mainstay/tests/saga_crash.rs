//! The crash matrix: a `mainstay serve` process running 5-step HTTP sagas aborts (as with
//! kill -9, at an exact persistence point chosen by a failpoint) before or after every
//! write of the saga log, going forward and compensating; a restarted process resumes.
//! Every saga must end `completed` with each action applied once, or `failed` with every
//! applied action compensated in reverse order — checked by the participant, which sees
//! every call and applies one effect per idempotency key.

use crate::common::{mainstay, spawn_serve};
use crate::participant::{expected_effects, Participant};
use mainstay_testkit::{shared_postgres, Process};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::{Duration, Instant};

const STEPS: usize = 5;

/// Where the orchestrator keeps its log.
#[derive(Clone)]
enum Log {
    Sqlite,
    Postgres(String),
}

struct Orchestrator {
    process: Process,
    base: String,
}

async fn spawn(dir: &std::path::Path, log: &Log, failpoint: Option<(&str, u32)>) -> Orchestrator {
    let mut cmd = mainstay(dir);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("MAINSTAY_NODE_ID", "crash-matrix")
        .env("MAINSTAY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Log::Postgres(url) = log {
        cmd.args(["--txn-backend", "postgres", "--txn-url", url]);
    }
    if let Some((name, n)) = failpoint {
        cmd.env("MAINSTAY_FAILPOINTS", format!("{name}={n}"));
    }
    let (process, base) = spawn_serve("mainstay serve", &mut cmd, "127.0.0.1").await;
    Orchestrator { process, base }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn start(base: &str, key: &str, fail_at: Option<usize>) -> reqwest::Result<Value> {
    client()
        .post(format!("{base}/v1/sagas"))
        .json(
            &json!({"definition": "crash5", "input": {"fail_at": fail_at}, "idempotency_key": key}),
        )
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

/// Log writes one saga makes: creation, one per completed step, and when it fails at
/// step k, one to turn around and one per compensation.
fn writes(fail_at: Option<usize>) -> u32 {
    match fail_at {
        None => 1 + STEPS as u32,
        Some(k) => 2 + 2 * k as u32,
    }
}

/// One crash and recovery: starts `sagas` (their `fail_at`s) on a process armed to abort
/// at `failpoint`, restarts it, and checks every saga's outcome and effects.
async fn crash_run(
    p: &Participant,
    pbase: &str,
    log: &Log,
    run: &str,
    sagas: &[Option<usize>],
    failpoint: (&str, u32),
) {
    let dir = tempfile::tempdir().unwrap();
    let mut a = spawn(dir.path(), log, Some(failpoint)).await;
    let def = Participant::definition(pbase, "crash5", STEPS);
    let r = client()
        .post(format!("{}/v1/saga-definitions", a.base))
        .json(&def)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let keys: Vec<String> = (0..sagas.len()).map(|i| format!("{run}-{i}")).collect();
    // The process may die while answering: the outcome of these calls is unknown, as it
    // would be for any client; it retries with the same key below.
    let _ =
        futures::future::join_all(keys.iter().zip(sagas).map(|(k, f)| start(&a.base, k, *f))).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(code) = a.process.try_exit_code() {
            break code;
        }
        assert!(
            Instant::now() < deadline,
            "{run}: the failpoint {failpoint:?} never fired"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(
        status, None,
        "{run}: expected an abort (signal), got exit code {status:?}"
    );

    let mut b = spawn(dir.path(), log, None).await;
    for (key, fail_at) in keys.iter().zip(sagas) {
        let started = start(&b.base, key, *fail_at).await.unwrap();
        let id = started["id"].as_str().unwrap().to_string();
        let saga: Value = client()
            .get(format!("{}/v1/sagas/{id}?wait_ms=30000", b.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let expected_status = if fail_at.is_some() {
            "failed"
        } else {
            "completed"
        };
        assert_eq!(
            saga["status"], expected_status,
            "{run}: saga {key} (fail_at {fail_at:?}, failpoint {failpoint:?}): {saga:#}"
        );
        assert_eq!(
            p.effects_of(&id),
            expected_effects(STEPS, *fail_at),
            "{run}: effects of saga {key} (fail_at {fail_at:?}, failpoint {failpoint:?}); \
             calls {:#?}; saga {saga:#}",
            p.calls_of(&id)
        );
        p.check_keys(&id);
    }
    b.process.terminate(Duration::from_secs(5));
}

/// Every persistence point of one saga, before and after the write, for a saga that
/// completes and for one failing at each step 1..=4 (so compensation covers 1 to 4
/// steps): 68 crashes on SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_persistence_point_sqlite() {
    let p = Participant::default();
    let pbase = p.start().await;
    let mut runs = 0;
    for fail_at in [None, Some(1), Some(2), Some(3), Some(4)] {
        for point in ["saga.before_write", "saga.after_write"] {
            for n in 1..=writes(fail_at) {
                let run = format!("m{runs}");
                crash_run(&p, &pbase, &Log::Sqlite, &run, &[fail_at], (point, n)).await;
                runs += 1;
            }
        }
    }
    assert_eq!(runs, 68);
}

/// Randomized crashes with three concurrent sagas per process (seeded: a failure prints
/// the run, whose seed replays it).
async fn randomized(log: Log, seed: u64, runs: usize) {
    let p = Participant::default();
    let pbase = p.start().await;
    let mut rng = StdRng::seed_from_u64(seed);
    for run in 0..runs {
        let sagas: Vec<Option<usize>> = (0..3)
            .map(|_| match rng.random_range(0..5usize) {
                0 => None,
                k => Some(k),
            })
            .collect();
        let total: u32 = sagas.iter().map(|f| writes(*f)).sum();
        let point = if rng.random_bool(0.5) {
            "saga.before_write"
        } else {
            "saga.after_write"
        };
        let n = rng.random_range(1..=total);
        let name = format!("r{seed}-{run}");
        crash_run(&p, &pbase, &log, &name, &sagas, (point, n)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_crashes_sqlite() {
    randomized(Log::Sqlite, 0x5a6a, 70).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_crashes_postgres() {
    let pg = shared_postgres();
    let url = pg.database().await.unwrap();
    randomized(Log::Postgres(url), 0x9e37, 70).await;
}
