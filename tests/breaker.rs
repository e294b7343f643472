//! Circuit breaker: a property test against a reference model, a stress test on a
//! multi-thread runtime, and the layer over 127.0.0.1.
#![cfg(feature = "breaker")]

mod common;

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Barrier,
    },
    time::Duration,
};

use axum::{extract::Request, response::Response, Router};
use http::StatusCode;
use proptest::prelude::*;
use tower::{service_fn, Layer, ServiceExt};
use tower_5xx::{
    breaker::error::CircuitOpen,
    breaker::{
        BreakerLayer, CircuitBreaker, Clock, ManualClock, Outcome, Permit, SlidingWindow, State,
        WindowCounts,
    },
    refuse::RefusalPolicy,
    Reason,
};

// ---------------------------------------------------------------------------------------------
// The reference model: plain fields, a Vec of outcomes, recomputed from scratch every time.

#[derive(Debug, Clone, Copy)]
struct ModelConfig {
    count_window: Option<u64>,
    window_nanos: u64,
    buckets: u64,
    min_calls: u64,
    failure_rate: f64,
    slow_rate: f64,
    slow_nanos: u64,
    open_ms: u64,
    max_open_ms: u64,
    probes: u64,
}

impl ModelConfig {
    fn builder(&self, clock: &ManualClock) -> tower_5xx::breaker::BreakerBuilder {
        let window = match self.count_window {
            Some(n) => SlidingWindow::Count(n as u32),
            None => SlidingWindow::Time(Duration::from_nanos(self.window_nanos)),
        };
        CircuitBreaker::builder()
            .sliding_window(window)
            .buckets(self.buckets as u32)
            .minimum_calls(self.min_calls as u32)
            .failure_rate_threshold(self.failure_rate)
            .slow_call_rate_threshold(self.slow_rate)
            .slow_call_duration(Duration::from_nanos(self.slow_nanos))
            .open_duration(Duration::from_millis(self.open_ms))
            .open_duration_growth(2.0, Duration::from_millis(self.max_open_ms))
            .half_open_probes(self.probes as u32)
            .clock(clock.clone())
    }

    /// Bucket length (calls or nanoseconds) and number of buckets, as documented.
    fn shape(&self) -> (u64, u64) {
        match self.count_window {
            Some(n) => {
                let b = self.buckets.min(n);
                let len = n.div_ceil(b);
                (len, n.div_ceil(len))
            }
            None => (self.window_nanos / self.buckets, self.buckets),
        }
    }

    /// The documented effective minimum: a count window lowers it to what it is sure to hold.
    fn min_calls(&self) -> u64 {
        match self.count_window {
            Some(_) => {
                let (len, n) = self.shape();
                self.min_calls.min((n - 1) * len + 1)
            }
            None => self.min_calls,
        }
    }

    fn open_for(&self, trips: u32) -> u64 {
        let mut d = self.open_ms;
        for _ in 1..trips {
            d = (d * 2).min(self.max_open_ms);
        }
        d.min(self.max_open_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MState {
    Closed,
    Open { until_ms: u64 },
    HalfOpen,
    Forced,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MKind {
    Normal,
    Probe,
    Untracked,
}

#[derive(Debug, Clone, Copy)]
struct MPermit {
    generation: u64,
    kind: MKind,
    start: u64,
}

struct Model {
    c: ModelConfig,
    now: u64,
    state: MState,
    generation: u64,
    trips: u32,
    /// (bucket index since the window was last emptied, failure, slow)
    outcomes: Vec<(u64, bool, bool)>,
    window_start: u64,
    records_since_start: u64,
    probe_generation: u64,
    issued: u64,
    done: u64,
    failed: u64,
    slow: u64,
}

fn reaches(bad: u64, calls: u64, rate: f64) -> bool {
    let ppm = (rate * 1_000_000.0).round() as u64;
    calls > 0 && bad * 1_000_000 >= ppm * calls
}

impl Model {
    fn new(c: ModelConfig) -> Self {
        Self {
            c,
            now: 0,
            state: MState::Closed,
            generation: 0,
            trips: 0,
            outcomes: Vec::new(),
            window_start: 0,
            records_since_start: 0,
            probe_generation: u64::MAX,
            issued: 0,
            done: 0,
            failed: 0,
            slow: 0,
        }
    }

    fn public_state(&self) -> State {
        match self.state {
            MState::Closed => State::Closed,
            MState::Open { .. } => State::Open,
            MState::HalfOpen => State::HalfOpen,
            MState::Forced => State::ForcedOpen,
            MState::Disabled => State::Disabled,
        }
    }

    fn time_bucket(&self) -> u64 {
        (self.now - self.window_start) / self.c.shape().0
    }

    fn counts(&self) -> WindowCounts {
        let (_, n) = self.c.shape();
        let current = match self.c.count_window {
            None => self.time_bucket(),
            Some(_) => match self.outcomes.last() {
                Some(&(b, _, _)) => b,
                None => return WindowCounts::default(),
            },
        };
        let mut c = WindowCounts::default();
        for &(b, failure, slow) in &self.outcomes {
            if b + n > current {
                c.calls += 1;
                c.failures += u64::from(failure);
                c.slow_calls += u64::from(slow);
            }
        }
        c
    }

    fn empty_window(&mut self) {
        self.outcomes.clear();
        self.window_start = self.now;
        self.records_since_start = 0;
    }

    fn transition(&mut self, to: MState) {
        self.generation += 1;
        self.state = to;
        match to {
            MState::Closed => {
                self.empty_window();
                self.trips = 0;
            }
            MState::HalfOpen => {
                self.probe_generation = self.generation;
                self.issued = 0;
                self.done = 0;
                self.failed = 0;
                self.slow = 0;
            }
            _ => {}
        }
    }

    fn open(&mut self, trips: u32, hint_ms: Option<u64>) {
        let d = hint_ms.map_or(self.c.open_for(trips), |h| h.min(self.c.max_open_ms));
        // Whole milliseconds, rounded down: never past the instant asked for.
        let until_ms = (self.now + d * 1_000_000) / 1_000_000;
        self.transition(MState::Open { until_ms });
        self.trips = trips;
    }

    fn acquire(&mut self) -> Result<MPermit, (State, u64)> {
        loop {
            let permit = |kind| MPermit {
                generation: self.generation,
                kind,
                start: self.now,
            };
            return match self.state {
                MState::Closed => Ok(permit(MKind::Normal)),
                MState::Disabled => Ok(permit(MKind::Untracked)),
                MState::Forced => Err((State::ForcedOpen, self.c.open_ms * 1_000_000)),
                MState::Open { until_ms } => {
                    if self.now < until_ms * 1_000_000 {
                        Err((State::Open, until_ms * 1_000_000 - self.now))
                    } else {
                        self.transition(MState::HalfOpen);
                        continue;
                    }
                }
                MState::HalfOpen => {
                    if self.issued < self.c.probes {
                        self.issued += 1;
                        Ok(permit(MKind::Probe))
                    } else {
                        Err((State::HalfOpen, 0))
                    }
                }
            };
        }
    }

    fn release(&mut self, p: MPermit) {
        if p.kind == MKind::Probe && p.generation == self.probe_generation && self.issued > 0 {
            self.issued -= 1;
        }
    }

    fn record(&mut self, p: MPermit, failure: bool, hint_ms: Option<u64>) {
        if p.kind == MKind::Untracked || p.generation != self.generation {
            return;
        }
        let slow = self.now - p.start >= self.c.slow_nanos;
        match (p.kind, self.state) {
            (MKind::Normal, MState::Closed) => {
                let bucket = match self.c.count_window {
                    Some(_) => self.records_since_start / self.c.shape().0,
                    None => self.time_bucket(),
                };
                self.records_since_start += 1;
                self.outcomes.push((bucket, failure, slow));
                let c = self.counts();
                if c.calls >= self.c.min_calls()
                    && (reaches(c.failures, c.calls, self.c.failure_rate)
                        || reaches(c.slow_calls, c.calls, self.c.slow_rate))
                {
                    self.open(1, hint_ms);
                }
            }
            (MKind::Probe, MState::HalfOpen) => {
                self.done += 1;
                self.failed += u64::from(failure);
                self.slow += u64::from(slow);
                if self.done == self.c.probes {
                    if reaches(self.failed, self.done, self.c.failure_rate)
                        || reaches(self.slow, self.done, self.c.slow_rate)
                    {
                        self.open(self.trips + 1, hint_ms);
                    } else {
                        self.transition(MState::Closed);
                    }
                }
            }
            _ => {}
        }
    }

    fn trip_for(&mut self, ms: u64) {
        let d = ms.min(self.c.max_open_ms);
        let until_ms = (self.now + d * 1_000_000) / 1_000_000;
        let trips = match self.state {
            MState::Closed => 1,
            MState::HalfOpen => self.trips + 1,
            MState::Open { until_ms: current } if current < until_ms => self.trips,
            _ => return,
        };
        self.transition(MState::Open { until_ms });
        self.trips = trips;
    }

    fn operator(&mut self, to: MState) {
        self.transition(to);
        self.trips = 0;
    }
}

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    Complete { index: usize, how: u8, hint_ms: u64 },
    Advance(u64),
    ForceOpen,
    Disable,
    Reset,
    TripFor(u64),
    Check,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => Just(Op::Acquire),
        30 => (any::<usize>(), 0u8..6, 1u64..3_000).prop_map(|(index, how, hint_ms)| Op::Complete { index, how, hint_ms }),
        20 => prop_oneof![0u64..2_000_000, 0u64..400_000_000, 0u64..3_000_000_000].prop_map(Op::Advance),
        1 => Just(Op::ForceOpen),
        1 => Just(Op::Disable),
        2 => Just(Op::Reset),
        2 => (1u64..5_000).prop_map(Op::TripFor),
        5 => Just(Op::Check),
    ]
}

fn config() -> impl Strategy<Value = ModelConfig> {
    (
        prop_oneof![Just(None), (2u64..12).prop_map(Some)],
        prop_oneof![
            Just(200_000_000u64),
            Just(1_000_000_000),
            Just(3_000_000_000)
        ],
        2u64..6,
        1u64..16,
        prop_oneof![Just(0.25), Just(0.5), Just(1.0)],
        prop_oneof![Just(0.5), Just(1.0)],
        prop_oneof![Just(50_000_000u64), Just(500_000_000), Just(u64::MAX)],
        (prop_oneof![Just(100u64), Just(1_000), Just(1_500)], 1u64..4),
        1u64..4,
    )
        .prop_map(
            |(
                count_window,
                window_nanos,
                buckets,
                min_calls,
                failure_rate,
                slow_rate,
                slow_nanos,
                (open_ms, growth_steps),
                probes,
            )| {
                // `build` rejects explicit values a count window cannot honour: draw only valid
                // ones (the model still computes the documented shape and minimum).
                let (buckets, min_calls) = match count_window {
                    Some(n) => {
                        let b = buckets.min(n);
                        let len = n.div_ceil(b);
                        (b, min_calls.min((n.div_ceil(len) - 1) * len + 1))
                    }
                    None => (buckets, min_calls),
                };
                ModelConfig {
                    count_window,
                    window_nanos,
                    buckets,
                    min_calls,
                    failure_rate,
                    slow_rate,
                    slow_nanos,
                    open_ms,
                    max_open_ms: open_ms << growth_steps,
                    probes,
                }
            },
        )
}

fn run(c: ModelConfig, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = ManualClock::new();
    let breaker = c.builder(&clock).build().expect("valid config");
    let mut model = Model::new(c);
    let mut permits: Vec<(Permit, MPermit)> = Vec::new();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Acquire => {
                let real = breaker.try_acquire();
                let expected = model.acquire();
                match (real, expected) {
                    (Ok(p), Ok(m)) => {
                        prop_assert_eq!(p.is_probe(), m.kind == MKind::Probe, "step {}", step);
                        permits.push((p, m));
                    }
                    (Err(e), Err((state, nanos))) => {
                        let e: CircuitOpen = e;
                        prop_assert_eq!(e.state(), state, "step {}", step);
                        prop_assert_eq!(
                            e.retry_after(),
                            Duration::from_nanos(nanos),
                            "step {}",
                            step
                        );
                    }
                    (real, expected) => {
                        return Err(TestCaseError::fail(format!(
                            "step {step}: breaker {real:?}, model {expected:?}"
                        )))
                    }
                }
            }
            Op::Complete {
                index,
                how,
                hint_ms,
            } => {
                if permits.is_empty() {
                    continue;
                }
                let (p, m) = permits.swap_remove(index % permits.len());
                match how {
                    0 | 1 => {
                        p.success();
                        model.record(m, false, None);
                    }
                    2 => {
                        p.failure();
                        model.record(m, true, None);
                    }
                    3 => {
                        p.failure_with_retry_after(Duration::from_millis(hint_ms));
                        model.record(m, true, Some(hint_ms));
                    }
                    4 => {
                        p.record(Outcome::Ignored);
                        model.release(m);
                    }
                    _ => {
                        drop(p);
                        model.release(m);
                    }
                }
            }
            Op::Advance(nanos) => {
                clock.advance(Duration::from_nanos(nanos));
                model.now += nanos;
            }
            Op::ForceOpen => {
                breaker.force_open();
                model.operator(MState::Forced);
            }
            Op::Disable => {
                breaker.disable();
                model.operator(MState::Disabled);
            }
            Op::Reset => {
                breaker.reset();
                model.operator(MState::Closed);
            }
            Op::TripFor(ms) => {
                breaker.trip_for(Duration::from_millis(ms));
                model.trip_for(ms);
            }
            Op::Check => {}
        }
        prop_assert_eq!(breaker.state(), model.public_state(), "step {}", step);
        if model.state == MState::Closed {
            prop_assert_eq!(breaker.window_counts(), model.counts(), "step {}", step);
        }
        if let MState::Open { until_ms } = model.state {
            let left = (until_ms * 1_000_000).saturating_sub(model.now);
            prop_assert_eq!(breaker.remaining_open(), Some(Duration::from_nanos(left)));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn breaker_agrees_with_reference_model(c in config(), ops in proptest::collection::vec(op(), 1..250)) {
        run(c, ops)?;
    }
}

/// The model itself must be able to disagree: a breaker configured differently is caught.
#[test]
fn model_check_can_fail() {
    let c = ModelConfig {
        count_window: Some(4),
        window_nanos: 1_000_000_000,
        buckets: 4,
        min_calls: 2,
        failure_rate: 0.5,
        slow_rate: 1.0,
        slow_nanos: 1_000_000_000,
        open_ms: 1_000,
        max_open_ms: 1_000,
        probes: 1,
    };
    let clock = ManualClock::new();
    // The real breaker needs 3 calls, the model 2.
    let breaker = c.builder(&clock).minimum_calls(3).build().unwrap();
    let mut model = Model::new(c);
    for _ in 0..2 {
        breaker.try_acquire().unwrap().failure();
        let m = model.acquire().unwrap();
        model.record(m, true, None);
    }
    assert_ne!(breaker.state(), model.public_state());
}

/// A count window smaller than `minimum_calls` (default 20) used to leave the breaker closed
/// forever; the window's size is used instead.
#[test]
fn count_window_smaller_than_minimum_calls_still_opens() {
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(10))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    for i in 0..10 {
        assert_eq!(breaker.state(), State::Closed, "opened after {i} failures");
        breaker.try_acquire().unwrap().failure();
    }
    assert_eq!(breaker.state(), State::Open);
}

/// With 10 calls per bucket, a window of 100 holds only 91 calls right after its oldest bucket
/// drops out. A minimum of 100 would skip every such moment: `build` rejects it, and 91 (what
/// the window is sure to hold) lets a rate that reaches the threshold right after a roll-over
/// open the breaker.
#[test]
fn minimum_calls_fits_what_a_count_window_holds_after_a_roll() {
    let too_many = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(100))
        .buckets(10)
        .minimum_calls(100)
        .build();
    assert_eq!(
        too_many.unwrap_err(),
        tower_5xx::breaker::error::BreakerConfigError::MinimumCalls
    );
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(100))
        .buckets(10)
        .minimum_calls(91)
        .failure_rate_threshold(0.5)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    // Bucket 0: 10 successes. Buckets 1 to 9: 45 failures and 45 successes, interleaved.
    for _ in 0..10 {
        breaker.try_acquire().unwrap().success();
    }
    for i in 0..90 {
        let permit = breaker.try_acquire().unwrap();
        if i % 2 == 0 {
            permit.failure();
        } else {
            permit.success();
        }
    }
    assert_eq!(breaker.window_counts().calls, 100);
    assert_eq!(breaker.state(), State::Closed, "45 % must not open");
    // Call 101 starts bucket 10 and drops bucket 0: 46 failures out of 91 calls.
    breaker.try_acquire().unwrap().failure();
    let counts = breaker.window_counts();
    assert_eq!((counts.calls, counts.failures), (91, 46));
    assert_eq!(breaker.state(), State::Open);
}

/// `CircuitOpen::open_until` is on the breaker's clock, not tokio's.
#[test]
fn open_until_is_on_the_breakers_clock() {
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(1000));
    let breaker = CircuitBreaker::builder()
        .minimum_calls(1)
        .open_duration(Duration::from_secs(5))
        .clock(clock.clone())
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    let open: CircuitOpen = breaker.try_acquire().unwrap_err();
    assert_eq!(open.state(), State::Open);
    assert_eq!(open.retry_after(), Duration::from_secs(5));
    assert_eq!(open.open_until(), Duration::from_secs(1005));
    clock.advance(Duration::from_secs(2));
    let open = breaker.try_acquire().unwrap_err();
    assert_eq!(open.retry_after(), Duration::from_secs(3));
    assert_eq!(open.open_until(), Duration::from_secs(1005));
    assert_eq!(open.open_until(), clock.now() + open.retry_after());
}

/// A closed breaker with a count window records outcomes without its clock, and reads it when
/// an outcome trips it: the open time counts from the trip, on the breaker's clock.
#[test]
fn a_count_window_opens_at_the_time_of_the_trip() {
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder()
        .minimum_calls(4)
        .sliding_window(SlidingWindow::Count(10))
        .open_duration(Duration::from_secs(5))
        .clock(clock.clone())
        .build()
        .unwrap();
    for _ in 0..3 {
        let permit = breaker.try_acquire().unwrap();
        clock.advance(Duration::from_secs(100));
        permit.failure();
    }
    assert_eq!(breaker.state(), State::Closed);
    let permit = breaker.try_acquire().unwrap();
    clock.advance(Duration::from_secs(100));
    permit.failure();
    let open: CircuitOpen = breaker.try_acquire().unwrap_err();
    assert_eq!(open.state(), State::Open);
    assert_eq!(open.open_until(), Duration::from_secs(405));
    assert_eq!(open.retry_after(), Duration::from_secs(5));
}

// ---------------------------------------------------------------------------------------------
// Stress: many threads, one breaker.

#[test]
fn concurrent_records_are_not_lost_and_trip_once() {
    const THREADS: usize = 8;
    const CALLS: u64 = 5_000;
    for window in [
        SlidingWindow::Time(Duration::from_secs(10)),
        SlidingWindow::Count(1_000_000),
    ] {
        let clock = ManualClock::new();
        let transitions = Arc::new(AtomicUsize::new(0));
        let seen = transitions.clone();
        let breaker = CircuitBreaker::builder()
            .sliding_window(window)
            // At most what the count window is sure to hold (9 buckets of 100,000, plus one).
            .minimum_calls(900_001)
            .clock(clock.clone())
            .on_transition(move |_| {
                seen.fetch_add(1, Ordering::SeqCst);
            })
            .build()
            .unwrap();
        let barrier = Arc::new(Barrier::new(THREADS));
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (breaker, barrier) = (breaker.clone(), barrier.clone());
                s.spawn(move || {
                    barrier.wait();
                    for i in 0..CALLS {
                        let p = breaker.try_acquire().unwrap();
                        if (i + t as u64) % 4 == 0 {
                            p.failure();
                        } else {
                            p.success();
                        }
                    }
                });
            }
        });
        let c = breaker.window_counts();
        assert_eq!(c.calls, THREADS as u64 * CALLS, "{window:?}");
        let failures: u64 = (0..THREADS as u64)
            .map(|t| (0..CALLS).filter(|i| (i + t) % 4 == 0).count() as u64)
            .sum();
        assert_eq!(c.failures, failures, "{window:?}");
        assert_eq!(transitions.load(Ordering::SeqCst), 0);
    }

    // Now with a threshold the concurrent failures cross: exactly one transition to open.
    let clock = ManualClock::new();
    let opened = Arc::new(AtomicUsize::new(0));
    let seen = opened.clone();
    let breaker = CircuitBreaker::builder()
        .minimum_calls(100)
        .clock(clock)
        .on_transition(move |t| {
            assert_eq!((t.from, t.to), (State::Closed, State::Open));
            seen.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            let breaker = breaker.clone();
            s.spawn(move || {
                for _ in 0..1_000 {
                    if let Ok(p) = breaker.try_acquire() {
                        p.failure();
                    }
                }
            });
        }
    });
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(opened.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_the_configured_probes_get_through() {
    const PROBES: u32 = 3;
    const TASKS: usize = 64;
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder()
        .minimum_calls(1)
        .sliding_window(SlidingWindow::Count(10))
        .open_duration(Duration::from_secs(1))
        .half_open_probes(PROBES)
        .clock(clock.clone())
        .build()
        .unwrap();
    for round in 0..20 {
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), State::Open, "round {round}");
        clock.advance(Duration::from_secs(1));
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (breaker, barrier) = (breaker.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    breaker.try_acquire().ok()
                })
            })
            .collect();
        let mut probes = Vec::new();
        for t in tasks {
            probes.extend(t.await.unwrap());
        }
        assert_eq!(probes.len(), PROBES as usize, "round {round}");
        assert!(probes.iter().all(Permit::is_probe));
        // A dropped probe frees one slot, no more.
        drop(probes.pop());
        let again: Vec<_> = (0..10).filter_map(|_| breaker.try_acquire().ok()).collect();
        assert_eq!(again.len(), 1, "round {round}");
        probes.extend(again);
        // All probes succeed concurrently: closed, exactly once.
        let done: Vec<_> = probes
            .into_iter()
            .map(|p| tokio::spawn(async move { p.success() }))
            .collect();
        for d in done {
            d.await.unwrap();
        }
        assert_eq!(breaker.state(), State::Closed, "round {round}");
        assert_eq!(breaker.window_counts(), WindowCounts::default());
    }
}

// ---------------------------------------------------------------------------------------------
// Time from tokio's paused clock (the default clock), and slow calls.

/// Slow-call detection is opt-in: by default a call that takes an hour and succeeds is a
/// success, and the breaker never opens for slowness (only failures count).
#[tokio::test(start_paused = true)]
async fn slow_calls_are_not_counted_by_default() {
    /// `calls` calls of an hour each through `breaker` (a count window: they all stay in it).
    async fn hour_long_calls(breaker: &CircuitBreaker, calls: usize) {
        let svc = BreakerLayer::new(breaker.clone()).layer(service_fn(|_req: Request| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, Infallible>(Response::new(axum::body::Body::empty()))
        }));
        for _ in 0..calls {
            let res = svc
                .clone()
                .oneshot(Request::new(axum::body::Body::empty()))
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
    }
    let builder = || {
        CircuitBreaker::builder()
            .minimum_calls(3)
            .sliding_window(SlidingWindow::Count(10))
    };

    let breaker = builder().build().unwrap();
    hour_long_calls(&breaker, 5).await;
    let counts = breaker.window_counts();
    assert_eq!((counts.calls, counts.slow_calls), (5, 0), "{counts:?}");
    assert_eq!(breaker.state(), State::Closed);

    // The same calls with a slow-call duration set are slow, and open it.
    let timed = builder()
        .slow_call_duration(Duration::from_secs(60))
        .build()
        .unwrap();
    hour_long_calls(&timed, 3).await;
    assert_eq!(timed.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn tokio_clock_and_slow_calls() {
    let breaker = CircuitBreaker::builder()
        .minimum_calls(3)
        .slow_call_duration(Duration::from_millis(500))
        .slow_call_rate_threshold(0.6)
        .open_duration(Duration::from_secs(4))
        .build()
        .unwrap();
    let slow = Arc::new(AtomicBool::new(true));
    let flag = slow.clone();
    let svc = BreakerLayer::new(breaker.clone()).layer(service_fn(move |_req: Request| {
        let slow = flag.load(Ordering::SeqCst);
        async move {
            if slow {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok::<_, Infallible>(Response::new(axum::body::Body::empty()))
        }
    }));
    for _ in 0..3 {
        let res = svc
            .clone()
            .oneshot(Request::new(axum::body::Body::empty()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    // Three slow successes out of three: the slow-call rate opened it.
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(breaker.remaining_open(), Some(Duration::from_secs(4)));
    tokio::time::advance(Duration::from_millis(2500)).await;
    assert_eq!(breaker.remaining_open(), Some(Duration::from_millis(1500)));
    let res = svc
        .clone()
        .oneshot(Request::new(axum::body::Body::empty()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.extensions().get::<Reason>(), Some(&Reason::CircuitOpen));
    tokio::time::advance(Duration::from_millis(1500)).await;
    slow.store(false, Ordering::SeqCst);
    for _ in 0..3 {
        let res = svc
            .clone()
            .oneshot(Request::new(axum::body::Body::empty()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test]
async fn retry_after_is_jittered_and_clamped() {
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder()
        .open_duration(Duration::from_millis(2_500))
        .clock(clock.clone())
        .build()
        .unwrap();
    breaker.trip_for(Duration::from_millis(2_500));
    let ok = service_fn(|_req: Request| async {
        Ok::<_, Infallible>(Response::new(axum::body::Body::empty()))
    });
    let mut seen = std::collections::BTreeSet::new();
    let policy = |max: u64, jitter: u64| {
        RefusalPolicy::builder()
            .max_retry_after(Duration::from_secs(max))
            .retry_after_jitter(Duration::from_secs(jitter))
            .build()
            .unwrap()
    };
    let svc = BreakerLayer::new(breaker.clone())
        .refusal(policy(300, 2))
        .layer(ok);
    for _ in 0..200 {
        let res = svc
            .clone()
            .oneshot(Request::new(axum::body::Body::empty()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        seen.insert(res.headers()["retry-after"].to_str().unwrap().to_owned());
    }
    // 2.5 s + 0..2 s, rounded up: 3, 4 or 5 — and not always the same.
    assert!(
        seen.iter().all(|s| ["3", "4", "5"].contains(&s.as_str())),
        "{seen:?}"
    );
    assert!(seen.len() >= 2, "{seen:?}");

    let capped = BreakerLayer::new(breaker.clone())
        .refusal(policy(2, 0))
        .layer(ok);
    let res = capped
        .oneshot(Request::new(axum::body::Body::empty()))
        .await
        .unwrap();
    assert_eq!(res.headers()["retry-after"], "2");

    // At the cap, the default jitter (1 s) still spreads clients: 2 or 3.
    let capped = BreakerLayer::new(breaker).refusal(policy(2, 1)).layer(ok);
    let mut at_cap = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let res = capped
            .clone()
            .oneshot(Request::new(axum::body::Body::empty()))
            .await
            .unwrap();
        at_cap.insert(res.headers()["retry-after"].to_str().unwrap().to_owned());
    }
    assert_eq!(
        at_cap,
        ["2", "3"]
            .iter()
            .map(|s| s.to_string())
            .collect::<std::collections::BTreeSet<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// Over 127.0.0.1: a dependency fails, the breaker trips, 503 + Retry-After, recovery.

#[tokio::test]
async fn server_trips_answers_503_and_recovers() {
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder()
        .minimum_calls(4)
        .failure_rate_threshold(0.5)
        .sliding_window(SlidingWindow::Time(Duration::from_secs(10)))
        .open_duration(Duration::from_secs(10))
        .half_open_probes(2)
        .clock(clock.clone())
        .name("dependency")
        .build()
        .unwrap();
    let healthy = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let (h, n) = (healthy.clone(), calls.clone());
    let dependency = service_fn(move |_req: Request| {
        n.fetch_add(1, Ordering::SeqCst);
        let ok = h.load(Ordering::SeqCst);
        async move {
            let mut res = Response::new(axum::body::Body::from(if ok { "ok" } else { "down" }));
            if !ok {
                *res.status_mut() = StatusCode::BAD_GATEWAY;
            }
            Ok::<_, Infallible>(res)
        }
    });
    let app = Router::new().route_service(
        "/dep",
        BreakerLayer::new(breaker.clone())
            .refusal(
                RefusalPolicy::builder()
                    .retry_after_jitter(Duration::ZERO)
                    .build()
                    .unwrap(),
            )
            .layer(dependency),
    );
    let addr = common::serve_axum(app).await;
    let client = common::client();

    assert_eq!(
        common::get(&client, addr, "/dep").await.status,
        StatusCode::OK
    );
    healthy.store(false, Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(
            common::get(&client, addr, "/dep").await.status,
            StatusCode::BAD_GATEWAY
        );
    }
    assert_eq!(breaker.state(), State::Open);
    let before = calls.load(Ordering::SeqCst);

    clock.advance(Duration::from_millis(3_500));
    let reply = common::get(&client, addr, "/dep").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    // 6.5 s left, rounded up.
    assert_eq!(reply.header("retry-after"), Some("7"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let json = common::send(
        &client,
        common::request(addr, "/dep", Some("application/problem+json")),
    )
    .await
    .unwrap();
    assert_eq!(json.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(json.text().contains("\"retry_after\":7"), "{}", json.text());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "the dependency was called while open"
    );

    // Still down when the open time is up: the probes fail, open again.
    clock.advance(Duration::from_millis(6_500));
    assert_eq!(
        common::get(&client, addr, "/dep").await.status,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        common::get(&client, addr, "/dep").await.status,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(
        common::get(&client, addr, "/dep").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // The dependency heals; after the open time, two probes succeed: closed.
    healthy.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(10));
    for _ in 0..2 {
        assert_eq!(
            common::get(&client, addr, "/dep").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(breaker.state(), State::Closed);
    for _ in 0..5 {
        assert_eq!(
            common::get(&client, addr, "/dep").await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn transitions_are_logged() {
    let logs = common::logs();
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder()
        .minimum_calls(1)
        .name("logged-breaker")
        .clock(clock)
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    let lines = logs.lines_with("logged-breaker");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("circuit breaker opened") && l.contains("to=open")),
        "{lines:?}"
    );
}

#[test]
fn public_types_are_send_and_sync() {
    fn assert<T: Send + Sync>() {}
    assert::<CircuitBreaker>();
    assert::<Permit>();
    assert::<CircuitOpen>();
    assert::<tower_5xx::breaker::KeyedBreakers<String>>();
    assert::<BreakerLayer>();
    assert::<
        tower_5xx::breaker::Breaker<
            axum::routing::Router,
            tower_5xx::breaker::DefaultOutcomeClassifier,
        >,
    >();
    // The classifier parameter defaults, as for the other layers.
    assert::<tower_5xx::breaker::Breaker<axum::routing::Router>>();
}

/// `Breaker::new` wraps a service like `BreakerLayer::new(..).layer(..)`.
#[tokio::test]
async fn breaker_new_matches_the_layer() {
    let breaker = CircuitBreaker::builder()
        .minimum_calls(1)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let failing = service_fn(|_req: Request| async {
        let mut res = Response::new(axum::body::Body::empty());
        *res.status_mut() = StatusCode::BAD_GATEWAY;
        Ok::<_, Infallible>(res)
    });
    let svc: tower_5xx::breaker::Breaker<_> =
        tower_5xx::breaker::Breaker::new(failing, breaker.clone());
    let res = svc
        .clone()
        .oneshot(Request::new(axum::body::Body::empty()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(breaker.state(), State::Open, "502 counts as a failure");
    let res = svc
        .oneshot(Request::new(axum::body::Body::empty()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.extensions().get::<Reason>(), Some(&Reason::CircuitOpen));
    assert!(res.headers().contains_key("retry-after"));
}

/// A plain success does not sum the window (the fast path), yet trips the breaker wherever
/// summing on every call would: when it brings the window to `minimum_calls` with the failure
/// rate already over the threshold...
#[test]
fn a_success_reaching_the_minimum_calls_trips_an_armed_breaker() {
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder()
        .minimum_calls(10)
        .failure_rate_threshold(0.5)
        .clock(clock.clone())
        .build()
        .unwrap();
    for _ in 0..9 {
        breaker.try_acquire().unwrap().failure();
    }
    assert_eq!(breaker.state(), State::Closed, "9 calls: under the minimum");
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), State::Open, "10 calls, 90% failures");
}

/// ... and when old successes drop out of the window, raising the failure rate.
#[test]
fn a_success_after_old_successes_drop_out_trips_the_breaker() {
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder()
        .minimum_calls(20)
        .failure_rate_threshold(0.5)
        .sliding_window(SlidingWindow::Time(Duration::from_secs(10)))
        .buckets(10)
        .clock(clock.clone())
        .build()
        .unwrap();
    for _ in 0..10 {
        breaker.try_acquire().unwrap().success();
    }
    clock.advance(Duration::from_secs(5));
    for _ in 0..8 {
        breaker.try_acquire().unwrap().success();
    }
    for _ in 0..12 {
        breaker.try_acquire().unwrap().failure();
    }
    assert_eq!(breaker.state(), State::Closed, "12 of 30 failed");
    clock.advance(Duration::from_millis(5_500));
    assert_eq!(breaker.state(), State::Closed);
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), State::Open, "12 of 21 failed");
}

// ---------------------------------------------------------------------------------------------
// Generations wrap around (21 bits): no sequence of transitions may livelock or wedge the
// breaker.

/// Runs `try_acquire` on another thread and waits for it at most 10 s: a livelocked breaker
/// fails the test instead of hanging it (the spinning thread ends with the test process).
fn acquire_promptly(breaker: &CircuitBreaker) -> Result<Permit, CircuitOpen> {
    let (tx, rx) = std::sync::mpsc::channel();
    let b = breaker.clone();
    std::thread::spawn(move || {
        let _ = tx.send(b.try_acquire());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("try_acquire did not return within 10 s: livelock")
}

/// A breaker tripped `count` times in a row by `trip_for` (a client extending its open time on
/// every `Retry-After` through a long outage): `count` transitions, ending open for 1 s.
fn extend_open_time(breaker: &CircuitBreaker, clock: &ManualClock, count: u32) {
    for _ in 0..count {
        clock.advance(Duration::from_millis(1));
        breaker.trip_for(Duration::from_secs(1));
    }
    assert_eq!(breaker.state(), State::Open);
}

/// After the open time: exactly one probe gets through, and its success closes the breaker.
fn probe_closes(breaker: &CircuitBreaker, clock: &ManualClock) {
    clock.advance(breaker.remaining_open().expect("open"));
    let probe = acquire_promptly(breaker).expect("the open time is over: a probe");
    assert!(probe.is_probe());
    let refused = acquire_promptly(breaker).expect_err("one probe only");
    assert_eq!(refused.state(), State::HalfOpen);
    probe.success();
    assert_eq!(breaker.state(), State::Closed);
    assert!(!acquire_promptly(breaker).unwrap().is_probe());
}

fn one_probe_breaker(clock: &ManualClock) -> CircuitBreaker {
    CircuitBreaker::builder()
        .minimum_calls(1)
        .sliding_window(SlidingWindow::Count(10))
        .half_open_probes(1)
        .clock(clock.clone())
        .build()
        .unwrap()
}

/// More than 2^20 transitions before the first half-open state: the probe bookkeeping must not
/// take the new generation for an old one (this used to spin forever in `try_acquire`).
#[test]
fn half_open_after_a_million_open_extensions_lets_a_probe_through() {
    let clock = ManualClock::new();
    let breaker = one_probe_breaker(&clock);
    extend_open_time(&breaker, &clock, (1 << 20) + 5);
    probe_closes(&breaker, &clock);
    // And again, past a whole turn of the generation counter.
    extend_open_time(&breaker, &clock, (1 << 21) + 3);
    probe_closes(&breaker, &clock);
}

/// A half-open state that lands on the very generation of an earlier one, 2^21 transitions
/// later, starts with fresh probes (this used to refuse every call until a reset).
#[test]
fn half_open_on_a_wrapped_generation_starts_with_fresh_probes() {
    let clock = ManualClock::new();
    let breaker = one_probe_breaker(&clock);
    // Generation 1: open; 2: half-open, its one probe succeeds; 3: closed.
    breaker.try_acquire().unwrap().failure();
    probe_closes(&breaker, &clock);
    // 2^21 - 2 more transitions end open at generation 2^21 + 1, so that the next half-open
    // state has generation 2^21 + 2 = 2 (mod 2^21).
    extend_open_time(&breaker, &clock, (1 << 21) - 2);
    probe_closes(&breaker, &clock);
}

/// An operator alternating `force_open` and `reset` for more than 2^20 transitions, then a
/// real trip: the half-open state works.
#[test]
fn operator_flips_past_a_million_transitions_leave_a_working_breaker() {
    let clock = ManualClock::new();
    let breaker = one_probe_breaker(&clock);
    for _ in 0..(1 << 19) + 3 {
        breaker.force_open();
        breaker.reset();
    }
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    probe_closes(&breaker, &clock);
}

// ---------------------------------------------------------------------------------------------
// A clock of any origin.

/// Time since the Unix epoch, as of when the clock was made, then moved by hand.
#[derive(Debug, Clone)]
struct EpochClock {
    start: Duration,
    moved: ManualClock,
}

impl EpochClock {
    fn new() -> Self {
        Self {
            start: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap(),
            moved: ManualClock::new(),
        }
    }
}

impl Clock for EpochClock {
    fn now(&self) -> Duration {
        self.start + self.moved.now()
    }
}

/// A clock counting from the Unix epoch (1.7e12 ms, past the state word's 40 bits of
/// milliseconds) keeps the breaker open for the whole open time, then lets a probe through.
#[test]
fn a_clock_counting_from_the_unix_epoch_keeps_the_breaker_open() {
    let clock = EpochClock::new();
    let breaker = CircuitBreaker::builder()
        .minimum_calls(3)
        .sliding_window(SlidingWindow::Time(Duration::from_secs(10)))
        .open_duration(Duration::from_secs(5))
        .half_open_probes(1)
        .clock(clock.clone())
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().success();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Closed);
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    let open = breaker.try_acquire().expect_err("open for 5 s");
    assert_eq!(open.state(), State::Open);
    assert!(
        open.retry_after() > Duration::from_millis(4_999),
        "{open:?}"
    );
    assert!(open.retry_after() <= Duration::from_secs(5), "{open:?}");
    assert_eq!(open.open_until(), clock.now() + open.retry_after());
    assert!(breaker.remaining_open().unwrap() > Duration::from_millis(4_999));

    clock.moved.advance(Duration::from_millis(4_000));
    assert!(breaker.try_acquire().is_err(), "still open after 4 s");
    clock.moved.advance(Duration::from_millis(1_000));
    let probe = breaker.try_acquire().expect("a probe after 5 s");
    assert!(probe.is_probe());
    probe.success();
    assert_eq!(breaker.state(), State::Closed);

    // trip_for works on that clock too.
    breaker.trip_for(Duration::from_secs(30));
    let open = breaker.try_acquire().expect_err("tripped for 30 s");
    assert!(
        open.retry_after() > Duration::from_millis(29_999),
        "{open:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// What a layer below says, and what a panic says.

/// A 429 with `Reason::RateLimited` comes from a rate limiter below the breaker, not from the
/// dependency: a half-open probe answered so stays undecided and gives its slot back (it used
/// to count as a success and close the breaker; only 5xx refusals were ignored).
#[tokio::test]
async fn a_rate_limited_429_from_below_does_not_close_a_half_open_breaker() {
    let clock = ManualClock::new();
    let breaker = one_probe_breaker(&clock);
    let rate_limited = service_fn(|_req: Request| async {
        let mut res = Response::new(axum::body::Body::empty());
        *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        res.extensions_mut().insert(Reason::RateLimited);
        Ok::<_, Infallible>(res)
    });
    let svc = BreakerLayer::new(breaker.clone()).layer(rate_limited);
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    clock.advance(breaker.remaining_open().unwrap());
    let res = svc
        .oneshot(Request::new(axum::body::Body::empty()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(breaker.state(), State::HalfOpen);
    assert!(
        breaker.try_acquire().unwrap().is_probe(),
        "the slot is free"
    );
}

/// A dependency that panics on every call, behind a breaker with `CatchLayer` outside it (the
/// client gets a 500): the panic is a failure, and the breaker opens (the permit used to be
/// dropped unreported after the panic was caught, so the breaker never opened).
#[cfg(feature = "catch")]
#[tokio::test]
async fn a_panicking_dependency_opens_the_breaker() {
    let breaker = CircuitBreaker::builder()
        .minimum_calls(3)
        .sliding_window(SlidingWindow::Count(10))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    async fn panics(_req: Request) -> Result<Response, Infallible> {
        panic!("dependency bug")
    }
    let svc = tower_5xx::catch::CatchLayer::new()
        .layer(BreakerLayer::new(breaker.clone()).layer(service_fn(panics)));
    for _ in 0..3 {
        let res = svc
            .clone()
            .oneshot(Request::new(axum::body::Body::empty()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(
        breaker.state(),
        State::Open,
        "{:?}",
        breaker.window_counts()
    );
    let res = svc
        .oneshot(Request::new(axum::body::Body::empty()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}

// ---------------------------------------------------------------------------------------------
// Settings and operator calls.

/// A failure-rate threshold that rounds to 0 ppm would be reached by a window of successes
/// (it used to be accepted, and the breaker opened on successes only): `build` rejects it.
#[test]
fn a_failure_rate_threshold_that_rounds_to_zero_is_rejected() {
    use tower_5xx::breaker::error::BreakerConfigError;
    let builder = || CircuitBreaker::builder().clock(ManualClock::new());
    assert_eq!(
        builder().failure_rate_threshold(1e-7).build().unwrap_err(),
        BreakerConfigError::FailureRateThreshold
    );
    assert_eq!(
        builder()
            .slow_call_rate_threshold(1e-7)
            .build()
            .unwrap_err(),
        BreakerConfigError::SlowCallRateThreshold
    );
    // One part per million is the smallest threshold, and successes never reach it.
    let breaker = builder()
        .failure_rate_threshold(1e-6)
        .minimum_calls(2)
        .sliding_window(SlidingWindow::Count(10))
        .build()
        .unwrap();
    for _ in 0..10 {
        breaker.try_acquire().unwrap().success();
    }
    assert_eq!(breaker.state(), State::Closed);
}

/// An operator call that changes nothing is no transition: `reset` on a closed breaker,
/// `force_open` on a forced-open one, `disable` on a disabled one report nothing (each used to
/// report a `from == to` transition: callback, log line, transitions counter).
#[test]
fn operator_calls_that_change_nothing_report_no_transition() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let breaker = CircuitBreaker::builder()
        .clock(ManualClock::new())
        .on_transition(move |t| log.lock().unwrap().push((t.from, t.to)))
        .build()
        .unwrap();
    breaker.reset();
    breaker.force_open();
    breaker.force_open();
    breaker.disable();
    breaker.disable();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (State::Closed, State::ForcedOpen),
            (State::ForcedOpen, State::Disabled)
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Time windows over many resets.

/// Every reset of a time window (an operator `reset`, every half-open -> closed) moves its
/// epochs `buckets + 1` ahead. They used to be kept as a nanosecond shift, `start *
/// bucket_nanos`, which overflowed after some 500 resets of a one-year window (a panic in
/// debug builds; in release the epochs wrapped and the breaker could not trip again).
#[test]
fn a_one_year_window_still_trips_after_a_thousand_resets() {
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Time(Duration::from_secs(365 * 24 * 3600)))
        .buckets(2)
        .minimum_calls(5)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    for _ in 0..1_000 {
        breaker.reset();
    }
    for _ in 0..5 {
        breaker.try_acquire().unwrap().failure();
    }
    assert_eq!(breaker.state(), State::Open);
}

/// The same with a one-day window, closed by its probes: a dependency that flaps (trips, 5 s
/// open, the probe succeeds) 200,000 times, two weeks of flapping every 6 s (the shift
/// overflowed after about 194,000).
#[test]
fn a_one_day_window_keeps_working_through_two_weeks_of_flapping() {
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Time(Duration::from_secs(24 * 3600)))
        .minimum_calls(1)
        .half_open_probes(1)
        .clock(clock.clone())
        .build()
        .unwrap();
    for i in 0..200_000u32 {
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), State::Open, "cycle {i}");
        clock.advance(breaker.remaining_open().unwrap());
        breaker.try_acquire().unwrap().success();
        assert_eq!(breaker.state(), State::Closed, "cycle {i}");
    }
}

/// A call still in flight (the dependency has not answered) when code *outside* it panics (a
/// sibling branch of a `join!`, the handler after it issued the call, an outer layer): tokio
/// drops the task's future while the panic unwinds, and the permit must not count that as the
/// dependency's failure (a first version of the panic rule did: one handler bug opened the
/// breaker). Only a panic of the call itself is a failure.
#[tokio::test]
async fn a_panic_outside_the_call_is_not_the_dependencys_failure() {
    // Opens on one failure: one misfiled outcome would show.
    let breaker = one_probe_breaker(&ManualClock::new());
    // The dependency never answers: the call is cancelled, not failed.
    let pending =
        service_fn(|_req: Request| std::future::pending::<Result<Response, Infallible>>());
    let svc = BreakerLayer::new(breaker.clone()).layer(pending);
    let task = tokio::spawn(async move {
        let mut call = std::pin::pin!(svc.oneshot(Request::new(axum::body::Body::empty())));
        // Poll the call once: the breaker hands out its permit and the dependency is called.
        std::future::poll_fn(|cx| {
            assert!(std::future::Future::poll(call.as_mut(), cx).is_pending());
            std::task::Poll::Ready(())
        })
        .await;
        panic!("a bug in the handler, not in the dependency");
    });
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(
        breaker.window_counts(),
        WindowCounts::default(),
        "a cancelled call was recorded"
    );
    assert_eq!(breaker.state(), State::Closed);
}

/// A positive open time under a millisecond (`trip_for`, or a failure's `Retry-After` hint)
/// opens the breaker for at least a millisecond. The open end is kept in whole milliseconds:
/// rounded down, it used to open for no time whenever the hint did not cross a millisecond
/// boundary (the next call was a probe). A zero hint still opens for no time.
#[test]
fn an_open_time_under_a_millisecond_opens_for_at_least_one() {
    let clock = ManualClock::new();
    let breaker = one_probe_breaker(&clock);
    // 0.2 ms into a millisecond: 0.5 ms more stays in it.
    clock.advance(Duration::from_micros(200));
    breaker.trip_for(Duration::from_micros(500));
    let left = breaker.remaining_open().expect("open");
    assert!(left >= Duration::from_millis(1), "{left:?}");
    clock.advance(Duration::from_micros(999));
    assert_eq!(breaker.try_acquire().unwrap_err().state(), State::Open);
    probe_closes(&breaker, &clock);

    // A failure's hint of a nanosecond, on a millisecond boundary.
    breaker
        .try_acquire()
        .unwrap()
        .failure_with_retry_after(Duration::from_nanos(1));
    let left = breaker.remaining_open().expect("open");
    assert!(left >= Duration::from_millis(1), "{left:?}");
    probe_closes(&breaker, &clock);

    // Zero: open for no time, the next call is a probe.
    breaker
        .try_acquire()
        .unwrap()
        .failure_with_retry_after(Duration::ZERO);
    assert_eq!(breaker.remaining_open(), Some(Duration::ZERO));
    assert!(breaker.try_acquire().unwrap().is_probe());
}

/// The callback may change the breaker's state itself (its transition is delivered after it
/// returns, in order), and one that panics does not stop the transitions after it from being
/// delivered. Fails if the callback runs under the lock that orders deliveries (a deadlock:
/// the test hangs on its 10 s timeout), or if a panic leaves the deliveries stuck.
#[test]
fn a_callback_may_change_the_state_or_panic() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let me = Arc::new(std::sync::OnceLock::<CircuitBreaker>::new());
    let (log, handle) = (seen.clone(), me.clone());
    let breaker = CircuitBreaker::builder()
        .clock(ManualClock::new())
        .on_transition(move |t| {
            log.lock().unwrap().push((t.from, t.to));
            match (t.from, t.to) {
                (State::Closed, State::Open) => handle.get().unwrap().force_open(),
                (State::ForcedOpen, State::Closed) => panic!("a callback that panics"),
                _ => {}
            }
        })
        .build()
        .unwrap();
    me.set(breaker.clone()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        breaker.trip_for(Duration::from_secs(1));
        let reset = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| breaker.reset()));
        assert!(reset.is_err());
        breaker.disable();
        let _ = tx.send(breaker.state());
    });
    let state = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the transitions were not delivered within 10 s: deadlock");
    assert_eq!(state, State::Disabled);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (State::Closed, State::Open),
            (State::Open, State::ForcedOpen),
            (State::ForcedOpen, State::Closed),
            (State::Closed, State::Disabled),
        ]
    );
}

/// A callback that panics must not strand the transitions queued behind its own: here the
/// callback of the trip forces the breaker open (queued, to be delivered after it returns) and
/// then panics. The forced open must still be logged and given to the callback, by the thread
/// that was delivering, before the panic reaches it; and the transitions after it too. Before,
/// it stayed queued until some later transition (never, if the breaker was dropped first).
#[test]
fn a_transition_queued_behind_a_panicking_callback_is_still_delivered() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let me = Arc::new(std::sync::OnceLock::<CircuitBreaker>::new());
    let (log, handle) = (seen.clone(), me.clone());
    let breaker = CircuitBreaker::builder()
        .clock(ManualClock::new())
        .on_transition(move |t| {
            log.lock().unwrap().push((t.from, t.to));
            if (t.from, t.to) == (State::Closed, State::Open) {
                handle.get().unwrap().force_open();
                panic!("a callback that panics after changing the state");
            }
        })
        .build()
        .unwrap();
    me.set(breaker.clone()).unwrap();
    let trip = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        breaker.trip_for(Duration::from_secs(1))
    }));
    assert!(
        trip.is_err(),
        "the callback's panic reaches the delivering thread"
    );
    assert_eq!(breaker.state(), State::ForcedOpen);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (State::Closed, State::Open),
            (State::Open, State::ForcedOpen)
        ],
        "the forced open, queued behind the panicking callback, was not delivered"
    );
    breaker.reset();
    assert_eq!(
        seen.lock().unwrap().last(),
        Some(&(State::ForcedOpen, State::Closed))
    );
}

/// A transition delivered by another thread (one busy delivering an earlier transition) is
/// logged, and given to the callback, in the `tracing` span of the call that made it, not in
/// whatever span the delivering thread is in: the "circuit breaker opened" event belongs to the
/// request (and trace) that opened the breaker. Before, it was attributed to the delivering
/// thread's request.
#[test]
fn a_transition_delivered_by_another_thread_keeps_the_span_that_made_it() {
    let logs = common::logs();
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let go_rx = std::sync::Mutex::new(go_rx);
    let spans = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = spans.clone();
    let breaker = CircuitBreaker::builder()
        .name("span-kept")
        .clock(ManualClock::new())
        .on_transition(move |t| {
            let span = tracing::Span::current();
            let name = span.metadata().map(|m| m.name());
            seen.lock().unwrap().push((t.to, name));
            if t.to == State::Open {
                // Hold the delivery until the other transition is queued behind this one.
                entered_tx.send(()).unwrap();
                go_rx.lock().unwrap().recv().unwrap();
            }
        })
        .build()
        .unwrap();
    let b = breaker.clone();
    let deliverer = std::thread::spawn(move || {
        tracing::info_span!("delivering_request").in_scope(|| b.trip_for(Duration::from_secs(5)))
    });
    entered_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    tracing::info_span!("forcing_request").in_scope(|| breaker.force_open());
    go_tx.send(()).unwrap();
    deliverer.join().unwrap();
    assert_eq!(
        *spans.lock().unwrap(),
        [
            (State::Open, Some("delivering_request")),
            (State::ForcedOpen, Some("forcing_request")),
        ]
    );
    let lines = logs.lines_with("span-kept");
    let forced: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("to=forced_open"))
        .collect();
    assert_eq!(forced.len(), 1, "{lines:?}");
    assert!(forced[0].contains("forcing_request"), "{forced:?}");
    assert!(!forced[0].contains("delivering_request"), "{forced:?}");
}
