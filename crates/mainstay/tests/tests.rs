//! Integration tests of the `mainstay` binary and its HTTP API (one test binary).

mod cdc_crash;
mod cdc_failover;
mod cdc_serve;
mod cli;
mod common;
mod events_crash;
mod events_http;
mod holders;
mod http;
mod participant;
mod saga_crash;
mod saga_http;
mod twopc_crash;
mod twopc_http;
