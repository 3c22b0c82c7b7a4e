//! The HTTP API: the happy path, every bad input, auth, elections over SSE.

use crate::common::{lock_client, serve, sqlite_locks};
use futures::StreamExt;
use mainstay_lock::BackendKind;
use mainstay_testkit::{
    per_backend, unique, EtcdServer, FreshBackend, HasUrl, PostgresServer, RedisServer,
    ZooKeeperServer,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

async fn post(base: &str, path: &str, body: Value) -> (StatusCode, Value, String) {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, r.json().await.unwrap_or(Value::Null), ctype)
}

/// The lock contract over HTTP on every backend: grant with a token, 409 naming the
/// holder, extend, owner-checked release, status, a higher token next; readiness and
/// metrics name the backend.
async fn acquire_extend_release_over_http(kind: BackendKind) {
    let fresh = FreshBackend::new(kind).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = serve(lock_client(kind, &fresh.url(), dir.path()).await, None).await;
    let name = unique("orders");
    let lock = |verb: &str| format!("/v1/locks/{name}{verb}");
    let (s, lease, _) = post(
        &base,
        &lock("/acquire"),
        json!({"ttl_ms": 30000, "owner": "billing"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(lease["name"], name.as_str());
    // The granted ttl, as each backend documents it: Redlock subtracts its clock-drift
    // allowance, ZooKeeper caps a lease at its session timeout (10 s by default).
    let granted = lease["ttl_ms"].as_u64().unwrap();
    match kind {
        BackendKind::Redlock => assert!((29_000..30_000).contains(&granted), "{granted}"),
        BackendKind::Zookeeper => assert_eq!(granted, 10_000),
        _ => assert_eq!(granted, 30_000, "{kind:?}"),
    }
    let token = lease["fencing_token"].as_u64().unwrap();
    let id = lease["lease_id"].as_str().unwrap().to_string();

    let (s, busy, ctype) = post(
        &base,
        &lock("/acquire"),
        json!({"ttl_ms": 1000, "wait_ms": 50}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(ctype, "application/problem+json");
    assert_eq!(busy["type"], "urn:mainstay:problem:lock-busy");
    assert_eq!(busy["holder"], "billing");
    // The holder's expiry as others see it: exact where the backend stores it (SQLite,
    // PostgreSQL, ZooKeeper's mtime + ttl); estimated from the remaining ttl on Redis and
    // Redlock (never before what the holder was told: its lease is the conservative one);
    // whole seconds on etcd.
    let (seen, granted_until) = (
        busy["expires_at_ms"].as_u64().unwrap(),
        lease["expires_at_ms"].as_u64().unwrap(),
    );
    match kind {
        BackendKind::Etcd => {
            assert!(
                seen.abs_diff(granted_until) <= 1_000,
                "{seen} vs {granted_until}"
            )
        }
        BackendKind::Redis | BackendKind::Redlock => assert!(
            seen + 5 >= granted_until && seen <= granted_until + 1_000,
            "{kind:?}: {seen} vs {granted_until}"
        ),
        _ => assert_eq!(seen, granted_until, "{kind:?}"),
    }

    let (s, ext, _) = post(
        &base,
        &lock("/extend"),
        json!({"lease_id": id, "ttl_ms": 60000}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ext["fencing_token"].as_u64(), Some(token));
    let (s, p, _) = post(
        &base,
        &lock("/release"),
        json!({"lease_id": "0".repeat(32)}),
    )
    .await;
    assert_eq!(
        (s, p["type"].as_str()),
        (
            StatusCode::CONFLICT,
            Some("urn:mainstay:problem:not-lock-holder")
        )
    );
    let status: Value = reqwest::get(format!("{base}{}", lock("")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["held"], true);
    let (s, _, _) = post(&base, &lock("/release"), json!({"lease_id": id})).await;
    assert_eq!(s, StatusCode::OK);
    let status: Value = reqwest::get(format!("{base}{}", lock("")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status, json!({"name": name, "held": false, "holder": null}));
    let (_, next, _) = post(&base, &lock("/acquire"), json!({"ttl_ms": 1000})).await;
    assert!(next["fencing_token"].as_u64().unwrap() > token);
    let ready: Value = reqwest::get(format!("{base}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready, json!({"status": "ready", "backend": kind.as_str()}));
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for outcome in ["granted", "busy"] {
        let line = format!(
            "mainstay_lock_acquires_total{{backend=\"{}\",outcome=\"{outcome}\"}}",
            kind.as_str()
        );
        assert!(metrics.contains(&line), "{kind:?}: no {line} in\n{metrics}");
    }
}
per_backend!(acquire_extend_release_over_http);

/// `/readyz` is 503 while the backend is down (its process killed) and 200 again once it
/// is back — within the probe's own 2 s bound, not the 10 s connect deadline.
async fn readiness_follows_the_backend(kind: BackendKind) {
    let dir = tempfile::tempdir().unwrap();
    let mut server: Box<dyn Killable> = match kind {
        BackendKind::Postgres => Box::new(PostgresServer::start().unwrap()),
        BackendKind::Redis => Box::new(RedisServer::start().unwrap()),
        BackendKind::Etcd => Box::new(EtcdServer::start().unwrap()),
        BackendKind::Zookeeper => Box::new(ZooKeeperServer::start().unwrap()),
        other => panic!("{other:?} has no server to kill"),
    };
    let url = server.url();
    let base = serve(lock_client(kind, &url, dir.path()).await, None).await;
    let ready = || async {
        let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        (status, body)
    };
    assert_eq!(ready().await.0, StatusCode::OK, "{kind:?} before the kill");
    server.kill_it();
    mainstay_testkit::eventually(Duration::from_secs(30), "readyz to go unready", || async {
        let started = std::time::Instant::now();
        let (status, body) = ready().await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{kind:?}: readyz took {:?}",
            started.elapsed()
        );
        status == StatusCode::SERVICE_UNAVAILABLE
            && body["type"] == "urn:mainstay:problem:backend-unavailable"
    })
    .await
    .unwrap();
    server.restart_it();
    mainstay_testkit::eventually(
        Duration::from_secs(60),
        "readyz to be ready again",
        || async { ready().await.0 == StatusCode::OK },
    )
    .await
    .unwrap();
}

/// A private server the readiness test kills and restarts on the same data.
trait Killable {
    fn url(&self) -> String;
    fn kill_it(&mut self);
    fn restart_it(&mut self);
}

macro_rules! killable {
    ($($t:ty),*) => {$(
        impl Killable for $t {
            fn url(&self) -> String {
                HasUrl::url(self)
            }
            fn kill_it(&mut self) {
                self.process().kill();
            }
            fn restart_it(&mut self) {
                self.restart().unwrap();
            }
        }
    )*};
}
killable!(PostgresServer, RedisServer, EtcdServer, ZooKeeperServer);

mod readiness_follows_the_backend {
    use mainstay_testkit::BackendKind;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::readiness_follows_the_backend(BackendKind::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis() {
        super::readiness_follows_the_backend(BackendKind::Redis).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd() {
        super::readiness_follows_the_backend(BackendKind::Etcd).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn zookeeper() {
        super::readiness_follows_the_backend(BackendKind::Zookeeper).await
    }
}

#[tokio::test]
async fn every_bad_input_gets_a_4xx_problem_and_the_server_keeps_serving() {
    let (locks, _dir) = sqlite_locks();
    let base = serve(locks, None).await;
    let client = reqwest::Client::new();
    let long_name = "n".repeat(257);
    let big = format!(
        "{{\"ttl_ms\": 1000, \"owner\": \"{}\"}}",
        "x".repeat(1 << 20)
    );
    let cases: Vec<(&str, String, String, Option<&str>)> = vec![
        (
            "malformed JSON",
            "/v1/locks/a/acquire".into(),
            "{\"ttl_ms\": ".into(),
            None,
        ),
        (
            "unknown field",
            "/v1/locks/a/acquire".into(),
            r#"{"ttl_ms": 1000, "ttl": 5}"#.into(),
            None,
        ),
        (
            "missing ttl",
            "/v1/locks/a/acquire".into(),
            r#"{}"#.into(),
            None,
        ),
        (
            "ttl as string",
            "/v1/locks/a/acquire".into(),
            r#"{"ttl_ms": "1000"}"#.into(),
            None,
        ),
        (
            "negative ttl",
            "/v1/locks/a/acquire".into(),
            r#"{"ttl_ms": -1}"#.into(),
            None,
        ),
        (
            "ttl 0",
            "/v1/locks/a/acquire".into(),
            r#"{"ttl_ms": 0}"#.into(),
            Some("ttl"),
        ),
        (
            "absurd ttl",
            "/v1/locks/a/acquire".into(),
            r#"{"ttl_ms": 100000000000}"#.into(),
            Some("ttl"),
        ),
        (
            "absurd wait",
            "/v1/locks/a/acquire".into(),
            r#"{"ttl_ms": 1000, "wait_ms": 100000000000}"#.into(),
            Some("wait"),
        ),
        (
            "name with encoded /",
            "/v1/locks/a%2Fb/acquire".into(),
            r#"{"ttl_ms": 1000}"#.into(),
            None,
        ),
        (
            "name with /",
            "/v1/locks/a/b/acquire".into(),
            r#"{"ttl_ms": 1000}"#.into(),
            None,
        ),
        (
            "name over 256 characters",
            format!("/v1/locks/{long_name}/acquire"),
            r#"{"ttl_ms": 1000}"#.into(),
            None,
        ),
        ("body over 1 MiB", "/v1/locks/a/acquire".into(), big, None),
        (
            "extend ttl 0",
            "/v1/locks/a/extend".into(),
            r#"{"lease_id": "x", "ttl_ms": 0}"#.into(),
            Some("ttl"),
        ),
        (
            "release without lease",
            "/v1/locks/a/release".into(),
            r#"{}"#.into(),
            None,
        ),
        (
            "campaign without candidate",
            "/v1/elections/e/campaign".into(),
            r#"{"ttl_ms": 1000}"#.into(),
            None,
        ),
        (
            "campaign empty candidate",
            "/v1/elections/e/campaign".into(),
            r#"{"candidate": "", "ttl_ms": 1000}"#.into(),
            Some("candidate"),
        ),
        (
            "body an array, not an object",
            "/v1/locks/a/acquire".into(),
            r#"[1000]"#.into(),
            None,
        ),
        (
            "ttl with a fraction",
            "/v1/locks/a/acquire".into(),
            r#"{"ttl_ms": 1000.5}"#.into(),
            None,
        ),
    ];
    for (what, path, body, field) in cases {
        let r = client
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert!(status.is_client_error(), "{what}: got {status}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{what}"
        );
        let p: Value = r.json().await.unwrap();
        assert!(
            p["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:mainstay:problem:"),
            "{what}: {p}"
        );
        assert_eq!(p["status"].as_u64(), Some(status.as_u16() as u64), "{what}");
        assert!(!p["title"].as_str().unwrap().is_empty(), "{what}");
        if let Some(f) = field {
            assert_eq!(p["field"], f, "{what}: {p}");
        }
    }
    let r = client
        .post(format!("{base}/v1/locks/a/acquire"))
        .body(r#"{"ttl_ms": 1000}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "missing content type"
    );
    let r = client
        .delete(format!("{base}/v1/locks/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    // Nothing above took the lock, and the server still serves.
    let status: Value = reqwest::get(format!("{base}/v1/locks/a"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["held"], false);
    let (s, _, _) = post(&base, "/v1/locks/a/acquire", json!({"ttl_ms": 1000})).await;
    assert_eq!(s, StatusCode::OK);
    // What JSON Schema calls valid is accepted: 1000.0 is the integer 1000, and names are
    // limited in characters (200 two-byte characters are 400 bytes).
    let (s, lease, _) = post(&base, "/v1/locks/f/acquire", json!({"ttl_ms": 1000.0})).await;
    assert_eq!(s, StatusCode::OK, "{lease}");
    assert_eq!(lease["ttl_ms"], 1000);
    let wide = "é".repeat(200);
    let (s, lease, _) = post(
        &base,
        &format!("/v1/locks/{wide}/acquire"),
        json!({"ttl_ms": 1000}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{lease}");
    // List limits outside 1..=10000 are refused, naming the field, not clamped.
    for bad in ["0", "10001"] {
        let r = reqwest::get(format!("{base}/v1/all?limit={bad}"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "limit={bad}");
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["field"], "limit", "{p}");
    }
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn token_auth_guards_the_api_but_not_health_or_metrics() {
    let (locks, _dir) = sqlite_locks();
    let base = serve(locks, Some("s3cret")).await;
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/locks/a/acquire");
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret"),
        Some("Basic s3cret"),
    ] {
        let mut req = client.post(&url).json(&json!({"ttl_ms": 1000}));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    let r = client
        .post(&url)
        .bearer_auth("s3cret")
        .json(&json!({"ttl_ms": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for open in ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"] {
        assert_eq!(
            client
                .get(format!("{base}{open}"))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK,
            "{open}"
        );
    }
    // The generated document requires the bearer scheme here, answers 401 on the API,
    // and leaves health, readiness, metrics and itself open.
    let doc: Value = reqwest::get(format!("{base}/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["paths"]["/v1/locks/{name}/acquire"]["post"]["responses"]["401"].is_object());
    assert_eq!(doc["paths"]["/healthz"]["get"]["security"], json!([]));
}

#[tokio::test]
async fn metrics_and_openapi_describe_the_api() {
    let (locks, _dir) = sqlite_locks();
    let base = serve(locks, None).await;
    post(&base, "/v1/locks/m/acquire", json!({"ttl_ms": 1000})).await;
    post(&base, "/v1/locks/m/acquire", json!({"ttl_ms": 1000})).await;
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"mainstay_lock_acquires_total{backend="sqlite",outcome="granted"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"mainstay_lock_acquires_total{backend="sqlite",outcome="busy"} 1"#),
        "{text}"
    );
    let doc: Value = reqwest::get(format!("{base}/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/locks/{name}/acquire",
        "/v1/locks/{name}/extend",
        "/v1/locks/{name}/release",
        "/v1/locks/{name}",
        "/v1/elections/{name}/campaign",
        "/v1/elections/{name}/keepalive",
        "/v1/elections/{name}/resign",
        "/v1/elections/{name}",
        "/v1/elections/{name}/observe",
        "/v1/saga-definitions",
        "/v1/sagas",
        "/v1/sagas/{id}/events",
        "/v1/txns",
        "/v1/streams/{stream}",
        "/v1/streams/{stream}/metadata",
        "/v1/streams/{stream}/snapshot",
        "/v1/scavenge",
        "/v1/all",
        "/v1/all/subscribe",
        "/v1/subscriptions/{name}",
        "/v1/subscriptions/{name}/checkpoint",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from OpenAPI"
        );
    }
    assert!(doc["components"]["schemas"]["AppendBody"].is_object());
    // Without a token no operation asks for credentials (nor claims a 401).
    assert!(doc.get("security").is_none(), "{}", doc["security"]);
    let acquire = &doc["paths"]["/v1/locks/{name}/acquire"]["post"];
    assert!(acquire["responses"]["401"].is_null());
    for status in ["200", "400", "409", "413", "415", "503"] {
        assert!(
            acquire["responses"][status].is_object(),
            "acquire lacks {status}"
        );
    }
    // Every parameter is a parameter, not an Authorization header.
    assert!(!doc.to_string().contains("\"Authorization\""));
}

/// Elections over HTTP on every backend: campaign, a higher epoch for the next leader,
/// and the SSE observer following the change.
async fn election_over_http_with_sse_observe(kind: BackendKind) {
    let fresh = FreshBackend::new(kind).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = serve(lock_client(kind, &fresh.url(), dir.path()).await, None).await;
    let db = unique("db");
    let r = reqwest::get(format!("{base}/v1/elections/{db}/observe?interval_ms=20"))
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut events = r.bytes_stream();
    let mut buf = String::new();
    // Reads SSE frames until one carries `leader` data matching `pred`.
    async fn next_leader(
        events: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
        buf: &mut String,
    ) -> Value {
        loop {
            if let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                if frame.contains("event: leader") {
                    let data = frame
                        .lines()
                        .find_map(|l| l.strip_prefix("data: "))
                        .unwrap();
                    return serde_json::from_str(data).unwrap();
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), events.next())
                .await
                .expect("no SSE frame within 20 s")
                .unwrap()
                .unwrap();
            buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
    assert_eq!(next_leader(&mut events, &mut buf).await, Value::Null);
    let (s, a, _) = post(
        &base,
        &format!("/v1/elections/{db}/campaign"),
        json!({"candidate": "a", "ttl_ms": 10000}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let leader = next_leader(&mut events, &mut buf).await;
    assert_eq!(
        (leader["candidate"].clone(), leader["epoch"].clone()),
        (json!("a"), a["epoch"].clone())
    );
    let (s, busy, _) = post(
        &base,
        &format!("/v1/elections/{db}/campaign"),
        json!({"candidate": "b", "ttl_ms": 10000, "wait_ms": 50}),
    )
    .await;
    assert_eq!(
        (s, busy["holder"].clone()),
        (StatusCode::CONFLICT, json!("a"))
    );
    let (s, _, _) = post(
        &base,
        &format!("/v1/elections/{db}/keepalive"),
        json!({"lease_id": a["lease_id"], "ttl_ms": 10000}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = post(
        &base,
        &format!("/v1/elections/{db}/resign"),
        json!({"lease_id": a["lease_id"]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b, _) = post(
        &base,
        &format!("/v1/elections/{db}/campaign"),
        json!({"candidate": "b", "ttl_ms": 10000}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(b["epoch"].as_u64() > a["epoch"].as_u64());
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let l = next_leader(&mut events, &mut buf).await;
            if l["candidate"] == "b" {
                assert_eq!(l["epoch"], b["epoch"]);
                break;
            }
        }
    })
    .await
    .expect("the observe stream never showed b leading");
    let leader: Value = reqwest::get(format!("{base}/v1/elections/{db}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(leader["leader"]["candidate"], "b");
}
per_backend!(election_over_http_with_sse_observe);
