//! A retry budget (Finagle's `RetryBudget`, tower's `TpsBudget`): retries may add at most a
//! fixed share of the call volume, plus a small floor, over a sliding window.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

const BUCKETS: u64 = 10;

/// Retries allowed over the last `ttl`: `percent × calls + min_per_sec × ttl`.
///
/// Every call deposits one; every retry withdraws one if the window still allows it. The
/// window is `ttl` split into 10 buckets, so old traffic ages out in steps of `ttl / 10`.
/// Deposits and withdrawals take a short uncontended lock (retries are the failure path).
#[derive(Debug)]
pub struct RetryBudget {
    percent: f64,
    reserve: u64,
    bucket_nanos: u64,
    epoch: Instant,
    buckets: Mutex<[Bucket; BUCKETS as usize]>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    index: u64,
    calls: u64,
    retries: u64,
}

impl Default for RetryBudget {
    /// Finagle's defaults: 20% of calls, a floor of 10 retries per second, a 10 s window.
    fn default() -> Self {
        RetryBudget::new(Duration::from_secs(10), 10, 0.2)
    }
}

impl RetryBudget {
    /// A budget over `ttl` (at least 1 ms) allowing `percent` (0.0–1000.0 as a fraction,
    /// e.g. 0.2) of calls as retries plus `min_per_sec` retries per second.
    pub fn new(ttl: Duration, min_per_sec: u32, percent: f64) -> Self {
        let ttl = ttl.max(Duration::from_millis(1));
        RetryBudget {
            percent: percent.clamp(0.0, 1000.0),
            reserve: (min_per_sec as f64 * ttl.as_secs_f64()).floor() as u64,
            bucket_nanos: (ttl.as_nanos() as u64 / BUCKETS).max(1),
            epoch: Instant::now(),
            buckets: Mutex::new([Bucket::default(); BUCKETS as usize]),
        }
    }

    fn current(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 / self.bucket_nanos
    }

    fn with<R>(&self, f: impl FnOnce(&mut [Bucket; BUCKETS as usize], u64) -> R) -> R {
        let now = self.current();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut buckets[(now % BUCKETS) as usize];
        if slot.index != now {
            *slot = Bucket {
                index: now,
                calls: 0,
                retries: 0,
            };
        }
        f(&mut buckets, now)
    }

    /// Records one call.
    pub fn deposit(&self) {
        self.with(|b, now| b[(now % BUCKETS) as usize].calls += 1);
    }

    /// Takes one retry if the window allows it.
    pub fn try_withdraw(&self) -> bool {
        self.with(|b, now| {
            let live = b
                .iter()
                .filter(|x| x.index + BUCKETS > now && x.index <= now);
            let (calls, retries) = live.fold((0, 0), |(c, r), x| (c + x.calls, r + x.retries));
            let allowed = (self.percent * calls as f64).floor() as u64 + self.reserve;
            if retries < allowed {
                b[(now % BUCKETS) as usize].retries += 1;
                true
            } else {
                false
            }
        })
    }
}
