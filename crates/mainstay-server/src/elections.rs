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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CampaignBody {
    candidate: String,
    ttl_ms: u64,
    #[serde(default)]
    wait_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeepaliveBody {
    lease_id: String,
    ttl_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResignBody {
    lease_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ObserveQuery {
    #[serde(default)]
    interval_ms: Option<u64>,
}

#[derive(Serialize)]
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
            Duration::from_millis(b.wait_ms),
        )
        .await?;
    Ok(Json(term(name, lease)))
}

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

pub(crate) async fn resign(
    State(s): State<AppState>,
    Name(name): Name,
    Body(b): Body<ResignBody>,
) -> Result<Json<serde_json::Value>, Problem> {
    if s.elections.resign(&name, &b.lease_id).await? {
        Ok(Json(serde_json::json!({"name": name, "resigned": true})))
    } else {
        Err(LockError::NotHolder { name }.into())
    }
}

pub(crate) async fn leader(
    State(s): State<AppState>,
    Name(name): Name,
) -> Result<Json<serde_json::Value>, Problem> {
    let leader: Option<Leader> = s.elections.leader(&name).await?;
    Ok(Json(serde_json::json!({"name": name, "leader": leader})))
}

/// Streams `leader` events: the current leader (or `null`) at once, then every change.
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
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
