//! The circuit breaker's state machine.
//!
//! The whole state is one `AtomicU64`: a 3-bit state tag, a 21-bit generation (incremented on
//! every transition) and a 40-bit payload. While open, the payload is the end of the open state
//! in whole milliseconds since the breaker was made (34 years; counted from the breaker's
//! creation, not from its clock's origin, so that a clock of any origin fits, one counting from
//! the Unix epoch included); while half-open, it is the probe counters (issued, completed, failed, slow: 10 bits each). Every transition is one
//! compare-and-swap from the exact word that was observed, so exactly one caller wins it; a
//! permit remembers the generation it was issued in, and an outcome recorded in another
//! generation is ignored.
//!
//! Keeping the probes in the state word means that entering the half-open state starts them at
//! zero in the same compare-and-swap: no second word whose generation has to be compared with
//! the state's, so no sequence of transitions (generations wrap around after 2^21 of them) can
//! leave a caller spinning on a word it takes for newer, or find a wrapped generation's probes
//! all taken.

use std::{
    fmt,
    panic::{catch_unwind, resume_unwind, AssertUnwindSafe},
    sync::{Arc, PoisonError},
    time::Duration,
};

use super::error::CircuitOpen;
use super::{
    config::{BreakerBuilder, Config},
    sync::{AtomicU32, AtomicU64, Mutex, Ordering},
    window::{Window, WindowCounts},
};
use crate::telemetry::{BreakerMetrics, CallOutcome, Meter};

const TAG_BITS: u32 = 3;
const GEN_BITS: u32 = 21;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;
const UNTIL_SHIFT: u32 = TAG_BITS + GEN_BITS;
const MAX_UNTIL_MS: u64 = (1 << (64 - UNTIL_SHIFT)) - 1;

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const FORCED_OPEN: u64 = 3;
const DISABLED: u64 = 4;

const NANOS_PER_MS: u64 = 1_000_000;

/// The state of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Calls flow; outcomes are recorded in the sliding window.
    Closed,
    /// Calls are rejected until the open duration has passed.
    Open,
    /// A fixed number of probe calls is let through; their outcomes decide.
    HalfOpen,
    /// Set by an operator ([`CircuitBreaker::force_open`]): every call is rejected until
    /// [`CircuitBreaker::reset`].
    ForcedOpen,
    /// Set by an operator ([`CircuitBreaker::disable`]): every call flows, nothing is recorded.
    Disabled,
}

impl State {
    fn from_tag(tag: u64) -> Self {
        match tag {
            CLOSED => State::Closed,
            OPEN => State::Open,
            HALF_OPEN => State::HalfOpen,
            FORCED_OPEN => State::ForcedOpen,
            _ => State::Disabled,
        }
    }

    /// The position in the order closed, open, half-open, forced open, disabled.
    pub(crate) fn index(self) -> usize {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
            State::ForcedOpen => 3,
            State::Disabled => 4,
        }
    }

    /// A short lowercase name: `closed`, `open`, `half_open`, `forced_open`, `disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state transition, as given to the [`on_transition`](BreakerBuilder::on_transition) callback.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Transition {
    /// The breaker's name, if it has one.
    pub name: Option<Arc<str>>,
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// When entering [`State::Open`]: for how long.
    pub open_for: Option<Duration>,
    /// The window's counts that led to the transition (zero when not decided by the window).
    pub counts: WindowCounts,
}

/// The outcome of a call, as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call worked (a slow success still counts toward the slow-call rate).
    Success,
    /// The call failed.
    Failure,
    /// Not counted at all, as if the call had not been made (a half-open probe slot is
    /// given back).
    Ignored,
}

/// Whether the word [`Inner::armed`] says armed.
#[inline]
fn is_armed(word: u64) -> bool {
    word & 1 == 1
}

#[inline]
fn tag(word: u64) -> u64 {
    word & ((1 << TAG_BITS) - 1)
}

#[inline]
fn generation(word: u64) -> u64 {
    (word >> TAG_BITS) & GEN_MASK
}

#[inline]
fn until_ms(word: u64) -> u64 {
    word >> UNTIL_SHIFT
}

#[inline]
fn pack(tag: u64, generation: u64, until_ms: u64) -> u64 {
    tag | ((generation & GEN_MASK) << TAG_BITS) | (until_ms.min(MAX_UNTIL_MS) << UNTIL_SHIFT)
}

/// The half-open payload of the state word: issued | done | failed | slow (10 bits each).
mod probes {
    const F: u32 = 10;
    const M: u64 = (1 << F) - 1;
    pub(super) const ISSUED: u32 = super::UNTIL_SHIFT;
    pub(super) const DONE: u32 = ISSUED + F;
    pub(super) const FAILED: u32 = DONE + F;
    pub(super) const SLOW: u32 = FAILED + F;

    #[inline]
    pub(super) fn field(w: u64, shift: u32) -> u64 {
        (w >> shift) & M
    }
}

pub(crate) struct Inner {
    state: Padded<AtomicU64>,
    /// Trips in a row (for the growing open duration); reset when the breaker closes.
    trips: AtomicU32,
    /// Whether the last counts summed showed a rate at or above its threshold (short of the
    /// minimum number of calls): "armed", when the word is odd. Only then can a plain success
    /// trip the breaker, so a success skips summing the window otherwise; see `record`.
    ///
    /// Every change makes the word larger (arming adds 2 to it made odd, disarming adds 1 to an
    /// odd word), so that two callers that both summed cannot store their verdicts out of
    /// order. A plain flag could be left stale: a success sums (a rate under its threshold),
    /// then a failure sums (the rate at its threshold) and stores, and the success's older
    /// `false` stored last hid the newer `true`; the success that makes the minimum number of
    /// calls then skipped summing, and the trip waited for the next failure. Now:
    ///
    /// - a caller reads the word (acquire) before it records and sums, and passes what it read
    ///   to `judge_closed`;
    /// - a caller whose sum is over a threshold arms with a read-modify-write that always makes
    ///   the word larger, armed or not;
    /// - a caller whose sum is under the thresholds disarms only with a compare-and-swap from
    ///   the (armed) word it read before summing.
    ///
    /// A disarm that succeeds read the word after every arm earlier in its modification order,
    /// so each of those arming callers' sums happens before the disarming caller's sum, which
    /// therefore counts their outcomes: the disarm is the newer verdict. A disarm that fails
    /// leaves the breaker armed, which at worst costs the next success a sum (which disarms).
    /// The closed success path still only loads the word; arming and disarming, the paths that
    /// summed anyway, pay the read-modify-write.
    ///
    /// Left as it was: a plain success that read the word unarmed just before a concurrent
    /// failure's sum armed it (and whose call that sum missed) does not sum either; the next
    /// call finds the breaker armed and sums. Closing that gap would cost every success a full
    /// fence between its add and its read of the word.
    armed: AtomicU64,
    /// The transitions waiting for their turn to be logged and given to the callback.
    deliveries: Mutex<Deliveries>,
    window: Window,
    /// The clock's reading when the breaker was made, rounded down to a whole millisecond
    /// (nanoseconds): the open end in the state word counts from here.
    origin: u64,
    name: Option<Arc<str>>,
    pub(crate) config: Arc<Config>,
    pub(crate) metrics: BreakerMetrics,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let state = State::from_tag(tag(self.state.0.load(Ordering::Relaxed)));
        self.metrics.dropped(state.index());
    }
}

#[derive(Debug)]
#[repr(align(128))]
struct Padded<T>(T);

/// A circuit breaker: a cheap handle (clones share the state).
///
/// Ask for a [`Permit`] before a call with [`try_acquire`](Self::try_acquire), and report the
/// call's outcome through it. In the closed state both are a few atomic operations, no lock.
///
/// ```
/// use std::time::Duration;
/// use tower_5xx::breaker::{CircuitBreaker, ManualClock, SlidingWindow, State};
///
/// let clock = ManualClock::new();
/// let breaker = CircuitBreaker::builder()
///     .minimum_calls(4)
///     .sliding_window(SlidingWindow::Count(10))
///     .open_duration(Duration::from_secs(2))
///     .half_open_probes(1)
///     .clock(clock.clone())
///     .build()
///     .unwrap();
///
/// for _ in 0..4 {
///     breaker.try_acquire().unwrap().failure();
/// }
/// assert_eq!(breaker.state(), State::Open);
/// let open = breaker.try_acquire().unwrap_err();
/// assert_eq!(open.retry_after(), Duration::from_secs(2));
///
/// clock.advance(Duration::from_secs(2));
/// let probe = breaker.try_acquire().unwrap(); // half-open: one probe
/// assert!(breaker.try_acquire().is_err());    // the rest wait
/// probe.success();
/// assert_eq!(breaker.state(), State::Closed);
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .field("window", &self.window_counts())
            .finish()
    }
}

impl Default for CircuitBreaker {
    /// A breaker with the defaults listed on [`BreakerBuilder::new`].
    fn default() -> Self {
        Self::builder()
            .build()
            .expect("the default breaker settings are valid")
    }
}

impl CircuitBreaker {
    /// A builder with the defaults listed on [`BreakerBuilder::new`].
    pub fn builder() -> BreakerBuilder {
        BreakerBuilder::new()
    }

    pub(crate) fn from_config(config: Arc<Config>) -> Self {
        let name = config.name.clone();
        Self::with_name(config, name)
    }

    /// A breaker named `name` in logs and transitions; its metrics carry the configured name
    /// only (a keyed breaker's name includes its key, an unbounded label value).
    pub(crate) fn with_name(config: Arc<Config>, name: Option<Arc<str>>) -> Self {
        let origin = config.clock.nanos() / NANOS_PER_MS * NANOS_PER_MS;
        Self {
            inner: Arc::new(Inner {
                state: Padded(AtomicU64::new(pack(CLOSED, 0, 0))),
                trips: AtomicU32::new(0),
                armed: AtomicU64::new(0),
                // The first transition enters generation 1.
                deliveries: Mutex::new(Deliveries {
                    next: 1,
                    pending: Vec::new(),
                    busy: false,
                }),
                window: Window::new(config.window),
                origin,
                metrics: BreakerMetrics::new(Meter::new(config.name.clone())),
                name,
                config,
            }),
        }
    }

    #[inline]
    fn now_nanos(&self) -> u64 {
        self.inner.config.clock.nanos()
    }

    /// When the open state of word `s` ends, on the breaker's clock (nanoseconds).
    #[inline]
    fn open_end(&self, s: u64) -> u64 {
        self.inner.origin.saturating_add(until_ms(s) * NANOS_PER_MS)
    }

    /// The open-end payload for an open state that starts at `now` and lasts `d`: milliseconds
    /// since the breaker's origin, rounded down. Never past `now + d`: a client told by a
    /// server's `Retry-After` to come back at `now + d` (and the open time is then that
    /// `Retry-After`) finds the breaker letting probes through when it does, whatever the phase
    /// of its timer's milliseconds. (Rounded up, the open end could be up to a millisecond after
    /// the invited instant, and the invited retry was refused.)
    fn until_from(&self, now: u64, d: Duration) -> u64 {
        let d = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        now.saturating_add(d).saturating_sub(self.inner.origin) / NANOS_PER_MS
    }

    /// The open time to report and the open-end payload for an open state that starts at `now`
    /// and lasts `d` (see [`until_from`](Self::until_from)). A positive `d` under a millisecond
    /// would round to an end at or before `now` (open for no time, the next call a probe): it
    /// opens for at least a whole millisecond, its end rounded up. A zero `d` opens for no time.
    fn open_span(&self, now: u64, d: Duration) -> (Duration, u64) {
        const MS: Duration = Duration::from_millis(1);
        if !d.is_zero() && d < MS {
            let since = now.saturating_sub(self.inner.origin);
            return (
                MS,
                since.saturating_add(NANOS_PER_MS).div_ceil(NANOS_PER_MS),
            );
        }
        (d, self.until_from(now, d))
    }

    /// The current state. An open breaker whose time is up reports [`State::Open`] until the
    /// next [`try_acquire`](Self::try_acquire) moves it to half-open.
    pub fn state(&self) -> State {
        State::from_tag(tag(self.inner.state.0.load(Ordering::Acquire)))
    }

    /// The counts of the sliding window now (meaningful in the closed state).
    pub fn window_counts(&self) -> WindowCounts {
        self.inner.window.counts(self.now_nanos())
    }

    /// The breaker's name, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.inner.name.as_deref()
    }

    /// While open, how long until the breaker lets probes through; `None` in other states.
    pub fn remaining_open(&self) -> Option<Duration> {
        let s = self.inner.state.0.load(Ordering::Acquire);
        (tag(s) == OPEN)
            .then(|| Duration::from_nanos(self.open_end(s).saturating_sub(self.now_nanos())))
    }

    /// Asks to make a call. `Ok` holds a [`Permit`] to report the outcome through; `Err` says
    /// the breaker is open (or half-open with all probes out) and for how long.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit, CircuitOpen> {
        let result = self.acquire();
        if result.is_err() {
            self.inner.metrics.call(CallOutcome::Rejected);
        }
        result
    }

    /// [`try_acquire`](Self::try_acquire)'s common case, inlined into the caller: the permit
    /// of a closed breaker that does not time its calls. `None` leaves the decision to
    /// `try_acquire`.
    #[inline]
    pub(crate) fn try_acquire_closed(&self) -> Option<Permit> {
        let s = self.inner.state.0.load(Ordering::Acquire);
        (tag(s) == CLOSED && !self.inner.config.counts_slow_calls())
            .then(|| Permit::new(self.clone(), generation(s), Kind::Normal, 0))
    }

    #[inline]
    fn acquire(&self) -> Result<Permit, CircuitOpen> {
        let inner = &*self.inner;
        let s = inner.state.0.load(Ordering::Acquire);
        if tag(s) == CLOSED {
            // The common case reads the clock only if it times calls (slow-call detection on);
            // the outcome's bucket is placed by the clock read when it is recorded.
            let start = if inner.config.counts_slow_calls() {
                self.now_nanos()
            } else {
                0
            };
            return Ok(Permit::new(
                self.clone(),
                generation(s),
                Kind::Normal,
                start,
            ));
        }
        let now = self.now_nanos();
        loop {
            let s = inner.state.0.load(Ordering::Acquire);
            let g = generation(s);
            match tag(s) {
                CLOSED => return Ok(Permit::new(self.clone(), g, Kind::Normal, now)),
                DISABLED => return Ok(Permit::new(self.clone(), g, Kind::Untracked, now)),
                FORCED_OPEN => {
                    return Err(CircuitOpen::new(
                        State::ForcedOpen,
                        inner.config.open_duration,
                        Duration::from_nanos(now),
                    ))
                }
                OPEN => {
                    let until = self.open_end(s);
                    if now < until {
                        return Err(CircuitOpen::new(
                            State::Open,
                            Duration::from_nanos(until - now),
                            Duration::from_nanos(now),
                        ));
                    }
                    // The open time is up: half-open, with fresh probe counters, and this
                    // caller takes the first probe in the same step.
                    let next = pack(HALF_OPEN, g + 1, 0) + (1 << probes::ISSUED);
                    if inner
                        .state
                        .0
                        .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        self.emit(
                            generation(next),
                            State::Open,
                            State::HalfOpen,
                            None,
                            WindowCounts::default(),
                        );
                        return Ok(Permit::new(
                            self.clone(),
                            generation(next),
                            Kind::Probe,
                            now,
                        ));
                    }
                }
                _ => {
                    // Half-open: take a probe slot if one is free.
                    if probes::field(s, probes::ISSUED) >= u64::from(inner.config.half_open_probes)
                    {
                        return Err(CircuitOpen::new(
                            State::HalfOpen,
                            Duration::ZERO,
                            Duration::from_nanos(now),
                        ));
                    }
                    let next = s + (1 << probes::ISSUED);
                    if inner
                        .state
                        .0
                        .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Ok(Permit::new(self.clone(), g, Kind::Probe, now));
                    }
                }
            }
            // A compare-and-swap lost to another caller's: the state moved on, look again.
        }
    }

    /// Gives back the probe slot of an unreported probe permit of generation `g`.
    fn release_probe(&self, g: u64) {
        let _ = self
            .inner
            .state
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (tag(s) == HALF_OPEN
                    && generation(s) == g
                    && probes::field(s, probes::ISSUED) > probes::field(s, probes::DONE))
                .then(|| s - (1 << probes::ISSUED))
            });
    }

    /// Records the outcome of a permit's call, reported at `now` (read here if `None`, and
    /// only if needed) for a call started at `start`.
    fn record(
        &self,
        permit_gen: u64,
        kind: Kind,
        outcome: Outcome,
        now: Option<u64>,
        start: u64,
        hint: Option<Duration>,
    ) {
        let inner = &*self.inner;
        let config = &*inner.config;
        let now = || now.unwrap_or_else(|| self.now_nanos());
        if outcome == Outcome::Ignored {
            if kind == Kind::Probe {
                self.release_probe(permit_gen);
            }
            return;
        }
        let failure = outcome == Outcome::Failure;
        // Off: never slow, even with a clock reading at the top of its range (a permit of a
        // breaker that does not time calls has no start, and its "latency" is the clock's
        // reading).
        let slow =
            config.counts_slow_calls() && now().saturating_sub(start) >= config.slow_call_nanos;
        inner.metrics.call(match (failure, slow) {
            (true, _) => CallOutcome::Failure,
            (false, true) => CallOutcome::Slow,
            (false, false) => CallOutcome::Success,
        });
        let s = inner.state.0.load(Ordering::Acquire);
        if generation(s) != permit_gen {
            return;
        }
        match (kind, tag(s)) {
            (Kind::Normal, CLOSED) => {
                // A fast success adds a call and no failure: it lowers both rates. It can only
                // trip the breaker if the rates already reached their thresholds short of the
                // minimum number of calls ("armed"), or if a bucket just dropped out of the
                // window (which can raise them). Otherwise summing the buckets is skipped: the
                // result is the same as summing on every call, at a fraction of the cost.
                // Read before the sum, for `judge_closed` (see `Inner::armed`).
                let armed = inner.armed.load(Ordering::Acquire);
                let need = failure || slow || is_armed(armed);
                // A count window places the outcome without the clock's reading.
                let at = if config.clock_free_closed() { 0 } else { now() };
                if let Some(c) = inner.window.record(at, failure, slow, need) {
                    self.judge_closed(s, c, armed, now, hint);
                }
            }
            (Kind::Probe, HALF_OPEN) => self.record_probe(s, failure, slow, now(), hint),
            _ => {}
        }
    }

    /// The common case, inlined into the caller: a success reported through a permit of a
    /// closed breaker that does not time its calls and is not armed (so the success cannot trip
    /// it unless a bucket drops out of the window). Does what [`record`](Self::record) would,
    /// without its generality; `false` leaves the outcome to `record`.
    #[inline]
    fn record_closed_success(&self, permit_gen: u64) -> bool {
        let inner = &*self.inner;
        let config = &*inner.config;
        // Read before the sum, for `judge_closed` (see `Inner::armed`). Relaxed: past this
        // check the word read is unarmed, and `judge_closed` disarms only from an armed one.
        let armed = inner.armed.load(Ordering::Relaxed);
        if config.counts_slow_calls() || is_armed(armed) {
            return false;
        }
        inner.metrics.call(CallOutcome::Success);
        let s = inner.state.0.load(Ordering::Acquire);
        // Issued in another generation, or the breaker is no longer closed: not counted.
        if tag(s) != CLOSED || generation(s) != permit_gen {
            return true;
        }
        let at = if config.clock_free_closed() {
            0
        } else {
            self.now_nanos()
        };
        if let Some(c) = inner.window.record(at, false, false, false) {
            self.judge_closed(s, c, armed, || self.now_nanos(), None);
        }
        true
    }

    /// Decides on the counts `c` summed by an outcome recorded in the closed word `s`: trips the
    /// breaker if a rate reached its threshold with enough calls, else notes whether a rate is
    /// at its threshold short of the minimum number of calls ("armed"). `armed` is the word
    /// [`Inner::armed`] as the caller read it before recording and summing.
    #[inline(never)]
    fn judge_closed(
        &self,
        s: u64,
        c: WindowCounts,
        armed: u64,
        now: impl FnOnce() -> u64,
        hint: Option<Duration>,
    ) {
        let inner = &*self.inner;
        let config = &*inner.config;
        let over = Config::reaches(c.failures, c.calls, config.failure_ppm)
            || Config::reaches(c.slow_calls, c.calls, config.slow_ppm);
        if over && c.calls >= config.minimum_calls {
            let _ = self.open_from(s, 1, now(), hint, c);
        } else if over {
            // Always a larger word, armed already or not: a caller about to disarm from an
            // older sum fails its compare-and-swap.
            let _ = inner
                .armed
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |w| {
                    Some((w | 1).wrapping_add(2))
                });
        } else if is_armed(armed) {
            // Only from the word read before this sum: no arm came in between.
            let _ = inner.armed.compare_exchange(
                armed,
                armed.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// Counts a probe's outcome into the half-open word `s` (of the probe's generation); the
    /// last probe decides: open again, or closed.
    fn record_probe(
        &self,
        mut s: u64,
        failure: bool,
        slow: bool,
        now: u64,
        hint: Option<Duration>,
    ) {
        let inner = &*self.inner;
        let config = &*inner.config;
        let g = generation(s);
        let n = u64::from(config.half_open_probes);
        let delta = (1 << probes::DONE)
            | (u64::from(failure) << probes::FAILED)
            | (u64::from(slow) << probes::SLOW);
        loop {
            // Never more outcomes than probes issued (a permit kept across 2^21 transitions
            // could otherwise land in a later half-open state of the same generation).
            if tag(s) != HALF_OPEN
                || generation(s) != g
                || probes::field(s, probes::DONE) >= probes::field(s, probes::ISSUED)
            {
                return;
            }
            let w = s + delta;
            if probes::field(w, probes::DONE) < n {
                match inner
                    .state
                    .0
                    .compare_exchange(s, w, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return,
                    Err(actual) => {
                        s = actual;
                        continue;
                    }
                }
            }
            let c = WindowCounts {
                calls: n,
                failures: probes::field(w, probes::FAILED),
                slow_calls: probes::field(w, probes::SLOW),
            };
            if Config::reaches(c.failures, n, config.failure_ppm)
                || Config::reaches(c.slow_calls, n, config.slow_ppm)
            {
                let trips = inner.trips.load(Ordering::Acquire).saturating_add(1);
                if self.open_from(s, trips, now, hint, c) {
                    return;
                }
            } else {
                inner.window.reset(now);
                let next = pack(CLOSED, g + 1, 0);
                if inner
                    .state
                    .0
                    .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    inner.trips.store(0, Ordering::Release);
                    self.emit(generation(next), State::HalfOpen, State::Closed, None, c);
                    return;
                }
            }
            // Another probe's outcome or release came first: count again from the new word.
            s = inner.state.0.load(Ordering::Acquire);
        }
    }

    /// Opens from the observed word `s` (closed or half-open) for the `trips`-th trip in a row;
    /// whether this call made the transition.
    fn open_from(
        &self,
        s: u64,
        trips: u32,
        now: u64,
        hint: Option<Duration>,
        c: WindowCounts,
    ) -> bool {
        let config = &*self.inner.config;
        let duration = hint
            .map(|d| d.min(config.max_open_duration))
            .unwrap_or_else(|| config.open_duration_for(trips));
        let (duration, until) = self.open_span(now, duration);
        let next = pack(OPEN, generation(s) + 1, until);
        if self
            .inner
            .state
            .0
            .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.inner.trips.store(trips, Ordering::Release);
            let from = State::from_tag(tag(s));
            self.emit(generation(next), from, State::Open, Some(duration), c);
            true
        } else {
            false
        }
    }

    /// Opens the breaker now for `duration` (capped by the
    /// [maximum open duration](BreakerBuilder::open_duration_growth)), whatever the window says:
    /// for a client told by a server's `503` + `Retry-After` to come back later.
    ///
    /// An open breaker whose remaining time is already at least that long, and the operator
    /// states (forced open, disabled), are left as they are. A positive `duration` under a
    /// millisecond opens it for at least a millisecond (the open end is kept in whole
    /// milliseconds); a zero one opens it for no time (the next call is a half-open probe).
    pub fn trip_for(&self, duration: Duration) {
        let inner = &*self.inner;
        let now = self.now_nanos();
        let (duration, until) = self.open_span(now, duration.min(inner.config.max_open_duration));
        loop {
            let s = inner.state.0.load(Ordering::Acquire);
            let trips = match tag(s) {
                CLOSED => 1,
                HALF_OPEN => inner.trips.load(Ordering::Acquire).saturating_add(1),
                OPEN if until_ms(s) < until => inner.trips.load(Ordering::Acquire),
                _ => return,
            };
            let next = pack(OPEN, generation(s) + 1, until);
            if inner
                .state
                .0
                .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                inner.trips.store(trips, Ordering::Release);
                self.emit(
                    generation(next),
                    State::from_tag(tag(s)),
                    State::Open,
                    Some(duration),
                    WindowCounts::default(),
                );
                return;
            }
        }
    }

    /// Operator: reject every call until [`reset`](Self::reset). On a breaker already forced
    /// open, a transition is neither reported nor counted.
    pub fn force_open(&self) {
        self.set_operator_state(FORCED_OPEN);
    }

    /// Operator: let every call through and record nothing until [`reset`](Self::reset). On a
    /// breaker already disabled, a transition is neither reported nor counted.
    pub fn disable(&self) {
        self.set_operator_state(DISABLED);
    }

    /// Operator: back to closed with an empty window, from any state. A closed breaker only
    /// has its window emptied: no transition is reported or counted.
    pub fn reset(&self) {
        self.set_operator_state(CLOSED);
    }

    fn set_operator_state(&self, to: u64) {
        let inner = &*self.inner;
        if to == CLOSED {
            inner.window.reset(self.now_nanos());
        }
        let prev = loop {
            let s = inner.state.0.load(Ordering::Acquire);
            let next = pack(to, generation(s) + 1, 0);
            if inner
                .state
                .0
                .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                break s;
            }
        };
        inner.trips.store(0, Ordering::Release);
        // Resetting a closed breaker (or forcing open a forced-open one) still empties the
        // window and starts a new generation, but it is no transition: nothing to report (the
        // generation is passed over in the order of deliveries).
        let g = (generation(prev) + 1) & GEN_MASK;
        if tag(prev) != to {
            self.emit(
                g,
                State::from_tag(tag(prev)),
                State::from_tag(to),
                None,
                WindowCounts::default(),
            );
        } else {
            self.deliver(g, None);
        }
    }

    /// Reports the transition that moved the state word to generation `g`: counted in the
    /// metrics at once, logged and given to the callback in the order of generations (see
    /// [`deliver`](Self::deliver)).
    fn emit(
        &self,
        g: u64,
        from: State,
        to: State,
        open_for: Option<Duration>,
        counts: WindowCounts,
    ) {
        self.inner.metrics.transition(from.index(), to.index());
        self.deliver(
            g,
            Some((
                Transition {
                    name: self.inner.name.clone(),
                    from,
                    to,
                    open_for,
                    counts,
                },
                // Logged and given to the callback in the span of the call that made it, also
                // when another thread delivers it.
                tracing::Span::current(),
            )),
        );
    }

    /// Queues what generation `g` of the state word brought (`None`: a generation started
    /// without a transition) and, unless another thread is delivering, delivers every queued
    /// transition whose turn it is, in the order of generations (the order the state word took
    /// them), one at a time and outside the lock. It stops at a generation not queued yet (its
    /// thread, between its compare-and-swap and this call, delivers from there when it gets
    /// here). A transition queued while a thread delivers (by another thread, or by a callback
    /// that changes the state) is delivered by that thread, after the callback it is in.
    fn deliver(&self, g: u64, transition: Option<(Transition, tracing::Span)>) {
        let lock = || {
            self.inner
                .deliveries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        let mut d = lock();
        d.pending.push((g, transition));
        if d.busy {
            return;
        }
        d.busy = true;
        // A callback (or the log) that panics does not stop the delivery: the transitions queued
        // behind its own are delivered first, then its panic goes on unwinding this thread (the
        // first one, if several panic). Left to unwind at once, it stranded them until some
        // later transition, if any.
        let mut panicked = None;
        loop {
            let next = d.next;
            let Some(i) = d.pending.iter().position(|(g, _)| *g == next) else {
                break;
            };
            let (_, transition) = d.pending.swap_remove(i);
            d.next = (next + 1) & GEN_MASK;
            if let Some((t, span)) = transition {
                drop(d);
                let call = || span.in_scope(|| self.log_and_call(&t));
                if let Err(panic) = catch_unwind(AssertUnwindSafe(call)) {
                    panicked.get_or_insert(panic);
                }
                d = lock();
            }
        }
        // Under the same lock as the look for the next: a thread queuing it now finds the
        // queue idle and delivers it.
        d.busy = false;
        drop(d);
        if let Some(panic) = panicked {
            resume_unwind(panic);
        }
    }

    fn log_and_call(&self, t: &Transition) {
        let config = &*self.inner.config;
        let (from, to, counts) = (t.from, t.to, t.counts);
        let name = self.inner.name.as_deref().unwrap_or("");
        let open_ms = t.open_for.map(|d| d.as_millis() as u64);
        match to {
            State::Open | State::ForcedOpen => tracing::warn!(
                breaker = name, %from, %to, open_ms, calls = counts.calls,
                failures = counts.failures, slow_calls = counts.slow_calls,
                "circuit breaker opened"
            ),
            _ => tracing::info!(
                breaker = name, %from, %to, calls = counts.calls,
                failures = counts.failures, slow_calls = counts.slow_calls,
                "circuit breaker state changed"
            ),
        }
        if let Some(callback) = &config.on_transition {
            callback(t);
        }
    }
}

/// The transitions made and not yet logged and given to the callback: they are delivered in
/// the order of the state word's generations, whichever thread gets to the lock first.
#[derive(Debug)]
struct Deliveries {
    /// The generation delivered next (masked like the state word's).
    next: u64,
    /// Queued, not delivered yet: (generation, transition and the `tracing` span of the call
    /// that made it, or `None` for a generation started without one). A few at most: one per
    /// thread between its compare-and-swap and its turn.
    pending: Vec<(u64, Option<(Transition, tracing::Span)>)>,
    /// Whether a thread is delivering.
    busy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Issued while closed: the outcome goes to the window.
    Normal,
    /// A half-open probe.
    Probe,
    /// Issued while disabled: nothing is recorded.
    Untracked,
}

/// Permission to make one call; report its outcome with [`success`](Self::success),
/// [`failure`](Self::failure) or [`record`](Self::record).
///
/// When the breaker counts slow calls, the latency is measured from
/// [`CircuitBreaker::try_acquire`] to the report, on the breaker's clock. Dropping a permit
/// without reporting counts nothing (a half-open probe slot is given back, so another caller
/// can probe), also while the thread panics: a panic elsewhere (the handler after the call, a
/// sibling branch of a `select!`) says nothing about the dependency. A caller that wants a
/// panic of the call itself to count reports it, as [`Breaker`](super::Breaker) does: a panic
/// unwinding out of its inner service's poll is a [failure](Self::failure).
#[must_use = "report the call's outcome through the permit"]
pub struct Permit {
    breaker: CircuitBreaker,
    generation: u64,
    kind: Kind,
    start: u64,
    done: bool,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("kind", &self.kind)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Permit {
    #[inline]
    fn new(breaker: CircuitBreaker, generation: u64, kind: Kind, start: u64) -> Self {
        Self {
            breaker,
            generation,
            kind,
            start,
            done: false,
        }
    }

    /// Whether this permit is one of the half-open probes.
    pub fn is_probe(&self) -> bool {
        self.kind == Kind::Probe
    }

    /// The call succeeded.
    pub fn success(self) {
        self.record(Outcome::Success);
    }

    /// The call failed.
    pub fn failure(self) {
        self.record(Outcome::Failure);
    }

    /// The call failed, and the callee said when to come back (a `503`'s `Retry-After`): if
    /// this failure opens the breaker, it stays open for `retry_after` (capped by the maximum
    /// open duration) instead of the configured duration; a zero `retry_after` (`Retry-After:
    /// 0`) opens it for no time, so the next call is a half-open probe, and a positive one under
    /// a millisecond for at least a millisecond (the open end is kept in whole milliseconds).
    /// To open right away whatever the window says, use [`CircuitBreaker::trip_for`].
    pub fn failure_with_retry_after(mut self, retry_after: Duration) {
        self.finish(Outcome::Failure, Some(retry_after));
    }

    /// Reports `outcome`.
    #[inline]
    pub fn record(mut self, outcome: Outcome) {
        self.finish(outcome, None);
    }

    /// [`record`](Self::record) through a reference, for a permit held in place; what is left
    /// of it is to be dropped.
    #[inline]
    pub(crate) fn report(&mut self, outcome: Outcome) {
        self.finish(outcome, None);
    }

    #[inline]
    fn finish(&mut self, outcome: Outcome, hint: Option<Duration>) {
        self.done = true;
        match self.kind {
            Kind::Untracked => return,
            Kind::Normal
                if outcome == Outcome::Success
                    && hint.is_none()
                    && self.breaker.record_closed_success(self.generation) =>
            {
                return
            }
            _ => {}
        }
        // A closed breaker with a count window that does not time its calls needs the clock
        // only if this outcome trips it: `record` reads it then.
        let now = if self.kind == Kind::Normal && self.breaker.inner.config.clock_free_closed() {
            None
        } else {
            Some(self.breaker.now_nanos())
        };
        self.breaker
            .record(self.generation, self.kind, outcome, now, self.start, hint);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done && self.kind == Kind::Probe {
            self.breaker.release_probe(self.generation);
        }
    }
}
