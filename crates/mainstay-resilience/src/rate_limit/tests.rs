use super::*;
use proptest::prelude::*;
use tower::{service_fn, Layer, ServiceExt};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn bursts_then_spaces_permits_evenly() {
    let rl = RateLimiter::new(10, Duration::from_secs(1), 5).unwrap();
    for _ in 0..5 {
        rl.try_acquire().unwrap();
    }
    assert_eq!(
        rl.try_acquire(),
        Err(RateLimited {
            retry_after: ms(100)
        })
    );
    tokio::time::advance(ms(99)).await;
    assert!(rl.try_acquire().is_err());
    tokio::time::advance(ms(1)).await;
    rl.try_acquire().unwrap();
    assert!(rl.try_acquire().is_err());
}

#[tokio::test(start_paused = true)]
async fn acquire_waits_and_clones_share_the_limit() {
    let rl = RateLimiter::new(100, Duration::from_secs(1), 1).unwrap();
    let other = rl.clone();
    let start = tokio::time::Instant::now();
    for i in 0..50 {
        if i % 2 == 0 {
            rl.acquire().await
        } else {
            other.acquire().await
        }
    }
    assert_eq!(
        start.elapsed(),
        ms(490),
        "50 permits at 100/s with burst 1 take 49 intervals"
    );
    assert!(
        rl.acquire_timeout(ms(5)).await.is_err(),
        "next permit is 10 ms away"
    );
    assert!(rl.acquire_timeout(ms(10)).await.is_ok());
}

#[test]
fn bad_settings_are_refused() {
    assert!(RateLimiter::new(0, Duration::from_secs(1), 1)
        .unwrap_err()
        .to_string()
        .contains("rate"));
    assert!(RateLimiter::new(1, Duration::ZERO, 1)
        .unwrap_err()
        .to_string()
        .contains("period"));
    assert!(RateLimiter::new(1, Duration::from_secs(1), 0)
        .unwrap_err()
        .to_string()
        .contains("burst"));
}

#[tokio::test(start_paused = true)]
async fn tower_layer_waits_in_poll_ready_and_is_clone() {
    let layer = RateLimitLayer::new(RateLimiter::new(10, Duration::from_secs(1), 1).unwrap());
    let svc = layer.layer(service_fn(|x: u32| async move { Ok::<_, ()>(x) }));
    let start = tokio::time::Instant::now();
    for i in 0..5 {
        assert_eq!(svc.clone().oneshot(i).await, Ok(i));
    }
    assert_eq!(start.elapsed(), ms(400));
}

proptest! {
    /// GCRA bound: over any window of length w, grants ≤ burst + w · rate / period.
    #[test]
    fn never_grants_more_than_the_bound(rate in 1u32..50, burst in 1u32..10, gaps in proptest::collection::vec(0u64..200, 1..200)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let rl = RateLimiter::new(rate, Duration::from_secs(1), burst).unwrap();
            let start = tokio::time::Instant::now();
            let mut granted: Vec<u64> = Vec::new();
            for gap in gaps {
                tokio::time::advance(ms(gap)).await;
                if rl.try_acquire().is_ok() {
                    granted.push(start.elapsed().as_millis() as u64);
                }
            }
            for (i, &t0) in granted.iter().enumerate() {
                for (j, &t1) in granted.iter().enumerate().skip(i) {
                    let count = (j - i + 1) as f64;
                    let bound = burst as f64 + (t1 - t0) as f64 * rate as f64 / 1000.0;
                    prop_assert!(count <= bound + 1e-9, "{count} grants in {}ms > {bound}", t1 - t0);
                }
            }
            Ok(())
        })?;
    }
}
