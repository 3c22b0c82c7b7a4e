//! ZooKeeper backend: ephemeral sequential nodes, FIFO, token = the node's creation zxid.
//!
//! Acquiring creates `/{root}/locks/{name}/{lease_id}-{seq}` (ephemeral, sequential) in
//! this process's session; the holder is the lowest sequence; a waiter watches only its
//! predecessor (the seed's recipe, Curator's InterProcessMutex). The lease id in the node
//! name lets a retried create find its node after a lost reply (ZOOKEEPER-1262). The
//! fencing token is the node's **czxid**: zxids only grow for the life of the ensemble and
//! grants follow creation order.
//!
//! Expiry has two layers: the ttl is enforced by this process (a timer deletes the node
//! unless extended), and if this process dies or is paused or cut off, ZooKeeper deletes
//! the node when the **session** expires (session timeout, default 10 s, bounded by the
//! server's min/max). A lease therefore belongs to the process that acquired it: another
//! Mainstay process cannot extend or release it. The visible expiry is stored in the node.
//!
//! A lease's ttl is capped at the negotiated session timeout (the session's end ends the
//! lease anyway), so [`crate::KeepAlive::lost`] fires before ZooKeeper can expire it.
//!
//! Limits: a paused holder learns nothing until it resumes (fence the resource); zxids
//! restart if the ensemble's data is wiped (the client's regression check refuses then).

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

#[derive(serde::Serialize, serde::Deserialize)]
struct NodeData {
    owner: String,
    expires_at_ms: u64,
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
        zk::Client::connector()
            .with_session_timeout(session_timeout)
            .with_connection_timeout(Duration::from_secs(3))
            .connect(connect)
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

    async fn node_holder(
        &self,
        client: &zk::Client,
        path: &str,
    ) -> Result<Option<Holder>, LockError> {
        match client.get_data(path).await {
            Ok((data, stat)) => {
                let d: NodeData = serde_json::from_slice(&data).unwrap_or(NodeData {
                    owner: String::new(),
                    expires_at_ms: 0,
                });
                Ok(Some(Holder {
                    owner: d.owner,
                    fencing_token: stat.czxid as u64,
                    expires_at_ms: d.expires_at_ms,
                }))
            }
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(zk_err(e)),
        }
    }

    async fn holder_in(&self, client: &zk::Client, dir: &str) -> Result<Option<Holder>, LockError> {
        for child in self.queue(client, dir).await? {
            if let Some(h) = self.node_holder(client, &format!("{dir}/{child}")).await? {
                return Ok(Some(h));
            }
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
        // The node carries its expiry from the start, so an immediate grant costs no
        // extra write; a grant after waiting rewrites it.
        let created_at = Instant::now();
        let created_expiry = now_ms() + ttl.as_millis() as u64;
        let data = serde_json::to_vec(&NodeData {
            owner: owner.to_string(),
            expires_at_ms: created_expiry,
        })
        .map_err(zk_err)?;
        let opts = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
        let prefix = format!("{dir}/{lease_id}-");
        let created = match client.create(&prefix, &data, &opts).await {
            Err(zk::Error::NoNode) => {
                client
                    .mkdir(
                        &dir,
                        &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
                    )
                    .await
                    .map_err(zk_err)?;
                client.create(&prefix, &data, &opts).await
            }
            other => other,
        };
        let (stat, _) = created.map_err(zk_err)?;
        let outcome = async {
            let mut waited = false;
            loop {
                let queue = self.queue(&client, &dir).await?;
                let Some(pos) = queue.iter().position(|c| is_node_of(c, lease_id)) else {
                    return Err(zk_err("our lock node vanished (session expired?)"));
                };
                if pos == 0 {
                    let path = format!("{dir}/{}", queue[0]);
                    let (sent, expires_at_ms) = if waited {
                        let sent = Instant::now();
                        let expires_at_ms = now_ms() + ttl.as_millis() as u64;
                        let data = serde_json::to_vec(&NodeData {
                            owner: owner.to_string(),
                            expires_at_ms,
                        })
                        .map_err(zk_err)?;
                        client.set_data(&path, &data, None).await.map_err(zk_err)?;
                        (sent, expires_at_ms)
                    } else {
                        (created_at, created_expiry)
                    };
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
                        stat.czxid as u64,
                        expires_at_ms,
                        ttl,
                        sent,
                    )));
                }
                if wait.is_none() || Instant::now() >= deadline {
                    return Ok(TryAcquire::Held(self.holder_in(&client, &dir).await?));
                }
                waited = true;
                let predecessor = format!("{dir}/{}", queue[pos - 1]);
                let (exists, watcher) = client
                    .check_and_watch_stat(&predecessor)
                    .await
                    .map_err(zk_err)?;
                if exists.is_some() {
                    tokio::select! {
                        _ = watcher.changed() => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                    }
                }
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
        let (owner, token) = match self.node_holder(&client, &path).await? {
            Some(h) => (h.owner, h.fencing_token),
            None => return Ok(None),
        };
        let expires_at_ms = now_ms() + ttl.as_millis() as u64;
        let data = serde_json::to_vec(&NodeData {
            owner: owner.clone(),
            expires_at_ms,
        })
        .map_err(zk_err)?;
        match client.set_data(&path, &data, None).await {
            Ok(_) => {}
            Err(zk::Error::NoNode) => return Ok(None),
            Err(e) => return Err(zk_err(e)),
        }
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
        self.holder_in(&client, &self.dir(name)).await
    }
}
