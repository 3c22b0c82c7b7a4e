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

    pub(crate) fn record(&self, sample: Sample) {
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
