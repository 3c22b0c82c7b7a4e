//! `mainstay events append|read|tail`: the event store from the shell.
//!
//! These open the store directly (as `[events]` configures it), so they work with or
//! without a running server; events print as JSON lines with the position as a
//! `COMMIT/PREPARE` string.

use crate::config::Config;
use anyhow::Context;
use mainstay_eventstore::{
    subscribe, Direction, EventData, ExpectedVersion, Position, ReadAllFilter, SubscribeOptions,
};
use serde_json::Value;
use std::io::{BufRead, Write};
use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub(crate) enum EventsCommand {
    /// Append events atomically: one from --type/--data, or every JSON line on stdin
    /// ({"type", "data", "metadata"?, "id"?}) as one batch.
    Append {
        /// The stream.
        stream: String,
        /// The event's type (omit to read events from stdin).
        #[arg(long = "type")]
        event_type: Option<String>,
        /// The event's data (JSON).
        #[arg(long, default_value = "null")]
        data: String,
        /// The event's metadata (JSON).
        #[arg(long, default_value = "null")]
        metadata: String,
        /// The event's id (for an idempotent retry). Default: a fresh one.
        #[arg(long)]
        id: Option<String>,
        /// any, no_stream, stream_exists or a version number.
        #[arg(long, default_value = "any")]
        expected_version: String,
    },
    /// Read a stream (or `$all`) as JSON lines.
    Read {
        /// The stream, or `$all`.
        stream: String,
        /// Stream: first version to read (default 0, or the end when --backward).
        #[arg(long)]
        from: Option<u64>,
        /// Stream: newest first.
        #[arg(long)]
        backward: bool,
        /// `$all`: read after this position (COMMIT/PREPARE).
        #[arg(long)]
        after: Option<String>,
        /// `$all`: only streams starting with this.
        #[arg(long)]
        stream_prefix: Option<String>,
        /// `$all`: only these event types (comma-separated).
        #[arg(long, value_delimiter = ',')]
        event_types: Vec<String>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Follow `$all`: catch up, then print new events as they are appended.
    Tail {
        /// Start after this position (COMMIT/PREPARE). Default: the beginning.
        #[arg(long)]
        after: Option<String>,
        /// A durable subscription: start at its checkpoint, and save it after each
        /// printed event.
        #[arg(long)]
        subscription: Option<String>,
        /// Only streams starting with this.
        #[arg(long)]
        stream_prefix: Option<String>,
        /// Only these event types (comma-separated).
        #[arg(long, value_delimiter = ',')]
        event_types: Vec<String>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

fn json_arg(name: &str, text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).with_context(|| format!("--{name} is not valid JSON"))
}

/// One stdin line: `{"type", "data", "metadata"?, "id"?}`.
fn stdin_event(n: usize, line: &str) -> anyhow::Result<EventData> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        #[serde(rename = "type")]
        event_type: String,
        #[serde(default)]
        data: Value,
        #[serde(default)]
        metadata: Value,
        #[serde(default)]
        id: Option<String>,
    }
    let l: Line =
        serde_json::from_str(line).with_context(|| format!("stdin line {n} is not an event"))?;
    Ok(EventData {
        id: l.id.unwrap_or_else(mainstay_core::id::unguessable),
        event_type: l.event_type,
        data: l.data,
        metadata: l.metadata,
    })
}

fn filter(stream_prefix: Option<String>, event_types: Vec<String>) -> ReadAllFilter {
    ReadAllFilter {
        stream_prefix,
        event_types,
    }
}

fn position(s: Option<&str>) -> anyhow::Result<Position> {
    match s {
        None => Ok(Position::START),
        Some(s) => Ok(s.parse()?),
    }
}

pub(crate) async fn run(config: Config, cmd: EventsCommand) -> anyhow::Result<ExitCode> {
    let store = config.event_store().await?;
    let mut out = std::io::stdout().lock();
    match cmd {
        EventsCommand::Append {
            stream,
            event_type,
            data,
            metadata,
            id,
            expected_version,
        } => {
            let expected: ExpectedVersion = expected_version.parse().with_context(|| {
                format!(
                    "--expected-version must be any, no_stream, stream_exists or a number, not {expected_version:?}"
                )
            })?;
            let events = match event_type {
                Some(t) => vec![EventData {
                    id: id.unwrap_or_else(mainstay_core::id::unguessable),
                    event_type: t,
                    data: json_arg("data", &data)?,
                    metadata: json_arg("metadata", &metadata)?,
                }],
                None => {
                    let mut events = Vec::new();
                    for (n, line) in std::io::stdin().lock().lines().enumerate() {
                        let line = line.context("cannot read stdin")?;
                        if !line.trim().is_empty() {
                            events.push(stdin_event(n + 1, &line)?);
                        }
                    }
                    events
                }
            };
            let r = store.append(&stream, expected, events).await?;
            writeln!(out, "{}", r.to_wire_json(&stream))?;
        }
        EventsCommand::Read {
            stream,
            from,
            backward,
            after,
            stream_prefix,
            event_types,
            limit,
        } => {
            let limit = limit.clamp(1, 1_000_000);
            let events = if stream == "$all" {
                store
                    .read_all(
                        position(after.as_deref())?,
                        limit,
                        &filter(stream_prefix, event_types),
                    )
                    .await?
            } else {
                let direction = if backward {
                    Direction::Backward
                } else {
                    Direction::Forward
                };
                let from = from.unwrap_or(if backward { u64::MAX } else { 0 });
                store.read_stream(&stream, from, direction, limit).await?
            };
            for e in &events {
                writeln!(out, "{}", e.to_wire_json())?;
            }
        }
        EventsCommand::Tail {
            after,
            subscription,
            stream_prefix,
            event_types,
            count,
        } => {
            let mut options = SubscribeOptions::after(position(after.as_deref())?)
                .filter(filter(stream_prefix, event_types));
            options.name = subscription;
            let durable = options.name.is_some();
            let mut sub = subscribe(store, options).await?;
            let mut printed = 0u64;
            while count.is_none_or(|c| printed < c) {
                let e = sub.next().await?;
                writeln!(out, "{}", e.to_wire_json())?;
                out.flush()?;
                if durable {
                    sub.checkpoint().await?;
                }
                printed += 1;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
