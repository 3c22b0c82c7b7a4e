use super::*;
use crate::circuit_breaker::State;
use crate::retry::{Backoff, Jitter};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

fn quick_retry(attempts: u32) -> Retry {
    Retry::builder()
        .max_attempts(attempts)
        .backoff(Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: Jitter::None,
        })
        .build()
}

fn breaker() -> CircuitBreaker {
    CircuitBreaker::builder()
        .sliding_window_size(10)
        .minimum_calls(4)
        .wait_in_open(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn transient(_: &&str) -> Decision {
    Decision::Retry
}

#[tokio::test(start_paused = true)]
async fn retries_transient_failures_through_the_breaker() {
    let p = Pipeline::new()
        .with_retry(quick_retry(3))
        .with_circuit_breaker(breaker())
        .with_bulkhead(Bulkhead::new("dep", 2, Duration::ZERO));
    let calls = AtomicU32::new(0);
    let r = p
        .call(
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err("503")
                } else {
                    Ok("ok")
                }
            },
            transient,
        )
        .await;
    assert_eq!(r.unwrap(), "ok");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let m = p.circuit_breaker().unwrap().metrics();
    assert_eq!((m.failed, m.successful), (2, 1));
    assert_eq!(p.bulkhead().unwrap().metrics().active, 0);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_fails_fast_without_retrying_or_calling() {
    let p = Pipeline::new()
        .with_retry(quick_retry(5))
        .with_circuit_breaker(breaker());
    let calls = AtomicU32::new(0);
    let r = p
        .call(
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("down")
            },
            transient,
        )
        .await;
    assert!(
        matches!(r, Err(ResilienceError::CircuitOpen(_))),
        "the breaker opens after 4 failures: {r:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(p.circuit_breaker().unwrap().state(), State::Open);
    let r = p
        .call(
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, &str>(())
            },
            transient,
        )
        .await;
    assert!(matches!(r, Err(ResilienceError::CircuitOpen(_))));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "an open breaker must not call the operation"
    );
}

#[tokio::test(start_paused = true)]
async fn business_errors_are_neither_retried_nor_counted() {
    let p = Pipeline::new()
        .with_retry(quick_retry(5))
        .with_circuit_breaker(breaker());
    for _ in 0..10 {
        let r = p
            .call(|| async { Err::<(), _>("404") }, |_| Decision::Stop)
            .await;
        assert!(matches!(r, Err(ResilienceError::Inner("404"))));
    }
    let m = p.circuit_breaker().unwrap().metrics();
    assert_eq!(
        (m.failed, m.ignored, p.circuit_breaker().unwrap().state()),
        (0, 10, State::Closed)
    );
}

#[tokio::test(start_paused = true)]
async fn attempt_timeouts_are_retried_and_the_total_timeout_caps_everything() {
    let p = Pipeline::new()
        .with_retry(quick_retry(3))
        .with_attempt_timeout(Duration::from_millis(100));
    let calls = AtomicU32::new(0);
    let r = p
        .call(
            || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    Ok::<_, &str>(n)
                }
            },
            transient,
        )
        .await;
    assert_eq!(
        r.unwrap(),
        1,
        "the hung first attempt was cancelled and retried"
    );

    let p = Pipeline::new()
        .with_retry(quick_retry(100))
        .with_timeout(Duration::from_millis(500));
    let start = tokio::time::Instant::now();
    let r = p.call(|| async { Err::<(), _>("503") }, transient).await;
    assert!(matches!(r, Err(ResilienceError::Timeout(_))));
    assert_eq!(start.elapsed(), Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn rate_limit_refusals_wait_for_their_permit() {
    let p = Pipeline::new()
        .with_retry(quick_retry(3))
        .with_rate_limit(RateLimiter::new(10, Duration::from_secs(1), 1).unwrap());
    let start = tokio::time::Instant::now();
    for _ in 0..3 {
        p.call(|| async { Ok::<_, &str>(()) }, transient)
            .await
            .unwrap();
    }
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(200),
        "two waits of one interval each"
    );
    let no_retry =
        Pipeline::new().with_rate_limit(RateLimiter::new(1, Duration::from_secs(1), 1).unwrap());
    no_retry
        .call(|| async { Ok::<_, &str>(()) }, transient)
        .await
        .unwrap();
    assert!(matches!(
        no_retry
            .call(|| async { Ok::<_, &str>(()) }, transient)
            .await,
        Err(ResilienceError::RateLimited(_))
    ));
}

#[cfg(feature = "serde")]
mod config {
    use super::super::config::PipelineConfig;

    const FULL: &str = r#"
timeout = "10s"
attempt_timeout = "2s"

[retry]
max_attempts = 4
base = "100ms"
max = "5s"
jitter = "equal"
budget = { ttl = "10s", min_per_sec = 10, percent = 20.0 }

[circuit_breaker]
failure_rate_threshold = 50.0
time_window = "60s"
time_window_buckets = 60
minimum_calls = 20
wait_in_open = "30s"
permitted_calls_in_half_open = 5

[bulkhead]
max_concurrent = 20
max_wait = "100ms"

[rate_limit]
rate = 100
burst = 20
"#;

    #[test]
    fn builds_a_full_pipeline_from_toml() {
        let cfg: PipelineConfig = toml::from_str(FULL).unwrap();
        let p = cfg.build("payments").unwrap();
        assert_eq!(p.bulkhead().unwrap().name(), "payments");
        assert_eq!(p.bulkhead().unwrap().metrics().max_concurrent, 20);
        assert!(p.circuit_breaker().is_some());
        assert!(
            PipelineConfig::default().build("x").is_ok(),
            "an empty config is a pass-through pipeline"
        );
    }

    #[test]
    fn bad_configs_are_refused_with_the_culprit_named() {
        let unknown = toml::from_str::<PipelineConfig>("[retry]\nmax_attempt = 3\n")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("max_attempt"), "{unknown}");
        let bad_duration = toml::from_str::<PipelineConfig>("timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(bad_duration.contains("soon"), "{bad_duration}");
        let bad_jitter = toml::from_str::<PipelineConfig>("[retry]\njitter = \"wild\"\n")
            .unwrap_err()
            .to_string();
        assert!(bad_jitter.contains("wild"), "{bad_jitter}");
        let cfg: PipelineConfig =
            toml::from_str("[circuit_breaker]\nfailure_rate_threshold = 0.0\n").unwrap();
        let err = cfg.build("x").unwrap_err();
        assert_eq!(err.section, "circuit_breaker");
        assert!(err.reason.contains("failure_rate_threshold"), "{err}");
        let cfg: PipelineConfig = toml::from_str("[rate_limit]\nrate = 0\n").unwrap();
        assert_eq!(cfg.build("x").unwrap_err().section, "rate_limit");
        let cfg: PipelineConfig = toml::from_str("[bulkhead]\nmax_concurrent = 0\n").unwrap();
        assert_eq!(cfg.build("x").unwrap_err().section, "bulkhead");
    }
}

#[tokio::test(start_paused = true)]
async fn as_one_tower_layer_with_one_error_type() {
    use tower::{service_fn, Layer, ServiceExt};
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let inner = service_fn(move |id: u32| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            match (id, n) {
                (0, _) => Err(404u16),
                (_, 0) => Err(503),
                _ => Ok(id * 10),
            }
        }
    });
    let pipeline = Pipeline::new()
        .with_retry(quick_retry(3))
        .with_circuit_breaker(breaker())
        .with_attempt_timeout(Duration::from_secs(1));
    let svc = PipelineLayer::new(pipeline, |e: &u16| {
        if *e >= 500 {
            Decision::Retry
        } else {
            Decision::Stop
        }
    })
    .layer(inner);
    assert_eq!(
        svc.clone().oneshot(4).await.unwrap(),
        40,
        "the 503 was retried"
    );
    let err: ResilienceError<u16> = svc.oneshot(0).await.unwrap_err();
    assert!(matches!(err, ResilienceError::Inner(404)));
}
