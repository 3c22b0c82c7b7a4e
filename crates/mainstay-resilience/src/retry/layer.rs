//! Retry as a tower [`Layer`] and [`Service`]. Requests must be `Clone` (each attempt
//! sends a copy) and so must the service (the response future drives later attempts).

use super::future::ResponseFuture;
use super::{Decision, Retry};
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// Retries failed calls of the services it wraps.
#[derive(Clone, Debug)]
pub struct RetryLayer<C> {
    retry: Retry,
    classify: C,
}

impl<C> RetryLayer<C> {
    /// Retries per `retry`; `classify` decides about each error (e.g. retry 5xx and
    /// timeouts, not 4xx).
    pub fn new(retry: Retry, classify: C) -> Self {
        RetryLayer { retry, classify }
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = RetryService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            retry: self.retry.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// A service whose failed calls are retried.
#[derive(Clone, Debug)]
pub struct RetryService<S, C> {
    inner: S,
    retry: Retry,
    classify: C,
}

impl<S, C, Req> Service<Req> for RetryService<S, C>
where
    S: Service<Req> + Clone,
    Req: Clone,
    C: Fn(&S::Error) -> Decision + Clone,
{
    type Response = S::Response;
    type Error = super::RetryError<S::Error>;
    type Future = ResponseFuture<S, Req, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(super::RetryError::NotRetryable)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.retry.deposit();
        // The ready service makes the first call; a fresh clone makes any later ones
        // (tower: a service is ready for one call only).
        let first = self.inner.call(req.clone());
        let service = self.inner.clone();
        ResponseFuture::new(
            first,
            service,
            req,
            self.retry.clone(),
            self.classify.clone(),
        )
    }
}
