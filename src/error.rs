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

/// A configuration value out of its valid range, from a fallible constructor.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidConfig {
    message: &'static str,
}

impl InvalidConfig {
    #[cfg(any(
        feature = "catch",
        feature = "maintenance",
        feature = "shed",
        feature = "breaker",
        feature = "retry"
    ))]
    pub(crate) fn new(message: &'static str) -> Self {
        Self { message }
    }
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.message)
    }
}

impl std::error::Error for InvalidConfig {}
