//! How every layer of this crate refuses a request: one policy for `Retry-After` and the
//! response's format, and one hook to render your own error page or schema.
//!
//! A refusing layer ([`MaintenanceLayer`](crate::maintenance::MaintenanceLayer),
//! [`ShedLayer`](crate::shed::ShedLayer), [`BreakerLayer`](crate::breaker::BreakerLayer), and
//! [`CatchLayer`](crate::catch::CatchLayer) for its generated 500s, 502s, 503s and 504s) decides
//! only **why** it refuses (a [`Reason`]) and its **base wait** (the time left in a maintenance
//! window, a breaker's remaining open time, a shed queue's drain time). Everything else comes
//! from its [`RefusalPolicy`]:
//!
//! | setting | default | what it does |
//! |---|---|---|
//! | [`min_retry_after`](RefusalPolicyBuilder::min_retry_after) | 1 s | the shortest `Retry-After` sent (never `0`: that invites an immediate retry) |
//! | [`max_retry_after`](RefusalPolicyBuilder::max_retry_after) | 30 days ([`MAX_RETRY_AFTER`]) | the longest `Retry-After` before jitter; a base wait beyond it is cut to it |
//! | [`retry_after_jitter`](RefusalPolicyBuilder::retry_after_jitter) | 1 s | a random extra of whole seconds, so clients told to come back do not come back in one herd |
//! | [`http_date`](RefusalPolicyBuilder::http_date) | `false` | `Retry-After` as an HTTP-date instead of delta-seconds (delta-seconds are immune to clock skew) |
//! | [`negotiate`](RefusalPolicyBuilder::negotiate) | `true` | the body's format follows the request's `Accept`: problem+json, HTML or plain text |
//! | [`html`](RefusalPolicyBuilder::html) | `true` | whether HTML is one of the formats offered |
//! | [`format`](RefusalPolicyBuilder::format) | plain text | the format when not negotiating, when nothing offered is acceptable, and when `Accept` leaves the choice open (`*/*`) |
//! | [`detail`](RefusalPolicyBuilder::detail) | per [`Reason`] | the client-facing text ([`Reason::default_detail`]) |
//! | [`render`](RefusalPolicyBuilder::render) | the crate's [`ErrorResponse`] | your own response (a branded page, your error schema) |
//!
//! Whatever renders the response, the layer then makes sure it carries `Retry-After` (when the
//! refusal has one), `Cache-Control: no-store` and the [`x-error-id`](crate::ERROR_ID_HEADER)
//! header, unless your hook already set them (yours win) or explicitly opted out with
//! [`OmitDefaultHeaders`]. The [`Reason`] and [`ErrorId`] always go into the response's
//! extensions.
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{header::CONTENT_TYPE, Response, StatusCode};
//! use tower_5xx::refuse::RefusalPolicy;
//!
//! # fn main() -> Result<(), tower_5xx::error::InvalidConfig> {
//! // One policy for the whole service: come back in 5 s to 10 min, with up to 3 s of jitter,
//! // and our own JSON schema instead of RFC 9457 problem details.
//! let policy = RefusalPolicy::builder()
//!     .min_retry_after(Duration::from_secs(5))
//!     .max_retry_after(Duration::from_secs(600))
//!     .retry_after_jitter(Duration::from_secs(3))
//!     .render(|refusal| {
//!         let body = format!(
//!             r#"{{"code":"{}","id":"{}"}}"#,
//!             refusal.reason(),
//!             refusal.error_id()
//!         );
//!         Response::builder()
//!             .status(refusal.status())
//!             .header(CONTENT_TYPE, "application/json")
//!             .body(Bytes::from(body))
//!             .unwrap()
//!     })
//!     .build()?;
//! // Then give it to each layer: `MaintenanceLayer::new(switch).refusal(policy.clone())`, ...
//! # let _ = policy;
//! # Ok(())
//! # }
//! ```

use std::{
    borrow::Cow,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{
    header::{ACCEPT, CACHE_CONTROL, RETRY_AFTER},
    HeaderMap, HeaderValue, Method, Response, StatusCode,
};
use pin_project_lite::pin_project;

use crate::{
    error::InvalidConfig,
    response::error_id_header_value,
    telemetry::{self, Meter},
    ErrorId, ErrorResponse, Format, Reason, RetryAfter, ERROR_ID_HEADER,
};

/// The longest `Retry-After` any layer of this crate sends before jitter: 30 days.
///
/// A client told to come back in more than 30 days has been told to go away, which is not what a
/// 503 means. It bounds every base wait: an announced end of maintenance in the year 9999, an
/// adaptive estimate gone wild. [`RefusalPolicyBuilder::max_retry_after`] may lower it, not raise
/// it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// How a layer refuses: `Retry-After` bounds, jitter and form, the body's format, the detail
/// text, and an optional hook that renders the response. See the [module docs](self) for the
/// defaults.
///
/// Cheap to clone (one reference count); give one policy to every layer of a service so they
/// all refuse alike.
#[derive(Clone)]
pub struct RefusalPolicy {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    min_retry_after: Duration,
    max_retry_after: Duration,
    jitter: Duration,
    http_date: bool,
    negotiate: bool,
    html: bool,
    format: Format,
    detail: Option<Cow<'static, str>>,
    render: Option<Arc<dyn RenderRefusal>>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            min_retry_after: Duration::from_secs(1),
            max_retry_after: MAX_RETRY_AFTER,
            jitter: Duration::from_secs(1),
            http_date: false,
            negotiate: true,
            html: true,
            format: Format::Text,
            detail: None,
            render: None,
        }
    }
}

impl Default for RefusalPolicy {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner::default()),
        }
    }
}

impl fmt::Debug for RefusalPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("RefusalPolicy")
            .field("min_retry_after", &i.min_retry_after)
            .field("max_retry_after", &i.max_retry_after)
            .field("retry_after_jitter", &i.jitter)
            .field("http_date", &i.http_date)
            .field("negotiate", &i.negotiate)
            .field("html", &i.html)
            .field("format", &i.format)
            .field("detail", &i.detail)
            .field("render", &i.render.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl RefusalPolicy {
    /// The policy with the defaults of the [module docs](self).
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder starting from the defaults.
    pub fn builder() -> RefusalPolicyBuilder {
        RefusalPolicyBuilder {
            inner: Inner::default(),
        }
    }

    /// A builder starting from this policy's settings.
    pub fn to_builder(&self) -> RefusalPolicyBuilder {
        RefusalPolicyBuilder {
            inner: (*self.inner).clone(),
        }
    }

    /// Whether the body's format follows the request's `Accept`.
    pub fn negotiates(&self) -> bool {
        self.inner.negotiate
    }

    /// The `Retry-After` to send for a base wait: cut to the bounds, jittered, in the
    /// configured form. `now` is the wall-clock time (asked only when a date is involved).
    ///
    /// A base given as a date (the announced end of maintenance) stays that date when the
    /// policy sends dates and the date is within the bounds; otherwise it is read as the delay
    /// until it.
    pub fn retry_after(&self, base: RetryAfter, now: impl FnOnce() -> SystemTime) -> RetryAfter {
        self.retry_after_read(base, now).0
    }

    /// [`retry_after`](Self::retry_after), with the wall-clock time it read (when a date was
    /// involved).
    fn retry_after_read(
        &self,
        base: RetryAfter,
        now: impl FnOnce() -> SystemTime,
    ) -> (RetryAfter, Option<SystemTime>) {
        let i = &*self.inner;
        let needs_now = i.http_date || matches!(base, RetryAfter::Date(_));
        let now = if needs_now { Some(now()) } else { None };
        let delay = match (base, now) {
            (RetryAfter::Delay(d), _) => d,
            (date, Some(now)) => date.delay_from(now),
            (RetryAfter::Date(_), None) => unreachable!("a date always asks for now"),
        };
        let bounded = delay.clamp(i.min_retry_after, i.max_retry_after);
        let ra = match (i.http_date, base, now) {
            (true, RetryAfter::Date(t), _) if bounded == delay => RetryAfter::Date(t),
            (true, _, Some(now)) => RetryAfter::Date(now.checked_add(bounded).unwrap_or(now)),
            _ => RetryAfter::Delay(bounded),
        };
        let ra = if i.jitter.is_zero() {
            ra.at_least_one_second()
        } else {
            ra.with_jitter(i.jitter).at_least_one_second()
        };
        (ra, now)
    }

    /// The response for a refusal. `retry_after` is the base wait (`None` for a 500, which
    /// carries none; a 503 always carries one, the policy's minimum when given none); `detail` overrides the policy's and the reason's text (a maintenance
    /// notice's message, a classifier's detail). `now` is asked for the wall-clock time only
    /// when a date is involved.
    ///
    /// This is the one place every generated response passes: it is counted here (by `meter`,
    /// the generating layer's) and logged here, once, with `cause` (an error chain, a panic
    /// message) in the log only.
    #[allow(clippy::too_many_arguments)]
    #[cfg_attr(
        not(any(
            feature = "catch",
            feature = "maintenance",
            feature = "shed",
            feature = "breaker",
            feature = "lifecycle"
        )),
        allow(dead_code) // the rate limiter alone calls only `respond_with`
    )]
    pub(crate) fn respond<B>(
        &self,
        meter: &Meter,
        status: StatusCode,
        reason: Reason,
        retry_after: Option<RetryAfter>,
        detail: Option<Cow<'static, str>>,
        cause: Option<&dyn fmt::Display>,
        request: RequestView<'_>,
        now: impl FnOnce() -> SystemTime,
    ) -> Response<B>
    where
        B: From<Bytes>,
    {
        self.respond_with(
            meter,
            status,
            reason,
            retry_after,
            detail,
            cause,
            request,
            now,
            Vec::new(),
        )
    }

    /// [`respond`](Self::respond) for a request over quota: `violated_policies` names the quota
    /// policies it violated (the problem+json body says so, and the render hook sees them in
    /// [`Refusal::violated_policies`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn respond_with<B>(
        &self,
        meter: &Meter,
        status: StatusCode,
        reason: Reason,
        retry_after: Option<RetryAfter>,
        detail: Option<Cow<'static, str>>,
        cause: Option<&dyn fmt::Display>,
        request: RequestView<'_>,
        now: impl FnOnce() -> SystemTime,
        violated_policies: Vec<Arc<str>>,
    ) -> Response<B>
    where
        B: From<Bytes>,
    {
        let (response, retry_after, error_id) = self.build(
            status,
            reason,
            retry_after,
            detail,
            request,
            now,
            violated_policies,
        );
        telemetry::event(
            meter,
            &telemetry::Event {
                status,
                reason,
                error_id,
                method: request.method,
                path: request.path,
                retry_after,
                cause,
            },
        );
        // Counted once the event is out: the event formats `cause` (user code, an error's
        // `Display`), and when that panics the catch layer's fallback sends, and counts, the
        // one 500 the client gets instead of this response.
        meter.generated(status, reason);
        response
    }

    /// The response of [`respond_with`](Self::respond_with), without counting or logging it,
    /// with the `Retry-After` and error id it carries.
    #[allow(clippy::too_many_arguments)]
    fn build<B>(
        &self,
        status: StatusCode,
        reason: Reason,
        retry_after: Option<RetryAfter>,
        detail: Option<Cow<'static, str>>,
        request: RequestView<'_>,
        now: impl FnOnce() -> SystemTime,
        violated_policies: Vec<Arc<str>>,
    ) -> (Response<B>, Option<RetryAfter>, ErrorId)
    where
        B: From<Bytes>,
    {
        let i = &*self.inner;
        // A 503 always says when to come back: with no base wait, the policy's minimum.
        let retry_after = retry_after.or((status == StatusCode::SERVICE_UNAVAILABLE)
            .then_some(RetryAfter::Delay(std::time::Duration::ZERO)));
        let (retry_after, now) = match retry_after.map(|base| self.retry_after_read(base, now)) {
            Some((ra, now)) => (Some(ra), now),
            None => (None, None),
        };
        let format = if i.negotiate {
            request.negotiate(i.html, i.format)
        } else {
            i.format
        };
        let mut error = ErrorResponse::new(status, reason)
            .format(format)
            .violated_policies(violated_policies);
        if let Some(ra) = retry_after {
            error = error.retry_after(ra);
        }
        if let Some(now) = now {
            // The body counts a date from the same clock as the header.
            error = error.counted_from(now);
        }
        if let Some(detail) = detail.or_else(|| i.detail.clone()) {
            error = error.detail(detail);
        }
        let error_id = error.error_id();
        let response = match &i.render {
            None => error.into_response(),
            Some(render) => {
                let refusal = Refusal {
                    error: &error,
                    retry_after,
                    format,
                    request,
                };
                let response = render.render(&refusal);
                guarantee(response, retry_after, error_id)
            }
        };
        let mut response = response.map(B::from);
        response.extensions_mut().insert(reason);
        response.extensions_mut().insert(error_id);
        (response, retry_after, error_id)
    }
}

/// A refusal policy with the meter of the layer that uses it, behind one `Arc`: what a layer
/// whose response future may have to refuse keeps per request (one reference count).
#[cfg(feature = "catch")]
#[derive(Debug, Clone)]
pub(crate) struct Refuser(Arc<(RefusalPolicy, Meter)>);

#[cfg(feature = "catch")]
impl Refuser {
    pub(crate) fn new(policy: RefusalPolicy, meter: Meter) -> Self {
        Self(Arc::new((policy, meter)))
    }

    pub(crate) fn policy(&self) -> &RefusalPolicy {
        &self.0 .0
    }

    pub(crate) fn meter(&self) -> &Meter {
        &self.0 .1
    }
}

/// Sets what a custom response must not lose by accident, unless it opted out.
fn guarantee(
    mut response: Response<Bytes>,
    retry_after: Option<RetryAfter>,
    error_id: ErrorId,
) -> Response<Bytes> {
    if response.extensions().get::<OmitDefaultHeaders>().is_some() {
        return response;
    }
    let headers = response.headers_mut();
    if let Some(ra) = retry_after {
        headers
            .entry(RETRY_AFTER)
            .or_insert_with(|| ra.to_header_value());
    }
    headers
        .entry(CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    headers
        .entry(ERROR_ID_HEADER)
        .or_insert_with(|| error_id_header_value(error_id));
    response
}

/// Builds a [`RefusalPolicy`]; every setting is checked by [`build`](Self::build).
#[derive(Clone)]
#[must_use]
pub struct RefusalPolicyBuilder {
    inner: Inner,
}

impl fmt::Debug for RefusalPolicyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = RefusalPolicy {
            inner: Arc::new(self.inner.clone()),
        };
        f.debug_tuple("RefusalPolicyBuilder")
            .field(&policy)
            .finish()
    }
}

impl RefusalPolicyBuilder {
    /// The shortest `Retry-After` sent. Default 1 s. Must be at least 1 s (`Retry-After: 0`
    /// invites an immediate retry) and at most [`max_retry_after`](Self::max_retry_after). On
    /// the wire it is whole seconds, rounded up.
    pub fn min_retry_after(mut self, min: Duration) -> Self {
        self.inner.min_retry_after = min;
        self
    }

    /// The longest `Retry-After` before jitter. Default and upper limit: [`MAX_RETRY_AFTER`]
    /// (30 days). A longer base wait (a maintenance end far ahead) is cut to it.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.inner.max_retry_after = max;
        self
    }

    /// The largest random extra added to `Retry-After`, in whole seconds (what the header can
    /// carry), after the bounds: the result may exceed the maximum by at most this much, so
    /// clients spread out even when the wait sits at its cap. Default 1 s; zero turns jitter
    /// off. At most [`MAX_RETRY_AFTER`].
    pub fn retry_after_jitter(mut self, max_extra: Duration) -> Self {
        self.inner.jitter = max_extra;
        self
    }

    /// Sends `Retry-After` as an HTTP-date rather than delta-seconds. Default `false`:
    /// delta-seconds are immune to clock skew between server and client.
    pub fn http_date(mut self, enabled: bool) -> Self {
        self.inner.http_date = enabled;
        self
    }

    /// Whether the body's format follows the request's `Accept` (RFC 9457 problem+json for API
    /// clients, HTML for browsers, plain text otherwise; see [`Format::negotiate`]). Default
    /// `true`. [`CatchLayer`](crate::catch::CatchLayer) pays for it on every request (it must
    /// keep the `Accept` value of each request while the inner service runs): see its docs.
    pub fn negotiate(mut self, enabled: bool) -> Self {
        self.inner.negotiate = enabled;
        self
    }

    /// Whether clients that prefer `text/html` get an HTML page. Default `true`; when `false`
    /// they get plain text (or problem+json if they also accept it).
    pub fn html(mut self, enabled: bool) -> Self {
        self.inner.html = enabled;
        self
    }

    /// The server's own format: sent when the policy does not negotiate, when the request's
    /// `Accept` names nothing offered, and when it leaves the choice to the server (no
    /// `Accept`, `*/*`, or offered formats at one weight, such as axios's
    /// `application/json, text/plain, */*`). Default [`Format::Text`].
    pub fn format(mut self, format: Format) -> Self {
        self.inner.format = format;
        self
    }

    /// The client-facing text of every refusal, instead of the reason's
    /// [default](Reason::default_detail). A layer's own text (a maintenance notice's message,
    /// a classifier's detail) still wins. It is sent to every client: keep internal
    /// information out of it.
    pub fn detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.inner.detail = Some(detail.into());
        self
    }

    /// Renders every refusal with `render` instead of the crate's [`ErrorResponse`]: your
    /// error schema, a branded page. It is given the [`Refusal`] (reason, status,
    /// `Retry-After`, error id, detail, negotiated format, request method, path and `Accept`)
    /// and returns a complete response; see the [module docs](self) for the headers the layer
    /// adds when the response lacks them.
    pub fn render<F>(mut self, render: F) -> Self
    where
        F: Fn(&Refusal<'_>) -> Response<Bytes> + Send + Sync + 'static,
    {
        self.inner.render = Some(Arc::new(render));
        self
    }

    /// [`render`](Self::render) with a type implementing [`RenderRefusal`].
    pub fn renderer(mut self, renderer: impl RenderRefusal) -> Self {
        self.inner.render = Some(Arc::new(renderer));
        self
    }

    /// Checks the settings and builds the policy.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] when `min_retry_after` is under 1 s or above `max_retry_after`, when
    /// `max_retry_after` is above [`MAX_RETRY_AFTER`], or when the jitter is.
    pub fn build(self) -> Result<RefusalPolicy, InvalidConfig> {
        let i = &self.inner;
        if i.min_retry_after < Duration::from_secs(1) {
            return Err(InvalidConfig::new(
                "min_retry_after",
                "must be at least 1 s (Retry-After: 0 invites an immediate retry)",
            ));
        }
        if i.max_retry_after > MAX_RETRY_AFTER {
            return Err(InvalidConfig::new(
                "max_retry_after",
                "must be at most 30 days (refuse::MAX_RETRY_AFTER)",
            ));
        }
        if i.min_retry_after > i.max_retry_after {
            return Err(InvalidConfig::new(
                "min_retry_after",
                "must not be above max_retry_after",
            ));
        }
        if i.jitter > MAX_RETRY_AFTER {
            return Err(InvalidConfig::new(
                "retry_after_jitter",
                "must be at most 30 days (refuse::MAX_RETRY_AFTER)",
            ));
        }
        Ok(RefusalPolicy {
            inner: Arc::new(self.inner),
        })
    }
}

/// What a layer knows of the request it refuses: enough to render a response, borrowed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RequestView<'a> {
    pub(crate) method: Option<&'a Method>,
    pub(crate) path: &'a str,
    /// All the request's headers, where the layer still holds the request.
    pub(crate) headers: Option<&'a HeaderMap>,
    /// The one `Accept` value a layer kept, where it no longer holds the request.
    pub(crate) accept: Option<&'a HeaderValue>,
}

impl<'a> RequestView<'a> {
    /// A view of a request the layer still holds.
    #[cfg(any(
        feature = "maintenance",
        feature = "shed",
        feature = "breaker",
        feature = "lifecycle",
        feature = "rate-limit"
    ))]
    pub(crate) fn of<B>(req: &'a http::Request<B>) -> Self {
        Self {
            method: Some(req.method()),
            path: req.uri().path(),
            headers: Some(req.headers()),
            accept: None,
        }
    }

    /// [`RequestView::of`], in tests of any feature set.
    #[cfg(test)]
    pub(crate) fn of_any<B>(req: &'a http::Request<B>) -> Self {
        Self {
            method: Some(req.method()),
            path: req.uri().path(),
            headers: Some(req.headers()),
            accept: None,
        }
    }

    fn negotiate(&self, allow_html: bool, fallback: Format) -> Format {
        match (self.headers, self.accept) {
            (Some(headers), _) => {
                Format::negotiate_values(&headers.get_all(ACCEPT), allow_html, fallback)
            }
            (None, Some(accept)) => {
                Format::negotiate_values(std::slice::from_ref(accept), allow_html, fallback)
            }
            (None, None) => fallback,
        }
    }

    fn accept(&self) -> impl Iterator<Item = &'a HeaderValue> {
        let all = self.headers.map(|h| h.get_all(ACCEPT).iter());
        all.into_iter().flatten().chain(self.accept)
    }
}

/// Everything a [`RenderRefusal`] hook is told about one refusal.
pub struct Refusal<'a> {
    error: &'a ErrorResponse,
    retry_after: Option<RetryAfter>,
    format: Format,
    request: RequestView<'a>,
}

impl fmt::Debug for Refusal<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refusal")
            .field("status", &self.status())
            .field("reason", &self.reason())
            .field("retry_after", &self.retry_after())
            .field("error_id", &self.error_id())
            .field("format", &self.format())
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

impl Refusal<'_> {
    /// The status: 500, 502, 503, 504, or what a classifier chose.
    pub fn status(&self) -> StatusCode {
        self.error.status()
    }

    /// Why the request is refused.
    pub fn reason(&self) -> Reason {
        self.error.reason()
    }

    /// The `Retry-After` the response will carry (bounded and jittered), if any.
    pub fn retry_after(&self) -> Option<RetryAfter> {
        self.retry_after
    }

    /// The error id the response will carry (it is in the log line too).
    pub fn error_id(&self) -> ErrorId {
        self.error.error_id()
    }

    /// The client-facing text: the layer's, the policy's or the reason's default.
    pub fn detail(&self) -> &str {
        self.error.detail_text()
    }

    /// The format the policy negotiated from the request's `Accept` (or its fixed format).
    pub fn format(&self) -> Format {
        self.format
    }

    /// The request's method (`None` where the layer no longer has it).
    pub fn method(&self) -> Option<&Method> {
        self.request.method
    }

    /// The request's path, without the query string.
    pub fn path(&self) -> &str {
        self.request.path
    }

    /// The request's `Accept` field values, as the policy saw them (empty when the policy does
    /// not negotiate and the layer did not keep them).
    pub fn accept(&self) -> impl Iterator<Item = &HeaderValue> + '_ {
        self.request.accept()
    }

    /// The names of the quota policies a request over quota violated (a 429 of the
    /// [rate limiter](crate::rate_limit)); empty for every other refusal. They are the names
    /// listed in the response's `RateLimit-Policy` field.
    pub fn violated_policies(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.error.violated_policy_names().iter().map(|n| &**n)
    }

    /// The crate's own response for this refusal, to decorate rather than replace.
    pub fn default_response(&self) -> Response<Bytes> {
        self.error.clone().into_response()
    }
}

/// Renders the response of a refusal: the customisation hook of every refusing layer, in the
/// style of tower-http's `ResponseForPanic`.
///
/// Implemented for closures `Fn(&Refusal<'_>) -> Response<Bytes>`; give one to
/// [`RefusalPolicyBuilder::render`] (or a type of yours to
/// [`RefusalPolicyBuilder::renderer`]). The default is the crate's [`ErrorResponse`].
///
/// A panic in the hook is not caught here: put [`CatchLayer`](crate::catch::CatchLayer)
/// outermost and the client still gets one 500.
pub trait RenderRefusal: Send + Sync + 'static {
    /// The complete response for `refusal`.
    fn render(&self, refusal: &Refusal<'_>) -> Response<Bytes>;
}

impl<F> RenderRefusal for F
where
    F: Fn(&Refusal<'_>) -> Response<Bytes> + Send + Sync + 'static,
{
    fn render(&self, refusal: &Refusal<'_>) -> Response<Bytes> {
        self(refusal)
    }
}

/// Put this in the extensions of a response your [`RenderRefusal`] hook returns to stop the
/// layer from adding `Retry-After`, `Cache-Control: no-store` and `x-error-id` to it. The
/// explicit opt-out: without it, a custom response keeps those guarantees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OmitDefaultHeaders;

pin_project! {
    /// The response future of a layer that either passes a request on or refuses it at once
    /// ([`Maintenance`](crate::maintenance::Maintenance), [`Drain`](crate::lifecycle::Drain)):
    /// the inner service's future, or a ready refusal. Those modules name it `ResponseFuture`.
    #[derive(Debug)]
    pub struct InnerOrRefused<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, B> {
        Inner { #[pin] future: F },
        // Boxed: the refusal path is cold, and a small future is cheaper to move on the hot path.
        Refused { response: Option<Box<Response<B>>> },
    }
}

impl<F, B> InnerOrRefused<F, B> {
    /// The inner service's future.
    #[cfg(any(feature = "maintenance", feature = "lifecycle"))]
    #[inline]
    pub(crate) fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }

    /// A refusal, ready at the first poll.
    #[cfg(any(feature = "maintenance", feature = "lifecycle"))]
    pub(crate) fn refused(response: Response<B>) -> Self {
        Self {
            kind: Kind::Refused {
                response: Some(Box::new(response)),
            },
        }
    }
}

impl<F, B, E> Future for InnerOrRefused<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(cx),
            KindProj::Refused { response } => Poll::Ready(Ok(*response
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::header::CONTENT_TYPE;

    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn exact() -> RefusalPolicyBuilder {
        RefusalPolicy::builder().retry_after_jitter(Duration::ZERO)
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + S(1_000_000)
    }

    #[test]
    fn invalid_settings_are_errors_at_build() {
        let bad = [
            RefusalPolicy::builder().min_retry_after(Duration::from_millis(500)),
            RefusalPolicy::builder().max_retry_after(MAX_RETRY_AFTER + S(1)),
            RefusalPolicy::builder()
                .min_retry_after(S(10))
                .max_retry_after(S(5)),
            RefusalPolicy::builder().retry_after_jitter(MAX_RETRY_AFTER + S(1)),
        ];
        for builder in bad {
            let error = builder.clone().build().unwrap_err();
            assert!(error.to_string().starts_with("invalid "), "{error}");
        }
        assert!(RefusalPolicy::builder()
            .min_retry_after(S(5))
            .max_retry_after(S(5))
            .build()
            .is_ok());
    }

    #[test]
    fn the_base_wait_is_bounded_and_keeps_its_form() {
        let policy = exact()
            .min_retry_after(S(2))
            .max_retry_after(S(60))
            .build()
            .unwrap();
        let ra = |base| policy.retry_after(base, now);
        assert_eq!(
            ra(RetryAfter::Delay(Duration::ZERO)),
            RetryAfter::Delay(S(2))
        );
        assert_eq!(ra(RetryAfter::Delay(S(30))), RetryAfter::Delay(S(30)));
        assert_eq!(ra(RetryAfter::Delay(S(3600))), RetryAfter::Delay(S(60)));
        // A date is read as the delay until it when the policy sends delta-seconds.
        assert_eq!(
            ra(RetryAfter::Date(now() + S(45))),
            RetryAfter::Delay(S(45))
        );
        assert_eq!(ra(RetryAfter::Date(now() - S(45))), RetryAfter::Delay(S(2)));

        let dated = exact()
            .max_retry_after(S(60))
            .http_date(true)
            .build()
            .unwrap();
        let ra = |base| dated.retry_after(base, now);
        assert_eq!(
            ra(RetryAfter::Date(now() + S(45))),
            RetryAfter::Date(now() + S(45))
        );
        assert_eq!(
            ra(RetryAfter::Date(now() + S(90))),
            RetryAfter::Date(now() + S(60))
        );
        assert_eq!(
            ra(RetryAfter::Delay(S(10))),
            RetryAfter::Date(now() + S(10))
        );
    }

    #[test]
    fn jitter_spreads_above_the_bounded_wait() {
        let policy = RefusalPolicy::builder()
            .max_retry_after(S(10))
            .retry_after_jitter(S(5))
            .build()
            .unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..300 {
            let RetryAfter::Delay(d) = policy.retry_after(RetryAfter::Delay(S(100)), now) else {
                panic!("delta-seconds by default");
            };
            assert!((S(10)..=S(15)).contains(&d), "{d:?}");
            seen.insert(d);
        }
        assert!(seen.len() > 3, "{seen:?}");
    }

    fn request(accept: &'static str) -> http::Request<()> {
        http::Request::get("/api/x?token=secret")
            .header(ACCEPT, accept)
            .body(())
            .unwrap()
    }

    /// A 503 given no base wait (a classifier's) still says when to come back: the policy's
    /// minimum; a 500 given none carries none.
    #[test]
    fn a_503_always_carries_retry_after() {
        let req = request("*/*");
        let policy = exact().min_retry_after(S(3)).build().unwrap();
        let respond = |status| -> Response<Bytes> {
            policy.respond(
                &Meter::default(),
                status,
                Reason::Classified,
                None,
                None,
                None,
                RequestView::of(&req),
                now,
            )
        };
        assert_eq!(
            respond(StatusCode::SERVICE_UNAVAILABLE).headers()[RETRY_AFTER],
            "3"
        );
        assert!(!respond(StatusCode::INTERNAL_SERVER_ERROR)
            .headers()
            .contains_key(RETRY_AFTER));
    }

    #[test]
    fn the_default_response_is_negotiated_and_complete() {
        let req = request("application/json");
        let res: Response<Bytes> = exact().build().unwrap().respond(
            &Meter::default(),
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::Shed,
            Some(RetryAfter::Delay(S(7))),
            None,
            None,
            RequestView {
                method: Some(req.method()),
                path: req.uri().path(),
                headers: Some(req.headers()),
                accept: None,
            },
            now,
        );
        assert_eq!(res.headers()[RETRY_AFTER], "7");
        assert_eq!(res.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
        let id = res.extensions().get::<ErrorId>().copied().unwrap();
        assert_eq!(res.headers()[ERROR_ID_HEADER], id.to_string().as_str());
        assert_eq!(res.extensions().get::<Reason>(), Some(&Reason::Shed));
    }

    #[test]
    fn a_custom_response_keeps_the_guarantees_unless_it_opts_out() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let policy = exact()
            .detail("Come back later.")
            .render(move |r| {
                log.lock().unwrap().push((
                    r.status(),
                    r.reason(),
                    r.retry_after(),
                    r.detail().to_owned(),
                    r.format(),
                    r.path().to_owned(),
                    r.accept().count(),
                ));
                let mut res = Response::new(Bytes::from(format!("custom {}", r.error_id())));
                *res.status_mut() = r.status();
                if r.path() == "/mine" {
                    res.headers_mut()
                        .insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
                }
                if r.path() == "/raw" {
                    res.extensions_mut().insert(OmitDefaultHeaders);
                }
                res
            })
            .build()
            .unwrap();
        let respond = |path: &'static str| -> Response<Bytes> {
            let req = http::Request::get(path)
                .header(ACCEPT, "text/html")
                .body(())
                .unwrap();
            policy.respond(
                &Meter::default(),
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::Maintenance,
                Some(RetryAfter::Delay(S(30))),
                None,
                None,
                RequestView::of_any(&req),
                now,
            )
        };

        let res = respond("/api");
        let id = res.extensions().get::<ErrorId>().copied().unwrap();
        assert_eq!(res.body(), &format!("custom {id}"));
        assert_eq!(res.headers()[RETRY_AFTER], "30");
        assert_eq!(res.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(res.headers()[ERROR_ID_HEADER], id.to_string().as_str());
        assert_eq!(res.extensions().get::<Reason>(), Some(&Reason::Maintenance));
        assert_eq!(
            seen.lock().unwrap()[0],
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::Maintenance,
                Some(RetryAfter::Delay(S(30))),
                "Come back later.".to_owned(),
                Format::Html,
                "/api".to_owned(),
                1
            )
        );

        // The hook's own value wins.
        let res = respond("/mine");
        assert_eq!(res.headers()[CACHE_CONTROL], "private, no-store");
        assert_eq!(res.headers()[RETRY_AFTER], "30");

        // The explicit opt-out: nothing added, but the extensions are still set.
        let res = respond("/raw");
        assert!(res.headers().get(RETRY_AFTER).is_none());
        assert!(res.headers().get(CACHE_CONTROL).is_none());
        assert!(res.headers().get(ERROR_ID_HEADER).is_none());
        assert_eq!(res.extensions().get::<Reason>(), Some(&Reason::Maintenance));
    }

    #[test]
    fn the_default_response_is_offered_to_decorate() {
        let policy = exact()
            .render(|r| {
                let mut res = r.default_response();
                res.headers_mut()
                    .insert("x-brand", HeaderValue::from_static("acme"));
                res
            })
            .build()
            .unwrap();
        let req = request("text/plain");
        let res: Response<Bytes> = policy.respond(
            &Meter::default(),
            StatusCode::INTERNAL_SERVER_ERROR,
            Reason::Internal,
            None,
            None,
            None,
            RequestView::of_any(&req),
            now,
        );
        assert_eq!(res.headers()["x-brand"], "acme");
        assert!(res.headers().get(RETRY_AFTER).is_none(), "a 500 has none");
        let id = res.extensions().get::<ErrorId>().copied().unwrap();
        assert_eq!(res.headers()[ERROR_ID_HEADER], id.to_string().as_str());
        assert!(std::str::from_utf8(res.body())
            .unwrap()
            .contains(&id.to_string()));
    }
}
