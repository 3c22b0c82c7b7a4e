use super::*;

fn ms(n: f64) -> Duration {
    Duration::from_secs_f64(n / 1000.0)
}

/// A simulated dependency with `capacity` workers: latency grows with queueing beyond
/// capacity, and it sheds load (drops) beyond twice its capacity.
async fn serve(limit: &AdaptiveLimit, capacity: u32) -> bool {
    let Ok(token) = limit.try_acquire() else {
        return false;
    };
    let in_flight = limit.in_flight();
    if in_flight > capacity * 2 {
        tokio::time::sleep(ms(1.0)).await;
        token.dropped();
        return true;
    }
    let queueing = (in_flight as f64 / capacity as f64).max(1.0);
    tokio::time::sleep(ms(10.0 * queueing)).await;
    token.success();
    true
}

/// 100 clients hammer a dependency of capacity 20; the limit must settle near it.
async fn converges(algorithm: Algorithm) -> u32 {
    let limit = AdaptiveLimit::new(algorithm, 5, 1, 1000);
    let mut clients = Vec::new();
    // Saturating load: every client keeps calling until the run ends.
    let end = Instant::now() + Duration::from_secs(3);
    for _ in 0..100 {
        let limit = limit.clone();
        clients.push(tokio::spawn(async move {
            while Instant::now() < end {
                if !serve(&limit, 20).await {
                    tokio::time::sleep(ms(2.0)).await;
                }
            }
        }));
    }
    // Sample the limit through the middle of the run (steady state), not after it drains.
    let sampler = {
        let limit = limit.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            tokio::time::sleep(ms(1000.0)).await;
            for _ in 0..100 {
                samples.push(limit.limit());
                tokio::time::sleep(ms(10.0)).await;
            }
            samples
        })
    };
    for c in clients {
        c.await.unwrap();
    }
    let samples = sampler.await.unwrap();
    (samples.iter().map(|&l| l as u64).sum::<u64>() / samples.len() as u64) as u32
}

/// AIMD reacts to drops only: it saw-tooths just under the point where the dependency
/// starts shedding (40 in flight).
#[tokio::test(start_paused = true)]
async fn aimd_settles_just_under_the_drop_point() {
    let l = converges(Algorithm::Aimd { backoff: 0.9 }).await;
    assert!(
        (28..=45).contains(&l),
        "AIMD mean limit {l}: expected just under the drop point 40"
    );
}

/// Vegas reacts to queueing latency: it holds the limit near the real capacity (20),
/// well before the dependency starts shedding.
#[tokio::test(start_paused = true)]
async fn vegas_settles_near_capacity_before_drops() {
    let vegas = converges(Algorithm::Vegas).await;
    assert!(
        (10..=30).contains(&vegas),
        "Vegas mean limit {vegas}: expected near capacity 20"
    );
    let aimd = converges(Algorithm::Aimd { backoff: 0.9 }).await;
    assert!(
        vegas < aimd,
        "latency-based Vegas ({vegas}) should sit below drop-based AIMD ({aimd})"
    );
}

#[tokio::test(start_paused = true)]
async fn admission_respects_the_limit_and_bounds() {
    let limit = AdaptiveLimit::new(Algorithm::Aimd { backoff: 0.5 }, 2, 2, 4);
    let (a, b) = (limit.try_acquire().unwrap(), limit.try_acquire().unwrap());
    assert_eq!(limit.try_acquire().unwrap_err(), LimitExceeded { limit: 2 });
    a.dropped();
    assert_eq!(limit.limit(), 2, "never below min");
    drop(b);
    assert_eq!(limit.in_flight(), 0, "an unreported token still leaves");
    for _ in 0..200 {
        let (t1, t2) = (limit.try_acquire().unwrap(), limit.try_acquire().ok());
        t1.success();
        drop(t2);
    }
    assert_eq!(limit.limit(), 4, "never above max");
}

#[tokio::test(start_paused = true)]
async fn tower_layer_refuses_over_the_limit_and_backs_off_on_overload() {
    use tower::{service_fn, Layer, Service, ServiceExt};
    let limit = AdaptiveLimit::new(Algorithm::Aimd { backoff: 0.5 }, 4, 1, 10);
    let layer = AdaptiveLimitLayer::new(limit.clone(), |e: &u16| *e == 503);
    let svc = layer.layer(service_fn(|code: u16| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if code == 200 {
            Ok(code)
        } else {
            Err(code)
        }
    }));
    // Four in flight fill the limit; the fifth is refused at once.
    let mut pending = Vec::new();
    for _ in 0..4 {
        let mut s = svc.clone();
        pending.push(s.ready().await.unwrap().call(200));
    }
    let refused = svc.clone().oneshot(200).await;
    assert!(matches!(
        refused,
        Err(AdaptiveError::LimitExceeded(LimitExceeded { limit: 4 }))
    ));
    for p in pending {
        assert_eq!(p.await.unwrap(), 200);
    }
    assert!(matches!(
        svc.clone().oneshot(503).await,
        Err(AdaptiveError::Inner(503))
    ));
    assert_eq!(limit.limit(), 2, "an overload error halves the limit");
    assert!(matches!(
        svc.clone().oneshot(404).await,
        Err(AdaptiveError::Inner(404))
    ));
    assert_eq!(
        limit.limit(),
        2,
        "a non-overload error is not a backoff signal"
    );
}
