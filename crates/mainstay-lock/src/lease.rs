//! Lock names, leases and holders.

use crate::error::LockError;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;

/// Longest accepted lock name, in characters.
pub const MAX_NAME_CHARS: usize = 256;
/// Longest accepted lease ttl (24 hours): longer is a configuration mistake, not a lease.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest accepted acquire wait (24 hours).
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// A validated lock name: 1–256 characters, no `/`, no control characters.
///
/// Internal names (elections) live in a namespace users cannot reach: they contain `/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LockName(String);

impl LockName {
    /// Validates a user-supplied name.
    pub fn new(name: &str) -> Result<Self, LockError> {
        let reason = if name.is_empty() {
            Some("must not be empty")
        } else if name.chars().count() > MAX_NAME_CHARS {
            Some("must be at most 256 characters")
        } else if name.contains('/') {
            Some("must not contain '/'")
        } else if name.chars().any(char::is_control) {
            Some("must not contain control characters")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(LockError::InvalidName {
                name: name.chars().take(300).collect(),
                reason,
            }),
            None => Ok(LockName(name.to_string())),
        }
    }

    /// The lock that backs the election `name` (a namespace users cannot name).
    pub fn election(name: &str) -> Result<Self, LockError> {
        let user = LockName::new(name)?;
        Ok(LockName(format!("election/{}", user.0)))
    }

    /// Parses a name as stored in a [`Lease`]: a user name or an election's lock name.
    pub fn from_lease(name: &str) -> Result<Self, LockError> {
        match name.strip_prefix("election/") {
            Some(election) => LockName::election(election),
            None => LockName::new(name),
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for LockName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A granted lock.
///
/// `fencing_token` is strictly greater than every token issued before for this name; pass
/// it to the protected resource with every write (see [`crate::fence`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Lease {
    /// The lock name.
    pub name: String,
    /// Unguessable id; whoever has it may extend or release the lease.
    pub lease_id: String,
    /// Who holds it (free text for operators).
    pub owner: String,
    /// The fencing token of this grant.
    pub fencing_token: u64,
    /// When the backend will consider the lease expired, in Unix milliseconds by the
    /// backend's clock (an estimate for etcd and ZooKeeper).
    pub expires_at_ms: u64,
    /// The granted ttl in milliseconds (may be rounded up by the backend: etcd leases are
    /// whole seconds; Redlock subtracts the clock-drift allowance).
    pub ttl_ms: u64,
    /// Local deadline: the lease is certainly valid before this instant (measured from
    /// before the request was sent). Not serialized.
    #[serde(skip, default = "Instant::now")]
    pub(crate) valid_until: Instant,
}

impl Lease {
    /// Builds a lease as a backend reports it. `sent` is the instant the request that
    /// granted or extended it was sent: the backend counts the ttl from a later moment, so
    /// `sent + ttl` is a safe local deadline.
    pub fn new(
        name: &LockName,
        lease_id: &str,
        owner: &str,
        fencing_token: u64,
        expires_at_ms: u64,
        ttl: Duration,
        sent: Instant,
    ) -> Self {
        Lease {
            name: name.as_str().to_string(),
            lease_id: lease_id.to_string(),
            owner: owner.to_string(),
            fencing_token,
            expires_at_ms,
            ttl_ms: ttl.as_millis() as u64,
            valid_until: sent + ttl,
        }
    }

    /// The granted ttl.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    /// The local instant before which the lease is certainly still valid.
    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }
}

/// Who holds a lock, as others may see it (never the lease id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Holder {
    /// The holder's owner string.
    pub owner: String,
    /// The holder's fencing token.
    pub fencing_token: u64,
    /// When the holder's lease expires, Unix milliseconds.
    pub expires_at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(LockName::new("orders-db").is_ok());
        assert!(LockName::new(&"x".repeat(256)).is_ok());
        for bad in ["", "a/b", "tab\there"] {
            assert!(
                matches!(LockName::new(bad), Err(LockError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        assert!(LockName::new(&"x".repeat(257)).is_err());
        assert_eq!(LockName::election("e").unwrap().as_str(), "election/e");
    }
}
