//! A bounded queue with backpressure (seed Part II §6): what happens when producers
//! outrun consumers is a choice, not an accident.
//!
//! | strategy | when full |
//! |---|---|
//! | [`Strategy::Block`] | the producer waits for room (up to a timeout) |
//! | [`Strategy::DropOldest`] | the oldest item is evicted and the new one queued |
//! | [`Strategy::DropNewest`] | the new item is refused |
//! | [`Strategy::Error`] | the put fails with [`PutError::Full`] |
//! | [`Strategy::Sample`] | every Nth new item evicts the oldest; the rest are refused |
//!
//! Any number of producers and consumers, each async or blocking (threads), share one
//! queue through clones of [`BackpressureQueue`]. Items are never lost silently: every
//! dropped item is handed back to the producer, and the metrics keep
//! `received = processed + dropped + queued`. The buffer is allocated once; a put or get
//! takes one short per-queue lock and allocates nothing.

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// What a full queue does with a new item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Wait for room; `None` waits forever. Use for data that must not be lost.
    Block {
        /// Longest wait before the put fails with [`PutError::Timeout`].
        timeout: Option<Duration>,
    },
    /// Evict the oldest item (metrics, monitoring: the newest matters most).
    DropOldest,
    /// Refuse the new item.
    DropNewest,
    /// Fail the put with [`PutError::Full`].
    Error,
    /// Under pressure keep every `every`-th new item (evicting the oldest); refuse the rest.
    Sample {
        /// Keep one in this many (at least 1).
        every: u32,
    },
}

/// A successful put.
#[derive(Debug, PartialEq, Eq)]
pub enum Put<T> {
    /// Queued.
    Queued,
    /// Queued; the oldest item was evicted to make room and is returned.
    QueuedEvicting(T),
    /// Not queued (drop-newest, or not sampled); the item is returned.
    Dropped(T),
}

/// A failed put; the item is returned.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PutError<T> {
    /// Full, under [`Strategy::Error`].
    #[error("queue is full")]
    Full(T),
    /// Still full after the block timeout.
    #[error("queue stayed full for the whole block timeout")]
    Timeout(T),
    /// The queue was closed.
    #[error("queue is closed")]
    Closed(T),
}

/// Counters since creation and the current fill.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QueueMetrics {
    /// Items offered.
    pub received: u64,
    /// Items taken by consumers.
    pub processed: u64,
    /// Items dropped, evicted, refused or timed out.
    pub dropped: u64,
    /// Puts that had to wait for room.
    pub producer_blocked: u64,
    /// Items queued now.
    pub queued: usize,
    /// `queued / capacity`, 0.0–1.0.
    pub fill_ratio: f64,
}

struct State<T> {
    buf: VecDeque<T>,
    closed: bool,
    /// Puts that met a full queue under `Sample`.
    pressured: u64,
    /// Threads parked on the condvars: signalling a condvar is a syscall even with no
    /// waiter, so it is done only when one exists.
    parked_putters: usize,
    parked_getters: usize,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    strategy: Strategy,
    not_empty: Notify,
    not_full: Notify,
    not_empty_cv: Condvar,
    not_full_cv: Condvar,
    received: AtomicU64,
    processed: AtomicU64,
    dropped: AtomicU64,
    blocked: AtomicU64,
}

/// A bounded multi-producer multi-consumer queue; clones are handles to the same queue.
pub struct BackpressureQueue<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for BackpressureQueue<T> {
    fn clone(&self) -> Self {
        BackpressureQueue {
            shared: self.shared.clone(),
        }
    }
}

impl<T> std::fmt::Debug for BackpressureQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackpressureQueue")
            .field("capacity", &self.shared.capacity)
            .field("strategy", &self.shared.strategy)
            .finish()
    }
}

/// What a put decided while holding the lock.
enum Decision<T> {
    Done(Put<T>),
    Fail(PutError<T>),
    Wait(T),
}

impl<T> BackpressureQueue<T> {
    /// A queue holding up to `capacity` (at least 1) items.
    pub fn new(capacity: usize, strategy: Strategy) -> Self {
        let capacity = capacity.max(1);
        BackpressureQueue {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    buf: VecDeque::with_capacity(capacity),
                    closed: false,
                    pressured: 0,
                    parked_putters: 0,
                    parked_getters: 0,
                }),
                capacity,
                strategy,
                not_empty: Notify::new(),
                not_full: Notify::new(),
                not_empty_cv: Condvar::new(),
                not_full_cv: Condvar::new(),
                received: AtomicU64::new(0),
                processed: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                blocked: AtomicU64::new(0),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes a consumer after a push; `parked` says whether a thread waits on the condvar.
    fn pushed(&self, parked: bool) {
        self.shared.not_empty.notify_one();
        if parked {
            self.shared.not_empty_cv.notify_one();
        }
    }

    /// Counts a take and wakes a producer; `parked` as for [`Self::pushed`].
    fn popped(&self, parked: bool) {
        self.shared.processed.fetch_add(1, Ordering::Relaxed);
        self.shared.not_full.notify_one();
        if parked {
            self.shared.not_full_cv.notify_one();
        }
    }

    /// One attempt under the lock; also says whether a consumer thread is parked.
    fn attempt(&self, item: T) -> (Decision<T>, bool) {
        let mut state = self.lock();
        let decision = self.offer(&mut state, item);
        (decision, state.parked_getters > 0)
    }

    fn drop_count(&self) {
        event!(debug, strategy = ?self.shared.strategy, "backpressure queue dropped an item");
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Applies the strategy to `item` under the lock.
    fn offer(&self, state: &mut State<T>, item: T) -> Decision<T> {
        if state.closed {
            self.drop_count();
            return Decision::Fail(PutError::Closed(item));
        }
        if state.buf.len() < self.shared.capacity {
            state.buf.push_back(item);
            return Decision::Done(Put::Queued);
        }
        match self.shared.strategy {
            Strategy::Block { .. } => Decision::Wait(item),
            Strategy::DropNewest => {
                self.drop_count();
                Decision::Done(Put::Dropped(item))
            }
            Strategy::Error => {
                self.drop_count();
                Decision::Fail(PutError::Full(item))
            }
            Strategy::DropOldest => {
                self.drop_count();
                let evicted = state.buf.pop_front();
                state.buf.push_back(item);
                Decision::Done(evicted.map_or(Put::Queued, Put::QueuedEvicting))
            }
            Strategy::Sample { every } => {
                state.pressured += 1;
                self.drop_count();
                if state.pressured.is_multiple_of(every.max(1) as u64) {
                    let evicted = state.buf.pop_front();
                    state.buf.push_back(item);
                    Decision::Done(evicted.map_or(Put::Queued, Put::QueuedEvicting))
                } else {
                    Decision::Done(Put::Dropped(item))
                }
            }
        }
    }

    fn block_timeout(&self) -> Option<Duration> {
        match self.shared.strategy {
            Strategy::Block { timeout } => timeout,
            _ => None,
        }
    }

    /// Offers `item`, waiting for room under [`Strategy::Block`].
    pub async fn put(&self, item: T) -> Result<Put<T>, PutError<T>> {
        self.shared.received.fetch_add(1, Ordering::Relaxed);
        // Fast path: no waiter registration unless the queue is full.
        let mut item = match self.attempt(item) {
            (Decision::Done(put), parked) => return Ok(self.finish_put(put, parked)),
            (Decision::Fail(e), _) => return Err(e),
            (Decision::Wait(back), _) => back,
        };
        self.shared.blocked.fetch_add(1, Ordering::Relaxed);
        let deadline = self
            .block_timeout()
            .map(|t| tokio::time::Instant::now() + t);
        loop {
            let notified = self.shared.not_full.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Re-check after registering, so a take in between is not missed.
            item = match self.attempt(item) {
                (Decision::Done(put), parked) => return Ok(self.finish_put(put, parked)),
                (Decision::Fail(e), _) => return Err(e),
                (Decision::Wait(back), _) => back,
            };
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, notified).await.is_err() {
                        // One last look: room may have appeared at the deadline.
                        return match self.attempt(item) {
                            (Decision::Done(put), parked) => Ok(self.finish_put(put, parked)),
                            (Decision::Fail(e), _) => Err(e),
                            (Decision::Wait(back), _) => {
                                self.drop_count();
                                Err(PutError::Timeout(back))
                            }
                        };
                    }
                }
                None => notified.await,
            }
        }
    }

    fn finish_put(&self, put: Put<T>, parked: bool) -> Put<T> {
        if !matches!(put, Put::Dropped(_)) {
            self.pushed(parked);
        }
        put
    }

    /// [`Self::put`] for threads: blocks the calling thread under [`Strategy::Block`].
    pub fn put_blocking(&self, item: T) -> Result<Put<T>, PutError<T>> {
        self.shared.received.fetch_add(1, Ordering::Relaxed);
        let deadline = self.block_timeout().map(|t| std::time::Instant::now() + t);
        let mut state = self.lock();
        let mut item = item;
        let mut counted_block = false;
        loop {
            match self.offer(&mut state, item) {
                Decision::Done(put) => {
                    let parked = state.parked_getters > 0;
                    drop(state);
                    return Ok(self.finish_put(put, parked));
                }
                Decision::Fail(e) => return Err(e),
                Decision::Wait(back) => {
                    item = back;
                    if !counted_block {
                        counted_block = true;
                        self.shared.blocked.fetch_add(1, Ordering::Relaxed);
                    }
                    let left = match deadline {
                        None => None,
                        Some(d) => {
                            let left = d.saturating_duration_since(std::time::Instant::now());
                            if left.is_zero() {
                                self.drop_count();
                                return Err(PutError::Timeout(item));
                            }
                            Some(left)
                        }
                    };
                    state.parked_putters += 1;
                    state = match left {
                        None => self
                            .shared
                            .not_full_cv
                            .wait(state)
                            .unwrap_or_else(|p| p.into_inner()),
                        Some(left) => {
                            self.shared
                                .not_full_cv
                                .wait_timeout(state, left)
                                .unwrap_or_else(|p| p.into_inner())
                                .0
                        }
                    };
                    state.parked_putters -= 1;
                }
            }
        }
    }

    /// Takes the oldest item if there is one.
    pub fn try_get(&self) -> Option<T> {
        let (item, parked) = {
            let mut state = self.lock();
            (state.buf.pop_front(), state.parked_putters > 0)
        };
        if item.is_some() {
            self.popped(parked);
        }
        item
    }

    /// Takes the oldest item, waiting for one; `None` once closed and drained.
    pub async fn get(&self) -> Option<T> {
        loop {
            if let Some(item) = self.try_get() {
                return Some(item);
            }
            let notified = self.shared.not_empty.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Re-check after registering, so a push in between is not missed.
            if let Some(item) = self.try_get() {
                return Some(item);
            }
            if self.lock().closed {
                return None;
            }
            notified.await;
        }
    }

    /// [`Self::get`] for threads.
    pub fn get_blocking(&self) -> Option<T> {
        let mut state = self.lock();
        loop {
            if let Some(item) = state.buf.pop_front() {
                let parked = state.parked_putters > 0;
                drop(state);
                self.popped(parked);
                return Some(item);
            }
            if state.closed {
                return None;
            }
            state.parked_getters += 1;
            state = self
                .shared
                .not_empty_cv
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
            state.parked_getters -= 1;
        }
    }

    /// Refuses new items; consumers drain what is queued, then get `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        let s = &self.shared;
        s.not_empty.notify_waiters();
        s.not_full.notify_waiters();
        s.not_empty_cv.notify_all();
        s.not_full_cv.notify_all();
    }

    /// Counters and fill.
    pub fn metrics(&self) -> QueueMetrics {
        let queued = self.lock().buf.len();
        let s = &self.shared;
        QueueMetrics {
            received: s.received.load(Ordering::Relaxed),
            processed: s.processed.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            producer_blocked: s.blocked.load(Ordering::Relaxed),
            queued,
            fill_ratio: queued as f64 / s.capacity as f64,
        }
    }
}
