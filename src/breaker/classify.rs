//! What counts as a failure.

use std::fmt;

use http::{Response, StatusCode};

use super::Outcome;

/// Decides the [`Outcome`] of a call through a [`BreakerLayer`](super::BreakerLayer) from the
/// inner service's result. Slowness is judged separately, from the latency (see
/// [`slow_call_duration`](super::BreakerBuilder::slow_call_duration)).
///
/// To count failures by status, [`BreakerLayer::failure_if`](super::BreakerLayer::failure_if)
/// takes a closure of the status alone. Implement this trait, or pass a closure
/// `Fn(Result<&Response<B>, &E>) -> Outcome + Clone` to
/// [`BreakerLayer::classify`](super::BreakerLayer::classify), to look at the response's
/// headers or at the error:
///
/// ```
/// use std::convert::Infallible;
/// use http::Response;
/// use tower_5xx::breaker::{BreakerLayer, CircuitBreaker, Outcome};
///
/// // A 503 counts as a failure unless the dependency says it is in maintenance.
/// let classify = |res: Result<&Response<String>, &Infallible>| match res {
///     Ok(res) if res.headers().contains_key("x-maintenance") => Outcome::Success,
///     Ok(res) if res.status().is_server_error() => Outcome::Failure,
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
///
/// A deliberate refusal made by a layer of this crate below the breaker (a response whose
/// extensions carry [`Reason`](crate::Reason) `Shed`, `Maintenance`, `Draining` or
/// `RateLimited`) is ignored, whatever its status (`429`, `503`, or what a
/// [custom renderer](crate::refuse) chose): an overloaded, rate-limited or draining server is
/// not a failing dependency, a breaker around a shed layer must not open because the shed
/// layer did its job, and a half-open probe answered by a rate limiter below says nothing about
/// the dependency (its probe slot is given back). Only a `2xx` response is taken at its status
/// without looking at its extensions, so the success path costs no lookup.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultOutcomeClassifier;

impl<B, E> OutcomeClassifier<B, E> for DefaultOutcomeClassifier {
    #[inline]
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
        match result {
            Ok(res) => {
                let status = res.status();
                if !status.is_success() && is_deliberate_refusal(res.extensions().get()) {
                    Outcome::Ignored
                } else {
                    status_outcome(status)
                }
            }
            Err(_) => Outcome::Failure,
        }
    }
}

/// Whether a response's [`Reason`](crate::Reason) says a layer refused the request on purpose.
#[inline]
fn is_deliberate_refusal(reason: Option<&crate::Reason>) -> bool {
    matches!(
        reason,
        Some(
            crate::Reason::Shed
                | crate::Reason::Maintenance
                | crate::Reason::Draining
                | crate::Reason::RateLimited
        )
    )
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

/// The classifier made by [`BreakerLayer::failure_if`](super::BreakerLayer::failure_if): a
/// response is a failure when `F` says so of its status; an `Err` is always a failure.
#[derive(Clone, Copy)]
pub struct FailureIf<F> {
    is_failure: F,
}

impl<F> FailureIf<F> {
    pub(crate) fn new(is_failure: F) -> Self {
        Self { is_failure }
    }
}

impl<F> fmt::Debug for FailureIf<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureIf").finish_non_exhaustive()
    }
}

impl<F, B, E> OutcomeClassifier<B, E> for FailureIf<F>
where
    F: Fn(StatusCode) -> bool + Clone,
{
    #[inline]
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
        match result {
            Ok(res) if !(self.is_failure)(res.status()) => Outcome::Success,
            _ => Outcome::Failure,
        }
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

    #[test]
    fn deliberate_refusals_of_layers_below_are_ignored() {
        use crate::Reason;
        let classify = |status: u16, reason: Reason| {
            let mut res = Response::builder().status(status).body(()).unwrap();
            res.extensions_mut().insert(reason);
            OutcomeClassifier::<(), ()>::classify(&DefaultOutcomeClassifier, Ok(&res))
        };
        for reason in [
            Reason::Shed,
            Reason::Maintenance,
            Reason::Draining,
            Reason::RateLimited,
        ] {
            assert_eq!(classify(503, reason), Outcome::Ignored, "{reason}");
            assert_eq!(classify(429, reason), Outcome::Ignored, "{reason}");
            assert_eq!(classify(403, reason), Outcome::Ignored, "{reason}");
        }
        // A dependency's own failures still count, whoever generated the response.
        assert_eq!(classify(500, Reason::Internal), Outcome::Failure);
        assert_eq!(classify(503, Reason::CircuitOpen), Outcome::Failure);
        assert_eq!(classify(503, Reason::Timeout), Outcome::Failure);
        assert_eq!(classify(502, Reason::BadGateway), Outcome::Failure);
    }

    #[test]
    fn failure_if_judges_the_status_and_counts_errors() {
        let gateway = FailureIf::new(|status: StatusCode| matches!(status.as_u16(), 502..=504));
        let outcome = |status: u16| {
            let res = Response::builder().status(status).body(()).unwrap();
            OutcomeClassifier::<(), ()>::classify(&gateway, Ok(&res))
        };
        assert_eq!(outcome(200), Outcome::Success);
        assert_eq!(outcome(500), Outcome::Success);
        assert_eq!(outcome(502), Outcome::Failure);
        assert_eq!(outcome(504), Outcome::Failure);
        assert_eq!(
            OutcomeClassifier::<(), ()>::classify(&gateway, Err(&())),
            Outcome::Failure
        );
    }
}
