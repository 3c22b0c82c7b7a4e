//! The response future of [`super::CircuitBreakerService`].

use super::layer::Classify;
use super::{CallError, OwnedPermit, Rejected};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

pin_project! {
    /// Resolves to the inner service's response; reports the outcome to the breaker. Dropped
    /// before completion, it cancels the call (a half-open slot is given back).
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: Option<F>,
        permit: Option<OwnedPermit>,
        classify: Option<C>,
        rejected: Option<Rejected>,
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn running(inner: F, permit: OwnedPermit, classify: C) -> Self {
        ResponseFuture {
            inner: Some(inner),
            permit: Some(permit),
            classify: Some(classify),
            rejected: None,
        }
    }

    pub(crate) fn rejected(rejected: Rejected) -> Self {
        ResponseFuture {
            inner: None,
            permit: None,
            classify: None,
            rejected: Some(rejected),
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = Result<T, CallError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let rejected = this
                .rejected
                .take()
                .expect("ResponseFuture polled after completion");
            return Poll::Ready(Err(CallError::Rejected(rejected)));
        };
        let result = ready!(inner.poll(cx));
        if let (Some(permit), Some(classify)) = (this.permit.take(), this.classify.as_ref()) {
            permit.record(classify.classify(&result));
        }
        Poll::Ready(result.map_err(CallError::Inner))
    }
}
