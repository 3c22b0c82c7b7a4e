//! Lease keep-alive: renew at ttl/3, and a `lost()` signal that fires *before* the
//! backend's expiry when renewal fails.
//!
//! The local deadline of a lease is `sent + ttl`, where `sent` is the instant the last
//! successful grant/extend request left this process; the backend started counting later,
//! so its expiry is no earlier. `lost()` fires at `deadline - ttl/10` at the latest (the
//! margin absorbs clock-rate differences between hosts and gives the holder time to stop),
//! or at once when the backend says the lease is gone. Renewal stops before an explicit
//! release, so a renewal can never resurrect a released lock (Redisson #7272).

use crate::client::LockClient;
use crate::error::LockError;
use crate::lease::{Lease, LockName};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A lease being kept alive in the background. Dropping it stops renewal and releases the
/// lease in the background (best effort); call [`KeepAlive::release`] to learn the outcome.
#[derive(Debug)]
pub struct KeepAlive {
    client: LockClient,
    name: LockName,
    lease: watch::Receiver<Lease>,
    lost: CancellationToken,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    released: bool,
}

/// How long before the local deadline `lost()` fires.
fn margin(ttl: Duration) -> Duration {
    ttl / 10
}

impl KeepAlive {
    pub(crate) fn start(client: LockClient, name: LockName, lease: Lease) -> Self {
        let (tx, rx) = watch::channel(lease);
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(renew(
            client.clone(),
            name.clone(),
            tx,
            lost.clone(),
            stop.clone(),
        ));
        KeepAlive {
            client,
            name,
            lease: rx,
            lost,
            stop,
            task: Some(task),
            released: false,
        }
    }

    /// The lease as last renewed (same token, later expiry).
    pub fn lease(&self) -> Lease {
        self.lease.borrow().clone()
    }

    /// The fencing token of this lease.
    pub fn fencing_token(&self) -> u64 {
        self.lease.borrow().fencing_token
    }

    /// Resolves when the lease is lost or about to be: renewal failed until less than
    /// ttl/10 of the last confirmed validity remained, or the backend said the lease is
    /// gone. Stop touching the protected resource when it fires.
    pub fn lost(&self) -> WaitForCancellationFutureOwned {
        self.lost.clone().cancelled_owned()
    }

    /// True once [`Self::lost`] has fired.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Stops renewal, then releases. `true` if the lease still held the lock.
    pub async fn release(mut self) -> Result<bool, LockError> {
        self.stop_renewal().await;
        self.released = true;
        let lease = self.lease();
        self.client
            .release_name(&self.name, &lease.lease_id, lease.ttl())
            .await
    }

    async fn stop_renewal(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.stop.cancel();
        if self.released {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let name = self.name.clone();
            let lease = self.lease();
            let task = self.task.take();
            handle.spawn(async move {
                if let Some(task) = task {
                    let _ = task.await;
                }
                let _ = client
                    .release_name(&name, &lease.lease_id, lease.ttl())
                    .await;
            });
        }
    }
}

async fn renew(
    client: LockClient,
    name: LockName,
    tx: watch::Sender<Lease>,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let (lease_id, ttl) = {
        let l = tx.borrow();
        (l.lease_id.clone(), l.ttl())
    };
    let mut valid_until = tx.borrow().valid_until();
    let mut next = Instant::now() + ttl / 3;
    loop {
        let lost_at = valid_until.checked_sub(margin(ttl)).unwrap_or(valid_until);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(lost_at) => {
                tracing::warn!(lock = %name, "lease renewal failed until the deadline; signalling lost");
                lost.cancel();
                return;
            }
            _ = tokio::time::sleep_until(next) => {}
        }
        // One renewal attempt, bounded by the moment we must declare the lease lost.
        let attempt = client.extend_name(&name, &lease_id, ttl);
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(lost_at) => {
                tracing::warn!(lock = %name, "lease renewal did not answer before the deadline; signalling lost");
                lost.cancel();
                return;
            }
            r = attempt => r,
        };
        match outcome {
            Ok(lease) => {
                valid_until = lease.valid_until();
                next = Instant::now() + ttl / 3;
                let _ = tx.send(lease);
            }
            Err(LockError::NotHolder { .. }) => {
                tracing::warn!(lock = %name, "backend says the lease is gone; signalling lost");
                lost.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(lock = %name, error = %e, "lease renewal failed; retrying");
                next = Instant::now() + (ttl / 10).max(Duration::from_millis(1));
            }
        }
    }
}
