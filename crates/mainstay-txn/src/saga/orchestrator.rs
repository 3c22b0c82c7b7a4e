//! The orchestrator: drives sagas through the log, resumes them after a crash.

use super::definition::{Call, SagaDefinition};
use super::{
    http, operator, Created, HistoryEntry, Saga, SagaEvent, SagaLog, SagaStatus, SagaSummary,
    StepState, StepStatus,
};
use crate::error::TxnError;
use async_trait::async_trait;
use mainstay_core::clock::now_ms;
use mainstay_core::failpoint;
use mainstay_resilience::retry::{Decision, RetryError};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use tokio::sync::broadcast;

/// What a step call receives: the saga's input and the outputs of the steps before it.
#[derive(Clone, Debug, Serialize)]
pub struct StepContext {
    /// The saga's id.
    pub saga_id: String,
    /// The definition's name.
    pub saga: String,
    /// The step's index (0-based).
    pub step: usize,
    /// The step's name.
    pub step_name: String,
    /// `{saga_id}/{step}` for an action, `{saga_id}/{step}/compensate` for a
    /// compensation; the same on every attempt and after a crash.
    pub idempotency_key: String,
    /// True when this is the compensation.
    pub compensating: bool,
    /// The saga's input.
    pub input: Value,
    /// Outputs of the completed steps before this one, by step name.
    pub outputs: Map<String, Value>,
}

/// How a step call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The participant refused (e.g. out of stock): no effect, compensate, do not retry.
    #[error("{0}")]
    Business(String),
    /// Might succeed later (5xx, timeout, connection error): retried per the step's policy.
    #[error("{message}")]
    Transient {
        /// What happened.
        message: String,
        /// The participant asked to wait this long.
        retry_after: Option<Duration>,
    },
}

/// A step implemented in Rust (register it with [`OrchestratorBuilder::handler`] and
/// name it in a [`Call::handler`]).
#[async_trait]
pub trait StepHandler: Send + Sync + 'static {
    /// Runs the action or compensation for `ctx`; must be idempotent per
    /// `ctx.idempotency_key`.
    async fn call(&self, ctx: StepContext) -> Result<Value, StepError>;
}

struct FnHandler<F>(F);

#[async_trait]
impl<F, Fut> StepHandler for FnHandler<F>
where
    F: Fn(StepContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, StepError>> + Send + 'static,
{
    async fn call(&self, ctx: StepContext) -> Result<Value, StepError> {
        (self.0)(ctx).await
    }
}

/// A [`StepHandler`] from an async closure.
pub fn handler_fn<F, Fut>(f: F) -> Arc<dyn StepHandler>
where
    F: Fn(StepContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, StepError>> + Send + 'static,
{
    Arc::new(FnHandler(f))
}

/// Options for [`Orchestrator::start_saga`].
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// One saga per key and definition: starting again with the same key returns the
    /// existing saga. Default: none.
    pub idempotency_key: Option<String>,
}

/// Builds an [`Orchestrator`].
pub struct OrchestratorBuilder {
    log: Arc<dyn SagaLog>,
    node_id: String,
    lease: Duration,
    handlers: HashMap<String, Arc<dyn StepHandler>>,
    http: Option<reqwest::Client>,
}

impl OrchestratorBuilder {
    /// This node's name in the log. A restarted node with the same id resumes its sagas at
    /// once; another id waits for their leases to expire. Default: the host name (env
    /// `HOSTNAME`, then `/etc/hostname`), else `local`.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = id.into();
        self
    }

    /// How long a node's claim on a saga lasts without renewal (renewed every third of
    /// it). Default: 15 s.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(100));
        self
    }

    /// Registers a Rust step handler under `name`.
    pub fn handler(mut self, name: impl Into<String>, handler: Arc<dyn StepHandler>) -> Self {
        self.handlers.insert(name.into(), handler);
        self
    }

    /// The HTTP client for HTTP steps. Default: a client with no overall timeout (each
    /// step sets its own).
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Builds the orchestrator; call [`Orchestrator::start`] to resume unfinished sagas.
    pub fn build(self) -> Orchestrator {
        let (events, _) = broadcast::channel(1024);
        Orchestrator {
            inner: Arc::new(Inner {
                log: self.log,
                node_id: self.node_id,
                lease: self.lease,
                handlers: RwLock::new(self.handlers),
                http: self.http.unwrap_or_else(crate::participant_client),
                events,
                driving: Mutex::new(HashSet::new()),
                definitions: Mutex::new(HashMap::new()),
                counters: Counters::default(),
            }),
        }
    }
}

fn default_node_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_string())
}

#[derive(Default)]
struct Counters {
    started: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    parked: AtomicU64,
    aborted: AtomicU64,
    resumed: AtomicU64,
}

/// Saga counts since this orchestrator started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OrchestratorMetrics {
    /// Sagas started here.
    pub started: u64,
    /// Sagas that ended `completed` here.
    pub completed: u64,
    /// Sagas that ended `failed` (compensated) here.
    pub failed: u64,
    /// Sagas parked as `compensation_failed` here.
    pub parked: u64,
    /// Parked sagas aborted by an operator here.
    pub aborted: u64,
    /// Unfinished sagas this node took over (after a restart or another node's death).
    pub resumed: u64,
    /// Sagas being driven now.
    pub active: u64,
}

struct Inner {
    log: Arc<dyn SagaLog>,
    node_id: String,
    lease: Duration,
    handlers: RwLock<HashMap<String, Arc<dyn StepHandler>>>,
    http: reqwest::Client,
    events: broadcast::Sender<SagaEvent>,
    driving: Mutex<HashSet<String>>,
    /// Definitions read recently, so a start costs no extra read; entries expire after
    /// [`DEFINITION_TTL`] so another node's re-registration is seen.
    definitions: Mutex<HashMap<String, (tokio::time::Instant, SagaDefinition)>>,
    counters: Counters,
}

const DEFINITION_TTL: Duration = Duration::from_secs(1);

/// Runs sagas durably. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("log", &self.inner.log.kind())
            .field("node_id", &self.inner.node_id)
            .finish()
    }
}

/// What a driver does after a transition.
enum Next {
    Continue,
    Done,
}

impl Orchestrator {
    /// A builder over `log`.
    pub fn builder(log: impl SagaLog) -> OrchestratorBuilder {
        Self::builder_arc(Arc::new(log))
    }

    /// A builder over a shared log.
    pub fn builder_arc(log: Arc<dyn SagaLog>) -> OrchestratorBuilder {
        OrchestratorBuilder {
            log,
            node_id: default_node_id(),
            lease: Duration::from_secs(15),
            handlers: HashMap::new(),
            http: None,
        }
    }

    /// The log's kind (`sqlite`, `postgres`).
    pub fn log_kind(&self) -> &'static str {
        self.inner.log.kind()
    }

    /// Resumes every unfinished saga this node may claim, all at once, and keeps doing so
    /// in the background every third of the lease (taking over sagas whose owner's lease
    /// expired, and sagas an operator retried) while renewing this node's leases. Returns how many sagas it resumed now. Call once.
    pub async fn start(&self) -> Result<usize, TxnError> {
        let resumed = self.inner.resume_claimable().await?;
        let weak = Arc::downgrade(&self.inner);
        let period = self.inner.lease / 3;
        tokio::spawn(maintain(weak, period));
        Ok(resumed)
    }

    /// Registers (or replaces) a definition. Running sagas keep the definition they
    /// started with.
    pub async fn register(&self, def: &SagaDefinition) -> Result<(), TxnError> {
        def.validate()?;
        for (i, step) in def.steps.iter().enumerate() {
            for (field, call) in [
                ("action", Some(&step.action)),
                ("compensation", step.compensation.as_ref()),
            ] {
                if let Some(h) = call.and_then(|c| c.handler.as_deref()) {
                    if !self.read_handlers().contains_key(h) {
                        return Err(TxnError::invalid_at(
                            format!("steps[{i}].{field}.handler"),
                            format!("no handler named {h:?} is registered in this orchestrator"),
                        ));
                    }
                }
            }
        }
        self.inner.log.put_definition(def).await?;
        self.inner
            .definitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(def.name.clone(), (tokio::time::Instant::now(), def.clone()));
        Ok(())
    }

    async fn cached_definition(&self, name: &str) -> Result<SagaDefinition, TxnError> {
        if let Some((at, def)) = self
            .inner
            .definitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            if at.elapsed() < DEFINITION_TTL {
                return Ok(def.clone());
            }
        }
        let def = self.definition(name).await?;
        self.inner
            .definitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), (tokio::time::Instant::now(), def.clone()));
        Ok(def)
    }

    /// A registered definition.
    pub async fn definition(&self, name: &str) -> Result<SagaDefinition, TxnError> {
        self.inner
            .log
            .definition(name)
            .await?
            .ok_or_else(|| TxnError::NotFound {
                what: "definition",
                id: name.to_string(),
            })
    }

    /// All registered definitions.
    pub async fn definitions(&self) -> Result<Vec<SagaDefinition>, TxnError> {
        self.inner.log.definitions().await
    }

    /// Starts a saga of the definition `name` with `input`, and drives it in the
    /// background. Returns the saga as stored and whether this call created it (false:
    /// one with the same idempotency key existed).
    pub async fn start_saga(
        &self,
        name: &str,
        input: Value,
        opts: StartOptions,
    ) -> Result<(Saga, bool), TxnError> {
        if let Some(key) = &opts.idempotency_key {
            if key.is_empty() || key.chars().count() > 256 {
                return Err(TxnError::invalid(
                    "idempotency_key",
                    "an idempotency key must be 1 to 256 characters",
                ));
            }
        }
        let definition = self.cached_definition(name).await?;
        let now = now_ms();
        let mut steps: Vec<StepState> = definition
            .steps
            .iter()
            .map(|s| StepState {
                name: s.name.clone(),
                status: StepStatus::Pending,
                output: None,
                error: None,
            })
            .collect();
        steps[0].status = StepStatus::Running;
        let mut saga = Saga {
            id: mainstay_core::id::unguessable(),
            deadline_at_ms: definition.deadline_ms.map(|d| now + d),
            definition,
            idempotency_key: opts.idempotency_key,
            status: SagaStatus::Running,
            input,
            steps,
            error: None,
            created_at_ms: now,
            updated_at_ms: now,
            history_len: 0,
            abort_requested: false,
        };
        let history = vec![
            entry(&mut saga, "saga_started", None, None),
            entry(&mut saga, "step_started", Some(0), None),
        ];
        failpoint::hit("saga.before_write");
        let lease_ms = self.inner.lease.as_millis() as u64;
        match self
            .inner
            .log
            .create(&saga, &history, &self.inner.node_id, lease_ms)
            .await?
        {
            Created::Existing(existing) => Ok((*existing, false)),
            Created::New(epoch) => {
                failpoint::hit("saga.after_write");
                self.inner.counters.started.fetch_add(1, Ordering::Relaxed);
                self.inner.publish(&saga, &history);
                self.inner.spawn_driver(epoch, saga.clone(), true);
                Ok((saga, true))
            }
        }
    }

    /// One saga.
    pub async fn get(&self, id: &str) -> Result<Saga, TxnError> {
        self.inner
            .log
            .get(id)
            .await?
            .ok_or_else(|| TxnError::NotFound {
                what: "saga",
                id: id.to_string(),
            })
    }

    /// Sagas, newest first, optionally of one status.
    pub async fn list(
        &self,
        status: Option<SagaStatus>,
        limit: usize,
    ) -> Result<Vec<SagaSummary>, TxnError> {
        self.inner.log.list(status, limit.clamp(1, 10_000)).await
    }

    /// A saga's history after entry `after` (0 for all).
    pub async fn history(&self, id: &str, after: u64) -> Result<Vec<HistoryEntry>, TxnError> {
        self.get(id).await?;
        self.inner.log.history(id, after).await
    }

    /// Transitions of sagas driven by this node, as they are logged.
    pub fn subscribe(&self) -> broadcast::Receiver<SagaEvent> {
        self.inner.events.subscribe()
    }

    /// Counts since start.
    pub fn metrics(&self) -> OrchestratorMetrics {
        let c = &self.inner.counters;
        OrchestratorMetrics {
            started: c.started.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            parked: c.parked.load(Ordering::Relaxed),
            aborted: c.aborted.load(Ordering::Relaxed),
            resumed: c.resumed.load(Ordering::Relaxed),
            active: self.inner.lock_driving().len() as u64,
        }
    }

    /// Operator retry of a parked (`compensation_failed`) saga: its compensation runs
    /// again (with a fresh retry allowance) and the saga continues backward, driven here.
    pub async fn retry(&self, id: &str) -> Result<Saga, TxnError> {
        let saga = operator::retry(self.inner.log.as_ref(), id).await?;
        self.inner.publish(&saga, &saga_last_entry(self, id).await?);
        let lease_ms = self.inner.lease.as_millis() as u64;
        if let Some((epoch, saga)) = self
            .inner
            .log
            .claim(id, &self.inner.node_id, lease_ms)
            .await?
        {
            self.inner.spawn_driver(epoch, saga, false);
        }
        Ok(saga)
    }

    /// Operator abort: see [`operator::abort`].
    pub async fn abort(&self, id: &str) -> Result<Saga, TxnError> {
        let saga = operator::abort(self.inner.log.as_ref(), id).await?;
        if saga.status == SagaStatus::Aborted {
            self.inner.counters.aborted.fetch_add(1, Ordering::Relaxed);
            self.inner.publish(&saga, &saga_last_entry(self, id).await?);
        }
        Ok(saga)
    }

    /// Waits until the saga's status is final (or `timeout` passes) and returns it.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Saga, TxnError> {
        let mut events = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let saga = self.get(id).await?;
            if saga.status.is_final() || tokio::time::Instant::now() >= deadline {
                return Ok(saga);
            }
            // Wake on this saga's next event, or poll at most every 250 ms (it may be
            // driven by another node, whose events do not reach this one).
            let wake = async {
                loop {
                    match events.recv().await {
                        Ok(e) if e.saga_id == id && e.status.is_final() => return,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => {
                            futures::future::pending::<()>().await
                        }
                    }
                }
            };
            let cap = deadline.min(tokio::time::Instant::now() + Duration::from_millis(250));
            let _ = tokio::time::timeout_at(cap, wake).await;
        }
    }

    fn read_handlers(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<dyn StepHandler>>> {
        self.inner
            .handlers
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }
}

async fn saga_last_entry(o: &Orchestrator, id: &str) -> Result<Vec<HistoryEntry>, TxnError> {
    let all = o.inner.log.history(id, 0).await?;
    Ok(all.into_iter().last().into_iter().collect())
}

/// Renews leases and adopts orphaned sagas until the orchestrator is dropped.
async fn maintain(inner: Weak<Inner>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        let lease_ms = inner.lease.as_millis() as u64;
        if let Err(e) = inner.log.renew(&inner.node_id, lease_ms).await {
            tracing::warn!(error = %e, "saga lease renewal failed");
        }
        // Sagas whose owner died, and parked sagas an operator retried from the CLI.
        if let Err(e) = inner.resume_claimable().await {
            tracing::warn!(error = %e, "saga recovery sweep failed");
        }
    }
}

fn entry(saga: &mut Saga, event: &str, step: Option<usize>, detail: Option<Value>) -> HistoryEntry {
    saga.history_len += 1;
    HistoryEntry {
        seq: saga.history_len,
        at_ms: now_ms(),
        event: event.to_string(),
        step,
        detail,
    }
}

fn err_detail(e: &str) -> Option<Value> {
    Some(serde_json::json!({ "error": e }))
}

impl Inner {
    fn lock_driving(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.driving.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, saga: &Saga, history: &[HistoryEntry]) {
        for h in history {
            let _ = self.events.send(SagaEvent {
                saga_id: saga.id.clone(),
                status: saga.status,
                entry: h.clone(),
            });
        }
    }

    async fn resume_claimable(self: &Arc<Self>) -> Result<usize, TxnError> {
        let lease_ms = self.lease.as_millis() as u64;
        let mut resumed = 0;
        let ids = self.log.claimable(&self.node_id, 10_000).await?;
        for id in ids {
            if self.lock_driving().contains(&id) {
                continue;
            }
            if let Some((epoch, saga)) = self.log.claim(&id, &self.node_id, lease_ms).await? {
                self.counters.resumed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(saga = %id, status = %saga.status, "resuming saga");
                self.spawn_driver(epoch, saga, false);
                resumed += 1;
            }
        }
        Ok(resumed)
    }

    fn spawn_driver(self: &Arc<Self>, epoch: u64, saga: Saga, fresh: bool) {
        if !self.lock_driving().insert(saga.id.clone()) {
            return;
        }
        let inner = self.clone();
        tokio::spawn(async move {
            let id = saga.id.clone();
            inner.drive(epoch, saga, fresh).await;
            inner.lock_driving().remove(&id);
        });
    }

    /// Drives one saga until it is final, fenced, or this process stops.
    async fn drive(self: &Arc<Self>, mut epoch: u64, mut saga: Saga, mut fresh: bool) {
        let mut backoff = Duration::from_millis(50);
        // True while the running step's intent was logged by this driver and its action
        // not yet called: an abort or deadline then needs no compensation for it.
        loop {
            match self.advance(epoch, &mut saga, &mut fresh).await {
                Ok(Next::Continue) => backoff = Duration::from_millis(50),
                Ok(Next::Done) => return,
                Err(TxnError::Fenced { .. }) => {
                    tracing::info!(saga = %saga.id, "saga taken over by another node");
                    return;
                }
                Err(e) => {
                    // The log is the truth: wait, then reload it (re-claiming with this
                    // node's id) and continue from what it says.
                    tracing::warn!(saga = %saga.id, error = %e, "saga log write failed; reloading");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    let lease_ms = self.lease.as_millis() as u64;
                    match self.log.claim(&saga.id, &self.node_id, lease_ms).await {
                        Ok(Some((e2, s2))) => {
                            epoch = e2;
                            saga = s2;
                            fresh = false;
                        }
                        Ok(None) => return,
                        Err(_) => {}
                    }
                }
            }
        }
    }

    /// Writes a transition; returns whether an abort was requested.
    async fn save(
        &self,
        epoch: u64,
        saga: &mut Saga,
        history: Vec<HistoryEntry>,
    ) -> Result<(), TxnError> {
        saga.updated_at_ms = now_ms();
        failpoint::hit("saga.before_write");
        let abort = self.log.save(saga, epoch, &history).await?;
        failpoint::hit("saga.after_write");
        saga.abort_requested |= abort;
        self.publish(saga, &history);
        match saga.status {
            SagaStatus::Completed => self.counters.completed.fetch_add(1, Ordering::Relaxed),
            SagaStatus::Failed => self.counters.failed.fetch_add(1, Ordering::Relaxed),
            SagaStatus::CompensationFailed => self.counters.parked.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        Ok(())
    }

    /// One transition: run the call the log says is next, and log its outcome together
    /// with the intent for the call after it.
    async fn advance(
        &self,
        epoch: u64,
        saga: &mut Saga,
        fresh: &mut bool,
    ) -> Result<Next, TxnError> {
        match saga.status {
            SagaStatus::Pending => {
                saga.status = SagaStatus::Running;
                saga.steps[0].status = StepStatus::Running;
                let h = vec![entry(saga, "step_started", Some(0), None)];
                self.save(epoch, saga, h).await?;
                Ok(Next::Continue)
            }
            SagaStatus::Running => self.forward(epoch, saga, fresh).await,
            SagaStatus::Compensating => self.backward(epoch, saga).await,
            _ => Ok(Next::Done),
        }
    }

    async fn forward(
        &self,
        epoch: u64,
        saga: &mut Saga,
        fresh: &mut bool,
    ) -> Result<Next, TxnError> {
        let Some(i) = saga
            .steps
            .iter()
            .position(|s| s.status != StepStatus::Completed)
        else {
            saga.status = SagaStatus::Completed;
            let h = vec![entry(saga, "saga_completed", None, None)];
            self.save(epoch, saga, h).await?;
            return Ok(Next::Done);
        };
        if saga.steps[i].status != StepStatus::Running {
            saga.steps[i].status = StepStatus::Running;
            let h = vec![entry(saga, "step_started", Some(i), None)];
            self.save(epoch, saga, h).await?;
            *fresh = true;
        }
        let remaining = saga
            .deadline_at_ms
            .map(|d| Duration::from_millis(d.saturating_sub(now_ms())));
        let stop = if saga.abort_requested {
            Some(("aborted by an operator", "abort_requested"))
        } else if remaining == Some(Duration::ZERO) {
            Some(("saga deadline exceeded", "deadline_exceeded"))
        } else {
            None
        };
        if let Some((reason, event)) = stop {
            // A step whose intent an earlier life logged may have been called: compensate
            // it. One this driver logged and never called is simply not run.
            let uncertain = !*fresh;
            if !uncertain {
                saga.steps[i].status = StepStatus::Pending;
            }
            return self
                .begin_compensation(epoch, saga, i, uncertain, reason, event)
                .await;
        }
        *fresh = false;
        let step = saga.definition.steps[i].clone();
        let ctx = self.context(saga, i, false);
        let policy = step.retry.policy();
        let attempt = policy.run(
            || self.invoke(&step.action, &ctx, step.timeout()),
            decide,
            |n, delay, e| tracing::debug!(saga = %ctx.saga_id, step = i, attempt = n, ?delay, error = %e, "retrying step"),
        );
        let outcome = match remaining {
            Some(rem) => match tokio::time::timeout(rem, attempt).await {
                Ok(r) => r,
                Err(_) => {
                    return self
                        .begin_compensation(
                            epoch,
                            saga,
                            i,
                            true,
                            "saga deadline exceeded during the step",
                            "deadline_exceeded",
                        )
                        .await
                }
            },
            None => attempt.await,
        };
        match outcome {
            Ok(output) => {
                saga.steps[i].status = StepStatus::Completed;
                saga.steps[i].output = Some(output);
                saga.steps[i].error = None;
                let mut h = vec![entry(saga, "step_completed", Some(i), None)];
                if i + 1 < saga.steps.len() {
                    saga.steps[i + 1].status = StepStatus::Running;
                    h.push(entry(saga, "step_started", Some(i + 1), None));
                } else {
                    saga.status = SagaStatus::Completed;
                    h.push(entry(saga, "saga_completed", None, None));
                }
                self.save(epoch, saga, h).await?;
                *fresh = true;
                Ok(if saga.status.is_final() {
                    Next::Done
                } else {
                    Next::Continue
                })
            }
            Err(RetryError::NotRetryable(StepError::Business(msg))) => {
                saga.steps[i].status = StepStatus::Failed;
                saga.steps[i].error = Some(msg.clone());
                self.begin_compensation(epoch, saga, i, false, &msg, "step_failed")
                    .await
            }
            Err(e) => {
                let msg = e.to_string();
                saga.steps[i].error = Some(msg.clone());
                self.begin_compensation(epoch, saga, i, true, &msg, "step_failed")
                    .await
            }
        }
    }

    /// Turns the saga around at step `i`. With `uncertain`, step `i` may have taken effect
    /// and is compensated too; otherwise compensation starts below it.
    async fn begin_compensation(
        &self,
        epoch: u64,
        saga: &mut Saga,
        i: usize,
        uncertain: bool,
        reason: &str,
        event: &str,
    ) -> Result<Next, TxnError> {
        saga.status = SagaStatus::Compensating;
        saga.error = Some(reason.to_string());
        let mut h = vec![entry(saga, event, Some(i), err_detail(reason))];
        if uncertain {
            saga.steps[i].status = StepStatus::Compensating;
        }
        let next = if uncertain {
            Some(i)
        } else {
            self.next_to_compensate(saga)
        };
        match next {
            Some(j) => {
                saga.steps[j].status = StepStatus::Compensating;
                h.push(entry(saga, "compensation_started", Some(j), None));
            }
            None => {
                saga.status = SagaStatus::Failed;
                h.push(entry(saga, "saga_failed", None, None));
            }
        }
        self.save(epoch, saga, h).await?;
        Ok(if saga.status.is_final() {
            Next::Done
        } else {
            Next::Continue
        })
    }

    fn next_to_compensate(&self, saga: &Saga) -> Option<usize> {
        saga.steps
            .iter()
            .rposition(|s| s.status == StepStatus::Completed)
    }

    async fn backward(&self, epoch: u64, saga: &mut Saga) -> Result<Next, TxnError> {
        let j = match saga
            .steps
            .iter()
            .rposition(|s| s.status == StepStatus::Compensating)
        {
            Some(j) => j,
            None => {
                let mut h = Vec::new();
                match self.next_to_compensate(saga) {
                    Some(j) => {
                        saga.steps[j].status = StepStatus::Compensating;
                        h.push(entry(saga, "compensation_started", Some(j), None));
                    }
                    None => {
                        saga.status = SagaStatus::Failed;
                        h.push(entry(saga, "saga_failed", None, None));
                    }
                }
                self.save(epoch, saga, h).await?;
                return Ok(if saga.status.is_final() {
                    Next::Done
                } else {
                    Next::Continue
                });
            }
        };
        let step = saga.definition.steps[j].clone();
        let outcome = match &step.compensation {
            None => Ok(Value::Null),
            Some(call) => {
                let ctx = self.context(saga, j, true);
                step.compensation_retry
                    .policy()
                    .run(
                        || self.invoke(call, &ctx, step.timeout()),
                        // Every compensation failure is retried: it must eventually apply.
                        |e| match e {
                            StepError::Transient { retry_after: Some(d), .. } => Decision::RetryAfter(*d),
                            _ => Decision::Retry,
                        },
                        |n, delay, e| tracing::debug!(saga = %ctx.saga_id, step = j, attempt = n, ?delay, error = %e, "retrying compensation"),
                    )
                    .await
            }
        };
        match outcome {
            Ok(_) => {
                saga.steps[j].status = StepStatus::Compensated;
                let mut h = vec![entry(saga, "step_compensated", Some(j), None)];
                match self.next_to_compensate(saga) {
                    Some(k) => {
                        saga.steps[k].status = StepStatus::Compensating;
                        h.push(entry(saga, "compensation_started", Some(k), None));
                    }
                    None => {
                        saga.status = SagaStatus::Failed;
                        h.push(entry(saga, "saga_failed", None, None));
                    }
                }
                self.save(epoch, saga, h).await?;
            }
            Err(e) => {
                let msg = e.to_string();
                saga.steps[j].status = StepStatus::CompensationFailed;
                saga.steps[j].error = Some(msg.clone());
                saga.status = SagaStatus::CompensationFailed;
                saga.error = Some(format!(
                    "compensation of step {:?} failed: {msg}",
                    step.name
                ));
                let h = vec![
                    entry(saga, "compensation_failed", Some(j), err_detail(&msg)),
                    entry(saga, "saga_parked", None, None),
                ];
                self.save(epoch, saga, h).await?;
            }
        }
        Ok(if saga.status.is_final() {
            Next::Done
        } else {
            Next::Continue
        })
    }

    fn context(&self, saga: &Saga, i: usize, compensating: bool) -> StepContext {
        let outputs = saga.steps[..i]
            .iter()
            .filter_map(|s| s.output.clone().map(|o| (s.name.clone(), o)))
            .collect();
        StepContext {
            saga_id: saga.id.clone(),
            saga: saga.definition.name.clone(),
            step: i,
            step_name: saga.steps[i].name.clone(),
            idempotency_key: if compensating {
                format!("{}/{i}/compensate", saga.id)
            } else {
                format!("{}/{i}", saga.id)
            },
            compensating,
            input: saga.input.clone(),
            outputs,
        }
    }

    async fn invoke(
        &self,
        call: &Call,
        ctx: &StepContext,
        timeout: Duration,
    ) -> Result<Value, StepError> {
        if let Some(url) = &call.url {
            return http::call(&self.http, call.method(), url, ctx, timeout).await;
        }
        let name = call.handler.as_deref().unwrap_or_default();
        let handler = self
            .handlers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        let Some(handler) = handler else {
            // A definition naming a handler this node lacks (a deploy in progress): retry,
            // another attempt or node may have it.
            return Err(StepError::Transient {
                message: format!("no handler named {name:?} is registered on this node"),
                retry_after: None,
            });
        };
        match tokio::time::timeout(timeout, handler.call(ctx.clone())).await {
            Ok(r) => r,
            Err(_) => Err(StepError::Transient {
                message: format!("timed out after {timeout:?}"),
                retry_after: None,
            }),
        }
    }
}

fn decide(e: &StepError) -> Decision {
    match e {
        StepError::Business(_) => Decision::Stop,
        StepError::Transient {
            retry_after: Some(d),
            ..
        } => Decision::RetryAfter(*d),
        StepError::Transient { .. } => Decision::Retry,
    }
}
