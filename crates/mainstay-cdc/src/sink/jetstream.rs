//! NATS JetStream: one message per event on `<prefix>.<schema>.<table>` (Debezium's topic
//! naming; logical messages on `<prefix>.message`), in source order, exactly once.
//!
//! Every publish carries `Nats-Expected-Last-Sequence`, so the stream only ever holds a
//! gap-free prefix of the connector's events: if one publish of a pipelined batch fails,
//! the ones after it are refused too. Each message carries its position
//! (`Mainstay-Position`) and `Nats-Msg-Id`; after a restart the sink reads the position of
//! the stream's last message and the connector skips everything up to it — exactly once
//! for as long as the stream keeps its last message, not only within the duplicate window.
//! The stream belongs to the connector: another publisher on its subjects makes writes fail.

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use async_trait::async_trait;

use super::Sink;
use crate::error::CdcError;
use crate::event::{now_us, ChangeEvent, Position};
use crate::outbox::OutboxRouter;

/// The header holding an event's position: `commit_lsn/lsn/index/s` (snapshot) or `/c`.
pub const POSITION_HEADER: &str = "Mainstay-Position";

/// Publishes events to a JetStream stream it creates if missing.
pub struct JetStreamSink {
    js: jetstream::Context,
    stream: String,
    prefix: String,
    connector: String,
    /// The stream's last sequence as this sink knows it.
    last_sequence: u64,
    outbox: Option<OutboxRouter>,
}

/// The header carrying an outbox event's aggregate id (its message key).
pub const AGGREGATE_ID_HEADER: &str = "Mainstay-Aggregate-Id";
/// The header carrying an outbox event's type.
pub const EVENT_TYPE_HEADER: &str = "Mainstay-Event-Type";

fn sink_err(e: impl std::fmt::Display) -> CdcError {
    CdcError::Sink {
        sink: "jetstream".into(),
        message: e.to_string(),
    }
}

/// A subject token: no dots, spaces or wildcards.
fn token(name: &str) -> String {
    name.chars()
        .map(|c| {
            if matches!(c, '.' | ' ' | '*' | '>' | '\t') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

impl JetStreamSink {
    /// Connects to `url` and makes sure `stream` exists with subjects `<prefix>.>`.
    /// `connector` names the connector in each `Nats-Msg-Id`.
    pub async fn connect(
        url: &str,
        stream: &str,
        prefix: &str,
        connector: &str,
    ) -> Result<JetStreamSink, CdcError> {
        Self::connect_with_outbox(url, stream, prefix, connector, None).await
    }

    /// As [`JetStreamSink::connect`], routing the outbox table's inserts as outbox events
    /// (subject `<route_prefix>.<aggregatetype>`, body the payload, `Nats-Msg-Id` the
    /// event id, the aggregate id and type in headers) instead of change envelopes; the
    /// stream then also takes `<route_prefix>.>`.
    pub async fn connect_with_outbox(
        url: &str,
        stream: &str,
        prefix: &str,
        connector: &str,
        outbox: Option<OutboxRouter>,
    ) -> Result<JetStreamSink, CdcError> {
        if stream.is_empty() || stream.contains(['.', ' ', '*', '>']) {
            return Err(CdcError::Config(format!(
                "JetStream stream name {stream:?} must be non-empty, without '.', spaces or wildcards"
            )));
        }
        let client = mainstay_core::connect::with_retry(
            "nats",
            url,
            |_: &async_nats::ConnectError| true,
            |_| async_nats::connect(url),
        )
        .await
        .map_err(sink_err)?;
        let js = jetstream::new(client);
        let prefix = token(prefix);
        let mut s = js
            .get_or_create_stream(jetstream::stream::Config {
                name: stream.to_string(),
                subjects: std::iter::once(format!("{prefix}.>"))
                    .chain(outbox.iter().map(|o| format!("{}.>", o.route_prefix)))
                    .collect(),
                ..Default::default()
            })
            .await
            .map_err(sink_err)?;
        let last_sequence = s.info().await.map_err(sink_err)?.state.last_sequence;
        Ok(JetStreamSink {
            js,
            stream: stream.to_string(),
            prefix,
            connector: connector.to_string(),
            last_sequence,
            outbox,
        })
    }

    fn subject(&self, event: &ChangeEvent) -> String {
        if event.op == crate::event::Op::Transaction {
            format!("{}.transaction", self.prefix)
        } else if event.table.is_empty() {
            format!("{}.message", self.prefix)
        } else {
            format!(
                "{}.{}.{}",
                self.prefix,
                token(&event.schema),
                token(&event.table)
            )
        }
    }
}

#[async_trait]
impl Sink for JetStreamSink {
    fn name(&self) -> &str {
        "jetstream"
    }

    async fn last_position(&mut self) -> Result<Option<Position>, CdcError> {
        let mut stream = self.js.get_stream(&self.stream).await.map_err(sink_err)?;
        let last = stream.info().await.map_err(sink_err)?.state.last_sequence;
        self.last_sequence = last;
        if last == 0 {
            return Ok(None);
        }
        let message = stream.get_raw_message(last).await.map_err(sink_err)?;
        let position = message
            .headers
            .get(POSITION_HEADER)
            .and_then(|v| v.as_str().parse::<Position>().ok())
            .ok_or_else(|| {
                sink_err(format!(
                    "the last message of stream {} (sequence {last}) has no {POSITION_HEADER} header: \
                     another publisher writes to this connector's stream",
                    self.stream
                ))
            })?;
        Ok(Some(position))
    }

    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), CdcError> {
        let now = now_us();
        let mut acks: Vec<PublishAckFuture> = Vec::with_capacity(events.len());
        let mut expected = self.last_sequence;
        for event in events {
            let routed = match &self.outbox {
                Some(router) if router.owns(event) => {
                    match router.route(event).map_err(sink_err)? {
                        Some(outbox) => Some(outbox),
                        // Updates and deletes of outbox rows route nothing.
                        None => continue,
                    }
                }
                _ => None,
            };
            let position = event.position.to_text();
            let (subject, message) = match routed {
                Some(outbox) => {
                    let mut message = PublishMessage::build()
                        .payload(outbox.payload.into())
                        .message_id(&outbox.id)
                        .header(AGGREGATE_ID_HEADER, outbox.key.as_str());
                    if let Some(t) = &outbox.event_type {
                        message = message.header(EVENT_TYPE_HEADER, t.as_str());
                    }
                    (outbox.destination, message)
                }
                None => {
                    let payload = serde_json::to_vec(&event.envelope(now))
                        .map_err(|e| CdcError::Decode(format!("encoding an event: {e}")))?;
                    let message =
                        PublishMessage::build()
                            .payload(payload.into())
                            .message_id(format!(
                                "{}:{}",
                                self.connector,
                                event.position.dedupe_key()
                            ));
                    (self.subject(event), message)
                }
            };
            let message = message
                .header(POSITION_HEADER, position.as_str())
                .expected_last_sequence(expected);
            acks.push(
                self.js
                    .send_publish(subject, message)
                    .await
                    .map_err(sink_err)?,
            );
            expected += 1;
        }
        for ack in acks {
            let ack = ack.await.map_err(sink_err)?;
            self.last_sequence = ack.sequence;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_tokens_have_no_dots_spaces_or_wildcards() {
        assert_eq!(token("my.schema *x>"), "my_schema__x_");
    }
}
