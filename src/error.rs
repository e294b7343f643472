//! Named error types, so a classifier or a caller can `downcast_ref` them.

use std::fmt;

#[cfg(feature = "catch")]
use crate::ErrorId;

/// A `Retry-After` value that is neither delta-seconds nor an HTTP-date.
///
/// Returned by [`RetryAfter`](crate::RetryAfter)'s parsers. The `Display` text says what was
/// wrong; the offending input is not included, since it came from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidRetryAfter {
    kind: InvalidKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InvalidKind {
    Empty,
    Negative,
    NonAscii,
    Malformed,
}

impl InvalidRetryAfter {
    pub(crate) const EMPTY: Self = Self {
        kind: InvalidKind::Empty,
    };
    pub(crate) const NEGATIVE: Self = Self {
        kind: InvalidKind::Negative,
    };
    pub(crate) const NON_ASCII: Self = Self {
        kind: InvalidKind::NonAscii,
    };
    pub(crate) const MALFORMED: Self = Self {
        kind: InvalidKind::Malformed,
    };
}

impl fmt::Display for InvalidRetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            InvalidKind::Empty => "empty Retry-After value",
            InvalidKind::Negative => "negative Retry-After delay",
            InvalidKind::NonAscii => "Retry-After value is not ASCII",
            InvalidKind::Malformed => "Retry-After is neither delta-seconds nor an HTTP-date",
        })
    }
}

impl std::error::Error for InvalidRetryAfter {}

/// The error a response body reports when it panicked while streaming.
///
/// By then the status and headers are on the wire, so the only honest outcome is to end the
/// body with an error (hyper then resets the stream or closes the connection) instead of letting
/// the panic unwind the connection task. The panic and this id are logged at error level.
#[cfg(feature = "catch")]
#[cfg_attr(docsrs, doc(cfg(feature = "catch")))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPanicked {
    error_id: ErrorId,
}

#[cfg(feature = "catch")]
impl BodyPanicked {
    pub(crate) fn new(error_id: ErrorId) -> Self {
        Self { error_id }
    }

    /// The id under which the panic was logged.
    pub fn error_id(&self) -> ErrorId {
        self.error_id
    }
}

#[cfg(feature = "catch")]
impl fmt::Display for BodyPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "response body panicked (error id {})", self.error_id)
    }
}

#[cfg(feature = "catch")]
impl std::error::Error for BodyPanicked {}

/// A configuration value out of its valid range, from a fallible constructor.
#[cfg(feature = "retry")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidConfig {
    message: &'static str,
}

#[cfg(feature = "retry")]
impl InvalidConfig {
    pub(crate) fn new(message: &'static str) -> Self {
        Self { message }
    }
}

#[cfg(feature = "retry")]
impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.message)
    }
}

#[cfg(feature = "retry")]
impl std::error::Error for InvalidConfig {}

macro_rules! marker_error {
    ($(#[$doc:meta])* $name:ident, $feature:literal, $text:literal) => {
        $(#[$doc])*
        #[cfg(feature = $feature)]
        #[cfg_attr(docsrs, doc(cfg(feature = $feature)))]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name {
            _private: (),
        }

        #[cfg(feature = $feature)]
        impl $name {
            pub(crate) fn new() -> Self {
                Self { _private: () }
            }
        }

        #[cfg(feature = $feature)]
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($text)
            }
        }

        #[cfg(feature = $feature)]
        impl std::error::Error for $name {}
    };
}

marker_error!(
    /// One attempt of a retried request took longer than the per-attempt timeout.
    AttemptTimedOut,
    "retry",
    "attempt timed out"
);

marker_error!(
    /// A retried request did not finish before its overall deadline.
    DeadlineExceeded,
    "retry",
    "request deadline exceeded"
);

/// A circuit breaker refused a call: it is open (or half-open with all its probes out).
///
/// Returned by [`CircuitBreaker::try_acquire`](crate::breaker::CircuitBreaker::try_acquire).
/// [`retry_after`](Self::retry_after) is the time left until the breaker lets probes through:
/// what a server puts in `Retry-After`, and what a client should wait.
#[cfg(feature = "breaker")]
#[cfg_attr(docsrs, doc(cfg(feature = "breaker")))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitOpen {
    state: crate::breaker::State,
    retry_after: std::time::Duration,
    open_until: std::time::Duration,
}

#[cfg(feature = "breaker")]
impl CircuitOpen {
    /// `now` is the breaker's clock reading at which the call was refused.
    pub(crate) fn new(
        state: crate::breaker::State,
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
    /// [`Clock`](crate::breaker::Clock) (compare it with [`Clock::now`](crate::breaker::Clock::now)):
    /// the clock's time when the call was refused plus [`retry_after`](Self::retry_after). It
    /// is on the breaker's clock, whichever it is ([`TokioClock`](crate::breaker::TokioClock),
    /// [`ManualClock`](crate::breaker::ManualClock) or your own).
    pub fn open_until(&self) -> std::time::Duration {
        self.open_until
    }

    /// The breaker's state when it refused: open, half-open or forced open.
    pub fn state(&self) -> crate::breaker::State {
        self.state
    }
}

#[cfg(feature = "breaker")]
impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state {
            crate::breaker::State::HalfOpen => {
                f.write_str("circuit breaker is half-open and its probes are out")
            }
            crate::breaker::State::ForcedOpen => f.write_str("circuit breaker is forced open"),
            _ => write!(
                f,
                "circuit breaker is open for another {} ms",
                self.retry_after.as_millis()
            ),
        }
    }
}

#[cfg(feature = "breaker")]
impl std::error::Error for CircuitOpen {}

/// A [`BreakerBuilder`](crate::breaker::BreakerBuilder) setting is out of range.
#[cfg(feature = "breaker")]
#[cfg_attr(docsrs, doc(cfg(feature = "breaker")))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerConfigError {
    /// The failure rate threshold is not in `(0, 1]`.
    FailureRateThreshold,
    /// The slow-call rate threshold is not in `(0, 1]`.
    SlowCallRateThreshold,
    /// The minimum number of calls is zero.
    MinimumCalls,
    /// A count window is smaller than 2 calls or larger than 2^30, or a time window is shorter
    /// than one nanosecond per bucket or longer than a year.
    WindowSize,
    /// The number of buckets is not between 2 and 64.
    Buckets,
    /// The number of half-open probes is not between 1 and 1023.
    HalfOpenProbes,
    /// The open duration is zero, or above its maximum, or the maximum is above a year.
    OpenDuration,
    /// The open-duration growth factor is below 1 or not finite.
    GrowthFactor,
}

#[cfg(feature = "breaker")]
impl fmt::Display for BreakerConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakerConfigError::FailureRateThreshold => "failure rate threshold must be in (0, 1]",
            BreakerConfigError::SlowCallRateThreshold => {
                "slow-call rate threshold must be in (0, 1]"
            }
            BreakerConfigError::MinimumCalls => "minimum calls must be at least 1",
            BreakerConfigError::WindowSize => "sliding window size out of range",
            BreakerConfigError::Buckets => "window buckets must be between 2 and 64",
            BreakerConfigError::HalfOpenProbes => "half-open probes must be between 1 and 1023",
            BreakerConfigError::OpenDuration => {
                "open duration must be non-zero and at most its maximum (at most a year)"
            }
            BreakerConfigError::GrowthFactor => "open duration growth factor must be at least 1",
        })
    }
}

#[cfg(feature = "breaker")]
impl std::error::Error for BreakerConfigError {}
