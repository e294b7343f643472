//! Errors of the retry module, and [`Failure`] to tell them apart.

use std::{fmt, time::Duration};

use crate::{breaker::error::CircuitOpen, BoxError};

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

/// The deadline of a [`RetryLayer`](super::RetryLayer) cut one of its own attempts in flight.
///
/// Only that layer's attempt makes it, and only its policy reads it (as its own deadline, a
/// [`GiveUpReason::Deadline`](super::GiveUpReason::Deadline)); the layer's response future
/// hands the caller a [`DeadlineExceeded`] instead. A `DeadlineExceeded` that an attempt
/// returns is an inner client's (a retry client nested in this one): an ordinary error of that
/// attempt, not this policy's deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeadlineCut;

impl fmt::Display for DeadlineCut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request deadline exceeded")
    }
}

impl std::error::Error for DeadlineCut {}

/// How a request through [`RetryLayer`](super::RetryLayer) (or
/// [`RetryMiddleware`](super::RetryMiddleware)) failed, read from its error so that a caller
/// can `match` instead of trying downcasts: `Failure::from(error)`.
///
/// A response is never a failure. A request still answered 503 after its retries (or not
/// retried, say because the server's `Retry-After` was longer than the cap) returns
/// `Ok(response)`: the response as the server sent it, its `Retry-After` included.
///
/// | variant | what happened | sent? |
/// |---|---|---|
/// | `CircuitOpen` | the endpoint's client breaker refused the last attempt | not that attempt |
/// | `DeadlineExceeded` | the policy's overall deadline passed | maybe |
/// | `AttemptTimedOut` | the last attempt took longer than the per-attempt timeout | maybe |
/// | `Transport` | the client's own error: connection refused or reset, DNS, TLS, an invalid URI, a request body that failed to read | maybe |
///
/// ```
/// use std::time::Duration;
/// use tower_5xx::{breaker::{CircuitBreaker, ManualClock}, retry::Failure, BoxError};
///
/// fn explain(error: BoxError) -> String {
///     match Failure::from(error) {
///         Failure::CircuitOpen(open) => {
///             format!("not sent, try again in {} s", open.retry_after().as_secs())
///         }
///         Failure::DeadlineExceeded(_) | Failure::AttemptTimedOut(_) => "too slow".to_owned(),
///         Failure::Transport(e) => format!("transport error: {e}"),
///         other => other.to_string(),
///     }
/// }
///
/// let breaker = CircuitBreaker::builder()
///     .minimum_calls(1)
///     .open_duration(Duration::from_secs(5))
///     .clock(ManualClock::new())
///     .build()
///     .unwrap();
/// breaker.try_acquire().unwrap().failure();
/// let open = breaker.try_acquire().unwrap_err();
/// assert_eq!(explain(Box::new(open)), "not sent, try again in 5 s");
/// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// assert_eq!(explain(Box::new(refused)), "transport error: connection refused");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Failure {
    /// The endpoint's client circuit breaker was open: the last attempt was not sent.
    /// [`CircuitOpen::retry_after`] says when the breaker lets calls through again.
    CircuitOpen(CircuitOpen),
    /// The policy's [deadline](super::RetryPolicyBuilder::deadline) passed.
    DeadlineExceeded(DeadlineExceeded),
    /// The last attempt took longer than the
    /// [per-attempt timeout](super::RetryPolicyBuilder::attempt_timeout).
    AttemptTimedOut(AttemptTimedOut),
    /// The client's own error, as it returned it (downcast it for details: hyper-util's
    /// `client::legacy::Error`, `reqwest::Error`, ...).
    Transport(BoxError),
}

impl Failure {
    /// How long to wait before trying this endpoint again, when the failure says so (an open
    /// breaker).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::CircuitOpen(open) => Some(open.retry_after()),
            _ => None,
        }
    }

    /// The error again, boxed.
    pub fn into_error(self) -> BoxError {
        match self {
            Failure::CircuitOpen(e) => Box::new(e),
            Failure::DeadlineExceeded(e) => Box::new(e),
            Failure::AttemptTimedOut(e) => Box::new(e),
            Failure::Transport(e) => e,
        }
    }

    fn from_known(error: &(dyn std::error::Error + 'static)) -> Option<Self> {
        if let Some(open) = error.downcast_ref::<CircuitOpen>() {
            return Some(Failure::CircuitOpen(*open));
        }
        if let Some(e) = error.downcast_ref::<DeadlineExceeded>() {
            return Some(Failure::DeadlineExceeded(*e));
        }
        error
            .downcast_ref::<AttemptTimedOut>()
            .map(|e| Failure::AttemptTimedOut(*e))
    }
}

impl From<BoxError> for Failure {
    fn from(error: BoxError) -> Self {
        Self::from_known(&*error).unwrap_or(Failure::Transport(error))
    }
}

/// reqwest-middleware's error: this crate's errors come back as
/// `reqwest_middleware::Error::Middleware`, reqwest's own as `Error::Reqwest` (`Transport`).
#[cfg(feature = "reqwest-middleware")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest-middleware")))]
impl From<reqwest_middleware::Error> for Failure {
    fn from(error: reqwest_middleware::Error) -> Self {
        match error {
            reqwest_middleware::Error::Middleware(e) => {
                let known: &(dyn std::error::Error + 'static) = e.as_ref();
                Self::from_known(known).unwrap_or_else(|| Failure::Transport(e.into()))
            }
            reqwest_middleware::Error::Reqwest(e) => Failure::Transport(Box::new(e)),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::CircuitOpen(e) => e.fmt(f),
            Failure::DeadlineExceeded(e) => e.fmt(f),
            Failure::AttemptTimedOut(e) => e.fmt(f),
            Failure::Transport(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Failure::Transport(e) => e.source(),
            _ => None,
        }
    }
}
