//! The lifecycle's error: the grace period ran out.

use std::fmt;

/// The grace period ran out before the server finished.
///
/// [`Lifecycle::serve`](super::Lifecycle::serve) has then closed what was left; around
/// `axum::serve`, [`Lifecycle::finish`](super::Lifecycle::finish) cannot: the connections'
/// own tasks run until the runtime shuts down.
///
/// Returned by [`Lifecycle::finish`](super::Lifecycle::finish) and
/// [`Lifecycle::serve`](super::Lifecycle::serve). It is the expected end of a shutdown whose
/// clients hold idle keep-alive connections open, not a failure: exit with status 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraceExpired {
    pub(crate) in_flight: Option<usize>,
}

impl GraceExpired {
    /// How many requests were still running at the deadline, when the server counts them
    /// ([`Lifecycle::serve`](super::Lifecycle::serve) does; `axum::serve` does not).
    pub fn in_flight(&self) -> Option<usize> {
        self.in_flight
    }
}

impl fmt::Display for GraceExpired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.in_flight {
            Some(n) => write!(f, "grace period over with {n} requests still running"),
            None => f.write_str("grace period over before the server finished"),
        }
    }
}

impl std::error::Error for GraceExpired {}
