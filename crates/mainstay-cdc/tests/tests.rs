//! mainstay-cdc against a real PostgreSQL from the test kit (one shared server; a fresh
//! database and slot per test).

mod common;
mod consistency;
mod envelope;
#[cfg(feature = "eventstore")]
mod eventstore;
mod incremental;
#[cfg(feature = "nats")]
mod jetstream;
#[cfg(feature = "nats")]
mod outbox;
#[cfg(feature = "postgres-sink")]
mod postgres_sink;
#[cfg(feature = "redis")]
mod redis_sink;
mod restart;
mod setup;
mod slot;
mod tls;
#[cfg(feature = "webhook")]
mod webhook;
