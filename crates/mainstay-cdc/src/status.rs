//! What an operator asks of a running (or stopped) connector's slot.

use crate::error::CdcError;
use crate::postgres::{db_message, Endpoint};

/// A replication slot as the server reports it.
#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SlotStatus {
    /// The slot's name.
    pub slot: String,
    /// Whether a walsender holds it now.
    pub active: bool,
    /// The walsender's pid.
    pub active_pid: Option<i32>,
    /// The position the consumer confirmed (`16/B374D848`).
    pub confirmed_flush_lsn: Option<String>,
    /// The server's current WAL position.
    pub current_lsn: String,
    /// WAL written since the confirmed position: how far the consumer is behind.
    pub lag_bytes: Option<i64>,
    /// WAL the server keeps for this slot (from its restart LSN).
    pub retained_wal_bytes: Option<i64>,
}

/// Reads `slot` on the server at `url`; `None` when there is no such slot.
pub async fn slot_status(url: &str, slot: &str) -> Result<Option<SlotStatus>, CdcError> {
    let endpoint = Endpoint::parse(url)?;
    let client = endpoint.connect().await?;
    let row = client
        .query_opt(
            "SELECT active, active_pid, confirmed_flush_lsn::text, pg_current_wal_lsn()::text, \
             (pg_current_wal_lsn() - confirmed_flush_lsn)::int8, (pg_current_wal_lsn() - restart_lsn)::int8 \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| endpoint.error(db_message(&e)))?;
    Ok(row.map(|r| SlotStatus {
        slot: slot.to_string(),
        active: r.get(0),
        active_pid: r.get(1),
        confirmed_flush_lsn: r.get(2),
        current_lsn: r.get(3),
        lag_bytes: r.get(4),
        retained_wal_bytes: r.get(5),
    }))
}
