use http::StatusCode;
use tower_layer::Layer;

use super::{Breaker, CircuitBreaker, DefaultOutcomeClassifier, FailureIf};
use crate::refuse::RefusalPolicy;

/// Layer that guards a service with a [`CircuitBreaker`]: while the breaker is open, requests
/// are answered `503 Service Unavailable` with `Retry-After` without calling the service. See
/// the [module docs](super).
///
/// Every service the layer makes shares the one breaker it was given.
#[derive(Debug, Clone)]
#[must_use]
pub struct BreakerLayer<C = DefaultOutcomeClassifier> {
    pub(crate) breaker: CircuitBreaker,
    pub(crate) classifier: C,
    pub(crate) refusal: RefusalPolicy,
}

impl BreakerLayer<DefaultOutcomeClassifier> {
    /// A layer around `breaker` with the defaults:
    ///
    /// - [`DefaultOutcomeClassifier`]: `Err` and 5xx (except 501 and 505) are failures;
    /// - the default [`RefusalPolicy`]: `Retry-After` = the breaker's remaining open time
    ///   (at least 1 s) plus a random 0 to 1 s, so clients told to come back do not come back
    ///   in one herd; the body by the request's `Accept`.
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self {
            breaker,
            classifier: DefaultOutcomeClassifier,
            refusal: RefusalPolicy::default(),
        }
    }
}

impl<C> BreakerLayer<C> {
    /// Counts a response as a failure when `is_failure` says so of its status, and every `Err`
    /// of the inner service as a failure; everything else is a success. It replaces the default
    /// rule (5xx but 501 and 505) or an earlier [`classify`](BreakerLayer::classify).
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use bytes::Bytes;
    /// use http::{Request, Response, StatusCode};
    /// use http_body_util::Full;
    /// use tower::{service_fn, Layer, ServiceExt};
    /// use tower_5xx::breaker::{BreakerLayer, CircuitBreaker, State};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let breaker = CircuitBreaker::builder().minimum_calls(2).build().unwrap();
    /// // Only the gateway errors of the upstream count; its 500s are its users' problem.
    /// let layer = BreakerLayer::new(breaker.clone())
    ///     .failure_if(|status| matches!(status.as_u16(), 502..=504));
    ///
    /// let svc = layer.layer(service_fn(|req: Request<Full<Bytes>>| async move {
    ///     let status = req.uri().path()[1..].parse::<u16>().unwrap();
    ///     let mut res = Response::new(Full::<Bytes>::default());
    ///     *res.status_mut() = StatusCode::from_u16(status).unwrap();
    ///     Ok::<_, Infallible>(res)
    /// }));
    /// for path in ["/500", "/500"] {
    ///     svc.clone().oneshot(Request::get(path).body(Full::default()).unwrap()).await.unwrap();
    /// }
    /// assert_eq!(breaker.state(), State::Closed);
    /// for path in ["/502", "/504"] {
    ///     svc.clone().oneshot(Request::get(path).body(Full::default()).unwrap()).await.unwrap();
    /// }
    /// assert_eq!(breaker.state(), State::Open);
    /// # }
    /// ```
    pub fn failure_if<F>(self, is_failure: F) -> BreakerLayer<FailureIf<F>>
    where
        F: Fn(StatusCode) -> bool + Clone,
    {
        self.classify(FailureIf::new(is_failure))
    }

    /// Uses `classifier` to tell failures from successes, from the inner service's whole
    /// result: a type of your own or a closure; see [`OutcomeClassifier`](super::OutcomeClassifier). To judge by status
    /// alone, [`failure_if`](BreakerLayer::failure_if) is shorter.
    pub fn classify<C2>(self, classifier: C2) -> BreakerLayer<C2> {
        BreakerLayer {
            breaker: self.breaker,
            classifier,
            refusal: self.refusal,
        }
    }

    /// How the 503 is made: `Retry-After` bounds, jitter and form, body formats, your own
    /// renderer. See [`RefusalPolicy`]; the default is [`RefusalPolicy::default`].
    pub fn refusal(mut self, policy: RefusalPolicy) -> Self {
        self.refusal = policy;
        self
    }

    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl<S, C: Clone> Layer<S> for BreakerLayer<C> {
    type Service = Breaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Breaker {
            inner,
            shared: std::sync::Arc::new(super::service::Shared {
                breaker: self.breaker.clone(),
                classifier: self.classifier.clone(),
                refusal: self.refusal.clone(),
            }),
        }
    }
}
