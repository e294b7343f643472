//! Errors of the maintenance module.

use std::fmt;

/// A [`Window`](super::Window) whose end is not after its start, or is after the latest time an
/// HTTP-date can name (9999-12-31 23:59:59 UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidWindow {
    too_late: bool,
}

impl InvalidWindow {
    pub(crate) fn ends_before_start() -> Self {
        Self { too_late: false }
    }

    pub(crate) fn ends_too_late() -> Self {
        Self { too_late: true }
    }
}

impl fmt::Display for InvalidWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.too_late {
            "maintenance window ends after the latest HTTP-date (9999-12-31 23:59:59 UTC)"
        } else {
            "maintenance window ends before it starts"
        })
    }
}

impl std::error::Error for InvalidWindow {}

/// The admin router was asked for without a token (an empty one, or only whitespace).
///
/// Returned by [`admin::router`](super::admin::router): an admin endpoint that anyone could
/// call would let anyone take the service down.
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MissingToken;

#[cfg(feature = "axum")]
impl fmt::Display for MissingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("maintenance admin router needs a non-empty bearer token")
    }
}

#[cfg(feature = "axum")]
impl std::error::Error for MissingToken {}
