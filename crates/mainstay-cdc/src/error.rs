//! Errors of a change-data-capture connector.

/// What went wrong; each message names the thing and, for setup problems, the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CdcError {
    /// The configuration is invalid (names what and why).
    #[error("invalid cdc configuration: {0}")]
    Config(String),
    /// The source database is not set up for logical replication, or the user lacks a
    /// permission; the message says what to change.
    #[error("{0}")]
    Setup(String),
    /// The replication slot is held by another process (another connector, or a
    /// `pg_recvlogical`).
    #[error("replication slot {slot:?} is in use by another process (pid {pid}); stop it or choose another --slot")]
    SlotBusy {
        /// The slot's name.
        slot: String,
        /// The walsender pid holding it.
        pid: i32,
    },
    /// A connection to the source failed or broke.
    #[error("postgresql at {address}: {message}")]
    Source {
        /// Host and port (no password).
        address: String,
        /// What failed.
        message: String,
    },
    /// A value or message could not be decoded.
    #[error("decode: {0}")]
    Decode(String),
    /// The sink failed to take a batch; nothing past the last acknowledged position was
    /// confirmed to the slot.
    #[error("sink {sink}: {message}")]
    Sink {
        /// The sink's name.
        sink: String,
        /// What failed.
        message: String,
    },
    /// A sink refused a write because a newer connector instance (a later leadership
    /// epoch) has claimed it: this instance was deposed and must stop writing.
    #[error("sink {sink} refused fencing token {presented}: a newer instance holds token {current} (this one was deposed)")]
    Fenced {
        /// The sink's name.
        sink: String,
        /// The token this instance presented.
        presented: u64,
        /// The highest token the sink has seen.
        current: u64,
    },
}
