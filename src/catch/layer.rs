use std::error::Error;

use tower_layer::Layer;

use super::{Catch, Classification, Classify, DefaultClassifier, OnError};
use crate::{
    refuse::{RefusalPolicy, Refuser},
    telemetry::Meter,
};

/// Layer that turns a service's errors and panics into 500 responses (and known tower errors
/// into 503). See the [module docs](super) for what maps to what.
#[derive(Debug, Clone)]
#[must_use]
pub struct CatchLayer<C = DefaultClassifier> {
    pub(crate) classifier: C,
    pub(crate) refusal: Refuser,
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
            refusal: Refuser::new(RefusalPolicy::default(), Meter::default()),
        }
    }
}

impl Default for CatchLayer<DefaultClassifier> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C> CatchLayer<C> {
    /// Maps errors of type `E` with `rule`: for example your upstream failure to 502, your
    /// upstream timeout to 504.
    ///
    /// Every error of the `source()` chain is looked at, outermost first; for each one, the
    /// rules are tried in the order they were added, then the built-in rules, and the first
    /// match decides. So a rule for `E` also matches an `E` wrapped in other errors, and a rule
    /// can override a built-in one (say, tower's `Elapsed` as 504 on a route that only waits for
    /// an upstream).
    ///
    /// ```
    /// use std::fmt;
    /// use http::{Request, Response, StatusCode};
    /// use tower::{service_fn, Layer, ServiceExt};
    /// use tower_5xx::catch::{CatchLayer, Classification};
    ///
    /// #[derive(Debug)]
    /// struct UpstreamDown;
    /// impl fmt::Display for UpstreamDown {
    ///     fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    ///         f.write_str("upstream down")
    ///     }
    /// }
    /// impl std::error::Error for UpstreamDown {}
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = CatchLayer::new()
    ///     .on_error::<UpstreamDown>(|_| Classification::bad_gateway())
    ///     .on_error::<tower::timeout::error::Elapsed>(|_| Classification::gateway_timeout());
    ///
    /// let svc = layer.layer(service_fn(|_req: Request<String>| async {
    ///     Err::<Response<String>, _>(UpstreamDown)
    /// }));
    /// let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    /// assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    /// # }
    /// ```
    ///
    /// A rule maps every error of its type. To decide by the error's content, or by something
    /// other than a type, use [`classify`](CatchLayer::classify).
    pub fn on_error<E>(
        self,
        rule: impl Fn(&E) -> Classification + Clone,
    ) -> CatchLayer<OnError<C, E, impl Fn(&E) -> Classification + Clone>>
    where
        E: Error + 'static,
    {
        CatchLayer {
            classifier: OnError::new(self.classifier, rule),
            refusal: self.refusal,
        }
    }

    /// Replaces the classifier (and the rules [`on_error`](CatchLayer::on_error) added before
    /// this call) with `classifier`: a type of your own that implements [`Classify`], or a
    /// closure `|e: &(dyn Error + 'static)| -> Option<Classification>`. It is asked about each
    /// error of the `source()` chain, outermost first, before the built-in rules.
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
        self.refusal = Refuser::new(policy, self.refusal.meter().clone());
        self
    }

    /// Names this layer in its metrics (`name="<name>"` on every series, feature `metrics`) and
    /// in its log events.
    pub fn name(mut self, name: impl Into<std::sync::Arc<str>>) -> Self {
        self.refusal = Refuser::new(self.refusal.policy().clone(), Meter::new(Some(name.into())));
        self
    }
}

impl<S, C: Clone> Layer<S> for CatchLayer<C> {
    type Service = Catch<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Catch::from_parts(inner, self.classifier.clone(), self.refusal.clone())
    }
}
