//! Integration tests of mainstay-txn against real SQLite files and a real PostgreSQL.
mod choreography;
mod common;
mod sagas;
mod threepc;
mod twopc;
