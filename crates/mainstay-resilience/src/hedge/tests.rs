use super::*;
use std::sync::atomic::{AtomicBool, AtomicU32};

struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn a_slow_primary_is_hedged_and_cancelled() {
    let hedge = Hedge::new(HedgeDelay::Fixed(ms(50)), 1);
    let calls = AtomicU32::new(0);
    let primary_dropped = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let r = hedge
        .run(|| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let flag = (n == 0).then(|| DropFlag(primary_dropped.clone()));
            async move {
                let _flag = flag;
                tokio::time::sleep(if n == 0 { ms(500) } else { ms(10) }).await;
                Ok::<_, ()>(n)
            }
        })
        .await;
    assert_eq!(r, Ok(1), "the hedge won");
    assert_eq!(start.elapsed(), ms(60));
    assert!(
        primary_dropped.load(Ordering::SeqCst),
        "the losing primary must be cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fast_primary_is_not_hedged() {
    let hedge = Hedge::new(HedgeDelay::Fixed(ms(50)), 2);
    let calls = AtomicU32::new(0);
    let r = hedge
        .run(|| {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(ms(20)).await;
                Ok::<_, ()>("fast")
            }
        })
        .await;
    assert_eq!((r, calls.load(Ordering::SeqCst)), (Ok("fast"), 1));
}

#[tokio::test(start_paused = true)]
async fn a_failure_starts_the_next_attempt_at_once_and_all_failing_returns_the_last_error() {
    let hedge = Hedge::new(HedgeDelay::Fixed(ms(1000)), 2);
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let r = hedge
        .run(|| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(ms(10)).await;
                if n < 2 {
                    Err(n)
                } else {
                    Ok(n)
                }
            }
        })
        .await;
    assert_eq!(r, Ok(2));
    assert_eq!(
        start.elapsed(),
        ms(30),
        "no waiting out the hedge delay after a failure"
    );
    let r = hedge.run(|| async { Err::<(), _>("down") }).await;
    assert_eq!(r, Err("down"));
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_stops_hedging() {
    let budget = Arc::new(RetryBudget::new(Duration::from_secs(10), 0, 0.0));
    let hedge = Hedge::new(HedgeDelay::Fixed(ms(10)), 3).with_budget(budget);
    let calls = AtomicU32::new(0);
    let r = hedge
        .run(|| {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(ms(100)).await;
                Ok::<_, ()>(())
            }
        })
        .await;
    assert!(r.is_ok());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no budget, no extra attempts"
    );
}

#[tokio::test(start_paused = true)]
async fn percentile_delay_follows_observed_latencies() {
    let hedge = Hedge::new(
        HedgeDelay::Percentile {
            percentile: 90.0,
            fallback: ms(500),
        },
        1,
    );
    assert_eq!(hedge.current_delay(), ms(500));
    for i in 0..100u64 {
        let d = ms(if i % 10 == 9 { 100 } else { 10 });
        hedge
            .run(|| async move {
                tokio::time::sleep(d).await;
                Ok::<_, ()>(())
            })
            .await
            .unwrap();
    }
    let p90 = hedge.current_delay();
    assert!(
        p90 >= ms(10) && p90 <= ms(100),
        "p90 of a 90/10 mix of 10 ms and 100 ms: {p90:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn tower_layer_hedges_a_slow_call() {
    use tower::{service_fn, Layer, ServiceExt};
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let svc = HedgeLayer::new(Hedge::new(HedgeDelay::Fixed(ms(50)), 1)).layer(service_fn(
        move |req: &'static str| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(if n == 0 { ms(1000) } else { ms(10) }).await;
                Ok::<_, ()>(format!("{req} from attempt {n}"))
            }
        },
    ));
    let start = Instant::now();
    assert_eq!(svc.oneshot("read").await.unwrap(), "read from attempt 1");
    assert_eq!(start.elapsed(), ms(60));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
