//! Breaker configuration: a builder with documented defaults, validated by `build`.

use std::{fmt, sync::Arc, time::Duration};

use super::error::BreakerConfigError;
use super::{
    clock::{BreakerClock, Clock, TokioClock},
    CircuitBreaker, Transition,
};

/// The largest number of half-open probes (the probe counters are 10-bit fields).
pub const MAX_HALF_OPEN_PROBES: u32 = 1023;
/// The largest number of buckets a sliding window may have.
pub const MAX_BUCKETS: u32 = 64;
/// The fewest buckets a sliding window may have (one bucket would be a tumbling window).
pub const MIN_BUCKETS: u32 = 2;
const DEFAULT_BUCKETS: u32 = 10;
const DEFAULT_MINIMUM_CALLS: u32 = 20;

/// Which outcomes the failure and slow-call rates are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingWindow {
    /// About the last `size` calls, kept in buckets of `ceil(size / buckets)` calls; when a new
    /// bucket starts, the oldest drops out whole. See [`BreakerBuilder::buckets`].
    Count(u32),
    /// The calls of about the last `duration`, kept in buckets of `duration / buckets`; a bucket
    /// drops out whole when it gets too old.
    Time(Duration),
}

/// Called on every state transition, after it happened. Must be quick: it runs on the request
/// path of the call that caused the transition.
pub type TransitionCallback = Arc<dyn Fn(&Transition) + Send + Sync>;

/// Builder for a [`CircuitBreaker`]; every setting has a default.
///
/// The setters only record their value; [`build`](Self::build) checks them all and returns a
/// [`BreakerConfigError`] naming the first one out of range. Nothing is clamped in silence:
/// the only values adapted are two *defaults* (the minimum number of calls and the number of
/// buckets), to fit a small count window, as their setters say.
///
/// ```
/// use std::time::Duration;
/// use tower_5xx::breaker::{CircuitBreaker, SlidingWindow};
///
/// let breaker = CircuitBreaker::builder()
///     .failure_rate_threshold(0.5)
///     .minimum_calls(20)
///     .sliding_window(SlidingWindow::Time(Duration::from_secs(30)))
///     .open_duration(Duration::from_secs(5))
///     .open_duration_growth(2.0, Duration::from_secs(120))
///     .half_open_probes(3)
///     .build()
///     .expect("valid configuration");
/// # let _ = breaker;
/// ```
#[derive(Clone)]
#[must_use]
pub struct BreakerBuilder {
    pub(crate) failure_rate_threshold: f64,
    pub(crate) slow_call_duration: Duration,
    pub(crate) slow_call_rate_threshold: f64,
    /// `None`: the default, lowered to fit a count window.
    pub(crate) minimum_calls: Option<u32>,
    pub(crate) window: SlidingWindow,
    /// `None`: the default, lowered to fit a count window.
    pub(crate) buckets: Option<u32>,
    pub(crate) open_duration: Duration,
    pub(crate) growth: f64,
    pub(crate) max_open_duration: Duration,
    pub(crate) half_open_probes: u32,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) clock: BreakerClock,
    pub(crate) on_transition: Option<TransitionCallback>,
}

impl fmt::Debug for BreakerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerBuilder")
            .field("failure_rate_threshold", &self.failure_rate_threshold)
            .field("slow_call_duration", &self.slow_call_duration)
            .field("slow_call_rate_threshold", &self.slow_call_rate_threshold)
            .field("minimum_calls", &self.minimum_calls)
            .field("window", &self.window)
            .field("buckets", &self.buckets)
            .field("open_duration", &self.open_duration)
            .field("growth", &self.growth)
            .field("max_open_duration", &self.max_open_duration)
            .field("half_open_probes", &self.half_open_probes)
            .field("name", &self.name)
            .field("clock", &self.clock)
            .field("on_transition", &self.on_transition.is_some())
            .finish()
    }
}

impl Default for BreakerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BreakerBuilder {
    /// The defaults (each is also stated on its setter):
    ///
    /// | setting | default |
    /// |---|---|
    /// | failure rate threshold | 50 % |
    /// | slow call duration / slow call rate threshold | off (set a duration to count slow calls) / 100 % |
    /// | minimum calls | 20 (lowered to what a small count window is sure to hold) |
    /// | sliding window | time-based, 30 s, in 10 buckets (a count window of `n < 10` calls: `n`) |
    /// | open duration | 5 s, fixed (growth factor 1) capped at 60 s |
    /// | half-open probes | 3 |
    /// | clock | [`TokioClock`] |
    pub fn new() -> Self {
        Self {
            failure_rate_threshold: 0.5,
            slow_call_duration: Duration::MAX,
            slow_call_rate_threshold: 1.0,
            minimum_calls: None,
            window: SlidingWindow::Time(Duration::from_secs(30)),
            buckets: None,
            open_duration: Duration::from_secs(5),
            growth: 1.0,
            max_open_duration: Duration::from_secs(60),
            half_open_probes: 3,
            name: None,
            clock: BreakerClock::Tokio(TokioClock::new()),
            on_transition: None,
        }
    }

    /// The failure rate, in `[1e-6, 1]`, at or above which the breaker opens. Default `0.5`
    /// (resilience4j's default too). Rates are kept in whole parts per million, so a threshold
    /// must be at least `1e-6`: [`build`](Self::build) rejects one that rounds to 0 ppm (a
    /// window of successes would reach it).
    pub fn failure_rate_threshold(mut self, rate: f64) -> Self {
        self.failure_rate_threshold = rate;
        self
    }

    /// A call that takes at least this long is slow. Default: off (`Duration::MAX`), so only
    /// failures count, as in Polly and Envoy (resilience4j counts calls over 60 s). A breaker
    /// that counts slow calls reads its clock twice per call, at the start and at the end. One
    /// that does not reads it once, when the outcome is recorded, with a
    /// [time window](SlidingWindow::Time); with a [count window](SlidingWindow::Count), a closed
    /// breaker reads it only when an outcome trips it. A timeout layer inside the breaker (its
    /// `Elapsed` error is a failure) is the usual way to bound a call's time.
    /// [`build`](Self::build) rejects zero (every call would be slow).
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.slow_call_duration = duration;
        self
    }

    /// The slow-call rate, in `[1e-6, 1]`, at or above which the breaker opens. Default `1.0`:
    /// the breaker opens when every call of a full window is slow (resilience4j's default).
    /// Slow calls are counted whether they succeeded or failed. As for the failure rate,
    /// [`build`](Self::build) rejects a threshold that rounds to 0 ppm.
    pub fn slow_call_rate_threshold(mut self, rate: f64) -> Self {
        self.slow_call_rate_threshold = rate;
        self
    }

    /// How many calls the window must hold before its rates are judged. Default 20.
    ///
    /// A [count window](SlidingWindow::Count) cannot always hold its full size: right after
    /// its oldest bucket drops out, it holds only its other buckets' calls plus one
    /// (`Count(100)` in 10 buckets of 10 calls: 91). A minimum above that would skip those
    /// moments, or never be reached at all, so [`build`](Self::build) rejects 0 and, with a
    /// count window, an explicit minimum above what the window is sure to hold. The *default*
    /// minimum is lowered to that number instead, as in resilience4j (a `Count(10)` window
    /// with the defaults opens after 10 calls).
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.minimum_calls = Some(calls);
        self
    }

    /// The sliding window. Default: time-based, 30 s. [`build`](Self::build) rejects a count
    /// window below 2 or above 2^30 calls, and a time window over a year or shorter than one
    /// nanosecond per bucket.
    pub fn sliding_window(mut self, window: SlidingWindow) -> Self {
        self.window = window;
        self
    }

    /// How many buckets the window is kept in, from 2 to 64. Default 10: old outcomes drop out
    /// a tenth of the window at a time.
    ///
    /// A count window of `n` calls has buckets of `ceil(n / buckets)` calls, so it may use
    /// fewer buckets than asked (`Count(25)` in 10 buckets: 9 buckets of 3 calls). With a count
    /// window, [`build`](Self::build) rejects more buckets than calls; the *default* of 10 is
    /// lowered to `n` instead (one call per bucket: exact).
    pub fn buckets(mut self, buckets: u32) -> Self {
        self.buckets = Some(buckets);
        self
    }

    /// How long the breaker stays open after it trips. Default 5 s. [`build`](Self::build)
    /// rejects less than a millisecond (the open time is kept in milliseconds), and a duration
    /// above the maximum open duration (default 60 s; see
    /// [`open_duration_growth`](Self::open_duration_growth)).
    pub fn open_duration(mut self, duration: Duration) -> Self {
        self.open_duration = duration;
        self
    }

    /// Grow the open duration on repeated trips: after the `n`-th trip in a row (half-open
    /// probes failed again), the breaker stays open `open_duration * factor^(n-1)`, capped at
    /// `max`. Default: factor 1 (fixed), cap 60 s. The count restarts when the breaker closes.
    /// The cap also bounds durations hinted through
    /// [`Permit::failure_with_retry_after`](super::Permit::failure_with_retry_after).
    pub fn open_duration_growth(mut self, factor: f64, max: Duration) -> Self {
        self.growth = factor;
        self.max_open_duration = max;
        self
    }

    /// How many calls are let through while half-open; the rest are rejected while those are
    /// out. When all have completed, their failure and slow rates decide between closed and
    /// open. Default 3; from 1 to [`MAX_HALF_OPEN_PROBES`].
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.half_open_probes = probes;
        self
    }

    /// A name for logs and transition events. Default: none.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The clock. Default [`TokioClock`] (works with `tokio::time::pause()`).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = BreakerClock::new(clock);
        self
    }

    /// Calls `callback` after every state transition (each is also a `tracing` event).
    ///
    /// Transitions reach the callback (and the log) one at a time, in the order the breaker's
    /// state took them, also when threads make them at once. To keep that order, a transition
    /// made while another thread is delivering one, or before the thread of an earlier
    /// transition got to deliver it, is delivered by that other thread: a callback may run on
    /// another thread than the one that made its transition, after that thread's call returned
    /// (it runs, and the transition is logged, in the `tracing` span of the call that made it).
    /// A callback that changes the breaker's state (a `force_open`, say) sees that transition
    /// delivered after it returns. No lock is held while it runs. If it panics, the transitions
    /// queued behind its own are still delivered (by the same thread), then the panic goes on
    /// unwinding that thread.
    pub fn on_transition(mut self, callback: impl Fn(&Transition) + Send + Sync + 'static) -> Self {
        self.on_transition = Some(Arc::new(callback));
        self
    }

    /// Validates the settings and builds the breaker.
    ///
    /// # Errors
    ///
    /// A [`BreakerConfigError`] naming the first setting out of range; each setter says what
    /// it rejects.
    pub fn build(self) -> Result<CircuitBreaker, BreakerConfigError> {
        Ok(CircuitBreaker::from_config(Arc::new(self.validate()?)))
    }

    pub(crate) fn validate(self) -> Result<Config, BreakerConfigError> {
        // In (0, 1], and at least 1 ppm once rounded: a threshold of 0 ppm is reached by a
        // window of successes.
        fn ppm(rate: f64) -> Option<u64> {
            let ppm = (rate > 0.0 && rate <= 1.0).then(|| (rate * 1_000_000.0).round() as u64)?;
            (ppm > 0).then_some(ppm)
        }
        let failure_ppm =
            ppm(self.failure_rate_threshold).ok_or(BreakerConfigError::FailureRateThreshold)?;
        let slow_ppm =
            ppm(self.slow_call_rate_threshold).ok_or(BreakerConfigError::SlowCallRateThreshold)?;
        if self.slow_call_duration.is_zero() {
            return Err(BreakerConfigError::SlowCallDuration);
        }
        if self.minimum_calls == Some(0) {
            return Err(BreakerConfigError::MinimumCalls);
        }
        let asked_buckets = self.buckets.unwrap_or(DEFAULT_BUCKETS);
        if !(MIN_BUCKETS..=MAX_BUCKETS).contains(&asked_buckets) {
            return Err(BreakerConfigError::Buckets);
        }
        let mut minimum_calls = u64::from(self.minimum_calls.unwrap_or(DEFAULT_MINIMUM_CALLS));
        let window = match self.window {
            SlidingWindow::Count(size) => {
                if !(2..=1 << 30).contains(&size) {
                    return Err(BreakerConfigError::WindowSize);
                }
                if asked_buckets > size && self.buckets.is_some() {
                    return Err(BreakerConfigError::Buckets);
                }
                let buckets = asked_buckets.min(size);
                let len = size.div_ceil(buckets);
                let buckets = size.div_ceil(len);
                // Right after the oldest bucket dropped out, the window holds the other
                // buckets and one call: a larger minimum would keep the breaker from opening
                // (at all, if it exceeds the window).
                let guaranteed = u64::from(buckets - 1) * u64::from(len) + 1;
                if minimum_calls > guaranteed {
                    if self.minimum_calls.is_some() {
                        return Err(BreakerConfigError::MinimumCalls);
                    }
                    minimum_calls = guaranteed;
                }
                WindowKind::Count {
                    bucket_len: u64::from(len),
                    buckets,
                }
            }
            SlidingWindow::Time(duration) => {
                let bucket = duration.as_nanos() / u128::from(asked_buckets);
                if bucket == 0 || duration > Duration::from_secs(365 * 24 * 3600) {
                    return Err(BreakerConfigError::WindowSize);
                }
                WindowKind::Time {
                    bucket_nanos: bucket as u64,
                    buckets: asked_buckets,
                }
            }
        };
        if !(1..=MAX_HALF_OPEN_PROBES).contains(&self.half_open_probes) {
            return Err(BreakerConfigError::HalfOpenProbes);
        }
        // The open end is kept in whole milliseconds: a shorter open time would be none.
        if self.open_duration < Duration::from_millis(1)
            || self.max_open_duration < self.open_duration
            || self.max_open_duration > Duration::from_secs(365 * 24 * 3600)
        {
            return Err(BreakerConfigError::OpenDuration);
        }
        if !(self.growth >= 1.0 && self.growth.is_finite()) {
            return Err(BreakerConfigError::GrowthFactor);
        }
        Ok(Config {
            failure_ppm,
            slow_ppm,
            slow_call_nanos: u64::try_from(self.slow_call_duration.as_nanos()).unwrap_or(u64::MAX),
            minimum_calls,
            window,
            open_duration: self.open_duration,
            growth: self.growth,
            max_open_duration: self.max_open_duration,
            half_open_probes: self.half_open_probes,
            name: self.name,
            clock: self.clock,
            on_transition: self.on_transition,
        })
    }
}

/// The shape of a validated window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowKind {
    Count { bucket_len: u64, buckets: u32 },
    Time { bucket_nanos: u64, buckets: u32 },
}

impl WindowKind {
    pub(crate) fn buckets(self) -> u32 {
        match self {
            WindowKind::Count { buckets, .. } | WindowKind::Time { buckets, .. } => buckets,
        }
    }
}

/// A validated configuration, shared by a breaker (and by all breakers of a keyed registry).
pub(crate) struct Config {
    pub(crate) failure_ppm: u64,
    pub(crate) slow_ppm: u64,
    pub(crate) slow_call_nanos: u64,
    /// Effective: at most what a count window is sure to hold.
    pub(crate) minimum_calls: u64,
    pub(crate) window: WindowKind,
    pub(crate) open_duration: Duration,
    pub(crate) growth: f64,
    pub(crate) max_open_duration: Duration,
    pub(crate) half_open_probes: u32,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) clock: BreakerClock,
    pub(crate) on_transition: Option<TransitionCallback>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("failure_ppm", &self.failure_ppm)
            .field("slow_ppm", &self.slow_ppm)
            .field("slow_call_nanos", &self.slow_call_nanos)
            .field("minimum_calls", &self.minimum_calls)
            .field("window", &self.window)
            .field("open_duration", &self.open_duration)
            .field("growth", &self.growth)
            .field("max_open_duration", &self.max_open_duration)
            .field("half_open_probes", &self.half_open_probes)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The open duration after the `trips`-th trip in a row (1-based).
    pub(crate) fn open_duration_for(&self, trips: u32) -> Duration {
        if self.growth == 1.0 || trips <= 1 {
            return self.open_duration.min(self.max_open_duration);
        }
        let exp = i32::try_from(trips - 1).unwrap_or(i32::MAX);
        let secs = self.open_duration.as_secs_f64() * self.growth.powi(exp);
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max_open_duration)
            .min(self.max_open_duration)
    }

    /// Whether slow calls are counted (a `slow_call_duration` was set): only then does a
    /// breaker time its calls.
    #[inline]
    pub(crate) fn counts_slow_calls(&self) -> bool {
        self.slow_call_nanos != u64::MAX
    }

    /// Whether a closed breaker can record a call's outcome without reading its clock: a count
    /// window (it places outcomes by their index) that does not time calls.
    #[inline]
    pub(crate) fn clock_free_closed(&self) -> bool {
        matches!(self.window, WindowKind::Count { .. }) && !self.counts_slow_calls()
    }

    /// Whether `bad` out of `calls` reaches a threshold in parts per million (in 128 bits: a
    /// window's counts go up to 2^54).
    #[inline]
    pub(crate) fn reaches(bad: u64, calls: u64, ppm: u64) -> bool {
        calls > 0 && u128::from(bad) * 1_000_000 >= u128::from(ppm) * u128::from(calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::ManualClock;

    fn builder() -> BreakerBuilder {
        CircuitBreaker::builder().clock(ManualClock::new())
    }

    #[test]
    fn the_defaults_are_valid() {
        assert!(BreakerBuilder::new().build().is_ok());
        let breaker = CircuitBreaker::default();
        assert_eq!(breaker.state(), crate::breaker::State::Closed);
    }

    #[test]
    fn every_invalid_setting_is_an_error() {
        use BreakerConfigError as E;
        let cases: Vec<(BreakerBuilder, E)> = vec![
            (
                builder().failure_rate_threshold(0.0),
                E::FailureRateThreshold,
            ),
            (
                builder().failure_rate_threshold(1.5),
                E::FailureRateThreshold,
            ),
            (
                builder().failure_rate_threshold(f64::NAN),
                E::FailureRateThreshold,
            ),
            (
                builder().failure_rate_threshold(4e-7),
                E::FailureRateThreshold,
            ),
            (
                builder().slow_call_rate_threshold(0.0),
                E::SlowCallRateThreshold,
            ),
            (
                builder().slow_call_rate_threshold(1e-7),
                E::SlowCallRateThreshold,
            ),
            (
                builder().slow_call_duration(Duration::ZERO),
                E::SlowCallDuration,
            ),
            (builder().minimum_calls(0), E::MinimumCalls),
            (builder().buckets(1), E::Buckets),
            (builder().buckets(65), E::Buckets),
            (
                builder().sliding_window(SlidingWindow::Count(1)),
                E::WindowSize,
            ),
            (
                builder().sliding_window(SlidingWindow::Count((1 << 30) + 1)),
                E::WindowSize,
            ),
            (
                builder().sliding_window(SlidingWindow::Time(Duration::from_nanos(5))),
                E::WindowSize,
            ),
            (
                builder().sliding_window(SlidingWindow::Time(Duration::from_secs(366 * 24 * 3600))),
                E::WindowSize,
            ),
            (builder().half_open_probes(0), E::HalfOpenProbes),
            (
                builder().half_open_probes(MAX_HALF_OPEN_PROBES + 1),
                E::HalfOpenProbes,
            ),
            (builder().open_duration(Duration::ZERO), E::OpenDuration),
            (
                builder().open_duration(Duration::from_micros(999)),
                E::OpenDuration,
            ),
            (
                builder().open_duration_growth(2.0, Duration::from_millis(1)),
                E::OpenDuration,
            ),
            (
                builder().open_duration_growth(0.5, Duration::from_secs(60)),
                E::GrowthFactor,
            ),
            (
                builder().open_duration_growth(f64::INFINITY, Duration::from_secs(60)),
                E::GrowthFactor,
            ),
        ];
        for (builder, expected) in cases {
            let debug = format!("{builder:?}");
            assert_eq!(builder.build().unwrap_err(), expected, "{debug}");
        }
    }

    /// An explicit minimum or bucket count that a count window cannot honour is an error; the
    /// defaults are lowered to fit instead.
    #[test]
    fn count_windows_reject_explicit_values_they_cannot_honour() {
        let count = |n| builder().sliding_window(SlidingWindow::Count(n));
        // 100 calls in 10 buckets of 10: sure to hold 91.
        assert_eq!(
            count(100).minimum_calls(92).build().unwrap_err(),
            BreakerConfigError::MinimumCalls
        );
        let config = count(100).minimum_calls(91).validate().unwrap();
        assert_eq!(config.minimum_calls, 91);
        // The default minimum (20) fits a window of 100; a window of 10 lowers it to 10.
        assert_eq!(count(100).validate().unwrap().minimum_calls, 20);
        assert_eq!(count(10).validate().unwrap().minimum_calls, 10);
        assert_eq!(
            count(10).minimum_calls(20).build().unwrap_err(),
            BreakerConfigError::MinimumCalls
        );
        // More buckets than calls: an error when asked for, the default is lowered.
        assert_eq!(
            count(5).buckets(6).build().unwrap_err(),
            BreakerConfigError::Buckets
        );
        assert_eq!(count(5).validate().unwrap().window.buckets(), 5);
        assert_eq!(count(5).buckets(5).validate().unwrap().window.buckets(), 5);
        // A time window takes any minimum.
        assert!(builder().minimum_calls(u32::MAX).build().is_ok());
    }
}
