//! The response future of [`super::RetryService`]: call → (on a retryable error) sleep →
//! wait until the service is ready → call again.

use super::{Decision, Retry, RetryError};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;
use tower_service::Service;

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] fut: F },
        Sleeping { #[pin] sleep: Sleep },
        Readying,
    }
}

pin_project! {
    /// Resolves to the first success, or to why retrying stopped (with the last error).
    pub struct ResponseFuture<S, Req, C>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        request: Req,
        retry: Retry,
        classify: C,
        attempt: u32,
        previous: Duration,
    }
}

impl<S: Service<Req>, Req, C> ResponseFuture<S, Req, C> {
    pub(crate) fn new(
        first: S::Future,
        service: S,
        request: Req,
        retry: Retry,
        classify: C,
    ) -> Self {
        let previous = retry.base();
        ResponseFuture {
            state: State::Calling { fut: first },
            service,
            request,
            retry,
            classify,
            attempt: 1,
            previous,
        }
    }
}

impl<S, Req, C> Future for ResponseFuture<S, Req, C>
where
    S: Service<Req>,
    Req: Clone,
    C: Fn(&S::Error) -> Decision,
{
    type Output = Result<S::Response, RetryError<S::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { fut } => {
                    let err = match ready!(fut.poll(cx)) {
                        Ok(response) => return Poll::Ready(Ok(response)),
                        Err(e) => e,
                    };
                    match this
                        .retry
                        .next_delay(*this.attempt, this.previous, &err, this.classify)
                    {
                        Ok(delay) => this.state.set(State::Sleeping {
                            sleep: tokio::time::sleep(delay),
                        }),
                        Err(stop) => return Poll::Ready(Err(stop.with(*this.attempt, err))),
                    }
                }
                StateProj::Sleeping { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    if let Err(e) = ready!(this.service.poll_ready(cx)) {
                        return Poll::Ready(Err(RetryError::NotRetryable(e)));
                    }
                    *this.attempt += 1;
                    let fut = this.service.call(this.request.clone());
                    this.state.set(State::Calling { fut });
                }
            }
        }
    }
}
