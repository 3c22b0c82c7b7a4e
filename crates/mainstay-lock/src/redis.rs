//! Single-instance Redis backend: the seed's set-if-absent lock with a ttl, owner-checked
//! release and extend, plus a fencing counter.
//!
//! A lock is a hash `{prefix}lock:{name}` holding one field (lease id → owner) with a `PX`
//! ttl. Grant and extend are Lua scripts, so each check-and-act is atomic; release is the
//! native `HDEL lock lease_id`, which can only remove that lease's own field (Redis drops
//! the hash with its last field) — owner-checked without a script. The fencing counter
//! `{prefix}fence:{name}` never expires and survives release; it moves only on a successful
//! grant, so while a lock is held it equals the holder's token.
//!
//! **Tokens across a Redis restart.** A Redis without persistence loses the counter. The
//! counter is therefore seeded with the server's current `TIME` in microseconds when a
//! grant finds it missing, and incremented from there: after a data loss it is re-seeded at
//! the new time, which is above every token issued before as long as (a) the Redis host's
//! clock did not step back across the restart and (b) fewer than one grant per microsecond
//! was issued per name on average — a single Redis cannot run grants that fast.
//! [`crate::LockClient`] additionally refuses any token not above one it has seen. Tokens
//! are therefore large numbers.
//!
//! Guarantees: mutual exclusion while that one Redis runs and keeps its data. Not
//! guaranteed: anything across a failover to a replica (asynchronous replication can lose
//! the grant: two holders), nor across clock jumps on the Redis host (TTLs use its wall
//! clock). Without a fenced resource this is an **efficiency lock**.

use crate::backend::{LockBackend, TryAcquire};
use crate::error::LockError;
use crate::lease::{Holder, Lease, LockName};
use async_trait::async_trait;
use mainstay_core::config::BackendKind;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::sync::LazyLock;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

// A lock is a hash `{prefix}lock:{name}` with one field, `{lease_id}` → `{owner}`, and a PX
// ttl. Release is the native `HDEL key lease_id`: it removes only that lease's field, and
// Redis deletes the hash with its last field — an owner-checked delete without a script.
// The fence counter moves only when a grant succeeds, so while a lock is held the counter
// *is* the holder's token (nobody else can be granted until the key is gone).
//
// Locks written by earlier versions (a string `{lease_id}\n{owner}`) are still seen: a
// grant refuses while one exists (it checks only existence), and the holder scripts report
// its owner. Commands on the wrong type are treated as "not this lease".

/// The owner of the lock in KEYS[1] (a lease hash, or the earlier string layout). Defined
/// after a script's fast path: a Lua `local function` costs a closure each time it runs.
const OWNER_OF: &str = r"
local function owner_of(key)
  local held = redis.pcall('HGETALL', key)
  if held[2] then return held[2] end
  held = redis.pcall('GET', key)
  if type(held) == 'string' then return string.match(held, '\n(.*)$') or '' end
  return ''
end
";

/// Grant: the token alone (an integer); when held, `{0, owner, token, ttl_left_ms}` of the
/// holder. The counter is seeded from `TIME` (µs) when first created, then incremented per
/// grant. The grant returns a bare integer because a table reply costs Redis 7.0 more than
/// the rest of the script (measured: ~12 µs of a ~180 µs cycle; docs/benchmarks.md).
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  local token = redis.call('INCR', KEYS[2])
  if token == 1 then
    local t = redis.call('TIME')
    token = tonumber(t[1]) * 1000000 + tonumber(t[2])
    redis.call('SET', KEYS[2], string.format('%d', token))
  end
  return token
end
{OWNER_OF}
return {{0, owner_of(KEYS[1]), tonumber(redis.call('GET', KEYS[2]) or '0'), redis.call('PTTL', KEYS[1])}}
"
    ))
});

static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local owner = redis.pcall('HGET', KEYS[1], ARGV[1])
if type(owner) ~= 'string' then return {0, '', 0, 0} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, owner, tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(ARGV[2])}
",
    )
});

static HOLDER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {{0, '', 0, 0}} end
{OWNER_OF}
return {{1, owner_of(KEYS[1]), tonumber(redis.call('GET', KEYS[2]) or '0'), redis.call('PTTL', KEYS[1])}}
"
    ))
});

/// Raises the fence counter (the holder's token) to at least ARGV[2], if ARGV[1] still
/// holds the lock (Redlock's write-back round).
static RAISE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.pcall('HEXISTS', KEYS[1], ARGV[1]) ~= 1 then return 0 end
local c = tonumber(redis.call('GET', KEYS[2]) or '0')
if c < tonumber(ARGV[2]) then redis.call('SET', KEYS[2], ARGV[2]) end
return 1
",
    )
});

/// `{granted-or-present, owner, token, ttl_left_ms}` as the scripts return it.
pub(crate) type Reply = (i64, String, u64, i64);

/// Unix ms at which a remaining ttl ends (by this host's clock; an estimate).
pub(crate) fn expiry(ttl_left_ms: i64) -> u64 {
    mainstay_core::clock::now_ms() + ttl_left_ms.max(0) as u64
}

/// One Redis server with Mainstay's key layout; shared by the Redis and Redlock backends.
#[derive(Clone)]
pub(crate) struct RedisNode {
    conn: ConnectionManager,
    prefix: String,
}

fn redis_err(e: impl std::fmt::Display) -> LockError {
    LockError::backend("redis", e)
}

impl RedisNode {
    /// Connects lazily (Redlock must start with some instances down) with short timeouts.
    pub(crate) fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, LockError> {
        let client = redis::Client::open(url)
            .map_err(|e| LockError::Config(format!("invalid Redis URL {url:?}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(redis_err)?;
        Ok(RedisNode {
            conn,
            prefix: prefix.to_string(),
        })
    }

    fn lock_key(&self, name: &LockName) -> String {
        format!("{}lock:{{{}}}", self.prefix, name)
    }

    fn fence_key(&self, name: &LockName) -> String {
        format!("{}fence:{{{}}}", self.prefix, name)
    }

    pub(crate) async fn acquire(
        &self,
        name: &LockName,
        lease_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Reply, LockError> {
        let (lock, fence) = (self.lock_key(name), self.fence_key(name));
        let mut conn = self.conn.clone();
        let ttl_ms = ttl.as_millis() as u64;
        let reply: redis::Value = ACQUIRE
            .key(lock)
            .key(fence)
            .arg(lease_id)
            .arg(ttl_ms)
            .arg(owner)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
        match reply {
            redis::Value::Int(token) if token > 0 => {
                Ok((1, String::new(), token as u64, ttl_ms as i64))
            }
            held => redis::from_redis_value(held).map_err(redis_err),
        }
    }

    pub(crate) async fn extend(
        &self,
        name: &LockName,
        lease_id: &str,
        ttl: Duration,
    ) -> Result<Reply, LockError> {
        let (lock, fence) = (self.lock_key(name), self.fence_key(name));
        let mut conn = self.conn.clone();
        EXTEND
            .key(lock)
            .key(fence)
            .arg(lease_id)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)
    }

    pub(crate) async fn release(&self, name: &LockName, lease_id: &str) -> Result<bool, LockError> {
        let lock = self.lock_key(name);
        let mut conn = self.conn.clone();
        let n: redis::RedisResult<i64> = redis::cmd("HDEL")
            .arg(lock)
            .arg(lease_id)
            .query_async(&mut conn)
            .await;
        match n {
            Ok(n) => Ok(n > 0),
            // A lock in the earlier string layout is not this lease's.
            Err(e) if e.code() == Some("WRONGTYPE") => Ok(false),
            Err(e) => Err(redis_err(e)),
        }
    }

    pub(crate) async fn holder(&self, name: &LockName) -> Result<Option<Holder>, LockError> {
        let (lock, fence) = (self.lock_key(name), self.fence_key(name));
        let mut conn = self.conn.clone();
        let r: Reply = HOLDER
            .key(lock)
            .key(fence)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(reply_holder(r))
    }

    pub(crate) async fn raise(
        &self,
        name: &LockName,
        lease_id: &str,
        token: u64,
    ) -> Result<bool, LockError> {
        let (lock, fence) = (self.lock_key(name), self.fence_key(name));
        let mut conn = self.conn.clone();
        let n: i64 = RAISE
            .key(lock)
            .key(fence)
            .arg(lease_id)
            .arg(token)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(n == 1)
    }
}

pub(crate) fn reply_holder((present, owner, token, ttl_left): Reply) -> Option<Holder> {
    (present == 1).then_some(Holder {
        owner,
        fencing_token: token,
        expires_at_ms: expiry(ttl_left),
    })
}

/// Locks on one Redis server.
#[derive(Clone)]
pub struct RedisBackend {
    node: RedisNode,
    released: std::sync::Arc<Notify>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.node.prefix)
            .finish()
    }
}

impl RedisBackend {
    /// Connects to `url` (`redis://host:port/db`) using the key prefix `mainstay:`.
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        Self::connect_with_prefix(url, "mainstay:").await
    }

    /// Connects with a custom key prefix (one keyspace per application or test).
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self, LockError> {
        let node = RedisNode::connect(url, prefix, Duration::from_secs(2))?;
        // Report a wrong address (after retrying until the connect deadline) rather than
        // fail at the first lock call.
        let check = LockName::new("mainstay-connect-check")?;
        mainstay_core::connect::with_retry(
            "redis",
            &mainstay_core::connect::redact(url),
            // A refused password stays refused.
            |e: &LockError| {
                e.is_transient() && !e.to_string().to_ascii_lowercase().contains("auth")
            },
            |_| node.holder(&check),
        )
        .await
        .map_err(redis_err)?;
        Ok(RedisBackend {
            node,
            released: Default::default(),
        })
    }
}

#[async_trait]
impl LockBackend for RedisBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Redis
    }

    async fn try_acquire(
        &self,
        name: &LockName,
        lease_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<TryAcquire, LockError> {
        let sent = Instant::now();
        let reply = self.node.acquire(name, lease_id, owner, ttl).await?;
        if reply.0 == 1 {
            return Ok(TryAcquire::Acquired(Lease::new(
                name,
                lease_id,
                owner,
                reply.2,
                expiry(reply.3),
                ttl,
                sent,
            )));
        }
        Ok(TryAcquire::Held(reply_holder((
            1, reply.1, reply.2, reply.3,
        ))))
    }

    async fn extend(
        &self,
        name: &LockName,
        lease_id: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, LockError> {
        let sent = Instant::now();
        let (ok, owner, token, ttl_left) = self.node.extend(name, lease_id, ttl).await?;
        Ok((ok == 1)
            .then(|| Lease::new(name, lease_id, &owner, token, expiry(ttl_left), ttl, sent)))
    }

    async fn release(&self, name: &LockName, lease_id: &str) -> Result<bool, LockError> {
        let released = self.node.release(name, lease_id).await?;
        if released {
            self.released.notify_waiters();
        }
        Ok(released)
    }

    async fn holder(&self, name: &LockName) -> Result<Option<Holder>, LockError> {
        self.node.holder(name).await
    }

    fn release_signal(&self) -> Option<&Notify> {
        Some(&self.released)
    }
}
