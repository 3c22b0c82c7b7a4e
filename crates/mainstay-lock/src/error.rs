//! The one error type of the lock crate.

use crate::lease::Holder;

/// What went wrong with a lock or election call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The lock name is empty, too long, or contains `/` or a control character.
    #[error("invalid lock name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A ttl or wait outside the accepted range.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// Which argument (`ttl`, `wait`, `owner`).
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The lock is held by someone else and the wait ran out (or was zero).
    #[error("lock {name:?} is held{}", holder.as_ref().map(|h| format!(" by {:?} (fencing token {}) until {} ms", h.owner, h.fencing_token, h.expires_at_ms)).unwrap_or_default())]
    Busy {
        /// The lock name.
        name: String,
        /// The current holder, when the backend could tell.
        holder: Option<Holder>,
    },
    /// The lease does not hold the lock (expired, released, or never granted).
    #[error("lease does not hold lock {name:?} (expired, released, or not the owner)")]
    NotHolder {
        /// The lock name.
        name: String,
    },
    /// The backend issued a token not above one already issued for this name: it lost its
    /// counter (a restart without persistence, a restore). The grant was released and refused.
    #[error("fencing token regression on lock {name:?}: backend issued {issued}, but {highest_seen} was issued before; refusing")]
    FencingRegression {
        /// The lock name.
        name: String,
        /// The token the backend just issued.
        issued: u64,
        /// The highest token seen before for this name.
        highest_seen: u64,
    },
    /// Redlock could not reach a majority of instances in time.
    #[error(
        "no quorum: {granted} of {instances} Redis instances granted the lock, {needed} needed"
    )]
    NoQuorum {
        /// Instances that granted.
        granted: usize,
        /// Instances needed (a majority).
        needed: usize,
        /// Instances configured.
        instances: usize,
    },
    /// The backend could not be reached or answered with an error. Retrying may help.
    #[error("{backend} backend error: {message}")]
    Backend {
        /// The backend kind.
        backend: &'static str,
        /// What it said.
        message: String,
    },
    /// The backend was configured wrongly (missing URL, bad address).
    #[error("configuration error: {0}")]
    Config(String),
}

impl LockError {
    /// Builds a [`LockError::Backend`] from any displayable error.
    pub fn backend(backend: &'static str, err: impl std::fmt::Display) -> Self {
        LockError::Backend {
            backend,
            message: err.to_string(),
        }
    }

    /// True for errors that a retry may cure (network, server errors).
    pub fn is_transient(&self) -> bool {
        matches!(self, LockError::Backend { .. } | LockError::NoQuorum { .. })
    }
}
