//! TLS to the source, libpq's way: `sslmode=verify-full` with `sslrootcert` streams over
//! TLS on every connection (the walsender's too); a certificate signed by another CA is
//! refused at once, naming the certificate; an unknown sslmode is named.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mainstay_cdc::{CdcConfig, TableName};

use crate::common::*;

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (Debian package openssl) makes the test certificates");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate it signs for 127.0.0.1 / localhost, made with the
/// openssl CLI: (CA certificate, server certificate, server key).
fn certificates(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = |file: &str| dir.join(format!("{name}-{file}"));
    let s = |path: &PathBuf| path.display().to_string();
    let (ca_key, ca, key, csr, cert, ext) = (
        p("ca.key"),
        p("ca.crt"),
        p("server.key"),
        p("server.csr"),
        p("server.crt"),
        p("ext.cnf"),
    );
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name} test CA"),
        "-keyout",
        &s(&ca_key),
        "-out",
        &s(&ca),
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &s(&key),
        "-out",
        &s(&csr),
    ]);
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &s(&csr),
        "-CA",
        &s(&ca),
        "-CAkey",
        &s(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &s(&ext),
        "-out",
        &s(&cert),
    ]);
    (ca, cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_streams_over_tls_and_a_foreign_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path(), "server");
    let (other, _, _) = certificates(dir.path(), "other");
    let server =
        mainstay_testkit::PostgresServer::start_with_tls(&cert, &key).expect("a TLS server");
    let plain = server.database().await.unwrap();
    let db = client(&plain).await;
    db.batch_execute(
        "CREATE TABLE secure (id int PRIMARY KEY); INSERT INTO secure VALUES (1), (2);",
    )
    .await
    .unwrap();
    let tls_url = format!("{plain}?sslmode=verify-full&sslrootcert={}", ca.display());
    let received = Received::default();
    let config = CdcConfig::new("tls", &tls_url)
        .slot("tls")
        .tables(vec![TableName::parse("secure").unwrap()])
        .drop_slot_on_stop(true);
    let running = start(
        config,
        Box::new(MemorySink::new(&received)),
        &dir.path().join("state"),
    );
    wait_streaming(&plain, "tls").await;
    db.batch_execute("INSERT INTO secure VALUES (3)")
        .await
        .unwrap();
    received
        .wait(
            Duration::from_secs(30),
            "the snapshot and the insert",
            |e| e.len() >= 3,
        )
        .await;
    // Every connection of the connector is encrypted, the replication one included.
    let rows = db
        .query(
            "SELECT a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name LIKE 'mainstay-cdc%'",
            &[],
        )
        .await
        .unwrap();
    let connections: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(
        connections.iter().any(|(kind, _)| kind == "walsender"),
        "{connections:?}"
    );
    assert!(connections.len() >= 2, "{connections:?}");
    assert!(
        connections.iter().all(|(_, ssl)| *ssl),
        "a plain connection: {connections:?}"
    );
    running.stop().await.expect("clean stop");

    // A root the server's certificate does not chain to: refused at once, not retried.
    let foreign = format!(
        "{plain}?sslmode=verify-full&sslrootcert={}",
        other.display()
    );
    let started = std::time::Instant::now();
    let err = start(
        CdcConfig::new("tls", &foreign)
            .slot("tls_foreign")
            .tables(vec![TableName::parse("secure").unwrap()]),
        Box::new(MemorySink::new(&Received::default())),
        &dir.path().join("state2"),
    )
    .task
    .await
    .unwrap()
    .expect_err("a foreign CA is refused");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "retried a certificate refusal"
    );
    // An unknown sslmode is named.
    let bad = format!("{plain}?sslmode=sometimes");
    let err = start(
        CdcConfig::new("tls", &bad).slot("tls_bad"),
        Box::new(MemorySink::new(&Received::default())),
        &dir.path().join("state3"),
    )
    .task
    .await
    .unwrap()
    .expect_err("a bad sslmode is refused");
    assert!(err.to_string().contains("sometimes"), "{err}");
}
