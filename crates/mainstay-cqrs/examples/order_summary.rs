//! The seed's OrderSummary read model: a projection keeps one row per order (status,
//! item count, total) in the same SQLite file as the events, advancing its checkpoint in
//! the same transaction as the rows, then is rebuilt from scratch and swapped in.
//!
//! `cargo run -p mainstay-cqrs --example order_summary`

use mainstay_cqrs::sqlite::{SqliteProjection, SqliteProjector};
use mainstay_eventstore::sqlite::SqliteEventStore;
use mainstay_eventstore::{EventData, EventStore, ExpectedVersion, ReadAllFilter, RecordedEvent};
use serde_json::json;
use std::sync::Arc;

struct OrderSummary;

impl SqliteProjection for OrderSummary {
    fn name(&self) -> &str {
        "order_summary"
    }

    fn filter(&self) -> ReadAllFilter {
        ReadAllFilter {
            stream_prefix: Some("order-".into()),
            event_types: vec![],
        }
    }

    fn create(&self, tx: &rusqlite::Transaction<'_>, table: &str) -> rusqlite::Result<()> {
        tx.execute_batch(&format!(
            "CREATE TABLE {table} (order_id TEXT PRIMARY KEY, customer TEXT, status TEXT,
                                   items INTEGER NOT NULL, total_cents INTEGER NOT NULL)"
        ))
    }

    fn apply(
        &self,
        tx: &rusqlite::Transaction<'_>,
        table: &str,
        e: &RecordedEvent,
    ) -> rusqlite::Result<()> {
        let id = e.stream.trim_start_matches("order-");
        match e.event_type.as_str() {
            "OrderPlaced" => tx.execute(
                &format!("INSERT INTO {table} VALUES (?1, ?2, 'placed', 0, 0)"),
                rusqlite::params![id, e.data["customer"].as_str()],
            )?,
            "ItemAdded" => tx.execute(
                &format!(
                    "UPDATE {table} SET items = items + 1, total_cents = total_cents + ?2
                     WHERE order_id = ?1"
                ),
                rusqlite::params![id, e.data["price_cents"].as_i64()],
            )?,
            "OrderShipped" => tx.execute(
                &format!("UPDATE {table} SET status = 'shipped' WHERE order_id = ?1"),
                rusqlite::params![id],
            )?,
            _ => 0,
        };
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("shop.db");
    let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(&path)?);
    for (order, customer, prices, shipped) in [
        ("1001", "ann", vec![1999, 500], true),
        ("1002", "bob", vec![250], false),
    ] {
        let mut events = vec![EventData::new(
            "OrderPlaced",
            json!({ "customer": customer }),
        )];
        events.extend(
            prices
                .iter()
                .map(|p| EventData::new("ItemAdded", json!({ "price_cents": p }))),
        );
        if shipped {
            events.push(EventData::new("OrderShipped", json!({})));
        }
        store
            .append(&format!("order-{order}"), ExpectedVersion::NoStream, events)
            .await?;
    }
    let projector = SqliteProjector::open(&path, store.clone(), OrderSummary)?;
    let applied = projector.catch_up().await?;
    let (generation, at) = projector.checkpoint().await?;
    println!("applied {applied} events; generation {generation} at {at}");

    let show = |label: &str| -> rusqlite::Result<Vec<(String, String, i64, i64)>> {
        let c = rusqlite::Connection::open(&path)?;
        let mut q = c.prepare(
            "SELECT order_id, status, items, total_cents FROM order_summary ORDER BY order_id",
        )?;
        let rows = q
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        println!("{label}: {rows:?}");
        Ok(rows)
    };
    let before = show("order_summary")?;
    assert_eq!(before[0], ("1001".into(), "shipped".into(), 2, 2499));

    let rebuilt = projector.rebuild().await?;
    println!(
        "rebuilt from {rebuilt} events into {}",
        projector.table().await?
    );
    assert_eq!(show("after the swap")?, before);
    Ok(())
}
