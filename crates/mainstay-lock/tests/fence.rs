//! The resource-side guards reject stale tokens.

use mainstay_lock::fence::{self, StaleFencingToken};
use mainstay_testkit::{shared_postgres, shared_redis, unique};

#[tokio::test]
async fn postgres_guard_rejects_lower_tokens() {
    let pg = shared_postgres();
    let url = pg.database().await.unwrap();
    let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    fence::postgres::install(&client).await.unwrap();
    fence::postgres::install(&client).await.unwrap(); // idempotent
    client
        .batch_execute("CREATE TABLE account (id int PRIMARY KEY, balance int)")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO account VALUES (1, 0)")
        .await
        .unwrap();
    for (token, balance) in [(5u64, 10), (5, 20), (7, 30)] {
        let tx = client.transaction().await.unwrap();
        fence::postgres::check(&tx, "account:1", token)
            .await
            .unwrap();
        tx.execute("UPDATE account SET balance = $1 WHERE id = 1", &[&balance])
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    // A stale holder (token 6 < 7) is rejected and its write rolls back with the transaction.
    let tx = client.transaction().await.unwrap();
    match fence::postgres::check(&tx, "account:1", 6).await {
        Err(fence::postgres::FenceError::Stale(s)) => assert_eq!(
            s,
            StaleFencingToken {
                presented: 6,
                current: 7
            }
        ),
        other => panic!("expected stale token, got {other:?}"),
    }
    drop(tx);
    let balance: i32 = client
        .query_one("SELECT balance FROM account WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(balance, 30);
    // Bad input: a negative token is a clear error, not a pass.
    let err = fence::postgres::check(&client, "x", u64::MAX)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid fencing token"), "{err}");
}

#[tokio::test]
async fn redis_guard_rejects_lower_tokens() {
    let r = shared_redis();
    let client = redis::Client::open(r.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    fence::redis::install(&mut conn).await.unwrap();
    let key = unique("data");
    let fk = format!("{key}:fence");
    fence::redis::fenced_set(&mut conn, &key, &fk, 10, "a")
        .await
        .unwrap();
    fence::redis::fenced_set(&mut conn, &key, &fk, 10, "b")
        .await
        .unwrap();
    fence::redis::fenced_set(&mut conn, &key, &fk, 11, "c")
        .await
        .unwrap();
    match fence::redis::fenced_set(&mut conn, &key, &fk, 9, "stale").await {
        Err(fence::redis::FenceError::Stale(s)) => assert_eq!(
            s,
            StaleFencingToken {
                presented: 9,
                current: 11
            }
        ),
        other => panic!("expected stale token, got {other:?}"),
    }
    assert!(matches!(
        fence::redis::fenced_del(&mut conn, &key, &fk, 3).await,
        Err(fence::redis::FenceError::Stale(_))
    ));
    let v: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, "c");
    assert!(fence::redis::fenced_set(&mut conn, &key, &fk, 0, "x")
        .await
        .is_err());
}
