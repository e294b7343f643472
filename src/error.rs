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
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidConfig {
    message: &'static str,
}

impl InvalidConfig {
    #[allow(dead_code)]
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
