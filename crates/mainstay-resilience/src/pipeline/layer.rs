//! The whole [`Pipeline`] as one tower [`Layer`], with one error type
//! ([`ResilienceError`]) instead of each policy layer nesting its own.

use super::{Pipeline, ResilienceError};
use crate::retry::Decision;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

/// Wraps services in a [`Pipeline`]; `classify` decides about the inner service's errors
/// exactly as in [`Pipeline::call`].
#[derive(Clone, Debug)]
pub struct PipelineLayer<C> {
    pipeline: Pipeline,
    classify: Arc<C>,
}

impl<C> PipelineLayer<C> {
    /// Services built by this layer share `pipeline`'s breaker, bulkhead, limiter and budget.
    pub fn new(pipeline: Pipeline, classify: C) -> Self {
        PipelineLayer {
            pipeline,
            classify: Arc::new(classify),
        }
    }
}

impl<S, C> Layer<S> for PipelineLayer<C> {
    type Service = PipelineService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        PipelineService {
            inner,
            pipeline: self.pipeline.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// A service whose calls go through a [`Pipeline`]. Requests and the service must be
/// `Clone` (retries and attempts use copies); the response future is boxed.
#[derive(Clone, Debug)]
pub struct PipelineService<S, C> {
    inner: S,
    pipeline: Pipeline,
    classify: Arc<C>,
}

impl<S, C, Req> Service<Req> for PipelineService<S, C>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    Req: Clone + Send + 'static,
    C: Fn(&S::Error) -> Decision + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = ResilienceError<S::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness of the inner service is awaited per attempt, inside the pipeline.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let (service, pipeline, classify) = (
            self.inner.clone(),
            self.pipeline.clone(),
            self.classify.clone(),
        );
        Box::pin(async move {
            pipeline
                .call(
                    move || service.clone().oneshot(req.clone()),
                    |e: &S::Error| classify(e),
                )
                .await
        })
    }
}
