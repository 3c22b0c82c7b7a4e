//! `/v1/cdc`: the change-data-capture connectors this server runs (configured in `[cdc]`):
//! their status, their slot on the source, and a live tail of their events (SSE).

use crate::problem::Problem;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::Stream;
use mainstay_cdc::{ConnectorStatus, SlotStatus};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// A connector and its slot.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Connector {
    #[serde(flatten)]
    status: ConnectorStatus,
    /// The slot as the source reports it (lag and retained WAL); null when the source
    /// could not be asked within 2 s or the slot is gone.
    slot_status: Option<SlotStatus>,
}

/// Every connector.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Connectors {
    connectors: Vec<Connector>,
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Documents the path parameter.
pub(crate) struct ConnectorPath {
    /// The connector's name.
    #[param(min_length = 1, max_length = 256)]
    name: String,
}

async fn with_slot(observer: &mainstay_cdc::Observer) -> Connector {
    let slot_status = match tokio::time::timeout(Duration::from_secs(2), observer.slot()).await {
        Ok(Ok(slot)) => slot,
        _ => None,
    };
    Connector {
        status: observer.status(),
        slot_status,
    }
}

fn find(s: &AppState, name: &str) -> Result<Arc<mainstay_cdc::Observer>, Problem> {
    s.cdc
        .iter()
        .find(|o| o.status().name == name)
        .cloned()
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "connector-not-found",
                format!(
                    "this server runs no CDC connector named {name:?} (configure one in [cdc])"
                ),
            )
            .with("name", name)
        })
}

/// The CDC connectors this server runs, with their slots.
#[utoipa::path(get, path = "/v1/cdc", tag = "cdc",
    responses((status = 200, description = "every connector", body = Connectors)))]
pub(crate) async fn list(State(s): State<AppState>) -> Json<Connectors> {
    let mut connectors = Vec::with_capacity(s.cdc.len());
    for o in s.cdc.iter() {
        connectors.push(with_slot(o).await);
    }
    Json(Connectors { connectors })
}

/// One connector and its slot.
#[utoipa::path(get, path = "/v1/cdc/{name}", tag = "cdc", params(ConnectorPath),
    responses((status = 200, description = "the connector", body = Connector),
              (status = 404, description = "no such connector", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn get(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Connector>, Problem> {
    let observer = find(&s, &name)?;
    Ok(Json(with_slot(&observer).await))
}

/// A live tail of the connector's events as Server-Sent Events (`event: change`, data =
/// the Debezium envelope), from now on. A client too slow to keep up gets an
/// `event: lagged` with how many it missed, then the stream goes on.
#[utoipa::path(get, path = "/v1/cdc/{name}/tail", tag = "cdc", params(ConnectorPath),
    responses((status = 200, description = "Server-Sent Events: the envelopes as they are delivered", content_type = "text/event-stream", body = String),
              (status = 404, description = "no such connector", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn tail(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, Problem> {
    let observer = find(&s, &name)?;
    let rx = observer.tail();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        use tokio::sync::broadcast::error::RecvError;
        match rx.recv().await {
            Ok(text) => Some((Ok(Event::default().event("change").data(&*text)), rx)),
            Err(RecvError::Lagged(n)) => {
                Some((Ok(Event::default().event("lagged").data(n.to_string())), rx))
            }
            Err(RecvError::Closed) => None,
        }
    });
    Ok(Sse::new(futures::StreamExt::take_until(
        stream,
        s.shutdown.clone().cancelled_owned(),
    ))
    .keep_alive(KeepAlive::default()))
}

/// The connectors' Prometheus metrics.
pub(crate) async fn metrics(s: &AppState) -> String {
    if s.cdc.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let mut section = |name: &str, kind: &str, help: &str, lines: Vec<String>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for line in lines {
            out.push_str(&format!("{name}{line}\n"));
        }
    };
    let mut statuses = Vec::new();
    for o in s.cdc.iter() {
        statuses.push(with_slot(o).await);
    }
    let label = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    section(
        "mainstay_cdc_events_total",
        "counter",
        "Change events delivered to the sink, per connector and table",
        statuses
            .iter()
            .flat_map(|c| {
                c.status.delivered_by_table.iter().map(|(table, n)| {
                    format!(
                        "{{connector=\"{}\",table=\"{}\"}} {n}",
                        label(&c.status.name),
                        label(table)
                    )
                })
            })
            .collect(),
    );
    let per = |f: &dyn Fn(&Connector) -> Option<String>| -> Vec<String> {
        statuses
            .iter()
            .filter_map(|c| {
                f(c).map(|v| format!("{{connector=\"{}\"}} {v}", label(&c.status.name)))
            })
            .collect()
    };
    section(
        "mainstay_cdc_snapshot_rows_total",
        "counter",
        "Rows read by the initial snapshot",
        per(&|c| Some(c.status.snapshot_rows.to_string())),
    );
    section(
        "mainstay_cdc_incremental_snapshot_rows_total",
        "counter",
        "Rows read by incremental snapshots",
        per(&|c| Some(c.status.incremental_rows.to_string())),
    );
    section(
        "mainstay_cdc_incremental_snapshot_tables_pending",
        "gauge",
        "Tables an incremental snapshot still has to read",
        per(&|c| Some(c.status.incremental_queue.len().to_string())),
    );
    section(
        "mainstay_cdc_lag_milliseconds",
        "gauge",
        "Commit-to-sink delay of the last streamed change delivered",
        per(&|c| c.status.lag_ms.map(|v| v.to_string())),
    );
    section(
        "mainstay_cdc_lag_bytes",
        "gauge",
        "WAL written since the slot's confirmed position",
        per(&|c| {
            c.slot_status
                .as_ref()
                .and_then(|s| s.lag_bytes)
                .map(|v| v.to_string())
        }),
    );
    section(
        "mainstay_cdc_retained_wal_bytes",
        "gauge",
        "WAL the source keeps for the slot",
        per(&|c| {
            c.slot_status
                .as_ref()
                .and_then(|s| s.retained_wal_bytes)
                .map(|v| v.to_string())
        }),
    );
    section(
        "mainstay_cdc_sink_errors_total",
        "counter",
        "Failed sink writes",
        per(&|c| Some(c.status.sink_errors.to_string())),
    );
    section(
        "mainstay_cdc_reconnects_total",
        "counter",
        "Reconnects to the source",
        per(&|c| Some(c.status.reconnects.to_string())),
    );
    section(
        "mainstay_cdc_up",
        "gauge",
        "1 while the connector streams or snapshots",
        per(&|c| {
            Some(
                u8::from(matches!(
                    c.status.phase,
                    mainstay_cdc::Phase::Streaming | mainstay_cdc::Phase::Snapshot
                ))
                .to_string(),
            )
        }),
    );
    out
}
