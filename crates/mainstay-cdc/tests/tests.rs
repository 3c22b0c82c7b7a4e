//! mainstay-cdc against a real PostgreSQL from the test kit (one shared server; a fresh
//! database and slot per test).

mod common;
mod consistency;
mod envelope;
mod restart;
mod setup;
mod slot;
