//! The count-based sliding window of one CLOSED period.
//!
//! A ring of the last `size` outcomes plus running totals, all atomics: recording swaps one
//! slot and adjusts the totals by exactly what it inserted and evicted, so the totals always
//! converge to the ring's content and a snapshot is O(1). A window belongs to one
//! generation; the breaker installs a fresh one when it closes, so a straggler from an
//! earlier period can only touch a discarded window.

use std::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, Ordering};

const RECORDED: u8 = 1;
const FAILED: u8 = 2;
const SLOW: u8 = 4;

/// One call's outcome as the window stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) failed: bool,
    pub(crate) slow: bool,
}

impl Sample {
    fn code(self) -> u8 {
        RECORDED | if self.failed { FAILED } else { 0 } | if self.slow { SLOW } else { 0 }
    }
}

/// Totals over the window at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

pub(crate) struct CountWindow {
    pub(crate) generation: u32,
    slots: Box<[AtomicU8]>,
    head: AtomicU64,
    // Signed: a concurrent evictor may subtract before the inserter adds; the dip is
    // transient and clamped at read time.
    calls: AtomicI32,
    failures: AtomicI32,
    slow: AtomicI32,
}

impl CountWindow {
    pub(crate) fn new(size: u32, generation: u32) -> Self {
        CountWindow {
            generation,
            slots: (0..size.max(1)).map(|_| AtomicU8::new(0)).collect(),
            head: AtomicU64::new(0),
            calls: AtomicI32::new(0),
            failures: AtomicI32::new(0),
            slow: AtomicI32::new(0),
        }
    }

    /// Records `sample`; false when it cannot raise a rate or the call count (a plain
    /// success replacing an older outcome), so no threshold check is needed.
    pub(crate) fn record(&self, sample: Sample) -> bool {
        let i = (self.head.fetch_add(1, Ordering::Relaxed) % self.slots.len() as u64) as usize;
        let new = sample.code();
        let old = self.slots[i].swap(new, Ordering::AcqRel);
        let adjust = |counter: &AtomicI32, bit: u8| match (old & bit != 0, new & bit != 0) {
            (false, true) => {
                counter.fetch_add(1, Ordering::AcqRel);
            }
            (true, false) => {
                counter.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        };
        adjust(&self.calls, RECORDED);
        adjust(&self.failures, FAILED);
        adjust(&self.slow, SLOW);
        sample.failed || sample.slow || old == 0
    }

    pub(crate) fn totals(&self) -> Totals {
        let size = self.slots.len() as i32;
        let read = |c: &AtomicI32| c.load(Ordering::Acquire).clamp(0, size) as u32;
        Totals {
            calls: read(&self.calls),
            failures: read(&self.failures),
            slow: read(&self.slow),
        }
    }
}

/// Counts of one time bucket.
struct Bucket {
    index: AtomicU64,
    calls: AtomicI32,
    failures: AtomicI32,
    slow: AtomicI32,
}

/// The time-based sliding window of one CLOSED period: `n` buckets of `bucket_nanos` each,
/// with running totals (an O(1) snapshot). Recording is lock-free; crossing into a new
/// bucket takes a short lock once per bucket period to evict the buckets that expired,
/// subtracting exactly the counts it swaps out, so totals stay equal to the live buckets.
pub(crate) struct TimeWindow {
    pub(crate) generation: u32,
    buckets: Box<[Bucket]>,
    bucket_nanos: u64,
    /// The newest bucket index the window has advanced to.
    head: AtomicU64,
    rotation: std::sync::Mutex<()>,
    calls: AtomicI32,
    failures: AtomicI32,
    slow: AtomicI32,
}

impl TimeWindow {
    pub(crate) fn new(buckets: u32, bucket_nanos: u64, generation: u32, now_nanos: u64) -> Self {
        let bucket_nanos = bucket_nanos.max(1);
        let head = now_nanos / bucket_nanos;
        TimeWindow {
            generation,
            buckets: (0..buckets.max(1))
                .map(|_| Bucket {
                    index: AtomicU64::new(head),
                    calls: AtomicI32::new(0),
                    failures: AtomicI32::new(0),
                    slow: AtomicI32::new(0),
                })
                .collect(),
            bucket_nanos,
            head: AtomicU64::new(head),
            rotation: std::sync::Mutex::new(()),
            calls: AtomicI32::new(0),
            failures: AtomicI32::new(0),
            slow: AtomicI32::new(0),
        }
    }

    /// Evicts every bucket older than the window ending at `now_nanos`.
    fn advance(&self, now_nanos: u64) {
        let now = now_nanos / self.bucket_nanos;
        if now <= self.head.load(Ordering::Acquire) {
            return;
        }
        let _guard = self.rotation.lock().unwrap_or_else(|p| p.into_inner());
        let head = self.head.load(Ordering::Acquire);
        if now <= head {
            return;
        }
        let n = self.buckets.len() as u64;
        for index in (head + 1).max(now.saturating_sub(n - 1))..=now {
            let b = &self.buckets[(index % n) as usize];
            self.calls
                .fetch_sub(b.calls.swap(0, Ordering::AcqRel), Ordering::AcqRel);
            self.failures
                .fetch_sub(b.failures.swap(0, Ordering::AcqRel), Ordering::AcqRel);
            self.slow
                .fetch_sub(b.slow.swap(0, Ordering::AcqRel), Ordering::AcqRel);
            b.index.store(index, Ordering::Release);
        }
        self.head.store(now, Ordering::Release);
    }

    pub(crate) fn record(&self, sample: Sample, now_nanos: u64) {
        self.advance(now_nanos);
        let n = self.buckets.len() as u64;
        let b = &self.buckets[((now_nanos / self.bucket_nanos) % n) as usize];
        // Slot and totals move together, so eviction (which subtracts what it swaps out of
        // the slot) keeps them equal even when it races with this add.
        b.calls.fetch_add(1, Ordering::AcqRel);
        self.calls.fetch_add(1, Ordering::AcqRel);
        if sample.failed {
            b.failures.fetch_add(1, Ordering::AcqRel);
            self.failures.fetch_add(1, Ordering::AcqRel);
        }
        if sample.slow {
            b.slow.fetch_add(1, Ordering::AcqRel);
            self.slow.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn totals(&self, now_nanos: u64) -> Totals {
        self.advance(now_nanos);
        let read = |c: &AtomicI32| c.load(Ordering::Acquire).max(0) as u32;
        Totals {
            calls: read(&self.calls),
            failures: read(&self.failures),
            slow: read(&self.slow),
        }
    }
}

/// The window of one CLOSED period.
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(crate) fn generation(&self) -> u32 {
        match self {
            Window::Count(w) => w.generation,
            Window::Time(w) => w.generation,
        }
    }

    /// Records `sample`; false when no threshold check is needed afterwards.
    pub(crate) fn record(&self, sample: Sample, now_nanos: u64) -> bool {
        match self {
            Window::Count(w) => w.record(sample),
            Window::Time(w) => {
                // A success still adds a call (it may reach minimum_calls): check.
                w.record(sample, now_nanos);
                true
            }
        }
    }

    pub(crate) fn totals(&self, now_nanos: u64) -> Totals {
        match self {
            Window::Count(w) => w.totals(),
            Window::Time(w) => w.totals(now_nanos),
        }
    }
}
