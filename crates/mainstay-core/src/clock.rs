//! The wall clock, in milliseconds since the Unix epoch.
//!
//! Used for expiry stamps that several processes compare (the embedded SQLite lock table).
//! A wall clock can jump; callers document what a jump does to their guarantee.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch by the system clock; 0 if the clock is before 1970.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
