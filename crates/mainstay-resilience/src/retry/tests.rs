use super::*;
use proptest::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

proptest! {
    /// Each jitter kind stays within its formula's bounds, and never above `max`.
    #[test]
    fn jitter_stays_within_its_formula(
        base_ms in 1u64..5_000,
        max_ms in 1u64..120_000,
        multiplier in 1.0f64..4.0,
        n in 0u32..40,
        previous_ms in 0u64..200_000,
        seed in any::<u64>(),
    ) {
        let (base, max, previous) = (ms(base_ms), ms(max_ms), ms(previous_ms));
        let mut rng = SmallRng::seed_from_u64(seed);
        let exp = (base.as_secs_f64() * multiplier.powi(n as i32)).min(max.as_secs_f64());
        let eps = 1e-6;
        for jitter in [Jitter::None, Jitter::Full, Jitter::Equal, Jitter::Decorrelated] {
            let d = Backoff { base, max, multiplier, jitter }.delay(n, previous, &mut rng).as_secs_f64();
            prop_assert!(d <= max.as_secs_f64() + eps, "{jitter:?}: {d} > max");
            match jitter {
                Jitter::None => prop_assert!((d - exp).abs() < eps, "none: {d} != {exp}"),
                Jitter::Full => prop_assert!((0.0..=exp + eps).contains(&d), "full: {d} outside [0, {exp}]"),
                Jitter::Equal => prop_assert!((exp / 2.0 - eps..=exp + eps).contains(&d), "equal: {d} outside [{}, {exp}]", exp / 2.0),
                Jitter::Decorrelated => {
                    let low = base.as_secs_f64().min(max.as_secs_f64());
                    let high = (previous.as_secs_f64() * 3.0).max(low).min(max.as_secs_f64());
                    prop_assert!((low - eps..=high + eps).contains(&d), "decorrelated: {d} outside [{low}, {high}]");
                }
            }
        }
    }

    /// The budget decides exactly as a naive model over the same buckets: a retry is
    /// allowed iff retries in the window < floor(percent × calls) + min_per_sec × ttl.
    #[test]
    fn budget_matches_naive_model(events in proptest::collection::vec((any::<bool>(), 0u64..700), 1..300)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let (ttl, floor, percent) = (Duration::from_secs(1), 2u32, 0.2f64);
            let budget = RetryBudget::new(ttl, floor, percent);
            let start = tokio::time::Instant::now();
            // (bucket index, is_call) of every accepted event.
            let mut log: Vec<(u64, bool)> = Vec::new();
            for (is_call, advance_ms) in events {
                tokio::time::advance(ms(advance_ms % 150)).await;
                let now = (start.elapsed().as_nanos() / (ttl.as_nanos() / 10)) as u64;
                if is_call {
                    budget.deposit();
                    log.push((now, true));
                } else {
                    let live = log.iter().filter(|(b, _)| b + 10 > now);
                    let (calls, retries) = live.fold((0u64, 0u64), |(c, r), (_, call)| if *call { (c + 1, r) } else { (c, r + 1) });
                    let allowed = (percent * calls as f64).floor() as u64 + floor as u64;
                    let model = retries < allowed;
                    prop_assert_eq!(budget.try_withdraw(), model, "calls {} retries {} allowed {}", calls, retries, allowed);
                    if model {
                        log.push((now, false));
                    }
                }
            }
            Ok(())
        })?;
    }
}

fn no_jitter(base_ms: u64) -> Backoff {
    Backoff {
        base: ms(base_ms),
        max: Duration::from_secs(60),
        multiplier: 2.0,
        jitter: Jitter::None,
    }
}

#[tokio::test(start_paused = true)]
async fn retries_with_exponential_delays_then_succeeds() {
    let retry = Retry::builder()
        .max_attempts(4)
        .backoff(no_jitter(100))
        .build();
    let calls = AtomicU32::new(0);
    let mut seen = Vec::new();
    let start = tokio::time::Instant::now();
    let r = retry
        .run(
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err("503")
                } else {
                    Ok("ok")
                }
            },
            |_| Decision::Retry,
            |attempt, delay, _| seen.push((attempt, delay)),
        )
        .await;
    assert_eq!(r.unwrap(), "ok");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(seen, vec![(1, ms(100)), (2, ms(200))]);
    assert_eq!(
        start.elapsed(),
        ms(300),
        "slept exactly the schedule on paused time"
    );
}

#[tokio::test(start_paused = true)]
async fn stops_for_non_retryable_errors_and_after_max_attempts() {
    let retry = Retry::builder()
        .max_attempts(3)
        .backoff(no_jitter(10))
        .build();
    let calls = AtomicU32::new(0);
    let r = retry
        .run(
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(404)
            },
            |e| {
                if *e == 404 {
                    Decision::Stop
                } else {
                    Decision::Retry
                }
            },
            |_, _, _| {},
        )
        .await;
    assert!(matches!(r, Err(RetryError::NotRetryable(404))));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let r = retry
        .run(
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(503)
            },
            |_| Decision::Retry,
            |_, _, _| {},
        )
        .await;
    assert!(matches!(
        r,
        Err(RetryError::Exhausted {
            attempts: 3,
            last: 503
        })
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn honours_retry_after_and_refuses_an_excessive_one() {
    let retry = Retry::builder()
        .max_attempts(2)
        .backoff(no_jitter(10))
        .max_retry_after(Duration::from_secs(30))
        .build();
    let calls = AtomicU32::new(0);
    let start = tokio::time::Instant::now();
    let r = retry
        .run(
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err("429")
                } else {
                    Ok(())
                }
            },
            |_| Decision::RetryAfter(Duration::from_secs(7)),
            |_, _, _| {},
        )
        .await;
    assert!(r.is_ok());
    assert_eq!(start.elapsed(), Duration::from_secs(7));
    let r = retry
        .run(
            || async { Err::<(), _>("429") },
            |_| Decision::RetryAfter(Duration::from_secs(31)),
            |_, _, _| {},
        )
        .await;
    assert!(matches!(r, Err(RetryError::RetryAfterTooLong { .. })));
}

#[test]
fn blocking_retry_uses_the_same_schedule() {
    let retry = Retry::builder()
        .max_attempts(3)
        .backoff(no_jitter(1))
        .build();
    let mut calls = 0;
    let r = retry.run_blocking(
        || {
            calls += 1;
            if calls < 3 {
                Err("again")
            } else {
                Ok(calls)
            }
        },
        |_| Decision::Retry,
    );
    assert_eq!(r.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn seeded_jitter_replays_exactly() {
    let delays = |seed| async move {
        let retry = Retry::builder().max_attempts(6).seed(seed).build();
        let mut seen = Vec::new();
        let _ = retry
            .run(
                || async { Err::<(), _>(()) },
                |_| Decision::Retry,
                |_, d, _| seen.push(d),
            )
            .await;
        seen
    };
    assert_eq!(delays(7).await, delays(7).await);
    assert_ne!(delays(7).await, delays(8).await);
}

/// Retry storm: the dependency is 100% down and 1000 callers retry up to 5 times each; the
/// budget keeps total attempts within calls × (1 + 20%) + the floor's reserve.
#[tokio::test(start_paused = true)]
async fn budget_prevents_a_retry_storm() {
    let budget = Arc::new(RetryBudget::default());
    let retry = Retry::builder()
        .max_attempts(5)
        .backoff(no_jitter(10))
        .budget(budget)
        .seed(1)
        .build();
    let attempts = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (retry, attempts) = (retry.clone(), attempts.clone());
        tasks.push(tokio::spawn(async move {
            retry
                .run(
                    || async {
                        attempts.fetch_add(1, Ordering::SeqCst);
                        Err::<(), _>("down")
                    },
                    |_| Decision::Retry,
                    |_, _, _| {},
                )
                .await
        }));
    }
    let mut budget_refusals = 0;
    for t in tasks {
        if let Err(RetryError::BudgetExhausted { .. }) = t.await.unwrap() {
            budget_refusals += 1;
        }
    }
    let total = attempts.load(Ordering::SeqCst);
    let bound = 1000 + 200 + 10 * 10;
    assert!(total <= bound, "{total} attempts > {bound}");
    assert!(
        total >= 1000 + 200,
        "the budget should allow its share: {total}"
    );
    assert!(budget_refusals > 0);
}

#[tokio::test(start_paused = true)]
async fn tower_layer_retries_with_the_same_schedule() {
    use tower::{service_fn, Layer, ServiceExt};
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let inner = service_fn(move |req: &'static str| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < 2 {
                Err(503u16)
            } else {
                Ok(format!("{req}#{n}"))
            }
        }
    });
    let layer = RetryLayer::new(
        Retry::builder()
            .max_attempts(4)
            .backoff(no_jitter(100))
            .build(),
        |e: &u16| {
            if *e >= 500 {
                Decision::Retry
            } else {
                Decision::Stop
            }
        },
    );
    let svc = layer.layer(inner);
    let start = tokio::time::Instant::now();
    assert_eq!(svc.clone().oneshot("get").await.unwrap(), "get#2");
    assert_eq!(
        start.elapsed(),
        ms(300),
        "100 ms + 200 ms backoff on paused time"
    );
    let failing = layer.layer(service_fn(|_: ()| async { Err::<(), _>(404u16) }));
    assert!(matches!(
        failing.oneshot(()).await,
        Err(RetryError::NotRetryable(404))
    ));
    let down = layer.layer(service_fn(|_: ()| async { Err::<(), _>(503u16) }));
    assert!(matches!(
        down.oneshot(()).await,
        Err(RetryError::Exhausted {
            attempts: 4,
            last: 503
        })
    ));
}
