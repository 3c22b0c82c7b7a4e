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
use serde_json::Value;
use std::time::{Duration, Instant};

/// A JSON body whose rejections are problems.
pub(crate) struct Body<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        // Every body is parsed to a `Value` first, then read into `T` from it. JSON (and
        // JSON Schema) count `30000.0` as the integer 30000, which serde refuses for an
        // integer field: only when that first read fails is the value read again with
        // its integral numbers as integers.
        let Json(value) = Json::<Value>::from_request(req, state)
            .await
            .map_err(Problem::from)?;
        // Every body is an object (serde would also read a struct from an array).
        if !value.is_object() {
            return Err(Problem::bad_request("the body must be a JSON object"));
        }
        // The error names the field (`ttl_ms: invalid type: …`), as axum's own would.
        match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(v) => Ok(Body(v)),
            Err(first) => {
                let mut value = value;
                if integral_floats_to_integers(&mut value) {
                    if let Ok(v) = T::deserialize(&value) {
                        return Ok(Body(v));
                    }
                }
                Err(Problem::bad_request(format!("invalid JSON body: {first}")))
            }
        }
    }
}

/// Rewrites every float with no fractional part (within `i64`/`u64`) as an integer; true
/// when it changed something.
fn integral_floats_to_integers(value: &mut Value) -> bool {
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            let int = if f.fract() != 0.0 {
                None
            } else if f >= 0.0 && f < u64::MAX as f64 {
                Some(Value::from(f as u64))
            } else if f < 0.0 && f >= i64::MIN as f64 {
                Some(Value::from(f as i64))
            } else {
                None
            };
            match int {
                Some(i) => {
                    *value = i;
                    true
                }
                None => false,
            }
        }
        Value::Array(items) => {
            let mut changed = false;
            for v in items {
                changed |= integral_floats_to_integers(v);
            }
            changed
        }
        Value::Object(map) => {
            let mut changed = false;
            for v in map.values_mut() {
                changed |= integral_floats_to_integers(v);
            }
            changed
        }
        _ => false,
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

/// The `{name}` of a lock or election.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Read by `Name`; declared here for the document.
pub(crate) struct NamePath {
    /// The lock (or election) name.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = "^[^/\\u0000-\\u001f\\u007f-\\u009f]+$"
    )]
    name: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AcquireBody {
    /// How long the lease lasts unless extended.
    #[schema(minimum = 1, maximum = 86_400_000)]
    ttl_ms: u64,
    /// How long to wait for a held lock. Default: 0 (answer at once).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 86_400_000)]
    wait_ms: u64,
    /// Who holds it, as shown to others. Default: this server's host and pid.
    #[serde(default)]
    #[schema(max_length = 256, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    owner: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExtendBody {
    /// The lease to extend.
    lease_id: String,
    /// The new ttl, from now.
    #[schema(minimum = 1, maximum = 86_400_000)]
    ttl_ms: u64,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReleaseBody {
    /// The lease to release.
    lease_id: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Status {
    name: String,
    held: bool,
    holder: Option<Holder>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Released {
    name: String,
    released: bool,
}

/// Acquire a lock, waiting up to `wait_ms` while someone else holds it.
#[utoipa::path(post, path = "/v1/locks/{name}/acquire", tag = "locks", params(NamePath),
    request_body = AcquireBody,
    responses((status = 200, description = "the lease, with its fencing token", body = Lease),
              (status = 409, description = "held by someone else when the wait ran out (names the holder and its expiry)", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn acquire(
    State(s): State<AppState>,
    Name(name): Name,
    Body(b): Body<AcquireBody>,
) -> Result<Json<Lease>, Problem> {
    let opts = AcquireOptions {
        ttl: Duration::from_millis(b.ttl_ms),
        wait: Duration::from_millis(s.check_wait(b.wait_ms, u64::MAX)?),
        owner: b.owner,
    };
    let started = Instant::now();
    let result = s.locks.acquire(&name, &opts).await;
    s.metrics.acquired(&result, started.elapsed());
    Ok(Json(result?))
}

/// Extend a lease to `ttl_ms` from now.
#[utoipa::path(post, path = "/v1/locks/{name}/extend", tag = "locks", params(NamePath),
    request_body = ExtendBody,
    responses((status = 200, description = "the extended lease", body = Lease),
              (status = 409, description = "the lease no longer holds the lock", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
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

/// Release a lease (owner-checked).
#[utoipa::path(post, path = "/v1/locks/{name}/release", tag = "locks", params(NamePath),
    request_body = ReleaseBody,
    responses((status = 200, description = "released", body = Released),
              (status = 409, description = "the lease does not hold the lock", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn release(
    State(s): State<AppState>,
    Name(name): Name,
    Body(b): Body<ReleaseBody>,
) -> Result<Json<Released>, Problem> {
    if s.locks.release(&name, &b.lease_id).await? {
        Ok(Json(Released {
            name,
            released: true,
        }))
    } else {
        Err(mainstay_lock::LockError::NotHolder { name }.into())
    }
}

/// The lock's current holder, if any.
#[utoipa::path(get, path = "/v1/locks/{name}", tag = "locks", params(NamePath),
    responses((status = 200, description = "the holder, or held = false", body = Status)))]
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
