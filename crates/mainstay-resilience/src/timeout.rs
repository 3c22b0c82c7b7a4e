//! Timeout with cancellation: when the deadline passes, the inner future is **dropped**
//! (cancelled, its resources released) and the caller gets [`Elapsed`].
//!
//! The plain API is [`timeout`]; [`Timeout`] + [`TimeoutLayer`] are the tower shape. Time
//! comes from `tokio::time` (pausable in tests). A zero duration times out at once unless
//! the inner future is ready on its first poll.

pub mod future;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::task::{Context, Poll};
use std::time::Duration;
use tower_layer::Layer;
use tower_service::Service;

/// The deadline passed before the operation completed; the operation was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("operation timed out after {after:?} and was cancelled")]
pub struct Elapsed {
    /// The timeout that elapsed.
    pub after: Duration,
}

/// The error of a [`Timeout`] service.
#[derive(Debug, thiserror::Error)]
pub enum TimeoutError<E> {
    /// The call took too long and was cancelled.
    #[error(transparent)]
    Elapsed(Elapsed),
    /// The inner service failed in time.
    #[error("{0}")]
    Inner(E),
}

/// Runs `fut` for at most `after`; on expiry it is dropped and [`Elapsed`] returned.
pub async fn timeout<F: Future>(after: Duration, fut: F) -> Result<F::Output, Elapsed> {
    tokio::time::timeout(after, fut)
        .await
        .map_err(|_| Elapsed { after })
}

/// Applies a [`Timeout`] to services.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    after: Duration,
}

impl TimeoutLayer {
    /// Calls taking longer than `after` are cancelled.
    pub fn new(after: Duration) -> Self {
        TimeoutLayer { after }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            after: self.after,
        }
    }
}

/// A service whose calls are cancelled after a deadline.
#[derive(Clone, Copy, Debug)]
pub struct Timeout<S> {
    inner: S,
    after: Duration,
}

impl<S> Timeout<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, after: Duration) -> Self {
        Timeout { inner, after }
    }
}

impl<S: Service<Req>, Req> Service<Req> for Timeout<S> {
    type Response = S::Response;
    type Error = TimeoutError<S::Error>;
    type Future = future::ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(TimeoutError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        future::ResponseFuture::new(self.inner.call(req), self.after)
    }
}
