use super::*;
use crate::queue::Strategy;
use std::time::Duration;

#[tokio::test]
async fn renders_each_family_once_with_escaped_labels() {
    let a = CircuitBreaker::builder().build().unwrap();
    let b = CircuitBreaker::builder().build().unwrap();
    b.force_open();
    let _ = b.try_acquire();
    a.try_acquire().unwrap().failure();
    let bulkhead = Bulkhead::new("db \"main\"", 3, Duration::ZERO);
    let _slot = bulkhead.acquire().await.unwrap();
    let q = BackpressureQueue::new(4, Strategy::DropNewest);
    q.put(1).await.unwrap();
    let text = Exposition::new()
        .circuit_breaker("a", &a)
        .circuit_breaker("b", &b)
        .bulkhead(&bulkhead)
        .queue("events", &q)
        .render();
    assert_eq!(
        text.matches("# TYPE mainstay_circuit_breaker_state gauge")
            .count(),
        1
    );
    for line in [
        r#"mainstay_circuit_breaker_state{name="a",state="closed"} 1"#,
        r#"mainstay_circuit_breaker_state{name="b",state="forced_open"} 1"#,
        r#"mainstay_circuit_breaker_calls_total{name="a",outcome="failed"} 1"#,
        r#"mainstay_circuit_breaker_calls_total{name="b",outcome="rejected"} 1"#,
        r#"mainstay_circuit_breaker_failure_rate{name="a"} 1"#,
        r#"mainstay_bulkhead_active{name="db \"main\""} 1"#,
        r#"mainstay_queue_items_total{name="events",event="received"} 1"#,
        r#"mainstay_queue_fill_ratio{name="events"} 0.25"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
}

/// With the `tracing` feature, a state transition is an event; the success path emits none.
#[cfg(feature = "tracing")]
#[test]
fn tracing_event_on_a_transition_and_none_on_success() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    struct Count(Arc<AtomicUsize>);
    impl Subscriber for Count {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, e: &Event<'_>) {
            if e.metadata().target() == "mainstay_resilience" {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    let events = Arc::new(AtomicUsize::new(0));
    tracing::subscriber::with_default(Count(events.clone()), || {
        let cb = CircuitBreaker::builder()
            .sliding_window_size(2)
            .minimum_calls(2)
            .build()
            .unwrap();
        for _ in 0..20 {
            if let Ok(p) = cb.try_acquire() {
                p.success();
            }
        }
        assert_eq!(
            events.load(Ordering::SeqCst),
            0,
            "no events on the success path"
        );
        // The window holds the last two calls: one failure makes 50%, the threshold.
        cb.try_acquire().unwrap().failure();
        assert_eq!(cb.state(), State::Open);
        assert_eq!(
            events.load(Ordering::SeqCst),
            1,
            "one event for CLOSED -> OPEN"
        );
    });
}
