//! The response future of [`super::Timeout`].

use super::{Elapsed, TimeoutError};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

pin_project! {
    /// Resolves to the inner response, or to [`Elapsed`] when the deadline passes first
    /// (the inner future is dropped with this one).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        after: Duration,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, after: Duration) -> Self {
        ResponseFuture {
            inner,
            sleep: tokio::time::sleep(after),
            after,
        }
    }
}

impl<F: Future<Output = Result<T, E>>, T, E> Future for ResponseFuture<F> {
    type Output = Result<T, TimeoutError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = this.inner.poll(cx) {
            return Poll::Ready(r.map_err(TimeoutError::Inner));
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(Err(TimeoutError::Elapsed(Elapsed { after: *this.after })))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
