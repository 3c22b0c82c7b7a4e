//! Leader election on any lock backend.
//!
//! An election named `e` is the lock `election/e` (a namespace user locks cannot reach).
//! Campaigning acquires it and keeps it alive; the leader's **epoch is its fencing token**,
//! so a deposed leader's writes are rejected by a fenced resource exactly like a stale lock
//! holder's. Observing polls the current leader and yields each change.
//!
//! Guarantee: at most one live lease per election at a time, as strong as the backend's
//! lock. Not guaranteed: that a paused leader knows it was deposed — watch
//! [`Leadership::lost`] and fence the resource with the epoch.

use crate::client::{AcquireOptions, LockClient};
use crate::error::LockError;
use crate::keepalive::KeepAlive;
use crate::lease::LockName;
use futures::Stream;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The current leader of an election.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Leader {
    /// Election name.
    pub name: String,
    /// The leader's candidate id (the lock owner string).
    pub candidate: String,
    /// The leader's epoch (its fencing token): strictly increases with each new term.
    pub epoch: u64,
    /// When the leader's lease expires unless renewed, Unix milliseconds.
    pub expires_at_ms: u64,
}

/// Won leadership, kept alive in the background.
#[derive(Debug)]
pub struct Leadership {
    keepalive: KeepAlive,
}

impl Leadership {
    /// This term's epoch (the fencing token).
    pub fn epoch(&self) -> u64 {
        self.keepalive.fencing_token()
    }

    /// The underlying lease (lease id, expiry).
    pub fn lease(&self) -> crate::Lease {
        self.keepalive.lease()
    }

    /// Resolves when leadership is lost or about to be (see [`KeepAlive::lost`]).
    pub fn lost(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.keepalive.lost()
    }

    /// Steps down. `true` if this was still the leader.
    pub async fn resign(self) -> Result<bool, LockError> {
        self.keepalive.release().await
    }
}

/// Elections over a [`LockClient`].
#[derive(Clone, Debug)]
pub struct Election {
    client: LockClient,
}

impl Election {
    /// Elections on the same backend as `client`.
    pub fn new(client: LockClient) -> Self {
        Election { client }
    }

    /// Campaigns for `name` as `candidate`: waits up to `wait` to become leader, then keeps
    /// the term alive every ttl/3. [`LockError::Busy`] names the leader if the wait runs out.
    pub async fn campaign(
        &self,
        name: &str,
        candidate: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Leadership, LockError> {
        let lease = self.campaign_once(name, candidate, ttl, wait).await?;
        Ok(Leadership {
            keepalive: self.client.keep_alive(lease)?,
        })
    }

    /// Campaigns without a background keep-alive (for callers that renew themselves, such
    /// as the HTTP API): returns the lease; renew with [`Self::keepalive`].
    pub async fn campaign_once(
        &self,
        name: &str,
        candidate: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<crate::Lease, LockError> {
        let lock = LockName::election(name)?;
        let opts = AcquireOptions::ttl(ttl).wait(wait).owner(candidate);
        self.client.acquire_name(&lock, &opts).await
    }

    /// Renews a term won by [`Self::campaign_once`].
    pub async fn keepalive(
        &self,
        name: &str,
        lease_id: &str,
        ttl: Duration,
    ) -> Result<crate::Lease, LockError> {
        self.client
            .extend_name(&LockName::election(name)?, lease_id, ttl)
            .await
    }

    /// Ends a term won by [`Self::campaign_once`]. `true` if it was still the leader.
    pub async fn resign(&self, name: &str, lease_id: &str) -> Result<bool, LockError> {
        self.client
            .release_name(&LockName::election(name)?, lease_id, Duration::from_secs(5))
            .await
    }

    /// The current leader, if any.
    pub async fn leader(&self, name: &str) -> Result<Option<Leader>, LockError> {
        let holder = self.client.holder_name(&LockName::election(name)?).await?;
        Ok(holder.map(|h| Leader {
            name: name.to_string(),
            candidate: h.owner,
            epoch: h.fencing_token,
            expires_at_ms: h.expires_at_ms,
        }))
    }

    /// Yields the current leader now and then every change (new epoch, or no leader),
    /// polling every `every`. Errors are yielded and polling goes on.
    pub fn observe(
        &self,
        name: &str,
        every: Duration,
    ) -> impl Stream<Item = Result<Option<Leader>, LockError>> + Send + 'static {
        let election = self.clone();
        let name = name.to_string();
        futures::stream::unfold(
            (election, name, None::<Option<u64>>, true),
            move |(election, name, last, first)| async move {
                let mut first = first;
                loop {
                    if !first {
                        tokio::time::sleep(every).await;
                    }
                    first = false;
                    match election.leader(&name).await {
                        Ok(leader) => {
                            let epoch = leader.as_ref().map(|l| l.epoch);
                            if last != Some(epoch) {
                                return Some((Ok(leader), (election, name, Some(epoch), false)));
                            }
                        }
                        Err(e) => return Some((Err(e), (election, name, last, false))),
                    }
                }
            },
        )
    }
}
