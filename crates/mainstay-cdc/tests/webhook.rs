//! The webhook sink against a real HTTP endpoint (an axum server in the test): transient
//! failures (500, 503 with Retry-After) are retried until the endpoint takes every event,
//! in order; a permanent refusal (400) stops the connector naming the status.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use mainstay_cdc::{CdcConfig, CdcError, Position, TableName, WebhookSink};
use serde_json::Value;

use crate::common::*;

#[derive(Default)]
struct Endpoint {
    /// Requests seen.
    requests: AtomicUsize,
    /// Fail the requests with these numbers (1-based): 500, then one 503 asking for 1 s.
    script: Mutex<Vec<(usize, u16)>>,
    /// Refuse everything from now on with 400.
    refuse: std::sync::atomic::AtomicBool,
    /// Batches taken: (first position header, events).
    taken: Mutex<Vec<(Position, Vec<Value>)>>,
    /// When the 503 was answered.
    asked_to_wait_at: Mutex<Option<Instant>>,
    first_after_wait: Mutex<Option<Instant>>,
}

async fn serve(endpoint: Arc<Endpoint>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let endpoint = endpoint.clone();
            async move {
                let n = endpoint.requests.fetch_add(1, Ordering::SeqCst) + 1;
                if endpoint.refuse.load(Ordering::SeqCst) {
                    return (
                        StatusCode::BAD_REQUEST,
                        HeaderMap::new(),
                        "no such table here".to_string(),
                    );
                }
                let scripted = endpoint
                    .script
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, s)| *s);
                match scripted {
                    Some(503) => {
                        *endpoint.asked_to_wait_at.lock().unwrap() = Some(Instant::now());
                        let mut h = HeaderMap::new();
                        h.insert("retry-after", "1".parse().unwrap());
                        return (StatusCode::SERVICE_UNAVAILABLE, h, "busy".into());
                    }
                    Some(code) => {
                        return (
                            StatusCode::from_u16(code).unwrap(),
                            HeaderMap::new(),
                            "oops".into(),
                        );
                    }
                    None => {}
                }
                {
                    let mut after = endpoint.first_after_wait.lock().unwrap();
                    if after.is_none() && endpoint.asked_to_wait_at.lock().unwrap().is_some() {
                        *after = Some(Instant::now());
                    }
                }
                assert_eq!(headers["content-type"], "application/json");
                let first: Position = headers["mainstay-first-position"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                let events: Vec<Value> = serde_json::from_str(&body).unwrap();
                endpoint.taken.lock().unwrap().push((first, events));
                (StatusCode::OK, HeaderMap::new(), String::new())
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_retries_transient_failures_in_order_and_stops_on_a_refusal() {
    let url = database().await;
    let db = client(&url).await;
    db.batch_execute("CREATE TABLE hooks (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let endpoint = Arc::new(Endpoint::default());
    *endpoint.script.lock().unwrap() = vec![(1, 500), (2, 502), (3, 500), (4, 503)];
    let hook = serve(endpoint.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = CdcConfig::new("hooks", &url)
        .slot("webhook")
        .tables(vec![TableName::parse("hooks").unwrap()])
        .max_batch(50)
        .drop_slot_on_stop(true);
    let sink =
        WebhookSink::new(&hook, vec![("Authorization".into(), "Bearer t0ken".into())]).unwrap();
    let running = start(config, Box::new(sink), &dir.path().join("state"));
    for chunk in 0..4 {
        db.batch_execute(&format!(
            "INSERT INTO hooks SELECT g, 'v' || g FROM generate_series({}, {}) g",
            chunk * 50 + 1,
            chunk * 50 + 50
        ))
        .await
        .unwrap();
    }
    let taken_ids = |endpoint: &Endpoint| -> Vec<i64> {
        endpoint
            .taken
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, events)| events.iter().map(|e| e["after"]["id"].as_i64().unwrap()))
            .collect()
    };
    mainstay_testkit::eventually(
        Duration::from_secs(60),
        "the endpoint to take every insert",
        || {
            let n = taken_ids(&endpoint).len();
            async move { n >= 200 }
        },
    )
    .await
    .unwrap();
    // Every insert once (nothing was taken twice: failed requests took nothing), in order.
    let ids = taken_ids(&endpoint);
    assert_eq!(ids, (1..=200).collect::<Vec<_>>());
    let firsts: Vec<Position> = endpoint
        .taken
        .lock()
        .unwrap()
        .iter()
        .map(|(p, _)| *p)
        .collect();
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "batches out of order"
    );
    let requests = endpoint.requests.load(Ordering::SeqCst);
    let batches = firsts.len();
    assert!(
        requests >= batches + 4,
        "{requests} requests for {batches} batches and 4 failures"
    );
    // The 503's Retry-After (1 s) was honoured.
    let asked = endpoint
        .asked_to_wait_at
        .lock()
        .unwrap()
        .expect("the 503 was answered");
    let next = endpoint
        .first_after_wait
        .lock()
        .unwrap()
        .expect("a request after the 503");
    assert!(
        next - asked >= Duration::from_millis(950),
        "retried {:?} after a Retry-After of 1 s",
        next - asked
    );

    // A permanent refusal ends the run, naming the status and the endpoint's answer.
    endpoint.refuse.store(true, Ordering::SeqCst);
    db.batch_execute("INSERT INTO hooks VALUES (999, 'refused')")
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), running.task)
        .await
        .expect("the refusal ends the run")
        .unwrap();
    match outcome {
        Err(CdcError::Sink { message, .. }) => {
            assert!(
                message.contains("400") && message.contains("no such table here"),
                "{message}"
            );
        }
        other => panic!("expected a sink error, got {other:?}"),
    }
}

#[test]
fn bad_webhook_settings_are_named() {
    let err = WebhookSink::new("ftp://example.com/x", vec![])
        .err()
        .unwrap();
    assert!(err.to_string().contains("http or https"), "{err}");
    let err = WebhookSink::new("not a url", vec![]).err().unwrap();
    assert!(err.to_string().contains("not a url"), "{err}");
    let err = WebhookSink::new(
        "http://127.0.0.1:1/",
        vec![("bad header".into(), "x".into())],
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("bad header"), "{err}");
}
