//! Saga orchestration: given a script, when the saga runs (or crashes), then its log and
//! the participant's effects say what the guarantees promise.

use crate::common::*;
use crate::per_log;
use mainstay_testkit::BackendKind;
use mainstay_txn::saga::{SagaStatus, StartOptions, StepStatus};
use mainstay_txn::TxnError;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(20);

async fn completes_in_order_with_context(kind: BackendKind) {
    let (log, _keep) = fresh_log(kind).await;
    let p = Participant::new();
    let o = orchestrator(log, &p, "n1");
    o.register(&definition("order", 3)).await.unwrap();
    let (saga, created) = o
        .start_saga("order", json!({"order": 7}), StartOptions::default())
        .await
        .unwrap();
    assert!(created);
    let done = o.wait(&saga.id, WAIT).await.unwrap();
    assert_eq!(done.status, SagaStatus::Completed);
    assert_eq!(
        p.effects_of(&saga.id),
        vec![(0, false), (1, false), (2, false)]
    );
    // Each step saw the outputs of the steps before it.
    for (i, s) in done.steps.iter().enumerate() {
        assert_eq!(s.status, StepStatus::Completed);
        assert_eq!(s.output, Some(json!({"step": i, "seen_outputs": i})));
    }
    let events: Vec<String> = o
        .history(&saga.id, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.event)
        .collect();
    assert_eq!(
        events,
        [
            "saga_started",
            "step_started",
            "step_completed",
            "step_started",
            "step_completed",
            "step_started",
            "step_completed",
            "saga_completed"
        ]
    );
    // The outcome counter moves just after the final transition is logged, so a reader of
    // the log (as `wait` is) can be a moment ahead of it.
    mainstay_testkit::eventually(Duration::from_secs(5), "the completed counter", || {
        let n = o.metrics().completed;
        async move { n >= 1 }
    })
    .await
    .unwrap();
    assert_eq!(o.metrics().completed, 1);
}
per_log!(completes_in_order_with_context);

async fn business_failure_compensates_earlier_steps_in_reverse(kind: BackendKind) {
    let (log, _keep) = fresh_log(kind).await;
    let p = Participant::new();
    p.script(3, Act::Refuse);
    let o = orchestrator(log, &p, "n1");
    o.register(&definition("order", 5)).await.unwrap();
    let (saga, _) = o
        .start_saga("order", json!({}), StartOptions::default())
        .await
        .unwrap();
    let done = o.wait(&saga.id, WAIT).await.unwrap();
    assert_eq!(done.status, SagaStatus::Failed, "{done:?}");
    // Steps 0..=2 applied, then compensated 2, 1, 0; step 3 refused (no effect, no
    // compensation); step 4 never ran.
    assert_eq!(
        p.effects_of(&saga.id),
        vec![
            (0, false),
            (1, false),
            (2, false),
            (2, true),
            (1, true),
            (0, true)
        ]
    );
    let st: Vec<StepStatus> = done.steps.iter().map(|s| s.status).collect();
    use StepStatus::*;
    assert_eq!(
        st,
        vec![Compensated, Compensated, Compensated, Failed, Pending]
    );
    assert!(done
        .error
        .as_deref()
        .unwrap_or("")
        .contains("step 3 refused"));
}
per_log!(business_failure_compensates_earlier_steps_in_reverse);

async fn failing_compensation_parks_then_operator_retry_finishes(kind: BackendKind) {
    let (log, _keep) = fresh_log(kind).await;
    let p = Participant::new();
    p.script(2, Act::Refuse);
    // Three failures use up the default three attempts; the operator's retry succeeds.
    p.fail_compensation(1, 3);
    let o = orchestrator(log, &p, "n1");
    o.register(&definition("order", 3)).await.unwrap();
    let (saga, _) = o
        .start_saga("order", json!({}), StartOptions::default())
        .await
        .unwrap();
    let parked = o.wait(&saga.id, WAIT).await.unwrap();
    assert_eq!(parked.status, SagaStatus::CompensationFailed, "{parked:?}");
    assert_eq!(parked.steps[1].status, StepStatus::CompensationFailed);
    assert!(parked.steps[1]
        .error
        .as_deref()
        .unwrap()
        .contains("compensation of step 1 failed"));
    // Step 0 is not compensated before step 1 is.
    assert_eq!(p.effects_of(&saga.id), vec![(0, false), (1, false)]);
    assert_eq!(
        o.list(Some(SagaStatus::CompensationFailed), 10)
            .await
            .unwrap()
            .len(),
        1
    );

    o.retry(&saga.id).await.unwrap();
    let done = o.wait(&saga.id, WAIT).await.unwrap();
    assert_eq!(done.status, SagaStatus::Failed, "{done:?}");
    assert_eq!(
        p.effects_of(&saga.id),
        vec![(0, false), (1, false), (1, true), (0, true)]
    );
    // Retrying a saga that is not parked is refused, naming its status.
    match o.retry(&saga.id).await {
        Err(TxnError::InvalidState { status, .. }) => assert_eq!(status, "failed"),
        other => panic!("expected InvalidState, got {other:?}"),
    }
}
per_log!(failing_compensation_parks_then_operator_retry_finishes);

async fn operator_abort_of_parked_saga_is_final(kind: BackendKind) {
    let (log, _keep) = fresh_log(kind).await;
    let p = Participant::new();
    p.script(1, Act::Refuse);
    p.fail_compensation(0, 100);
    let o = orchestrator(log, &p, "n1");
    o.register(&definition("order", 2)).await.unwrap();
    let (saga, _) = o
        .start_saga("order", json!({}), StartOptions::default())
        .await
        .unwrap();
    assert_eq!(
        o.wait(&saga.id, WAIT).await.unwrap().status,
        SagaStatus::CompensationFailed
    );
    assert_eq!(o.abort(&saga.id).await.unwrap().status, SagaStatus::Aborted);
    assert_eq!(o.get(&saga.id).await.unwrap().status, SagaStatus::Aborted);
    assert!(matches!(
        o.retry(&saga.id).await,
        Err(TxnError::InvalidState { .. })
    ));
}
per_log!(operator_abort_of_parked_saga_is_final);

async fn one_saga_per_idempotency_key(kind: BackendKind) {
    let (log, _keep) = fresh_log(kind).await;
    let p = Participant::new();
    let o = orchestrator(log, &p, "n1");
    o.register(&definition("order", 2)).await.unwrap();
    let opts = StartOptions {
        idempotency_key: Some("order-42".into()),
    };
    let starts = futures::future::join_all(
        (0..8).map(|_| o.start_saga("order", json!({"n": 1}), opts.clone())),
    )
    .await;
    let ids: std::collections::HashSet<String> = starts
        .iter()
        .map(|r| r.as_ref().unwrap().0.id.clone())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(starts.iter().filter(|r| r.as_ref().unwrap().1).count(), 1);
    let id = ids.into_iter().next().unwrap();
    o.wait(&id, WAIT).await.unwrap();
    assert_eq!(p.effects_of(&id), vec![(0, false), (1, false)]);
    assert_eq!(o.list(None, 100).await.unwrap().len(), 1);
}
per_log!(one_saga_per_idempotency_key);

async fn transient_failures_are_retried_with_one_key(kind: BackendKind) {
    let (log, _keep) = fresh_log(kind).await;
    let p = Participant::new();
    p.script(1, Act::FlakyTimes(2));
    let o = orchestrator(log, &p, "n1");
    o.register(&definition("order", 2)).await.unwrap();
    let (saga, _) = o
        .start_saga("order", json!({}), StartOptions::default())
        .await
        .unwrap();
    assert_eq!(
        o.wait(&saga.id, WAIT).await.unwrap().status,
        SagaStatus::Completed
    );
    let keys: Vec<String> = p
        .received_of(&saga.id)
        .into_iter()
        .filter(|r| r.step == 1)
        .map(|r| r.key)
        .collect();
    // Two transient failures, then success: three calls, one key, one effect.
    assert_eq!(keys, vec![format!("{}/1", saga.id); 3]);
    assert_eq!(p.effects_of(&saga.id), vec![(0, false), (1, false)]);
}
per_log!(transient_failures_are_retried_with_one_key);

async fn exhausted_retries_compensate_the_uncertain_step_too(kind: BackendKind) {
    let (log, _keep) = fresh_log(kind).await;
    let p = Participant::new();
    p.script(1, Act::FlakyTimes(100));
    let o = orchestrator(log, &p, "n1");
    o.register(&definition("order", 3)).await.unwrap();
    let (saga, _) = o
        .start_saga("order", json!({}), StartOptions::default())
        .await
        .unwrap();
    let done = o.wait(&saga.id, WAIT).await.unwrap();
    assert_eq!(done.status, SagaStatus::Failed);
    assert!(
        done.error
            .as_deref()
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{:?}",
        done.error
    );
    assert_eq!(
        p.effects_of(&saga.id),
        vec![(0, false), (1, true), (0, true)]
    );
}
per_log!(exhausted_retries_compensate_the_uncertain_step_too);

async fn deadline_turns_the_saga_around(kind: BackendKind) {
    let (log, _keep) = fresh_log(kind).await;
    let p = Participant::new();
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    p.script(1, Act::Block(entered.clone(), release.clone()));
    let o = orchestrator(log, &p, "n1");
    let mut def = definition("order", 3);
    def.deadline_ms = Some(300);
    o.register(&def).await.unwrap();
    let (saga, _) = o
        .start_saga("order", json!({}), StartOptions::default())
        .await
        .unwrap();
    let done = o.wait(&saga.id, WAIT).await.unwrap();
    assert_eq!(done.status, SagaStatus::Failed, "{done:?}");
    assert!(done.error.as_deref().unwrap().contains("deadline"));
    // Step 1 was cut off mid-call: its outcome is unknown, so it is compensated too.
    assert_eq!(
        p.effects_of(&saga.id),
        vec![(0, false), (1, true), (0, true)]
    );
    let events: Vec<String> = o
        .history(&saga.id, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.event)
        .collect();
    assert!(
        events.contains(&"deadline_exceeded".to_string()),
        "{events:?}"
    );
}
per_log!(deadline_turns_the_saga_around);

async fn abort_of_running_saga_compensates(kind: BackendKind) {
    let (log, _keep) = fresh_log(kind).await;
    let p = Participant::new();
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    p.script(1, Act::Block(entered.clone(), release.clone()));
    let o = orchestrator(log, &p, "n1");
    o.register(&definition("order", 4)).await.unwrap();
    let (saga, _) = o
        .start_saga("order", json!({}), StartOptions::default())
        .await
        .unwrap();
    entered.notified().await;
    assert!(o.abort(&saga.id).await.unwrap().abort_requested);
    release.notify_one();
    let done = o.wait(&saga.id, WAIT).await.unwrap();
    assert_eq!(done.status, SagaStatus::Failed);
    // The in-flight step 1 finished, then the saga turned around; step 2 never ran.
    assert_eq!(
        p.effects_of(&saga.id),
        vec![(0, false), (1, false), (1, true), (0, true)]
    );
    assert_eq!(done.steps[2].status, StepStatus::Pending);
}
per_log!(abort_of_running_saga_compensates);

/// A crash mid-step: the orchestrator's runtime is dropped (every task and connection
/// gone, as with kill -9); a new orchestrator with the same node id resumes at once and
/// re-issues the in-flight call with the same idempotency key.
async fn crash_mid_step_resumes_with_the_same_key(kind: BackendKind) {
    let (log, _keep) = fresh_log(kind).await;
    let p = Participant::new();
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    p.script(2, Act::Block(entered.clone(), release.clone()));
    let (log2, p2) = (log.clone(), p.clone());
    let (id_tx, id_rx) = std::sync::mpsc::channel();
    let crashed = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let o = orchestrator(log2, &p2, "n1");
            o.register(&definition("order", 4)).await.unwrap();
            let (saga, _) = o
                .start_saga("order", json!({}), StartOptions::default())
                .await
                .unwrap();
            id_tx.send(saga.id).unwrap();
            entered.notified().await;
        });
        rt.shutdown_background();
    });
    let id = id_rx.recv().unwrap();
    crashed.join().unwrap();
    p.script(2, Act::Ok);
    drop(release);

    let o = orchestrator(log, &p, "n1");
    assert_eq!(o.start().await.unwrap(), 1);
    let done = o.wait(&id, WAIT).await.unwrap();
    assert_eq!(done.status, SagaStatus::Completed);
    assert_eq!(
        p.effects_of(&id),
        vec![(0, false), (1, false), (2, false), (3, false)]
    );
    let step2: Vec<String> = p
        .received_of(&id)
        .into_iter()
        .filter(|r| r.step == 2)
        .map(|r| r.key)
        .collect();
    assert_eq!(
        step2,
        vec![format!("{id}/2"); 2],
        "step 2 was re-issued with the same key"
    );
    assert_eq!(o.metrics().resumed, 1);
}
per_log!(crash_mid_step_resumes_with_the_same_key);

/// Node A stalls mid-step past its lease; node B takes the saga over and finishes it;
/// A's late write is fenced off and changes nothing.
async fn stalled_node_is_fenced_off(kind: BackendKind) {
    let (log, _keep) = fresh_log(kind).await;
    let pa = Participant::new();
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    pa.script(1, Act::Block(entered.clone(), release.clone()));
    // A never calls start(), so nothing renews its 300 ms lease while it stalls.
    let a = pa
        .install(
            mainstay_txn::saga::Orchestrator::builder_arc(log.clone())
                .node_id("a")
                .lease(Duration::from_millis(300)),
        )
        .build();
    a.register(&definition("order", 3)).await.unwrap();
    let (saga, _) = a
        .start_saga("order", json!({}), StartOptions::default())
        .await
        .unwrap();
    entered.notified().await;

    let pb = Participant::new();
    let b = orchestrator(log.clone(), &pb, "b");
    mainstay_testkit::eventually(WAIT, "A's lease to expire", || async {
        log.claimable("b", 10).await.unwrap().contains(&saga.id)
    })
    .await
    .unwrap();
    assert_eq!(b.start().await.unwrap(), 1);
    let done = b.wait(&saga.id, WAIT).await.unwrap();
    assert_eq!(done.status, SagaStatus::Completed);
    let history_len = done.history_len;

    release.notify_one();
    mainstay_testkit::eventually(WAIT, "A's driver to stop", || async {
        a.metrics().active == 0
    })
    .await
    .unwrap();
    let after = b.get(&saga.id).await.unwrap();
    assert_eq!(after.status, SagaStatus::Completed);
    assert_eq!(
        after.history_len, history_len,
        "A's late write must not land"
    );
    assert_eq!(
        b.history(&saga.id, 0).await.unwrap().len() as u64,
        history_len
    );
}
per_log!(stalled_node_is_fenced_off);

async fn bad_definitions_are_refused_with_the_field(kind: BackendKind) {
    use mainstay_txn::saga::{Call, SagaDefinition, StepDefinition};
    let (log, _keep) = fresh_log(kind).await;
    let p = Participant::new();
    let o = orchestrator(log, &p, "n1");
    let field = |r: Result<(), TxnError>| match r {
        Err(TxnError::InvalidArgument { field, .. }) => field,
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    let step = |url: &str| StepDefinition::new("s", Call::post(url));
    assert_eq!(
        field(o.register(&SagaDefinition::new("x", vec![])).await),
        "steps"
    );
    assert_eq!(
        field(
            o.register(&SagaDefinition::new("a/b", vec![step("http://h/x")]))
                .await
        ),
        "name"
    );
    assert_eq!(
        field(
            o.register(&SagaDefinition::new("x", vec![step("ftp://h/x")]))
                .await
        ),
        "steps[0].action.url"
    );
    assert_eq!(
        field(
            o.register(&SagaDefinition::new("x", vec![step("not a url")]))
                .await
        ),
        "steps[0].action.url"
    );
    assert_eq!(
        field(
            o.register(&SagaDefinition::new(
                "x",
                vec![step("http://h/a"), step("http://h/b")]
            ))
            .await
        ),
        "steps[1].name"
    );
    assert_eq!(
        field(
            o.register(&SagaDefinition::new(
                "x",
                vec![StepDefinition::new("s", Call::handler("nope"))]
            ))
            .await
        ),
        "steps[0].action.handler"
    );
    assert!(matches!(
        o.start_saga("missing", json!({}), StartOptions::default())
            .await,
        Err(TxnError::NotFound {
            what: "definition",
            ..
        })
    ));
    assert!(
        o.definitions().await.unwrap().is_empty(),
        "nothing was stored"
    );
}
per_log!(bad_definitions_are_refused_with_the_field);
