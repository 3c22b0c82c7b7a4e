//! The seed's choreographed order saga: Order → Inventory → Payment over events, where a
//! failure event triggers the compensation (PaymentFailed → release the stock).
//!
//! Runs on the in-process bus, or on NATS JetStream with `--nats nats://127.0.0.1:4222`:
//!
//! ```text
//! cargo run -p mainstay-txn --features nats --example order_choreography
//! cargo run -p mainstay-txn --features nats --example order_choreography -- --nats nats://127.0.0.1:4222
//! ```
//!
//! Every service remembers the event ids it processed, so a redelivered event has no
//! second effect (JetStream delivers at least once).

use mainstay_txn::choreography::{Event, EventBus, InProcessBus, Service};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An order to place.
#[derive(Clone, Debug)]
pub struct Order {
    pub id: String,
    pub item: String,
    pub qty: i64,
    pub amount: i64,
}

/// The three services' state, shared so the caller can inspect it.
#[derive(Default)]
pub struct Shop {
    /// Order status by id: placed, confirmed, cancelled.
    pub orders: Mutex<HashMap<String, String>>,
    /// Units in stock by item.
    pub stock: Mutex<HashMap<String, i64>>,
    /// Reservations by order id: (item, qty).
    pub reserved: Mutex<HashMap<String, (String, i64)>>,
    /// Total charged.
    pub charged: Mutex<i64>,
    /// Largest amount the payment service accepts.
    pub payment_limit: i64,
    /// Event ids each service processed (its idempotency record).
    seen: Mutex<HashSet<(String, String)>>,
    /// Effects applied, to prove exactly-once effects under redelivery.
    pub effects: Mutex<Vec<String>>,
}

impl Shop {
    /// True the first time `service` sees `event` (a redelivery is a no-op).
    fn first_time(&self, service: &str, event: &Event) -> bool {
        self.seen
            .lock()
            .unwrap()
            .insert((service.to_string(), event.id.clone()))
    }

    fn effect(&self, what: String) {
        self.effects.lock().unwrap().push(what);
    }
}

fn field<'a>(e: &'a Event, name: &str) -> &'a serde_json::Value {
    &e.payload[name]
}

/// The order service: places orders; confirms on PaymentCompleted; cancels on
/// InventoryFailed or InventoryReleased.
pub fn order_service(shop: Arc<Shop>) -> Service {
    let (s1, s2, s3) = (shop.clone(), shop.clone(), shop);
    Service::new("orders")
        .on("PaymentCompleted", move |e| {
            let shop = s1.clone();
            async move {
                if shop.first_time("orders", &e) {
                    shop.orders
                        .lock()
                        .unwrap()
                        .insert(e.saga_id.clone(), "confirmed".into());
                    shop.effect(format!("confirm {}", e.saga_id));
                }
                Ok(vec![])
            }
        })
        .on("InventoryFailed", move |e| {
            let shop = s2.clone();
            async move {
                if shop.first_time("orders", &e) {
                    shop.orders
                        .lock()
                        .unwrap()
                        .insert(e.saga_id.clone(), "cancelled".into());
                    shop.effect(format!("cancel {}", e.saga_id));
                }
                Ok(vec![])
            }
        })
        .on("InventoryReleased", move |e| {
            let shop = s3.clone();
            async move {
                if shop.first_time("orders", &e) {
                    shop.orders
                        .lock()
                        .unwrap()
                        .insert(e.saga_id.clone(), "cancelled".into());
                    shop.effect(format!("cancel {}", e.saga_id));
                }
                Ok(vec![])
            }
        })
}

/// The inventory service: reserves on OrderCreated (or fails); releases on PaymentFailed
/// (the compensation).
pub fn inventory_service(shop: Arc<Shop>) -> Service {
    let (s1, s2) = (shop.clone(), shop);
    Service::new("inventory")
        .on("OrderCreated", move |e| {
            let shop = s1.clone();
            async move {
                let item = field(&e, "item").as_str().unwrap_or_default().to_string();
                let qty = field(&e, "qty").as_i64().unwrap_or(0);
                if shop.first_time("inventory", &e) {
                    let mut stock = shop.stock.lock().unwrap();
                    let have = stock.entry(item.clone()).or_insert(0);
                    if *have < qty {
                        return Ok(vec![
                            e.caused_by("InventoryFailed", json!({"reason": "out of stock"}))
                        ]);
                    }
                    *have -= qty;
                    shop.reserved
                        .lock()
                        .unwrap()
                        .insert(e.saga_id.clone(), (item, qty));
                    shop.effect(format!("reserve {}", e.saga_id));
                }
                // A redelivery republishes the same caused event (same id: deduplicated).
                let reserved = shop.reserved.lock().unwrap().contains_key(&e.saga_id);
                Ok(vec![if reserved {
                    e.caused_by("InventoryReserved", e.payload.clone())
                } else {
                    e.caused_by("InventoryFailed", json!({"reason": "out of stock"}))
                }])
            }
        })
        .on("PaymentFailed", move |e| {
            let shop = s2.clone();
            async move {
                if shop.first_time("inventory", &e) {
                    if let Some((item, qty)) = shop.reserved.lock().unwrap().remove(&e.saga_id) {
                        *shop.stock.lock().unwrap().entry(item).or_insert(0) += qty;
                        shop.effect(format!("release {}", e.saga_id));
                    }
                }
                Ok(vec![e.caused_by("InventoryReleased", json!({}))])
            }
        })
}

/// The payment service: charges on InventoryReserved, or fails above the limit.
pub fn payment_service(shop: Arc<Shop>) -> Service {
    Service::new("payments").on("InventoryReserved", move |e| {
        let shop = shop.clone();
        async move {
            let amount = field(&e, "amount").as_i64().unwrap_or(0);
            if amount > shop.payment_limit {
                return Ok(vec![
                    e.caused_by("PaymentFailed", json!({"reason": "card declined"}))
                ]);
            }
            if shop.first_time("payments", &e) {
                *shop.charged.lock().unwrap() += amount;
                shop.effect(format!("charge {}", e.saga_id));
            }
            Ok(vec![
                e.caused_by("PaymentCompleted", json!({"amount": amount}))
            ])
        }
    })
}

/// Starts the three services on `bus`, places `orders`, and waits (up to `timeout`) until
/// every order is confirmed or cancelled. Returns the statuses by order id.
pub async fn run_orders(
    bus: Arc<dyn EventBus>,
    shop: Arc<Shop>,
    orders: &[Order],
    timeout: Duration,
) -> HashMap<String, String> {
    let mut services = Vec::new();
    for service in [
        order_service(shop.clone()),
        inventory_service(shop.clone()),
        payment_service(shop.clone()),
    ] {
        services.push(service.start(bus.clone()).await.expect("subscribe"));
    }
    for o in orders {
        shop.orders
            .lock()
            .unwrap()
            .insert(o.id.clone(), "placed".into());
        let e = Event::new(
            "OrderCreated",
            o.id.clone(),
            json!({"item": o.item, "qty": o.qty, "amount": o.amount}),
        );
        bus.publish(&e).await.expect("publish OrderCreated");
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let done = shop.orders.lock().unwrap().values().all(|s| s != "placed");
        if done || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for s in services {
        s.abort();
    }
    shop.orders.lock().unwrap().clone()
}

/// The demo's orders: one that succeeds, one out of stock, one whose payment fails (its
/// reservation is compensated).
pub fn demo_orders() -> Vec<Order> {
    vec![
        Order {
            id: "order-1".into(),
            item: "book".into(),
            qty: 2,
            amount: 30,
        },
        Order {
            id: "order-2".into(),
            item: "lamp".into(),
            qty: 5,
            amount: 80,
        },
        Order {
            id: "order-3".into(),
            item: "book".into(),
            qty: 1,
            amount: 5000,
        },
    ]
}

/// A shop with 5 books, 1 lamp and a 1000 payment limit.
pub fn demo_shop() -> Arc<Shop> {
    let shop = Shop {
        payment_limit: 1000,
        ..Default::default()
    };
    shop.stock
        .lock()
        .unwrap()
        .extend([("book".to_string(), 5), ("lamp".to_string(), 1)]);
    Arc::new(shop)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let bus: Arc<dyn EventBus> = match args.iter().position(|a| a == "--nats") {
        Some(i) => {
            let url = args.get(i + 1).ok_or("--nats needs a URL")?;
            let stream = format!("ORDERS_DEMO_{}", std::process::id());
            Arc::new(
                mainstay_txn::choreography::nats::NatsBus::connect(
                    url,
                    &stream,
                    &stream.to_lowercase(),
                )
                .await?,
            )
        }
        None => Arc::new(InProcessBus::new()),
    };
    let shop = demo_shop();
    let statuses = run_orders(bus, shop.clone(), &demo_orders(), Duration::from_secs(10)).await;
    let mut ids: Vec<_> = statuses.keys().cloned().collect();
    ids.sort();
    for id in ids {
        println!("{id}: {}", statuses[&id]);
    }
    println!("stock: {:?}", shop.stock.lock().unwrap());
    println!("charged: {}", shop.charged.lock().unwrap());
    Ok(())
}
