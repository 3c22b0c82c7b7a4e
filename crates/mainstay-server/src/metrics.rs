//! Prometheus metrics: HTTP requests by route and status, lock acquisitions by outcome and
//! their wait time.

use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mainstay_lock::{Lease, LockError};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use std::time::Duration;

/// The server's metrics registry.
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    lock_acquires: IntCounterVec,
    lock_acquire_seconds: HistogramVec,
    events_appended: prometheus::IntCounter,
    backend: String,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Metrics {
    /// A registry for a server on `backend`.
    pub fn new(backend: &str) -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "mainstay_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["route", "status"],
        )
        .expect("static metric definition");
        let lock_acquires = IntCounterVec::new(
            Opts::new(
                "mainstay_lock_acquires_total",
                "Lock acquisitions by backend and outcome (granted, busy, error)",
            ),
            &["backend", "outcome"],
        )
        .expect("static metric definition");
        let lock_acquire_seconds = HistogramVec::new(
            HistogramOpts::new(
                "mainstay_lock_acquire_seconds",
                "Time to acquire a lock, including waiting",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
            &["backend"],
        )
        .expect("static metric definition");
        let events_appended = prometheus::IntCounter::new(
            "mainstay_events_appended_total",
            "Events appended through the HTTP API",
        )
        .expect("static metric definition");
        for c in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(lock_acquires.clone()),
            Box::new(lock_acquire_seconds.clone()),
            Box::new(events_appended.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Metrics {
            registry,
            http_requests,
            lock_acquires,
            lock_acquire_seconds,
            events_appended,
            backend: backend.to_string(),
        }
    }

    pub(crate) fn acquired(&self, result: &Result<Lease, LockError>, took: Duration) {
        let outcome = match result {
            Ok(_) => "granted",
            Err(LockError::Busy { .. }) => "busy",
            Err(_) => "error",
        };
        self.lock_acquires
            .with_label_values(&[self.backend.as_str(), outcome])
            .inc();
        self.lock_acquire_seconds
            .with_label_values(&[self.backend.as_str()])
            .observe(took.as_secs_f64());
    }

    pub(crate) fn events_appended(&self, n: usize) {
        self.events_appended.inc_by(n as u64);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

pub(crate) async fn track(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(req).await;
    s.metrics
        .http_requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    response
}

/// Prometheus metrics, text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
pub(crate) async fn render(State(s): State<AppState>) -> impl IntoResponse {
    let mut text = s.metrics.encode();
    let m = s.sagas.metrics();
    let log = s.sagas.log_kind();
    text.push_str(
        "# HELP mainstay_sagas_total Sagas by outcome since this server started (started, completed, failed, parked, aborted, resumed)\n# TYPE mainstay_sagas_total counter\n",
    );
    for (outcome, n) in [
        ("started", m.started),
        ("completed", m.completed),
        ("failed", m.failed),
        ("parked", m.parked),
        ("aborted", m.aborted),
        ("resumed", m.resumed),
    ] {
        text.push_str(&format!(
            "mainstay_sagas_total{{log=\"{log}\",outcome=\"{outcome}\"}} {n}\n"
        ));
    }
    text.push_str(&format!(
        "# HELP mainstay_sagas_active Sagas this server is driving now\n# TYPE mainstay_sagas_active gauge\nmainstay_sagas_active{{log=\"{log}\"}} {}\n",
        m.active
    ));
    text.push_str(&crate::cdc::metrics(&s).await);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
