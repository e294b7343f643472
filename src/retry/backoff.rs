//! Exponential backoff with bounded jitter.

use std::time::Duration;

use crate::error::InvalidConfig;

/// How the random part of a backoff delay is drawn (see the AWS Architecture Blog, "Exponential
/// Backoff And Jitter"). In every mode the delay stays within `[0, max]`: jitter is applied
/// *inside* the cap, never added after it.
///
/// With `d = min(max, base * factor^(attempt - 1))`:
///
/// | mode | delay |
/// |---|---|
/// | `None` | `d` |
/// | `Full` (default) | uniform in `[0, d]` |
/// | `Equal` | `d/2` + uniform in `[0, d/2]` |
/// | `Decorrelated` | uniform in `[base, 3 * previous delay]`, capped at `max` |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// No randomness: every client retries at the same instants.
    None,
    /// Uniform in `[0, d]`: the best spread, the lowest total load.
    #[default]
    Full,
    /// Half fixed, half random: never retries almost at once.
    Equal,
    /// Each delay drawn from `[base, 3 * previous]`, capped.
    Decorrelated,
}

/// Exponential backoff: `base * factor^(attempt - 1)`, capped at `max`, with [`Jitter`].
///
/// ```
/// use std::time::Duration;
/// use tower_5xx::retry::{Backoff, Jitter};
///
/// let backoff = Backoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(5))
///     .unwrap()
///     .jitter(Jitter::None);
/// assert_eq!(backoff.delay(1, Duration::ZERO), Duration::from_millis(100));
/// assert_eq!(backoff.delay(3, Duration::ZERO), Duration::from_millis(400));
/// assert_eq!(backoff.delay(30, Duration::ZERO), Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    base: Duration,
    factor: f64,
    max: Duration,
    jitter: Jitter,
}

impl Default for Backoff {
    /// 100 ms base, factor 2, 10 s cap, full jitter.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            factor: 2.0,
            max: Duration::from_secs(10),
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// A backoff starting at `base`, growing by `factor` per attempt, capped at `max`, with full
    /// jitter. A zero `base` (and `max`) is allowed: retries then go out at once.
    ///
    /// # Errors
    ///
    /// An [`InvalidConfig`] if `factor` is not a finite number `>= 1` (setting
    /// `"backoff factor"`), or `base > max` (setting `"backoff base"`).
    pub fn new(base: Duration, factor: f64, max: Duration) -> Result<Self, InvalidConfig> {
        if !factor.is_finite() || factor < 1.0 {
            return Err(InvalidConfig::new(
                "backoff factor",
                "must be a finite number >= 1",
            ));
        }
        if base > max {
            return Err(InvalidConfig::new(
                "backoff base",
                "must not exceed the backoff's maximum",
            ));
        }
        Ok(Self {
            base,
            factor,
            max,
            jitter: Jitter::Full,
        })
    }

    /// Sets the jitter mode (default [`Jitter::Full`]).
    #[must_use]
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The cap on any single delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The un-jittered delay before retry number `retry` (1 for the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exp = self.factor.powi(retry.saturating_sub(1).min(1024) as i32);
        let secs = self.base.as_secs_f64() * exp;
        // Saturates at `max` (not finite, or past what a `Duration` holds).
        Duration::try_from_secs_f64(secs).map_or(self.max, |d| d.min(self.max))
    }

    /// The delay before retry number `retry` (1 for the first), given the previous delay (used
    /// by [`Jitter::Decorrelated`]; pass `Duration::ZERO` before the first retry).
    pub fn delay(&self, retry: u32, previous: Duration) -> Duration {
        self.delay_with(retry, previous, fastrand::f64())
    }

    /// [`Backoff::delay`] with the random draw supplied (`unit` in `[0, 1]`; a value outside is
    /// taken as the nearer end, NaN as 0), for tests and simulations. Never panics, whatever the
    /// cap (`Duration::MAX` included): the delay saturates at `max`.
    pub fn delay_with(&self, retry: u32, previous: Duration, unit: f64) -> Duration {
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        let d = self.ceiling(retry);
        let delay = match self.jitter {
            Jitter::None => d,
            Jitter::Full => fraction(d, unit),
            Jitter::Equal => (d / 2).saturating_add(fraction(d / 2, unit)),
            Jitter::Decorrelated => {
                let low = self.base;
                let high = previous.max(self.base).saturating_mul(3).min(self.max);
                if high <= low {
                    low
                } else {
                    low.saturating_add(fraction(high - low, unit))
                }
            }
        };
        delay.min(self.max)
    }
}

/// `d * unit` for `unit` in `[0, 1]`, never more than `d`. `Duration::mul_f64` panics when the
/// product, rounded to an `f64` of seconds, no longer fits a `Duration` (`Duration::MAX * 1.0`
/// rounds up past it); this saturates at `d` instead.
fn fraction(d: Duration, unit: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * unit).map_or(d, |scaled| scaled.min(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn rejects_bad_config() {
        for factor in [0.5, 0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = Backoff::new(MS, factor, MS * 10).unwrap_err();
            assert_eq!(err.setting(), "backoff factor", "{factor}");
        }
        let err = Backoff::new(MS * 20, 2.0, MS * 10).unwrap_err();
        assert_eq!(err.setting(), "backoff base");
        assert!(Backoff::new(MS, 1.0, MS).is_ok());
        assert!(Backoff::new(Duration::ZERO, 2.0, Duration::ZERO).is_ok());
    }

    #[test]
    fn the_default_is_what_new_builds() {
        let built = Backoff::new(MS * 100, 2.0, Duration::from_secs(10)).unwrap();
        assert_eq!(Backoff::default(), built);
    }

    #[test]
    fn modes_at_the_extremes() {
        let b = Backoff::new(MS * 100, 2.0, MS * 1000).unwrap();
        assert_eq!(b.jitter(Jitter::None).delay_with(2, MS, 0.3), MS * 200);
        assert_eq!(
            b.jitter(Jitter::Full).delay_with(2, MS, 0.0),
            Duration::ZERO
        );
        assert_eq!(b.jitter(Jitter::Full).delay_with(2, MS, 1.0), MS * 200);
        assert_eq!(b.jitter(Jitter::Equal).delay_with(2, MS, 0.0), MS * 100);
        assert_eq!(b.jitter(Jitter::Equal).delay_with(2, MS, 1.0), MS * 200);
        let dec = b.jitter(Jitter::Decorrelated);
        assert_eq!(dec.delay_with(1, Duration::ZERO, 0.0), MS * 100);
        assert_eq!(dec.delay_with(1, Duration::ZERO, 1.0), MS * 300);
        assert_eq!(dec.delay_with(5, MS * 900, 1.0), MS * 1000);
    }

    /// `max` has no upper bound and `unit` may be anything in `[0, 1]`: no delay panics, even
    /// with a cap of `Duration::MAX`, where `f64` seconds no longer convert back exactly.
    #[test]
    fn an_unbounded_max_never_panics() {
        let b = Backoff::new(Duration::from_secs(1), 2.0, Duration::MAX).unwrap();
        for jitter in [
            Jitter::None,
            Jitter::Full,
            Jitter::Equal,
            Jitter::Decorrelated,
        ] {
            let b = b.jitter(jitter);
            for retry in [1, 64, 100, u32::MAX] {
                for previous in [Duration::ZERO, Duration::from_secs(1), Duration::MAX] {
                    for unit in [0.0, 0.5, 1.0] {
                        let d = b.delay_with(retry, previous, unit);
                        assert!(d <= b.max(), "{jitter:?} {retry} {previous:?} {unit}");
                    }
                }
            }
        }
        assert_eq!(
            b.jitter(Jitter::Full).delay_with(100, Duration::ZERO, 1.0),
            Duration::MAX
        );
    }

    proptest! {
        #[test]
        fn never_exceeds_max(
            base_ms in 0u64..10_000,
            extra_ms in 0u64..100_000,
            factor in 1.0f64..100.0,
            retry in 0u32..100_000,
            prev_ms in 0u64..1_000_000,
            unit in 0.0f64..=1.0,
            mode in 0usize..4,
        ) {
            let max = Duration::from_millis(base_ms + extra_ms);
            let jitter = [Jitter::None, Jitter::Full, Jitter::Equal, Jitter::Decorrelated][mode];
            let b = Backoff::new(Duration::from_millis(base_ms), factor, max).unwrap().jitter(jitter);
            let d = b.delay_with(retry, Duration::from_millis(prev_ms), unit);
            prop_assert!(d <= max);
            prop_assert!(b.ceiling(retry) <= max);
        }
    }
}
