//! Choreography: the seed's order example (examples/order_choreography.rs, compiled in
//! here) on the in-process bus and on NATS JetStream; JetStream's at-least-once delivery,
//! redelivery after a nak or a consumer restart, and publish deduplication.

#[allow(dead_code)]
#[path = "../examples/order_choreography.rs"]
mod example;

use mainstay_testkit::{shared_nats, unique};
use mainstay_txn::choreography::nats::NatsBus;
use mainstay_txn::choreography::{Event, EventBus, InProcessBus, Service};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn check_demo(statuses: &HashMap<String, String>, shop: &example::Shop) {
    assert_eq!(statuses["order-1"], "confirmed");
    assert_eq!(statuses["order-2"], "cancelled", "out of stock");
    assert_eq!(statuses["order-3"], "cancelled", "payment declined");
    let stock = shop.stock.lock().unwrap().clone();
    // order-1 took 2 books; order-3's reservation was compensated.
    assert_eq!((stock["book"], stock["lamp"]), (3, 1));
    assert_eq!(*shop.charged.lock().unwrap(), 30);
    let effects = shop.effects.lock().unwrap().clone();
    let pos = |e: &str| {
        effects
            .iter()
            .position(|x| x == e)
            .unwrap_or_else(|| panic!("{e} missing: {effects:?}"))
    };
    assert!(pos("reserve order-3") < pos("release order-3"));
    assert!(pos("release order-3") < pos("cancel order-3"));
    let mut unique_effects = effects.clone();
    unique_effects.sort();
    unique_effects.dedup();
    assert_eq!(
        unique_effects.len(),
        effects.len(),
        "an effect applied twice: {effects:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_saga_in_process() {
    let shop = example::demo_shop();
    let statuses = example::run_orders(
        Arc::new(InProcessBus::new()),
        shop.clone(),
        &example::demo_orders(),
        Duration::from_secs(10),
    )
    .await;
    check_demo(&statuses, &shop);
}

/// A bus on a fresh stream. `ack_wait` is 5 s, not the 30 s default: an event the server
/// hands to a stopped subscriber's pending pull request comes back after `ack_wait` (see
/// the NATS module's docs), and the restart test must see it within its deadline.
async fn nats_bus() -> (NatsBus, Box<dyn std::any::Any + Send>) {
    let nats = shared_nats();
    let name = unique("MS").to_uppercase();
    let bus = NatsBus::connect(&nats.url(), &name, &name.to_lowercase())
        .await
        .unwrap()
        .ack_wait(Duration::from_secs(5));
    (bus, Box::new(nats))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_saga_on_nats_jetstream() {
    let (bus, _keep) = nats_bus().await;
    let shop = example::demo_shop();
    let statuses = example::run_orders(
        Arc::new(bus),
        shop.clone(),
        &example::demo_orders(),
        Duration::from_secs(20),
    )
    .await;
    check_demo(&statuses, &shop);
}

/// A handler that fails the first delivery of every event: each is nak'ed and
/// redelivered, and processed; a republished id is delivered once; a consumer restarted
/// under the same durable name resumes without re-reading acked events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_redelivers_until_acked_and_dedups_publishes() {
    let (bus, _keep) = nats_bus().await;
    let bus: Arc<dyn EventBus> = Arc::new(bus);
    let attempts: Arc<Mutex<HashMap<String, u32>>> = Default::default();
    let service = |attempts: Arc<Mutex<HashMap<String, u32>>>| {
        Service::new("flaky").on("Ping", move |e: Event| {
            let attempts = attempts.clone();
            async move {
                let mut a = attempts.lock().unwrap();
                let n = a.entry(e.id.clone()).or_default();
                *n += 1;
                if *n == 1 {
                    Err("first delivery fails".to_string())
                } else {
                    Ok(vec![])
                }
            }
        })
    };
    let task = service(attempts.clone()).start(bus.clone()).await.unwrap();
    let events: Vec<Event> = (0..10)
        .map(|i| Event::new("Ping", format!("s{i}"), json!({"i": i})))
        .collect();
    for e in &events {
        bus.publish(e).await.unwrap();
        bus.publish(e).await.unwrap(); // Deduplicated by id.
    }
    let done = |attempts: &Arc<Mutex<HashMap<String, u32>>>, n: u32| {
        let a = attempts.lock().unwrap();
        a.len() == 10 && a.values().all(|v| *v == n)
    };
    mainstay_testkit::eventually(
        Duration::from_secs(20),
        "every event redelivered once",
        || {
            let ok = done(&attempts, 2);
            async move { ok }
        },
    )
    .await
    .unwrap();

    // Restart the consumer: acked events are not delivered again; new ones are.
    task.abort();
    let task = service(attempts.clone()).start(bus.clone()).await.unwrap();
    let late = Event::new("Ping", "late", json!({}));
    bus.publish(&late).await.unwrap();
    mainstay_testkit::eventually(Duration::from_secs(20), "the late event", || {
        let n = attempts.lock().unwrap().get(&late.id).copied();
        async move { n == Some(2) }
    })
    .await
    .unwrap();
    let a = attempts.lock().unwrap().clone();
    assert_eq!(a.len(), 11);
    assert!(events.iter().all(|e| a[&e.id] == 2), "{a:?}");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_event_kinds_are_refused() {
    let (bus, _keep) = nats_bus().await;
    let err = bus
        .publish(&Event::new("has.dot", "s", json!({})))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("has.dot"), "{err}");
    assert!(bus.subscribe("c", &["a b".to_string()]).await.is_err());
}
