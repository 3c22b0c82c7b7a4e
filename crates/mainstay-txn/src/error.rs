//! Errors of the transaction building blocks.

/// What went wrong; each variant carries what a caller needs to act.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TxnError {
    /// A field of the input is wrong.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// The field, e.g. `steps[2].action.url`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// No such saga definition, saga or transaction.
    #[error("{what} {id:?} not found")]
    NotFound {
        /// `definition`, `saga` or `transaction`.
        what: &'static str,
        /// The name or id looked up.
        id: String,
    },
    /// The operation does not apply in the current status.
    #[error("saga {id} is {status}: cannot {action}")]
    InvalidState {
        /// The saga.
        id: String,
        /// Its status.
        status: String,
        /// What was asked.
        action: &'static str,
    },
    /// Another orchestrator node took the saga over (its lease expired here); this node
    /// stopped driving it. Nothing was written.
    #[error("saga {id} is now driven by another node")]
    Fenced {
        /// The saga.
        id: String,
    },
    /// The log's engine failed or is unreachable.
    #[error("{backend} error: {message}")]
    Backend {
        /// `sqlite` or `postgres`.
        backend: &'static str,
        /// The engine's message.
        message: String,
    },
    /// Bad configuration (a backend not compiled in, an unreadable file).
    #[error("configuration: {0}")]
    Config(String),
}

impl TxnError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        TxnError::InvalidArgument {
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn invalid_at(field: String, message: impl Into<String>) -> Self {
        TxnError::InvalidArgument {
            field,
            message: message.into(),
        }
    }

    #[allow(dead_code)] // Used by the backends that are compiled in.
    pub(crate) fn backend(backend: &'static str, e: impl std::fmt::Display) -> Self {
        TxnError::Backend {
            backend,
            message: e.to_string(),
        }
    }
}
