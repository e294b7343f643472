use std::{error::Error, time::Duration};

use tower_layer::Layer;

use super::{Catch, Classification, Classify, DefaultClassifier, OnError};

/// Layer that turns a service's errors and panics into 500 responses (and known tower errors
/// into 503). See the [module docs](super) for what maps to what.
#[derive(Debug, Clone)]
#[must_use]
pub struct CatchLayer<C = DefaultClassifier> {
    pub(crate) classifier: C,
    pub(crate) config: Config,
}

/// Settings copied into each request's future (small and `Copy`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    /// Whole seconds: all `Retry-After` can say (kept small, the future carries a copy).
    retry_after_secs: u32,
    pub(crate) html: bool,
    pub(crate) negotiate: bool,
}

impl Config {
    pub(crate) fn retry_after(self) -> Duration {
        Duration::from_secs(u64::from(self.retry_after_secs))
    }
}

impl CatchLayer<DefaultClassifier> {
    /// A layer with the default settings:
    ///
    /// - no classifier of your own: errors are 500 unless a built-in rule (tower's `Overloaded`
    ///   and `Elapsed`, tokio's `Elapsed`) recognises them;
    /// - `Retry-After: 1` on the 503s for `Overloaded` and `Elapsed` (the overload that tower's
    ///   `LoadShed` reports is a momentary lack of capacity; a timeout says the server is slow
    ///   now, and a 503 should tell the client when to come back);
    /// - plain-text bodies: the request's `Accept` is not captured unless you ask for it with
    ///   [`negotiate(true)`](CatchLayer::negotiate) (it costs every request, not just failing
    ///   ones).
    pub fn new() -> Self {
        Self {
            classifier: DefaultClassifier,
            config: Config {
                retry_after_secs: 1,
                html: true,
                negotiate: false,
            },
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
            config: self.config,
        }
    }

    /// Replaces the classifier (and the rules [`on_error`](CatchLayer::on_error) added before
    /// this call) with `classifier`: a type of your own that implements [`Classify`], or a
    /// closure `|e: &(dyn Error + 'static)| -> Option<Classification>`. It is asked about each
    /// error of the `source()` chain, outermost first, before the built-in rules.
    pub fn classify<C2: Classify>(self, classifier: C2) -> CatchLayer<C2> {
        CatchLayer {
            classifier,
            config: self.config,
        }
    }

    /// The `Retry-After` of the 503s answered for the built-in rules (tower's `Overloaded` and
    /// `Elapsed`, tokio's `Elapsed`). Default: 1 second. Rounded up to whole seconds, as the
    /// header is sent (and at least 1); capped at about 136 years.
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        let secs = crate::retry_after::delay_secs_rounded_up(retry_after);
        self.config.retry_after_secs = u32::try_from(secs.max(1)).unwrap_or(u32::MAX);
        self
    }

    /// Whether the body of a generated response follows the request's `Accept`: problem+json
    /// for API clients, HTML for browsers, plain text otherwise. Default `false`: plain text.
    ///
    /// Unlike the 503 layers, which build their response while they hold the request, this
    /// layer answers after the request has moved into the inner service, so negotiation has to
    /// capture the `Accept` value of *every* request up front: a header-map lookup and a
    /// reference-count increment and decrement per request, which would more than double this
    /// layer's cost on the success path (see `BENCHMARKS.md`). Pay for it when your clients
    /// read 500 bodies (APIs that parse problem+json, browsers that show the HTML page).
    pub fn negotiate(mut self, enabled: bool) -> Self {
        self.config.negotiate = enabled;
        self
    }

    /// With [`negotiate(true)`](CatchLayer::negotiate): whether clients that prefer `text/html`
    /// get an HTML page (default `true`); when `false` they get plain text.
    pub fn html(mut self, enabled: bool) -> Self {
        self.config.html = enabled;
        self
    }
}

impl<S, C: Clone> Layer<S> for CatchLayer<C> {
    type Service = Catch<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Catch::from_parts(inner, self.classifier.clone(), self.config)
    }
}
