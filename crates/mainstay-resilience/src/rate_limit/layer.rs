//! The rate limiter as a tower [`Layer`] and [`Service`]. Unlike tower's `RateLimit`, the
//! service is `Clone`: clones share one [`RateLimiter`].

use super::RateLimiter;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

/// Applies a shared [`RateLimiter`] to services.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limiter: RateLimiter,
}

impl RateLimitLayer {
    /// Services built by this layer share `limiter`.
    pub fn new(limiter: RateLimiter) -> Self {
        RateLimitLayer { limiter }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limiter: self.limiter.clone(),
            permit: false,
            sleep: None,
        }
    }
}

/// A service that waits in `poll_ready` until the shared limiter grants a permit.
#[derive(Debug)]
pub struct RateLimitService<S> {
    inner: S,
    limiter: RateLimiter,
    permit: bool,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S: Clone> Clone for RateLimitService<S> {
    /// A clone shares the limiter but not this instance's readiness.
    fn clone(&self) -> Self {
        RateLimitService {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            permit: false,
            sleep: None,
        }
    }
}

impl<S: Service<Req>, Req> Service<Req> for RateLimitService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        while !self.permit {
            if let Some(sleep) = self.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
            }
            match self.limiter.try_acquire() {
                Ok(()) => self.permit = true,
                // The sleep is boxed only while limited; the unlimited path allocates nothing.
                Err(limited) => {
                    self.sleep = Some(Box::pin(tokio::time::sleep(limited.retry_after)))
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.permit = false;
        self.inner.call(req)
    }
}
