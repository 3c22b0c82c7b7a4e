//! Redis as a cache kept in sync with tables (the seed's practice question 5): each row is
//! a key holding the row's JSON (`after`), set on create, update and snapshot read, deleted
//! on delete; a truncate deletes the table's keys.
//!
//! Exactly once: each batch runs in one `MULTI`/`EXEC` together with the batch's last
//! position on `<checkpoint key>`, so the cache and the record of how far it got change
//! together; after a restart the connector skips everything up to that position. Keys come
//! from a template: `{schema}`, `{table}` and `{key}` (the primary key's values joined by
//! `:`); rows of tables without a primary key are not cached (there is no key to name them).

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
        })
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

    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), CdcError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        // Keys this batch sets, by table: a truncate later in the batch deletes them too
        // (they are not in Redis yet for its SCAN to find).
        let mut set_here: std::collections::HashMap<(String, String), Vec<String>> =
            Default::default();
        for event in events {
            match event.op {
                Op::Create | Op::Update | Op::Read => {
                    if let (Some(key), Some(after)) = (self.row_key(event), &event.after) {
                        pipe.cmd("SET")
                            .arg(&key)
                            .arg(after.to_value().to_string())
                            .ignore();
                        set_here
                            .entry((event.schema.to_string(), event.table.to_string()))
                            .or_default()
                            .push(key);
                    }
                }
                Op::Delete => {
                    if let Some(key) = self.row_key(event) {
                        pipe.cmd("DEL").arg(key).ignore();
                    }
                }
                Op::Truncate => {
                    // Every key of the table, by the template with a wildcard key (SCAN
                    // runs before the transaction), and the ones this batch set before.
                    if let Some(keys) =
                        set_here.remove(&(event.schema.to_string(), event.table.to_string()))
                    {
                        for key in keys {
                            pipe.cmd("DEL").arg(key).ignore();
                        }
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
                        for key in keys {
                            pipe.cmd("DEL").arg(key).ignore();
                        }
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
                Op::Message | Op::Transaction | Op::Tombstone => {}
            }
        }
        pipe.cmd("SET")
            .arg(&self.checkpoint)
            .arg(last.position.to_text())
            .ignore();
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(sink_err)
    }
}
