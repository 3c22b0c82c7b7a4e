//! Circuit breaker (seed Part II §3): CLOSED → OPEN → HALF_OPEN → CLOSED.
//!
//! CLOSED records each call's outcome in a sliding window (count-based: the last N calls;
//! or time-based: the last duration, in buckets); once at least
//! `minimum_calls` are in it and the failure rate or the slow-call rate reaches its
//! threshold, the breaker OPENs and rejects calls for `wait_in_open`. The next call after
//! that moves it to HALF_OPEN, which admits **at most** `permitted_calls_in_half_open`
//! trial calls; when all of them have reported, the breaker CLOSEs (rates under the
//! thresholds) or OPENs again. `max_wait_in_half_open` re-opens a half-open breaker whose
//! trials never report.
//!
//! Guarantees:
//! - The state is one atomic word (generation, state, half-open admissions) changed only
//!   by compare-and-swap, so HALF_OPEN never admits more than the permitted trials however
//!   many callers race (resilience4j #1090, #2028; Polly #216).
//! - Every permit carries the generation it was issued in; a result that arrives after the
//!   breaker moved on is counted as ignored and changes nothing.
//! - A permit dropped without a result (a cancelled call) gives its half-open slot back, so
//!   a cancelled trial cannot wedge the breaker in HALF_OPEN.
//! - The CLOSED hot path takes no lock and allocates nothing.
//!
//! Limits: the window's totals are exact once concurrent recorders finish, approximate by
//! at most the number of in-flight recordings while they run; a recorder stalled for a
//! whole time window may land its one sample in a newer bucket.

pub mod future;
mod layer;
mod window;

#[cfg(test)]
mod tests;

pub use layer::{CircuitBreakerLayer, CircuitBreakerService};

use arc_swap::ArcSwap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;
use window::{CountWindow, Sample, TimeWindow, Window};

/// The breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Calls flow; outcomes are recorded.
    Closed,
    /// Calls are rejected until the wait in OPEN has passed.
    Open,
    /// A limited number of trial calls decide between CLOSED and OPEN.
    HalfOpen,
    /// Manually disabled: every call is permitted and nothing is recorded.
    Disabled,
    /// Manually forced open: every call is rejected.
    ForcedOpen,
}

impl Metrics {
    /// Calls that reported a result (successful + failed).
    pub fn calls(&self) -> u64 {
        self.successful + self.failed
    }

    /// Mean response latency of the recorded calls, if any.
    pub fn mean_latency(&self) -> Option<Duration> {
        (self.calls() > 0).then(|| self.latency_total / self.calls().min(u32::MAX as u64) as u32)
    }
}

/// A state change, as sent to [`CircuitBreaker::subscribe`]rs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
}

/// How a call's result counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Counts as a success (slow if it took longer than `slow_call_duration`).
    Success,
    /// Counts as a failure.
    Failure,
    /// Not counted at all (e.g. a client error that says nothing about the dependency).
    Ignore,
}

/// A call the breaker refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker is {state:?}; call not permitted")]
pub struct Rejected {
    /// The state that refused.
    pub state: State,
}

/// The error of [`CircuitBreaker::call`].
#[derive(Debug, thiserror::Error)]
pub enum CallError<E> {
    /// The breaker refused the call; it was not made.
    #[error(transparent)]
    Rejected(Rejected),
    /// The call was made and failed.
    #[error("{0}")]
    Inner(E),
}

/// A configuration the builder refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid circuit breaker setting {setting}: {reason}")]
pub struct ConfigError {
    /// The setting.
    pub setting: &'static str,
    /// Why.
    pub reason: String,
}

/// Counters since the breaker was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Calls that reported success (including slow ones).
    pub successful: u64,
    /// Calls that reported failure.
    pub failed: u64,
    /// Calls slower than `slow_call_duration` (success or failure).
    pub slow: u64,
    /// Summed response latency of the recorded calls (successful + failed).
    pub latency_total: Duration,
    /// Calls refused.
    pub rejected: u64,
    /// Results ignored: classified `Ignore`, or late from an earlier period.
    pub ignored: u64,
    /// Failures in the current window.
    pub window_failures: u32,
    /// Slow calls in the current window.
    pub window_slow: u32,
    /// Calls in the current window.
    pub window_calls: u32,
}

#[derive(Clone, Debug)]
struct Config {
    failure_rate_threshold: f32,
    slow_call_rate_threshold: f32,
    slow_call_duration: Duration,
    window_size: u32,
    /// `Some((bucket, buckets))` for a time-based window.
    time_window: Option<(Duration, u32)>,
    minimum_calls: u32,
    wait_in_open: WaitInOpen,
    automatic_transition: bool,
    permitted_in_half_open: u32,
    success_threshold: Option<u32>,
    max_wait_in_half_open: Option<Duration>,
    clock: CallClock,
}

/// The clock that times calls (slow-call detection, time windows): raw readings and
/// differences, so the hot path does no conversion.
#[derive(Clone, Debug)]
enum CallClock {
    /// The TSC through `quanta` (~10 ns a read).
    Tsc(quanta::Clock),
    /// `tokio::time`, nanoseconds since the given origin (pausable in tests).
    Tokio(Instant),
}

impl CallClock {
    fn raw(&self) -> u64 {
        match self {
            CallClock::Tsc(c) => c.raw(),
            CallClock::Tokio(origin) => origin.elapsed().as_nanos() as u64,
        }
    }

    fn delta_as_nanos(&self, start: u64, end: u64) -> u64 {
        match self {
            CallClock::Tsc(c) => c.delta_as_nanos(start, end),
            CallClock::Tokio(_) => end.saturating_sub(start),
        }
    }

    fn delta(&self, start: u64, end: u64) -> Duration {
        Duration::from_nanos(self.delta_as_nanos(start, end))
    }
}

/// How long OPEN rejects calls, given how many times in a row the breaker has opened
/// (1 for the first opening after being CLOSED).
#[derive(Clone)]
pub enum WaitInOpen {
    /// Always the same.
    Fixed(Duration),
    /// `base · multiplier^(n−1)`, capped at `max`: a dependency that keeps failing its
    /// trials is probed less and less often.
    Backoff {
        /// The first wait.
        base: Duration,
        /// The longest wait.
        max: Duration,
        /// Growth per consecutive opening.
        multiplier: f64,
    },
    /// Any function of the consecutive-opening count (Polly's break duration generator).
    Custom(Arc<dyn Fn(u32) -> Duration + Send + Sync>),
}

impl std::fmt::Debug for WaitInOpen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitInOpen::Fixed(d) => f.debug_tuple("Fixed").field(d).finish(),
            WaitInOpen::Backoff {
                base,
                max,
                multiplier,
            } => f
                .debug_struct("Backoff")
                .field("base", base)
                .field("max", max)
                .field("multiplier", multiplier)
                .finish(),
            WaitInOpen::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl WaitInOpen {
    fn wait(&self, consecutive_opens: u32) -> Duration {
        match self {
            WaitInOpen::Fixed(d) => *d,
            WaitInOpen::Backoff {
                base,
                max,
                multiplier,
            } => {
                let n = consecutive_opens.saturating_sub(1).min(64) as i32;
                Duration::from_secs_f64(
                    (base.as_secs_f64() * multiplier.max(1.0).powi(n)).min(max.as_secs_f64()),
                )
            }
            WaitInOpen::Custom(f) => f(consecutive_opens),
        }
    }
}

/// Builds a [`CircuitBreaker`]. Defaults follow resilience4j's.
#[derive(Clone, Debug)]
pub struct Builder {
    config: Config,
}

impl Builder {
    /// Failure rate (percent of the window) at or above which the breaker opens.
    /// Default: 50.
    pub fn failure_rate_threshold(mut self, percent: f32) -> Self {
        self.config.failure_rate_threshold = percent;
        self
    }

    /// Slow-call rate (percent of the window) at or above which the breaker opens.
    /// Default: 100 (opens only if every call in a full window is slow).
    pub fn slow_call_rate_threshold(mut self, percent: f32) -> Self {
        self.config.slow_call_rate_threshold = percent;
        self
    }

    /// Calls taking at least this long count as slow. Default: 60 s.
    pub fn slow_call_duration(mut self, d: Duration) -> Self {
        self.config.slow_call_duration = d;
        self
    }

    /// A count-based window over the most recent `calls` calls. Default: 100 calls. At most
    /// 65 535.
    pub fn sliding_window_size(mut self, calls: u32) -> Self {
        self.config.window_size = calls;
        self.config.time_window = None;
        self
    }

    /// A time-based window over the last `window`, kept as `buckets` equal buckets (old
    /// traffic ages out one bucket at a time). Default: count-based (see
    /// [`Self::sliding_window_size`]).
    pub fn time_window(mut self, window: Duration, buckets: u32) -> Self {
        self.config.time_window = Some((window / buckets.max(1), buckets));
        self
    }

    /// Calls the window must hold before rates are evaluated. Default: 100 (capped at the
    /// window size).
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.config.minimum_calls = calls;
        self
    }

    /// How long OPEN rejects calls before trials are allowed. Default: 60 s.
    pub fn wait_in_open(mut self, d: Duration) -> Self {
        self.config.wait_in_open = WaitInOpen::Fixed(d);
        self
    }

    /// A wait in OPEN that grows with each consecutive opening (reset when the breaker
    /// closes), or any [`WaitInOpen`]. Default: fixed 60 s.
    pub fn wait_in_open_strategy(mut self, wait: WaitInOpen) -> Self {
        self.config.wait_in_open = wait;
        self
    }

    /// Move OPEN → HALF_OPEN as soon as the wait has passed, visible to [`CircuitBreaker::state`]
    /// and metrics without waiting for a call. Default: false (moves on the next call).
    pub fn automatic_transition_to_half_open(mut self, on: bool) -> Self {
        self.config.automatic_transition = on;
        self
    }

    /// Trial calls HALF_OPEN admits (a hard cap). Default: 10. At most 1000.
    pub fn permitted_calls_in_half_open(mut self, calls: u32) -> Self {
        self.config.permitted_in_half_open = calls;
        self
    }

    /// Close HALF_OPEN as soon as `n` trials have succeeded, and re-open as soon as `n`
    /// successes can no longer be reached (failsafe's success threshold). Slow successes
    /// count as successes here. Default: none (decide by the failure and slow-call rates
    /// once every trial has reported).
    pub fn success_threshold(mut self, n: u32) -> Self {
        self.config.success_threshold = Some(n);
        self
    }

    /// Re-open a HALF_OPEN breaker whose trials have not all reported after this long.
    /// Default: none (wait for every trial).
    pub fn max_wait_in_half_open(mut self, d: Duration) -> Self {
        self.config.max_wait_in_half_open = Some(d);
        self
    }

    /// The clock that times calls (slow-call detection, time windows): a TSC read (~10 ns)
    /// instead of `Instant::now()` (~24 ns), since every call reads it twice. See also
    /// [`Self::tokio_clock`] for paused-time tests. The waits in OPEN and HALF_OPEN always
    /// use `tokio::time`. Default: `quanta::Clock::new()`.
    pub fn clock(mut self, clock: quanta::Clock) -> Self {
        self.config.clock = CallClock::Tsc(clock);
        self
    }

    /// Time calls with `tokio::time` instead, so paused-time tests drive slow calls and
    /// time windows with `tokio::time::advance` (a few ns more per call). Default: off (the
    /// TSC clock of [`Self::clock`]).
    pub fn tokio_clock(mut self) -> Self {
        self.config.clock = CallClock::Tokio(Instant::now());
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<CircuitBreaker, ConfigError> {
        let c = &self.config;
        let bad = |setting, reason: &str| {
            Err(ConfigError {
                setting,
                reason: reason.to_string(),
            })
        };
        for (setting, v) in [
            ("failure_rate_threshold", c.failure_rate_threshold),
            ("slow_call_rate_threshold", c.slow_call_rate_threshold),
        ] {
            if !(v > 0.0 && v <= 100.0) {
                return bad(setting, "must be in (0, 100] percent");
            }
        }
        if c.window_size == 0 || c.window_size > u16::MAX as u32 {
            return bad("sliding_window_size", "must be in 1..=65535");
        }
        if let Some((bucket, buckets)) = c.time_window {
            if buckets == 0 || buckets > 1000 || bucket.is_zero() {
                return bad(
                    "time_window",
                    "needs 1..=1000 buckets and a positive window",
                );
            }
        }
        if c.minimum_calls == 0 {
            return bad("minimum_calls", "must be at least 1");
        }
        if c.permitted_in_half_open == 0 || c.permitted_in_half_open > MAX_TRIALS {
            return bad("permitted_calls_in_half_open", "must be in 1..=1000");
        }
        if c.success_threshold
            .is_some_and(|n| n == 0 || n > c.permitted_in_half_open)
        {
            return bad(
                "success_threshold",
                "must be in 1..=permitted_calls_in_half_open",
            );
        }
        if c.slow_call_duration.is_zero() {
            return bad("slow_call_duration", "must be positive");
        }
        let mut config = self.config;
        if config.time_window.is_none() {
            config.minimum_calls = config.minimum_calls.min(config.window_size);
        }
        let clock_origin = config.clock.raw();
        let (events, _) = broadcast::channel(64);
        Ok(CircuitBreaker {
            inner: Arc::new(Inner {
                window: ArcSwap::from_pointee(new_window(&config, 0, 0)),
                clock_origin,
                config,
                state: AtomicU64::new(pack(0, CLOSED, 0)),
                mode: AtomicU8::new(NORMAL),
                trials: AtomicU64::new(pack_trials(0, 0, 0, 0)),
                since_nanos: AtomicU64::new(0),
                since_generation: AtomicU32::new(0),
                open_wait_nanos: AtomicU64::new(0),
                consecutive_opens: AtomicU32::new(0),
                epoch: Instant::now(),
                counters: Default::default(),
                events,
            }),
        })
    }
}

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const MAX_TRIALS: u32 = 1000;

const NORMAL: u8 = 0;
const DISABLED: u8 = 1;
const FORCED_OPEN: u8 = 2;

/// A fresh window of generation `g`, starting at `now_nanos` (clock time since build).
fn new_window(config: &Config, g: u32, now_nanos: u64) -> Window {
    match config.time_window {
        None => Window::Count(CountWindow::new(config.window_size, g)),
        Some((bucket, buckets)) => Window::Time(TimeWindow::new(
            buckets,
            bucket.as_nanos() as u64,
            g,
            now_nanos,
        )),
    }
}

/// State word: generation (32 bits) | state (2 bits at 16) | half-open admissions (16 bits).
fn pack(generation: u32, state: u64, admitted: u32) -> u64 {
    ((generation as u64) << 32) | (state << 16) | admitted as u64
}

fn generation(w: u64) -> u32 {
    (w >> 32) as u32
}

fn state_code(w: u64) -> u64 {
    (w >> 16) & 0b11
}

fn admitted(w: u64) -> u32 {
    (w & 0xffff) as u32
}

/// Half-open trial results: generation (32) | reported (10) | failures (10) | slow (10).
fn pack_trials(generation: u32, reported: u32, failures: u32, slow: u32) -> u64 {
    ((generation as u64) << 32)
        | ((reported as u64) << 20)
        | ((failures as u64) << 10)
        | slow as u64
}

fn unpack_trials(w: u64) -> (u32, u32, u32, u32) {
    (
        (w >> 32) as u32,
        ((w >> 20) & 0x3ff) as u32,
        ((w >> 10) & 0x3ff) as u32,
        (w & 0x3ff) as u32,
    )
}

#[derive(Default)]
struct Counters {
    latency_nanos: AtomicU64,
    successful: AtomicU64,
    failed: AtomicU64,
    slow: AtomicU64,
    rejected: AtomicU64,
    ignored: AtomicU64,
}

struct Inner {
    config: Config,
    state: AtomicU64,
    mode: AtomicU8,
    /// Half-open trial results of the current half-open generation.
    trials: AtomicU64,
    /// When the current OPEN or HALF_OPEN period began (nanos since `epoch`), valid only
    /// when `since_generation` equals the state's generation.
    since_nanos: AtomicU64,
    since_generation: AtomicU32,
    /// The wait of the current OPEN period (valid with `since_generation`).
    open_wait_nanos: AtomicU64,
    /// Openings since the breaker last closed.
    consecutive_opens: AtomicU32,
    epoch: Instant,
    /// `config.clock` reading at build: windows count time from here.
    clock_origin: u64,
    window: ArcSwap<Window>,
    counters: Counters,
    events: broadcast::Sender<Transition>,
}

/// A circuit breaker; cheap to clone (clones share state).
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .finish()
    }
}

/// What a permit remembers about its admission.
#[derive(Clone, Copy, Debug)]
struct Admission {
    generation: u32,
    /// Raw clock reading at admission.
    started: u64,
    half_open: bool,
    disabled: bool,
}

/// Permission to make one call. Report its result with [`Permit::record`] (or the
/// `success`/`failure` shorthands); dropping it unreported gives a half-open slot back.
#[must_use = "report the call's outcome, or drop the permit to cancel"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    admission: Admission,
    reported: bool,
}

impl Permit<'_> {
    /// Reports the outcome; the call's duration decides whether it was slow.
    pub fn record(mut self, outcome: Outcome) {
        self.reported = true;
        self.breaker.finish(self.admission, outcome);
    }

    /// Shorthand for `record(Outcome::Success)`.
    pub fn success(self) {
        self.record(Outcome::Success)
    }

    /// Shorthand for `record(Outcome::Failure)`.
    pub fn failure(self) {
        self.record(Outcome::Failure)
    }

    /// A permit that owns a handle to the breaker (for futures that must be `'static`).
    pub fn into_owned(mut self) -> OwnedPermit {
        self.reported = true;
        OwnedPermit {
            breaker: self.breaker.clone(),
            admission: self.admission,
            reported: false,
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.cancel(self.admission);
        }
    }
}

/// A [`Permit`] that owns a handle to its breaker.
#[must_use = "report the call's outcome, or drop the permit to cancel"]
pub struct OwnedPermit {
    breaker: CircuitBreaker,
    admission: Admission,
    reported: bool,
}

impl OwnedPermit {
    /// Reports the outcome; the call's duration decides whether it was slow.
    pub fn record(mut self, outcome: Outcome) {
        self.reported = true;
        self.breaker.finish(self.admission, outcome);
    }
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.cancel(self.admission);
        }
    }
}

impl CircuitBreaker {
    /// A builder with resilience4j's defaults.
    pub fn builder() -> Builder {
        Builder {
            config: Config {
                failure_rate_threshold: 50.0,
                slow_call_rate_threshold: 100.0,
                slow_call_duration: Duration::from_secs(60),
                window_size: 100,
                time_window: None,
                minimum_calls: 100,
                wait_in_open: WaitInOpen::Fixed(Duration::from_secs(60)),
                automatic_transition: false,
                permitted_in_half_open: 10,
                success_threshold: None,
                max_wait_in_half_open: None,
                clock: CallClock::Tsc(quanta::Clock::new()),
            },
        }
    }

    fn now_nanos(&self) -> u64 {
        self.inner.epoch.elapsed().as_nanos() as u64
    }

    /// When the current OPEN / HALF_OPEN period of generation `g` began, if recorded yet.
    fn since(&self, g: u32) -> Option<u64> {
        (self.inner.since_generation.load(Ordering::Acquire) == g)
            .then(|| self.inner.since_nanos.load(Ordering::Acquire))
    }

    fn mark_since(&self, g: u32) {
        self.inner
            .since_nanos
            .store(self.now_nanos(), Ordering::Release);
        self.inner.since_generation.store(g, Ordering::Release);
    }

    fn emit(&self, from: State, to: State) {
        event!(info, ?from, ?to, "circuit breaker state change");
        let _ = self.inner.events.send(Transition { from, to });
    }

    fn reject(&self, state: State) -> Rejected {
        self.inner.counters.rejected.fetch_add(1, Ordering::Relaxed);
        Rejected { state }
    }

    /// Asks to make one call.
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        match self.inner.mode.load(Ordering::Acquire) {
            DISABLED => return Ok(self.permit(0, false, true)),
            FORCED_OPEN => return Err(self.reject(State::ForcedOpen)),
            _ => {}
        }
        let c = &self.inner.config;
        loop {
            let w = self.inner.state.load(Ordering::Acquire);
            let g = generation(w);
            match state_code(w) {
                CLOSED => return Ok(self.permit(g, false, false)),
                OPEN => {
                    if !self.try_half_open(w) {
                        return Err(self.reject(State::Open));
                    }
                }
                _ => {
                    if admitted(w) < c.permitted_in_half_open {
                        if self
                            .inner
                            .state
                            .compare_exchange(w, w + 1, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok()
                        {
                            return Ok(self.permit(g, true, false));
                        }
                        continue;
                    }
                    let expired = c.max_wait_in_half_open.is_some_and(|max| {
                        self.since(g)
                            .is_some_and(|t| self.now_nanos() >= t + max.as_nanos() as u64)
                    });
                    if expired && self.transition(w, OPEN) {
                        continue;
                    }
                    return Err(self.reject(State::HalfOpen));
                }
            }
        }
    }

    fn finish(&self, a: Admission, outcome: Outcome) {
        if !a.disabled {
            let clock = &self.inner.config.clock;
            let end = clock.raw();
            self.report(a.generation, outcome, clock.delta(a.started, end), end);
        }
    }

    /// Clock time since build, for time windows.
    fn clock_nanos(&self) -> u64 {
        let clock = &self.inner.config.clock;
        clock.delta_as_nanos(self.inner.clock_origin, clock.raw())
    }

    fn cancel(&self, a: Admission) {
        if a.half_open {
            self.give_back(a.generation);
        }
    }

    /// OPEN (state word `w`) → HALF_OPEN if the wait has passed; true if the breaker has
    /// moved on (by this call or another).
    fn try_half_open(&self, w: u64) -> bool {
        let g = generation(w);
        let waited = self.since(g).is_some_and(|t| {
            self.now_nanos() >= t + self.inner.open_wait_nanos.load(Ordering::Acquire)
        });
        if !waited {
            return false;
        }
        self.prepare_trials(g + 1);
        if self
            .inner
            .state
            .compare_exchange(
                w,
                pack(g + 1, HALF_OPEN, 0),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.mark_since(g + 1);
            self.emit(State::Open, State::HalfOpen);
        }
        true
    }

    fn permit(&self, generation: u32, half_open: bool, disabled: bool) -> Permit<'_> {
        let admission = Admission {
            generation,
            started: self.inner.config.clock.raw(),
            half_open,
            disabled,
        };
        Permit {
            breaker: self,
            admission,
            reported: false,
        }
    }

    /// Resets the trial counters for half-open generation `g` before it is entered, so no
    /// trial result can arrive before its counters exist. Never moves them backwards.
    fn prepare_trials(&self, g: u32) {
        let mut t = self.inner.trials.load(Ordering::Acquire);
        while unpack_trials(t).0 < g {
            match self.inner.trials.compare_exchange(
                t,
                pack_trials(g, 0, 0, 0),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(now) => t = now,
            }
        }
    }

    /// Moves from the state in `from` (HALF_OPEN or CLOSED) to `to` (OPEN or CLOSED) with
    /// the next generation. True if this call made the move.
    fn transition(&self, from: u64, to: u64) -> bool {
        let g = generation(from) + 1;
        if to == CLOSED {
            self.inner.window.store(Arc::new(new_window(
                &self.inner.config,
                g,
                self.clock_nanos(),
            )));
        }
        if self
            .inner
            .state
            .compare_exchange(from, pack(g, to, 0), Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        if to == OPEN {
            let opens = self.inner.consecutive_opens.fetch_add(1, Ordering::AcqRel) + 1;
            let wait = self.inner.config.wait_in_open.wait(opens);
            // Stored before `mark_since` publishes the generation, so readers see both.
            self.inner
                .open_wait_nanos
                .store(wait.as_nanos() as u64, Ordering::Release);
            self.mark_since(g);
        } else {
            self.inner.consecutive_opens.store(0, Ordering::Release);
        }
        let name = |code| match code {
            CLOSED => State::Closed,
            OPEN => State::Open,
            _ => State::HalfOpen,
        };
        self.emit(name(state_code(from)), name(to));
        true
    }

    fn rate(part: u32, whole: u32) -> f32 {
        part as f32 * 100.0 / whole.max(1) as f32
    }

    /// `end` is the raw clock reading when the call finished.
    fn report(&self, g: u32, outcome: Outcome, elapsed: Duration, end: u64) {
        let counters = &self.inner.counters;
        if outcome == Outcome::Ignore {
            counters.ignored.fetch_add(1, Ordering::Relaxed);
            self.give_back(g);
            return;
        }
        let c = &self.inner.config;
        let sample = Sample {
            failed: outcome == Outcome::Failure,
            slow: elapsed >= c.slow_call_duration,
        };
        let w = self.inner.state.load(Ordering::Acquire);
        if generation(w) != g {
            // Late: the breaker moved on since this call was permitted.
            counters.ignored.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if sample.failed {
            counters.failed.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.successful.fetch_add(1, Ordering::Relaxed);
        }
        if sample.slow {
            counters.slow.fetch_add(1, Ordering::Relaxed);
        }
        counters
            .latency_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        match state_code(w) {
            CLOSED => {
                let window = self.inner.window.load();
                if window.generation() != g {
                    return;
                }
                // Only a time window needs the time (a conversion per call otherwise wasted).
                let now_nanos = match **window {
                    Window::Time(_) => c.clock.delta_as_nanos(self.inner.clock_origin, end),
                    Window::Count(_) => 0,
                };
                if !window.record(sample, now_nanos) {
                    return;
                }
                let t = window.totals(now_nanos);
                if t.calls >= c.minimum_calls
                    && (Self::rate(t.failures, t.calls) >= c.failure_rate_threshold
                        || Self::rate(t.slow, t.calls) >= c.slow_call_rate_threshold)
                {
                    self.transition(w, OPEN);
                }
            }
            HALF_OPEN => self.report_trial(w, sample),
            _ => {}
        }
    }

    fn report_trial(&self, w: u64, sample: Sample) {
        let c = &self.inner.config;
        let g = generation(w);
        let mut t = self.inner.trials.load(Ordering::Acquire);
        let (reported, failures, slow) = loop {
            let (tg, reported, failures, slow) = unpack_trials(t);
            if tg != g || reported >= c.permitted_in_half_open {
                return;
            }
            let next = (
                reported + 1,
                failures + sample.failed as u32,
                slow + sample.slow as u32,
            );
            match self.inner.trials.compare_exchange(
                t,
                pack_trials(g, next.0, next.1, next.2),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break next,
                Err(now) => t = now,
            }
        };
        // Counts grow by one per report, so exactly one reporter reaches the deciding count.
        let decision = match c.success_threshold {
            Some(n) if reported - failures >= n => Some(CLOSED),
            Some(n) if failures > c.permitted_in_half_open - n => Some(OPEN),
            Some(_) => None,
            None if reported == c.permitted_in_half_open => {
                let trip = Self::rate(failures, reported) >= c.failure_rate_threshold
                    || Self::rate(slow, reported) >= c.slow_call_rate_threshold;
                Some(if trip { OPEN } else { CLOSED })
            }
            None => None,
        };
        if let Some(to) = decision {
            let current = self.inner.state.load(Ordering::Acquire);
            if generation(current) == g && state_code(current) == HALF_OPEN {
                self.transition(current, to);
            }
        }
    }

    /// Returns an unused half-open admission of generation `g`.
    fn give_back(&self, g: u32) {
        let mut w = self.inner.state.load(Ordering::Acquire);
        while generation(w) == g && state_code(w) == HALF_OPEN && admitted(w) > 0 {
            match self
                .inner
                .state
                .compare_exchange(w, w - 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(now) => w = now,
            }
        }
    }

    /// Runs `f` if permitted: `Ok` counts as success, `Err` as failure.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, CallError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_classified(f, |r: &Result<T, E>| {
            if r.is_ok() {
                Outcome::Success
            } else {
                Outcome::Failure
            }
        })
        .await
    }

    /// Runs `f` if permitted (`Ok` success, `Err` failure); a refused call runs `fallback`
    /// instead, given why it was refused.
    pub async fn call_or_fallback<F, Fut, G, GFut, T, E>(&self, f: F, fallback: G) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        G: FnOnce(Rejected) -> GFut,
        GFut: Future<Output = Result<T, E>>,
    {
        match self.try_acquire() {
            Ok(permit) => {
                let result = f().await;
                permit.record(if result.is_ok() {
                    Outcome::Success
                } else {
                    Outcome::Failure
                });
                result
            }
            Err(rejected) => fallback(rejected).await,
        }
    }

    /// Runs `f` if permitted; `classify` decides how its result counts.
    pub async fn call_classified<F, Fut, T, E, C>(
        &self,
        f: F,
        classify: C,
    ) -> Result<T, CallError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: FnOnce(&Result<T, E>) -> Outcome,
    {
        let permit = self.try_acquire().map_err(CallError::Rejected)?;
        let result = f().await;
        permit.record(classify(&result));
        result.map_err(CallError::Inner)
    }

    /// The current state. OPEN moves to HALF_OPEN on the next call, or here already with
    /// `automatic_transition_to_half_open`.
    pub fn state(&self) -> State {
        if self.inner.config.automatic_transition {
            let w = self.inner.state.load(Ordering::Acquire);
            if state_code(w) == OPEN && self.inner.mode.load(Ordering::Acquire) == NORMAL {
                self.try_half_open(w);
            }
        }
        match self.inner.mode.load(Ordering::Acquire) {
            DISABLED => State::Disabled,
            FORCED_OPEN => State::ForcedOpen,
            _ => match state_code(self.inner.state.load(Ordering::Acquire)) {
                CLOSED => State::Closed,
                OPEN => State::Open,
                _ => State::HalfOpen,
            },
        }
    }

    /// Counters and the current window's totals.
    pub fn metrics(&self) -> Metrics {
        let c = &self.inner.counters;
        let t = self.inner.window.load().totals(self.clock_nanos());
        Metrics {
            successful: c.successful.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            slow: c.slow.load(Ordering::Relaxed),
            latency_total: Duration::from_nanos(c.latency_nanos.load(Ordering::Relaxed)),
            rejected: c.rejected.load(Ordering::Relaxed),
            ignored: c.ignored.load(Ordering::Relaxed),
            window_failures: t.failures,
            window_slow: t.slow,
            window_calls: t.calls,
        }
    }

    /// State transitions from now on (a lagging receiver loses the oldest).
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.inner.events.subscribe()
    }

    /// Rejects every call until [`Self::reset`].
    pub fn force_open(&self) {
        let from = self.state();
        self.inner.mode.store(FORCED_OPEN, Ordering::Release);
        self.emit(from, State::ForcedOpen);
    }

    /// Permits every call and records nothing until [`Self::reset`].
    pub fn disable(&self) {
        let from = self.state();
        self.inner.mode.store(DISABLED, Ordering::Release);
        self.emit(from, State::Disabled);
    }

    /// Back to CLOSED with an empty window and normal operation.
    pub fn reset(&self) {
        let from = self.state();
        let w = self.inner.state.load(Ordering::Acquire);
        let g = generation(w) + 1;
        self.inner.window.store(Arc::new(new_window(
            &self.inner.config,
            g,
            self.clock_nanos(),
        )));
        self.inner
            .state
            .store(pack(g, CLOSED, 0), Ordering::Release);
        self.inner.mode.store(NORMAL, Ordering::Release);
        self.emit(from, State::Closed);
    }
}
