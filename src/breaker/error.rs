//! Errors of the breaker module.

use std::fmt;

/// A circuit breaker refused a call: it is open (or half-open with all its probes out).
///
/// Returned by [`CircuitBreaker::try_acquire`](super::CircuitBreaker::try_acquire).
/// [`retry_after`](Self::retry_after) is the time left until the breaker lets probes through:
/// what a server puts in `Retry-After`, and what a client should wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitOpen {
    state: super::State,
    retry_after: std::time::Duration,
    open_until: std::time::Duration,
}

impl CircuitOpen {
    /// `now` is the breaker's clock reading at which the call was refused.
    pub(crate) fn new(
        state: super::State,
        retry_after: std::time::Duration,
        now: std::time::Duration,
    ) -> Self {
        Self {
            state,
            retry_after,
            open_until: now.saturating_add(retry_after),
        }
    }

    /// Time left until the breaker lets probe calls through. For a breaker forced open by an
    /// operator it is the configured open duration (the real end is unknown); for a half-open
    /// breaker whose probes are all out it is zero (try again shortly).
    pub fn retry_after(&self) -> std::time::Duration {
        self.retry_after
    }

    /// When the breaker lets probe calls through, as a reading of the breaker's own
    /// [`Clock`](super::Clock) (compare it with [`Clock::now`](super::Clock::now)):
    /// the clock's time when the call was refused plus [`retry_after`](Self::retry_after). It
    /// is on the breaker's clock, whichever it is ([`TokioClock`](super::TokioClock),
    /// [`ManualClock`](super::ManualClock) or your own).
    pub fn open_until(&self) -> std::time::Duration {
        self.open_until
    }

    /// The breaker's state when it refused: open, half-open or forced open.
    pub fn state(&self) -> super::State {
        self.state
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state {
            super::State::HalfOpen => {
                f.write_str("circuit breaker is half-open and its probes are out")
            }
            super::State::ForcedOpen => f.write_str("circuit breaker is forced open"),
            _ => write!(
                f,
                "circuit breaker is open for another {} ms",
                self.retry_after.as_millis()
            ),
        }
    }
}

impl std::error::Error for CircuitOpen {}

/// A [`BreakerBuilder`](super::BreakerBuilder) setting is out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerConfigError {
    /// The failure rate threshold is not in `(0, 1]`, or below `1e-6` (one part per million).
    FailureRateThreshold,
    /// The slow-call rate threshold is not in `(0, 1]`, or below `1e-6` (one part per million).
    SlowCallRateThreshold,
    /// The minimum number of calls is zero, or above what a count window is sure to hold.
    MinimumCalls,
    /// A count window is smaller than 2 calls or larger than 2^30, or a time window is shorter
    /// than one nanosecond per bucket or longer than a year.
    WindowSize,
    /// The number of buckets is not between 2 and 64, or above a count window's size.
    Buckets,
    /// The number of half-open probes is not between 1 and 1023.
    HalfOpenProbes,
    /// The open duration is under a millisecond, or above its maximum, or the maximum is above
    /// a year.
    OpenDuration,
    /// The open-duration growth factor is below 1 or not finite.
    GrowthFactor,
    /// The slow-call duration is zero.
    SlowCallDuration,
}

impl fmt::Display for BreakerConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakerConfigError::FailureRateThreshold => {
                "failure rate threshold must be in [1e-6, 1]"
            }
            BreakerConfigError::SlowCallRateThreshold => {
                "slow-call rate threshold must be in [1e-6, 1]"
            }
            BreakerConfigError::MinimumCalls => {
                "minimum calls must be at least 1, and at most what a count window is sure to hold"
            }
            BreakerConfigError::WindowSize => "sliding window size out of range",
            BreakerConfigError::Buckets => {
                "window buckets must be between 2 and 64, and at most a count window's size"
            }
            BreakerConfigError::HalfOpenProbes => "half-open probes must be between 1 and 1023",
            BreakerConfigError::OpenDuration => {
                "open duration must be at least 1 ms and at most its maximum (at most a year)"
            }
            BreakerConfigError::GrowthFactor => "open duration growth factor must be at least 1",
            BreakerConfigError::SlowCallDuration => "slow call duration must be longer than zero",
        })
    }
}

impl std::error::Error for BreakerConfigError {}
