//! Per-call overhead of resilience policies on the success path, side by side with peers in
//! one run: ns per call (minus a zero-work baseline of the same calling style), allocations
//! per call, and the ratio peer / Mainstay.
//!
//! Run: `cargo bench -p mainstay-resilience --bench policies`
//! (`MAINSTAY_BENCH_ITERS=N` sets calls per measurement; default 2,000,000.)
//!
//! Async calls are polled once with a no-op waker (they complete on first poll), so no
//! executor cost is counted. Each figure is the best of 5 runs.

use mainstay_resilience::circuit_breaker::CircuitBreaker;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;
use tower::{Service, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

struct Measure {
    ns: f64,
    allocs: f64,
}

fn measure(iters: u64, mut f: impl FnMut()) -> Measure {
    for _ in 0..iters / 10 {
        f();
    }
    let mut best = f64::MAX;
    let mut allocs = 0.0;
    for _ in 0..5 {
        let region = Region::new(GLOBAL);
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        let ns = start.elapsed().as_nanos() as f64 / iters as f64;
        allocs = region.change().allocations as f64 / iters as f64;
        best = best.min(ns);
    }
    Measure { ns: best, allocs }
}

/// Polls a future that completes on its first poll.
fn once<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("benchmarked future did not complete on first poll"),
    }
}

/// Measures ready + call on a tower service whose calls complete at once.
fn measure_service<S>(iters: u64, svc: &mut S) -> Measure
where
    S: Service<u32>,
    S::Error: std::fmt::Debug,
{
    measure(iters, || {
        let ready = once(svc.ready()).expect("ready");
        black_box(once(ready.call(black_box(1)))).ok();
    })
}

/// tower's retry needs a policy: retry errors up to `0` times (the success path never does).
#[derive(Clone)]
struct Attempts(usize);

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for Attempts {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Err(_) if self.0 > 0 => {
                self.0 -= 1;
                Some(std::future::ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

fn backend() -> impl Service<
    u32,
    Response = u32,
    Error = std::io::Error,
    Future = impl Future<Output = Result<u32, std::io::Error>>,
> + Clone {
    tower::service_fn(|x: u32| async move { Ok::<u32, std::io::Error>(x) })
}

/// The five-policy pipeline of the benchmark: timeout ∘ retry ∘ rate limit ∘ circuit
/// breaker ∘ bulkhead, configured never to refuse.
fn five_policies() -> mainstay_resilience::pipeline::Pipeline {
    use std::time::Duration;
    mainstay_resilience::pipeline::Pipeline::new()
        .with_timeout(Duration::from_secs(10))
        .with_retry(
            mainstay_resilience::retry::Retry::builder()
                .max_attempts(3)
                .seed(1)
                .build(),
        )
        .with_rate_limit(
            mainstay_resilience::rate_limit::RateLimiter::new(
                u32::MAX,
                Duration::from_secs(1),
                1_000_000,
            )
            .expect("limiter"),
        )
        .with_circuit_breaker(CircuitBreaker::builder().build().expect("breaker"))
        .with_bulkhead(mainstay_resilience::bulkhead::Bulkhead::new(
            "bench",
            64,
            Duration::ZERO,
        ))
}

fn row(what: &str, m: &Measure, base: &Measure) -> f64 {
    let overhead = (m.ns - base.ns).max(0.1);
    println!(
        "| {what} | {:.1} | {:.1} | {:.2} |",
        m.ns, overhead, m.allocs
    );
    overhead
}

fn main() {
    let iters: u64 = std::env::var("MAINSTAY_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();

    println!(
        "Circuit breaker, closed state, success path; {iters} calls per measurement, best of 5.\n"
    );
    println!("| call | ns/call | overhead ns | allocations/call |");
    println!("|---|---|---|---|");

    // Synchronous style.
    let sync_base = measure(iters, || {
        black_box(Ok::<u32, ()>(black_box(1))).ok();
    });
    row("baseline: plain sync call", &sync_base, &sync_base);
    let ours = CircuitBreaker::builder().build().expect("breaker");
    let ours_sync = measure(iters, || {
        let permit = ours.try_acquire().expect("closed");
        black_box(Ok::<u32, ()>(black_box(1))).ok();
        permit.success();
    });
    let m_sync = row(
        "**mainstay** `try_acquire` + `success` (slow-call tracking on)",
        &ours_sync,
        &sync_base,
    );
    let timed = CircuitBreaker::builder()
        .time_window(std::time::Duration::from_secs(10), 10)
        .build()
        .expect("breaker");
    let timed_m = measure(iters, || {
        let permit = timed.try_acquire().expect("closed");
        black_box(Ok::<u32, ()>(black_box(1))).ok();
        permit.success();
    });
    row(
        "**mainstay** same, time-based window (10 s, 10 buckets)",
        &timed_m,
        &sync_base,
    );
    let failsafe_cb = failsafe::Config::new().build();
    let fs = measure(iters, || {
        use failsafe::CircuitBreaker as _;
        black_box(failsafe_cb.call(|| Ok::<u32, ()>(black_box(1)))).ok();
    });
    let f_sync = row("failsafe-rs 1.3 `call`", &fs, &sync_base);

    // Async style.
    let async_base = measure(iters, || {
        black_box(once(async { Ok::<u32, ()>(black_box(1)) })).ok();
    });
    row("baseline: plain async call", &async_base, &async_base);
    let ours_async = measure(iters, || {
        black_box(once(ours.call(|| async { Ok::<u32, ()>(black_box(1)) }))).ok();
    });
    let m_async = row("**mainstay** `call` (async)", &ours_async, &async_base);

    // Tower style: tower-resilience's breaker layer over a service_fn.
    let mut plain = tower::service_fn(|x: u32| async move { Ok::<u32, std::io::Error>(x) });
    let tower_base = measure(iters, || {
        let svc = once(plain.ready()).expect("ready");
        black_box(once(svc.call(black_box(1)))).ok();
    });
    row(
        "baseline: tower `service_fn` ready + call",
        &tower_base,
        &tower_base,
    );
    let layer = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .build()
        .expect("layer");
    let mut tr = tower::Layer::layer(
        &layer,
        tower::service_fn(|x: u32| async move { Ok::<u32, std::io::Error>(x) }),
    );
    let trm = measure(iters / 4, || {
        let svc = once(tr.ready()).expect("ready");
        black_box(once(svc.call(black_box(1)))).ok();
    });
    let t_async = row(
        "tower-resilience 0.13 circuit breaker layer",
        &trm,
        &tower_base,
    );
    let mut ms = tower::Layer::layer(
        &mainstay_resilience::circuit_breaker::CircuitBreakerLayer::new(
            CircuitBreaker::builder().build().expect("breaker"),
        ),
        tower::service_fn(|x: u32| async move { Ok::<u32, std::io::Error>(x) }),
    );
    let msm = measure(iters, || {
        let svc = once(ms.ready()).expect("ready");
        black_box(once(svc.call(black_box(1)))).ok();
    });
    let m_tower = row("**mainstay** circuit breaker layer", &msm, &tower_base);

    // Bulkhead vs tower's ConcurrencyLimit (both through an async call that completes at once).
    println!();
    println!("Bulkhead, rate limiter, queue: success path, one thread.\n");
    println!("| call | ns/call | overhead ns | allocations/call |");
    println!("|---|---|---|---|");
    let bulkhead =
        mainstay_resilience::bulkhead::Bulkhead::new("bench", 64, std::time::Duration::ZERO);
    let bh = measure(iters, || {
        black_box(once(
            bulkhead.call(|| async { Ok::<u32, ()>(black_box(1)) }),
        ))
        .ok();
    });
    let m_bh = row("**mainstay** `Bulkhead::call`", &bh, &async_base);
    let mut cl = tower::limit::ConcurrencyLimit::new(
        tower::service_fn(|x: u32| async move { Ok::<u32, std::io::Error>(x) }),
        64,
    );
    let clm = measure(iters, || {
        let svc = once(cl.ready()).expect("ready");
        black_box(once(svc.call(black_box(1)))).ok();
    });
    let t_cl = row(
        "tower 0.5 `ConcurrencyLimit` ready + call",
        &clm,
        &tower_base,
    );

    let limiter = mainstay_resilience::rate_limit::RateLimiter::new(
        u32::MAX,
        std::time::Duration::from_secs(1),
        1_000_000,
    )
    .expect("limiter");
    let rl = measure(iters, || {
        limiter.try_acquire().expect("never limited");
        black_box(1);
    });
    let m_rl = row(
        "**mainstay** `RateLimiter::try_acquire` (GCRA)",
        &rl,
        &sync_base,
    );
    let mut trl = tower::limit::RateLimit::new(
        tower::service_fn(|x: u32| async move { Ok::<u32, std::io::Error>(x) }),
        tower::limit::rate::Rate::new(u64::MAX / 4, std::time::Duration::from_secs(1)),
    );
    let trlm = measure(iters, || {
        let svc = once(trl.ready()).expect("ready");
        black_box(once(svc.call(black_box(1)))).ok();
    });
    let t_rl = row(
        "tower 0.5 `RateLimit` ready + call (not `Clone`)",
        &trlm,
        &tower_base,
    );

    let q = mainstay_resilience::queue::BackpressureQueue::new(
        1024,
        mainstay_resilience::queue::Strategy::Block { timeout: None },
    );
    let qm = measure(iters, || {
        black_box(once(q.put(black_box(1u64)))).ok();
        black_box(q.try_get());
    });
    let m_q = row(
        "**mainstay** `BackpressureQueue` put + try_get",
        &qm,
        &async_base,
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(1024);
    let mq = measure(iters, || {
        tx.try_send(black_box(1)).expect("room");
        black_box(rx.try_recv().ok());
    });
    let t_mpsc = row(
        "tokio `mpsc` (bounded) try_send + try_recv",
        &mq,
        &sync_base,
    );
    let (atx, arx) = async_channel::bounded::<u64>(1024);
    let aq = measure(iters, || {
        atx.try_send(black_box(1)).expect("room");
        black_box(arx.try_recv().ok());
    });
    let t_ac = row(
        "async-channel 2 (bounded, MPMC) try_send + try_recv",
        &aq,
        &sync_base,
    );

    // The 5-policy pipeline: timeout ∘ retry ∘ rate limit ∘ circuit breaker ∘ bulkhead.
    let pipeline = five_policies();
    let pm = measure(iters, || {
        black_box(once(pipeline.call(
            || async { Ok::<u32, ()>(black_box(1)) },
            |_| mainstay_resilience::retry::Decision::Retry,
        )))
        .ok();
    });
    let m_pipe = row(
        "**mainstay** 5-policy pipeline (timeout, retry, rate limit, breaker, bulkhead)",
        &pm,
        &async_base,
    );

    println!();
    println!("- 5-policy pipeline: **{m_pipe:.0} ns**, {:.2} allocations per call (target ≤ 250 ns, 0; Polly v8 publishes 2.1 µs, 40 B)", pm.allocs);
    println!(
        "- bulkhead / tower ConcurrencyLimit: **{:.2}×** the cost (target ≤ 1.5×)",
        m_bh / t_cl
    );
    println!(
        "- rate limiter: tower RateLimit / mainstay: **{:.1}×**",
        t_rl / m_rl
    );
    println!(
        "- queue / tokio mpsc: {:.2}× the cost; queue / async-channel: {:.2}×",
        m_q / t_mpsc,
        m_q / t_ac
    );

    // Tower layers side by side: Mainstay, tower-resilience, tower.
    println!();
    println!("Tower layers over the same `service_fn`, success path.\n");
    println!("| layer | ns/call | overhead ns | allocations/call |");
    println!("|---|---|---|---|");
    use tower::Layer as _;
    let mut s1 = mainstay_resilience::bulkhead::BulkheadLayer::new(
        mainstay_resilience::bulkhead::Bulkhead::new("b", 64, std::time::Duration::ZERO),
    )
    .layer(backend());
    let mb = row(
        "**mainstay** `BulkheadLayer`",
        &measure_service(iters, &mut s1),
        &tower_base,
    );
    let mut s2 = tower_resilience::bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(64)
        .build()
        .expect("bulkhead")
        .layer(backend());
    let trb = row(
        "tower-resilience 0.13 `BulkheadLayer`",
        &measure_service(iters / 4, &mut s2),
        &tower_base,
    );
    let mut s3 = tower::limit::ConcurrencyLimitLayer::new(64).layer(backend());
    let tb = row(
        "tower 0.5 `ConcurrencyLimitLayer`",
        &measure_service(iters, &mut s3),
        &tower_base,
    );

    let mut s4 = mainstay_resilience::retry::RetryLayer::new(
        mainstay_resilience::retry::Retry::builder()
            .max_attempts(3)
            .seed(1)
            .build(),
        |_: &std::io::Error| mainstay_resilience::retry::Decision::Retry,
    )
    .layer(backend());
    let mr = row(
        "**mainstay** `RetryLayer`",
        &measure_service(iters, &mut s4),
        &tower_base,
    );
    let mut s5 = tower_resilience::retry::RetryLayer::<u32, u32, std::io::Error>::builder()
        .max_attempts(3)
        .build()
        .layer(backend());
    let trr = row(
        "tower-resilience 0.13 `RetryLayer`",
        &measure_service(iters / 4, &mut s5),
        &tower_base,
    );
    let mut s6 = tower::retry::RetryLayer::new(Attempts(2)).layer(backend());
    let tr = row(
        "tower 0.5 `RetryLayer` (minimal policy)",
        &measure_service(iters, &mut s6),
        &tower_base,
    );

    let mut s7 = mainstay_resilience::rate_limit::RateLimitLayer::new(
        mainstay_resilience::rate_limit::RateLimiter::new(
            u32::MAX,
            std::time::Duration::from_secs(1),
            1_000_000,
        )
        .expect("limiter"),
    )
    .layer(backend());
    let mrl = row(
        "**mainstay** `RateLimitLayer` (GCRA, `Clone`)",
        &measure_service(iters, &mut s7),
        &tower_base,
    );
    let mut s8 = tower_resilience::ratelimiter::RateLimiterLayer::builder()
        .limit_for_period(1_000_000_000)
        .refresh_period(std::time::Duration::from_secs(1))
        .build()
        .expect("rate limiter")
        .layer(backend());
    let trrl = row(
        "tower-resilience 0.13 `RateLimiterLayer`",
        &measure_service(iters / 4, &mut s8),
        &tower_base,
    );

    let full = five_policies();
    let mut s9 = mainstay_resilience::pipeline::PipelineLayer::new(full, |_: &std::io::Error| {
        mainstay_resilience::retry::Decision::Retry
    })
    .layer(backend());
    row(
        "**mainstay** `PipelineLayer` (the 5 policies as one layer, one error type)",
        &measure_service(iters, &mut s9),
        &tower_base,
    );
    println!();
    println!("- bulkhead layer: tower-resilience / mainstay **{:.1}×**; mainstay / tower ConcurrencyLimit {:.2}× the cost", trb / mb, mb / tb);
    println!(
        "- retry layer: tower-resilience / mainstay **{:.1}×**; tower's Retry with a do-nothing policy costs {tr:.1} ns (mainstay's layer clones its policy handle, two `Arc`s, per call)",
        trr / mr
    );
    println!(
        "- rate-limit layer: tower-resilience / mainstay **{:.1}×**",
        trrl / mrl
    );

    // Two threads sharing one breaker.
    let per_thread = iters / 2;
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..per_thread {
                    let permit = ours.try_acquire().expect("closed");
                    black_box(1);
                    permit.success();
                }
            });
        }
    });
    let two = start.elapsed().as_nanos() as f64 / (per_thread * 2) as f64;

    println!();
    println!(
        "- failsafe-rs / mainstay (sync overhead): **{:.1}×** (target ≥ 2×)",
        f_sync / m_sync
    );
    println!("- tower-resilience / mainstay (both as tower layers): **{:.1}×** (target ≥ 4×); vs mainstay's plain async API: {:.1}×", t_async / m_tower, t_async / m_async);
    println!("- mainstay closed-breaker overhead: {:.1} ns, {:.2} allocations per call (target ≤ 50 ns, 0)", m_sync, ours_sync.allocs);
    println!(
        "- two threads sharing one breaker: {two:.1} ns per call aggregate vs {:.1} ns on one thread ({:.2}× throughput)",
        ours_sync.ns,
        ours_sync.ns / two
    );
}
