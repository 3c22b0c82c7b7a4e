//! [`LockClient`]: validation, local deadlines, token-regression refusal, release retries.

use crate::backend::{LockBackend, TryAcquire};
use crate::error::LockError;
use crate::keepalive::KeepAlive;
use crate::lease::{Holder, Lease, LockName, MAX_TTL, MAX_WAIT};
use mainstay_core::config::BackendKind;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How to acquire a lock.
#[derive(Clone, Debug)]
pub struct AcquireOptions {
    /// Lease ttl. Default: 30 s. Must be in 1 ms ..= 24 h.
    pub ttl: Duration,
    /// How long to wait for a busy lock. Default: 0 (try once). At most 24 h.
    pub wait: Duration,
    /// Owner string shown to others. Default: `pid@hostname` of this process.
    pub owner: Option<String>,
}

impl Default for AcquireOptions {
    fn default() -> Self {
        AcquireOptions {
            ttl: Duration::from_secs(30),
            wait: Duration::ZERO,
            owner: None,
        }
    }
}

impl AcquireOptions {
    /// Options with this ttl and no wait.
    pub fn ttl(ttl: Duration) -> Self {
        AcquireOptions {
            ttl,
            ..Default::default()
        }
    }

    /// Sets the wait. Default: 0.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Sets the owner string. Default: `pid@hostname`.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }
}

/// The default owner string: `pid@hostname`.
fn default_owner() -> String {
    static OWNER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    OWNER
        .get_or_init(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into());
            format!("{}@{}", std::process::id(), host)
        })
        .clone()
}

/// Releases a lease id in the background when an acquire is dropped before it finished.
/// Borrows on the happy path; clones only when it must act.
struct ReleaseOnDrop<'a> {
    backend: &'a Arc<dyn LockBackend>,
    name: &'a LockName,
    lease_id: &'a str,
    armed: bool,
}

impl ReleaseOnDrop<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (backend, name, lease_id) = (
                self.backend.clone(),
                self.name.clone(),
                self.lease_id.to_string(),
            );
            handle.spawn(async move {
                let _ = backend.release(&name, &lease_id).await;
            });
        }
    }
}

/// Checks a ttl is usable as a lease.
pub(crate) fn validate_ttl(ttl: Duration) -> Result<(), LockError> {
    if ttl.is_zero() {
        return Err(LockError::InvalidArgument {
            field: "ttl",
            reason: "must be at least 1 ms".into(),
        });
    }
    if ttl > MAX_TTL {
        return Err(LockError::InvalidArgument {
            field: "ttl",
            reason: format!("{} ms is longer than the 24 h maximum", ttl.as_millis()),
        });
    }
    Ok(())
}

/// Entry point for locks: cheap to clone, shareable across tasks.
#[derive(Clone)]
pub struct LockClient {
    backend: Arc<dyn LockBackend>,
    highest_token: Arc<Mutex<HashMap<String, u64>>>,
}

impl std::fmt::Debug for LockClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockClient")
            .field("backend", &self.backend.kind())
            .finish()
    }
}

impl LockClient {
    /// A client over `backend`.
    pub fn new(backend: impl LockBackend) -> Self {
        Self::from_arc(Arc::new(backend))
    }

    /// A client over a shared backend.
    pub fn from_arc(backend: Arc<dyn LockBackend>) -> Self {
        LockClient {
            backend,
            highest_token: Arc::default(),
        }
    }

    /// The engine behind this client.
    pub fn kind(&self) -> BackendKind {
        self.backend.kind()
    }

    /// Acquires `name`, waiting up to `opts.wait`. Fails with [`LockError::Busy`] naming the
    /// holder when the wait runs out.
    pub async fn acquire(&self, name: &str, opts: &AcquireOptions) -> Result<Lease, LockError> {
        self.acquire_name(&LockName::new(name)?, opts).await
    }

    /// One attempt, no waiting: [`LockError::Busy`] if held.
    pub async fn try_acquire(&self, name: &str, opts: &AcquireOptions) -> Result<Lease, LockError> {
        let opts = AcquireOptions {
            wait: Duration::ZERO,
            ..opts.clone()
        };
        self.acquire(name, &opts).await
    }

    pub(crate) async fn acquire_name(
        &self,
        name: &LockName,
        opts: &AcquireOptions,
    ) -> Result<Lease, LockError> {
        validate_ttl(opts.ttl)?;
        if opts.wait > MAX_WAIT {
            return Err(LockError::InvalidArgument {
                field: "wait",
                reason: format!(
                    "{} ms is longer than the 24 h maximum",
                    opts.wait.as_millis()
                ),
            });
        }
        let owner = match &opts.owner {
            Some(o) if o.chars().count() > 256 || o.chars().any(char::is_control) => {
                return Err(LockError::InvalidArgument {
                    field: "owner",
                    reason: "must be at most 256 characters without control characters".into(),
                })
            }
            Some(o) => o.clone(),
            None => default_owner(),
        };
        let lease_id = mainstay_core::id::unguessable();
        // Cancel safety: if this future is dropped mid-call (a timeout, a disconnected HTTP
        // client), the guard releases `lease_id` in the background. The id is chosen here,
        // before any request is sent, so the cleanup finds a grant or queue entry whether
        // or not its reply ever arrived (a ZooKeeper node or etcd key left behind would
        // block every later waiter).
        let guard = ReleaseOnDrop {
            backend: &self.backend,
            name,
            lease_id: &lease_id,
            armed: true,
        };
        let outcome = if opts.wait.is_zero() {
            self.backend
                .try_acquire(name, &lease_id, &owner, opts.ttl)
                .await
        } else {
            self.backend
                .acquire(name, &lease_id, &owner, opts.ttl, opts.wait)
                .await
        };
        // A failed call may still have been granted: the request ran and only its reply
        // was lost (a response timeout, a connection cut after the commit). Then nobody
        // knows the lease and the lock would stay taken until its ttl — so on an error the
        // guard releases the lease id in the background too (a no-op if nothing was
        // granted).
        match &outcome {
            Ok(_) => guard.disarm(),
            Err(_) => drop(guard),
        }
        let outcome = outcome?;
        match outcome {
            TryAcquire::Held(holder) => Err(LockError::Busy {
                name: name.to_string(),
                holder,
            }),
            TryAcquire::Acquired(lease) => {
                self.check_monotonic(name, &lease).await?;
                Ok(lease)
            }
        }
    }

    /// Refuses (and releases) a grant whose token is not above the highest seen.
    async fn check_monotonic(&self, name: &LockName, lease: &Lease) -> Result<(), LockError> {
        let previous = {
            let mut map = self.highest_token.lock().unwrap_or_else(|p| p.into_inner());
            let previous = map.get(name.as_str()).copied().unwrap_or(0);
            if lease.fencing_token > previous {
                match map.get_mut(name.as_str()) {
                    Some(highest) => *highest = lease.fencing_token,
                    None => {
                        map.insert(name.as_str().to_string(), lease.fencing_token);
                    }
                }
                return Ok(());
            }
            previous
        };
        let _ = self.backend.release(name, &lease.lease_id).await;
        tracing::error!(lock = %name, issued = lease.fencing_token, highest_seen = previous, "fencing token regression; refusing grant");
        Err(LockError::FencingRegression {
            name: name.to_string(),
            issued: lease.fencing_token,
            highest_seen: previous,
        })
    }

    /// Extends the lease by `ttl` from now. [`LockError::NotHolder`] if it no longer holds.
    pub async fn extend(
        &self,
        name: &str,
        lease_id: &str,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        self.extend_name(&LockName::new(name)?, lease_id, ttl).await
    }

    pub(crate) async fn extend_name(
        &self,
        name: &LockName,
        lease_id: &str,
        ttl: Duration,
    ) -> Result<Lease, LockError> {
        validate_ttl(ttl)?;
        match self.backend.extend(name, lease_id, ttl).await? {
            Some(lease) => Ok(lease),
            None => Err(LockError::NotHolder {
                name: name.to_string(),
            }),
        }
    }

    /// Releases the lease: `true` if it held the lock, `false` if it did not (already
    /// released or expired, or not the owner — the lock is untouched then). Transient
    /// backend errors are retried with backoff for up to `retry_for`; then the last error
    /// is returned (the lease will expire on its own at its ttl).
    pub async fn release(&self, name: &str, lease_id: &str) -> Result<bool, LockError> {
        self.release_name(&LockName::new(name)?, lease_id, Duration::from_secs(5))
            .await
    }

    pub(crate) async fn release_name(
        &self,
        name: &LockName,
        lease_id: &str,
        retry_for: Duration,
    ) -> Result<bool, LockError> {
        let deadline = Instant::now() + retry_for;
        let mut delay = Duration::from_millis(10);
        loop {
            match self.backend.release(name, lease_id).await {
                Err(e) if e.is_transient() && Instant::now() + delay < deadline => {
                    tracing::warn!(lock = %name, error = %e, "release failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }

    /// The current holder of `name`, if any.
    pub async fn holder(&self, name: &str) -> Result<Option<Holder>, LockError> {
        self.backend.holder(&LockName::new(name)?).await
    }

    pub(crate) async fn holder_name(&self, name: &LockName) -> Result<Option<Holder>, LockError> {
        self.backend.holder(name).await
    }

    /// Starts renewing `lease` every ttl/3 in the background; see [`KeepAlive`].
    /// Fails only for a hand-built lease with an invalid name.
    pub fn keep_alive(&self, lease: Lease) -> Result<KeepAlive, LockError> {
        let name = LockName::from_lease(&lease.name)?;
        Ok(KeepAlive::start(self.clone(), name, lease))
    }
}
