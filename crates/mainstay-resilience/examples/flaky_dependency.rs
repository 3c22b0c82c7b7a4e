//! A flaky dependency behind Mainstay's resilience policies, both ways: the plain async API
//! (a configured pipeline) and a tower stack. Runs in about a second, nothing to install.
//!
//! Run: `cargo run -p mainstay-resilience --example flaky_dependency`

use mainstay_resilience::bulkhead::{Bulkhead, BulkheadLayer};
use mainstay_resilience::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
use mainstay_resilience::pipeline::config::PipelineConfig;
use mainstay_resilience::retry::{Backoff, Decision, Jitter, Retry, RetryLayer};
use mainstay_resilience::timeout::TimeoutLayer;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// Fails the first two of every five calls with a 503, and answers 404 for id 0.
async fn lookup(calls: &AtomicU32, id: u32) -> Result<String, u16> {
    let n = calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(5)).await;
    match (id, n % 5) {
        (0, _) => Err(404),
        (_, 0 | 1) => Err(503),
        _ => Ok(format!("user {id}")),
    }
}

fn classify(status: &u16) -> Decision {
    if *status >= 500 {
        Decision::Retry
    } else {
        Decision::Stop
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. The plain async API: a pipeline from configuration.
    let config: PipelineConfig = toml::from_str(
        r#"
        timeout = "2s"
        attempt_timeout = "500ms"
        [retry]
        max_attempts = 4
        base = "20ms"
        jitter = "full"
        budget = { percent = 20.0 }
        [circuit_breaker]
        failure_rate_threshold = 60.0
        minimum_calls = 10
        [bulkhead]
        max_concurrent = 4
        max_wait = "50ms"
        "#,
    )?;
    let users = config.build("users")?;
    let calls = AtomicU32::new(0);
    for id in [1, 2, 0, 3] {
        let result = users.call(|| lookup(&calls, id), classify).await;
        println!("pipeline: id {id} -> {result:?}");
    }
    let m = users
        .circuit_breaker()
        .map(|b| b.metrics())
        .unwrap_or_default();
    println!(
        "pipeline: {} calls made; breaker saw {} failed, {} ok, {} ignored\n",
        calls.load(Ordering::SeqCst),
        m.failed,
        m.successful,
        m.ignored
    );

    // 2. The same policies as a tower stack.
    let calls = Arc::new(AtomicU32::new(0));
    let backend = {
        let calls = calls.clone();
        service_fn(move |id: u32| {
            let calls = calls.clone();
            async move { lookup(&calls, id).await }
        })
    };
    let retry = Retry::builder()
        .max_attempts(4)
        .backoff(Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: Jitter::Full,
        })
        .build();
    let breaker = CircuitBreaker::builder()
        .minimum_calls(10)
        .failure_rate_threshold(60.0)
        .build()?;
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new(retry, |e: &_| match e {
            mainstay_resilience::circuit_breaker::CallError::Inner(
                mainstay_resilience::bulkhead::BulkheadError::Inner(
                    mainstay_resilience::timeout::TimeoutError::Inner(s),
                ),
            ) => classify(s),
            mainstay_resilience::circuit_breaker::CallError::Rejected(_) => Decision::Stop,
            _ => Decision::Retry,
        }))
        .layer(CircuitBreakerLayer::new(breaker.clone()))
        .layer(BulkheadLayer::new(Bulkhead::new(
            "users",
            4,
            Duration::from_millis(50),
        )))
        .layer(TimeoutLayer::new(Duration::from_millis(500)))
        .service(backend);
    for id in [1, 2, 0, 3] {
        let result = stack.clone().oneshot(id).await.map_err(|e| e.to_string());
        println!("tower:    id {id} -> {result:?}");
    }
    println!(
        "tower:    {} calls made; breaker state {:?}",
        calls.load(Ordering::SeqCst),
        breaker.state()
    );
    Ok(())
}
