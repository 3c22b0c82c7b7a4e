//! Mainstay's HTTP API: every building block over JSON, for services in any language.
//!
//! The server adds no logic of its own: each handler validates input, calls the library
//! crate ([`mainstay_lock`]) and maps the result to JSON or to an
//! `application/problem+json` error. Routes (see `/v1/openapi.json`):
//! `/v1/locks/{name}` (acquire, extend, release, status), `/v1/elections/{name}`
//! (campaign, keepalive, resign, leader, observe as Server-Sent Events),
//! `/v1/saga-definitions` and `/v1/sagas` (register, start, query, watch, retry, abort;
//! [`mainstay_txn`]), `/v1/txns` (two-phase commit over HTTP participants and PostgreSQL
//! resources), `/v1/streams/{stream}` (append, read, delete, metadata), `/v1/all` (read,
//! subscribe as Server-Sent Events) and `/v1/subscriptions/{name}` (durable checkpoints;
//! [`mainstay_eventstore`]), `/v1/cdc` (the CDC connectors it runs, their slots, a live
//! tail; [`mainstay_cdc`]), `/healthz`, `/readyz`, `/metrics` (Prometheus text).
//!
//! Guarantees: bad input (malformed JSON, unknown fields, out-of-range values, names with
//! `/` or over 256 characters, bodies over 1 MiB) gets a 4xx problem and changes nothing; a
//! disconnected client's pending acquire is cancelled without leaking a queue entry.
//! Auth: a bearer token, required on `/v1/*` when configured (health and metrics stay open);
//! [`check_bind`] refuses a non-loopback address without one.
#![forbid(unsafe_code)]
#![recursion_limit = "256"]
#![warn(missing_docs, unreachable_pub)]

mod auth;
mod cdc;
mod elections;
mod events;
mod locks;
mod metrics;
mod openapi;
mod problem;
mod sagas;
mod targets;
mod txns;

pub use metrics::Metrics;
pub use problem::Problem;
pub use targets::AllowedTargets;

use axum::extract::{DefaultBodyLimit, State};
use axum::response::IntoResponse;
use axum::{Json, Router};
use mainstay_eventstore::EventStore;
use mainstay_lock::{Election, LockClient};
use mainstay_txn::saga::Orchestrator;
use mainstay_txn::twopc::pg::PgResource;
use mainstay_txn::twopc::Coordinator;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub(crate) locks: LockClient,
    pub(crate) elections: Election,
    pub(crate) sagas: Orchestrator,
    pub(crate) txns: Coordinator,
    pub(crate) postgres: Arc<HashMap<String, PgResource>>,
    pub(crate) events: Arc<dyn EventStore>,
    pub(crate) http: reqwest::Client,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) token: Option<Arc<str>>,
    pub(crate) targets: Arc<AllowedTargets>,
    pub(crate) max_wait_ms: u64,
    pub(crate) cdc: Arc<Vec<Arc<mainstay_cdc::Observer>>>,
    /// Cancelled when the server shuts down: long-lived streams (SSE) end with it.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
}

impl AppState {
    /// State over a lock client, a (started) saga orchestrator, a (started) 2PC
    /// coordinator with the PostgreSQL resources it may run SQL branches on, and an event
    /// store; `token` enables bearer auth on `/v1/*`.
    pub fn new(
        locks: LockClient,
        sagas: Orchestrator,
        txns: Coordinator,
        postgres: Vec<PgResource>,
        events: Arc<dyn EventStore>,
        token: Option<String>,
    ) -> Self {
        let metrics = Arc::new(Metrics::new(locks.kind().as_str()));
        AppState {
            elections: Election::new(locks.clone()),
            locks,
            sagas,
            txns,
            postgres: Arc::new(
                postgres
                    .into_iter()
                    .map(|r| (r.name().to_string(), r))
                    .collect(),
            ),
            events,
            http: mainstay_txn::participant_client(),
            metrics,
            token: token.map(Arc::from),
            targets: Arc::new(AllowedTargets::any()),
            max_wait_ms: mainstay_lock::MAX_WAIT.as_millis() as u64,
            cdc: Arc::new(Vec::new()),
            shutdown: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// The CDC connectors this server runs (`GET /v1/cdc`, their tails and metrics).
    pub fn with_cdc(mut self, connectors: Vec<Arc<mainstay_cdc::Observer>>) -> Self {
        self.cdc = Arc::new(connectors);
        self
    }

    /// The URLs saga steps and 2PC HTTP participants may name. Default: any
    /// ([`AllowedTargets::any`]); `mainstay serve` sets [`AllowedTargets::for_listen`].
    pub fn with_allowed_targets(mut self, targets: AllowedTargets) -> Self {
        self.targets = Arc::new(targets);
        self
    }

    /// The longest `wait_ms` a request may ask for (lock acquire, campaign, waiting for
    /// a saga; the saga wait is also capped at 5 minutes). Longer asks are refused with
    /// 400, and the OpenAPI document states the bound. Default: 24 h.
    pub fn with_max_wait(mut self, max_wait: std::time::Duration) -> Self {
        self.max_wait_ms = max_wait.as_millis().min(u64::MAX as u128) as u64;
        self
    }

    /// `wait_ms`, refused with 400 above `cap` (itself capped at this server's max wait).
    pub(crate) fn check_wait(&self, wait_ms: u64, cap: u64) -> Result<u64, Problem> {
        let max = cap.min(self.max_wait_ms);
        if wait_ms > max {
            // `wait`, as the lock client names the same bound (`ttl` likewise).
            return Err(Problem::invalid_field(
                "wait",
                format!("wait_ms must be at most {max} (this server's max_wait)"),
            ));
        }
        Ok(wait_ms)
    }
}

/// Most items one list or read returns.
pub(crate) const MAX_LIMIT: usize = 10_000;

/// A `limit` query parameter: 1 to [`MAX_LIMIT`], default 100.
pub(crate) fn limit(limit: Option<usize>) -> Result<usize, Problem> {
    match limit.unwrap_or(100) {
        n @ 1..=MAX_LIMIT => Ok(n),
        n => Err(Problem::invalid_field(
            "limit",
            format!("limit must be 1 to {MAX_LIMIT}, got {n}"),
        )),
    }
}

/// Refuses to serve a non-loopback address without an auth token.
pub fn check_bind(addr: &SocketAddr, token: Option<&str>) -> Result<(), String> {
    if addr.ip().is_loopback() || token.is_some_and(|t| !t.is_empty()) {
        return Ok(());
    }
    Err(format!(
        "refusing to listen on non-loopback address {addr} without an auth token: set MAINSTAY_TOKEN, --token or [server] token"
    ))
}

/// The `/v1` API: every route with its OpenAPI operation.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(locks::status))
        .routes(routes!(locks::acquire))
        .routes(routes!(locks::extend))
        .routes(routes!(locks::release))
        .routes(routes!(elections::leader))
        .routes(routes!(elections::campaign))
        .routes(routes!(elections::keepalive))
        .routes(routes!(elections::resign))
        .routes(routes!(elections::observe))
        .routes(routes!(sagas::definitions, sagas::register))
        .routes(routes!(sagas::definition))
        .routes(routes!(sagas::list, sagas::start))
        .routes(routes!(sagas::get))
        .routes(routes!(sagas::events))
        .routes(routes!(sagas::retry))
        .routes(routes!(sagas::abort))
        .routes(routes!(txns::list, txns::run))
        .routes(routes!(txns::get))
        .routes(routes!(events::append_many))
        .routes(routes!(events::read, events::append, events::delete))
        .routes(routes!(events::metadata, events::set_metadata))
        .routes(routes!(events::snapshot, events::save_snapshot))
        .routes(routes!(events::scavenge))
        .routes(routes!(events::read_all))
        .routes(routes!(events::subscribe_all))
        .routes(routes!(events::checkpoint))
        .routes(routes!(events::save_checkpoint))
        .routes(routes!(cdc::list))
        .routes(routes!(cdc::get))
        .routes(routes!(cdc::tail))
}

/// Routes outside `/v1` auth: health, readiness, metrics, the document itself.
fn open() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics::render))
        .routes(routes!(openapi_json))
}

/// The full router.
pub fn router(state: AppState) -> Router {
    let (v1, mut doc) = api().split_for_parts();
    let (open, open_doc) = open().split_for_parts();
    doc.merge(open_doc);
    openapi::finish(&mut doc, state.token.is_some(), state.max_wait_ms);
    let document = Arc::new(doc.to_json().unwrap_or_else(|_| "{}".into()));
    let v1 = v1.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::require_token,
    ));
    Router::new()
        .merge(v1)
        .merge(open)
        .layer(axum::Extension(OpenApiJson(document)))
        .fallback(|| async { Problem::not_found() })
        .method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(refuse_oversized))
        .with_state(state)
}

/// The generated document, serialized once.
#[derive(Clone)]
struct OpenApiJson(Arc<String>);

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "the OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
async fn openapi_json(
    axum::Extension(OpenApiJson(doc)): axum::Extension<OpenApiJson>,
) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.as_str().to_owned(),
    )
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "alive", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct Health {
    status: &'static str,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct Ready {
    status: &'static str,
    /// The lock backend checked.
    backend: &'static str,
}

/// Bodies up to this size are read and dropped before an oversized request is refused.
const DRAIN_BYTES: u64 = 16 << 20;

/// A body announced larger than [`MAX_BODY_BYTES`] is refused with a 413 problem before
/// any handler runs. The body is read and dropped first (up to 16 MiB): closing a socket
/// with unread data resets the connection, and the client would see a reset instead of
/// the problem. (Bodies without a length are cut at the limit by the JSON extractor.)
async fn refuse_oversized(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(len) if len > MAX_BODY_BYTES as u64 => {
            if len <= DRAIN_BYTES {
                let _ = axum::body::to_bytes(req.into_body(), DRAIN_BYTES as usize).await;
            }
            Problem::too_large().into_response()
        }
        _ => next.run(req).await,
    }
}

/// How long `/readyz` waits for the lock backend.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Readiness: the lock backend answers within 2 s.
#[utoipa::path(get, path = "/readyz", tag = "meta",
    responses((status = 200, description = "ready", body = Ready),
              (status = 503, description = "the backend is unavailable", body = openapi::ProblemDoc, content_type = "application/problem+json")))]
async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, Problem> {
    // A probe answers within its own bound (orchestrators time probes out in seconds),
    // not after a reconnect's full connect deadline.
    match tokio::time::timeout(
        READY_TIMEOUT,
        state.locks.holder("mainstay-readiness-probe"),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(Problem::from(e)),
        Err(_) => {
            return Err(Problem::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "backend-unavailable",
                format!(
                    "the {} backend did not answer within {READY_TIMEOUT:?}",
                    state.locks.kind().as_str()
                ),
            ))
        }
    }
    Ok(Json(Ready {
        status: "ready",
        backend: state.locks.kind().as_str(),
    }))
}

/// Serves `router(state)` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Server-Sent Event streams end when shutdown begins (they would otherwise hold the
    // graceful shutdown open forever); other requests get a grace period to finish.
    let token = state.shutdown.clone();
    let begun = tokio_util::sync::CancellationToken::new();
    let server = axum::serve(listener, router(state)).with_graceful_shutdown({
        let begun = begun.clone();
        async move {
            shutdown.await;
            token.cancel();
            begun.cancel();
        }
    });
    tokio::select! {
        outcome = std::future::IntoFuture::into_future(server) => outcome,
        _ = async {
            begun.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("requests still open {SHUTDOWN_GRACE:?} after shutdown began; stopping anyway");
            Ok(())
        }
    }
}

/// How long requests in flight may take to finish once shutdown begins.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
