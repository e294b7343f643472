use tower_layer::Layer;

use super::{Catch, Classify, DefaultClassifier};
use crate::refuse::RefusalPolicy;

/// Layer that turns a service's errors and panics into 500 responses (and known tower errors
/// into 503). See the [module docs](super) for what maps to what.
#[derive(Debug, Clone)]
#[must_use]
pub struct CatchLayer<C = DefaultClassifier> {
    pub(crate) classifier: C,
    pub(crate) refusal: RefusalPolicy,
}

/// What the service reads on every request (the policy is read only on failure).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) negotiate: bool,
}

impl CatchLayer<DefaultClassifier> {
    /// A layer with the default settings:
    ///
    /// - no classifier of your own: errors are 500 unless a built-in rule (tower's `Overloaded`
    ///   and `Elapsed`, tokio's `Elapsed`) recognises them;
    /// - the default [`RefusalPolicy`]: the 503s for `Overloaded` and `Elapsed` carry the
    ///   policy's shortest `Retry-After` (1 s, plus up to 1 s of jitter: the overload that
    ///   tower's `LoadShed` reports is a momentary lack of capacity; a timeout says the server
    ///   is slow now, and a 503 should tell the client when to come back); the body's format
    ///   follows the request's `Accept`.
    pub fn new() -> Self {
        Self {
            classifier: DefaultClassifier,
            refusal: RefusalPolicy::default(),
        }
    }
}

impl Default for CatchLayer<DefaultClassifier> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C> CatchLayer<C> {
    /// Uses `classifier` to map your own error types (for example an upstream failure to 502, an
    /// upstream timeout to 504). It is asked about each error of the `source()` chain, outermost
    /// first, before the built-in rules; see [`Classify`].
    pub fn classify<C2: Classify>(self, classifier: C2) -> CatchLayer<C2> {
        CatchLayer {
            classifier,
            refusal: self.refusal,
        }
    }

    /// How the generated responses are made: the `Retry-After` of the 503s, body formats,
    /// your own renderer. See [`RefusalPolicy`]; the default is [`RefusalPolicy::default`].
    ///
    /// Negotiating the body's format by `Accept` (the policy's default) costs every request,
    /// not just failing ones: this layer answers after the request has moved into the inner
    /// service, so it keeps each request's `Accept` value until the response is known (a
    /// header lookup and a reference count). A policy with
    /// [`negotiate(false)`](crate::refuse::RefusalPolicyBuilder::negotiate) saves it.
    pub fn refusal(mut self, policy: RefusalPolicy) -> Self {
        self.refusal = policy;
        self
    }
}

impl<S, C: Clone> Layer<S> for CatchLayer<C> {
    type Service = Catch<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Catch::from_parts(inner, self.classifier.clone(), self.refusal.clone())
    }
}
