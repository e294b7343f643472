//! Mapping errors to statuses.

use std::{borrow::Cow, error::Error, fmt, marker::PhantomData, time::Duration};

use http::StatusCode;

use crate::{error_chain, Reason, RetryAfter};

/// What a failed request turns into: a status, a [`Reason`], and optionally a `Retry-After` and
/// a client-facing detail text.
///
/// Returned by a [`Classify`] implementation for the errors it recognises.
///
/// ```
/// use http::StatusCode;
/// use tower_5xx::{catch::Classification, Reason};
///
/// let c = Classification::bad_gateway();
/// assert_eq!(c.status(), StatusCode::BAD_GATEWAY);
/// assert_eq!(c.reason(), Reason::BadGateway);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub(crate) status: StatusCode,
    pub(crate) reason: Reason,
    pub(crate) retry_after: Option<RetryAfter>,
    pub(crate) detail: Option<Cow<'static, str>>,
}

impl Classification {
    /// A classification with this status. The [`Reason`] follows from it: 500 is
    /// [`Reason::Internal`], 502 [`Reason::BadGateway`], 504 [`Reason::GatewayTimeout`], anything
    /// else [`Reason::Classified`]; change it with [`Classification::with_reason`].
    ///
    /// A failure is answered with a 4xx or a 5xx: any other status (a 2xx or 3xx would tell the
    /// client the request worked, a 1xx is no final response at all and hyper would send a 500
    /// while the log said otherwise) is taken as 500, [`Reason::Internal`].
    pub fn new(status: StatusCode) -> Self {
        let status = if status.is_client_error() || status.is_server_error() {
            status
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        let reason = match status {
            StatusCode::INTERNAL_SERVER_ERROR => Reason::Internal,
            StatusCode::BAD_GATEWAY => Reason::BadGateway,
            StatusCode::GATEWAY_TIMEOUT => Reason::GatewayTimeout,
            _ => Reason::Classified,
        };
        Self {
            status,
            reason,
            retry_after: None,
            detail: None,
        }
    }

    /// 500 Internal Server Error, [`Reason::Internal`]: what an unrecognised error becomes.
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// 502 Bad Gateway, [`Reason::BadGateway`]: an upstream the server called failed.
    pub fn bad_gateway() -> Self {
        Self::new(StatusCode::BAD_GATEWAY)
    }

    /// 504 Gateway Timeout, [`Reason::GatewayTimeout`]: an upstream did not answer in time.
    pub fn gateway_timeout() -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT)
    }

    /// 503 Service Unavailable for a known state, with the given reason and `Retry-After`
    /// (`None`: the refusal policy's minimum; a 503 always carries one).
    pub fn service_unavailable(reason: Reason, retry_after: Option<RetryAfter>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason,
            retry_after,
            detail: None,
        }
    }

    /// Sets the reason stored in the response's extensions.
    #[must_use]
    pub fn with_reason(mut self, reason: Reason) -> Self {
        self.reason = reason;
        self
    }

    /// Sets the `Retry-After` header of the response.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: RetryAfter) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// Sets the client-facing detail text. It is sent to the client: keep internal information
    /// out of it.
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The reason.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<RetryAfter> {
        self.retry_after
    }
}

/// Maps an error to a [`Classification`], or `None` for "not mine".
///
/// [`CatchLayer`](super::CatchLayer) calls it for each error of the `source()` chain, outermost
/// first, before its built-in rules; the first `Some` decides.
///
/// Most classifiers need no implementation of their own: [`CatchLayer::on_error`] adds a rule
/// for one error type, as a closure. Implement this trait for a classifier you want to name (a
/// field of your own type) or share between layers. It is also implemented for closures
/// `Fn(&(dyn Error + 'static)) -> Option<Classification> + Clone`, whose argument type has to be
/// written out (a closure passed to a generic parameter cannot have it inferred):
///
/// ```
/// use std::error::Error;
/// use tower_5xx::catch::{CatchLayer, Classification, Classify};
///
/// #[derive(Debug)]
/// struct UpstreamDown;
/// impl std::fmt::Display for UpstreamDown {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("upstream down")
///     }
/// }
/// impl Error for UpstreamDown {}
///
/// /// Our services' classifier: one type, shared by every router.
/// #[derive(Debug, Clone)]
/// struct Upstreams;
///
/// impl Classify for Upstreams {
///     fn classify(&self, e: &(dyn Error + 'static)) -> Option<Classification> {
///         e.is::<UpstreamDown>().then(Classification::bad_gateway)
///     }
/// }
///
/// let layer: CatchLayer<Upstreams> = CatchLayer::new().classify(Upstreams);
///
/// // The same as a closure: the argument's type is spelled out.
/// let layer = CatchLayer::new().classify(|e: &(dyn Error + 'static)| {
///     e.is::<UpstreamDown>().then(Classification::bad_gateway)
/// });
/// # let _ = layer;
/// ```
///
/// [`CatchLayer::on_error`]: super::CatchLayer::on_error
pub trait Classify: Clone {
    /// Classifies one error of the chain.
    fn classify(&self, error: &(dyn Error + 'static)) -> Option<Classification>;
}

/// The classifier of [`CatchLayer::new`](super::CatchLayer::new): recognises nothing itself,
/// leaving the built-in rules (tower's `Overloaded` and `Elapsed`, tokio's `Elapsed`, and with
/// their features the hyper-util and reqwest client errors) and the 500 fallback.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl Classify for DefaultClassifier {
    #[inline]
    fn classify(&self, _error: &(dyn Error + 'static)) -> Option<Classification> {
        None
    }
}

impl<F> Classify for F
where
    F: Fn(&(dyn Error + 'static)) -> Option<Classification> + Clone,
{
    #[inline]
    fn classify(&self, error: &(dyn Error + 'static)) -> Option<Classification> {
        self(error)
    }
}

/// The classifier made by [`CatchLayer::on_error`]: asks the classifier it was added to first,
/// then maps an error of type `E` with `rule`.
///
/// [`CatchLayer::on_error`]: super::CatchLayer::on_error
pub struct OnError<C, E, F> {
    first: C,
    rule: F,
    _error: PhantomData<fn(&E)>,
}

impl<C, E, F> OnError<C, E, F> {
    pub(crate) fn new(first: C, rule: F) -> Self {
        Self {
            first,
            rule,
            _error: PhantomData,
        }
    }
}

impl<C: Clone, E, F: Clone> Clone for OnError<C, E, F> {
    fn clone(&self) -> Self {
        Self::new(self.first.clone(), self.rule.clone())
    }
}

impl<C: fmt::Debug, E, F> fmt::Debug for OnError<C, E, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnError")
            .field("first", &self.first)
            .field("error", &std::any::type_name::<E>())
            .finish_non_exhaustive()
    }
}

impl<C, E, F> Classify for OnError<C, E, F>
where
    C: Classify,
    E: Error + 'static,
    F: Fn(&E) -> Classification + Clone,
{
    #[inline]
    fn classify(&self, error: &(dyn Error + 'static)) -> Option<Classification> {
        self.first
            .classify(error)
            .or_else(|| error.downcast_ref::<E>().map(&self.rule))
    }
}

/// The built-in rules: stock tower and tokio errors that mean a known state, then the HTTP
/// clients' errors of the enabled features (502 / 504).
pub(crate) fn builtin(
    error: &(dyn Error + 'static),
    retry_after_503: Duration,
) -> Option<Classification> {
    if error.is::<tower::load_shed::error::Overloaded>() {
        return Some(Classification::service_unavailable(
            Reason::Shed,
            Some(RetryAfter::Delay(retry_after_503)),
        ));
    }
    if error.is::<tower::timeout::error::Elapsed>() || error.is::<tokio::time::error::Elapsed>() {
        return Some(Classification::service_unavailable(
            Reason::Timeout,
            Some(RetryAfter::Delay(retry_after_503)),
        ));
    }
    super::upstream::classify(error)
}

/// Walks the `source()` chain: the user's classifier, then the built-in rules, for each error,
/// outermost first; 500 if nothing matches.
pub(crate) fn classify_chain<C: Classify>(
    classifier: &C,
    error: &(dyn Error + 'static),
    retry_after_503: Duration,
) -> Classification {
    error_chain::sources(error)
        .find_map(|e| {
            classifier
                .classify(e)
                .or_else(|| builtin(e, retry_after_503))
        })
        .unwrap_or_else(Classification::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_that_is_no_failure_is_taken_as_500() {
        for status in [100, 101, 200, 204, 304] {
            let c = Classification::new(StatusCode::from_u16(status).unwrap());
            assert_eq!(
                (c.status, c.reason),
                (StatusCode::INTERNAL_SERVER_ERROR, Reason::Internal),
                "{status}"
            );
        }
        for status in [400, 404, 429, 500, 503, 599] {
            let c = Classification::new(StatusCode::from_u16(status).unwrap());
            assert_eq!(c.status.as_u16(), status);
        }
    }

    #[derive(Debug)]
    struct Wrapper(Box<dyn Error + Send + Sync>);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapper")
        }
    }
    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    const ONE_SEC: Duration = Duration::from_secs(1);

    use crate::error_chain::Cyclic;

    #[test]
    fn a_cyclic_chain_is_500_not_a_hang() {
        let c = classify_chain(&DefaultClassifier, &Cyclic, ONE_SEC);
        assert_eq!(c, Classification::internal());
    }

    #[test]
    fn unknown_errors_are_500() {
        let e = std::io::Error::other("boom");
        let c = classify_chain(&DefaultClassifier, &e, ONE_SEC);
        assert_eq!(c, Classification::internal());
    }

    #[test]
    fn overloaded_deep_in_the_chain_is_503_with_retry_after() {
        let e = Wrapper(Box::new(Wrapper(Box::new(
            tower::load_shed::error::Overloaded::new(),
        ))));
        let c = classify_chain(&DefaultClassifier, &e, ONE_SEC);
        assert_eq!(c.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(c.reason(), Reason::Shed);
        assert_eq!(c.retry_after, Some(RetryAfter::Delay(ONE_SEC)));
    }

    #[test]
    fn elapsed_is_503_timeout() {
        let e = Wrapper(Box::new(tower::timeout::error::Elapsed::new()));
        let c = classify_chain(&DefaultClassifier, &e, ONE_SEC);
        assert_eq!(c.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(c.reason(), Reason::Timeout);
        assert_eq!(c.retry_after, Some(RetryAfter::Delay(ONE_SEC)));
    }

    #[test]
    fn user_classifier_runs_first_and_per_link() {
        let classifier =
            |e: &(dyn Error + 'static)| e.is::<std::io::Error>().then(Classification::bad_gateway);
        let e = Wrapper(Box::new(std::io::Error::other("upstream")));
        let c = classify_chain(&classifier, &e, ONE_SEC);
        assert_eq!(c.status(), StatusCode::BAD_GATEWAY);
        // The user's rule can also override a built-in one.
        let overriding = |e: &(dyn Error + 'static)| {
            e.is::<tower::timeout::error::Elapsed>()
                .then(Classification::gateway_timeout)
        };
        let e = tower::timeout::error::Elapsed::new();
        assert_eq!(
            classify_chain(&overriding, &e, ONE_SEC).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
    }

    #[derive(Debug)]
    struct UpstreamDown;
    impl fmt::Display for UpstreamDown {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("upstream down")
        }
    }
    impl Error for UpstreamDown {}

    #[test]
    fn on_error_rules_match_their_type_anywhere_in_the_chain() {
        let layer = crate::catch::CatchLayer::new()
            .on_error::<UpstreamDown>(|_| Classification::bad_gateway())
            .on_error::<std::io::Error>(|e| {
                Classification::bad_gateway().with_detail(format!("io {}", e.kind()))
            });
        let rules = &layer.classifier;
        let deep = Wrapper(Box::new(Wrapper(Box::new(UpstreamDown))));
        assert_eq!(
            classify_chain(rules, &deep, ONE_SEC),
            Classification::bad_gateway()
        );
        let io = Wrapper(Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut)));
        assert_eq!(
            classify_chain(rules, &io, ONE_SEC).detail.as_deref(),
            Some("io timed out")
        );
        // No rule for this type, no built-in rule: 500.
        assert_eq!(
            classify_chain(rules, &Cyclic, ONE_SEC),
            Classification::internal()
        );
    }

    #[test]
    fn on_error_rules_outermost_error_first_then_in_order_added() {
        let layer = crate::catch::CatchLayer::new()
            .on_error::<Wrapper>(|_| Classification::gateway_timeout())
            .on_error::<Wrapper>(|_| Classification::bad_gateway())
            .on_error::<UpstreamDown>(|_| Classification::internal());
        let e = Wrapper(Box::new(UpstreamDown));
        // The outer `Wrapper` is looked at before its source, and its first rule wins.
        assert_eq!(
            classify_chain(&layer.classifier, &e, ONE_SEC),
            Classification::gateway_timeout()
        );
    }

    #[test]
    fn on_error_overrides_a_builtin_rule() {
        let layer = crate::catch::CatchLayer::new()
            .on_error::<tower::timeout::error::Elapsed>(|_| Classification::gateway_timeout());
        let e = Wrapper(Box::new(tower::timeout::error::Elapsed::new()));
        assert_eq!(
            classify_chain(&layer.classifier, &e, ONE_SEC),
            Classification::gateway_timeout()
        );
        // Other built-in rules still apply.
        let e = tower::load_shed::error::Overloaded::new();
        assert_eq!(
            classify_chain(&layer.classifier, &e, ONE_SEC).reason(),
            Reason::Shed
        );
    }

    #[test]
    fn on_error_after_classify_keeps_the_classifier_first() {
        #[derive(Debug, Clone)]
        struct IoIsGatewayTimeout;
        impl Classify for IoIsGatewayTimeout {
            fn classify(&self, e: &(dyn Error + 'static)) -> Option<Classification> {
                e.is::<std::io::Error>()
                    .then(Classification::gateway_timeout)
            }
        }
        let layer = crate::catch::CatchLayer::new()
            .classify(IoIsGatewayTimeout)
            .on_error::<std::io::Error>(|_| Classification::bad_gateway())
            .on_error::<UpstreamDown>(|_| Classification::bad_gateway());
        let io = std::io::Error::other("x");
        assert_eq!(
            classify_chain(&layer.classifier, &io, ONE_SEC),
            Classification::gateway_timeout()
        );
        assert_eq!(
            classify_chain(&layer.classifier, &UpstreamDown, ONE_SEC),
            Classification::bad_gateway()
        );
        assert!(format!("{:?}", layer.classifier).contains("UpstreamDown"));
    }
}
