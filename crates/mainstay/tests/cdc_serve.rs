//! `mainstay serve` runs the `[cdc]` connector: `GET /v1/cdc` reports it streaming with
//! its slot, `/v1/cdc/{name}/tail` streams its envelopes live (SSE), `/metrics` counts
//! them per table, and an unknown connector is a 404 problem naming it.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::common::{mainstay, pg, spawn_serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_the_cdc_connector_with_status_tail_and_metrics() {
    let url = mainstay_testkit::shared_postgres()
        .database()
        .await
        .unwrap();
    let db = pg(&url).await;
    db.batch_execute(
        "CREATE TABLE served (id int PRIMARY KEY, v text);
         INSERT INTO served SELECT g, 'seed' FROM generate_series(1, 10) g;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mainstay.toml"),
        format!(
            "[cdc]\nname = \"shop\"\nsource = \"{url}\"\ntables = [\"public.served\"]\nslot = \"served\"\n\
             sink = \"file:served.ndjson\"\nheartbeat = \"1s\"\n"
        ),
    )
    .unwrap();
    let (mut server, base) = spawn_serve(
        "mainstay serve",
        mainstay(dir.path()).arg("serve"),
        "127.0.0.1",
    )
    .await;
    let http = reqwest::Client::new();
    let status = |http: reqwest::Client, base: String| async move {
        http.get(format!("{base}/v1/cdc"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    mainstay_testkit::eventually(Duration::from_secs(30), "the connector to stream", || {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let s = status(http, base).await;
            s["connectors"][0]["phase"] == "streaming" && s["connectors"][0]["snapshot_rows"] == 10
        }
    })
    .await
    .unwrap();
    // A live tail, then changes.
    let response = http
        .get(format!("{base}/v1/cdc/shop/tail"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = response.bytes_stream();
    db.batch_execute(
        "INSERT INTO served VALUES (11, 'live'); UPDATE served SET v = 'changed' WHERE id = 1;",
    )
    .await
    .unwrap();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while text.matches("event: change").count() < 2 {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("two change events on the tail within 30 s")
            .expect("the tail stays open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let envelopes: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(envelopes[0]["op"], "c");
    assert_eq!(envelopes[0]["after"]["id"], 11);
    assert_eq!(envelopes[1]["op"], "u");
    // Status with the slot, and metrics per table.
    let s = status(http.clone(), base.clone()).await;
    let c = &s["connectors"][0];
    assert_eq!(c["name"], "shop");
    assert_eq!(c["slot"], "served");
    assert_eq!(c["delivered_by_table"]["public.served"], 12);
    assert_eq!(c["slot_status"]["slot"], "served");
    assert_eq!(c["slot_status"]["active"], true);
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"mainstay_cdc_events_total{connector="shop",table="public.served"} 12"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"mainstay_cdc_up{connector="shop"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("mainstay_cdc_lag_bytes{connector=\"shop\"}"),
        "{metrics}"
    );
    // An unknown connector is named.
    let missing = http
        .get(format!("{base}/v1/cdc/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let problem: Value = missing.json().await.unwrap();
    assert_eq!(problem["name"], "nope");
    // The server stops the connector cleanly with itself: the slot is released.
    server.terminate(Duration::from_secs(30));
    let active: bool = db
        .query_one(
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'served'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!active, "the slot is still held after the server stopped");
    db.batch_execute("SELECT pg_drop_replication_slot('served')")
        .await
        .unwrap();
}
