use super::*;
use std::sync::Barrier;

#[tokio::test(start_paused = true)]
async fn refuses_after_the_wait_limit_naming_the_compartment() {
    let b = Bulkhead::new("payments", 2, Duration::from_secs(1));
    let (p1, p2) = (b.acquire().await.unwrap(), b.acquire().await.unwrap());
    assert_eq!(
        b.metrics(),
        BulkheadMetrics {
            max_concurrent: 2,
            active: 2,
            waiting: 0,
            rejected: 0
        }
    );
    let start = tokio::time::Instant::now();
    let err = b.acquire().await.unwrap_err();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(1),
        "waited exactly max_wait on paused time"
    );
    assert_eq!(err.name, "payments");
    assert!(err.to_string().contains("payments"));
    assert_eq!(b.metrics().rejected, 1);
    drop((p1, p2));
    assert_eq!(b.metrics().active, 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_gets_the_slot_freed_within_its_wait() {
    let b = Bulkhead::new("db", 1, Duration::from_secs(5));
    let held = b.acquire().await.unwrap();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.call(|| async { Ok::<_, ()>("ran") }).await })
    };
    tokio::task::yield_now().await;
    assert_eq!(b.metrics().waiting, 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    drop(held);
    assert_eq!(waiter.await.unwrap().unwrap(), "ran");
    assert_eq!(
        b.metrics(),
        BulkheadMetrics {
            max_concurrent: 1,
            active: 0,
            waiting: 0,
            rejected: 0
        }
    );
}

#[tokio::test(start_paused = true)]
async fn zero_wait_refuses_at_once_and_cancelled_calls_free_their_slot() {
    let b = Bulkhead::new("cache", 1, Duration::ZERO);
    let stuck = b.call(std::future::pending::<Result<(), ()>>);
    let _ = tokio::time::timeout(Duration::from_millis(1), stuck).await;
    assert_eq!(b.metrics().active, 0, "a cancelled call must free its slot");
    let _held = b.acquire().await.unwrap();
    assert!(b.acquire().await.is_err());
}

#[tokio::test]
async fn thread_pool_runs_blocking_work_and_refuses_beyond_its_queue() {
    let pool = ThreadPoolBulkhead::new("reports", 2, 1).unwrap();
    let gate = Arc::new(Barrier::new(3));
    let mut running = Vec::new();
    for i in 0..2u64 {
        let gate = gate.clone();
        running.push(
            pool.execute(move || {
                gate.wait();
                i
            })
            .unwrap(),
        );
        // The queue holds waiting jobs only: wait until a worker has taken this one.
        mainstay_wait(|| pool.active() == i + 1).await;
    }
    // Both workers are busy (blocked on the gate); one more fits in the queue.
    let queued = pool.execute(|| 99).unwrap();
    let refused = pool.execute(|| 100).err().expect("the queue is full");
    assert_eq!(refused.name, "reports");
    assert_eq!(pool.rejected(), 1);
    gate.wait();
    let mut results = Vec::new();
    for r in running {
        results.push(r.await.unwrap());
    }
    results.sort();
    assert_eq!(results, vec![0, 1]);
    assert_eq!(queued.await.unwrap(), 99);
    // A panicking job reports Cancelled and leaves the worker alive.
    assert_eq!(
        pool.execute(|| -> u32 { panic!("job failed") })
            .unwrap()
            .await,
        Err(Cancelled)
    );
    assert_eq!(pool.execute(|| 5).unwrap().await, Ok(5));
}

/// Polls `check` with a deadline (the pool's threads are real).
async fn mainstay_wait(check: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn tower_layer_holds_a_slot_per_response_and_refuses_after_the_wait() {
    use tower::{service_fn, Layer, Service, ServiceExt};
    let bulkhead = Bulkhead::new("api", 1, Duration::from_millis(100));
    let svc = BulkheadLayer::new(bulkhead.clone()).layer(service_fn(|d: u64| async move {
        tokio::time::sleep(Duration::from_millis(d)).await;
        Ok::<_, ()>(d)
    }));
    let mut first = svc.clone();
    let slow = first.ready().await.unwrap().call(500);
    assert_eq!(
        bulkhead.metrics().active,
        1,
        "the slot is taken in poll_ready"
    );
    let start = tokio::time::Instant::now();
    let refused = svc.clone().oneshot(1).await;
    assert!(
        matches!(refused, Err(BulkheadError::Full(ref f)) if f.name == "api"),
        "{refused:?}"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(slow.await.unwrap(), 500);
    assert_eq!(
        bulkhead.metrics().active,
        0,
        "the slot is released with the response"
    );
    assert_eq!(svc.oneshot(1).await.unwrap(), 1);
}
