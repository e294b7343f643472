//! What counts as a failure.

use http::{Response, StatusCode};

use super::Outcome;

/// Decides the [`Outcome`] of a call through a [`BreakerLayer`](super::BreakerLayer) from the
/// inner service's result. Slowness is judged separately, from the latency (see
/// [`slow_call_duration`](super::BreakerBuilder::slow_call_duration)).
///
/// Implemented for closures `Fn(Result<&Response<B>, &E>) -> Outcome + Clone`:
///
/// ```
/// use std::convert::Infallible;
/// use http::Response;
/// use tower_5xx::breaker::{BreakerLayer, CircuitBreaker, Outcome};
///
/// // Only 502, 503 and 504 from the dependency count as failures.
/// let classify = |res: Result<&Response<String>, &Infallible>| match res {
///     Ok(res) if matches!(res.status().as_u16(), 502..=504) => Outcome::Failure,
///     Ok(_) => Outcome::Success,
///     Err(never) => match *never {},
/// };
/// let layer = BreakerLayer::new(CircuitBreaker::builder().build().unwrap()).classify(classify);
/// # let _ = layer;
/// ```
pub trait OutcomeClassifier<B, E>: Clone {
    /// The outcome of one call.
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome;
}

/// The default classifier: an `Err` and a 5xx response are failures, except `501 Not
/// Implemented` and `505 HTTP Version Not Supported` (they say nothing about the service's
/// health); everything else, 4xx included, is a success.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultOutcomeClassifier;

impl<B, E> OutcomeClassifier<B, E> for DefaultOutcomeClassifier {
    #[inline]
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
        match result {
            Ok(res) => status_outcome(res.status()),
            Err(_) => Outcome::Failure,
        }
    }
}

/// The default rule for a status: 5xx except 501 and 505 is a failure.
#[inline]
pub fn status_outcome(status: StatusCode) -> Outcome {
    if status.is_server_error()
        && status != StatusCode::NOT_IMPLEMENTED
        && status != StatusCode::HTTP_VERSION_NOT_SUPPORTED
    {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}

impl<F, B, E> OutcomeClassifier<B, E> for F
where
    F: Fn(Result<&Response<B>, &E>) -> Outcome + Clone,
{
    #[inline]
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
        self(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: u16) -> Outcome {
        let res = Response::builder().status(status).body(()).unwrap();
        OutcomeClassifier::<(), ()>::classify(&DefaultOutcomeClassifier, Ok(&res))
    }

    #[test]
    fn default_rules() {
        assert_eq!(outcome(200), Outcome::Success);
        assert_eq!(outcome(404), Outcome::Success);
        assert_eq!(outcome(429), Outcome::Success);
        assert_eq!(outcome(500), Outcome::Failure);
        assert_eq!(outcome(501), Outcome::Success);
        assert_eq!(outcome(502), Outcome::Failure);
        assert_eq!(outcome(503), Outcome::Failure);
        assert_eq!(outcome(505), Outcome::Success);
        assert_eq!(
            OutcomeClassifier::<(), ()>::classify(&DefaultOutcomeClassifier, Err(&())),
            Outcome::Failure
        );
    }
}
