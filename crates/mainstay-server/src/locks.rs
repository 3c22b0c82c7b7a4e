//! `/v1/locks/{name}`: acquire, extend, release, status.

use crate::problem::Problem;
use crate::AppState;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::Json;
use mainstay_lock::{AcquireOptions, Holder, Lease};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// A JSON body whose rejections are problems.
pub(crate) struct Body<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| Body(v))
            .map_err(Problem::from)
    }
}

/// The `{name}` path segment, whose rejections are problems.
pub(crate) struct Name(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for Name {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(n)| Name(n))
            .map_err(|e: PathRejection| Problem::from(e))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AcquireBody {
    ttl_ms: u64,
    #[serde(default)]
    wait_ms: u64,
    #[serde(default)]
    owner: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExtendBody {
    lease_id: String,
    ttl_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReleaseBody {
    lease_id: String,
}

#[derive(Serialize)]
pub(crate) struct Status {
    name: String,
    held: bool,
    holder: Option<Holder>,
}

pub(crate) async fn acquire(
    State(s): State<AppState>,
    Name(name): Name,
    Body(b): Body<AcquireBody>,
) -> Result<Json<Lease>, Problem> {
    let opts = AcquireOptions {
        ttl: Duration::from_millis(b.ttl_ms),
        wait: Duration::from_millis(b.wait_ms),
        owner: b.owner,
    };
    let started = Instant::now();
    let result = s.locks.acquire(&name, &opts).await;
    s.metrics.acquired(&result, started.elapsed());
    Ok(Json(result?))
}

pub(crate) async fn extend(
    State(s): State<AppState>,
    Name(name): Name,
    Body(b): Body<ExtendBody>,
) -> Result<Json<Lease>, Problem> {
    Ok(Json(
        s.locks
            .extend(&name, &b.lease_id, Duration::from_millis(b.ttl_ms))
            .await?,
    ))
}

pub(crate) async fn release(
    State(s): State<AppState>,
    Name(name): Name,
    Body(b): Body<ReleaseBody>,
) -> Result<Json<serde_json::Value>, Problem> {
    if s.locks.release(&name, &b.lease_id).await? {
        Ok(Json(serde_json::json!({"name": name, "released": true})))
    } else {
        Err(mainstay_lock::LockError::NotHolder { name }.into())
    }
}

pub(crate) async fn status(
    State(s): State<AppState>,
    Name(name): Name,
) -> Result<Json<Status>, Problem> {
    let holder = s.locks.holder(&name).await?;
    Ok(Json(Status {
        name,
        held: holder.is_some(),
        holder,
    }))
}
