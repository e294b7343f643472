//! The generated error response every layer of this crate uses.

use std::{borrow::Cow, fmt, sync::Arc, time::SystemTime};

use bytes::Bytes;
use http::{
    header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER},
    HeaderMap, HeaderName, HeaderValue, Response, StatusCode,
};

use crate::{retry_after::delay_secs_rounded_up, RetryAfter};

/// The header that carries the [`ErrorId`] of a generated response: `x-error-id`.
pub const ERROR_ID_HEADER: HeaderName = HeaderName::from_static("x-error-id");

/// A random 64-bit id that ties a generated error response to its log line.
///
/// It is sent in the [`x-error-id`](ERROR_ID_HEADER) header and in the body, and logged with the
/// full error, so a user who reports "error id 3f09c2d1a4b7e65c" can be matched to the log.
/// Formatted as 16 lowercase hex digits. Ids come from a fast thread-local generator
/// ([`fastrand`]); they are unique in practice, not secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorId(u64);

impl ErrorId {
    /// A fresh random id.
    pub fn new() -> Self {
        ErrorId(fastrand::u64(..))
    }

    /// The id as a number.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// The `x-error-id` header value of an id: 16 hex digits, formatted without allocating.
pub(crate) fn error_id_header_value(id: ErrorId) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((id.0 >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&digits).expect("hex digits are a valid header value")
}

impl Default for ErrorId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<u64> for ErrorId {
    fn from(value: u64) -> Self {
        ErrorId(value)
    }
}

impl fmt::Display for ErrorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for ErrorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ErrorId({self})")
    }
}

/// Why a response was generated.
///
/// Every generated response carries its `Reason` in its [extensions](http::Extensions), so outer
/// layers (metrics, access logs) can tell a maintenance 503 from a shed 503 or a breaker 503
/// without parsing bodies:
///
/// ```
/// use bytes::Bytes;
/// use http::StatusCode;
/// use tower_5xx::{ErrorResponse, Reason};
///
/// let res = ErrorResponse::new(StatusCode::SERVICE_UNAVAILABLE, Reason::Maintenance)
///     .into_response::<Bytes>();
/// assert_eq!(res.extensions().get::<Reason>(), Some(&Reason::Maintenance));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// An unexpected failure: a service error (500).
    Internal,
    /// The service panicked (500). The response is the same as for [`Reason::Internal`]: a
    /// client cannot tell them apart, but monitoring can.
    Panic,
    /// The service is down for maintenance (503).
    Maintenance,
    /// The service shed the request because it is overloaded (503).
    Shed,
    /// A circuit breaker is open (503).
    CircuitOpen,
    /// The request timed out inside the server (503, as Go's `http.TimeoutHandler`).
    Timeout,
    /// An upstream the server called failed (502).
    BadGateway,
    /// An upstream the server called timed out (504).
    GatewayTimeout,
    /// A status chosen by a user classifier for its own error type.
    Classified,
    /// The server is shutting down: it no longer takes new work (503).
    Draining,
    /// One client is over its quota (429): the server is fine, that client should slow down.
    RateLimited,
}

impl Reason {
    /// How many reasons there are (the enum's variants are numbered from 0).
    #[cfg(feature = "metrics")]
    pub(crate) const COUNT: usize = 12;

    /// The status a response for this reason usually has (a classifier may choose another).
    pub fn status(self) -> StatusCode {
        match self {
            Reason::Internal | Reason::Panic | Reason::Classified => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Reason::BadGateway => StatusCode::BAD_GATEWAY,
            Reason::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Reason::Maintenance
            | Reason::Shed
            | Reason::CircuitOpen
            | Reason::Timeout
            | Reason::Draining => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A short, client-safe default explanation for this reason.
    pub fn default_detail(self) -> &'static str {
        match self {
            Reason::Internal | Reason::Panic => "The server encountered an unexpected error.",
            Reason::Maintenance => "The service is down for maintenance.",
            Reason::Shed => "The service is overloaded.",
            Reason::CircuitOpen => "A service this request depends on is unavailable.",
            Reason::Timeout => "The server did not finish the request in time.",
            Reason::BadGateway => "An upstream service failed.",
            Reason::GatewayTimeout => "An upstream service did not answer in time.",
            Reason::Classified => "The request could not be completed.",
            Reason::Draining => "The server is shutting down; retry on another instance.",
            Reason::RateLimited => "Too many requests from this client; slow down.",
        }
    }

    /// A stable machine-readable name, for metrics labels and logs: one of `internal`, `panic`,
    /// `timeout`, `shed`, `maintenance`, `circuit_open`, `rate_limited`, `draining`,
    /// `bad_gateway`, `gateway_timeout`, `classified`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Internal => "internal",
            Reason::Panic => "panic",
            Reason::Maintenance => "maintenance",
            Reason::Shed => "shed",
            Reason::CircuitOpen => "circuit_open",
            Reason::Timeout => "timeout",
            Reason::BadGateway => "bad_gateway",
            Reason::GatewayTimeout => "gateway_timeout",
            Reason::Classified => "classified",
            Reason::Draining => "draining",
            Reason::RateLimited => "rate_limited",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body format of a generated response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Format {
    /// A short `text/plain; charset=utf-8` body. The default when `Accept` is absent or `*/*`.
    #[default]
    Text,
    /// An RFC 9457 `application/problem+json` body.
    ProblemJson,
    /// A small `text/html; charset=utf-8` page, for browsers.
    Html,
}

impl Format {
    /// Picks the format a request's `Accept` header prefers.
    ///
    /// Media ranges and `q` weights are honoured (RFC 9110 §12.5.1): each format takes the weight
    /// of the most specific range that matches it (`application/problem+json` and
    /// `application/json` match the problem format). The highest weight wins; at equal weight, the
    /// format named explicitly beats one matched by a wildcard, then plain text beats JSON beats
    /// HTML. With no `Accept`, an unreadable one, or nothing acceptable, the answer is
    /// [`Format::Text`]. HTML is only chosen when `allow_html` is true.
    ///
    /// ```
    /// use http::{header::ACCEPT, HeaderMap, HeaderValue};
    /// use tower_5xx::Format;
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    /// assert_eq!(Format::negotiate(&headers, false), Format::ProblemJson);
    ///
    /// headers.insert(ACCEPT, HeaderValue::from_static("text/html,*/*;q=0.8"));
    /// assert_eq!(Format::negotiate(&headers, true), Format::Html);
    /// assert_eq!(Format::negotiate(&headers, false), Format::Text);
    /// ```
    pub fn negotiate(headers: &HeaderMap, allow_html: bool) -> Format {
        Self::negotiate_values(
            &headers.get_all(http::header::ACCEPT),
            allow_html,
            Format::Text,
        )
    }

    /// [`Format::negotiate`] over the values of the `Accept` fields, with `fallback` when none
    /// of the formats is acceptable (or there is no `Accept`), and first among formats the
    /// request weighs equally (`*/*`: the same as no `Accept`, RFC 9110 §12.5.1).
    pub(crate) fn negotiate_values<'a, I>(accept: I, allow_html: bool, fallback: Format) -> Format
    where
        I: IntoIterator<Item = &'a HeaderValue> + Copy,
    {
        if accept.into_iter().next().is_none() {
            return fallback;
        }
        let mut best = (fallback, 0.0f32, 0u8, 0u8);
        let candidates: &[Format] = if allow_html {
            &[Format::Text, Format::ProblemJson, Format::Html]
        } else {
            &[Format::Text, Format::ProblemJson]
        };
        for (rank, &format) in candidates.iter().enumerate() {
            // Preference order at equal weight and specificity: the fallback (the server's own
            // choice, which a request without `Accept` gets, as one with `*/*` must), then
            // text, json, html.
            let order = if format == fallback {
                u8::MAX
            } else {
                (candidates.len() - rank) as u8
            };
            let Some((q, specificity)) = weight(accept, format) else {
                continue;
            };
            if q <= 0.0 {
                continue;
            }
            if (q, specificity, order) > (best.1, best.2, best.3) {
                best = (format, q, specificity, order);
            }
        }
        best.0
    }

    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Format::Text => "text/plain; charset=utf-8",
            Format::ProblemJson => "application/problem+json",
            Format::Html => "text/html; charset=utf-8",
        })
    }

    fn matches(self, ty: &str, subty: &str) -> Option<u8> {
        let (own_ty, own_subs): (&str, &[&str]) = match self {
            Format::Text => ("text", &["plain"]),
            Format::ProblemJson => ("application", &["problem+json", "json"]),
            Format::Html => ("text", &["html"]),
        };
        if ty == "*" && subty == "*" {
            Some(0)
        } else if ty.eq_ignore_ascii_case(own_ty) && subty == "*" {
            Some(1)
        } else if ty.eq_ignore_ascii_case(own_ty) && own_subs[0].eq_ignore_ascii_case(subty) {
            // The format's own media type: more specific than an alias of it.
            Some(3)
        } else if ty.eq_ignore_ascii_case(own_ty)
            && own_subs.iter().any(|s| s.eq_ignore_ascii_case(subty))
        {
            Some(2)
        } else {
            None
        }
    }
}

/// The weight and specificity of the most specific `Accept` range matching `format`.
fn weight<'a>(
    accept: impl IntoIterator<Item = &'a HeaderValue>,
    format: Format,
) -> Option<(f32, u8)> {
    let mut found: Option<(f32, u8)> = None;
    for value in accept {
        let Ok(value) = value.to_str() else { continue };
        for range in split_unquoted(value, b',') {
            let mut parts = split_unquoted(range, b';');
            let media = parts.next().unwrap_or("").trim();
            let Some((ty, subty)) = media.split_once('/') else {
                continue;
            };
            let Some(specificity) = format.matches(ty.trim(), subty.trim()) else {
                continue;
            };
            let mut q = 1.0f32;
            for param in parts {
                if let Some((name, val)) = param.split_once('=') {
                    if name.trim().eq_ignore_ascii_case("q") {
                        q = val
                            .trim()
                            .parse::<f32>()
                            .ok()
                            .filter(|q| q.is_finite())
                            .map_or(0.0, |q| q.clamp(0.0, 1.0));
                    }
                }
            }
            match found {
                Some((_, s)) if s >= specificity => {}
                _ => found = Some((q, specificity)),
            }
        }
    }
    // Across formats, an alias (`application/json`) counts as named as well as the format's
    // own type.
    found.map(|(q, s)| (q, s.min(2)))
}

/// Splits `s` at each `sep` outside a quoted string (RFC 9110 §5.6.4: `"..."`, with `\`
/// escaping the next character), so that a comma or semicolon in a parameter's quoted value
/// separates nothing. An unterminated quote runs to the end. (`s` is a header value's visible
/// ASCII: every index split at is a character boundary.)
fn split_unquoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let bytes = s.as_bytes();
    let (mut start, mut i, mut quoted, mut done) = (0, 0, false, false);
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b if b == sep && !quoted => {
                    let part = &s[start..i];
                    i += 1;
                    start = i;
                    return Some(part);
                }
                _ => {}
            }
            i += 1;
        }
        done = true;
        Some(&s[start..])
    })
}

/// The generated error response: status, `Retry-After`, `Cache-Control: no-store`, error id, and
/// a body in the format the client asked for.
///
/// Every layer of this crate builds its 500 and 503 responses with this type, so they all look
/// alike on the wire:
///
/// | part | value |
/// |---|---|
/// | status | as given |
/// | `Cache-Control` | `no-store`: neither a 500 nor a 503 may be served from a cache |
/// | `Retry-After` | when the layer knows one |
/// | `x-error-id` | the [`ErrorId`], also in the body, and logged by the layer |
/// | `Content-Type` / body | plain text, RFC 9457 `application/problem+json`, or HTML: see [`Format::negotiate`] |
/// | extensions | the [`Reason`] and the [`ErrorId`] |
///
/// The body never contains anything but the status title, the detail (a fixed, client-safe text
/// per [`Reason`] unless the layer's user configured one), the error id and the retry delay.
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http::{header, StatusCode};
/// use tower_5xx::{ErrorResponse, Format, Reason, RetryAfter};
///
/// let res = ErrorResponse::new(StatusCode::SERVICE_UNAVAILABLE, Reason::Maintenance)
///     .retry_after(RetryAfter::delay(Duration::from_secs(120)))
///     .format(Format::ProblemJson)
///     .into_response::<Bytes>();
/// assert_eq!(res.status(), 503);
/// assert_eq!(res.headers()[header::RETRY_AFTER], "120");
/// assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
/// assert_eq!(res.headers()[header::CONTENT_TYPE], "application/problem+json");
/// ```
#[derive(Debug, Clone)]
pub struct ErrorResponse {
    status: StatusCode,
    reason: Reason,
    retry_after: Option<RetryAfter>,
    detail: Option<Cow<'static, str>>,
    error_id: ErrorId,
    format: Format,
    /// The quota policies a 429 violated (draft-ietf-httpapi-ratelimit-headers): when not
    /// empty, the problem type is `quota-exceeded` with a `violated-policies` member.
    violated_policies: Vec<Arc<str>>,
    /// The wall-clock time a `Retry-After` date is counted from in the body: the clock the
    /// refusal policy read for the header. `None`: the system clock when the body is made.
    now: Option<SystemTime>,
}

/// The problem type of a request over quota (draft-ietf-httpapi-ratelimit-headers, "Quota
/// Exceeded" problem type).
pub(crate) const QUOTA_EXCEEDED_TYPE: &str =
    "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// An RFC 9457 problem details object: the one `application/problem+json` renderer of the
/// crate (generated responses and the maintenance admin router's errors).
#[derive(serde::Serialize)]
pub(crate) struct Problem<'a> {
    #[serde(rename = "type")]
    pub(crate) ty: &'static str,
    pub(crate) title: &'a str,
    pub(crate) status: u16,
    pub(crate) detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retry_after: Option<u64>,
    #[serde(rename = "violated-policies", skip_serializing_if = "Option::is_none")]
    pub(crate) violated_policies: Option<Vec<&'a str>>,
}

impl Problem<'_> {
    /// A problem for `status` with the status's title and type `about:blank`.
    pub(crate) fn new(status: StatusCode, detail: &str) -> Problem<'_> {
        Problem {
            ty: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail,
            error_id: None,
            retry_after: None,
            violated_policies: None,
        }
    }

    /// The JSON bytes.
    pub(crate) fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a problem always serializes"))
    }
}

/// What only the refusing layers (the crate's server side) set.
#[cfg(any(
    feature = "catch",
    feature = "maintenance",
    feature = "shed",
    feature = "breaker",
    feature = "lifecycle",
    feature = "rate-limit"
))]
impl ErrorResponse {
    /// Counts a `Retry-After` date from `now` in the body (its "retry after" seconds, the HTML
    /// page's self-refresh): the time the refusal policy read from its clock for the header,
    /// so that header and body agree on an injected clock.
    pub(crate) fn counted_from(mut self, now: SystemTime) -> Self {
        self.now = Some(now);
        self
    }

    /// The quota policies this 429 violated: the problem+json body then has the type
    /// `https://iana.org/assignments/http-problem-types#quota-exceeded` and a
    /// `violated-policies` member.
    pub(crate) fn violated_policies(mut self, names: Vec<Arc<str>>) -> Self {
        self.violated_policies = names;
        self
    }

    /// The names of the violated quota policies (empty unless this is a 429 over quota).
    pub(crate) fn violated_policy_names(&self) -> &[Arc<str>] {
        &self.violated_policies
    }
}

impl ErrorResponse {
    /// A response with this status and reason, a fresh [`ErrorId`], no `Retry-After`, the
    /// reason's default detail, and a plain-text body.
    pub fn new(status: StatusCode, reason: Reason) -> Self {
        Self {
            status,
            reason,
            retry_after: None,
            detail: None,
            error_id: ErrorId::new(),
            format: Format::Text,
            violated_policies: Vec::new(),
            now: None,
        }
    }

    /// Sets the `Retry-After` header. A delay under one second is sent as `1`: `Retry-After: 0`
    /// would invite an immediate retry of a request the server just refused. A date is sent as
    /// it is; the body counts one already past (or less than a second ahead) as one second, and
    /// the maintenance page reloads itself no sooner.
    #[must_use]
    pub fn retry_after(mut self, retry_after: RetryAfter) -> Self {
        self.retry_after = Some(retry_after.at_least_one_second());
        self
    }

    /// Sets the client-facing detail text. It must not contain internal information; by
    /// default it is [`Reason::default_detail`].
    #[must_use]
    pub fn detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Sets the body format.
    #[must_use]
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Sets the body format from the request's `Accept` header, see [`Format::negotiate`].
    #[must_use]
    pub fn negotiate(mut self, request_headers: &HeaderMap, allow_html: bool) -> Self {
        self.format = Format::negotiate(request_headers, allow_html);
        self
    }

    /// Uses this error id instead of a fresh one.
    #[must_use]
    pub fn with_error_id(mut self, error_id: ErrorId) -> Self {
        self.error_id = error_id;
        self
    }

    /// The error id the response will carry (log it with the error).
    pub fn error_id(&self) -> ErrorId {
        self.error_id
    }

    /// The status the response will carry.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The reason the response will carry.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The client-facing text: the configured detail or the reason's default.
    pub(crate) fn detail_text(&self) -> &str {
        self.detail
            .as_deref()
            .unwrap_or_else(|| self.reason.default_detail())
    }

    /// The body text, as bytes, in the chosen format.
    fn body(&self) -> Bytes {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let detail = self.detail_text();
        // At least one second, as a delay is sent: a date already past (an announced end that
        // was overrun) must not make the maintenance page reload at once, in a loop.
        let retry_secs = self.retry_after.map(|ra| {
            delay_secs_rounded_up(ra.delay_from(self.now.unwrap_or_else(SystemTime::now))).max(1)
        });
        let id = self.error_id;
        let code = self.status.as_u16();
        match self.format {
            Format::Text => {
                let mut s = format!("{code} {title}: {detail}\nerror id: {id}\n");
                if !self.violated_policies.is_empty() {
                    s.push_str("violated policies: ");
                    s.push_str(&self.violated_policies.join(", "));
                    s.push('\n');
                }
                if let Some(secs) = retry_secs {
                    s.push_str(&format!("retry after: {secs} s\n"));
                }
                Bytes::from(s)
            }
            Format::ProblemJson => {
                let mut problem = Problem {
                    error_id: Some(id.to_string()),
                    retry_after: retry_secs,
                    ..Problem::new(self.status, detail)
                };
                if !self.violated_policies.is_empty() {
                    problem.ty = QUOTA_EXCEEDED_TYPE;
                    problem.title = "Quota Exceeded";
                    problem.violated_policies =
                        Some(self.violated_policies.iter().map(|n| &**n).collect());
                }
                problem.to_bytes()
            }
            Format::Html => {
                // Only the maintenance page reloads itself, once its Retry-After has passed.
                let refresh = self.reason == Reason::Maintenance;
                Bytes::from(crate::html::page(
                    code, title, detail, retry_secs, id, refresh,
                ))
            }
        }
    }

    /// Builds the response, with any body type that can be made from the generated bytes:
    /// axum's `Body`, `http_body_util::Full<Bytes>`, [`ResponseBody`](crate::ResponseBody), `Bytes`
    /// itself.
    pub fn into_response<B: From<Bytes>>(self) -> Response<B> {
        let mut res = Response::new(B::from(self.body()));
        *res.status_mut() = self.status;
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, self.format.content_type());
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(ERROR_ID_HEADER, error_id_header_value(self.error_id));
        if let Some(ra) = self.retry_after {
            headers.insert(RETRY_AFTER, ra.to_header_value());
        }
        res.extensions_mut().insert(self.reason);
        res.extensions_mut().insert(self.error_id);
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::ACCEPT;
    use std::time::Duration;

    fn accept(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(v));
        h
    }

    /// A comma or semicolon inside a quoted parameter value (RFC 9110 §5.6.4) is not a
    /// separator: `text/html;foo="a,b";q=0.1` is one range, HTML at q=0.1. (Split at every
    /// comma, its `text/html;foo="a` piece counted as HTML at q=1, which won.)
    #[test]
    fn separators_inside_quoted_strings_separate_nothing() {
        let quoted = r#"text/html;foo="a,b";q=0.1, application/json;q=0.5"#;
        assert_eq!(
            Format::negotiate(&accept(quoted), true),
            Format::ProblemJson
        );
        let semicolon = r#"text/html;foo="x;q=1";q=0.1, application/json;q=0.5"#;
        assert_eq!(
            Format::negotiate(&accept(semicolon), true),
            Format::ProblemJson
        );
        let escaped = r#"text/html;foo="a\",b";q=0.1, application/json;q=0.5"#;
        assert_eq!(
            Format::negotiate(&accept(escaped), true),
            Format::ProblemJson
        );
        // An unterminated quote runs to the end: no panic, and what is left is one range.
        let open = r#"application/json;q=0.5, text/html;foo="a,b"#;
        assert_eq!(Format::negotiate(&accept(open), true), Format::Html);
        assert_eq!(
            split_unquoted(r#"a,"b,\"c",d"#, b',').collect::<Vec<_>>(),
            ["a", r#""b,\"c""#, "d"]
        );
    }

    proptest::proptest! {
        /// Any `Accept` value: the pieces put back together are the value (nothing lost at a
        /// quote or an escape at the end), and negotiating it does not panic.
        #[test]
        fn any_accept_value_splits_back_and_negotiates(v in "[ -~]{0,64}") {
            let parts: Vec<&str> = split_unquoted(&v, b',').collect();
            proptest::prop_assert_eq!(parts.join(","), v.clone());
            if let Ok(value) = HeaderValue::from_str(&v) {
                let mut headers = HeaderMap::new();
                headers.insert(ACCEPT, value);
                let _ = Format::negotiate(&headers, true);
            }
        }
    }

    #[test]
    fn negotiation() {
        assert_eq!(Format::negotiate(&HeaderMap::new(), true), Format::Text);
        assert_eq!(Format::negotiate(&accept("*/*"), true), Format::Text);
        assert_eq!(
            Format::negotiate(&accept("application/problem+json"), true),
            Format::ProblemJson
        );
        assert_eq!(
            Format::negotiate(&accept("application/json, */*"), true),
            Format::ProblemJson
        );
        assert_eq!(
            Format::negotiate(&accept("text/plain;q=0.5, application/json"), true),
            Format::ProblemJson
        );
        assert_eq!(
            Format::negotiate(&accept("application/json;q=0, */*"), true),
            Format::Text
        );
        let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert_eq!(Format::negotiate(&accept(browser), true), Format::Html);
        assert_eq!(Format::negotiate(&accept(browser), false), Format::Text);
        assert_eq!(Format::negotiate(&accept("image/png"), true), Format::Text);
        assert_eq!(Format::negotiate(&accept(";;,/,q=x"), true), Format::Text);
        assert_eq!(
            Format::negotiate(&accept("application/*;q=0.9, text/*;q=0.1"), true),
            Format::ProblemJson
        );
    }

    #[test]
    fn generated_response_shape() {
        let res = ErrorResponse::new(StatusCode::SERVICE_UNAVAILABLE, Reason::Shed)
            .retry_after(RetryAfter::delay(Duration::from_millis(1500)))
            .format(Format::ProblemJson)
            .into_response::<Bytes>();
        let id = *res.extensions().get::<ErrorId>().unwrap();
        assert_eq!(res.headers()[RETRY_AFTER], "2");
        assert_eq!(res.headers()[ERROR_ID_HEADER], id.to_string().as_str());
        let bytes = res.into_body();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["status"], 503);
        assert_eq!(json["title"], "Service Unavailable");
        assert_eq!(json["error_id"], id.to_string());
        assert_eq!(json["retry_after"], 2);
        assert_eq!(json["type"], "about:blank");
    }

    #[test]
    fn the_largest_delay_formats_without_overflow() {
        for format in [Format::Text, Format::ProblemJson, Format::Html] {
            let res = ErrorResponse::new(StatusCode::SERVICE_UNAVAILABLE, Reason::Shed)
                .retry_after(RetryAfter::Delay(Duration::MAX))
                .format(format)
                .into_response::<Bytes>();
            assert_eq!(res.headers()[RETRY_AFTER], u64::MAX.to_string().as_str());
        }
    }

    #[test]
    fn html_is_escaped() {
        let res = ErrorResponse::new(StatusCode::SERVICE_UNAVAILABLE, Reason::Maintenance)
            .detail("<script>alert('x')</script> & more")
            .format(Format::Html)
            .into_response::<Bytes>();
        let body = res.into_body();
        let body = std::str::from_utf8(&body).unwrap();
        assert!(!body.contains("<script>"));
        assert!(body.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more"));
    }

    #[test]
    fn error_ids_are_hex_and_distinct() {
        let a = ErrorId::new();
        let b = ErrorId::new();
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 16);
        assert!(a.to_string().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(ErrorId::from(0xab).to_string(), "00000000000000ab");
    }
}
