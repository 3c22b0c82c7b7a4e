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
//! [`mainstay_eventstore`]), `/healthz`, `/readyz`, `/metrics` (Prometheus text).
//!
//! Guarantees: bad input (malformed JSON, unknown fields, out-of-range values, names with
//! `/` or over 256 bytes, bodies over 1 MiB) gets a 4xx problem and changes nothing; a
//! disconnected client's pending acquire is cancelled without leaking a queue entry.
//! Auth: a bearer token, required on `/v1/*` when configured (health and metrics stay open);
//! [`check_bind`] refuses a non-loopback address without one.
#![forbid(unsafe_code)]
#![recursion_limit = "256"]
#![warn(missing_docs, unreachable_pub)]

mod auth;
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
use axum::routing::{get, post};
use axum::{Json, Router};
use mainstay_eventstore::EventStore;
use mainstay_lock::{Election, LockClient};
use mainstay_txn::saga::Orchestrator;
use mainstay_txn::twopc::pg::PgResource;
use mainstay_txn::twopc::Coordinator;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

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
        }
    }

    /// The URLs saga steps and 2PC HTTP participants may name. Default: any
    /// ([`AllowedTargets::any`]); `mainstay serve` sets [`AllowedTargets::for_listen`].
    pub fn with_allowed_targets(mut self, targets: AllowedTargets) -> Self {
        self.targets = Arc::new(targets);
        self
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

/// The full router.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/locks/{name}", get(locks::status))
        .route("/v1/locks/{name}/acquire", post(locks::acquire))
        .route("/v1/locks/{name}/extend", post(locks::extend))
        .route("/v1/locks/{name}/release", post(locks::release))
        .route("/v1/elections/{name}", get(elections::leader))
        .route("/v1/elections/{name}/campaign", post(elections::campaign))
        .route("/v1/elections/{name}/keepalive", post(elections::keepalive))
        .route("/v1/elections/{name}/resign", post(elections::resign))
        .route("/v1/elections/{name}/observe", get(elections::observe))
        .route(
            "/v1/saga-definitions",
            get(sagas::definitions).post(sagas::register),
        )
        .route("/v1/saga-definitions/{name}", get(sagas::definition))
        .route("/v1/sagas", get(sagas::list).post(sagas::start))
        .route("/v1/sagas/{id}", get(sagas::get))
        .route("/v1/sagas/{id}/events", get(sagas::events))
        .route("/v1/sagas/{id}/retry", post(sagas::retry))
        .route("/v1/sagas/{id}/abort", post(sagas::abort))
        .route("/v1/txns", get(txns::list).post(txns::run))
        .route("/v1/txns/{id}", get(txns::get))
        .route("/v1/streams", post(events::append_many))
        .route(
            "/v1/streams/{stream}",
            get(events::read)
                .post(events::append)
                .delete(events::delete),
        )
        .route(
            "/v1/streams/{stream}/metadata",
            get(events::metadata).put(events::set_metadata),
        )
        .route(
            "/v1/streams/{stream}/snapshot",
            get(events::snapshot).put(events::save_snapshot),
        )
        .route("/v1/scavenge", post(events::scavenge))
        .route("/v1/all", get(events::read_all))
        .route("/v1/all/subscribe", get(events::subscribe_all))
        .route("/v1/subscriptions/{name}", get(events::checkpoint))
        .route(
            "/v1/subscriptions/{name}/checkpoint",
            post(events::save_checkpoint),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .merge(v1)
        .route(
            "/v1/openapi.json",
            get(|| async { Json(openapi::document()) }),
        )
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::render))
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

async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, Problem> {
    state
        .locks
        .holder("mainstay-readiness-probe")
        .await
        .map_err(Problem::from)?;
    Ok(Json(
        serde_json::json!({"status": "ready", "backend": state.locks.kind().as_str()}),
    ))
}

/// Serves `router(state)` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
