//! etcd backend: an etcd lease per lock lease, a FIFO queue of keys, token = create revision.
//!
//! Acquiring puts `{prefix}locks/{name}/{lease_id}` bound to a fresh etcd lease; the
//! holder is the key with the lowest create revision. A waiter watches only the key just
//! before its own (no herd), like etcd's `concurrency.Mutex`. The fencing token is the
//! key's **create revision**: revisions only grow, survive restarts, and grants follow
//! revision order, so tokens strictly increase. Expiry is enforced by etcd itself: a holder
//! that stops renewing (crash, pause, partition) loses its key when the lease's TTL ends.
//! Everything lives in etcd, so any number of Mainstay processes can share locks.
//!
//! Limits: etcd lease TTLs are whole seconds (a ttl is rounded up, and etcd raises very
//! short TTLs to its minimum, about 2 s with default settings); `extend` resets the lease to
//! its granted TTL. Paused holders past their TTL are only stopped by a fenced resource
//! (Jepsen, etcd 3.4.3).

use crate::backend::{LockBackend, TryAcquire};
use crate::error::LockError;
use crate::lease::{Holder, Lease, LockName};
use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, WatchOptions,
};
use mainstay_core::clock::now_ms;
use mainstay_core::config::BackendKind;
use std::time::Duration;
use tokio::time::Instant;

/// Locks in an etcd cluster.
#[derive(Clone)]
pub struct EtcdBackend {
    client: Client,
    prefix: String,
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn etcd_err(e: impl std::fmt::Display) -> LockError {
    LockError::backend("etcd", e)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Value {
    owner: String,
}

/// A queued key: ours or a predecessor's.
struct Entry {
    key: Vec<u8>,
    create_revision: i64,
    lease: i64,
    owner: String,
}

/// One keep-alive round trip on an open keep-alive stream.
async fn renew(
    keeper: &mut etcd_client::LeaseKeeper,
    responses: &mut etcd_client::LeaseKeepAliveStream,
) -> Result<(), LockError> {
    keeper.keep_alive().await.map_err(etcd_err)?;
    responses.message().await.map_err(etcd_err)?;
    Ok(())
}

fn entry_of(kv: &etcd_client::KeyValue) -> Entry {
    Entry {
        key: kv.key().to_vec(),
        create_revision: kv.create_revision(),
        lease: kv.lease(),
        owner: serde_json::from_slice::<Value>(kv.value())
            .map(|v| v.owner)
            .unwrap_or_default(),
    }
}

impl EtcdBackend {
    /// Connects to `endpoints` (`http://host:port` or `host:port`) with key prefix `mainstay/`.
    pub async fn connect(endpoints: &[String]) -> Result<Self, LockError> {
        Self::connect_with_prefix(endpoints, "mainstay/").await
    }

    /// Connects with a custom key prefix (one namespace per application or test).
    pub async fn connect_with_prefix(
        endpoints: &[String],
        prefix: &str,
    ) -> Result<Self, LockError> {
        if endpoints.is_empty() {
            return Err(LockError::Config("etcd needs at least one endpoint".into()));
        }
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
        let client = mainstay_core::connect::with_retry(
            "etcd",
            &endpoints.join(","),
            |e: &etcd_client::Error| !matches!(e, etcd_client::Error::InvalidArgs(_)),
            // The channel connects lazily: a first read proves the cluster answers.
            |_| async {
                let mut client = Client::connect(endpoints, Some(opts.clone())).await?;
                client
                    .get(
                        prefix,
                        Some(GetOptions::new().with_keys_only().with_limit(1)),
                    )
                    .await?;
                Ok::<_, etcd_client::Error>(client)
            },
        )
        .await
        .map_err(etcd_err)?;
        Ok(EtcdBackend {
            client,
            prefix: prefix.to_string(),
        })
    }

    fn dir(&self, name: &LockName) -> String {
        format!("{}locks/{}/", self.prefix, name)
    }

    fn key(&self, name: &LockName, lease_id: &str) -> String {
        format!("{}{}", self.dir(name), lease_id)
    }

    fn ttl_secs(ttl: Duration) -> i64 {
        ttl.as_millis().div_ceil(1000).max(1) as i64
    }

    /// The etcd lease id of our lease: the first 63 bits of the (random, hex) lease id, so
    /// release can revoke it without a lookup. `None` for an id we never issued.
    fn etcd_lease_of(lease_id: &str) -> Option<i64> {
        let id = u64::from_str_radix(lease_id.get(..16)?, 16).ok()? & (i64::MAX as u64);
        (id != 0 && lease_id.len() == 32).then_some(id as i64)
    }

    /// Grants an etcd lease and enqueues our key; returns our create revision, the lease,
    /// its ttl, and the queue's head (the holder) as of our put, in one transaction.
    async fn enqueue(
        &self,
        name: &LockName,
        lease_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<(i64, i64, Duration, Option<Entry>), LockError> {
        let mut c = self.client.clone();
        let wanted = Self::etcd_lease_of(lease_id).ok_or_else(|| etcd_err("malformed lease id"))?;
        let grant = c
            .lease_grant(
                Self::ttl_secs(ttl),
                Some(etcd_client::LeaseGrantOptions::new().with_id(wanted)),
            )
            .await
            .map_err(etcd_err)?;
        let granted_ttl = Duration::from_secs(grant.ttl().max(1) as u64);
        let key = self.key(name, lease_id);
        let value = serde_json::to_vec(&Value {
            owner: owner.to_string(),
        })
        .map_err(etcd_err)?;
        let head = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(
                    key.clone(),
                    value,
                    Some(PutOptions::new().with_lease(grant.id())),
                ),
                TxnOp::get(self.dir(name), Some(head)),
            ]);
        let resp = match c.txn(txn).await {
            Ok(r) => r,
            Err(e) => {
                let _ = c.lease_revoke(grant.id()).await;
                return Err(etcd_err(e));
            }
        };
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        if !resp.succeeded() {
            // The lease id is fresh and unguessable: a collision means a retried request.
            let _ = c.lease_revoke(grant.id()).await;
            return Err(etcd_err(format!("lock key {key} already exists")));
        }
        let head = resp.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(entry_of),
            _ => None,
        });
        Ok((revision, grant.id(), granted_ttl, head))
    }

    /// The key queued just before `revision` (None when we are first).
    async fn predecessor(
        &self,
        name: &LockName,
        revision: i64,
    ) -> Result<Option<Entry>, LockError> {
        let opts = GetOptions::new()
            .with_prefix()
            .with_max_create_revision(revision - 1)
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(1);
        self.first(name, opts).await
    }

    async fn first(&self, name: &LockName, opts: GetOptions) -> Result<Option<Entry>, LockError> {
        let mut c = self.client.clone();
        let resp = c.get(self.dir(name), Some(opts)).await.map_err(etcd_err)?;
        Ok(resp.kvs().first().map(entry_of))
    }

    async fn entry_holder(&self, entry: &Entry) -> Holder {
        let mut c = self.client.clone();
        let remaining = c
            .lease_time_to_live(entry.lease, None)
            .await
            .map(|r| r.ttl().max(0))
            .unwrap_or(0);
        Holder {
            owner: entry.owner.clone(),
            fencing_token: entry.create_revision as u64,
            expires_at_ms: now_ms() + remaining as u64 * 1000,
        }
    }

    async fn current_holder(&self, name: &LockName) -> Result<Option<Holder>, LockError> {
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        match self.first(name, opts).await? {
            Some(e) => Ok(Some(self.entry_holder(&e).await)),
            None => Ok(None),
        }
    }

    /// Waits until `key` is deleted, or the deadline passes (false).
    async fn wait_deleted(
        &self,
        key: Vec<u8>,
        after_revision: i64,
        deadline: Instant,
    ) -> Result<bool, LockError> {
        let mut c = self.client.clone();
        // Dropping the stream cancels the watch.
        let mut stream = c
            .watch(
                key,
                Some(WatchOptions::new().with_start_revision(after_revision + 1)),
            )
            .await
            .map_err(etcd_err)?;
        let changed = loop {
            let msg = tokio::select! {
                m = stream.message() => m.map_err(etcd_err)?,
                _ = tokio::time::sleep_until(deadline) => break false,
            };
            match msg {
                Some(resp)
                    if resp
                        .events()
                        .iter()
                        .any(|e| e.event_type() == etcd_client::EventType::Delete) =>
                {
                    break true
                }
                Some(resp) if resp.canceled() => break true,
                Some(_) => continue,
                None => break true,
            }
        };
        Ok(changed)
    }

    async fn revoke(&self, lease: i64) {
        let mut c = self.client.clone();
        let _ = c.lease_revoke(lease).await;
    }

    async fn own_entry(
        &self,
        name: &LockName,
        lease_id: &str,
    ) -> Result<Option<(i64, i64, String)>, LockError> {
        let mut c = self.client.clone();
        let resp = c
            .get(self.key(name, lease_id), None)
            .await
            .map_err(etcd_err)?;
        Ok(resp.kvs().first().map(|kv| {
            let owner = serde_json::from_slice::<Value>(kv.value())
                .map(|v| v.owner)
                .unwrap_or_default();
            (kv.create_revision(), kv.lease(), owner)
        }))
    }

    async fn queue(
        &self,
        name: &LockName,
        lease_id: &str,
        owner: &str,
        ttl: Duration,
        wait: Option<Duration>,
    ) -> Result<TryAcquire, LockError> {
        let start = Instant::now();
        let (revision, lease, granted_ttl, head) = self.enqueue(name, lease_id, owner, ttl).await?;
        // The grant, with the ttl counted from `sent` (etcd started it later).
        let granted = |sent: Instant| {
            let expires = now_ms() + granted_ttl.as_millis() as u64;
            TryAcquire::Acquired(Lease::new(
                name,
                lease_id,
                owner,
                revision as u64,
                expires,
                granted_ttl,
                sent,
            ))
        };
        // First in line at our put: the lease's ttl started at the grant, after `start`.
        if head.as_ref().is_some_and(|h| h.create_revision == revision) {
            return Ok(granted(start));
        }
        let Some(wait) = wait else {
            self.revoke(lease).await;
            let holder = match head {
                Some(h) => Some(self.entry_holder(&h).await),
                None => self.current_holder(name).await?,
            };
            return Ok(TryAcquire::Held(holder));
        };
        let deadline = start + wait;
        // Keep the etcd lease alive while we wait in the queue (the wait may exceed the ttl).
        let mut c = self.client.clone();
        let (mut keeper, mut responses) = match c.lease_keep_alive(lease).await {
            Ok(k) => k,
            Err(e) => {
                self.revoke(lease).await;
                return Err(etcd_err(e));
            }
        };
        let outcome: Result<TryAcquire, LockError> = async {
            let mut next_keepalive = Instant::now() + granted_ttl / 3;
            loop {
                let Some(pred) = self.predecessor(name, revision).await? else {
                    // First in line. Renew once more so the ttl counts from about now.
                    let sent = Instant::now();
                    renew(&mut keeper, &mut responses).await?;
                    return Ok(granted(sent));
                };
                if Instant::now() >= deadline {
                    return Ok(TryAcquire::Held(Some(
                        self.current_holder(name)
                            .await?
                            .unwrap_or(self.entry_holder(&pred).await),
                    )));
                }
                let step = deadline.min(next_keepalive);
                if !self.wait_deleted(pred.key, revision, step).await?
                    && Instant::now() >= next_keepalive
                {
                    renew(&mut keeper, &mut responses).await?;
                    next_keepalive = Instant::now() + granted_ttl / 3;
                }
            }
        }
        .await;
        if !matches!(outcome, Ok(TryAcquire::Acquired(_))) {
            self.revoke(lease).await;
        }
        outcome
    }
}

#[async_trait]
impl LockBackend for EtcdBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Etcd
    }

    async fn try_acquire(
        &self,
        name: &LockName,
        lease_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<TryAcquire, LockError> {
        self.queue(name, lease_id, owner, ttl, None).await
    }

    async fn acquire(
        &self,
        name: &LockName,
        lease_id: &str,
        owner: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<TryAcquire, LockError> {
        self.queue(name, lease_id, owner, ttl, Some(wait)).await
    }

    async fn extend(
        &self,
        name: &LockName,
        lease_id: &str,
        _ttl: Duration,
    ) -> Result<Option<Lease>, LockError> {
        let Some((revision, lease, owner)) = self.own_entry(name, lease_id).await? else {
            return Ok(None);
        };
        if self.predecessor(name, revision).await?.is_some() {
            return Ok(None);
        }
        let sent = Instant::now();
        let mut c = self.client.clone();
        let (mut keeper, mut responses) = c.lease_keep_alive(lease).await.map_err(etcd_err)?;
        keeper.keep_alive().await.map_err(etcd_err)?;
        let ttl = match responses.message().await.map_err(etcd_err)? {
            Some(r) if r.ttl() > 0 => Duration::from_secs(r.ttl() as u64),
            _ => return Ok(None),
        };
        Ok(Some(Lease::new(
            name,
            lease_id,
            &owner,
            revision as u64,
            now_ms() + ttl.as_millis() as u64,
            ttl,
            sent,
        )))
    }

    async fn release(&self, name: &LockName, lease_id: &str) -> Result<bool, LockError> {
        let Some(lease) = Self::etcd_lease_of(lease_id) else {
            return Ok(false);
        };
        let key = self.key(name, lease_id);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Greater, 0)])
            .and_then([TxnOp::delete(key, None)]);
        let mut c = self.client.clone();
        let released = c.txn(txn).await.map_err(etcd_err)?.succeeded();
        if released {
            // The key is gone; revoking the now key-less lease only tidies up early.
            let mut c = self.client.clone();
            tokio::spawn(async move {
                let _ = c.lease_revoke(lease).await;
            });
        }
        Ok(released)
    }

    async fn holder(&self, name: &LockName) -> Result<Option<Holder>, LockError> {
        self.current_holder(name).await
    }
}
