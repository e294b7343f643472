use tower_layer::Layer;

use super::{Breaker, CircuitBreaker, DefaultOutcomeClassifier};
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
    /// Uses `classifier` to tell failures from successes; see [`OutcomeClassifier`](super::OutcomeClassifier).
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
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
            refusal: self.refusal.clone(),
        }
    }
}
