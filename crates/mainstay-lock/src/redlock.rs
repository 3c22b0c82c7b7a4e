//! Redlock over N independent Redis instances (the Redis distlock algorithm).
//!
//! A grant needs a majority (N/2+1) of instances within the ttl: validity =
//! ttl − elapsed − drift, drift = 1% of ttl + 2 ms; on failure the partial grants are
//! released at once. **Fencing across quorums:** each instance issues its own token (see
//! [`crate::redis`]); the grant's token is the maximum over the granting majority, and it
//! is written back to the granting instances that issued less before the lease is returned
//! (a grant whose write-back misses a majority is released and refused). When the
//! majority's counters are already in step, no write-back round is needed. Any later grant's majority intersects this
//! one in an instance whose counter is already ≥ the token, so its maximum is higher.
//!
//! Guarantees: mutual exclusion while a majority of instances is up and keeps its data,
//! and clocks run at nearly the same rate (drift < 1%). Not guaranteed: safety if an
//! instance restarts without persistence and rejoins before a ttl has passed (restart it
//! with a delay of at least the longest ttl, per the Redis docs), or across process pauses
//! — Redlock without a fenced resource is an **efficiency lock**.

use crate::backend::{LockBackend, TryAcquire};
use crate::error::LockError;
use crate::lease::{Holder, Lease, LockName};
use crate::redis::{reply_holder, RedisNode};
use async_trait::async_trait;
use futures::future::join_all;
use mainstay_core::config::BackendKind;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::{timeout, Instant};

/// Locks on a majority of independent Redis instances.
pub struct RedlockBackend {
    nodes: Vec<RedisNode>,
    node_timeout: Duration,
    released: Notify,
}

impl std::fmt::Debug for RedlockBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedlockBackend")
            .field("instances", &self.nodes.len())
            .finish()
    }
}

impl RedlockBackend {
    /// Redlock over `urls` (at least 3; an odd number is best), key prefix `mainstay:`.
    /// Instances may be down at start.
    pub fn connect(urls: &[String]) -> Result<Self, LockError> {
        Self::connect_with_prefix(urls, "mainstay:")
    }

    /// Redlock with a custom key prefix.
    pub fn connect_with_prefix(urls: &[String], prefix: &str) -> Result<Self, LockError> {
        if urls.len() < 3 {
            return Err(LockError::Config(format!(
                "redlock needs at least 3 independent Redis URLs, got {}",
                urls.len()
            )));
        }
        // Per-instance budget: small against typical ttls so dead instances cost little.
        let node_timeout = Duration::from_millis(50);
        let nodes = urls
            .iter()
            .map(|u| RedisNode::connect(u, prefix, node_timeout))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RedlockBackend {
            nodes,
            node_timeout,
            released: Notify::new(),
        })
    }

    fn quorum(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    fn drift(ttl: Duration) -> Duration {
        ttl / 100 + Duration::from_millis(2)
    }

    async fn release_all(&self, name: &LockName, lease_id: &str) -> usize {
        let calls = self
            .nodes
            .iter()
            .map(|n| timeout(self.node_timeout, n.release(name, lease_id)));
        join_all(calls)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(Ok(true))))
            .count()
    }
}

#[async_trait]
impl LockBackend for RedlockBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Redlock
    }

    async fn try_acquire(
        &self,
        name: &LockName,
        lease_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<TryAcquire, LockError> {
        let start = Instant::now();
        let calls = self
            .nodes
            .iter()
            .map(|n| timeout(self.node_timeout, n.acquire(name, lease_id, owner, ttl)));
        let replies = join_all(calls).await;
        let mut granted = Vec::new();
        let mut answered = 0;
        let mut holder = None;
        for (i, r) in replies.into_iter().enumerate() {
            if let Ok(Ok(reply)) = r {
                answered += 1;
                if reply.0 == 1 {
                    granted.push((i, reply.2));
                } else if holder.is_none() {
                    holder = reply_holder((1, reply.1, reply.2, reply.3));
                }
            }
        }
        let drift = Self::drift(ttl);
        let valid = |now: Instant| now.duration_since(start) + drift < ttl;
        if granted.len() >= self.quorum() && valid(Instant::now()) {
            let token = granted.iter().map(|g| g.1).max().unwrap_or(0);
            // Write the maximum back where an instance issued less. Instances that already
            // issued `token` hold it in both counter and lock; once a majority's counters
            // are in step (the usual case) no write-back round is needed at all.
            let behind: Vec<usize> = granted
                .iter()
                .filter(|g| g.1 < token)
                .map(|g| g.0)
                .collect();
            let raises = behind.iter().map(|i| {
                timeout(
                    self.node_timeout,
                    self.nodes[*i].raise(name, lease_id, token),
                )
            });
            let raised = (granted.len() - behind.len())
                + join_all(raises)
                    .await
                    .into_iter()
                    .filter(|r| matches!(r, Ok(Ok(true))))
                    .count();
            if raised >= self.quorum() && valid(Instant::now()) {
                let ttl = ttl - drift;
                let expires = mainstay_core::clock::now_ms()
                    + (ttl.saturating_sub(start.elapsed())).as_millis() as u64;
                return Ok(TryAcquire::Acquired(Lease::new(
                    name, lease_id, owner, token, expires, ttl, start,
                )));
            }
        }
        if !granted.is_empty() {
            self.release_all(name, lease_id).await;
        }
        if answered < self.quorum() {
            return Err(LockError::NoQuorum {
                granted: granted.len(),
                needed: self.quorum(),
                instances: self.nodes.len(),
            });
        }
        Ok(TryAcquire::Held(holder))
    }

    async fn extend(
        &self,
        name: &LockName,
        lease_id: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, LockError> {
        let start = Instant::now();
        let calls = self
            .nodes
            .iter()
            .map(|n| timeout(self.node_timeout, n.extend(name, lease_id, ttl)));
        let replies: Vec<_> = join_all(calls)
            .await
            .into_iter()
            .filter_map(|r| r.ok().and_then(Result::ok))
            .collect();
        let extended: Vec<_> = replies.iter().filter(|r| r.0 == 1).collect();
        let drift = Self::drift(ttl);
        if extended.len() >= self.quorum() && start.elapsed() + drift < ttl {
            let token = extended.iter().map(|r| r.2).max().unwrap_or(0);
            let owner = extended[0].1.clone();
            let ttl = ttl - drift;
            let expires = mainstay_core::clock::now_ms()
                + ttl.saturating_sub(start.elapsed()).as_millis() as u64;
            return Ok(Some(Lease::new(
                name, lease_id, &owner, token, expires, ttl, start,
            )));
        }
        if replies.len() >= self.quorum() {
            return Ok(None);
        }
        Err(LockError::NoQuorum {
            granted: extended.len(),
            needed: self.quorum(),
            instances: self.nodes.len(),
        })
    }

    async fn release(&self, name: &LockName, lease_id: &str) -> Result<bool, LockError> {
        let released = self.release_all(name, lease_id).await > 0;
        if released {
            self.released.notify_waiters();
        }
        Ok(released)
    }

    async fn holder(&self, name: &LockName) -> Result<Option<Holder>, LockError> {
        let calls = self
            .nodes
            .iter()
            .map(|n| timeout(self.node_timeout, n.holder(name)));
        let holders: Vec<Holder> = join_all(calls)
            .await
            .into_iter()
            .filter_map(|r| r.ok().and_then(Result::ok).flatten())
            .collect();
        // A holder counts only if a majority agrees on it (same owner and a lease stamp).
        for h in &holders {
            if holders.iter().filter(|o| o.owner == h.owner).count() >= self.quorum() {
                let token = holders
                    .iter()
                    .filter(|o| o.owner == h.owner)
                    .map(|o| o.fencing_token)
                    .max()
                    .unwrap_or(0);
                let expires = holders
                    .iter()
                    .filter(|o| o.owner == h.owner)
                    .map(|o| o.expires_at_ms)
                    .min()
                    .unwrap_or(0);
                return Ok(Some(Holder {
                    owner: h.owner.clone(),
                    fencing_token: token,
                    expires_at_ms: expires,
                }));
            }
        }
        Ok(None)
    }

    fn release_signal(&self) -> Option<&Notify> {
        Some(&self.released)
    }
}
