//! The response future of [`super::BulkheadService`].

use super::BulkheadError;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::OwnedSemaphorePermit;

pin_project! {
    /// The inner response; the bulkhead slot is released when this completes or is dropped.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        slot: Option<OwnedSemaphorePermit>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, slot: Option<OwnedSemaphorePermit>) -> Self {
        ResponseFuture { inner, slot }
    }
}

impl<F: Future<Output = Result<T, E>>, T, E> Future for ResponseFuture<F> {
    type Output = Result<T, BulkheadError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        this.slot.take();
        Poll::Ready(result.map_err(BulkheadError::Inner))
    }
}
