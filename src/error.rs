//! The crate-wide error types: a bad `Retry-After` value, and an invalid setting.
//!
//! Errors that belong to one middleware live in its module (`breaker::error`, `retry::error`,
//! `catch::error`, `maintenance::error`), so a classifier can `downcast_ref` them by one path.

use std::fmt;

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

/// A setting out of its valid range, reported by the fallible constructor or `build()` that
/// received it (never clamped or ignored in silence).
///
/// Returned by [`RetryPolicyBuilder::build`](crate::retry::RetryPolicyBuilder::build),
/// [`Backoff::new`](crate::retry::Backoff::new) and
/// [`RetryBudget::new`](crate::retry::RetryBudget::new). [`setting`](Self::setting) names the
/// setting, as its builder method or argument is named, so a program can tell which one it was;
/// the `Display` text also says what the valid range is.
///
/// ```
/// use tower_5xx::retry::RetryPolicy;
///
/// let err = RetryPolicy::builder().max_attempts(0).build().unwrap_err();
/// assert_eq!(err.setting(), "max_attempts");
/// assert_eq!(err.to_string(), "invalid max_attempts: must be at least 1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidConfig {
    setting: &'static str,
    message: &'static str,
}

impl InvalidConfig {
    #[cfg(any(
        feature = "catch",
        feature = "maintenance",
        feature = "shed",
        feature = "breaker",
        feature = "retry",
        feature = "lifecycle",
        feature = "rate-limit"
    ))]
    pub(crate) fn new(setting: &'static str, message: &'static str) -> Self {
        Self { setting, message }
    }

    /// The rejected setting, named as its builder method or constructor argument
    /// (`"max_attempts"`, `"retry_status"`, `"backoff factor"`, ...).
    pub fn setting(&self) -> &'static str {
        self.setting
    }
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.setting, self.message)
    }
}

impl std::error::Error for InvalidConfig {}
