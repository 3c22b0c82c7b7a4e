//! The backend trait every engine implements, and the polling wait used by engines without
//! a native queue.

use crate::error::LockError;
use crate::lease::{Holder, Lease, LockName};
use async_trait::async_trait;
use mainstay_core::config::BackendKind;
use rand::Rng;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The outcome of one acquire attempt.
#[derive(Debug)]
pub enum TryAcquire {
    /// The lock is ours.
    Acquired(Lease),
    /// Someone else holds it (the holder, when known).
    Held(Option<Holder>),
}

/// One lock engine. Implementations must make `try_acquire` atomic (grant at most one
/// live lease per name) and issue fencing tokens that strictly increase per name.
///
/// Callers go through [`crate::LockClient`], which validates input, measures local
/// deadlines and refuses token regressions; backends may assume valid arguments.
#[async_trait]
pub trait LockBackend: Send + Sync + 'static {
    /// Which engine this is.
    fn kind(&self) -> BackendKind;

    /// One attempt: grant `name` to `lease_id` for `ttl`, or report the holder.
    async fn try_acquire(
        &self,
        name: &LockName,
        lease_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<TryAcquire, LockError>;

    /// Waits up to `wait` for the lock. The default polls [`Self::try_acquire`] with jittered
    /// backoff, woken early by releases in this process; FIFO engines override it.
    async fn acquire(
        &self,
        name: &LockName,
        lease_id: &str,
        owner: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<TryAcquire, LockError> {
        poll_acquire(self, name, lease_id, owner, ttl, wait).await
    }

    /// Extends the lease to `ttl` from now; `None` when `lease_id` does not hold the lock.
    async fn extend(
        &self,
        name: &LockName,
        lease_id: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, LockError>;

    /// Releases the lock if `lease_id` holds it; `false` when it did not (already released,
    /// expired, or not the owner). Idempotent.
    async fn release(&self, name: &LockName, lease_id: &str) -> Result<bool, LockError>;

    /// The current holder, if any.
    async fn holder(&self, name: &LockName) -> Result<Option<Holder>, LockError>;

    /// Notified on every release made through this backend value; lets pollers in the same
    /// process wake at once instead of waiting for their next poll.
    fn release_signal(&self) -> Option<&Notify> {
        None
    }
}

/// First poll delay; doubles up to [`MAX_POLL`], each delay jittered to 50–100%.
const FIRST_POLL: Duration = Duration::from_millis(2);
const MAX_POLL: Duration = Duration::from_millis(100);

/// The generic wait: try, then sleep (jittered backoff, capped by the holder's expiry and
/// the remaining wait), woken early by in-process releases. Not FIFO.
pub(crate) async fn poll_acquire<B: LockBackend + ?Sized>(
    backend: &B,
    name: &LockName,
    lease_id: &str,
    owner: &str,
    ttl: Duration,
    wait: Duration,
) -> Result<TryAcquire, LockError> {
    let deadline = Instant::now() + wait;
    let mut delay = FIRST_POLL;
    // Set by a failed attempt: it may have been granted with only its reply lost, and then
    // the next attempt finds the lock held by this very lease id.
    let mut maybe_granted = false;
    loop {
        // Register interest before trying so a release between the try and the sleep wakes us.
        let notified = backend.release_signal().map(|n| n.notified());
        let mut notified = notified.map(Box::pin);
        if let Some(n) = notified.as_mut() {
            n.as_mut().enable();
        }
        let attempt = match backend.try_acquire(name, lease_id, owner, ttl).await {
            // A transient failure (unreachable backend, no Redlock quorum) is retried while
            // the wait lasts; the last error is returned when it runs out.
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tracing::debug!(lock = %name, error = %e, "acquire attempt failed; retrying");
                maybe_granted = true;
                Err(e)
            }
            Err(e) => return Err(e),
            Ok(outcome) => Ok(outcome),
        };
        match attempt {
            Err(_) => {
                let sleep = delay.mul_f64(rand::rng().random_range(0.5..=1.0));
                tokio::time::sleep_until((Instant::now() + sleep).min(deadline)).await;
                delay = (delay * 2).min(MAX_POLL);
            }
            Ok(TryAcquire::Acquired(lease)) => return Ok(TryAcquire::Acquired(lease)),
            Ok(TryAcquire::Held(holder)) => {
                // Held — perhaps by this lease id, granted by an earlier attempt whose reply
                // was lost: release it (a no-op if another lease holds the lock) and, if it
                // was ours, try again at once. A failed release is asked again next round.
                if maybe_granted {
                    match backend.release(name, lease_id).await {
                        Ok(true) => {
                            tracing::debug!(lock = %name, "released a grant whose reply was lost");
                            maybe_granted = false;
                            continue;
                        }
                        Ok(false) => maybe_granted = false,
                        Err(_) => {}
                    }
                }
                let now = Instant::now();
                if now >= deadline {
                    return Ok(TryAcquire::Held(holder));
                }
                let mut sleep = delay.mul_f64(rand::rng().random_range(0.5..=1.0));
                if let Some(h) = &holder {
                    let until_expiry = h
                        .expires_at_ms
                        .saturating_sub(mainstay_core::clock::now_ms());
                    sleep = sleep.min(Duration::from_millis(until_expiry + 1));
                }
                let wake = (now + sleep).min(deadline);
                match notified {
                    Some(n) => {
                        tokio::select! {
                            _ = n => {}
                            _ = tokio::time::sleep_until(wake) => {}
                        }
                    }
                    None => tokio::time::sleep_until(wake).await,
                }
                delay = (delay * 2).min(MAX_POLL);
            }
        }
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::sqlite::SqliteBackend;
    use crate::{AcquireOptions, LockClient};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A real backend whose first grant's reply is lost: the grant happens, the caller
    /// gets a transient error.
    struct LoseFirstReply {
        inner: SqliteBackend,
        lost: AtomicBool,
    }

    #[async_trait]
    impl LockBackend for LoseFirstReply {
        fn kind(&self) -> BackendKind {
            self.inner.kind()
        }
        async fn try_acquire(
            &self,
            name: &LockName,
            lease_id: &str,
            owner: &str,
            ttl: Duration,
        ) -> Result<TryAcquire, LockError> {
            let outcome = self.inner.try_acquire(name, lease_id, owner, ttl).await;
            if matches!(outcome, Ok(TryAcquire::Acquired(_)))
                && !self.lost.swap(true, Ordering::SeqCst)
            {
                return Err(LockError::backend("sqlite", "reply lost (injected)"));
            }
            outcome
        }
        async fn extend(
            &self,
            name: &LockName,
            lease_id: &str,
            ttl: Duration,
        ) -> Result<Option<Lease>, LockError> {
            self.inner.extend(name, lease_id, ttl).await
        }
        async fn release(&self, name: &LockName, lease_id: &str) -> Result<bool, LockError> {
            self.inner.release(name, lease_id).await
        }
        async fn holder(&self, name: &LockName) -> Result<Option<Holder>, LockError> {
            self.inner.holder(name).await
        }
    }

    /// A waiting acquire whose first attempt was granted but lost its reply is granted on
    /// a later attempt within its wait — not refused as `Busy` by its own lost grant, which
    /// would hold the lock for the whole 60 s ttl.
    #[tokio::test]
    async fn waiting_acquire_recovers_its_own_lost_grant() {
        let dir = tempfile::tempdir().unwrap();
        let client = LockClient::new(LoseFirstReply {
            inner: SqliteBackend::open(dir.path().join("locks.db")).unwrap(),
            lost: AtomicBool::new(false),
        });
        let opts = AcquireOptions::ttl(Duration::from_secs(60))
            .owner("retrying")
            .wait(Duration::from_secs(5));
        let lease = client
            .acquire("x", &opts)
            .await
            .expect("own lost grant blocked the acquire");
        let holder = client.holder("x").await.unwrap().unwrap();
        assert_eq!(holder.fencing_token, lease.fencing_token);
        assert!(client.release("x", &lease.lease_id).await.unwrap());
        assert_eq!(client.holder("x").await.unwrap(), None);
    }
}
