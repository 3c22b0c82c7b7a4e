//! Helpers: run the built `mainstay` binary; start an in-process server.

use mainstay_lock::LockClient;
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

/// An in-process server on a free port over `locks` (sagas in a SQLite file beside the
/// locks' temp dir, or in a private temp dir); returns its base URL.
pub async fn serve(locks: LockClient, token: Option<&str>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = mainstay_txn::saga::sqlite::SqliteSagaLog::open(dir.path().join("txn.db")).unwrap();
    // The server task runs until the test's runtime ends; so does the log's directory.
    let sagas = mainstay_txn::saga::Orchestrator::builder(log).build();
    sagas.start().await.unwrap();
    let dlog = mainstay_txn::twopc::SqliteDecisionLog::open(dir.path().join("txn.db")).unwrap();
    let txns = mainstay_txn::twopc::Coordinator::builder(std::sync::Arc::new(dlog)).build();
    let events = std::sync::Arc::new(
        mainstay_eventstore::sqlite::SqliteEventStore::open(dir.path().join("events.db")).unwrap(),
    );
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
