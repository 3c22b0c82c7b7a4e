//! `/v1/txns`: two-phase commit over HTTP participants and configured PostgreSQL
//! resources; the decision for a participant that restarted while prepared.

use crate::locks::Body;
use crate::problem::Problem;
use crate::AppState;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use failed_branch::FailedBranch;
use mainstay_txn::twopc::{Coordinator, Participant, ParticipantRef, TxRecord};
use mainstay_txn::TxnError;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Most participants in one transaction.
const MAX_PARTICIPANTS: usize = 16;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TxnBody {
    /// The branches: each an HTTP participant or a configured PostgreSQL resource.
    #[schema(min_items = 1, max_items = 16)]
    participants: Vec<BranchSpec>,
}

/// An HTTP participant (`url`: serves `POST {url}/prepare|commit|abort`) or a configured
/// PostgreSQL resource with the SQL to run in its branch.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BranchSpec {
    /// Unique within the transaction.
    #[schema(min_length = 1, max_length = 64)]
    name: String,
    /// `http://` or `https://` base URL.
    #[serde(default)]
    #[schema(pattern = "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^\\s]*)?$")]
    url: Option<String>,
    /// A resource named in `[postgres_resources]`.
    #[serde(default)]
    postgres: Option<String>,
    /// Statements for a PostgreSQL branch.
    #[serde(default)]
    sql: Vec<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// At most this many (1 to 10000). Default: 100.
    #[serde(default)]
    #[param(minimum = 1, maximum = 10_000)]
    limit: Option<usize>,
}

/// The `{id}` of a transaction.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Declared for the document.
pub(crate) struct TxnPath {
    id: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TxnList {
    txns: Vec<TxView>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TxView {
    #[serde(flatten)]
    record: TxRecord,
    state: mainstay_txn::twopc::TxState,
}

impl From<TxRecord> for TxView {
    fn from(record: TxRecord) -> Self {
        TxView {
            state: record.state(),
            record,
        }
    }
}

mod failed_branch {
    //! A branch whose work failed before phase 1: it votes no with the reason.
    use mainstay_txn::twopc::pg::PgBranch;
    use mainstay_txn::twopc::{Participant, ParticipantError, Vote};

    pub(crate) struct FailedBranch(pub(crate) PgBranch, pub(crate) String);

    #[async_trait::async_trait]
    impl Participant for FailedBranch {
        async fn prepare(&self, txid: &str) -> Result<Vote, ParticipantError> {
            self.0.abort(txid).await?;
            Ok(Vote::Abort(self.1.clone()))
        }
        async fn commit(&self, _txid: &str) -> Result<(), ParticipantError> {
            Err(ParticipantError("a failed branch cannot commit".into()))
        }
        async fn abort(&self, txid: &str) -> Result<(), ParticipantError> {
            self.0.abort(txid).await
        }
    }
}

fn invalid(field: String, message: impl Into<String>) -> Problem {
    Problem::from(TxnError::InvalidArgument {
        field,
        message: message.into(),
    })
}

/// Runs the transaction to its decision; 200 with the outcome whether it committed or
/// aborted (a "no" vote is an outcome, not an error).
#[utoipa::path(post, path = "/v1/txns", tag = "transactions", request_body = TxnBody,
    responses((status = 200, description = "the decision: commit, or abort with the reason", body = mainstay_txn::twopc::Outcome),
              (status = 403, description = "a participant URL this server may not call", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn run(
    State(s): State<AppState>,
    Body(b): Body<TxnBody>,
) -> Result<Json<mainstay_txn::twopc::Outcome>, Problem> {
    if b.participants.is_empty() || b.participants.len() > MAX_PARTICIPANTS {
        return Err(invalid(
            "participants".into(),
            format!("a transaction needs 1 to {MAX_PARTICIPANTS} participants"),
        ));
    }
    for (i, p) in b.participants.iter().enumerate() {
        match (&p.url, &p.postgres) {
            (Some(url), None) => {
                let ok = reqwest::Url::parse(url)
                    .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                    .unwrap_or(false);
                if !ok {
                    return Err(invalid(
                        format!("participants[{i}].url"),
                        format!("invalid URL {url:?}: needs http:// or https:// and a host"),
                    ));
                }
                s.targets.check(&format!("participants[{i}].url"), url)?;
                if !p.sql.is_empty() {
                    return Err(invalid(
                        format!("participants[{i}].sql"),
                        "sql applies to postgres participants only",
                    ));
                }
            }
            (None, Some(res)) => {
                if !s.postgres.contains_key(res) {
                    return Err(invalid(
                        format!("participants[{i}].postgres"),
                        format!("no PostgreSQL resource named {res:?} is configured ([postgres_resources] or MAINSTAY_POSTGRES_RESOURCES)"),
                    ));
                }
                if p.sql.is_empty() {
                    return Err(invalid(
                        format!("participants[{i}].sql"),
                        "a postgres participant needs at least one SQL statement",
                    ));
                }
            }
            _ => {
                return Err(invalid(
                    format!("participants[{i}]"),
                    "a participant has either a url or a postgres resource",
                ))
            }
        }
    }
    let txid = Coordinator::new_txid();
    let mut branches: Vec<(ParticipantRef, Arc<dyn Participant>)> = Vec::new();
    for p in b.participants {
        let r = ParticipantRef {
            name: p.name.clone(),
            url: p.url.clone(),
            postgres: p.postgres.clone(),
        };
        let participant: Arc<dyn Participant> = match (&p.url, &p.postgres) {
            (Some(url), _) => Arc::new(mainstay_txn::twopc::HttpParticipant::new(
                s.http.clone(),
                url.clone(),
                std::time::Duration::from_secs(10),
            )),
            (_, Some(res)) => {
                let resource = &s.postgres[res];
                let branch = match resource.begin(&txid).await {
                    Ok(b) => b,
                    Err(e) => {
                        for (_, b) in &branches {
                            let _ = b.abort(&txid).await;
                        }
                        return Err(Problem::from(TxnError::Backend {
                            backend: "postgres",
                            message: format!("{res}: {e}"),
                        }));
                    }
                };
                let mut failed = None;
                for sql in &p.sql {
                    if let Err(e) = branch.batch_execute(sql).await {
                        failed = Some(format!("{}: {e}", p.name));
                        break;
                    }
                }
                match failed {
                    None => Arc::new(branch),
                    Some(why) => Arc::new(FailedBranch(branch, why)),
                }
            }
            _ => unreachable!("validated above"),
        };
        branches.push((r, participant));
    }
    let outcome = s.txns.run(&txid, branches).await?;
    Ok(Json(outcome))
}

/// Transactions, newest first.
#[utoipa::path(get, path = "/v1/txns", tag = "transactions", params(ListQuery),
    responses((status = 200, description = "transactions", body = TxnList)))]
pub(crate) async fn list(
    State(s): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<TxnList>, Problem> {
    let Query(q) =
        q.map_err(|e| Problem::bad_request(format!("invalid query: {}", e.body_text())))?;
    let txns: Vec<TxView> = s
        .txns
        .list(crate::limit(q.limit)?)
        .await?
        .into_iter()
        .map(TxView::from)
        .collect();
    Ok(Json(TxnList { txns }))
}

/// One transaction, with its `decision` (null while preparing): what a restarted
/// participant asks.
#[utoipa::path(get, path = "/v1/txns/{id}", tag = "transactions", params(TxnPath),
    responses((status = 200, description = "the transaction", body = TxView),
              (status = 404, description = "no such transaction", body = crate::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn get(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<TxView>, Problem> {
    let Path(id) = id.map_err(Problem::from)?;
    Ok(Json(s.txns.get(&id).await?.into()))
}
