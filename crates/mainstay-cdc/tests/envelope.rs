//! Every op kind and every mapped type, compared with Debezium's documented envelope.

use std::time::Duration;

use mainstay_cdc::{CdcConfig, Op, TableName};
use serde_json::{json, Value};

use crate::common::*;

fn envelope(e: &mainstay_cdc::ChangeEvent) -> Value {
    serde_json::to_value(e.envelope(1_700_000_000_123_456)).unwrap()
}

#[tokio::test]
async fn every_op_kind_in_debeziums_shape() {
    let url = database().await;
    let db = client(&url).await;
    db.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, note text);
         CREATE TABLE full_items (id int PRIMARY KEY, name text);
         ALTER TABLE full_items REPLICA IDENTITY FULL;
         INSERT INTO items VALUES (1, 'one', 'first'), (2, 'two', NULL);",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let received = Received::default();
    let config = CdcConfig::new("shop", &url)
        .slot("golden")
        .tables(vec![
            TableName::parse("public.items").unwrap(),
            TableName::parse("full_items").unwrap(),
        ])
        .drop_slot_on_stop(true);
    let running = start(
        config,
        Box::new(MemorySink::new(&received)),
        &dir.path().join("state"),
    );
    received
        .wait(Duration::from_secs(30), "the snapshot's two rows", |e| {
            e.len() >= 2
        })
        .await;
    db.batch_execute(
        "INSERT INTO items VALUES (3, 'three', 'x');
         UPDATE items SET name = 'THREE' WHERE id = 3;
         DELETE FROM items WHERE id = 2;
         INSERT INTO full_items VALUES (7, 'seven');
         UPDATE full_items SET name = 'SEVEN' WHERE id = 7;
         DELETE FROM full_items WHERE id = 7;
         SELECT pg_logical_emit_message(true, 'audit', 'hello');
         TRUNCATE items;",
    )
    .await
    .unwrap();
    received
        .wait(Duration::from_secs(30), "every change", |e| {
            e.iter().any(|e| e.op == Op::Truncate)
        })
        .await;
    running.stop().await.expect("clean stop");
    let events = received.snapshot();
    assert_in_source_order(&events);
    let ops: Vec<(&str, &str)> = events.iter().map(|e| (e.op.code(), &*e.table)).collect();
    assert_eq!(
        ops,
        vec![
            ("r", "items"),
            ("r", "items"),
            ("c", "items"),
            ("u", "items"),
            ("d", "items"),
            ("c", "full_items"),
            ("u", "full_items"),
            ("d", "full_items"),
            ("m", ""),
            ("t", "items"),
        ]
    );

    // Snapshot read: Debezium's markers, the slot's consistent point as lsn, no before.
    let r0 = envelope(&events[0]);
    assert_eq!(r0["op"], "r");
    assert_eq!(r0["before"], Value::Null);
    assert_eq!(
        r0["after"],
        json!({"id": 1, "name": "one", "note": "first"})
    );
    assert_eq!(r0["source"]["snapshot"], "first");
    assert_eq!(envelope(&events[1])["source"]["snapshot"], "last");
    let source = r0["source"].as_object().unwrap();
    let keys: Vec<&str> = source.keys().map(String::as_str).collect();
    for field in [
        "version",
        "connector",
        "name",
        "ts_ms",
        "ts_us",
        "ts_ns",
        "snapshot",
        "db",
        "sequence",
        "schema",
        "table",
        "txId",
        "lsn",
        "xmin",
    ] {
        assert!(keys.contains(&field), "source lacks {field}: {keys:?}");
    }
    assert_eq!(source["connector"], "postgresql");
    assert_eq!(source["name"], "shop");
    assert_eq!(source["schema"], "public");
    assert_eq!(source["table"], "items");
    assert_eq!(source["db"], url.rsplit('/').next().unwrap());
    assert_eq!(r0["ts_ms"], 1_700_000_000_123i64);
    assert_eq!(r0["ts_us"], 1_700_000_000_123_456i64);
    assert_eq!(r0["ts_ns"], 1_700_000_000_123_456_000i64);

    // Create: before null, txId set, sequence = ["commit lsn", "lsn"] as strings.
    let c = envelope(&events[2]);
    assert_eq!(c["before"], Value::Null);
    assert_eq!(c["after"], json!({"id": 3, "name": "three", "note": "x"}));
    assert_eq!(c["source"]["snapshot"], "false");
    assert!(c["source"]["txId"].is_u64());
    let seq: Vec<String> = serde_json::from_str(c["source"]["sequence"].as_str().unwrap()).unwrap();
    assert_eq!(seq[1], c["source"]["lsn"].to_string());
    assert_eq!(events[2].key.as_ref().unwrap().to_value(), json!({"id": 3}));
    // The commit time is the source's ts: within a minute of now.
    let source_ms = c["source"]["ts_ms"].as_i64().unwrap();
    let now_ms = mainstay_cdc::event::now_us() / 1000;
    assert!(
        (now_ms - source_ms).abs() < 60_000,
        "source ts_ms {source_ms} vs now {now_ms}"
    );

    // Update and delete with REPLICA IDENTITY DEFAULT: no before on the update, the key
    // (others null) on the delete.
    let u = envelope(&events[3]);
    assert_eq!(u["before"], Value::Null);
    assert_eq!(u["after"], json!({"id": 3, "name": "THREE", "note": "x"}));
    let d = envelope(&events[4]);
    assert_eq!(d["after"], Value::Null);
    assert_eq!(d["before"], json!({"id": 2, "name": null, "note": null}));
    assert_eq!(events[4].key.as_ref().unwrap().to_value(), json!({"id": 2}));

    // REPLICA IDENTITY FULL: whole before images.
    let fu = envelope(&events[6]);
    assert_eq!(fu["before"], json!({"id": 7, "name": "seven"}));
    assert_eq!(fu["after"], json!({"id": 7, "name": "SEVEN"}));
    let fd = envelope(&events[7]);
    assert_eq!(fd["before"], json!({"id": 7, "name": "SEVEN"}));

    // Message: empty schema/table, base64 content, transactional so it has a txId.
    let m = envelope(&events[8]);
    assert_eq!(
        m["message"],
        json!({"prefix": "audit", "content": "aGVsbG8="})
    );
    assert_eq!(m["source"]["table"], "");
    assert!(m["source"]["txId"].is_u64());
    assert!(m.get("before").is_none() && m.get("after").is_none());

    // Truncate: no before/after, no key.
    let t = envelope(&events[9]);
    assert!(t.get("before").is_none() && t.get("after").is_none());
    assert!(events[9].key.is_none());
}

#[tokio::test]
async fn types_toast_and_a_column_added_mid_stream() {
    let url = database().await;
    let db = client(&url).await;
    db.batch_execute(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE DOMAIN positive AS int CHECK (VALUE > 0);
         CREATE TABLE typed (
            id int PRIMARY KEY, b boolean, i2 smallint, i8 bigint, f4 real, f8 double precision,
            n numeric(10,2), nv numeric, m money, t text, vc varchar(5), u uuid, j json, jb jsonb,
            by bytea, d date, tm time, tm3 time(3), ts timestamp, ts3 timestamp(3), tstz timestamptz,
            ttz timetz, iv interval, arr int[], tarr text[], e mood, dom positive, big text);
         ALTER TABLE typed ALTER COLUMN big SET STORAGE EXTERNAL;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let received = Received::default();
    let config = CdcConfig::new("types", &url)
        .slot("types")
        .tables(vec![TableName::parse("typed").unwrap()])
        .drop_slot_on_stop(true);
    let running = start(
        config,
        Box::new(MemorySink::new(&received)),
        &dir.path().join("state"),
    );
    // The snapshot is empty; wait until streaming runs by watching the slot.
    wait_streaming(&url, "types").await;
    db.batch_execute(
        "INSERT INTO typed VALUES (1, true, -2, 9007199254740993, 1.5, 2.25, 12.50, 3.14159, 12.34,
            'text', 'vc', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2]}', '{\"b\": null}',
            '\\x0102ff', '2024-02-29', '13:14:15.123456', '13:14:15.123', '2018-06-20 15:13:16.945104',
            '2018-06-20 15:13:16.945', '2018-06-20 15:13:16.5+02', '10:00:00+01', '1 day 2 hours',
            '{1,NULL,3}', '{\"a b\",c}', 'happy', 5, repeat('x', 10000));
         UPDATE typed SET b = false WHERE id = 1;
         ALTER TABLE typed ADD COLUMN extra text DEFAULT 'new';
         INSERT INTO typed (id, extra) VALUES (2, 'added');",
    )
    .await
    .unwrap();
    received
        .wait(Duration::from_secs(30), "three changes", |e| e.len() >= 3)
        .await;
    running.stop().await.expect("clean stop");
    let events = received.snapshot();
    let after = envelope(&events[0])["after"].clone();
    let expected = json!({
        "id": 1, "b": true, "i2": -2, "i8": 9007199254740993i64, "f4": 1.5, "f8": 2.25,
        "n": "BOI=", "nv": {"scale": 5, "value": "BMsv"}, "m": "BNI=", "t": "text", "vc": "vc",
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "j": "{\"a\": [1, 2]}", "jb": "{\"b\": null}",
        "by": "AQL/", "d": 19782, "tm": 47655123456i64, "tm3": 47655123,
        "ts": 1529507596945104i64, "ts3": 1529507596945i64, "tstz": "2018-06-20T13:13:16.5Z",
        "ttz": "09:00:00Z", "iv": 93600000000i64, "arr": [1, null, 3], "tarr": ["a b", "c"],
        "e": "happy", "dom": 5, "big": "x".repeat(10000)
    });
    for (column, value) in expected.as_object().unwrap() {
        assert_eq!(&after[column], value, "column {column}");
    }
    // The update did not touch `big`, stored out of line: pgoutput leaves it out, and
    // Debezium's placeholder takes its place.
    let updated = envelope(&events[1])["after"].clone();
    assert_eq!(updated["b"], json!(false));
    assert_eq!(updated["big"], json!("__debezium_unavailable_value"));
    // The column added mid-stream shows in the next event.
    let added = envelope(&events[2])["after"].clone();
    assert_eq!(added["extra"], json!("added"));
    assert_eq!(added["id"], json!(2));
}

#[tokio::test]
async fn a_primary_key_change_is_a_delete_and_a_create_and_column_rules_apply() {
    let url = database().await;
    let db = client(&url).await;
    db.batch_execute(
        "CREATE TABLE people (id int PRIMARY KEY, name text, ssn text, secret text);
         INSERT INTO people VALUES (1, 'ann', '123-45', 'hunter2');",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let received = Received::default();
    let config = CdcConfig::new("rules", &url)
        .slot("rules")
        .tables(vec![TableName::parse("people").unwrap()])
        .exclude_columns(vec![mainstay_cdc::ColumnName::parse(
            "public.people.secret",
        )
        .unwrap()])
        .mask_columns(
            vec![mainstay_cdc::ColumnName::parse("people.ssn").unwrap()],
            4,
        )
        .drop_slot_on_stop(true);
    let running = start(
        config,
        Box::new(MemorySink::new(&received)),
        &dir.path().join("state"),
    );
    wait_streaming(&url, "rules").await;
    db.batch_execute("UPDATE people SET id = 2 WHERE id = 1; UPDATE people SET ssn = NULL;")
        .await
        .unwrap();
    received
        .wait(Duration::from_secs(30), "four events", |e| e.len() >= 4)
        .await;
    running.stop().await.expect("clean stop");
    let events = received.snapshot();
    assert_in_source_order(&events);
    let ops: Vec<&str> = events.iter().map(|e| e.op.code()).collect();
    assert_eq!(ops, ["r", "d", "c", "u"]);
    assert_eq!(
        envelope(&events[0])["after"],
        json!({"id": 1, "name": "ann", "ssn": "****"})
    );
    assert_eq!(events[1].key.as_ref().unwrap().to_value(), json!({"id": 1}));
    assert_eq!(envelope(&events[1])["before"]["id"], json!(1));
    assert_eq!(events[2].key.as_ref().unwrap().to_value(), json!({"id": 2}));
    assert_eq!(
        envelope(&events[2])["after"],
        json!({"id": 2, "name": "ann", "ssn": "****"})
    );
    // A masked NULL stays NULL.
    assert_eq!(envelope(&events[3])["after"]["ssn"], Value::Null);
}

/// Opt-in transaction metadata (BEGIN/END around each transaction with captured changes,
/// a `transaction` block on each change) and tombstones after deletes, as Debezium shapes
/// them; a transaction touching only an uncaptured table produces neither.
#[tokio::test]
async fn transaction_metadata_and_tombstones_in_debeziums_shape() {
    let url = database().await;
    let db = client(&url).await;
    db.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, v text);
         CREATE TABLE b (id int PRIMARY KEY);
         CREATE TABLE elsewhere (id int PRIMARY KEY);",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let received = Received::default();
    let config = CdcConfig::new("shop", &url)
        .slot("txmeta")
        .tables(vec![
            TableName::parse("a").unwrap(),
            TableName::parse("b").unwrap(),
        ])
        .transaction_metadata(true)
        .tombstones_on_delete(true)
        .drop_slot_on_stop(true);
    let running = start(
        config,
        Box::new(MemorySink::new(&received)),
        &dir.path().join("state"),
    );
    wait_streaming(&url, "txmeta").await;
    db.batch_execute(
        "INSERT INTO elsewhere VALUES (1);
         BEGIN;
         INSERT INTO a VALUES (1, 'one'), (2, 'two');
         INSERT INTO b VALUES (9);
         DELETE FROM a WHERE id = 1;
         COMMIT;",
    )
    .await
    .unwrap();
    received
        .wait(Duration::from_secs(30), "the END event", |e| {
            e.iter()
                .any(|e| e.op == Op::Transaction && e.boundary.as_ref().is_some_and(|b| !b.begin))
        })
        .await;
    running.stop().await.expect("clean stop");
    let events = received.snapshot();
    assert_in_source_order(&events);
    let values: Vec<Value> = events.iter().map(envelope).collect();
    let ops: Vec<&str> = events.iter().map(|e| e.op.code()).collect();
    assert_eq!(
        ops,
        ["tx", "c", "c", "c", "d", "tombstone", "tx"],
        "{values:#?}"
    );
    let xid = events[1].tx_id.unwrap();
    let id = format!("{xid}:{}", events[1].position.commit_lsn);
    let begin = &values[0];
    assert_eq!(begin["status"], "BEGIN");
    assert_eq!(begin["id"], id.as_str());
    assert_eq!(begin["event_count"], Value::Null);
    assert_eq!(begin["data_collections"], Value::Null);
    assert!(begin["ts_ms"].as_i64().unwrap() > 1_600_000_000_000);
    let orders: Vec<(u64, u64)> = values[1..5]
        .iter()
        .map(|v| {
            assert_eq!(v["transaction"]["id"], id.as_str());
            (
                v["transaction"]["total_order"].as_u64().unwrap(),
                v["transaction"]["data_collection_order"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(orders, [(1, 1), (2, 2), (3, 1), (4, 3)]);
    // The tombstone: the deleted row's key, a null value.
    assert_eq!(values[5], Value::Null);
    assert_eq!(events[5].key.as_ref().unwrap().to_value(), json!({"id": 1}));
    let end = &values[6];
    assert_eq!(end["status"], "END");
    assert_eq!(end["id"], id.as_str());
    assert_eq!(end["event_count"], 4);
    assert_eq!(
        end["data_collections"],
        json!([
            {"data_collection": "public.a", "event_count": 3},
            {"data_collection": "public.b", "event_count": 1}
        ])
    );
    // Without the option the block is there, null, as in Debezium's envelope.
    assert!(values[1].as_object().unwrap().contains_key("transaction"));
}
