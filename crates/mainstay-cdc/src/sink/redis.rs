//! Redis as a cache kept in sync with tables (the seed's practice question 5): each row is
//! a key holding the row's JSON (`after`), set on create, update and snapshot read, deleted
//! on delete; a truncate deletes the table's keys.
//!
//! Exactly once: each batch runs in one `MULTI`/`EXEC` together with the batch's last
//! position on `<checkpoint key>`, so the cache and the record of how far it got change
//! together; after a restart the connector skips everything up to that position. Keys come
//! from a template: `{schema}`, `{table}` and `{key}` (the primary key's values joined by
//! `:`); rows of tables without a primary key are not cached (there is no key to name them).
//!
//! Fenced under high availability: [`Sink::fence`] stores the token at
//! `<checkpoint key>:fence` unless a higher one is there, and each batch is then one Lua
//! script that checks the token and applies the batch atomically — a deposed instance's
//! batch is refused whole ([`CdcError::Fenced`]).

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use super::Sink;
use crate::error::CdcError;
use crate::event::{ChangeEvent, Op, Position};

/// Keeps one Redis key per row.
pub struct RedisSink {
    conn: ConnectionManager,
    template: String,
    checkpoint: String,
    /// The fencing token under high availability.
    token: Option<u64>,
}

fn sink_err(e: impl std::fmt::Display) -> CdcError {
    CdcError::Sink {
        sink: "redis".into(),
        message: e.to_string(),
    }
}

impl RedisSink {
    /// Connects to `url`. `template` names each row's key (default
    /// `"{schema}.{table}:{key}"`); the position is kept at `checkpoint_key`.
    pub async fn connect(
        url: &str,
        template: &str,
        checkpoint_key: &str,
    ) -> Result<RedisSink, CdcError> {
        if !template.contains("{key}") {
            return Err(CdcError::Config(format!(
                "redis key template {template:?} must contain {{key}} (else every row of a table shares one key)"
            )));
        }
        let client = redis::Client::open(url).map_err(|e| {
            CdcError::Config(format!(
                "invalid Redis URL {}: {e}",
                mainstay_core::connect::redact(url)
            ))
        })?;
        let conn = mainstay_core::connect::with_retry(
            "redis",
            &mainstay_core::connect::redact(url),
            |e: &redis::RedisError| !e.to_string().to_lowercase().contains("auth"),
            |_| ConnectionManager::new(client.clone()),
        )
        .await
        .map_err(sink_err)?;
        Ok(RedisSink {
            conn,
            template: template.to_string(),
            checkpoint: checkpoint_key.to_string(),
            token: None,
        })
    }

    /// Where the highest fencing token is kept: `<checkpoint key>:fence`.
    pub fn fence_key(&self) -> String {
        format!("{}:fence", self.checkpoint)
    }

    fn key(&self, schema: &str, table: &str, key: &str) -> String {
        self.template
            .replace("{schema}", schema)
            .replace("{table}", table)
            .replace("{key}", key)
    }

    /// The key of an event's row, `None` for rows without a primary key.
    pub fn row_key(&self, event: &ChangeEvent) -> Option<String> {
        let key = event.key.as_ref()?.values_text(":");
        Some(self.key(&event.schema, &event.table, &key))
    }
}

#[async_trait]
impl Sink for RedisSink {
    fn name(&self) -> &str {
        "redis"
    }

    async fn last_position(&mut self) -> Result<Option<Position>, CdcError> {
        let text: Option<String> = redis::cmd("GET")
            .arg(&self.checkpoint)
            .query_async(&mut self.conn)
            .await
            .map_err(sink_err)?;
        match text {
            None => Ok(None),
            Some(t) => t
                .parse()
                .map(Some)
                .map_err(|e| sink_err(format!("checkpoint key {}: {e}", self.checkpoint))),
        }
    }

    async fn fence(&mut self, token: u64) -> Result<bool, CdcError> {
        let claimed: Result<i64, redis::RedisError> = redis::Script::new(CLAIM_SCRIPT)
            .key(self.fence_key())
            .arg(token)
            .invoke_async(&mut self.conn)
            .await;
        match claimed {
            Ok(_) => {
                self.token = Some(token);
                Ok(true)
            }
            Err(e) => Err(stale(&e, token).unwrap_or_else(|| sink_err(e))),
        }
    }

    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), CdcError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        // What the batch does, key by key in source order: Some(json) sets, None deletes.
        let mut ops: Vec<(String, Option<String>)> = Vec::with_capacity(events.len());
        // Keys this batch sets, by table: a truncate later in the batch deletes them too
        // (they are not in Redis yet for its SCAN to find).
        let mut set_here: std::collections::HashMap<(String, String), Vec<String>> =
            Default::default();
        for event in events {
            match event.op {
                Op::Create | Op::Update | Op::Read => {
                    if let (Some(key), Some(after)) = (self.row_key(event), &event.after) {
                        ops.push((key.clone(), Some(after.to_value().to_string())));
                        set_here
                            .entry((event.schema.to_string(), event.table.to_string()))
                            .or_default()
                            .push(key);
                    }
                }
                Op::Delete => {
                    if let Some(key) = self.row_key(event) {
                        ops.push((key, None));
                    }
                }
                Op::Truncate => {
                    // Every key of the table, by the template with a wildcard key (SCAN
                    // runs before the write), and the ones this batch set before.
                    if let Some(keys) =
                        set_here.remove(&(event.schema.to_string(), event.table.to_string()))
                    {
                        ops.extend(keys.into_iter().map(|k| (k, None)));
                    }
                    let pattern = self.key(&event.schema, &event.table, "*");
                    let mut cursor: u64 = 0;
                    loop {
                        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(1000)
                            .query_async(&mut self.conn)
                            .await
                            .map_err(sink_err)?;
                        ops.extend(keys.into_iter().map(|k| (k, None)));
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
                _ => {}
            }
        }
        let position = last.position.to_text();
        match self.token {
            // Fenced: one script checks the token and applies the batch, atomically.
            Some(token) => {
                let source = redis::Script::new(FENCED_WRITE_SCRIPT);
                let mut script = source.prepare_invoke();
                script
                    .key(self.fence_key())
                    .key(&self.checkpoint)
                    .arg(token)
                    .arg(&position);
                for (key, value) in &ops {
                    script.key(key);
                    match value {
                        Some(v) => script.arg("S").arg(v),
                        None => script.arg("D").arg(""),
                    };
                }
                let written: Result<i64, redis::RedisError> =
                    script.invoke_async(&mut self.conn).await;
                written
                    .map(|_| ())
                    .map_err(|e| stale(&e, token).unwrap_or_else(|| sink_err(e)))
            }
            None => {
                let mut pipe = redis::pipe();
                pipe.atomic();
                for (key, value) in &ops {
                    match value {
                        Some(v) => pipe.cmd("SET").arg(key).arg(v).ignore(),
                        None => pipe.cmd("DEL").arg(key).ignore(),
                    };
                }
                pipe.cmd("SET")
                    .arg(&self.checkpoint)
                    .arg(&position)
                    .ignore();
                pipe.query_async::<()>(&mut self.conn)
                    .await
                    .map_err(sink_err)
            }
        }
    }
}

/// Sets the fence key to the token unless it holds a higher one.
const CLAIM_SCRIPT: &str = r#"
local t = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if t < cur then
  return redis.error_reply('STALE_FENCING_TOKEN presented=' .. ARGV[1] .. ' current=' .. cur)
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"#;

/// KEYS: fence, checkpoint, then one key per operation; ARGV: token, position, then an
/// (op, value) pair per key — `S` sets, `D` deletes. Refuses a stale token before touching
/// anything.
const FENCED_WRITE_SCRIPT: &str = r#"
local t = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if t < cur then
  return redis.error_reply('STALE_FENCING_TOKEN presented=' .. ARGV[1] .. ' current=' .. cur)
end
for i = 3, #KEYS do
  local op = ARGV[(i - 3) * 2 + 3]
  if op == 'S' then
    redis.call('SET', KEYS[i], ARGV[(i - 3) * 2 + 4])
  else
    redis.call('DEL', KEYS[i])
  end
end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"#;

/// A script's stale-token refusal as [`CdcError::Fenced`].
fn stale(e: &redis::RedisError, presented: u64) -> Option<CdcError> {
    let text = e.to_string();
    let at = text.find("STALE_FENCING_TOKEN")?;
    let current = text[at..]
        .split("current=")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some(CdcError::Fenced {
        sink: "redis".into(),
        presented,
        current,
    })
}
