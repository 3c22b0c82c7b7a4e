//! The 2PC coordinator.

use super::{
    Decision, DecisionLog, HttpParticipant, Outcome, Participant, ParticipantError, ParticipantRef,
    TxRecord, Vote,
};
use crate::error::TxnError;
use mainstay_core::clock::now_ms;
use mainstay_core::failpoint;
use mainstay_resilience::retry::{Backoff, Decision as RetryDecision, Jitter, Retry};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Builds a [`Coordinator`].
pub struct CoordinatorBuilder {
    log: Arc<dyn DecisionLog>,
    node_id: String,
    participants: HashMap<String, Arc<dyn Participant>>,
    #[cfg(feature = "postgres")]
    postgres: Vec<super::pg::PgResource>,
    http: Option<reqwest::Client>,
    prepare_timeout: Duration,
    phase2_attempts: u32,
    recovery_interval: Duration,
    sweep_after: Duration,
}

impl CoordinatorBuilder {
    /// This node's name in the log: after a restart with the same name, its undecided
    /// transactions are aborted at once. Default: the host name, else `local`.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = id.into();
        self
    }

    /// Registers a participant by name, for phase 2 after a restart (HTTP participants
    /// need no registration: their URL is in the log).
    pub fn participant(mut self, name: impl Into<String>, p: Arc<dyn Participant>) -> Self {
        self.participants.insert(name.into(), p);
        self
    }

    /// Registers a PostgreSQL resource: phase 2 after a restart, and the orphan sweeper.
    #[cfg(feature = "postgres")]
    pub fn postgres(mut self, resource: super::pg::PgResource) -> Self {
        self.postgres.push(resource);
        self
    }

    /// How long phase 1 waits for each vote; a participant slower than this votes no.
    /// Default: 10 s.
    pub fn prepare_timeout(mut self, d: Duration) -> Self {
        self.prepare_timeout = d;
        self
    }

    /// Attempts per participant in phase 2 before leaving it to the recovery loop.
    /// Default: 5.
    pub fn phase2_attempts(mut self, n: u32) -> Self {
        self.phase2_attempts = n.max(1);
        self
    }

    /// How often the background loop re-drives unfinished transactions and sweeps
    /// PostgreSQL resources. Default: 1 s.
    pub fn recovery_interval(mut self, d: Duration) -> Self {
        self.recovery_interval = d.max(Duration::from_millis(10));
        self
    }

    /// Age after which the sweeper resolves a prepared transaction of ours. Default: 5 s.
    pub fn sweep_after(mut self, d: Duration) -> Self {
        self.sweep_after = d;
        self
    }

    /// Builds; call [`Coordinator::start`] to recover and run the background loop.
    pub fn build(self) -> Coordinator {
        let client = self.http.unwrap_or_else(crate::participant_client);
        Coordinator {
            inner: Arc::new(Inner {
                log: self.log,
                node_id: self.node_id,
                participants: self.participants,
                #[cfg(feature = "postgres")]
                postgres: self
                    .postgres
                    .into_iter()
                    .map(|r| (r.name().to_string(), r))
                    .collect(),
                http: client,
                prepare_timeout: self.prepare_timeout,
                phase2_attempts: self.phase2_attempts,
                recovery_interval: self.recovery_interval,
                sweep_after: self.sweep_after,
                active: Mutex::new(HashSet::new()),
            }),
        }
    }
}

struct Inner {
    log: Arc<dyn DecisionLog>,
    node_id: String,
    participants: HashMap<String, Arc<dyn Participant>>,
    #[cfg(feature = "postgres")]
    postgres: HashMap<String, super::pg::PgResource>,
    http: reqwest::Client,
    prepare_timeout: Duration,
    phase2_attempts: u32,
    recovery_interval: Duration,
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    sweep_after: Duration,
    /// Transactions this process is running now: recovery leaves them alone.
    active: Mutex<HashSet<String>>,
}

/// Runs two-phase commits over a durable [`DecisionLog`]. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("log", &self.inner.log.kind())
            .field("node_id", &self.inner.node_id)
            .finish()
    }
}

struct ActiveGuard<'a>(&'a Inner, String);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

impl Coordinator {
    /// A builder over `log`: 10 s prepare timeout, 5 phase-2 attempts, 1 s recovery loop.
    pub fn builder(log: Arc<dyn DecisionLog>) -> CoordinatorBuilder {
        CoordinatorBuilder {
            log,
            node_id: std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "local".into()),
            participants: HashMap::new(),
            #[cfg(feature = "postgres")]
            postgres: Vec::new(),
            http: None,
            prepare_timeout: Duration::from_secs(10),
            phase2_attempts: 5,
            recovery_interval: Duration::from_secs(1),
            sweep_after: Duration::from_secs(5),
        }
    }

    /// A fresh unguessable transaction id.
    pub fn new_txid() -> String {
        mainstay_core::id::unguessable()
    }

    /// The log's kind.
    pub fn log_kind(&self) -> &'static str {
        self.inner.log.kind()
    }

    /// Finishes every unfinished transaction it can now, then keeps doing so (and sweeping
    /// PostgreSQL resources) in the background until the coordinator is dropped. Returns
    /// how many it finished now.
    pub async fn start(&self) -> Result<usize, TxnError> {
        let n = self.recover().await?;
        tokio::spawn(background(Arc::downgrade(&self.inner)));
        Ok(n)
    }

    /// Runs a two-phase commit of `branches` as transaction `txid` (from
    /// [`Coordinator::new_txid`]; a PostgreSQL branch must have been begun with the same
    /// id). Returns the decision; `Err` only when the log fails, in which case no
    /// participant was told to commit.
    pub async fn run(
        &self,
        txid: &str,
        branches: Vec<(ParticipantRef, Arc<dyn Participant>)>,
    ) -> Result<Outcome, TxnError> {
        validate(&branches)?;
        let inner = &self.inner;
        inner
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(txid.to_string());
        let _guard = ActiveGuard(inner, txid.to_string());
        let record = TxRecord {
            id: txid.to_string(),
            coordinator: inner.node_id.clone(),
            participants: branches.iter().map(|(r, _)| r.clone()).collect(),
            decision: None,
            reason: None,
            finished: false,
            created_at_ms: now_ms(),
            decided_at_ms: None,
            finished_at_ms: None,
        };
        if let Err(e) = inner.log.begin(&record).await {
            // Nothing was prepared: roll back whatever the branches hold.
            for (_, p) in &branches {
                let _ = p.abort(txid).await;
            }
            return Err(e);
        }
        failpoint::hit("twopc.after_begin");
        let votes = futures::future::join_all(branches.iter().map(|(r, p)| async move {
            match tokio::time::timeout(inner.prepare_timeout, p.prepare(txid)).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => Vote::Abort(format!("{}: {e}", r.name)),
                Err(_) => Vote::Abort(format!(
                    "{}: no vote within {:?}",
                    r.name, inner.prepare_timeout
                )),
            }
        }))
        .await;
        failpoint::hit("twopc.after_prepare");
        let reason = votes.iter().find_map(|v| match v {
            Vote::Abort(why) => Some(why.clone()),
            Vote::Commit => None,
        });
        let wanted = if reason.is_some() {
            Decision::Abort
        } else {
            Decision::Commit
        };
        let decision = inner.log.decide(txid, wanted, reason.as_deref()).await?;
        failpoint::hit("twopc.after_decision");
        let finished = inner.phase2(txid, decision, &branches).await;
        if finished {
            inner.log.finish(txid).await?;
        }
        Ok(Outcome {
            id: txid.to_string(),
            decision,
            reason: if decision == Decision::Abort {
                reason.or_else(|| Some("aborted by recovery before the decision".into()))
            } else {
                None
            },
            finished,
        })
    }

    /// The decision for `txid`, for a participant that restarted while prepared. `None`:
    /// still preparing (ask again) — or unknown to this log.
    pub async fn decision(&self, txid: &str) -> Result<Option<Decision>, TxnError> {
        Ok(self.inner.log.get(txid).await?.and_then(|t| t.decision))
    }

    /// One transaction.
    pub async fn get(&self, txid: &str) -> Result<TxRecord, TxnError> {
        self.inner
            .log
            .get(txid)
            .await?
            .ok_or_else(|| TxnError::NotFound {
                what: "transaction",
                id: txid.to_string(),
            })
    }

    /// Transactions, newest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<TxRecord>, TxnError> {
        self.inner.log.list(limit.clamp(1, 10_000)).await
    }

    /// Re-drives phase 2 of unfinished transactions, deciding abort for undecided ones
    /// this node began in an earlier life (or any node began more than two prepare
    /// timeouts ago). Returns how many it finished.
    pub async fn recover(&self) -> Result<usize, TxnError> {
        self.inner.recover().await
    }
}

fn validate(branches: &[(ParticipantRef, Arc<dyn Participant>)]) -> Result<(), TxnError> {
    if branches.is_empty() {
        return Err(TxnError::invalid(
            "participants",
            "a transaction needs at least one participant",
        ));
    }
    for (i, (r, _)) in branches.iter().enumerate() {
        if r.name.is_empty() || r.name.chars().count() > 64 {
            return Err(TxnError::invalid_at(
                format!("participants[{i}].name"),
                "participant names must be 1 to 64 characters",
            ));
        }
        if branches[..i].iter().any(|(o, _)| o.name == r.name) {
            return Err(TxnError::invalid_at(
                format!("participants[{i}].name"),
                format!("duplicate participant name {:?}", r.name),
            ));
        }
    }
    Ok(())
}

async fn background(inner: Weak<Inner>) {
    loop {
        let interval = match inner.upgrade() {
            Some(i) => i.recovery_interval,
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.recover().await {
            tracing::warn!(error = %e, "2PC recovery failed");
        }
        #[cfg(feature = "postgres")]
        for r in inner.postgres.values() {
            if let Err(e) = r.sweep(inner.log.as_ref(), inner.sweep_after).await {
                tracing::warn!(resource = r.name(), error = %e, "prepared-transaction sweep failed");
            }
        }
    }
}

impl Inner {
    fn resolve(&self, r: &ParticipantRef) -> Option<Arc<dyn Participant>> {
        if let Some(url) = &r.url {
            return Some(Arc::new(HttpParticipant::new(
                self.http.clone(),
                url.clone(),
                self.prepare_timeout,
            )));
        }
        #[cfg(feature = "postgres")]
        if let Some(res) = r.postgres.as_ref().and_then(|n| self.postgres.get(n)) {
            return Some(Arc::new(res.clone()));
        }
        self.participants.get(&r.name).cloned()
    }

    /// Delivers `decision` to every branch, each retried with backoff. True when all
    /// acknowledged.
    async fn phase2(
        &self,
        txid: &str,
        decision: Decision,
        branches: &[(ParticipantRef, Arc<dyn Participant>)],
    ) -> bool {
        let policy = Retry::builder()
            .max_attempts(self.phase2_attempts)
            .backoff(Backoff {
                base: Duration::from_millis(20),
                max: Duration::from_secs(1),
                multiplier: 2.0,
                jitter: Jitter::Full,
            })
            .build();
        let acks = futures::future::join_all(branches.iter().map(|(r, p)| {
            let policy = policy.clone();
            async move {
                let result = policy
                    .run(
                        || async {
                            match decision {
                                Decision::Commit => p.commit(txid).await,
                                Decision::Abort => p.abort(txid).await,
                            }
                        },
                        |_: &ParticipantError| RetryDecision::Retry,
                        |_, _, _| {},
                    )
                    .await;
                failpoint::hit("twopc.phase2");
                if let Err(e) = &result {
                    tracing::warn!(txid, participant = %r.name, error = %e, "phase 2 not acknowledged; recovery will retry");
                }
                result.is_ok()
            }
        }))
        .await;
        acks.into_iter().all(|ok| ok)
    }

    async fn recover(&self) -> Result<usize, TxnError> {
        let mut finished = 0;
        for tx in self.log.unfinished(1000).await? {
            if self
                .active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&tx.id)
            {
                continue;
            }
            let decision = match tx.decision {
                Some(d) => d,
                None => {
                    let age = Duration::from_millis(now_ms().saturating_sub(tx.created_at_ms));
                    if tx.coordinator != self.node_id && age < self.prepare_timeout * 2 {
                        continue; // Another node may still be collecting votes.
                    }
                    self.log
                        .decide(
                            &tx.id,
                            Decision::Abort,
                            Some("coordinator restarted before deciding (presumed abort)"),
                        )
                        .await?
                }
            };
            let mut branches = Vec::new();
            let mut unresolved = false;
            for r in &tx.participants {
                match self.resolve(r) {
                    Some(p) => branches.push((r.clone(), p)),
                    None => {
                        unresolved = true;
                        tracing::warn!(txid = %tx.id, participant = %r.name, "cannot reach participant for recovery: register it");
                    }
                }
            }
            if !unresolved && self.phase2(&tx.id, decision, &branches).await {
                self.log.finish(&tx.id).await?;
                finished += 1;
            }
        }
        Ok(finished)
    }
}
