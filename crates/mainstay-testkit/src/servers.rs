//! Private Redis, PostgreSQL, etcd, ZooKeeper and NATS servers, each on a free loopback port
//! in a temp dir, and the shared servers a test run exports through the environment.

use crate::process::Process;
use crate::{free_port, unique};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends `request` over TCP and returns what came back before the peer closed or 1 s passed.
fn tcp_exchange(port: u16, request: &[u8]) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(request).ok()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > 1 && (out.ends_with(b"\r\n") || out.ends_with(b"}")) {
            break;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Waits until `process` listens on `port` itself and `ready` holds. Fails at once if
/// the process exits (typically: another process took the port between [`free_port`]
/// and the bind), so the caller can try another port.
fn await_ready(
    process: &mut Process,
    what: &str,
    port: u16,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(code) = process.try_exit_code() {
            anyhow::bail!(
                "{what}: the server exited ({code:?}) before it was ready (port {port} taken?)"
            );
        }
        if process.listens_on(port) && ready() {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "timed out after {READY_TIMEOUT:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `spawn` on fresh free ports until one start succeeds (at most 5 tries).
fn on_free_port<T>(mut spawn: impl FnMut(u16) -> anyhow::Result<T>) -> anyhow::Result<(u16, T)> {
    let mut last = None;
    for _ in 0..5 {
        let port = free_port();
        match spawn(port) {
            Ok(t) => return Ok((port, t)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one try"))
}

/// Fails naming the Debian package to install when `path` (a program on `PATH`, or an
/// absolute file) is missing — never a silent skip.
fn require(path: &str, package: &str) -> anyhow::Result<()> {
    let found = if path.starts_with('/') {
        Path::new(path).exists()
    } else {
        std::env::var_os("PATH")
            .is_some_and(|dirs| std::env::split_paths(&dirs).any(|d| d.join(path).is_file()))
    };
    anyhow::ensure!(
        found,
        "{path} not found: install the Debian package {package} (apt-get install {package}), or run ./scripts/test.sh, which installs every server the tests need"
    );
    Ok(())
}

fn quiet(cmd: &mut Command) -> &mut Command {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
}

/// The address of a server the test run (or this test process) shares.
#[derive(Debug)]
pub struct Shared<T> {
    url: String,
    kind: std::marker::PhantomData<fn() -> T>,
}

impl<T> Shared<T> {
    fn at(url: String) -> Self {
        Shared {
            url,
            kind: std::marker::PhantomData,
        }
    }

    /// The server's address.
    pub fn url(&self) -> String {
        self.url.clone()
    }
}

/// Servers that have a client address.
pub trait HasUrl {
    /// The client address.
    fn url(&self) -> String;
}

/// Servers that can outlive the value that started them: the pid and directory a
/// watchdog cleans up.
pub(crate) trait Background {
    /// The server's process id.
    fn pid(&self) -> u32;
    /// The directory its data lives in.
    fn dir(&self) -> &Path;
}

/// The server named by `var`, or — when the variable is unset — one server started on first
/// use and shared by every later call in this process (a `cargo test` binary runs all its
/// tests in one process). It is stopped, and its directory removed, by a watchdog once
/// this process exits.
fn shared<T: HasUrl + Background + Send + 'static>(
    var: &'static str,
    start: impl FnOnce() -> anyhow::Result<T>,
) -> Shared<T> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    if let Ok(url) = std::env::var(var) {
        if !url.is_empty() {
            return Shared::at(url);
        }
    }
    static STARTED: OnceLock<Mutex<HashMap<&'static str, String>>> = OnceLock::new();
    let mut started = STARTED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(url) = started.get(var) {
        return Shared::at(url.clone());
    }
    let server = start()
        .unwrap_or_else(|e| panic!("cannot start a server for the tests ({var} unset): {e}"));
    let url = server.url();
    watch_for_exit(server.pid(), server.dir());
    started.insert(var, url.clone());
    // Kept for the life of the process; the watchdog stops it.
    std::mem::forget(server);
    Shared::at(url)
}

macro_rules! background {
    ($($t:ty),*) => {$(
        impl Background for $t {
            fn pid(&self) -> u32 {
                self.process.pid()
            }
            fn dir(&self) -> &Path {
                self.dir.path()
            }
        }
    )*};
}
background!(
    RedisServer,
    PostgresServer,
    EtcdServer,
    ZooKeeperServer,
    NatsServer
);

/// Starts a shell that waits for this process to exit, then kills `pid` (and its process
/// group) and removes `dir`.
fn watch_for_exit(pid: u32, dir: &Path) {
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -9 {pid} 2>/dev/null; sleep 0.2; rm -rf '{dir}'",
        me = std::process::id(),
        dir = dir.display()
    );
    let _ = quiet(Command::new("sh").args(["-c", &script]))
        .process_group(0)
        .spawn();
}

/// Redis from `MAINSTAY_TEST_REDIS_URL`, or a private one.
pub fn shared_redis() -> Shared<RedisServer> {
    shared("MAINSTAY_TEST_REDIS_URL", RedisServer::start)
}

/// PostgreSQL (admin URL) from `MAINSTAY_TEST_POSTGRES_URL`, or a private one.
pub fn shared_postgres() -> Shared<PostgresServer> {
    shared("MAINSTAY_TEST_POSTGRES_URL", PostgresServer::start)
}

/// etcd from `MAINSTAY_TEST_ETCD`, or a private one.
pub fn shared_etcd() -> Shared<EtcdServer> {
    shared("MAINSTAY_TEST_ETCD", EtcdServer::start)
}

/// ZooKeeper from `MAINSTAY_TEST_ZOOKEEPER`, or a private one.
pub fn shared_zookeeper() -> Shared<ZooKeeperServer> {
    shared("MAINSTAY_TEST_ZOOKEEPER", ZooKeeperServer::start)
}

// ---------------------------------------------------------------------------------------

/// A private `redis-server` without persistence.
#[derive(Debug)]
pub struct RedisServer {
    process: Process,
    dir: TempDir,
    port: u16,
}

impl RedisServer {
    /// Starts on a free port and waits for `PING`.
    pub fn start() -> anyhow::Result<Self> {
        require("redis-server", "redis-server")?;
        let dir = tempfile::Builder::new()
            .prefix("mainstay-redis")
            .tempdir()?;
        let (port, process) = on_free_port(|port| Self::spawn(dir.path(), port))?;
        Ok(RedisServer { process, dir, port })
    }

    fn spawn(dir: &Path, port: u16) -> anyhow::Result<Process> {
        let process = Process::spawn(
            "redis-server",
            quiet(
                Command::new("redis-server")
                    .args([
                        "--port",
                        &port.to_string(),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                    ])
                    .arg(dir),
            ),
        )?;
        let mut process = process;
        await_ready(&mut process, "redis PING", port, || {
            tcp_exchange(port, b"PING\r\n").is_some_and(|r| r.starts_with("+PONG"))
        })?;
        Ok(process)
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process (pause, resume, kill).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// kill -9 and start again on the same port; without persistence the data is gone.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        self.process = Self::spawn(self.dir.path(), self.port)?;
        Ok(())
    }
}

impl HasUrl for RedisServer {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

// ---------------------------------------------------------------------------------------

fn pg_bin() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .map(|v| v.join("bin"))
        .ok_or_else(|| anyhow::anyhow!("no PostgreSQL under /usr/lib/postgresql: install the Debian package postgresql (apt-get install postgresql), or run ./scripts/test.sh, which installs every server the tests need"))
}

fn postgres_ids() -> Option<(u32, u32)> {
    if !nix::unistd::Uid::effective().is_root() {
        return None;
    }
    nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
}

/// A private PostgreSQL cluster (initdb in a temp dir, run as `postgres` when we are root).
#[derive(Debug)]
pub struct PostgresServer {
    process: Process,
    dir: TempDir,
    port: u16,
    durable: bool,
    settings: Vec<String>,
    /// The certificate and key of a TLS server (kept while it runs).
    tls_dir: Option<TempDir>,
}

impl PostgresServer {
    /// initdb + start on a free port with `wal_level=logical` and `fsync=off` (tests do
    /// not survive power loss anyway); waits for `pg_isready`.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(false, &[])
    }

    /// Like [`Self::start`] with extra `name=value` settings after the defaults (so they
    /// win): e.g. `wal_level=replica` for a server that cannot decode logically.
    pub fn start_with_settings(settings: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(false, settings)
    }

    /// Like [`Self::start`] with TLS on (`ssl=on`), serving this certificate chain and key
    /// (PEM files, copied next to the data directory and made the server's, mode 0600).
    /// Plain connections are still accepted (pg_hba trusts both).
    pub fn start_with_tls(cert_pem: &Path, key_pem: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::Builder::new()
            .prefix("mainstay-pg-tls")
            .tempdir()?;
        let cert = dir.path().join("server.crt");
        let key = dir.path().join("server.key");
        std::fs::copy(cert_pem, &cert)?;
        std::fs::copy(key_pem, &key)?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        if let Some((uid, gid)) = postgres_ids() {
            for path in [&cert, &key] {
                nix::unistd::chown(path, Some(uid.into()), Some(gid.into()))?;
            }
        }
        let settings = [
            "ssl=on".to_string(),
            format!("ssl_cert_file={}", cert.display()),
            format!("ssl_key_file={}", key.display()),
        ];
        let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
        let mut server = Self::start_with(false, &settings)?;
        server.tls_dir = Some(dir);
        Ok(server)
    }

    /// Like [`Self::start`] but with `fsync=on`: commits cost what they cost in
    /// production. For benchmarks.
    pub fn start_durable() -> anyhow::Result<Self> {
        Self::start_with(true, &[])
    }

    fn start_with(durable: bool, settings: &[&str]) -> anyhow::Result<Self> {
        let settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
        let dir = tempfile::Builder::new().prefix("mainstay-pg").tempdir()?;
        let ids = postgres_ids();
        if let Some((uid, gid)) = ids {
            nix::unistd::chown(dir.path(), Some(uid.into()), Some(gid.into()))?;
        }
        let initdb = pg_bin()?.join("initdb");
        let data = dir.path().join("data");
        let mut cmd = Command::new(&initdb);
        cmd.arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync"]);
        if let Some((uid, gid)) = ids {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.stdin(Stdio::null()).output()?;
        anyhow::ensure!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (port, process) =
            on_free_port(|port| Self::spawn(dir.path(), port, durable, &settings))?;
        Ok(PostgresServer {
            process,
            dir,
            port,
            durable,
            settings,
            tls_dir: None,
        })
    }

    fn spawn(dir: &Path, port: u16, durable: bool, settings: &[String]) -> anyhow::Result<Process> {
        let bin = pg_bin()?;
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(dir.join("data"))
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "wal_level=logical",
                "-c",
                "max_wal_senders=40",
                "-c",
                "max_replication_slots=40",
                "-c",
                "max_connections=200",
                "-c",
                if durable { "fsync=on" } else { "fsync=off" },
                "-c",
                "max_prepared_transactions=64",
            ]);
        for setting in settings {
            cmd.args(["-c", setting]);
        }
        if let Some((uid, gid)) = postgres_ids() {
            cmd.uid(uid).gid(gid);
        }
        let mut process = Process::spawn("postgres", quiet(&mut cmd))?;
        let isready = bin.join("pg_isready");
        await_ready(&mut process, "pg_isready", port, || {
            Command::new(&isready)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })?;
        Ok(process)
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster process (pause, resume, kill).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// kill -9 the postmaster and start again on the same data (crash recovery runs).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        // Backends exit when they notice the postmaster died; the new postmaster refuses
        // to start while they hold shared memory, so retry for a while.
        let mut last = None;
        for _ in 0..50 {
            match Self::spawn(self.dir.path(), self.port, self.durable, &self.settings) {
                Ok(p) => {
                    self.process = p;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("postgres restart failed")))
    }
}

impl HasUrl for PostgresServer {
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

/// Creates a fresh database on the server at `admin_url` and returns its URL.
pub async fn create_database(admin_url: &str) -> anyhow::Result<String> {
    let (client, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(conn);
    let name = unique("t").to_lowercase();
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    drop(client);
    let _ = driver.await;
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(admin_url);
    Ok(format!("{base}/{name}"))
}

/// Terminates every connection to the database at `url` but this call's own — what a
/// server restart or failover does to clients — and returns how many it ended.
pub async fn terminate_connections(url: &str) -> anyhow::Result<i64> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(conn);
    let cut: i64 = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    drop(client);
    let _ = driver.await;
    Ok(cut)
}

impl Shared<PostgresServer> {
    /// A fresh, empty database on this server.
    pub async fn database(&self) -> anyhow::Result<String> {
        create_database(&self.url()).await
    }
}

impl PostgresServer {
    /// A fresh, empty database on this server.
    pub async fn database(&self) -> anyhow::Result<String> {
        create_database(&self.url()).await
    }
}

// ---------------------------------------------------------------------------------------

/// A private single-member etcd.
#[derive(Debug)]
pub struct EtcdServer {
    process: Process,
    dir: TempDir,
    port: u16,
    peer_port: u16,
}

impl EtcdServer {
    /// Starts on free ports; waits for `/health`.
    pub fn start() -> anyhow::Result<Self> {
        require("etcd", "etcd-server")?;
        let dir = tempfile::Builder::new().prefix("mainstay-etcd").tempdir()?;
        let (port, (peer_port, process)) = on_free_port(|port| {
            let peer_port = free_port();
            Ok((peer_port, Self::spawn(dir.path(), port, peer_port)?))
        })?;
        Ok(EtcdServer {
            process,
            dir,
            port,
            peer_port,
        })
    }

    fn spawn(dir: &Path, port: u16, peer_port: u16) -> anyhow::Result<Process> {
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let process = Process::spawn(
            "etcd",
            quiet(
                Command::new("etcd")
                    .args(["--name", "n", "--data-dir"])
                    .arg(dir.join("data"))
                    .args([
                        "--listen-client-urls",
                        &client,
                        "--advertise-client-urls",
                        &client,
                    ])
                    .args([
                        "--listen-peer-urls",
                        &peer,
                        "--initial-advertise-peer-urls",
                        &peer,
                    ])
                    .args(["--initial-cluster", &format!("n={peer}")])
                    .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH),
            ),
        )?;
        let mut process = process;
        await_ready(&mut process, "etcd /health", port, || {
            tcp_exchange(port, b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .is_some_and(|r| r.contains("\"health\":\"true\""))
        })?;
        Ok(process)
    }

    /// The client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process (pause, resume, kill).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// kill -9 and start again on the same data and ports.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        self.process = Self::spawn(self.dir.path(), self.port, self.peer_port)?;
        Ok(())
    }
}

impl HasUrl for EtcdServer {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

// ---------------------------------------------------------------------------------------

/// A private standalone ZooKeeper (tickTime 200 ms: sessions of 0.4–30 s).
#[derive(Debug)]
pub struct ZooKeeperServer {
    process: Process,
    dir: TempDir,
    port: u16,
}

impl ZooKeeperServer {
    /// Starts on a free port; waits for `ruok` → `imok`.
    pub fn start() -> anyhow::Result<Self> {
        require("java", "default-jre-headless")?;
        require("/usr/share/java/zookeeper.jar", "zookeeper")?;
        let dir = tempfile::Builder::new().prefix("mainstay-zk").tempdir()?;
        let (port, process) = on_free_port(|port| {
            let cfg = format!(
            "tickTime=200\nminSessionTimeout=400\nmaxSessionTimeout=30000\ndataDir={}\nclientPort={port}\n\
             clientPortAddress=127.0.0.1\nadmin.enableServer=false\n4lw.commands.whitelist=*\n",
            dir.path().join("data").display()
        );
            std::fs::write(dir.path().join("zoo.cfg"), cfg)?;
            Self::spawn(dir.path(), port)
        })?;
        Ok(ZooKeeperServer { process, dir, port })
    }

    fn spawn(dir: &Path, port: u16) -> anyhow::Result<Process> {
        let process = Process::spawn(
            "zookeeper",
            quiet(
                Command::new("java")
                    .args(["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Dzookeeper.jmx.log4j.disable=true"])
                    .args(["-cp", "/usr/share/java/zookeeper.jar:/usr/share/java/zookeeper-jute.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-simple.jar"])
                    .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
                    .arg(dir.join("zoo.cfg")),
            ),
        )?;
        let mut process = process;
        await_ready(&mut process, "zookeeper ruok", port, || {
            tcp_exchange(port, b"ruok").is_some_and(|r| r.contains("imok"))
        })?;
        Ok(process)
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process (pause, resume, kill).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// kill -9 and start again on the same data and port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        self.process = Self::spawn(self.dir.path(), self.port)?;
        Ok(())
    }
}

impl HasUrl for ZooKeeperServer {
    fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

// ---------------------------------------------------------------------------------------

/// NATS from `MAINSTAY_TEST_NATS_URL`, or a private one.
pub fn shared_nats() -> Shared<NatsServer> {
    shared("MAINSTAY_TEST_NATS_URL", NatsServer::start)
}

/// A private `nats-server` with JetStream, storing in a temp dir.
#[derive(Debug)]
pub struct NatsServer {
    process: Process,
    dir: TempDir,
    port: u16,
}

impl NatsServer {
    /// Starts on a free port and waits for the server's `INFO` greeting.
    pub fn start() -> anyhow::Result<Self> {
        require("nats-server", "nats-server")?;
        let dir = tempfile::Builder::new().prefix("mainstay-nats").tempdir()?;
        let (port, process) = on_free_port(|port| Self::spawn(dir.path(), port))?;
        Ok(NatsServer { process, dir, port })
    }

    fn spawn(dir: &Path, port: u16) -> anyhow::Result<Process> {
        let process = Process::spawn(
            "nats-server",
            quiet(
                Command::new("nats-server")
                    .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                    .arg(dir.join("js")),
            ),
        )?;
        let mut process = process;
        await_ready(&mut process, "nats INFO", port, || {
            tcp_exchange(port, b"").is_some_and(|r| r.starts_with("INFO"))
        })?;
        Ok(process)
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process (pause, resume, kill).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// kill -9 and start again on the same port and store (JetStream data survives).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        self.process = Self::spawn(self.dir.path(), self.port)?;
        Ok(())
    }
}

impl HasUrl for NatsServer {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}
