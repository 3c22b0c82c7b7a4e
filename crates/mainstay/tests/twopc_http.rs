//! 2PC over HTTP participants: a yes from all commits, one no aborts everyone, the
//! decision is queryable by a restarted participant, bad input is a 4xx problem.

use crate::common::{serve, sqlite_locks};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

/// A participant that votes `vote` and records (phase, txid).
#[derive(Clone)]
struct Voter {
    vote_yes: bool,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

async fn phase(
    State(v): State<Voter>,
    Path(phase): Path<String>,
    Json(body): Json<Value>,
) -> StatusCode {
    let txid = body["txid"].as_str().unwrap_or_default().to_string();
    v.seen.lock().unwrap().push((phase.clone(), txid));
    if phase == "prepare" && !v.vote_yes {
        return StatusCode::CONFLICT;
    }
    StatusCode::OK
}

async fn voter(vote_yes: bool) -> (String, Voter) {
    let v = Voter {
        vote_yes,
        seen: Default::default(),
    };
    let app = Router::new()
        .route("/{phase}", post(phase))
        .with_state(v.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), v)
}

fn phases(v: &Voter) -> Vec<String> {
    v.seen
        .lock()
        .unwrap()
        .iter()
        .map(|(p, _)| p.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_participants_commit_together_or_abort_together() {
    let (locks, _dir) = sqlite_locks();
    let base = serve(locks, None).await;
    let client = reqwest::Client::new();
    let (u1, v1) = voter(true).await;
    let (u2, v2) = voter(true).await;
    let out: Value = client
        .post(format!("{base}/v1/txns"))
        .json(&json!({"participants": [{"name": "p1", "url": u1}, {"name": "p2", "url": u2}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(out["decision"], "commit", "{out}");
    assert_eq!(out["finished"], true);
    assert_eq!(phases(&v1), ["prepare", "commit"]);
    assert_eq!(phases(&v2), ["prepare", "commit"]);
    // What a participant that restarted while prepared asks.
    let id = out["id"].as_str().unwrap();
    let tx: Value = reqwest::get(format!("{base}/v1/txns/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (tx["decision"].as_str(), tx["state"].as_str()),
        (Some("commit"), Some("committed"))
    );

    let (u3, v3) = voter(true).await;
    let (u4, v4) = voter(false).await;
    let out: Value = client
        .post(format!("{base}/v1/txns"))
        .json(&json!({"participants": [{"name": "yes", "url": u3}, {"name": "no", "url": u4}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(out["decision"], "abort", "{out}");
    assert!(out["reason"].as_str().unwrap().contains("409"), "{out}");
    assert_eq!(phases(&v3), ["prepare", "abort"]);
    assert_eq!(phases(&v4), ["prepare", "abort"]);
    let list: Value = reqwest::get(format!("{base}/v1/txns"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["txns"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_txn_input_is_a_4xx_problem() {
    let (locks, _dir) = sqlite_locks();
    let base = serve(locks, None).await;
    let client = reqwest::Client::new();
    let cases = [
        (json!({"participants": []}), "participants"),
        (
            json!({"participants": [{"name": "a", "url": "not a url"}]}),
            "participants[0].url",
        ),
        (
            json!({"participants": [{"name": "a", "postgres": "nope", "sql": ["SELECT 1"]}]}),
            "participants[0].postgres",
        ),
        (json!({"participants": [{"name": "a"}]}), "participants[0]"),
        (
            json!({"participants": [{"name": "a", "url": "http://h/x", "sql": ["x"]}]}),
            "participants[0].sql",
        ),
    ];
    for (body, field) in cases {
        let r = client
            .post(format!("{base}/v1/txns"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["field"], field, "{body}: {p}");
    }
    let r = client
        .post(format!("{base}/v1/txns"))
        .header("content-type", "application/json")
        .body("{\"participants\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = reqwest::get(format!("{base}/v1/txns/nope")).await.unwrap();
    assert_eq!(r.status(), 404);
    let list: Value = reqwest::get(format!("{base}/v1/txns"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["txns"], json!([]), "nothing was logged");
}
