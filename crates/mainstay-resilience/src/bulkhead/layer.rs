//! The bulkhead as a tower [`Layer`] and [`Service`].

use super::future::ResponseFuture;
use super::{Bulkhead, BulkheadError, BulkheadFull};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::OwnedSemaphorePermit;
use tower_layer::Layer;
use tower_service::Service;

/// Puts services in a shared [`Bulkhead`] compartment.
#[derive(Clone, Debug)]
pub struct BulkheadLayer {
    bulkhead: Bulkhead,
}

impl BulkheadLayer {
    /// Services built by this layer share `bulkhead`.
    pub fn new(bulkhead: Bulkhead) -> Self {
        BulkheadLayer { bulkhead }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService {
            inner,
            bulkhead: self.bulkhead.clone(),
            slot: None,
            waiting: None,
        }
    }
}

type Waiting = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, BulkheadFull>> + Send>>;

/// A service that takes a bulkhead slot in `poll_ready` (waiting up to the bulkhead's
/// `max_wait`, then failing with [`BulkheadError::Full`]) and holds it until the response
/// completes.
pub struct BulkheadService<S> {
    inner: S,
    bulkhead: Bulkhead,
    slot: Option<OwnedSemaphorePermit>,
    /// Boxed only while waiting for a slot; the free-slot path allocates nothing.
    waiting: Option<Waiting>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for BulkheadService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkheadService")
            .field("inner", &self.inner)
            .field("bulkhead", &self.bulkhead.name())
            .finish()
    }
}

impl<S: Clone> Clone for BulkheadService<S> {
    /// A clone shares the compartment but not this instance's reserved slot.
    fn clone(&self) -> Self {
        BulkheadService {
            inner: self.inner.clone(),
            bulkhead: self.bulkhead.clone(),
            slot: None,
            waiting: None,
        }
    }
}

impl<S: Service<Req>, Req> Service<Req> for BulkheadService<S> {
    type Response = S::Response;
    type Error = BulkheadError<S::Error>;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.slot.is_none() {
            if self.waiting.is_none() {
                match self.bulkhead.inner.semaphore.clone().try_acquire_owned() {
                    Ok(permit) => self.slot = Some(permit),
                    Err(_) => {
                        let bulkhead = self.bulkhead.clone();
                        self.waiting =
                            Some(Box::pin(async move { bulkhead.acquire_owned().await }));
                    }
                }
            }
            if let Some(waiting) = self.waiting.as_mut() {
                let result = std::task::ready!(waiting.as_mut().poll(cx));
                self.waiting = None;
                self.slot = Some(result.map_err(BulkheadError::Full)?);
            }
        }
        self.inner.poll_ready(cx).map_err(BulkheadError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // tower's contract: call only after poll_ready said Ready, which reserved a slot.
        let slot = self.slot.take();
        ResponseFuture::new(self.inner.call(req), slot)
    }
}
