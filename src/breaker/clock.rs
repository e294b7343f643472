//! Where a breaker's time comes from.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

/// A monotonic clock, read as the time elapsed since the clock's own origin.
///
/// Breakers read it to measure call latency, to place outcomes in time buckets and to know when
/// the open state ends. The default, [`TokioClock`], follows tokio's clock, so tests can use
/// `tokio::time::pause()` and `advance()`; [`ManualClock`] is moved by hand.
///
/// The origin may be any instant up to 584 years back (readings are taken in `u64`
/// nanoseconds), the Unix epoch included: a breaker counts its open times from its own
/// creation, so it works the same for 34 years after it was made whatever its clock's origin.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Time elapsed since the clock's origin. Must never go backwards.
    fn now(&self) -> Duration;
}

/// The default clock: `tokio::time::Instant`, counted from the clock's creation.
///
/// With tokio's `test-util` feature and `tokio::time::pause()`, it stands still until the test
/// advances it.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl TokioClock {
    /// [`now`](Clock::now) in nanoseconds (saturating after 584 years), without the 128-bit
    /// arithmetic of `Duration::as_nanos`.
    #[inline]
    fn nanos(&self) -> u64 {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.origin);
        elapsed
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(elapsed.subsec_nanos()))
    }
}

impl Clock for TokioClock {
    #[inline]
    fn now(&self) -> Duration {
        tokio::time::Instant::now().saturating_duration_since(self.origin)
    }
}

/// The clock a breaker reads: the default [`TokioClock`] without a virtual call (a closed
/// breaker reads its clock on every call), any other through its trait object.
#[derive(Debug, Clone)]
pub(crate) enum BreakerClock {
    Tokio(TokioClock),
    Other(Arc<dyn Clock>),
}

impl BreakerClock {
    pub(crate) fn new<C: Clock>(clock: C) -> Self {
        match (&clock as &dyn std::any::Any).downcast_ref::<TokioClock>() {
            Some(tokio) => BreakerClock::Tokio(*tokio),
            None => BreakerClock::Other(Arc::new(clock)),
        }
    }

    /// The clock's reading in nanoseconds (saturating, 584 years).
    #[inline]
    pub(crate) fn nanos(&self) -> u64 {
        match self {
            BreakerClock::Tokio(clock) => clock.nanos(),
            BreakerClock::Other(clock) => u64::try_from(clock.now().as_nanos()).unwrap_or(u64::MAX),
        }
    }
}

/// A clock that moves only when told to; clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use tower_5xx::breaker::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(clock.now(), Duration::from_millis(1500));
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // fetch_update never fails with a closure that always returns Some.
        let _ = self
            .nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(by))
            });
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Acquire))
    }
}
