//! ZooKeeper backend: ephemeral sequential nodes, FIFO, token = the node's creation zxid.
//!
//! Acquiring creates `/{root}/locks/{name}/{lease_id}-{seq}` (ephemeral, sequential) in
//! this process's session; the holder is the lowest sequence; a waiter watches only its
//! predecessor (the seed's recipe, Curator's InterProcessMutex). The lease id in the node
//! name lets a retried create find its node after a lost reply (ZOOKEEPER-1262). The
//! fencing token is the node's **czxid**: zxids only grow for the life of the ensemble and
//! grants follow creation order.
//!
//! **The ttl is the contract, enforced with the ensemble's clock.** A node records its
//! lease's ttl; it expires `ttl` after its last write, measured by the `mtime` ZooKeeper
//! stamps on it. A holder renews by rewriting its node; a waiter rewrites its own node
//! every ttl/3 while it waits, which both keeps its place and tells it the ensemble's
//! current time. A waiter whose predecessor is expired by that clock deletes it with a
//! version check (a renewal in between wins), so a holder that died, was paused or was cut
//! off loses the lock at its ttl, not at the end of its ZooKeeper session. Status reads
//! take the ensemble's time from a write to `{root}/clock` and do not report an expired
//! holder. This process also deletes its own node at the ttl unless extended, and
//! ZooKeeper deletes every node of a session that expires (session timeout, default 10 s).
//! A lease belongs to the process that acquired it: another Mainstay process cannot
//! extend or release it.
//!
//! A lease's ttl is capped at the negotiated session timeout (the session's end ends the
//! lease anyway), so [`crate::KeepAlive::lost`] fires before ZooKeeper can expire it.
//!
//! Limits: expiry uses the `mtime` of the ZooKeeper leader; a leader change between
//! servers whose clocks differ by Δ can end a lease up to Δ early (fence the resource). A
//! paused holder learns nothing until it resumes; zxids restart if the ensemble's data is
//! wiped (the client's regression check refuses then).

use crate::backend::{LockBackend, TryAcquire};
use crate::error::LockError;
use crate::lease::{Holder, Lease, LockName};
use async_trait::async_trait;
use mainstay_core::clock::now_ms;
use mainstay_core::config::BackendKind;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::RwLock;
use tokio::time::Instant;
use zookeeper_client as zk;

/// What a lock node stores. `ttl_ms` is the contract; `expires_at_ms` (the writer's own
/// estimate) is kept for nodes written before `ttl_ms` existed.
#[derive(serde::Serialize, serde::Deserialize)]
struct NodeData {
    owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl_ms: Option<u64>,
    #[serde(default)]
    expires_at_ms: u64,
}

impl NodeData {
    fn encode(owner: &str, ttl: Duration) -> Result<Vec<u8>, LockError> {
        let ttl_ms = ttl.as_millis() as u64;
        serde_json::to_vec(&NodeData {
            owner: owner.to_string(),
            ttl_ms: Some(ttl_ms),
            expires_at_ms: now_ms() + ttl_ms,
        })
        .map_err(zk_err)
    }
}

/// A node in a lock's queue as read: its expiry is by the ensemble's clock.
struct Node {
    owner: String,
    czxid: i64,
    version: i32,
    expires_at_ms: u64,
}

impl Node {
    fn parse(data: &[u8], stat: &zk::Stat) -> Node {
        let d: NodeData = serde_json::from_slice(data).unwrap_or(NodeData {
            owner: String::new(),
            ttl_ms: None,
            expires_at_ms: 0,
        });
        Node {
            owner: d.owner,
            czxid: stat.czxid,
            version: stat.version,
            expires_at_ms: match d.ttl_ms {
                Some(ttl) => (stat.mtime.max(0) as u64).saturating_add(ttl),
                None => d.expires_at_ms,
            },
        }
    }

    fn holder(&self) -> Holder {
        Holder {
            owner: self.owner.clone(),
            fencing_token: self.czxid as u64,
            expires_at_ms: self.expires_at_ms,
        }
    }
}

/// The local instant at which an ensemble time `at_ms` comes, given that the ensemble's
/// clock read `server_now_ms` at about `seen` (a little early is harmless: the waiter
/// re-checks with a fresh reading).
fn local_instant(at_ms: u64, server_now_ms: u64, seen: Instant) -> Instant {
    seen + Duration::from_millis(at_ms.saturating_sub(server_now_ms))
}

/// A lease held by this process.
struct Local {
    path: String,
    expires: Instant,
}

/// Locks in a ZooKeeper ensemble.
pub struct ZookeeperBackend {
    connect: String,
    session_timeout: Duration,
    root: String,
    client: RwLock<zk::Client>,
    leases: Arc<Mutex<HashMap<String, Local>>>,
}

impl std::fmt::Debug for ZookeeperBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZookeeperBackend")
            .field("connect", &self.connect)
            .field("root", &self.root)
            .finish()
    }
}

fn zk_err(e: impl std::fmt::Display) -> LockError {
    LockError::backend("zookeeper", e)
}

/// A lease cannot outlive its session: when this process is cut off, ZooKeeper deletes the
/// node once the session times out, whatever the ttl. Capping the ttl at the negotiated
/// session timeout keeps the local deadline (and so `lost()`) ahead of that: a renewal
/// that succeeded proves the server heard from the session after the request was sent.
fn capped(ttl: Duration, client: &zk::Client) -> Duration {
    ttl.min(client.session_timeout())
}

/// Escapes a lock name into one path segment (`election/x` contains a `/`).
fn segment(name: &LockName) -> String {
    name.as_str().replace('%', "%25").replace('/', "%2F")
}

fn sequence_of(child: &str) -> Option<&str> {
    child.rsplit_once('-').map(|(_, seq)| seq)
}

/// True when `child` is the node of `lease_id` (`{lease_id}-{seq}`): exact match, so a
/// forged prefix of someone's lease id matches nothing.
fn is_node_of(child: &str, lease_id: &str) -> bool {
    child.rsplit_once('-').is_some_and(|(id, _)| id == lease_id)
}

impl ZookeeperBackend {
    /// Connects to `connect` (`host:port[,host:port…]`, optionally `zk://`-prefixed) with a
    /// 10 s session timeout, under the root `/mainstay`.
    /// A `?session_timeout=2s` suffix sets the session timeout.
    pub async fn connect(connect: &str) -> Result<Self, LockError> {
        let (hosts, timeout) = match connect.split_once('?') {
            Some((hosts, query)) => {
                let value = query.strip_prefix("session_timeout=").ok_or_else(|| {
                    LockError::Config(format!(
                        "unknown zookeeper option {query:?}; expected session_timeout=DURATION"
                    ))
                })?;
                (
                    hosts,
                    mainstay_core::duration::parse(value).map_err(LockError::Config)?,
                )
            }
            None => (connect, Duration::from_secs(10)),
        };
        Self::connect_with(hosts, "/mainstay", timeout).await
    }

    /// Connects with a custom root path and session timeout.
    pub async fn connect_with(
        connect: &str,
        root: &str,
        session_timeout: Duration,
    ) -> Result<Self, LockError> {
        let connect = connect
            .trim_start_matches("zookeeper://")
            .trim_start_matches("zk://")
            .to_string();
        if !root.starts_with('/') || root.ends_with('/') {
            return Err(LockError::Config(format!(
                "zookeeper root must start and not end with '/': {root:?}"
            )));
        }
        let client = Self::new_session(&connect, session_timeout).await?;
        client
            .mkdir(
                &format!("{root}/locks"),
                &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
            )
            .await
            .map_err(zk_err)?;
        Ok(ZookeeperBackend {
            connect,
            session_timeout,
            root: root.to_string(),
            client: RwLock::new(client),
            leases: Default::default(),
        })
    }

    async fn new_session(
        connect: &str,
        session_timeout: Duration,
    ) -> Result<zk::Client, LockError> {
        mainstay_core::connect::with_retry(
            "zookeeper",
            connect,
            |e: &zk::Error| !matches!(e, zk::Error::AuthFailed | zk::Error::BadArguments(_)),
            |left| {
                // Detached: dropping the last client (a CLI that acquired and exited)
                // leaves the session to expire on the ensemble instead of closing it, so
                // the lease's node lives on to its ttl (bounded by the session timeout).
                zk::Client::connector()
                    .with_detached()
                    .with_session_timeout(session_timeout)
                    .with_connection_timeout(left.min(Duration::from_secs(3)))
                    .connect(connect)
            },
        )
        .await
        .map_err(zk_err)
    }

    /// The session in use, replaced by a fresh one once the old one expired (its ephemeral
    /// nodes, and so its leases, are gone).
    async fn client(&self) -> Result<zk::Client, LockError> {
        let current = self.client.read().await.clone();
        if !current.state().is_terminated() {
            return Ok(current);
        }
        let mut slot = self.client.write().await;
        if slot.state().is_terminated() {
            *slot = Self::new_session(&self.connect, self.session_timeout).await?;
        }
        Ok(slot.clone())
    }

    fn dir(&self, name: &LockName) -> String {
        format!("{}/locks/{}", self.root, segment(name))
    }

    /// Sorted children (by sequence) of the lock's directory.
    async fn queue(&self, client: &zk::Client, dir: &str) -> Result<Vec<String>, LockError> {
        let mut children = match client.list_children(dir).await {
            Ok(c) => c,
            Err(zk::Error::NoNode) => Vec::new(),
            Err(e) => return Err(zk_err(e)),
        };
        children.sort_by(|a, b| sequence_of(a).cmp(&sequence_of(b)));
        Ok(children)
    }

    async fn read_node(&self, client: &zk::Client, path: &str) -> Result<Option<Node>, LockError> {
        match client.get_data(path).await {
            Ok((data, stat)) => Ok(Some(Node::parse(&data, &stat))),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(zk_err(e)),
        }
    }

    /// The ensemble's current time: the `mtime` of a write to `{root}/clock`.
    async fn ensemble_now_ms(&self, client: &zk::Client) -> Result<u64, LockError> {
        let path = format!("{}/clock", self.root);
        let stat = match client.set_data(&path, b"", None).await {
            Err(zk::Error::NoNode) => {
                let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                match client.create(&path, b"", &opts).await {
                    Ok((stat, _)) => stat,
                    Err(zk::Error::NodeExists) => {
                        client.set_data(&path, b"", None).await.map_err(zk_err)?
                    }
                    Err(e) => return Err(zk_err(e)),
                }
            }
            other => other.map_err(zk_err)?,
        };
        Ok(stat.mtime.max(0) as u64)
    }

    /// Deletes `node` at `path` if it expired before the ensemble time `now_ms`, unless it
    /// was rewritten (renewed) since it was read. True when the node is gone.
    async fn remove_if_expired(
        &self,
        client: &zk::Client,
        path: &str,
        node: &Node,
        now_ms: u64,
    ) -> Result<bool, LockError> {
        if node.expires_at_ms >= now_ms {
            return Ok(false);
        }
        match client.delete(path, Some(node.version)).await {
            Ok(()) => {
                tracing::debug!(path, "deleted an expired lock node");
                Ok(true)
            }
            Err(zk::Error::NoNode) => Ok(true),
            Err(zk::Error::BadVersion) => Ok(false),
            Err(e) => Err(zk_err(e)),
        }
    }

    /// The first node of the queue that has not expired by the ensemble time `now_ms`;
    /// expired nodes before it are deleted on the way.
    async fn holder_in(
        &self,
        client: &zk::Client,
        dir: &str,
        now_ms: u64,
    ) -> Result<Option<Holder>, LockError> {
        for child in self.queue(client, dir).await? {
            let path = format!("{dir}/{child}");
            let Some(node) = self.read_node(client, &path).await? else {
                continue;
            };
            if node.expires_at_ms < now_ms {
                self.remove_if_expired(client, &path, &node, now_ms).await?;
                continue;
            }
            return Ok(Some(node.holder()));
        }
        Ok(None)
    }

    /// Starts the timer that deletes the node at the ttl unless extended.
    fn arm_expiry(&self, lease_id: String, client: zk::Client) {
        let leases = self.leases.clone();
        tokio::spawn(async move {
            loop {
                let expires = match leases
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&lease_id)
                {
                    Some(l) => l.expires,
                    None => return,
                };
                tokio::time::sleep_until(expires).await;
                let path = {
                    let mut map = leases.lock().unwrap_or_else(|p| p.into_inner());
                    match map.get(&lease_id) {
                        Some(l) if l.expires <= Instant::now() => {
                            map.remove(&lease_id).map(|l| l.path)
                        }
                        Some(_) => continue,
                        None => return,
                    }
                };
                if let Some(path) = path {
                    let _ = client.delete(&path, None).await;
                }
                return;
            }
        });
    }

    async fn enqueue_and_wait(
        &self,
        name: &LockName,
        lease_id: &str,
        owner: &str,
        ttl: Duration,
        wait: Option<Duration>,
    ) -> Result<TryAcquire, LockError> {
        let deadline = Instant::now() + wait.unwrap_or_default();
        let client = self.client().await?;
        let ttl = capped(ttl, &client);
        let dir = self.dir(name);
        let data = NodeData::encode(owner, ttl)?;
        let opts = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
        let prefix = format!("{dir}/{lease_id}-");
        // `sent` is taken before each write of our node: the lease (or our place in the
        // queue) lasts `ttl` from the write's mtime, which is after `sent`.
        let mut sent = Instant::now();
        let created = match client.create(&prefix, &data, &opts).await {
            Err(zk::Error::NoNode) => {
                client
                    .mkdir(
                        &dir,
                        &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
                    )
                    .await
                    .map_err(zk_err)?;
                sent = Instant::now();
                client.create(&prefix, &data, &opts).await
            }
            other => other,
        };
        let (created, _) = created.map_err(zk_err)?;
        let token = created.czxid as u64;
        let mut written = created;
        let outcome = async {
            let refresh_every = ttl / 3;
            loop {
                // The ensemble's time as of our last write, and when we saw it.
                let now_ms = written.mtime.max(0) as u64;
                let seen = Instant::now();
                let queue = self.queue(&client, &dir).await?;
                let Some(pos) = queue.iter().position(|c| is_node_of(c, lease_id)) else {
                    return Err(zk_err(
                        "our lock node vanished (expired while this process was paused, or the session expired)",
                    ));
                };
                if pos == 0 {
                    let path = format!("{dir}/{}", queue[0]);
                    let expires_at_ms = now_ms + ttl.as_millis() as u64;
                    self.leases
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(
                            lease_id.to_string(),
                            Local {
                                path,
                                expires: sent + ttl,
                            },
                        );
                    self.arm_expiry(lease_id.to_string(), client.clone());
                    return Ok(TryAcquire::Acquired(Lease::new(
                        name,
                        lease_id,
                        owner,
                        token,
                        expires_at_ms,
                        ttl,
                        sent,
                    )));
                }
                // Only the predecessor matters: a dead one (holder or waiter) is removed
                // once expired; a live one is watched.
                let predecessor = format!("{dir}/{}", queue[pos - 1]);
                let pred = match self.read_node(&client, &predecessor).await? {
                    None => continue,
                    Some(node) => node,
                };
                if self
                    .remove_if_expired(&client, &predecessor, &pred, now_ms)
                    .await?
                {
                    continue;
                }
                if wait.is_none() || Instant::now() >= deadline {
                    return Ok(TryAcquire::Held(self.holder_in(&client, &dir, now_ms).await?));
                }
                let (exists, watcher) = client
                    .check_and_watch_stat(&predecessor)
                    .await
                    .map_err(zk_err)?;
                if exists.is_some() {
                    // Wake when the predecessor goes, when it would expire, to renew our
                    // own place, or at the deadline — whichever comes first.
                    let pred_expiry = local_instant(pred.expires_at_ms + 1, now_ms, seen);
                    let wake = pred_expiry.min(sent + refresh_every).min(deadline);
                    tokio::select! {
                        _ = watcher.changed() => {}
                        _ = tokio::time::sleep_until(wake) => {}
                    }
                }
                // Rewrite our node: it renews our place and reads the ensemble's clock.
                // If we are now first, this write is also the grant's.
                sent = Instant::now();
                let path = format!("{dir}/{}", queue[pos]);
                written = match client.set_data(&path, &data, None).await {
                    Ok(stat) => stat,
                    Err(zk::Error::NoNode) => {
                        return Err(zk_err(
                            "our queued lock node was removed as expired (this process was paused past its ttl)",
                        ))
                    }
                    Err(e) => return Err(zk_err(e)),
                };
            }
        }
        .await;
        if !matches!(outcome, Ok(TryAcquire::Acquired(_))) {
            if let Ok(queue) = self.queue(&client, &dir).await {
                for child in queue.iter().filter(|c| is_node_of(c, lease_id)) {
                    let _ = client.delete(&format!("{dir}/{child}"), None).await;
                }
            }
        }
        outcome
    }
}

#[async_trait]
impl LockBackend for ZookeeperBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Zookeeper
    }

    async fn try_acquire(
        &self,
        name: &LockName,
        lease_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<TryAcquire, LockError> {
        self.enqueue_and_wait(name, lease_id, owner, ttl, None)
            .await
    }

    async fn acquire(
        &self,
        name: &LockName,
        lease_id: &str,
        owner: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<TryAcquire, LockError> {
        self.enqueue_and_wait(name, lease_id, owner, ttl, Some(wait))
            .await
    }

    async fn extend(
        &self,
        name: &LockName,
        lease_id: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, LockError> {
        let path = match self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(lease_id)
        {
            Some(l) if l.expires > Instant::now() => l.path.clone(),
            _ => return Ok(None),
        };
        let client = self.client().await?;
        let ttl = capped(ttl, &client);
        let sent = Instant::now();
        let (owner, token) = match self.read_node(&client, &path).await? {
            Some(n) => (n.owner, n.czxid as u64),
            None => return Ok(None),
        };
        let data = NodeData::encode(&owner, ttl)?;
        let expires_at_ms = match client.set_data(&path, &data, None).await {
            Ok(stat) => stat.mtime.max(0) as u64 + ttl.as_millis() as u64,
            Err(zk::Error::NoNode) => return Ok(None),
            Err(e) => return Err(zk_err(e)),
        };
        if let Some(l) = self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(lease_id)
        {
            l.expires = sent + ttl;
        }
        Ok(Some(Lease::new(
            name,
            lease_id,
            &owner,
            token,
            expires_at_ms,
            ttl,
            sent,
        )))
    }

    async fn release(&self, name: &LockName, lease_id: &str) -> Result<bool, LockError> {
        let client = self.client().await?;
        let local = self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(lease_id);
        let Some(local) = local else {
            // Not granted here: an acquire abandoned mid-queue may have left its node. The
            // create was sent on this same session before this listing, and ZooKeeper
            // answers a session's requests in order, so the node is visible now if it exists.
            let dir = self.dir(name);
            for child in self
                .queue(&client, &dir)
                .await?
                .iter()
                .filter(|c| is_node_of(c, lease_id))
            {
                let _ = client.delete(&format!("{dir}/{child}"), None).await;
            }
            return Ok(false);
        };
        match client.delete(&local.path, None).await {
            Ok(()) => Ok(local.expires > Instant::now()),
            Err(zk::Error::NoNode) => Ok(false),
            Err(e) => Err(zk_err(e)),
        }
    }

    async fn holder(&self, name: &LockName) -> Result<Option<Holder>, LockError> {
        let client = self.client().await?;
        let now_ms = self.ensemble_now_ms(&client).await?;
        self.holder_in(&client, &self.dir(name), now_ms).await
    }
}
