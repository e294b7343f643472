//! Mapping errors to statuses.

use std::{borrow::Cow, error::Error, time::Duration};

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
    pub fn new(status: StatusCode) -> Self {
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

    /// 503 Service Unavailable for a known state, with the given reason and `Retry-After`.
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
/// first, before its built-in rules; the first `Some` decides. Implemented for closures
/// `Fn(&(dyn Error + 'static)) -> Option<Classification> + Clone`, so a classifier is usually a
/// closure that tries `downcast_ref`:
///
/// ```
/// use std::error::Error;
/// use tower_5xx::catch::{CatchLayer, Classification};
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
/// let layer = CatchLayer::new().classify(|e: &(dyn Error + 'static)| {
///     e.is::<UpstreamDown>().then(Classification::bad_gateway)
/// });
/// # let _ = layer;
/// ```
pub trait Classify: Clone {
    /// Classifies one error of the chain.
    fn classify(&self, error: &(dyn Error + 'static)) -> Option<Classification>;
}

/// The classifier of [`CatchLayer::new`](super::CatchLayer::new): recognises nothing itself,
/// leaving the built-in rules (tower's `Overloaded` and `Elapsed`, tokio's `Elapsed`) and the
/// 500 fallback.
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

/// The built-in rules: stock tower and tokio errors that mean a known state.
pub(crate) fn builtin(
    error: &(dyn Error + 'static),
    retry_after_503: Duration,
) -> Option<Classification> {
    if error.is::<tower::load_shed::error::Overloaded>() {
        return Some(Classification::service_unavailable(
            Reason::Overloaded,
            Some(RetryAfter::Delay(retry_after_503)),
        ));
    }
    if error.is::<tower::timeout::error::Elapsed>() || error.is::<tokio::time::error::Elapsed>() {
        return Some(Classification::service_unavailable(
            Reason::Timeout,
            Some(RetryAfter::Delay(retry_after_503)),
        ));
    }
    None
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
    use std::fmt;

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

    #[derive(Debug)]
    struct Cyclic;
    impl fmt::Display for Cyclic {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cyclic")
        }
    }
    impl Error for Cyclic {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&Cyclic)
        }
    }

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
        assert_eq!(c.reason(), Reason::Overloaded);
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
}
