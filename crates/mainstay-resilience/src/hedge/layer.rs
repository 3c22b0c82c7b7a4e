//! Hedging as a tower [`Layer`] and [`Service`]. Requests and the service must be `Clone`
//! (each attempt uses copies). The response future is boxed — the one allocating layer —
//! which suits what hedging is for: expensive idempotent reads.

use super::Hedge;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

/// Hedges the calls of the services it wraps.
#[derive(Clone, Debug)]
pub struct HedgeLayer {
    hedge: Hedge,
}

impl HedgeLayer {
    /// Services built by this layer share `hedge` (its latency samples and budget).
    pub fn new(hedge: Hedge) -> Self {
        HedgeLayer { hedge }
    }
}

impl<S> Layer<S> for HedgeLayer {
    type Service = HedgeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HedgeService {
            inner,
            hedge: self.hedge.clone(),
        }
    }
}

/// A service whose slow calls are hedged.
#[derive(Clone, Debug)]
pub struct HedgeService<S> {
    inner: S,
    hedge: Hedge,
}

impl<S, Req> Service<Req> for HedgeService<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    Req: Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let (service, hedge) = (self.inner.clone(), self.hedge.clone());
        Box::pin(async move {
            hedge
                .run(move || service.clone().oneshot(req.clone()))
                .await
        })
    }
}
