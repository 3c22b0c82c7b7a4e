use super::window::{CountWindow, Sample, TimeWindow};
use super::*;
use proptest::prelude::*;
use std::sync::{Arc, Barrier};

fn breaker() -> Builder {
    CircuitBreaker::builder()
        .sliding_window_size(10)
        .minimum_calls(5)
        .failure_rate_threshold(50.0)
        .wait_in_open(Duration::from_secs(10))
        .permitted_calls_in_half_open(3)
}

fn fail(cb: &CircuitBreaker, n: usize) {
    for _ in 0..n {
        cb.try_acquire().expect("permitted").failure();
    }
}

fn succeed(cb: &CircuitBreaker, n: usize) {
    for _ in 0..n {
        cb.try_acquire().expect("permitted").success();
    }
}

fn open(cb: &CircuitBreaker) {
    fail(cb, 5);
    assert_eq!(cb.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn opens_only_after_minimum_calls_at_the_failure_rate() {
    let cb = breaker().build().unwrap();
    fail(&cb, 4);
    assert_eq!(cb.state(), State::Closed, "4 calls < minimum of 5");
    succeed(&cb, 1);
    assert_eq!(cb.state(), State::Open, "4 of 5 failed = 80% ≥ 50%");
    assert_eq!(
        cb.try_acquire().err(),
        Some(Rejected { state: State::Open })
    );
    assert_eq!(cb.metrics().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn stays_closed_under_the_threshold() {
    let cb = breaker().build().unwrap();
    for _ in 0..20 {
        succeed(&cb, 2);
        fail(&cb, 1);
    }
    assert_eq!(cb.state(), State::Closed, "33% < 50%");
    let m = cb.metrics();
    assert_eq!((m.window_calls, m.successful, m.failed), (10, 40, 20));
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_the_breaker() {
    let cb = breaker()
        .slow_call_rate_threshold(60.0)
        .slow_call_duration(Duration::from_millis(100))
        .tokio_clock()
        .build()
        .unwrap();
    let call = |took_ms: u64| {
        cb.call(move || async move {
            tokio::time::sleep(Duration::from_millis(took_ms)).await;
            Ok::<_, ()>(())
        })
    };
    // Slow means at least 100 ms: 99 ms is not slow, 100 ms is.
    for took_ms in [99, 150, 99, 100, 99] {
        call(took_ms).await.unwrap();
    }
    assert_eq!(cb.state(), State::Closed, "2 of 5 slow = 40% < 60%");
    call(120).await.unwrap();
    call(120).await.unwrap();
    assert_eq!(cb.state(), State::Closed, "4 of 7 slow = 57% < 60%");
    call(120).await.unwrap();
    assert_eq!(cb.state(), State::Open, "5 of 8 slow = 62.5% ≥ 60%");
    let m = cb.metrics();
    assert_eq!((m.calls(), m.window_slow, m.slow), (8, 5, 5));
    let total = Duration::from_millis(99 + 150 + 99 + 100 + 99 + 120 * 3);
    assert_eq!(m.latency_total, total);
    assert_eq!(m.mean_latency(), Some(total / 8));
}

#[tokio::test(start_paused = true)]
async fn half_open_closes_after_good_trials_and_reopens_after_bad() {
    let cb = breaker().build().unwrap();
    let mut events = cb.subscribe();
    open(&cb);
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(cb.try_acquire().is_err(), "still within wait_in_open");
    tokio::time::advance(Duration::from_secs(1)).await;
    succeed(&cb, 3);
    assert_eq!(cb.state(), State::Closed);
    assert_eq!(cb.metrics().window_calls, 0, "a fresh window after closing");

    open(&cb);
    tokio::time::advance(Duration::from_secs(10)).await;
    let trials: Vec<_> = (0..3).map(|_| cb.try_acquire().unwrap()).collect();
    assert_eq!(cb.state(), State::HalfOpen);
    assert!(
        cb.try_acquire().is_err(),
        "the fourth trial must be refused"
    );
    let mut trials = trials.into_iter();
    trials.next().unwrap().failure();
    trials.next().unwrap().failure();
    trials.next().unwrap().success();
    assert_eq!(cb.state(), State::Open, "2 of 3 trials failed");

    let seen: Vec<Transition> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    use State::*;
    let expect = [
        (Closed, Open),
        (Open, HalfOpen),
        (HalfOpen, Closed),
        (Closed, Open),
        (Open, HalfOpen),
        (HalfOpen, Open),
    ];
    assert_eq!(
        seen,
        expect
            .iter()
            .map(|&(from, to)| Transition { from, to })
            .collect::<Vec<_>>()
    );
}

// Regression: half-open admitted more than permitted_calls under 64 concurrent callers
// (resilience4j #1090, #2028; failsafe-rs admits every call).
#[test]
fn half_open_never_admits_more_than_permitted_under_64_racing_callers() {
    for round in 0..200 {
        let cb = breaker().wait_in_open(Duration::ZERO).build().unwrap();
        open(&cb);
        let barrier = Arc::new(Barrier::new(64));
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..64)
                .map(|_| {
                    let (cb, barrier) = (&cb, barrier.clone());
                    s.spawn(move || {
                        barrier.wait();
                        // Hold the permit (unreported) until every caller has tried.
                        let permit = cb.try_acquire().ok();
                        let got = permit.is_some() as usize;
                        std::mem::forget(permit);
                        got
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(
            admitted, 3,
            "round {round}: half-open admitted {admitted} trials, permitted 3"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn late_results_from_an_earlier_period_change_nothing() {
    let cb = breaker().build().unwrap();
    let straggler = cb.try_acquire().unwrap();
    open(&cb);
    straggler.success();
    assert_eq!(cb.state(), State::Open);
    assert_eq!(cb.metrics().ignored, 1);

    // A trial that outlives its half-open period (max wait) is ignored too.
    let cb = breaker()
        .max_wait_in_half_open(Duration::from_secs(5))
        .build()
        .unwrap();
    open(&cb);
    tokio::time::advance(Duration::from_secs(10)).await;
    let slow_trial = cb.try_acquire().unwrap();
    let (_t2, _t3) = (cb.try_acquire().unwrap(), cb.try_acquire().unwrap());
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(cb.try_acquire().is_err(), "max wait in half-open re-opens");
    assert_eq!(cb.state(), State::Open);
    slow_trial.success();
    assert_eq!(
        cb.state(),
        State::Open,
        "a late trial result must not close the breaker"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_trial_gives_its_slot_back() {
    let cb = breaker().build().unwrap();
    open(&cb);
    tokio::time::advance(Duration::from_secs(10)).await;
    let trials: Vec<_> = (0..3).map(|_| cb.try_acquire().unwrap()).collect();
    assert!(cb.try_acquire().is_err());
    drop(trials);
    succeed(&cb, 3);
    assert_eq!(
        cb.state(),
        State::Closed,
        "three fresh trials could run after the cancelled ones"
    );
    // A call future dropped mid-flight also gives its slot back.
    open(&cb);
    tokio::time::advance(Duration::from_secs(10)).await;
    let pending = cb.call(std::future::pending::<Result<(), ()>>);
    let _ = tokio::time::timeout(Duration::from_millis(1), pending).await;
    succeed(&cb, 3);
    assert_eq!(cb.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_are_not_counted() {
    let cb = breaker().build().unwrap();
    for _ in 0..10 {
        let r = cb
            .call_classified(|| async { Err::<(), _>("404") }, |_| Outcome::Ignore)
            .await;
        assert!(matches!(r, Err(CallError::Inner("404"))));
    }
    assert_eq!(cb.state(), State::Closed);
    assert_eq!(cb.metrics().ignored, 10);
    assert_eq!(cb.metrics().window_calls, 0);
}

#[tokio::test(start_paused = true)]
async fn manual_states() {
    let cb = breaker().build().unwrap();
    cb.force_open();
    assert_eq!(
        cb.try_acquire().err(),
        Some(Rejected {
            state: State::ForcedOpen
        })
    );
    cb.disable();
    fail(&cb, 50);
    assert_eq!(cb.state(), State::Disabled, "disabled records nothing");
    cb.reset();
    assert_eq!(cb.state(), State::Closed);
    assert_eq!(cb.metrics().window_calls, 0);
}

#[test]
fn bad_settings_are_refused_by_name() {
    let cases: [(Builder, &str); 5] = [
        (
            CircuitBreaker::builder().failure_rate_threshold(0.0),
            "failure_rate_threshold",
        ),
        (
            CircuitBreaker::builder().slow_call_rate_threshold(150.0),
            "slow_call_rate_threshold",
        ),
        (
            CircuitBreaker::builder().sliding_window_size(0),
            "sliding_window_size",
        ),
        (
            CircuitBreaker::builder().permitted_calls_in_half_open(5000),
            "permitted_calls_in_half_open",
        ),
        (CircuitBreaker::builder().minimum_calls(0), "minimum_calls"),
    ];
    for (b, setting) in cases {
        assert_eq!(b.build().unwrap_err().setting, setting);
    }
}

#[tokio::test(start_paused = true)]
async fn time_window_ages_out_old_failures() {
    let cb = CircuitBreaker::builder()
        .time_window(Duration::from_secs(10), 10)
        .minimum_calls(5)
        .tokio_clock()
        .build()
        .unwrap();
    fail(&cb, 4);
    assert_eq!(cb.metrics().window_calls, 4);
    // 11 s of silence: every bucket expires.
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(cb.metrics().window_calls, 0);
    succeed(&cb, 1);
    assert_eq!(cb.state(), State::Closed, "old failures must not count");
    fail(&cb, 4);
    assert_eq!(cb.state(), State::Open, "4 of 5 recent calls failed");
}

proptest! {
    /// A time window's totals equal a naive count of the samples in its live buckets.
    #[test]
    fn time_window_matches_naive_model(
        buckets in 1u32..12,
        events in proptest::collection::vec((0u64..1_500, any::<bool>(), any::<bool>()), 0..300),
    ) {
        let bucket_nanos = 100_000_000; // 100 ms
        let w = TimeWindow::new(buckets, bucket_nanos, 0, 0);
        let mut now = 0u64;
        let mut model: Vec<(u64, bool, bool)> = Vec::new();
        for (advance_ms, failed, slow) in events {
            now += advance_ms * 1_000_000 / 10;
            w.record(Sample { failed, slow }, now);
            model.push((now / bucket_nanos, failed, slow));
            let head = now / bucket_nanos;
            let live: Vec<_> = model.iter().filter(|(b, _, _)| b + buckets as u64 > head).collect();
            let t = w.totals(now);
            prop_assert_eq!(t.calls as usize, live.len());
            prop_assert_eq!(t.failures as usize, live.iter().filter(|e| e.1).count());
            prop_assert_eq!(t.slow as usize, live.iter().filter(|e| e.2).count());
        }
    }

    /// The window's totals equal a naive count over the last `size` samples, after every record.
    #[test]
    fn window_matches_naive_model(size in 1u32..20, samples in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..200)) {
        let w = CountWindow::new(size, 0);
        let mut model: Vec<(bool, bool)> = Vec::new();
        for (failed, slow) in samples {
            let might_trip = w.record(Sample { failed, slow });
            // Only a plain success into a full window may skip the threshold check.
            prop_assert!(might_trip || (!failed && !slow && model.len() >= size as usize));
            model.push((failed, slow));
            let last = &model[model.len().saturating_sub(size as usize)..];
            let t = w.totals();
            prop_assert_eq!(t.calls as usize, last.len());
            prop_assert_eq!(t.failures as usize, last.iter().filter(|s| s.0).count());
            prop_assert_eq!(t.slow as usize, last.iter().filter(|s| s.1).count());
        }
    }
}

mod tower_layer {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::{service_fn, Layer, Service, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn rejected_calls_never_reach_the_inner_service() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let inner = service_fn(move |fail: bool| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if fail {
                    Err("boom")
                } else {
                    Ok("ok")
                }
            }
        });
        let layer = CircuitBreakerLayer::new(breaker().build().unwrap());
        let mut svc = layer.layer(inner);
        for _ in 0..5 {
            assert!(matches!(
                svc.ready().await.unwrap().call(true).await,
                Err(CallError::Inner("boom"))
            ));
        }
        assert_eq!(svc.breaker().state(), State::Open);
        let r = svc.ready().await.unwrap().call(false).await;
        assert!(matches!(
            r,
            Err(CallError::Rejected(Rejected { state: State::Open }))
        ));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            5,
            "the rejected call reached the service"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..3 {
            assert!(svc.ready().await.unwrap().call(false).await.is_ok());
        }
        assert_eq!(svc.breaker().state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn classifier_and_cancelled_futures() {
        // 4xx-like errors are ignored: they say nothing about the dependency's health.
        let inner = service_fn(|code: u16| async move {
            if code >= 400 {
                Err(code)
            } else {
                Ok(code)
            }
        });
        let layer = CircuitBreakerLayer::new(breaker().build().unwrap()).classify(
            |r: &Result<u16, u16>| match r {
                Err(c) if *c < 500 => Outcome::Ignore,
                Err(_) => Outcome::Failure,
                Ok(_) => Outcome::Success,
            },
        );
        let mut svc = layer.layer(inner);
        for _ in 0..20 {
            let _ = svc.ready().await.unwrap().call(404).await;
        }
        assert_eq!(svc.breaker().state(), State::Closed);
        for _ in 0..5 {
            let _ = svc.ready().await.unwrap().call(503).await;
        }
        assert_eq!(svc.breaker().state(), State::Open);

        // A trial whose response future is dropped gives its slot back.
        let slow = service_fn(|_: ()| std::future::pending::<Result<(), ()>>());
        let cb = breaker().build().unwrap();
        open(&cb);
        tokio::time::advance(Duration::from_secs(10)).await;
        let mut svc = CircuitBreakerLayer::new(cb.clone()).layer(slow);
        for _ in 0..3 {
            let fut = svc.ready().await.unwrap().call(());
            drop(fut);
        }
        succeed(&cb, 3);
        assert_eq!(cb.state(), State::Closed);
    }
}

mod open_wait {
    use super::*;

    /// Waits `d` exactly: rejected just before, admitted at `d`.
    async fn assert_waits(cb: &CircuitBreaker, d: Duration) {
        tokio::time::advance(d - Duration::from_millis(1)).await;
        assert!(cb.try_acquire().is_err(), "admitted before {d:?}");
        tokio::time::advance(Duration::from_millis(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn wait_in_open_backs_off_per_consecutive_opening_and_resets_on_close() {
        let cb = breaker()
            .permitted_calls_in_half_open(1)
            .wait_in_open_strategy(WaitInOpen::Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(3),
                multiplier: 2.0,
            })
            .build()
            .unwrap();
        open(&cb);
        for wait in [1, 2, 3, 3] {
            assert_waits(&cb, Duration::from_secs(wait)).await;
            cb.try_acquire()
                .expect("trial admitted at the wait")
                .failure();
            assert_eq!(cb.state(), State::Open, "a failed trial re-opens");
        }
        assert_waits(&cb, Duration::from_secs(3)).await;
        cb.try_acquire().unwrap().success();
        assert_eq!(cb.state(), State::Closed);
        open(&cb);
        assert_waits(&cb, Duration::from_secs(1)).await;
        assert!(cb.try_acquire().is_ok(), "closing resets the backoff");
    }

    #[tokio::test(start_paused = true)]
    async fn custom_generator_and_automatic_transition() {
        let cb = breaker()
            .wait_in_open_strategy(WaitInOpen::Custom(Arc::new(|n| {
                Duration::from_millis(500 * n as u64)
            })))
            .automatic_transition_to_half_open(true)
            .build()
            .unwrap();
        open(&cb);
        tokio::time::advance(Duration::from_millis(499)).await;
        assert_eq!(cb.state(), State::Open);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(cb.state(), State::HalfOpen, "visible without a call");
        // Without the option, state() waits for a call.
        let lazy = breaker()
            .wait_in_open(Duration::from_secs(1))
            .build()
            .unwrap();
        open(&lazy);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(lazy.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn fallback_runs_only_when_refused() {
        let cb = breaker().build().unwrap();
        let r = cb
            .call_or_fallback(|| async { Ok::<_, ()>("live") }, |_| async { Ok("cached") })
            .await;
        assert_eq!(r, Ok("live"));
        let cb = breaker().build().unwrap();
        open(&cb);
        let r = cb
            .call_or_fallback(
                || async { Ok::<_, ()>("live") },
                |rejected| async move {
                    assert_eq!(rejected.state, State::Open);
                    Ok("cached")
                },
            )
            .await;
        assert_eq!(r, Ok("cached"));
    }
}

#[tokio::test(start_paused = true)]
async fn success_threshold_decides_as_soon_as_the_outcome_is_certain() {
    let cb = breaker()
        .permitted_calls_in_half_open(5)
        .success_threshold(3)
        .build()
        .unwrap();
    open(&cb);
    tokio::time::advance(Duration::from_secs(10)).await;
    let trials: Vec<_> = (0..5).map(|_| cb.try_acquire().unwrap()).collect();
    let mut trials = trials.into_iter();
    trials.next().unwrap().failure();
    trials.next().unwrap().success();
    trials.next().unwrap().success();
    assert_eq!(
        cb.state(),
        State::HalfOpen,
        "2 of 3 needed successes so far"
    );
    trials.next().unwrap().success();
    assert_eq!(
        cb.state(),
        State::Closed,
        "3 successes close at once, without the fifth trial"
    );
    trials.next().unwrap().failure();
    assert_eq!(
        cb.state(),
        State::Closed,
        "the late fifth trial changes nothing"
    );

    open(&cb);
    tokio::time::advance(Duration::from_secs(10)).await;
    for _ in 0..2 {
        cb.try_acquire().unwrap().failure();
    }
    assert_eq!(
        cb.state(),
        State::HalfOpen,
        "3 of the remaining 3 could still succeed"
    );
    cb.try_acquire().unwrap().failure();
    assert_eq!(
        cb.state(),
        State::Open,
        "3 failures of 5: 3 successes are out of reach"
    );
    assert_eq!(
        CircuitBreaker::builder()
            .permitted_calls_in_half_open(2)
            .success_threshold(3)
            .build()
            .unwrap_err()
            .setting,
        "success_threshold"
    );
}
