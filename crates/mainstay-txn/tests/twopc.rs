//! Two-phase commit against real PostgreSQL databases and both decision logs.

use crate::per_log;
use mainstay_testkit::{shared_postgres, BackendKind};
use mainstay_txn::twopc::pg::{gid, PgResource};
use mainstay_txn::twopc::{
    Coordinator, Decision, DecisionLog, Participant, ParticipantError, ParticipantRef, TxRecord,
    Vote,
};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

async fn decision_log(kind: BackendKind) -> (Arc<dyn DecisionLog>, Box<dyn std::any::Any + Send>) {
    match kind {
        BackendKind::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let log =
                mainstay_txn::twopc::SqliteDecisionLog::open(dir.path().join("t.db")).unwrap();
            (Arc::new(log), Box::new(dir))
        }
        _ => {
            let pg = shared_postgres();
            let url = pg.database().await.unwrap();
            let log = mainstay_txn::twopc::PostgresDecisionLog::connect(&url)
                .await
                .unwrap();
            (Arc::new(log), Box::new(pg))
        }
    }
}

async fn first_decision_wins(kind: BackendKind) {
    let (log, _keep) = decision_log(kind).await;
    let tx = TxRecord {
        id: "t1".into(),
        coordinator: "n".into(),
        participants: vec![],
        decision: None,
        reason: None,
        finished: false,
        created_at_ms: 1,
        decided_at_ms: None,
        finished_at_ms: None,
    };
    log.begin(&tx).await.unwrap();
    assert_eq!(
        log.decide("t1", Decision::Abort, Some("swept"))
            .await
            .unwrap(),
        Decision::Abort
    );
    assert_eq!(
        log.decide("t1", Decision::Commit, None).await.unwrap(),
        Decision::Abort
    );
    // A transaction the log never saw (an orphan) is created, decided.
    assert_eq!(
        log.decide("t2", Decision::Commit, None).await.unwrap(),
        Decision::Commit
    );
    assert_eq!(
        log.decide("t2", Decision::Abort, None).await.unwrap(),
        Decision::Commit
    );
    assert_eq!(log.unfinished(10).await.unwrap().len(), 2);
    log.finish("t1").await.unwrap();
    let t1 = log.get("t1").await.unwrap().unwrap();
    assert_eq!(t1.state(), mainstay_txn::twopc::TxState::Aborted);
    assert_eq!(t1.reason.as_deref(), Some("swept"));
    assert_eq!(log.unfinished(10).await.unwrap().len(), 1);
}
per_log!(first_decision_wins);

struct Db {
    resource: PgResource,
    client: tokio_postgres::Client,
    _keep: Box<dyn std::any::Any + Send>,
}

async fn db(name: &str) -> Db {
    let pg = shared_postgres();
    let url = pg.database().await.unwrap();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL CHECK (balance >= 0));
             INSERT INTO accounts VALUES (1, 100)",
        )
        .await
        .unwrap();
    Db {
        resource: PgResource::connect(name, &url).unwrap(),
        client,
        _keep: Box::new(pg),
    }
}

async fn balance(d: &Db) -> i32 {
    d.client
        .query_one("SELECT balance FROM accounts WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0)
}

async fn prepared(d: &Db) -> usize {
    d.resource.prepared().await.unwrap().len()
}

fn pref(name: &str) -> ParticipantRef {
    ParticipantRef {
        name: name.into(),
        url: None,
        postgres: Some(name.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_branches_commit_or_abort_atomically() {
    let (a, b) = (db("a").await, db("b").await);
    let (log, _keep) = decision_log(BackendKind::Sqlite).await;
    let c = Coordinator::builder(log)
        .postgres(a.resource.clone())
        .postgres(b.resource.clone())
        .build();

    // A transfer of 30 from a to b commits on both.
    let txid = Coordinator::new_txid();
    let ba = a.resource.begin(&txid).await.unwrap();
    ba.batch_execute("UPDATE accounts SET balance = balance - 30 WHERE id = 1")
        .await
        .unwrap();
    let bb = b.resource.begin(&txid).await.unwrap();
    bb.batch_execute("UPDATE accounts SET balance = balance + 30 WHERE id = 1")
        .await
        .unwrap();
    let out = c
        .run(
            &txid,
            vec![(pref("a"), Arc::new(ba)), (pref("b"), Arc::new(bb))],
        )
        .await
        .unwrap();
    assert_eq!(out.decision, Decision::Commit);
    assert!(out.finished);
    assert_eq!((balance(&a).await, balance(&b).await), (70, 130));

    // A branch whose PREPARE fails (a deferred constraint fires at prepare) votes no:
    // both roll back, nothing stays prepared.
    let txid = Coordinator::new_txid();
    let ba = a.resource.begin(&txid).await.unwrap();
    ba.batch_execute(
        "CREATE OR REPLACE FUNCTION fail_at_commit() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'deferred check failed'; END $$;
         CREATE TABLE IF NOT EXISTS audit2 (n int);
         CREATE CONSTRAINT TRIGGER fail AFTER INSERT ON audit2 DEFERRABLE INITIALLY DEFERRED
         FOR EACH ROW EXECUTE FUNCTION fail_at_commit();
         INSERT INTO audit2 VALUES (1);
         UPDATE accounts SET balance = balance - 10 WHERE id = 1",
    )
    .await
    .unwrap();
    let bb = b.resource.begin(&txid).await.unwrap();
    bb.batch_execute("UPDATE accounts SET balance = balance + 10 WHERE id = 1")
        .await
        .unwrap();
    let out = c
        .run(
            &txid,
            vec![(pref("a"), Arc::new(ba)), (pref("b"), Arc::new(bb))],
        )
        .await
        .unwrap();
    assert_eq!(out.decision, Decision::Abort);
    assert!(
        out.reason
            .as_deref()
            .unwrap()
            .contains("deferred check failed"),
        "{out:?}"
    );
    assert_eq!((balance(&a).await, balance(&b).await), (70, 130));
    assert_eq!((prepared(&a).await, prepared(&b).await), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeper_resolves_orphans_through_the_log() {
    let a = db("a").await;
    let (log, _keep) = decision_log(BackendKind::Sqlite).await;
    // Two orphans: one the log decided commit for, one it never heard of.
    a.client
        .batch_execute("CREATE TABLE ledger (n int PRIMARY KEY)")
        .await
        .unwrap();
    for (txid, n) in [("decided", 5), ("unknown", 7)] {
        a.client
            .batch_execute(&format!(
                "BEGIN; INSERT INTO ledger VALUES ({n}); PREPARE TRANSACTION '{}'",
                gid(txid, "a")
            ))
            .await
            .unwrap();
    }
    log.decide("decided", Decision::Commit, None).await.unwrap();
    // Younger than the threshold: left alone.
    assert_eq!(
        a.resource
            .sweep(log.as_ref(), Duration::from_secs(3600))
            .await
            .unwrap(),
        (0, 0)
    );
    assert_eq!(prepared(&a).await, 2);
    assert_eq!(
        a.resource
            .sweep(log.as_ref(), Duration::ZERO)
            .await
            .unwrap(),
        (1, 1)
    );
    assert_eq!(prepared(&a).await, 0);
    let rows: Vec<i32> = a
        .client
        .query("SELECT n FROM ledger ORDER BY n", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rows,
        vec![5],
        "the decided commit applied, the orphan rolled back"
    );
    assert_eq!(
        log.get("unknown").await.unwrap().unwrap().decision,
        Some(Decision::Abort)
    );
}

/// A participant that is down during phase 2, then comes back.
struct Flaky {
    up: AtomicBool,
    commits: AtomicUsize,
}

#[async_trait::async_trait]
impl Participant for Flaky {
    async fn prepare(&self, _: &str) -> Result<Vote, ParticipantError> {
        Ok(Vote::Commit)
    }
    async fn commit(&self, _: &str) -> Result<(), ParticipantError> {
        if !self.up.load(Ordering::SeqCst) {
            return Err(ParticipantError("down".into()));
        }
        self.commits.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn abort(&self, _: &str) -> Result<(), ParticipantError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_two_is_redelivered_until_acknowledged() {
    let (log, _keep) = decision_log(BackendKind::Sqlite).await;
    let flaky = Arc::new(Flaky {
        up: AtomicBool::new(false),
        commits: AtomicUsize::new(0),
    });
    let c = Coordinator::builder(log.clone())
        .participant("flaky", flaky.clone())
        .phase2_attempts(2)
        .build();
    let r = ParticipantRef {
        name: "flaky".into(),
        url: None,
        postgres: None,
    };
    let txid = Coordinator::new_txid();
    let out = c.run(&txid, vec![(r, flaky.clone())]).await.unwrap();
    assert_eq!(out.decision, Decision::Commit);
    assert!(!out.finished, "the participant was down");
    assert_eq!(
        c.get(&txid).await.unwrap().state(),
        mainstay_txn::twopc::TxState::Committing
    );
    assert_eq!(c.recover().await.unwrap(), 0, "still down");
    flaky.up.store(true, Ordering::SeqCst);
    assert_eq!(c.recover().await.unwrap(), 1);
    assert_eq!(flaky.commits.load(Ordering::SeqCst), 1);
    assert_eq!(
        c.get(&txid).await.unwrap().state(),
        mainstay_txn::twopc::TxState::Committed
    );
    assert_eq!(c.decision(&txid).await.unwrap(), Some(Decision::Commit));
}
