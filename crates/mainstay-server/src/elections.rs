//! `/v1/elections/{name}`: campaign, keepalive, resign, leader, observe (SSE).

use crate::locks::{Body, Name};
use crate::problem::Problem;
use crate::AppState;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::{Stream, StreamExt};
use mainstay_lock::{Leader, Lease, LockError};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CampaignBody {
    /// This candidate's name, shown as the leader.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"
    )]
    candidate: String,
    /// How long the term lasts unless renewed with keepalive.
    #[schema(minimum = 1, maximum = 86_400_000)]
    ttl_ms: u64,
    /// How long to wait while another candidate leads. Default: 0.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 86_400_000)]
    wait_ms: u64,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeepaliveBody {
    /// The term's lease id.
    lease_id: String,
    /// The new ttl, from now.
    #[schema(minimum = 1, maximum = 86_400_000)]
    ttl_ms: u64,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResignBody {
    /// The term's lease id.
    lease_id: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ObserveQuery {
    /// How often the leader is polled, in ms. Default: 250 (clamped to 10..=60000).
    #[serde(default)]
    #[param(minimum = 0)]
    interval_ms: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Resigned {
    name: String,
    resigned: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct LeaderStatus {
    name: String,
    /// The current leader, or null.
    leader: Option<Leader>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Term {
    name: String,
    candidate: String,
    lease_id: String,
    epoch: u64,
    expires_at_ms: u64,
    ttl_ms: u64,
}

fn term(name: String, lease: Lease) -> Term {
    Term {
        name,
        candidate: lease.owner,
        lease_id: lease.lease_id,
        epoch: lease.fencing_token,
        expires_at_ms: lease.expires_at_ms,
        ttl_ms: lease.ttl_ms,
    }
}

/// Campaign: become leader, waiting up to `wait_ms` while another candidate leads.
#[utoipa::path(post, path = "/v1/elections/{name}/campaign", tag = "elections", params(crate::locks::NamePath),
    request_body = CampaignBody,
    responses((status = 200, description = "leader: the term, with its epoch (a fencing token)", body = Term),
              (status = 409, description = "another candidate leads (named)", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn campaign(
    State(s): State<AppState>,
    Name(name): Name,
    Body(b): Body<CampaignBody>,
) -> Result<Json<Term>, Problem> {
    if b.candidate.is_empty() {
        return Err(Problem::bad_request("candidate must not be empty").with("field", "candidate"));
    }
    let lease = s
        .elections
        .campaign_once(
            &name,
            &b.candidate,
            Duration::from_millis(b.ttl_ms),
            Duration::from_millis(s.check_wait(b.wait_ms, u64::MAX)?),
        )
        .await?;
    Ok(Json(term(name, lease)))
}

/// Renew a term.
#[utoipa::path(post, path = "/v1/elections/{name}/keepalive", tag = "elections", params(crate::locks::NamePath),
    request_body = KeepaliveBody,
    responses((status = 200, description = "the renewed term", body = Term),
              (status = 409, description = "no longer the leader", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn keepalive(
    State(s): State<AppState>,
    Name(name): Name,
    Body(b): Body<KeepaliveBody>,
) -> Result<Json<Term>, Problem> {
    let lease = s
        .elections
        .keepalive(&name, &b.lease_id, Duration::from_millis(b.ttl_ms))
        .await?;
    Ok(Json(term(name, lease)))
}

/// Step down.
#[utoipa::path(post, path = "/v1/elections/{name}/resign", tag = "elections", params(crate::locks::NamePath),
    request_body = ResignBody,
    responses((status = 200, description = "resigned", body = Resigned),
              (status = 409, description = "not the leader", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn resign(
    State(s): State<AppState>,
    Name(name): Name,
    Body(b): Body<ResignBody>,
) -> Result<Json<Resigned>, Problem> {
    if s.elections.resign(&name, &b.lease_id).await? {
        Ok(Json(Resigned {
            name,
            resigned: true,
        }))
    } else {
        Err(LockError::NotHolder { name }.into())
    }
}

/// The current leader, if any.
#[utoipa::path(get, path = "/v1/elections/{name}", tag = "elections", params(crate::locks::NamePath),
    responses((status = 200, description = "the leader, or null", body = LeaderStatus)))]
pub(crate) async fn leader(
    State(s): State<AppState>,
    Name(name): Name,
) -> Result<Json<LeaderStatus>, Problem> {
    let leader: Option<Leader> = s.elections.leader(&name).await?;
    Ok(Json(LeaderStatus { name, leader }))
}

/// Streams `leader` events: the current leader (or `null`) at once, then every change.
#[utoipa::path(get, path = "/v1/elections/{name}/observe", tag = "elections", params(crate::locks::NamePath, ObserveQuery),
    responses((status = 200, description = "Server-Sent Events: `leader` events with the leader (or null) now and on every change", content_type = "text/event-stream", body = String)))]
pub(crate) async fn observe(
    State(s): State<AppState>,
    Name(name): Name,
    query: Result<Query<ObserveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, Problem> {
    let Query(q) =
        query.map_err(|e| Problem::bad_request(format!("invalid query: {}", e.body_text())))?;
    // Validate the name up front so a bad one is a 400, not an error event.
    s.elections.leader(&name).await?;
    let every = Duration::from_millis(q.interval_ms.unwrap_or(250).clamp(10, 60_000));
    let stream = s.elections.observe(&name, every).map(|item| {
        Ok(match item {
            Ok(leader) => Event::default()
                .event("leader")
                .json_data(&leader)
                .unwrap_or_default(),
            Err(e) => Event::default().event("error").data(e.to_string()),
        })
    });
    Ok(
        Sse::new(stream.take_until(s.shutdown.clone().cancelled_owned()))
            .keep_alive(KeepAlive::default()),
    )
}
