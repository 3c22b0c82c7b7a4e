//! The CLI: serve's bind rule, `lock run` on the embedded default.

use crate::common::mainstay;
use std::process::Stdio;
use std::time::Duration;

#[test]
fn serve_refuses_a_non_loopback_address_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = mainstay(dir.path())
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on non-loopback address") && err.contains("token"),
        "{err}"
    );
    assert!(
        !dir.path().join("mainstay-data").exists(),
        "nothing should be created when refusing"
    );
}

#[tokio::test]
async fn serve_with_a_token_on_a_public_address_answers_401_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, base) = crate::common::spawn_serve(
        "mainstay serve",
        mainstay(dir.path())
            .arg("serve")
            .env("MAINSTAY_TOKEN", "tok")
            // The embedded default needs no external program (no Redis, PostgreSQL, …).
            .env("PATH", "/nonexistent")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "0.0.0.0",
    )
    .await;
    let client = reqwest::Client::new();
    let body = serde_json::json!({"ttl_ms": 1000});
    let r = client
        .post(format!("{base}/v1/locks/x/acquire"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(format!("{base}/v1/locks/x/acquire"))
        .bearer_auth("tok")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(server.is_running());
    server.terminate(Duration::from_secs(5));
}

#[test]
fn serve_rejects_a_bad_config_file_clearly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mainstay.toml"),
        "[lock]\nbackend = \"mysql\"\n",
    )
    .unwrap();
    let out = mainstay(dir.path())
        .args(["lock", "status", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mainstay.toml") && err.contains("mysql"),
        "{err}"
    );
}

/// Two (here: four) `mainstay lock run` processes on the embedded default never overlap.
#[test]
fn lock_run_processes_never_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!(
        "echo \"start $MAINSTAY_FENCING_TOKEN\" >> {log}; sleep 0.2; echo \"end $MAINSTAY_FENCING_TOKEN\" >> {log}",
        log = log.display()
    );
    let children: Vec<_> = (0..4)
        .map(|_| {
            mainstay(dir.path())
                .args([
                    "lock", "run", "report", "--ttl", "10s", "--wait", "60s", "--", "sh", "-c",
                    &script,
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "{text}");
    let mut last_token = 0u64;
    for pair in lines.chunks(2) {
        let (s, e) = (pair[0], pair[1]);
        let token: u64 = s.strip_prefix("start ").expect(&text).parse().unwrap();
        assert_eq!(e, format!("end {token}"), "overlap:\n{text}");
        assert!(token > last_token, "tokens out of order:\n{text}");
        last_token = token;
    }
}

#[test]
fn lock_run_passes_exit_status_and_reports_busy() {
    let dir = tempfile::tempdir().unwrap();
    let st = mainstay(dir.path())
        .args(["lock", "run", "x", "--", "sh", "-c", "exit 7"])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(7));
    let out = mainstay(dir.path())
        .args(["lock", "acquire", "x", "--ttl", "60s", "--owner", "cli"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let lease: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let st = mainstay(dir.path())
        .args(["lock", "run", "x", "--wait", "100ms", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(75));
    assert!(String::from_utf8_lossy(&st.stderr).contains("\"cli\""));
    let out = mainstay(dir.path())
        .args(["lock", "status", "x"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["holder"]["owner"], "cli");
    let bad = mainstay(dir.path())
        .args(["lock", "release", "x", "--lease-id", "nope"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let ok = mainstay(dir.path())
        .args([
            "lock",
            "release",
            "x",
            "--lease-id",
            lease["lease_id"].as_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(ok.status.success());
}

/// `mainstay fence install` puts working guards into PostgreSQL and Redis.
#[tokio::test]
async fn fence_install_for_postgres_and_redis() {
    let dir = tempfile::tempdir().unwrap();
    let pg = mainstay_testkit::shared_postgres();
    let db = pg.database().await.unwrap();
    let out = mainstay(dir.path())
        .args(["fence", "install", "--postgres", &db])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (client, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .execute("SELECT mainstay_fence_check('r', 5)", &[])
        .await
        .unwrap();
    let err = client
        .execute("SELECT mainstay_fence_check('r', 4)", &[])
        .await
        .unwrap_err();
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("MSF01"));

    let redis = mainstay_testkit::shared_redis();
    let out = mainstay(dir.path())
        .args(["fence", "install", "--redis", &redis.url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = mainstay_testkit::unique("fenced");
    let ok: redis::RedisResult<redis::Value> = redis::cmd("FCALL")
        .arg("mainstay_fenced_set")
        .arg(2)
        .arg(&key)
        .arg(format!("{key}:f"))
        .arg(9)
        .arg("v")
        .query_async(&mut conn)
        .await;
    assert!(ok.is_ok());
    let stale: redis::RedisResult<redis::Value> = redis::cmd("FCALL")
        .arg("mainstay_fenced_set")
        .arg(2)
        .arg(&key)
        .arg(format!("{key}:f"))
        .arg(8)
        .arg("w")
        .query_async(&mut conn)
        .await;
    assert!(stale
        .unwrap_err()
        .to_string()
        .contains("STALE_FENCING_TOKEN"));

    let bad = mainstay(dir.path())
        .args(["fence", "install"])
        .output()
        .unwrap();
    assert!(!bad.status.success(), "install without a target must fail");
}

/// The backend comes from mainstay.toml unless a flag or env var overrides it.
#[tokio::test]
async fn backend_is_chosen_by_config_file_env_and_flag() {
    let dir = tempfile::tempdir().unwrap();
    let redis = mainstay_testkit::shared_redis();
    std::fs::write(
        dir.path().join("mainstay.toml"),
        format!("[lock]\nbackend = \"redis\"\nurl = \"{}\"\n", redis.url()),
    )
    .unwrap();
    let name = mainstay_testkit::unique("cfg");
    let out = mainstay(dir.path())
        .args([
            "lock",
            "acquire",
            &name,
            "--ttl",
            "60s",
            "--owner",
            "from-config",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The lock is in Redis, not in a SQLite file.
    let direct = mainstay_lock::LockClient::new(
        mainstay_lock::redis::RedisBackend::connect(&redis.url())
            .await
            .unwrap(),
    );
    assert_eq!(
        direct.holder(&name).await.unwrap().map(|h| h.owner),
        Some("from-config".into())
    );
    assert!(!dir.path().join("mainstay-data").exists());
    // The env var overrides the file; the flag overrides both.
    let status = |args: &[&str], env: Option<(&str, &str)>| {
        let mut cmd = mainstay(dir.path());
        cmd.args(args);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let via_env = status(
        &["lock", "status", &name],
        Some(("MAINSTAY_LOCK_BACKEND", "sqlite")),
    );
    assert_eq!(
        via_env["held"], false,
        "env should have selected the (empty) SQLite backend"
    );
    let via_flag = status(
        &[
            "--backend",
            "redis",
            "--backend-url",
            &redis.url(),
            "lock",
            "status",
            &name,
        ],
        Some(("MAINSTAY_LOCK_BACKEND", "sqlite")),
    );
    assert_eq!(via_flag["holder"]["owner"], "from-config");
}

/// A backend that is not there: every kind retries until the connect deadline, then fails
/// with an error naming the backend, the address and the deadline.
#[test]
fn an_unreachable_backend_fails_at_the_connect_deadline_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // Bound, then released: nothing listens on it.
    let port = mainstay_testkit::free_port();
    let cases = [
        ("zookeeper", format!("127.0.0.1:{port}")),
        ("etcd", format!("http://127.0.0.1:{port}")),
        ("redis", format!("redis://127.0.0.1:{port}")),
        (
            "postgres",
            format!("postgres://postgres@127.0.0.1:{port}/x"),
        ),
    ];
    for (backend, url) in cases {
        let started = std::time::Instant::now();
        let out = mainstay(dir.path())
            .args(["--backend", backend, "--backend-url", &url])
            .args(["--connect-timeout", "1500ms", "lock", "status", "x"])
            .output()
            .unwrap();
        let took = started.elapsed();
        assert!(!out.status.success(), "{backend}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        for part in [backend, &format!("127.0.0.1:{port}"), "1.5s"] {
            assert!(err.contains(part), "{backend}: {err:?} lacks {part:?}");
        }
        // It waited for the deadline rather than giving up after the first attempt.
        assert!(
            took >= Duration::from_millis(1500),
            "{backend}: gave up after {took:?}"
        );
    }
}

#[test]
fn a_bad_connect_timeout_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["soon", "0s"] {
        let out = mainstay(dir.path())
            .args(["--connect-timeout", bad, "lock", "status", "x"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("connect timeout") && err.contains(bad),
            "{err}"
        );
    }
}

/// Server-side request forgery: a server on a non-loopback address calls only the origins
/// in its allow-list. A saga step or compensation, or a 2PC participant, naming anything
/// else is refused with 403 naming the URL, and nothing is stored; an allowed origin is
/// accepted; a redirect from an allowed participant is not followed.
#[tokio::test]
async fn a_public_server_calls_only_allowed_participants() {
    use axum::http::{header, StatusCode};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    // `elsewhere` counts what reaches it; `allowed` redirects every call there.
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let elsewhere = axum::Router::new().fallback(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async { "ok" }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere_url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, elsewhere).await });
    let target = elsewhere_url.clone();
    let allowed = axum::Router::new().fallback(move || {
        let target = target.clone();
        async move {
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, format!("{target}/stolen"))],
            )
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let allowed_url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, allowed).await });

    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let def = |name: &str, action: &str, compensation: &str| {
        serde_json::json!({"name": name, "steps": [{"name": "s",
            "action": {"url": action}, "compensation": {"url": compensation}}]})
    };
    let metadata = "http://169.254.169.254/latest/meta-data/";

    // 1. Public, no list: nothing may be called.
    let (mut server, base) = crate::common::spawn_serve(
        "mainstay serve (public, no allow-list)",
        mainstay(dir.path())
            .arg("serve")
            .env("MAINSTAY_TOKEN", "tok")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "0.0.0.0",
    )
    .await;
    let r = client
        .post(format!("{base}/v1/saga-definitions"))
        .bearer_auth("tok")
        .json(&def("steal", metadata, &format!("{allowed_url}/undo")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "{r:?}"
    );
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["type"], "urn:mainstay:problem:target-not-allowed");
    assert_eq!(p["url"], metadata);
    assert_eq!(p["field"], "steps[0].action.url");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("allowed_participants"),
        "{p}"
    );
    let r = client
        .get(format!("{base}/v1/saga-definitions/steal"))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a refused definition must not be stored");
    let r = client
        .post(format!("{base}/v1/txns"))
        .bearer_auth("tok")
        .json(&serde_json::json!({"participants": [{"name": "a", "url": metadata}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["field"], "participants[0].url");
    server.terminate(Duration::from_secs(5));

    // 2. Public with a list: the listed origin is accepted, others (a compensation
    //    included) are refused; a redirect from the listed origin is not followed.
    let (mut server, base) = crate::common::spawn_serve(
        "mainstay serve (public, allow-list)",
        mainstay(dir.path())
            .arg("serve")
            .env("MAINSTAY_TOKEN", "tok")
            .env("MAINSTAY_ALLOWED_PARTICIPANTS", &allowed_url)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "0.0.0.0",
    )
    .await;
    let r = client
        .post(format!("{base}/v1/saga-definitions"))
        .bearer_auth("tok")
        .json(&def(
            "mixed",
            &format!("{allowed_url}/do"),
            &format!("{elsewhere_url}/undo"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["field"], "steps[0].compensation.url");
    let r = client
        .post(format!("{base}/v1/saga-definitions"))
        .bearer_auth("tok")
        .json(&def(
            "redirected",
            &format!("{allowed_url}/do"),
            &format!("{allowed_url}/undo"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = client
        .post(format!("{base}/v1/sagas"))
        .bearer_auth("tok")
        .json(&serde_json::json!({"definition": "redirected", "input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let saga: serde_json::Value = r.json().await.unwrap();
    let id = saga["id"].as_str().unwrap();
    let done: serde_json::Value = client
        .get(format!("{base}/v1/sagas/{id}?wait_ms=20000"))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(done["status"], "completed", "{done}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a redirect from an allowed participant reached another host"
    );
    server.terminate(Duration::from_secs(5));
}
