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

/// A [`RedisSource`](super::redis::RedisSource) setting that cannot work: the URL does not
/// parse, or a duration is zero. Returned by
/// [`RedisSourceBuilder::build`](super::redis::RedisSourceBuilder::build).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[derive(Debug)]
#[non_exhaustive]
pub struct InvalidRedisConfig {
    what: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

#[cfg(feature = "redis")]
impl InvalidRedisConfig {
    pub(crate) fn new(
        what: impl Into<String>,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            what: what.into(),
            source,
        }
    }
}

#[cfg(feature = "redis")]
impl fmt::Display for InvalidRedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid maintenance Redis setting: {}", self.what)
    }
}

#[cfg(feature = "redis")]
impl std::error::Error for InvalidRedisConfig {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Redis could not be reached (or did not answer in time) for a write: nothing was changed.
///
/// Returned by [`RedisSource::enable_with`](super::redis::RedisSource::enable_with) and
/// [`disable`](super::redis::RedisSource::disable); the admin router answers `503` with
/// `Retry-After` for it.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[derive(Debug)]
pub struct RedisUnavailable {
    source: Box<dyn std::error::Error + Send + Sync>,
}

#[cfg(feature = "redis")]
impl RedisUnavailable {
    pub(crate) fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            source: source.into(),
        }
    }
}

#[cfg(feature = "redis")]
impl fmt::Display for RedisUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("maintenance store (redis) unavailable")
    }
}

#[cfg(feature = "redis")]
impl std::error::Error for RedisUnavailable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
