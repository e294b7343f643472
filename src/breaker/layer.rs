use std::time::Duration;

use http::StatusCode;
use tower_layer::Layer;

use super::{Breaker, CircuitBreaker, DefaultOutcomeClassifier, FailureIf};

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
    pub(crate) config: LayerConfig,
}

/// Settings of the generated 503.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerConfig {
    pub(crate) max_retry_after: Duration,
    pub(crate) jitter: Duration,
    pub(crate) html: bool,
}

impl BreakerLayer<DefaultOutcomeClassifier> {
    /// A layer around `breaker` with the defaults:
    ///
    /// - [`DefaultOutcomeClassifier`]: `Err` and 5xx (except 501 and 505) are failures;
    /// - `Retry-After` = the breaker's remaining open time plus a random 0 to 1 s (so clients
    ///   told to come back do not come back in one herd), at least 1 s, at most 5 minutes;
    /// - HTML bodies for clients whose `Accept` prefers `text/html`.
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self {
            breaker,
            classifier: DefaultOutcomeClassifier,
            config: LayerConfig {
                max_retry_after: Duration::from_secs(300),
                jitter: Duration::from_secs(1),
                html: true,
            },
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
    /// use http::{Request, Response, StatusCode};
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
    /// let svc = layer.layer(service_fn(|req: Request<String>| async move {
    ///     let status = req.uri().path()[1..].parse::<u16>().unwrap();
    ///     let mut res = Response::new(String::new());
    ///     *res.status_mut() = StatusCode::from_u16(status).unwrap();
    ///     Ok::<_, Infallible>(res)
    /// }));
    /// for path in ["/500", "/500"] {
    ///     svc.clone().oneshot(Request::get(path).body(String::new()).unwrap()).await.unwrap();
    /// }
    /// assert_eq!(breaker.state(), State::Closed);
    /// for path in ["/502", "/504"] {
    ///     svc.clone().oneshot(Request::get(path).body(String::new()).unwrap()).await.unwrap();
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
            config: self.config,
        }
    }

    /// The largest `Retry-After` before jitter. Default 5 minutes.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.config.max_retry_after = max;
        self
    }

    /// The largest random extra added to `Retry-After`, in whole seconds (what the header can
    /// carry), after the maximum is applied. Default 1 s; zero turns jitter off.
    pub fn retry_after_jitter(mut self, max_extra: Duration) -> Self {
        self.config.jitter = max_extra;
        self
    }

    /// Whether clients that prefer `text/html` get an HTML page (default `true`).
    pub fn html(mut self, enabled: bool) -> Self {
        self.config.html = enabled;
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
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
            config: self.config,
        }
    }
}
