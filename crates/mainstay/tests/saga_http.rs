//! The saga HTTP API: definitions, start (idempotent), query with history, list by
//! status, SSE transitions, operator retry and abort, bad input; and the `mainstay saga`
//! CLI on the same log.

use crate::common::{call, mainstay, spawn_serve};
use crate::participant::Participant;
use futures::StreamExt;
use mainstay_testkit::Process;
use mainstay_testkit::{per_store, shared_postgres, StoreKind};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;

struct Server {
    _process: Process,
    base: String,
    dir: tempfile::TempDir,
    /// The flags that point `mainstay` at this server's saga log.
    store_args: Vec<String>,
}

/// `mainstay serve` with its saga log on `store` (a fresh PostgreSQL database, or the
/// embedded default).
async fn server(store: StoreKind) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store_args = match store {
        StoreKind::Sqlite => Vec::new(),
        StoreKind::Postgres => vec![
            "--txn-backend".to_string(),
            "postgres".to_string(),
            "--txn-url".to_string(),
            shared_postgres().database().await.unwrap(),
        ],
    };
    let (process, base) = spawn_serve(
        "mainstay serve",
        mainstay(dir.path())
            .args(&store_args)
            .arg("serve")
            .env("MAINSTAY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "127.0.0.1",
    )
    .await;
    Server {
        _process: process,
        base,
        dir,
        store_args,
    }
}

async fn http_saga_lifecycle_history_sse_and_idempotent_start(store: StoreKind) {
    let p = Participant::default();
    let pbase = p.start().await;
    let s = server(store).await;
    let def = Participant::definition(&pbase, "order", 3);
    let (st, _, _) = call(
        reqwest::Method::POST,
        format!("{}/v1/saga-definitions", s.base),
        Some(def.clone()),
    )
    .await;
    assert_eq!(st, 201);
    let (st, got, _) = call(
        reqwest::Method::GET,
        format!("{}/v1/saga-definitions/order", s.base),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(got["steps"].as_array().unwrap().len(), 3);

    // The header form of the idempotency key; a second start returns the same saga (200).
    let start = || async {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/sagas", s.base))
            .header("Idempotency-Key", "order-1")
            .json(&json!({"definition": "order", "input": {"order_id": 1}}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let (st1, first) = start().await;
    let (st2, second) = start().await;
    assert_eq!((st1, st2), (201, 200));
    let id = first["id"].as_str().unwrap().to_string();
    assert_eq!(second["id"], first["id"]);

    let (_, done, _) = call(
        reqwest::Method::GET,
        format!("{}/v1/sagas/{id}?wait_ms=20000", s.base),
        None,
    )
    .await;
    assert_eq!(done["status"], "completed", "{done:#}");
    // Step 2 saw the outputs of steps 0 and 1.
    assert_eq!(done["steps"][2]["output"], json!({"done": 2, "seen": 2}));
    let events: Vec<&str> = done["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap())
        .collect();
    assert_eq!(events.first(), Some(&"saga_started"));
    assert_eq!(events.last(), Some(&"saga_completed"));
    assert!(done["history"][0]["at_ms"].as_u64().unwrap() > 0);
    assert_eq!(p.effects_of(&id), vec![(0, false), (1, false), (2, false)]);
    p.check_keys(&id);

    // SSE replays the history after Last-Event-ID, then ends at the final status.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/sagas/{id}/events", s.base))
        .header("Last-Event-ID", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(20), r.text())
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<u64> = body
        .lines()
        .filter_map(|l| l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")))
        .map(|v| v.trim().parse().unwrap())
        .collect();
    let expected: Vec<u64> = (3..=events.len() as u64).collect();
    assert_eq!(ids, expected, "{body}");
    assert!(body.contains("event: saga_completed"), "{body}");

    let (_, list, _) = call(
        reqwest::Method::GET,
        format!("{}/v1/sagas?status=completed", s.base),
        None,
    )
    .await;
    assert_eq!(list["sagas"].as_array().unwrap().len(), 1);
    let (_, list, _) = call(
        reqwest::Method::GET,
        format!("{}/v1/sagas?status=failed", s.base),
        None,
    )
    .await;
    assert!(list["sagas"].as_array().unwrap().is_empty());

    // The outcome counter moves just after the final transition is logged (which the
    // wait above reads), so poll for it.
    let line = format!(
        "mainstay_sagas_total{{log=\"{}\",outcome=\"completed\"}} 1",
        match store {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    );
    let url = format!("{}/metrics", s.base);
    mainstay_testkit::eventually(Duration::from_secs(5), &line, || {
        let url = url.clone();
        let line = line.clone();
        async move {
            let text = reqwest::get(url).await.unwrap().text().await.unwrap();
            text.contains(&line)
        }
    })
    .await
    .unwrap();
}
per_store!(http_saga_lifecycle_history_sse_and_idempotent_start);

async fn parked_saga_is_retried_over_http_and_live_sse_follows(store: StoreKind) {
    let p = Participant::default();
    let pbase = p.start().await;
    p.records.lock().unwrap().compensation_failures.insert(0, 3);
    let s = server(store).await;
    let def = Participant::definition(&pbase, "pay", 2);
    call(
        reqwest::Method::POST,
        format!("{}/v1/saga-definitions", s.base),
        Some(def),
    )
    .await;
    let (st, saga, _) = call(
        reqwest::Method::POST,
        format!("{}/v1/sagas", s.base),
        Some(json!({"definition": "pay", "input": {"fail_at": 1}})),
    )
    .await;
    assert_eq!(st, 201);
    let id = saga["id"].as_str().unwrap().to_string();
    let (_, parked, _) = call(
        reqwest::Method::GET,
        format!("{}/v1/sagas/{id}?wait_ms=20000", s.base),
        None,
    )
    .await;
    assert_eq!(parked["status"], "compensation_failed", "{parked:#}");
    assert!(
        parked["error"].as_str().unwrap().contains("500"),
        "{parked:#}"
    );
    let (_, list, _) = call(
        reqwest::Method::GET,
        format!("{}/v1/sagas?status=compensation_failed", s.base),
        None,
    )
    .await;
    assert_eq!(list["sagas"][0]["id"], json!(id));

    // Follow live: subscribe, then retry; the stream ends with saga_failed.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/sagas/{id}/events", s.base))
        .header("Last-Event-ID", parked["history_len"].to_string())
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    let (st, _, _) = call(
        reqwest::Method::POST,
        format!("{}/v1/sagas/{id}/retry", s.base),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = stream.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    })
    .await
    .unwrap();
    assert!(seen.contains("event: operator_retry"), "{seen}");
    assert!(seen.contains("event: step_compensated"), "{seen}");
    assert!(seen.contains("event: saga_failed"), "{seen}");
    assert_eq!(p.effects_of(&id), vec![(0, false), (0, true)]);

    // Operator actions on a finished saga are 409 problems naming its status.
    let (st, problem, ctype) = call(
        reqwest::Method::POST,
        format!("{}/v1/sagas/{id}/retry", s.base),
        None,
    )
    .await;
    assert_eq!((st, ctype.as_str()), (409, "application/problem+json"));
    assert_eq!(problem["saga_status"], "failed");
    let (st, _, _) = call(
        reqwest::Method::POST,
        format!("{}/v1/sagas/{id}/abort", s.base),
        None,
    )
    .await;
    assert_eq!(st, 409);
}
per_store!(parked_saga_is_retried_over_http_and_live_sse_follows);

async fn bad_saga_input_gets_4xx_problems_and_nothing_is_stored(store: StoreKind) {
    let s = server(store).await;
    let url = |p: &str| format!("{}{p}", s.base);
    let post_raw = |path: String, body: &'static str| async move {
        let r = reqwest::Client::new()
            .post(path)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        (st, ct, r.json::<Value>().await.unwrap())
    };
    let cases: Vec<(&str, &'static str, u16, &str)> = vec![
        ("/v1/saga-definitions", "{not json", 400, "invalid-request"),
        (
            "/v1/saga-definitions",
            r#"{"name":"x","steps":[]}"#,
            400,
            "invalid-request",
        ),
        (
            "/v1/saga-definitions",
            r#"{"name":"x","steps":[{"name":"a","action":{"url":"not a url"}}]}"#,
            400,
            "invalid-request",
        ),
        (
            "/v1/saga-definitions",
            r#"{"name":"x","steps":[{"name":"a","action":{"url":"ftp://h/x"}}]}"#,
            400,
            "invalid-request",
        ),
        (
            "/v1/saga-definitions",
            r#"{"name":"x","steps":[{"name":"a","action":{"url":"http://h/x"},"surprise":1}]}"#,
            400,
            "invalid-request",
        ),
        (
            "/v1/saga-definitions",
            r#"{"name":"x","steps":[{"name":"a","action":{"url":"http://h/x","method":"BAD METHOD"}}]}"#,
            400,
            "invalid-request",
        ),
        (
            "/v1/sagas",
            r#"{"definition":"nope","input":{}}"#,
            404,
            "saga-definition-not-found",
        ),
        (
            "/v1/sagas",
            r#"{"definition":"nope","input":{},"idempotency_key":""}"#,
            400,
            "invalid-request",
        ),
        ("/v1/sagas", r#"{"input":{}}"#, 400, "invalid-request"),
        ("/v1/sagas", "[1,2", 400, "invalid-request"),
    ];
    for (path, body, status, kind) in cases {
        let (st, ct, problem) = post_raw(url(path), body).await;
        assert_eq!(st, status, "{path} {body}: {problem}");
        assert_eq!(ct, "application/problem+json", "{path} {body}");
        assert_eq!(
            problem["type"],
            format!("urn:mainstay:problem:{kind}"),
            "{path} {body}: {problem}"
        );
    }
    // The invalid URL problem names the field.
    let (_, _, problem) = post_raw(
        url("/v1/saga-definitions"),
        r#"{"name":"x","steps":[{"name":"a","action":{"url":"http://ok/a"}},{"name":"b","action":{"url":"nope"}}]}"#,
    )
    .await;
    assert_eq!(problem["field"], "steps[1].action.url", "{problem}");
    let (st, problem, _) = call(reqwest::Method::GET, url("/v1/sagas?status=sideways"), None).await;
    assert_eq!(st, 400, "{problem}");
    let (st, problem, _) = call(reqwest::Method::GET, url("/v1/sagas/unknown-id"), None).await;
    assert_eq!(
        (st, problem["type"].as_str()),
        (404, Some("urn:mainstay:problem:saga-not-found"))
    );
    let (st, _, _) = call(
        reqwest::Method::GET,
        url("/v1/sagas/unknown-id/events"),
        None,
    )
    .await;
    assert_eq!(st, 404);
    // Nothing was stored, and the server still serves.
    let (_, defs, _) = call(reqwest::Method::GET, url("/v1/saga-definitions"), None).await;
    assert_eq!(defs, json!([]));
    let (_, list, _) = call(reqwest::Method::GET, url("/v1/sagas"), None).await;
    assert_eq!(list["sagas"], json!([]));
}
per_store!(bad_saga_input_gets_4xx_problems_and_nothing_is_stored);

async fn saga_cli_lists_shows_and_aborts_a_parked_saga(store: StoreKind) {
    let p = Participant::default();
    let pbase = p.start().await;
    p.records
        .lock()
        .unwrap()
        .compensation_failures
        .insert(0, 1000);
    let s = server(store).await;
    call(
        reqwest::Method::POST,
        format!("{}/v1/saga-definitions", s.base),
        Some(Participant::definition(&pbase, "cli", 2)),
    )
    .await;
    let (_, saga, _) = call(
        reqwest::Method::POST,
        format!("{}/v1/sagas", s.base),
        Some(json!({"definition": "cli", "input": {"fail_at": 1}})),
    )
    .await;
    let id = saga["id"].as_str().unwrap().to_string();
    let (_, parked, _) = call(
        reqwest::Method::GET,
        format!("{}/v1/sagas/{id}?wait_ms=20000", s.base),
        None,
    )
    .await;
    assert_eq!(parked["status"], "compensation_failed");

    let cli = |args: &[&str]| {
        let out = mainstay(s.dir.path())
            .args(&s.store_args)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = cli(&["saga", "list", "--status", "compensation_failed"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&id), "{out}");
    let (code, out, _) = cli(&["saga", "show", &id]);
    assert_eq!(code, Some(0));
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["status"], "compensation_failed");
    assert!(shown["history"].as_array().unwrap().len() >= 5);
    let (code, out, _) = cli(&["saga", "abort", &id]);
    assert_eq!(code, Some(0));
    assert!(out.contains("\"aborted\""), "{out}");
    let (code, _, err) = cli(&["saga", "retry", &id]);
    assert_eq!(code, Some(1));
    assert!(err.contains("aborted"), "{err}");
    let (code, _, err) = cli(&["saga", "show", "no-such-saga"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not found"), "{err}");
    let (code, _, err) = cli(&["saga", "list", "--status", "sideways"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown saga status"), "{err}");
    let (_, now, _) = call(
        reqwest::Method::GET,
        format!("{}/v1/sagas/{id}", s.base),
        None,
    )
    .await;
    assert_eq!(now["status"], "aborted");
}
per_store!(saga_cli_lists_shows_and_aborts_a_parked_saga);
