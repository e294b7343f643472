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

/// The admin router was asked for without a usable token: an empty one (or only whitespace),
/// or one longer than 256 bytes (once trimmed).
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
        f.write_str("maintenance admin router needs a bearer token of 1 to 256 bytes")
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

/// A write to the maintenance key failed: Redis could not be reached, refused it, or did not
/// answer in time.
///
/// Returned by [`RedisSource::enable_with`](super::redis::RedisSource::enable_with) and
/// [`disable`](super::redis::RedisSource::disable); the admin router answers `503` with
/// `Retry-After` for it.
///
/// Mostly nothing was changed. But when the transaction was sent and its answer never came (a
/// timeout, a connection cut while waiting), Redis may have applied it, and the fleet may follow
/// it: [`may_have_been_applied`](Self::may_have_been_applied) says so. Writing the same state
/// again is safe either way.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[derive(Debug)]
pub struct RedisUnavailable {
    source: Box<dyn std::error::Error + Send + Sync>,
    maybe_applied: bool,
}

#[cfg(feature = "redis")]
impl RedisUnavailable {
    /// A write that failed before its transaction was sent, or that Redis refused.
    pub(crate) fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            source: source.into(),
            maybe_applied: false,
        }
    }

    /// A write whose transaction was sent without an answer coming back.
    pub(crate) fn unconfirmed(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            source: source.into(),
            maybe_applied: true,
        }
    }

    /// Whether Redis may have applied the write: `true` when the transaction was sent and no
    /// answer came back; `false` when it certainly changed nothing.
    pub fn may_have_been_applied(&self) -> bool {
        self.maybe_applied
    }
}

#[cfg(feature = "redis")]
impl fmt::Display for RedisUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.maybe_applied {
            "maintenance store (redis) did not confirm the write: it may or may not have been \
             applied"
        } else {
            "maintenance store (redis) unavailable"
        })
    }
}

#[cfg(feature = "redis")]
impl std::error::Error for RedisUnavailable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
