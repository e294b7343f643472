//! Errors of the retry module.

use std::fmt;

/// A marker error: a unit struct with a private field and a lowercase `Display`.
macro_rules! marker_error {
    ($(#[$doc:meta])* $name:ident, $text:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name {
            _private: (),
        }

        impl $name {
            pub(crate) fn new() -> Self {
                Self { _private: () }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($text)
            }
        }

        impl std::error::Error for $name {}
    };
}

marker_error!(
    /// One attempt of a retried request took longer than the per-attempt timeout.
    AttemptTimedOut,
    "attempt timed out"
);

marker_error!(
    /// A retried request did not finish before its overall deadline.
    DeadlineExceeded,
    "request deadline exceeded"
);
