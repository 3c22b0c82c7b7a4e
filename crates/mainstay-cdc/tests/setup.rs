//! Bad configuration: a clear error naming the problem and the fix, and nothing created.

use std::time::Duration;

use mainstay_cdc::{CdcConfig, CdcError, Connector, PublicationAutocreate, TableName};

use crate::common::*;

async fn run_once(config: CdcConfig) -> Result<mainstay_cdc::RunSummary, CdcError> {
    let dir = tempfile::tempdir().unwrap();
    let received = Received::default();
    let connector = Connector::new(config, Box::new(MemorySink::new(&received)))
        .state_file(dir.path().join("state"));
    // Shut down at once should the run get as far as streaming (it must not).
    tokio::time::timeout(Duration::from_secs(30), connector.run(async {}))
        .await
        .expect("setup errors come quickly")
}

/// Slots and publications in the database at `url`.
async fn created(url: &str) -> (i64, i64) {
    let db = client(url).await;
    let slots: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let publications: i64 = db
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .unwrap()
        .get(0);
    (slots, publications)
}

fn message(result: Result<mainstay_cdc::RunSummary, CdcError>) -> String {
    result.expect_err("the run must fail").to_string()
}

#[tokio::test]
async fn an_unknown_table_is_named_and_nothing_is_created() {
    let url = database().await;
    client(&url)
        .await
        .batch_execute("CREATE TABLE present (id int PRIMARY KEY)")
        .await
        .unwrap();
    let err = message(
        run_once(CdcConfig::new("c", &url).slot("unknown_table").tables(vec![
            TableName::parse("present").unwrap(),
            TableName::parse("public.absent").unwrap(),
        ]))
        .await,
    );
    assert!(
        err.contains("public.absent") && err.contains("does not exist"),
        "{err}"
    );
    assert_eq!(created(&url).await, (0, 0), "nothing created");
}

#[tokio::test]
async fn a_missing_publication_with_autocreate_disabled_says_how_to_create_it() {
    let url = database().await;
    client(&url)
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let err = message(
        run_once(
            CdcConfig::new("c", &url)
                .slot("no_pub")
                .publication("nopub")
                .tables(vec![TableName::parse("t").unwrap()])
                .publication_autocreate(PublicationAutocreate::Disabled),
        )
        .await,
    );
    assert!(
        err.contains("\"nopub\" does not exist") && err.contains("CREATE PUBLICATION"),
        "{err}"
    );
    assert_eq!(created(&url).await, (0, 0));
}

#[tokio::test]
async fn a_user_without_replication_is_told_to_grant_it() {
    let url = database().await;
    let db = client(&url).await;
    let role = mainstay_testkit::unique("norepl").to_lowercase();
    db.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN; CREATE TABLE t (id int PRIMARY KEY); GRANT SELECT ON t TO {role}"
    ))
    .await
    .unwrap();
    let as_role = url.replacen("postgres@", &format!("{role}@"), 1);
    let err = message(
        run_once(
            CdcConfig::new("c", &as_role)
                .slot("norepl")
                .tables(vec![TableName::parse("t").unwrap()]),
        )
        .await,
    );
    assert!(
        err.contains("REPLICATION") && err.contains(&format!("ALTER ROLE \"{role}\" REPLICATION")),
        "{err}"
    );
    assert_eq!(created(&url).await, (0, 0));
}

#[tokio::test]
async fn a_busy_slot_names_the_process_holding_it() {
    mainstay_core::connect::set_deadline(Duration::from_millis(1500));
    let url = database().await;
    client(&url)
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let received = Received::default();
    let config = CdcConfig::new("c", &url)
        .slot("busy")
        .tables(vec![TableName::parse("t").unwrap()]);
    let first = start(
        config.clone().drop_slot_on_stop(true),
        Box::new(MemorySink::new(&received)),
        &dir.path().join("first"),
    );
    wait_streaming(&url, "busy").await;
    let started = std::time::Instant::now();
    let err = run_once(config).await.expect_err("the slot is busy");
    assert!(
        matches!(err, CdcError::SlotBusy { pid, .. } if pid > 0),
        "{err}"
    );
    assert!(err.to_string().contains("\"busy\" is in use"), "{err}");
    // It waited out the connect deadline first (a crashed holder's slot frees in moments).
    assert!(started.elapsed() >= Duration::from_millis(1500));
    first.stop().await.expect("the first connector is unharmed");
}

#[tokio::test]
async fn wal_level_replica_is_refused_with_the_setting_to_change() {
    let server = mainstay_testkit::PostgresServer::start_with_settings(&["wal_level=replica"])
        .expect("private server");
    let url = mainstay_testkit::HasUrl::url(&server);
    client(&url)
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let err = message(
        run_once(
            CdcConfig::new("c", &url)
                .slot("replica")
                .tables(vec![TableName::parse("t").unwrap()]),
        )
        .await,
    );
    assert!(
        err.contains("wal_level = replica") && err.contains("wal_level = logical"),
        "{err}"
    );
    assert_eq!(created(&url).await, (0, 0));
}

#[tokio::test]
async fn an_unreachable_source_fails_at_the_connect_deadline_naming_it() {
    mainstay_core::connect::set_deadline(Duration::from_millis(800));
    let port = mainstay_testkit::free_port();
    let err = message(
        run_once(CdcConfig::new(
            "c",
            format!("postgres://postgres@127.0.0.1:{port}/db"),
        ))
        .await,
    );
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("connect deadline"),
        "{err}"
    );
}

#[tokio::test]
async fn a_bad_slot_name_is_refused_before_connecting() {
    let err =
        message(run_once(CdcConfig::new("c", "postgres://127.0.0.1:1/db").slot("Bad-Slot")).await);
    assert!(
        err.contains("\"Bad-Slot\"") && err.contains("lowercase"),
        "{err}"
    );
}
