//! CDC throughput, latency and footprint, side by side with `pg_recvlogical` on one server.
//!
//! `cargo bench -p mainstay-cdc --bench cdc` (add `-- --quick` for a smaller workload).
//!
//! 1. Throughput: 500k rows in 5k transactions are written first; then `pg_recvlogical`
//!    (pgoutput, to /dev/null) and the connector (Debezium JSON to the null sink) each
//!    drain their own slot, alternating, twice each. Rows/s and the ratio are printed.
//! 2. Latency: a writer commits 100-row transactions at 10k rows/s; the connector's sink
//!    records commit-to-sink latency per row (source commit time vs. arrival); p50/p99.
//! 3. Footprint: the `mainstay cdc run --sink null` binary drains the same 500k rows;
//!    its peak RSS (VmHWM) is printed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mainstay_cdc::{
    CdcConfig, CdcError, ChangeEvent, Connector, NullSink, Sink, SnapshotMode, TableName,
};
use mainstay_testkit::{HasUrl, PostgresServer};

struct Counting {
    inner: NullSink,
    count: Arc<AtomicU64>,
    target: u64,
    done: Arc<tokio::sync::Notify>,
    latencies_us: Option<Arc<Mutex<Vec<i64>>>>,
}

#[async_trait]
impl Sink for Counting {
    fn name(&self) -> &str {
        "counting"
    }
    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), CdcError> {
        self.inner.write(events).await?;
        if let Some(l) = &self.latencies_us {
            let now = mainstay_cdc::event::now_us();
            l.lock()
                .unwrap()
                .extend(events.iter().map(|e| now - e.source_ts_us));
        }
        let n = self.count.fetch_add(events.len() as u64, Ordering::Relaxed) + events.len() as u64;
        if n >= self.target {
            self.done.notify_one();
        }
        Ok(())
    }
}

async fn sql(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

async fn current_lsn(db: &tokio_postgres::Client) -> String {
    db.query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// Drains `slot` with the connector until `rows` events arrived; returns the time.
async fn drain_mainstay(url: &str, slot: &str, rows: u64, state: &std::path::Path) -> Duration {
    let count = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let sink = Counting {
        inner: NullSink::default(),
        count: count.clone(),
        target: rows,
        done: done.clone(),
        latencies_us: None,
    };
    let config = CdcConfig::new("bench", url)
        .slot(slot)
        .publication("bench")
        .snapshot_mode(SnapshotMode::NoData)
        .heartbeat_interval(None);
    let started = Instant::now();
    let d = done.clone();
    let summary = Connector::new(config, Box::new(sink))
        .state_file(state)
        .run(async move { d.notified().await })
        .await
        .expect("connector run");
    let elapsed = started.elapsed();
    assert!(summary.delivered >= rows, "delivered {}", summary.delivered);
    elapsed
}

fn drain_recvlogical(url: &str, slot: &str, endpos: &str) -> Duration {
    let bin = std::path::Path::new("/usr/lib/postgresql/15/bin/pg_recvlogical");
    let started = Instant::now();
    let status = std::process::Command::new(bin)
        .args([
            "-d",
            url,
            "--slot",
            slot,
            "--start",
            "--no-loop",
            "-f",
            "/dev/null",
        ])
        .args(["-o", "proto_version=1", "-o", "publication_names=bench"])
        .args(["--endpos", endpos])
        .status()
        .expect("pg_recvlogical");
    assert!(status.success(), "pg_recvlogical failed");
    started.elapsed()
}

fn create_recvlogical_slot(url: &str, slot: &str) {
    let status = std::process::Command::new("/usr/lib/postgresql/15/bin/pg_recvlogical")
        .args(["-d", url, "--slot", slot, "--create-slot", "-P", "pgoutput"])
        .status()
        .expect("pg_recvlogical --create-slot");
    assert!(status.success());
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rows, txs) = if quick {
        (100_000u64, 1_000u64)
    } else {
        (500_000, 5_000)
    };
    let per_tx = rows / txs;
    let server = PostgresServer::start().expect("postgres");
    let url = server.url();
    let db = sql(&url).await;
    db.batch_execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer int NOT NULL, total numeric(12,2) NOT NULL, \
         status text NOT NULL, created timestamptz NOT NULL DEFAULT now());
         CREATE PUBLICATION bench FOR TABLE orders;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // One slot per run, all created before the workload so each sees all of it.
    let runs = ["m1", "r1", "m2", "r2", "bin"];
    for slot in runs {
        if slot.starts_with('r') {
            create_recvlogical_slot(&url, slot);
        } else {
            db.batch_execute(&format!(
                "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
            ))
            .await
            .unwrap();
        }
    }
    let write_started = Instant::now();
    for t in 0..txs {
        let from = t * per_tx + 1;
        db.batch_execute(&format!(
            "INSERT INTO orders (id, customer, total, status) SELECT g, g % 1000, (g % 10000) / 100.0, 'new' \
             FROM generate_series({from}, {}) g",
            from + per_tx - 1
        ))
        .await
        .unwrap();
    }
    let endpos = current_lsn(&db).await;
    println!(
        "workload: {rows} rows in {txs} transactions written in {:.1?} (WAL to {endpos})",
        write_started.elapsed()
    );

    let mut mainstay = Vec::new();
    let mut recv = Vec::new();
    for slot in ["m1", "r1", "m2", "r2"] {
        if slot.starts_with('m') {
            let t = drain_mainstay(&url, slot, rows, &dir.path().join(slot)).await;
            println!(
                "  mainstay-cdc  slot {slot}: {:>9.0} rows/s ({t:.2?})",
                rows as f64 / t.as_secs_f64()
            );
            mainstay.push(rows as f64 / t.as_secs_f64());
        } else {
            let t = drain_recvlogical(&url, slot, &endpos);
            println!(
                "  pg_recvlogical slot {slot}: {:>9.0} rows/s ({t:.2?})",
                rows as f64 / t.as_secs_f64()
            );
            recv.push(rows as f64 / t.as_secs_f64());
        }
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "throughput: mainstay-cdc {:.0} rows/s (Debezium JSON, null sink) vs pg_recvlogical {:.0} rows/s (raw pgoutput): ratio {:.2}x",
        best(&mainstay),
        best(&recv),
        best(&mainstay) / best(&recv)
    );

    // Footprint: the binary drains the same WAL.
    let mainstay_bin = std::env::var("MAINSTAY_BIN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/release/mainstay").to_string()
    });
    if std::path::Path::new(&mainstay_bin).exists() {
        let mut child = std::process::Command::new(&mainstay_bin)
            .args([
                "cdc",
                "run",
                "--source",
                &url,
                "--slot",
                "bin",
                "--publication",
                "bench",
            ])
            .args([
                "--snapshot-mode",
                "no_data",
                "--sink",
                "null",
                "--heartbeat",
                "off",
            ])
            .args([
                "--state-file",
                &dir.path().join("bin").display().to_string(),
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let mut hwm_kb = 0u64;
        loop {
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
            if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:")) {
                hwm_kb = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(hwm_kb);
            }
            let confirmed: Option<String> = db
                .query_one(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'bin' AND confirmed_flush_lsn >= $1::text::pg_lsn",
                    &[&endpos],
                )
                .await
                .ok()
                .map(|r| r.get(0));
            if confirmed.is_some() || started.elapsed() > Duration::from_secs(120) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = nix_kill(child.id());
        let _ = child.wait();
        println!("footprint: `mainstay cdc run --sink null` peak RSS {:.1} MB while draining {rows} rows", hwm_kb as f64 / 1024.0);
    } else {
        println!(
            "footprint: skipped ({mainstay_bin} not built; cargo build --release -p mainstay)"
        );
    }

    // Latency at a fixed 10k rows/s.
    let count = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let seconds = if quick { 5 } else { 15 };
    let target = 10_000 * seconds;
    let sink = Counting {
        inner: NullSink::default(),
        count: count.clone(),
        target,
        done: done.clone(),
        latencies_us: Some(latencies.clone()),
    };
    db.batch_execute("SELECT pg_create_logical_replication_slot('lat', 'pgoutput')")
        .await
        .unwrap();
    let d = done.clone();
    let config = CdcConfig::new("bench", &url)
        .slot("lat")
        .publication("bench")
        .snapshot_mode(SnapshotMode::NoData)
        .tables(vec![TableName::parse("orders").unwrap()]);
    let connector = tokio::spawn(
        Connector::new(config, Box::new(sink))
            .state_file(dir.path().join("lat"))
            .run(async move { d.notified().await }),
    );
    let writer = sql(&url).await;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let base = rows + 1;
    for i in 0..(target / 100) {
        tick.tick().await;
        let from = base + i * 100;
        writer
            .batch_execute(&format!(
                "INSERT INTO orders (id, customer, total, status) SELECT g, 1, 1, 'late' FROM generate_series({from}, {}) g",
                from + 99
            ))
            .await
            .unwrap();
    }
    connector.await.unwrap().expect("latency run");
    let mut l = latencies.lock().unwrap().clone();
    l.sort_unstable();
    println!(
        "latency at 10k rows/s ({} rows, 100 per transaction): commit-to-sink p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        l.len(),
        percentile(&l, 0.50),
        percentile(&l, 0.99),
        percentile(&l, 1.0)
    );
}

fn nix_kill(pid: u32) -> std::io::Result<()> {
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .map(|_| ())
}
