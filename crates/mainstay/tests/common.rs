//! Helpers: run the built `mainstay` binary; start an in-process server.

use mainstay_lock::LockClient;
use mainstay_testkit::{shared_postgres, StoreKind};
use serde_json::Value;
use std::process::Command;

/// `mainstay` with a clean environment (no MAINSTAY_* from the caller) in `dir`.
pub fn mainstay(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mainstay"));
    for (k, _) in std::env::vars() {
        if k.starts_with("MAINSTAY_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(dir);
    cmd
}

/// An in-process server on a free port over `locks`, with its sagas, transactions and
/// events in SQLite files in a private temp dir; returns its base URL.
pub async fn serve(locks: LockClient, token: Option<&str>) -> String {
    serve_on(locks, token, StoreKind::Sqlite).await
}

/// [`serve`] with the saga log, the decision log and the event store on `store` (a fresh
/// PostgreSQL database for [`StoreKind::Postgres`]).
pub async fn serve_on(locks: LockClient, token: Option<&str>, store: StoreKind) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = match store {
        StoreKind::Sqlite => mainstay_core::config::BackendConfig::default(),
        StoreKind::Postgres => mainstay_core::config::BackendConfig {
            backend: mainstay_core::config::BackendKind::Postgres,
            url: Some(shared_postgres().database().await.unwrap()),
        },
    };
    let log = mainstay_txn::connect_log(&config, dir.path())
        .await
        .unwrap();
    let sagas = mainstay_txn::saga::Orchestrator::builder_arc(log).build();
    sagas.start().await.unwrap();
    let dlog = mainstay_txn::connect_decision_log(&config, dir.path())
        .await
        .unwrap();
    let txns = mainstay_txn::twopc::Coordinator::builder(dlog).build();
    let events = mainstay_eventstore::connect(&config, dir.path())
        .await
        .unwrap();
    // The server task runs until the test's runtime ends; so does the logs' directory.
    tokio::spawn(async move {
        std::future::pending::<()>().await;
        drop(dir);
    });
    let state = mainstay_server::AppState::new(
        locks,
        sagas,
        txns,
        Vec::new(),
        events,
        token.map(String::from),
    );
    tokio::spawn(mainstay_server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    format!("http://{addr}")
}

/// One HTTP request: (status, JSON body or null, content type).
pub async fn call(
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value, String) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        ctype,
    )
}

/// A lock client on `kind` at `url` (`--backend-url` form), as `mainstay` builds it.
pub async fn lock_client(
    kind: mainstay_lock::BackendKind,
    url: &str,
    dir: &std::path::Path,
) -> LockClient {
    let config = mainstay_lock::BackendConfig {
        backend: kind,
        url: Some(url.to_string()),
    };
    mainstay_lock::connect(&config, dir).await.unwrap()
}

/// A SQLite lock client in a fresh temp dir (kept alive by the returned guard).
pub fn sqlite_locks() -> (LockClient, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let backend = mainstay_lock::sqlite::SqliteBackend::open(dir.path().join("l.db")).unwrap();
    (LockClient::new(backend), dir)
}

/// Spawns `mainstay serve` (`cmd` carries its other arguments) listening on `ip` at a
/// port the OS picks, and waits until it listens. The port is read back from the process
/// (`--addr-file`), never picked beforehand: a port chosen by the test could be taken by
/// another test's server in between, and the test would then talk to that one.
pub async fn spawn_serve(
    name: &str,
    cmd: &mut Command,
    ip: &str,
) -> (mainstay_testkit::Process, String) {
    let addr_file =
        std::env::temp_dir().join(format!("{}.addr", mainstay_testkit::unique("mainstay")));
    cmd.args(["--listen", &format!("{ip}:0"), "--addr-file"])
        .arg(&addr_file);
    let mut process = mainstay_testkit::Process::spawn(name, cmd).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let addr: std::net::SocketAddr = loop {
        if let Ok(text) = std::fs::read_to_string(&addr_file) {
            let _ = std::fs::remove_file(&addr_file);
            break text.trim().parse().expect("an IP:PORT in the address file");
        }
        if let Some(code) = process.try_exit_code() {
            panic!("{name} exited ({code:?}) before listening");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} did not listen within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    (process, format!("http://127.0.0.1:{}", addr.port()))
}

/// A plain client for a test's own SQL (its connection task runs in the background).
pub async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}
