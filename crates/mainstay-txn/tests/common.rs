//! A scripted participant and a fresh saga log per test.

use mainstay_testkit::{shared_postgres, BackendKind};
use mainstay_txn::saga::{
    handler_fn, Call, Orchestrator, OrchestratorBuilder, SagaDefinition, SagaLog, StepContext,
    StepDefinition, StepError,
};
use serde_json::{json, Value};
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// A fresh log on `kind` (SQLite file in a temp dir, or a fresh PostgreSQL database),
/// plus whatever must live as long as it.
pub async fn fresh_log(kind: BackendKind) -> (Arc<dyn SagaLog>, Box<dyn Any + Send>) {
    match kind {
        BackendKind::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let log =
                mainstay_txn::saga::sqlite::SqliteSagaLog::open(dir.path().join("txn.db")).unwrap();
            (Arc::new(log), Box::new(dir))
        }
        BackendKind::Postgres => {
            let pg = shared_postgres();
            let url = pg.database().await.unwrap();
            let log = mainstay_txn::saga::postgres::PostgresSagaLog::connect(&url)
                .await
                .unwrap();
            (Arc::new(log), Box::new(pg))
        }
        other => panic!("no saga log on {other:?}"),
    }
}

/// How a scripted step behaves.
#[derive(Clone, Debug)]
pub enum Act {
    Ok,
    /// A business refusal (no effect).
    Refuse,
    /// Transient failures this many times, then success.
    FlakyTimes(u32),
    /// Waits for the notify, then succeeds.
    Block(Arc<Notify>, Arc<Notify>),
}

/// One call the participant received.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    pub saga_id: String,
    pub step: usize,
    pub compensating: bool,
    pub key: String,
}

/// A participant whose steps follow a script, deduplicating effects by idempotency key.
#[derive(Default)]
pub struct Participant {
    pub actions: Mutex<HashMap<usize, Act>>,
    /// Compensation failures to produce per step before succeeding.
    pub compensation_failures: Mutex<HashMap<usize, u32>>,
    pub received: Mutex<Vec<Received>>,
    /// Effects applied, in order (one per idempotency key).
    pub effects: Mutex<Vec<Received>>,
    flaky_seen: Mutex<HashMap<String, u32>>,
}

impl Participant {
    pub fn new() -> Arc<Self> {
        Arc::new(Participant::default())
    }

    pub fn script(&self, step: usize, act: Act) {
        self.actions.lock().unwrap().insert(step, act);
    }

    pub fn fail_compensation(&self, step: usize, times: u32) {
        self.compensation_failures
            .lock()
            .unwrap()
            .insert(step, times);
    }

    fn receive(&self, ctx: &StepContext) -> Received {
        let r = Received {
            saga_id: ctx.saga_id.clone(),
            step: ctx.step,
            compensating: ctx.compensating,
            key: ctx.idempotency_key.clone(),
        };
        self.received.lock().unwrap().push(r.clone());
        r
    }

    /// Applies the effect once per idempotency key.
    fn apply(&self, r: Received) -> bool {
        let mut effects = self.effects.lock().unwrap();
        if effects.iter().any(|e| e.key == r.key) {
            return false;
        }
        effects.push(r);
        true
    }

    async fn action(self: Arc<Self>, ctx: StepContext) -> Result<Value, StepError> {
        let r = self.receive(&ctx);
        let act = self
            .actions
            .lock()
            .unwrap()
            .get(&ctx.step)
            .cloned()
            .unwrap_or(Act::Ok);
        match act {
            Act::Ok => {}
            Act::Refuse => {
                return Err(StepError::Business(format!("step {} refused", ctx.step)));
            }
            Act::FlakyTimes(n) => {
                let mut seen = self.flaky_seen.lock().unwrap();
                let c = seen.entry(ctx.idempotency_key.clone()).or_default();
                *c += 1;
                if *c <= n {
                    return Err(StepError::Transient {
                        message: format!("flaky {c}/{n}"),
                        retry_after: None,
                    });
                }
            }
            Act::Block(entered, release) => {
                entered.notify_one();
                release.notified().await;
            }
        }
        self.apply(r);
        Ok(json!({ "step": ctx.step, "seen_outputs": ctx.outputs.len() }))
    }

    async fn compensate(self: Arc<Self>, ctx: StepContext) -> Result<Value, StepError> {
        let r = self.receive(&ctx);
        {
            let mut fails = self.compensation_failures.lock().unwrap();
            if let Some(n) = fails.get_mut(&ctx.step) {
                if *n > 0 {
                    *n -= 1;
                    return Err(StepError::Business(format!(
                        "compensation of step {} failed",
                        ctx.step
                    )));
                }
            }
        }
        self.apply(r);
        Ok(Value::Null)
    }

    /// Registers the `action` and `compensate` handlers.
    pub fn install(self: &Arc<Self>, b: OrchestratorBuilder) -> OrchestratorBuilder {
        let a = self.clone();
        let c = self.clone();
        b.handler("action", handler_fn(move |ctx| a.clone().action(ctx)))
            .handler(
                "compensate",
                handler_fn(move |ctx| c.clone().compensate(ctx)),
            )
    }

    /// Effects applied for one saga, in order, as `(step, compensating)`.
    pub fn effects_of(&self, saga_id: &str) -> Vec<(usize, bool)> {
        self.effects
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.saga_id == saga_id)
            .map(|e| (e.step, e.compensating))
            .collect()
    }

    /// Calls received for one saga (with duplicates).
    pub fn received_of(&self, saga_id: &str) -> Vec<Received> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.saga_id == saga_id)
            .cloned()
            .collect()
    }
}

/// A definition of `n` handler steps with fast retries.
pub fn definition(name: &str, n: usize) -> SagaDefinition {
    let steps = (0..n)
        .map(|i| {
            let mut s = StepDefinition::new(format!("step{i}"), Call::handler("action"))
                .compensate_with(Call::handler("compensate"));
            s.retry.base_delay_ms = 1;
            s.retry.max_delay_ms = 5;
            s.compensation_retry.base_delay_ms = 1;
            s.compensation_retry.max_delay_ms = 5;
            s
        })
        .collect();
    SagaDefinition::new(name, steps)
}

/// An orchestrator over `log` with the participant's handlers.
pub fn orchestrator(log: Arc<dyn SagaLog>, p: &Arc<Participant>, node: &str) -> Orchestrator {
    p.install(Orchestrator::builder_arc(log).node_id(node))
        .build()
}

/// Generates `mod $name { sqlite, postgres }` calling `super::$name(kind)`.
#[macro_export]
macro_rules! per_log {
    ($name:ident) => {
        mod $name {
            use mainstay_testkit::BackendKind;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(BackendKind::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(BackendKind::Postgres).await
            }
        }
    };
}
