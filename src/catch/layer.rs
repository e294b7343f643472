use std::time::Duration;

use tower_layer::Layer;

use super::{Catch, Classify, DefaultClassifier};

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
    pub(crate) overloaded_retry_after: Duration,
    pub(crate) html: bool,
}

impl CatchLayer<DefaultClassifier> {
    /// A layer with the default settings:
    ///
    /// - no classifier of your own: errors are 500 unless a built-in rule (tower's `Overloaded`
    ///   and `Elapsed`, tokio's `Elapsed`) recognises them;
    /// - `Retry-After: 1` on the 503 for `Overloaded` (a shed request may retry soon; the
    ///   overload that tower's `LoadShed` reports is a momentary lack of capacity);
    /// - HTML bodies for clients whose `Accept` prefers `text/html`.
    pub fn new() -> Self {
        Self {
            classifier: DefaultClassifier,
            config: Config {
                overloaded_retry_after: Duration::from_secs(1),
                html: true,
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
    /// Uses `classifier` to map your own error types (for example an upstream failure to 502, an
    /// upstream timeout to 504). It is asked about each error of the `source()` chain, outermost
    /// first, before the built-in rules; see [`Classify`].
    pub fn classify<C2: Classify>(self, classifier: C2) -> CatchLayer<C2> {
        CatchLayer {
            classifier,
            config: self.config,
        }
    }

    /// The `Retry-After` of the 503 answered for tower's `Overloaded` error. Default: 1 second.
    pub fn overloaded_retry_after(mut self, retry_after: Duration) -> Self {
        self.config.overloaded_retry_after = retry_after;
        self
    }

    /// Whether clients that prefer `text/html` get an HTML page (default `true`); when `false`
    /// they get plain text.
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
