//! The event store over HTTP (`/v1/streams`, `/v1/all`, `/v1/subscriptions`) on an
//! in-process server, and `mainstay events` from the shell.

use crate::common::{call, mainstay, serve_on, sqlite_locks};
use futures::StreamExt;
use mainstay_testkit::{per_store, StoreKind};
use serde_json::{json, Value};
use std::time::Duration;

/// A Server-Sent Events reader: yields (id, event, data) frames.
struct Sse {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Sse {
    async fn open(url: &str, last_event_id: Option<&str>) -> Sse {
        let mut req = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        Sse {
            body: Box::pin(r.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next event frame (comments and keep-alives skipped), within 20 s.
    async fn next(&mut self) -> (String, String, Value) {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Some(end) = self.buf.find("\n\n") {
                    let frame: String = self.buf.drain(..end + 2).collect();
                    let (mut id, mut event, mut data) = (String::new(), String::new(), None);
                    for line in frame.lines() {
                        if let Some(v) = line.strip_prefix("id: ") {
                            id = v.to_string();
                        } else if let Some(v) = line.strip_prefix("event: ") {
                            event = v.to_string();
                        } else if let Some(v) = line.strip_prefix("data: ") {
                            data = Some(serde_json::from_str(v).unwrap());
                        }
                    }
                    if let Some(data) = data {
                        return (id, event, data);
                    }
                    continue;
                }
                let chunk = self.body.next().await.expect("stream open").unwrap();
                self.buf.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .expect("an SSE event within 20 s")
    }
}

async fn post(url: String, body: Value) -> (u16, Value) {
    let (s, v, _) = call(reqwest::Method::POST, url, Some(body)).await;
    (s, v)
}

async fn get(url: String) -> (u16, Value) {
    let (s, v, _) = call(reqwest::Method::GET, url, None).await;
    (s, v)
}

/// `GET /v1/all` once it shows at least `n` events (within 20 s). On PostgreSQL `$all`
/// serves a committed append once every older transaction on the server has ended (other
/// tests' count), so it may trail the appends briefly; callers then assert exact counts.
async fn settled_all(base: &str, n: usize) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, all) = get(format!("{base}/v1/all?limit=10000")).await;
        if all["events"].as_array().map_or(0, Vec::len) >= n {
            return all;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "$all shows fewer than {n} events after 20 s: {all}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn versions(read: &Value) -> Vec<u64> {
    read["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect()
}

async fn streams_over_http_append_read_metadata_and_delete(store: StoreKind) {
    let (locks, _dir) = sqlite_locks();
    let base = serve_on(locks, None, store).await;
    let open = json!({
        "expected_version": "no_stream",
        "events": [
            {"id": "e-1", "type": "Opened", "data": {"owner": "ann"}},
            {"id": "e-2", "type": "Deposited", "data": {"amount": 10}, "metadata": {"$correlationId": "r-1"}}
        ]
    });
    let (st, first) = post(format!("{base}/v1/streams/acc-1"), open.clone()).await;
    assert_eq!(st, 200, "{first}");
    assert_eq!(first["next_expected_version"], 1);
    // The same ids again: idempotent, same positions, nothing new.
    let (st, again) = post(format!("{base}/v1/streams/acc-1"), open).await;
    assert_eq!((st, &again), (200, &first));
    // A stale expected version: 409 naming both sides.
    let (st, p) = post(
        format!("{base}/v1/streams/acc-1"),
        json!({"expected_version": 0, "events": [{"type": "Withdrawn", "data": {"amount": 1}}]}),
    )
    .await;
    assert_eq!(st, 409);
    assert_eq!(p["type"], "urn:mainstay:problem:wrong-expected-version");
    assert_eq!(
        (p["expected"].clone(), p["actual"].clone()),
        (json!("0"), json!(1))
    );
    let (st, _) = post(
        format!("{base}/v1/streams/acc-1"),
        json!({"expected_version": "1", "events": [{"type": "Withdrawn", "data": {"amount": 3}}]}),
    )
    .await;
    assert_eq!(st, 200);
    post(
        format!("{base}/v1/streams/other-1"),
        json!({"events": [{"type": "Noted"}]}),
    )
    .await;

    let (st, read) = get(format!("{base}/v1/streams/acc-1")).await;
    assert_eq!(st, 200);
    assert_eq!(versions(&read), vec![0, 1, 2]);
    assert_eq!(read["events"][1]["metadata"]["$correlationId"], "r-1");
    let (_, back) = get(format!(
        "{base}/v1/streams/acc-1?direction=backward&limit=2"
    ))
    .await;
    assert_eq!(versions(&back), vec![2, 1]);
    let (_, from) = get(format!("{base}/v1/streams/acc-1?from=1&limit=1")).await;
    assert_eq!(versions(&from), vec![1]);

    assert_eq!(
        settled_all(&base, 4).await["events"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let (st, all) = get(format!("{base}/v1/all?limit=2")).await;
    assert_eq!(st, 200);
    assert_eq!(all["events"].as_array().unwrap().len(), 2);
    let next = all["last_position"].as_str().unwrap().to_string();
    let (_, rest) = get(format!("{base}/v1/all?after={next}")).await;
    let rest_streams: Vec<&str> = rest["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream"].as_str().unwrap())
        .collect();
    assert_eq!(rest_streams, vec!["acc-1", "other-1"]);
    let (_, only) = get(format!("{base}/v1/all?event_types=Deposited,Withdrawn")).await;
    assert_eq!(only["events"].as_array().unwrap().len(), 2);
    let (_, prefixed) = get(format!("{base}/v1/all?stream_prefix=other-")).await;
    assert_eq!(prefixed["events"].as_array().unwrap().len(), 1);

    // Metadata: retention by count hides older events from stream reads.
    let (st, m, _) = call(
        reqwest::Method::PUT,
        format!("{base}/v1/streams/acc-1/metadata"),
        Some(json!({"max_count": 2, "custom": {"team": "billing"}})),
    )
    .await;
    assert_eq!(st, 200, "{m}");
    let (_, m) = get(format!("{base}/v1/streams/acc-1/metadata")).await;
    assert_eq!(m, json!({"max_count": 2, "custom": {"team": "billing"}}));
    let (_, read) = get(format!("{base}/v1/streams/acc-1")).await;
    assert_eq!(versions(&read), vec![1, 2]);

    // Delete: soft → 404 until revived; hard → 410 for good.
    let (st, p, _) = call(
        reqwest::Method::DELETE,
        format!("{base}/v1/streams/acc-1?expected_version=0"),
        None,
    )
    .await;
    assert_eq!(st, 409, "{p}");
    let (st, _, _) = call(
        reqwest::Method::DELETE,
        format!("{base}/v1/streams/acc-1?expected_version=2"),
        None,
    )
    .await;
    assert_eq!(st, 204);
    let (st, p) = get(format!("{base}/v1/streams/acc-1")).await;
    assert_eq!(
        (st, p["type"].as_str()),
        (404, Some("urn:mainstay:problem:stream-not-found"))
    );
    let (st, _, _) = call(
        reqwest::Method::DELETE,
        format!("{base}/v1/streams/other-1?mode=hard"),
        None,
    )
    .await;
    assert_eq!(st, 204);
    let (st, p) = get(format!("{base}/v1/streams/other-1")).await;
    assert_eq!(
        (st, p["type"].as_str()),
        (410, Some("urn:mainstay:problem:stream-deleted"))
    );
    let (st, _) = post(
        format!("{base}/v1/streams/other-1"),
        json!({"events": [{"type": "Noted"}]}),
    )
    .await;
    assert_eq!(st, 410);
}
per_store!(streams_over_http_append_read_metadata_and_delete);

async fn bad_event_input_is_a_4xx_problem_and_writes_nothing(store: StoreKind) {
    let (locks, _dir) = sqlite_locks();
    let base = serve_on(locks, None, store).await;
    let (st, _) = post(
        format!("{base}/v1/streams/s-1"),
        json!({"events": [{"id": "a", "type": "Created"}]}),
    )
    .await;
    assert_eq!(st, 200);
    let client = reqwest::Client::new();
    let raw = |body: String| {
        client
            .post(format!("{base}/v1/streams/s-1"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let huge = "x".repeat(2 << 20);
    let cases: Vec<(String, u16, Option<&str>)> = vec![
        ("{\"events\": [".into(), 400, None),
        ("not json".into(), 400, None),
        (json!({"expected_version": true, "events": [{"type": "T"}]}).to_string(), 400, Some("expected_version")),
        (json!({"expected_version": -1, "events": [{"type": "T"}]}).to_string(), 400, Some("expected_version")),
        (json!({"expected_version": "zero", "events": [{"type": "T"}]}).to_string(), 400, Some("expected_version")),
        (json!({"expected_version": {"exact": 0}, "events": [{"type": "T"}]}).to_string(), 400, Some("expected_version")),
        (json!({"events": []}).to_string(), 400, Some("appends[0].events")),
        (json!({"events": [{"type": ""}]}).to_string(), 400, Some("appends[0].events[0].type")),
        (json!({"events": [{"type": "T", "id": "x"}, {"type": "T", "id": "x"}]}).to_string(), 400, Some("appends[0].events[1].id")),
        (json!({"events": [{"type": "T", "colour": "red"}]}).to_string(), 400, None),
        (json!({"events": [{"type": "T", "data": huge}]}).to_string(), 413, None),
        // A valid event, then one over the limit, in one batch: nothing of it is stored.
        (json!({"events": [{"type": "T", "data": 1}, {"type": "T", "data": "y".repeat(600_000), "metadata": "z".repeat(500_000)}]}).to_string(), 413, None),
    ];
    for (body, status, field) in cases {
        let r = raw(body.clone()).await.unwrap();
        let got = r.status().as_u16();
        let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
        let p: Value = r.json().await.unwrap();
        let shown: String = body.chars().take(80).collect();
        assert_eq!(got, status, "{shown}: {p}");
        assert_eq!(ctype, "application/problem+json", "{shown}");
        if let Some(f) = field {
            assert_eq!(p["field"], f, "{shown}: {p}");
        }
    }
    // A large event within the limit is fine (it is the second event of the stream).
    let (st, p) = post(
        format!("{base}/v1/streams/s-1"),
        json!({"events": [{"type": "T", "data": "d".repeat(700_000)}]}),
    )
    .await;
    assert_eq!(st, 200, "700 kB is within the limit: {p}");
    // Reads: unknown stream 404, bad parameters 400.
    for (url, status) in [
        (format!("{base}/v1/streams/nope"), 404),
        (format!("{base}/v1/streams/s-1?direction=sideways"), 400),
        (format!("{base}/v1/streams/s-1?from=-1"), 400),
        (format!("{base}/v1/all?after=12"), 400),
        (format!("{base}/v1/all?subscription=x"), 400),
        (format!("{base}/v1/streams/%24system"), 400),
        (format!("{base}/v1/subscriptions/{}", "n".repeat(300)), 400),
    ] {
        let (st, p, ctype) = call(reqwest::Method::GET, url.clone(), None).await;
        assert_eq!(st, status, "{url}: {p}");
        assert_eq!(ctype, "application/problem+json", "{url}");
    }
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/all/subscribe"))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    for url in [
        format!("{base}/v1/streams/s-1?mode=gentle"),
        format!("{base}/v1/streams/s-1?expected_version=soon"),
    ] {
        let (st, _, _) = call(reqwest::Method::DELETE, url.clone(), None).await;
        assert_eq!(st, 400, "{url}");
    }
    let (st, _, _) = call(
        reqwest::Method::PUT,
        format!("{base}/v1/streams/s-1/metadata"),
        Some(json!({"max_count": 0})),
    )
    .await;
    assert_eq!(st, 400);
    // Nothing of the refused requests was written.
    let (_, read) = get(format!("{base}/v1/streams/s-1")).await;
    assert_eq!(versions(&read), vec![0, 1]);
    let all = settled_all(&base, 2).await;
    assert_eq!(all["events"].as_array().unwrap().len(), 2);
    let (_, m) = get(format!("{base}/v1/streams/s-1/metadata")).await;
    assert_eq!(m, json!({}));
}
per_store!(bad_event_input_is_a_4xx_problem_and_writes_nothing);

/// Snapshots over HTTP: none is 404; a save answers with what is stored; an older one
/// never replaces a newer one; bad bodies are 400 problems and store nothing. Scavenge
/// over HTTP removes what retention hides, from `$all` too.
async fn snapshots_and_scavenge_over_http(store: StoreKind) {
    let (locks, _dir) = sqlite_locks();
    let base = serve_on(locks, None, store).await;
    let url = format!("{base}/v1/streams/acc-9/snapshot");
    let put = |body: Value| call(reqwest::Method::PUT, url.clone(), Some(body));
    let (st, p) = get(url.clone()).await;
    assert_eq!(
        (st, p["type"].as_str()),
        (404, Some("urn:mainstay:problem:snapshot-not-found")),
        "{p}"
    );
    let (st, saved, _) = put(json!({"version": 5, "data": {"balance": 50}})).await;
    assert_eq!(st, 200, "{saved}");
    assert_eq!(
        (&saved["stream"], &saved["version"], &saved["data"]),
        (&json!("acc-9"), &json!(5), &json!({"balance": 50}))
    );
    let (st, older, _) = put(json!({"version": 3, "data": {"balance": 30}})).await;
    assert_eq!(st, 200);
    assert_eq!(
        older["version"], 5,
        "an older snapshot replaced a newer one: {older}"
    );
    let (st, newer, _) = put(json!({"version": 7, "data": {"balance": 70}})).await;
    assert_eq!((st, &newer["data"]), (200, &json!({"balance": 70})));
    for (body, field) in [
        (json!({"version": -1, "data": {}}), None),
        (json!({"version": 8}), None),
        (json!({"version": 8, "data": {}, "colour": "red"}), None),
        (
            json!({"version": 9_223_372_036_854_775_808u64, "data": {}}),
            Some("version"),
        ),
        (json!({"version": 8, "data": "x".repeat(1_100_000)}), None),
    ] {
        let (st, p, ctype) = put(body.clone()).await;
        let shown: String = body.to_string().chars().take(60).collect();
        assert!(st == 400 || st == 413, "{shown}: {st} {p}");
        assert_eq!(ctype, "application/problem+json", "{shown}");
        if let Some(f) = field {
            assert_eq!(p["field"], f, "{shown}: {p}");
        }
    }
    let (_, kept) = get(url.clone()).await;
    assert_eq!(
        (&kept["version"], &kept["data"]),
        (&json!(7), &json!({"balance": 70})),
        "a refused save changed the snapshot"
    );
    let (st, _) = get(format!("{base}/v1/streams/{}/snapshot", "s".repeat(300))).await;
    assert_eq!(st, 400);

    // Scavenge: keep the last 2 of 5 events.
    post(
        format!("{base}/v1/streams/acc-9"),
        json!({"events": (0..5).map(|i| json!({"type": "Deposited", "data": {"n": i}})).collect::<Vec<_>>()}),
    )
    .await;
    let (st, _, _) = call(
        reqwest::Method::PUT,
        format!("{base}/v1/streams/acc-9/metadata"),
        Some(json!({"max_count": 2})),
    )
    .await;
    assert_eq!(st, 200);
    let all = settled_all(&base, 5).await;
    assert_eq!(all["events"].as_array().unwrap().len(), 5);
    let (st, removed) = post(format!("{base}/v1/scavenge"), json!({})).await;
    assert_eq!((st, &removed), (200, &json!({"removed": 3})));
    let (_, all) = get(format!("{base}/v1/all")).await;
    assert_eq!(versions(&all), vec![3, 4]);
}
per_store!(snapshots_and_scavenge_over_http);

async fn sse_subscription_resumes_with_last_event_id_and_durable_checkpoints(store: StoreKind) {
    let (locks, _dir) = sqlite_locks();
    let base = serve_on(locks, None, store).await;
    for i in 0..5 {
        post(
            format!("{base}/v1/streams/o-{}", i % 2),
            json!({"events": [{"type": "Placed", "data": {"n": i}}]}),
        )
        .await;
    }
    let mut sse = Sse::open(&format!("{base}/v1/all/subscribe"), None).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (id, event, data) = sse.next().await;
        assert_eq!(
            (event.as_str(), data["data"]["n"].as_i64()),
            ("Placed", Some(i))
        );
        assert_eq!(data["position"], id.as_str());
        ids.push(id);
    }
    drop(sse);
    // A reconnect with Last-Event-ID continues right after it, then follows live.
    let mut sse = Sse::open(&format!("{base}/v1/all/subscribe"), Some(&ids[2])).await;
    assert_eq!(sse.next().await.2["data"]["n"], 3);
    assert_eq!(sse.next().await.2["data"]["n"], 4);
    post(
        format!("{base}/v1/streams/o-9"),
        json!({"events": [{"type": "Shipped", "data": {"n": 5}}]}),
    )
    .await;
    let (_, event, data) = sse.next().await;
    assert_eq!(
        (event.as_str(), data["data"]["n"].as_i64()),
        ("Shipped", Some(5))
    );
    // Filtered subscription.
    let mut shipped = Sse::open(
        &format!("{base}/v1/all/subscribe?event_types=Shipped"),
        None,
    )
    .await;
    assert_eq!(shipped.next().await.2["stream"], "o-9");

    // A durable subscription: its checkpoint is kept by the server.
    let (st, c) = get(format!("{base}/v1/subscriptions/billing")).await;
    assert_eq!((st, c["position"].clone()), (200, Value::Null));
    let (st, _) = post(
        format!("{base}/v1/subscriptions/billing/checkpoint"),
        json!({"position": ids[1]}),
    )
    .await;
    assert_eq!(st, 200);
    let (_, c) = get(format!("{base}/v1/subscriptions/billing")).await;
    assert_eq!(c["position"], ids[1].as_str());
    let mut durable = Sse::open(
        &format!("{base}/v1/all/subscribe?subscription=billing"),
        None,
    )
    .await;
    assert_eq!(
        durable.next().await.0,
        ids[2],
        "starts right after its checkpoint"
    );
    let (st, p) = post(
        format!("{base}/v1/subscriptions/billing/checkpoint"),
        json!({"position": "later"}),
    )
    .await;
    assert_eq!((st, p["field"].as_str()), (400, Some("position")));
}
per_store!(sse_subscription_resumes_with_last_event_id_and_durable_checkpoints);

/// `mainstay events append|read|tail` on the embedded store, with bad input refused.
#[test]
fn events_cli_appends_reads_and_tails() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write;
        let mut cmd = mainstay(dir.path());
        cmd.arg("events").args(args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, out, err) = run(
        &[
            "append",
            "cart-1",
            "--type",
            "Added",
            "--data",
            r#"{"sku":"a"}"#,
            "--expected-version",
            "no_stream",
        ],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["next_expected_version"], 0);
    let batch = "{\"type\":\"Added\",\"data\":{\"sku\":\"b\"}}\n{\"type\":\"Removed\",\"data\":{\"sku\":\"a\"},\"id\":\"r-1\"}\n";
    let (code, _, err) = run(
        &["append", "cart-1", "--expected-version", "0"],
        Some(batch),
    );
    assert_eq!(code, Some(0), "{err}");
    let (_, out, _) = run(&["read", "cart-1"], None);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["id"], "r-1");
    let (_, out, _) = run(
        &[
            "read",
            "$all",
            "--after",
            lines[0]["position"].as_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.lines().count(), 2);
    let (code, out, err) = run(&["tail", "--count", "3", "--subscription", "cli"], None);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.lines().count(), 3);
    // The durable subscription saved its checkpoint: the next tail starts after it.
    run(&["append", "cart-1", "--type", "Checkout"], None);
    let (_, out, _) = run(&["tail", "--count", "1", "--subscription", "cli"], None);
    assert!(out.contains("\"Checkout\""), "{out}");
    // Bad input: a clear error, nothing written.
    for (args, stdin, says) in [
        (
            vec!["append", "cart-1", "--type", "X", "--expected-version", "7"],
            None,
            "wrong expected version",
        ),
        (
            vec![
                "append",
                "cart-1",
                "--type",
                "X",
                "--expected-version",
                "soon",
            ],
            None,
            "--expected-version",
        ),
        (
            vec!["append", "cart-1", "--type", "X", "--data", "{oops"],
            None,
            "--data is not valid JSON",
        ),
        (
            vec!["append", "cart-1"],
            Some("{\"type\":\"A\"}\nnot json\n"),
            "stdin line 2",
        ),
        (vec!["read", "nope-1"], None, "not found"),
        (vec!["read", "$all", "--after", "x"], None, "COMMIT/PREPARE"),
    ] {
        let (code, _, err) = run(&args, stdin);
        assert_eq!(code, Some(1), "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let (_, out, _) = run(&["read", "cart-1"], None);
    assert_eq!(out.lines().count(), 4);
}

/// `POST /v1/streams`: several streams in one transaction — all or nothing.
async fn multi_stream_append_over_http_is_all_or_nothing(store: StoreKind) {
    let (locks, _dir) = sqlite_locks();
    let base = serve_on(locks, None, store).await;
    let (st, r) = post(
        format!("{base}/v1/streams"),
        json!({"appends": [
            {"stream": "order-1", "expected_version": "no_stream", "events": [{"type": "Placed"}]},
            {"stream": "stock-1", "events": [{"type": "Reserved"}, {"type": "Reserved"}]}
        ]}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["results"][0]["stream"], "order-1");
    assert_eq!(r["results"][1]["next_expected_version"], 1);
    // The second append's expectation fails: the first is not written either.
    let (st, p) = post(
        format!("{base}/v1/streams"),
        json!({"appends": [
            {"stream": "order-2", "events": [{"type": "Placed"}]},
            {"stream": "stock-1", "expected_version": 0, "events": [{"type": "Reserved"}]}
        ]}),
    )
    .await;
    assert_eq!(st, 409, "{p}");
    assert_eq!(
        (p["stream"].as_str(), p["actual"].as_u64()),
        (Some("stock-1"), Some(1))
    );
    let (st, _) = get(format!("{base}/v1/streams/order-2")).await;
    assert_eq!(st, 404, "nothing of the refused call was written");
    for (body, field) in [
        (json!({"appends": []}), Some("appends")),
        (
            json!({"appends": [{"stream": "x-1", "expected_version": false, "events": [{"type": "T"}]}]}),
            Some("appends[0].expected_version"),
        ),
        (json!({"appends": [{"events": [{"type": "T"}]}]}), None),
    ] {
        let (st, p) = post(format!("{base}/v1/streams"), body.clone()).await;
        assert_eq!(st, 400, "{body}: {p}");
        if let Some(f) = field {
            assert_eq!(p["field"], f, "{body}: {p}");
        }
    }
    // Nothing the refused requests sent is in `$all`.
    let all = settled_all(&base, 3).await;
    assert_eq!(all["events"].as_array().unwrap().len(), 3, "{all}");
}
per_store!(multi_stream_append_over_http_is_all_or_nothing);
