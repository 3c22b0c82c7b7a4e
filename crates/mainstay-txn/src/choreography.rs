//! Saga choreography (seed Part I §2, "Saga Pattern — Choreography"): services react to
//! each other's events — Order → Inventory → Payment — and failure events trigger the
//! compensations, with no orchestrator.
//!
//! A [`Service`] maps event kinds to handlers; each handler returns the events it causes.
//! [`Service::start`] consumes from an [`EventBus`]: for every delivery it runs the handler,
//! publishes the resulting events, and only then acknowledges. Two buses:
//! [`InProcessBus`] (tests, one process) and, with the `nats` feature,
//! [`nats::NatsBus`] on JetStream (durable consumers, explicit acks, publish
//! deduplication by event id).
//!
//! **Guarantees (JetStream).** At-least-once: an event is acknowledged only after the
//! handler succeeded and its consequences were published, so a crash or a handler error
//! redelivers it. Caused events get ids derived from their cause ([`Event::caused_by`]),
//! so a redelivery republishes the *same* ids and JetStream's duplicate window drops them.
//! **Not guaranteed:** exactly-once handler execution — handlers must be idempotent by
//! event id (the example's services keep the ids they processed); ordering across event
//! kinds; anything for [`InProcessBus`] across a process crash (it is memory only).

#[cfg(feature = "nats")]
pub mod nats;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// A domain event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id; publishing the same id twice is deduplicated (JetStream).
    pub id: String,
    /// What happened, e.g. `OrderCreated` (letters, digits, `_` and `-`).
    pub kind: String,
    /// The business transaction it belongs to (e.g. the order id).
    pub saga_id: String,
    /// The data.
    pub payload: Value,
}

impl Event {
    /// A new event with a fresh unguessable id.
    pub fn new(kind: impl Into<String>, saga_id: impl Into<String>, payload: Value) -> Self {
        Event {
            id: mainstay_core::id::unguessable(),
            kind: kind.into(),
            saga_id: saga_id.into(),
            payload,
        }
    }

    /// An event caused by this one, with an id derived from this one's: handling a
    /// redelivered event yields the same ids again.
    pub fn caused_by(&self, kind: impl Into<String>, payload: Value) -> Self {
        let kind = kind.into();
        Event {
            id: format!("{}>{kind}", self.id),
            kind,
            saga_id: self.saga_id.clone(),
            payload,
        }
    }
}

/// A bus failure.
#[derive(Debug, thiserror::Error)]
#[error("event bus: {0}")]
pub struct BusError(pub String);

/// Acknowledges one delivery.
#[async_trait]
pub trait Acker: Send {
    /// Done: never deliver it again to this consumer.
    async fn ack(self: Box<Self>) -> Result<(), BusError>;
    /// Failed: deliver it again later.
    async fn nak(self: Box<Self>) -> Result<(), BusError>;
}

/// One event delivered to one consumer.
pub struct Delivery {
    /// The event.
    pub event: Event,
    acker: Box<dyn Acker>,
}

impl Delivery {
    /// A delivery acknowledged through `acker`.
    pub fn new(event: Event, acker: Box<dyn Acker>) -> Self {
        Delivery { event, acker }
    }

    /// See [`Acker::ack`].
    pub async fn ack(self) -> Result<(), BusError> {
        self.acker.ack().await
    }

    /// See [`Acker::nak`].
    pub async fn nak(self) -> Result<(), BusError> {
        self.acker.nak().await
    }
}

/// A stream of deliveries for one consumer.
#[async_trait]
pub trait Subscription: Send {
    /// The next delivery; `None` when the bus closed.
    async fn next(&mut self) -> Option<Result<Delivery, BusError>>;
}

/// Where services publish and consume events.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes `event` (durably, for JetStream: returns after the server stored it).
    async fn publish(&self, event: &Event) -> Result<(), BusError>;
    /// Consumes events of `kinds` as the durable consumer `consumer`: consumers with
    /// different names each get every event; one name shares the work.
    async fn subscribe(
        &self,
        consumer: &str,
        kinds: &[String],
    ) -> Result<Box<dyn Subscription>, BusError>;
}

/// A consumer: the kinds it wants, and where they go.
type Consumer = (Vec<String>, mpsc::UnboundedSender<Event>);

/// An in-memory bus for one process (tests, examples): every consumer gets every event of
/// its kinds, in publish order. Nothing survives the process.
#[derive(Clone, Default)]
pub struct InProcessBus {
    consumers: Arc<Mutex<Vec<Consumer>>>,
}

impl InProcessBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }
}

struct NoAck;

#[async_trait]
impl Acker for NoAck {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        Ok(())
    }
    async fn nak(self: Box<Self>) -> Result<(), BusError> {
        Ok(())
    }
}

struct InProcessSubscription(mpsc::UnboundedReceiver<Event>);

#[async_trait]
impl Subscription for InProcessSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        self.0
            .recv()
            .await
            .map(|e| Ok(Delivery::new(e, Box::new(NoAck))))
    }
}

#[async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        let mut consumers = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
        consumers
            .retain(|(kinds, tx)| !kinds.contains(&event.kind) || tx.send(event.clone()).is_ok());
        Ok(())
    }

    async fn subscribe(
        &self,
        _consumer: &str,
        kinds: &[String],
    ) -> Result<Box<dyn Subscription>, BusError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((kinds.to_vec(), tx));
        Ok(Box::new(InProcessSubscription(rx)))
    }
}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<Vec<Event>, String>> + Send>>;
type Handler = Arc<dyn Fn(Event) -> HandlerFuture + Send + Sync>;

/// A choreographed service: handlers by event kind.
#[derive(Clone)]
pub struct Service {
    name: String,
    handlers: HashMap<String, Handler>,
}

impl Service {
    /// A service whose durable consumer is called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Service {
            name: name.into(),
            handlers: HashMap::new(),
        }
    }

    /// Handles events of `kind`: the handler returns the events it causes (use
    /// [`Event::caused_by`]), or an error to have the event redelivered.
    pub fn on<F, Fut>(mut self, kind: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<Event>, String>> + Send + 'static,
    {
        self.handlers
            .insert(kind.into(), Arc::new(move |e| Box::pin(handler(e))));
        self
    }

    /// Subscribes, then processes deliveries on a spawned task until the bus closes:
    /// handler, publish what it caused, ack — or nak when the handler or a publish
    /// failed. Returns once the subscription exists, so events published afterwards
    /// reach this service.
    pub async fn start(
        self,
        bus: Arc<dyn EventBus>,
    ) -> Result<tokio::task::JoinHandle<Result<(), BusError>>, BusError> {
        let kinds: Vec<String> = self.handlers.keys().cloned().collect();
        let sub = bus.subscribe(&self.name, &kinds).await?;
        Ok(tokio::spawn(self.consume(bus, sub)))
    }

    async fn consume(
        self,
        bus: Arc<dyn EventBus>,
        mut sub: Box<dyn Subscription>,
    ) -> Result<(), BusError> {
        while let Some(delivery) = sub.next().await {
            let delivery = match delivery {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(service = %self.name, error = %e, "event bus error");
                    continue;
                }
            };
            let Some(handler) = self.handlers.get(&delivery.event.kind) else {
                delivery.ack().await?;
                continue;
            };
            let outcome = match handler(delivery.event.clone()).await {
                Ok(caused) => {
                    let mut published = Ok(());
                    for e in &caused {
                        if let Err(err) = bus.publish(e).await {
                            published = Err(err.to_string());
                            break;
                        }
                    }
                    published
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => delivery.ack().await?,
                Err(e) => {
                    tracing::warn!(service = %self.name, event = %delivery.event.id, error = %e, "handler failed; event will be redelivered");
                    delivery.nak().await?;
                }
            }
        }
        Ok(())
    }
}
