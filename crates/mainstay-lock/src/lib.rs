//! Distributed locks with leases and **fencing tokens**, and leader election (seed Part I §1).
//!
//! A grant is a [`Lease`]: an unguessable `lease_id` (the capability to extend or release),
//! a [`fencing token`](Lease::fencing_token) that is strictly greater than every token
//! issued before for the same lock name, and an expiry. [`LockClient`] is the entry point;
//! it runs over one [`LockBackend`] per engine, each behind a cargo feature:
//!
//! | backend | mutual exclusion holds while… | fencing token | waiting |
//! |---|---|---|---|
//! | `sqlite` (default) | processes share one host and its clock | row counter, durable | polling |
//! | `postgres` | the database is up; expiry uses the database's clock | row counter, durable | polling |
//! | `redis` | one Redis instance, no failover | counter seeded from Redis `TIME`, never expires | polling |
//! | `redlock` | a majority of N independent Redis instances agree, clocks drift < 1% | max over a majority, written back to a majority | polling |
//! | `etcd` | the etcd cluster keeps quorum | the key's create revision | FIFO, watches only its predecessor |
//! | `zookeeper` | the ensemble keeps quorum (expiry by the leader's clock) | the lock node's creation zxid | FIFO, watches only its predecessor |
//!
//! **What no lease-based lock guarantees:** a holder paused (GC, SIGSTOP, swap) or cut off
//! past its ttl still *believes* it holds the lock while another holder has it. Without a
//! resource that checks the fencing token, every backend here is an *efficiency* lock.
//! Put a [`fence`] guard in front of the data (PostgreSQL function, Redis function) to make
//! stale holders' writes fail. [`KeepAlive::lost`] fires *before* the backend's expiry when
//! renewal fails, so a well-behaved holder stops in time; the fence catches the rest.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use mainstay_lock::{AcquireOptions, LockClient, LockError};
//! use std::time::Duration;
//!
//! # let dir = tempfile::tempdir()?;
//! let locks = LockClient::new(mainstay_lock::sqlite::SqliteBackend::open(dir.path().join("locks.db"))?);
//! let lease = locks.acquire("invoices", &AcquireOptions::ttl(Duration::from_secs(30)).owner("billing-1")).await?;
//! // Someone else is refused and told who holds the lock.
//! match locks.try_acquire("invoices", &AcquireOptions::ttl(Duration::from_secs(30))).await {
//!     Err(LockError::Busy { holder: Some(h), .. }) => assert_eq!(h.owner, "billing-1"),
//!     other => panic!("{other:?}"),
//! }
//! let guard = locks.keep_alive(lease)?; // renews every ttl/3; guard.lost() fires if it cannot
//! let token = guard.fencing_token();    // pass it to the resource with every write
//! assert!(guard.release().await?);
//! let next = locks.try_acquire("invoices", &AcquireOptions::ttl(Duration::from_secs(30))).await?;
//! assert!(next.fencing_token > token);
//! # Ok(()) }
//! ```
//!
//! Tokens never go backwards within a [`LockClient`]: a grant whose token is not above the
//! highest this client has seen for that name is released and refused
//! ([`LockError::FencingRegression`]), which catches a backend that lost its counter.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod backend;
mod client;
mod election;
mod error;
pub mod fence;
mod keepalive;
mod lease;

#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redlock")]
pub mod redlock;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "zookeeper")]
pub mod zookeeper;

mod connect;

pub use backend::{LockBackend, TryAcquire};
pub use client::{AcquireOptions, LockClient};
pub use connect::connect;
pub use election::{Election, Leader, Leadership};
pub use error::LockError;
pub use keepalive::KeepAlive;
pub use lease::{Holder, Lease, LockName, MAX_NAME_CHARS, MAX_TTL, MAX_WAIT};
pub use mainstay_core::config::{BackendConfig, BackendKind};
