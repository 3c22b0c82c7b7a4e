//! The event bus on NATS JetStream.
//!
//! One stream (default `MAINSTAY_EVENTS`) holds subjects `{prefix}.{kind}`. Publishing
//! sets `Nats-Msg-Id` to the event id, so the server drops a republished event inside its
//! duplicate window (2 minutes by default). Each (consumer, kind) pair is a durable pull
//! consumer with explicit acks: it resumes where it stopped after a restart, and an event
//! not acked within `ack_wait` (or nak'ed) is delivered again.
//!
//! Limit: JetStream cannot withdraw a pull request. A subscriber that stops leaves its
//! last one on the server until it expires (at most [`PULL_EXPIRES`]); an event the server
//! hands to it meanwhile reaches nobody and comes back after `ack_wait`. A restart of a
//! consumer can therefore delay an event by up to `ack_wait`; it never loses one.

use super::{Acker, BusError, Delivery, Event, EventBus, Subscription};
use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_trait::async_trait;
use futures::StreamExt;
use std::time::Duration;

/// How long one pull request waits on the server: short, so a stopped subscriber's last
/// request lapses soon (see the module docs).
pub const PULL_EXPIRES: Duration = Duration::from_secs(5);

fn err(e: impl std::fmt::Display) -> BusError {
    BusError(e.to_string())
}

/// Events on JetStream.
#[derive(Clone)]
pub struct NatsBus {
    js: jetstream::Context,
    stream: String,
    prefix: String,
    ack_wait: Duration,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("stream", &self.stream)
            .finish()
    }
}

impl NatsBus {
    /// Connects to `url` and creates (or reuses) the stream `stream` over
    /// `{prefix}.>` subjects.
    pub async fn connect(url: &str, stream: &str, prefix: &str) -> Result<Self, BusError> {
        let client = async_nats::connect(url).await.map_err(err)?;
        let js = jetstream::new(client);
        js.get_or_create_stream(jetstream::stream::Config {
            name: stream.to_string(),
            subjects: vec![format!("{prefix}.>")],
            ..Default::default()
        })
        .await
        .map_err(err)?;
        Ok(NatsBus {
            js,
            stream: stream.to_string(),
            prefix: prefix.to_string(),
            ack_wait: Duration::from_secs(30),
        })
    }

    /// How long a delivery may stay unacknowledged before it is redelivered. Default:
    /// 30 s. (Applies to consumers created afterwards.)
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }
}

struct NatsAck(jetstream::Message);

#[async_trait]
impl Acker for NatsAck {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        // Double ack: returns once the server recorded it, so a crash right after cannot
        // redeliver an event whose effects were published.
        self.0.double_ack().await.map_err(err)
    }

    async fn nak(self: Box<Self>) -> Result<(), BusError> {
        self.0
            .ack_with(AckKind::Nak(Some(Duration::from_millis(100))))
            .await
            .map_err(err)
    }
}

struct NatsSubscription {
    rx: tokio::sync::mpsc::Receiver<Result<Delivery, BusError>>,
}

#[async_trait]
impl Subscription for NatsSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        self.rx.recv().await
    }
}

fn check_kind(kind: &str) -> Result<(), BusError> {
    if kind.is_empty()
        || !kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(BusError(format!(
            "event kind {kind:?} must be letters, digits, '_' or '-'"
        )));
    }
    Ok(())
}

#[async_trait]
impl EventBus for NatsBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        check_kind(&event.kind)?;
        let body = serde_json::to_vec(event).map_err(err)?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.id.as_str());
        self.js
            .publish_with_headers(
                format!("{}.{}", self.prefix, event.kind),
                headers,
                body.into(),
            )
            .await
            .map_err(err)?
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn subscribe(
        &self,
        consumer: &str,
        kinds: &[String],
    ) -> Result<Box<dyn Subscription>, BusError> {
        let stream = self.js.get_stream(&self.stream).await.map_err(err)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        for kind in kinds {
            check_kind(kind)?;
            let name = format!("{consumer}-{kind}");
            let c = stream
                .get_or_create_consumer(
                    &name,
                    pull::Config {
                        durable_name: Some(name.clone()),
                        filter_subject: format!("{}.{kind}", self.prefix),
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        ack_wait: self.ack_wait,
                        ..Default::default()
                    },
                )
                .await
                .map_err(err)?;
            let mut messages = c
                .stream()
                .expires(PULL_EXPIRES)
                .heartbeat(PULL_EXPIRES / 3)
                .messages()
                .await
                .map_err(err)?;
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    // Stop pulling as soon as the subscriber is gone, so nothing more is
                    // fetched on its behalf.
                    let m = tokio::select! {
                        m = messages.next() => m,
                        _ = tx.closed() => return,
                    };
                    let Some(m) = m else { return };
                    let item = match m {
                        Ok(msg) => match serde_json::from_slice::<Event>(&msg.payload) {
                            Ok(event) => Ok(Delivery::new(event, Box::new(NatsAck(msg)))),
                            Err(e) => {
                                // Not ours to handle: terminate it so it is not redelivered.
                                let _ = msg.ack_with(AckKind::Term).await;
                                tracing::warn!(error = %e, "dropped a malformed event");
                                continue;
                            }
                        },
                        Err(e) => Err(err(e)),
                    };
                    if let Err(returned) = tx.send(item).await {
                        // The subscriber went away holding nothing: hand the event back
                        // for immediate redelivery rather than after ack_wait.
                        if let Ok(d) = returned.0 {
                            let _ = d.nak().await;
                        }
                        return;
                    }
                }
            });
        }
        Ok(Box::new(NatsSubscription { rx }))
    }
}
