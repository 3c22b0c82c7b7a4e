//! The adaptive concurrency limit as a tower [`Layer`] and [`Service`].

use super::{AdaptiveLimit, LimitExceeded, Token};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// The error of an [`AdaptiveLimitService`].
#[derive(Debug, thiserror::Error)]
pub enum AdaptiveError<E> {
    /// Refused: the limit was reached.
    #[error(transparent)]
    LimitExceeded(LimitExceeded),
    /// The inner service failed.
    #[error("{0}")]
    Inner(E),
}

/// Puts services under a shared [`AdaptiveLimit`]. `is_overload` decides which errors are
/// overload signals (dropped: the limit backs off); others count as ordinary completions.
#[derive(Clone, Debug)]
pub struct AdaptiveLimitLayer<C> {
    limit: AdaptiveLimit,
    is_overload: C,
}

impl<C> AdaptiveLimitLayer<C> {
    /// Services built by this layer share `limit`.
    pub fn new(limit: AdaptiveLimit, is_overload: C) -> Self {
        AdaptiveLimitLayer { limit, is_overload }
    }
}

impl<S, C: Clone> Layer<S> for AdaptiveLimitLayer<C> {
    type Service = AdaptiveLimitService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveLimitService {
            inner,
            limit: self.limit.clone(),
            is_overload: self.is_overload.clone(),
        }
    }
}

/// A service admitted by an adaptive limit; refused calls fail at once.
#[derive(Clone, Debug)]
pub struct AdaptiveLimitService<S, C> {
    inner: S,
    limit: AdaptiveLimit,
    is_overload: C,
}

impl<S, C, Req> Service<Req> for AdaptiveLimitService<S, C>
where
    S: Service<Req>,
    C: Fn(&S::Error) -> bool + Clone,
{
    type Response = S::Response;
    type Error = AdaptiveError<S::Error>;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(AdaptiveError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.limit.try_acquire() {
            Ok(token) => ResponseFuture {
                inner: Some(self.inner.call(req)),
                token: Some(token),
                is_overload: self.is_overload.clone(),
                refused: None,
            },
            Err(e) => ResponseFuture {
                inner: None,
                token: None,
                is_overload: self.is_overload.clone(),
                refused: Some(e),
            },
        }
    }
}

pin_project! {
    /// The inner response; reports to the limit when it completes.
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: Option<F>,
        token: Option<Token>,
        is_overload: C,
        refused: Option<LimitExceeded>,
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Fn(&E) -> bool,
{
    type Output = Result<T, AdaptiveError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let refused = this
                .refused
                .take()
                .expect("ResponseFuture polled after completion");
            return Poll::Ready(Err(AdaptiveError::LimitExceeded(refused)));
        };
        let result = ready!(inner.poll(cx));
        if let Some(token) = this.token.take() {
            match &result {
                Err(e) if (this.is_overload)(e) => token.dropped(),
                _ => token.success(),
            }
        }
        Poll::Ready(result.map_err(AdaptiveError::Inner))
    }
}
