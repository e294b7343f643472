//! An axum router to read and flip the switch over HTTP, behind a bearer token.
//!
//! | request | effect | answer |
//! |---|---|---|
//! | `GET /` | none | `200` with the [status](StatusBody) as JSON |
//! | `PUT /` with JSON `{"until": "<HTTP-date>", "retry_after": 120, "message": "..."}` (all optional, no other fields; an empty body is `{}`) | the [manual source](super::Source::Manual) on with that [notice](super::MaintenanceNotice) | `200` with the new status |
//! | `DELETE /` | the manual source off; a [sentinel file](super::SentinelFile) that exists or an open [window](super::Window) keeps maintenance on | `200` with the new status (`"enabled": true` while another source is on) |
//! | `PUT /`, `DELETE /` when the switch [follows Redis](MaintenanceSwitch::follow_redis) (feature `redis`) | written to the Redis key **instead of** the manual source (`DELETE` writes `"enabled": false`), so it reaches every instance of the fleet; applied to this instance before the answer | `200` with the new status, `"source": "redis"`, `"writes_to": "redis"` |
//! | the same while Redis is unreachable, or refuses the write, before the transaction is sent | none, here or in Redis | `503` with `Retry-After: 1`, problem+json: "nothing was changed; retry" |
//! | the same when the transaction was sent but its answer was lost (slower than the source's timeout, the connection cut) | **unknown**: Redis may have applied it (and the fleet will follow); not applied here before the answer | `503` with `Retry-After: 1`, problem+json: "it may or may not have been applied"; repeating the request is safe, a `GET` shows the state once the follower has read it |
//! | no `Authorization: Bearer <token>`, or a wrong token | none | `401` with `WWW-Authenticate: Bearer` |
//! | a body that is not such JSON, an `until` in the past or more than 30 days ahead, a `retry_after` over 30 days | none | `400` |
//! | a body over 16 KiB (refused before it is read when `Content-Length` announces it) | none | `413` |
//! | a body that takes more than 5 s to arrive | none | `408` |
//! | another method, e.g. `POST /` | none | `405` with `Allow` |
//! | another path below the router | none | `404` |
//!
//! `until` announces when the work should end: `Retry-After` counts down to it. It does not
//! switch maintenance off by itself (an overrunning migration should not suddenly get traffic);
//! `DELETE` does, or use a scheduled [`Window`](super::Window) for an end that is certain.
//!
//! The token is checked (in constant time, its length included: a token has at most 256 bytes,
//! and every comparison covers 256 bytes) **before** the body is read: a caller without it
//! cannot make the server read anything. With it, a body announced over 16 KiB is refused
//! unread, and no body is waited for longer than 5 seconds. Errors are `application/problem+json` (RFC 9457).
//! Every answer carries `Cache-Control: no-store`.
//! Mount the router with [`Router::nest`](axum::Router::nest), and keep it reachable while
//! maintenance is on: mount it outside the [`MaintenanceLayer`](super::MaintenanceLayer) or list
//! its path in [`bypass_path`](super::MaintenanceLayer::bypass_path).
//!
//! ```
//! use axum::{routing::get, Router};
//! use tower_5xx::maintenance::{admin, MaintenanceLayer, MaintenanceSwitch};
//!
//! let switch = MaintenanceSwitch::new();
//! let token = std::env::var("ADMIN_TOKEN").unwrap_or_else(|_| "example-token".into());
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(MaintenanceLayer::new(switch.clone()))
//!     .nest("/admin/maintenance", admin::router(switch, token).expect("a token is set"));
//! # let _ = app;
//! // curl -X PUT -H "Authorization: Bearer $ADMIN_TOKEN" -d '{"retry_after": 300}' \
//! //      http://127.0.0.1:3000/admin/maintenance
//! ```

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::error::MissingToken;
use super::secret::Secret;
use super::{MaintenanceNotice, MaintenanceSwitch};
use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequest, Request, State},
    http::{
        header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE},
        HeaderMap, HeaderValue, StatusCode,
    },
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use serde::{Deserialize, Serialize};

/// The largest `PUT` body read: the JSON needs a few hundred bytes.
const BODY_LIMIT: usize = 16 * 1024;

/// The longest a `PUT` body may take to arrive, in all: 16 KiB take milliseconds; a client that
/// sends slower holds a connection and a task for nothing.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// The admin router for `switch`, accepting `Authorization: Bearer <token>`.
///
/// Surrounding whitespace is trimmed from `token` (a token read from a file keeps its newline;
/// a header value cannot carry it). Fails with [`MissingToken`] if nothing is left (the router
/// refuses to be built without a token), or if more than 256 bytes are (every comparison
/// covers 256 bytes, so that its time does not show the token's length). See the
/// [module docs](self) for the routes.
pub fn router(switch: MaintenanceSwitch, token: impl Into<String>) -> Result<Router, MissingToken> {
    let token = token.into();
    let token = token.trim();
    if token.is_empty() {
        return Err(MissingToken);
    }
    // Over 256 bytes: refused too.
    let token = Secret::new(token.as_bytes()).ok_or(MissingToken)?;
    let state = Arc::new(Admin { switch, token });
    Ok(Router::new()
        .route("/", get(status).put(enable).delete(disable))
        // Authenticate before any handler (and so before any body extractor) runs.
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        // The router's own answers are problem+json too (axum adds `Allow` to the 405).
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Every answer, whoever made it, is never cached.
        .layer(middleware::map_response(no_store))
        .with_state(state))
}

struct Admin {
    switch: MaintenanceSwitch,
    token: Secret,
}

/// The JSON body of every successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StatusBody {
    /// Whether new requests get 503 now.
    pub enabled: bool,
    /// Every [source](super::Source) that is on: `"manual"` (code, this router without Redis),
    /// `"file"` (a sentinel file), `"redis"` (the fleet's key, this router with Redis),
    /// `"scheduled"` (an open window). Empty when off.
    pub sources: Vec<String>,
    /// The source whose notice is in force (the [precedence rule](super#sources)), else `null`.
    pub source: Option<String>,
    /// The expected end as an HTTP-date, when known.
    pub until: Option<String>,
    /// The notice's own `Retry-After` in seconds, when set.
    pub retry_after: Option<u64>,
    /// The notice's message, when set.
    pub message: Option<String>,
    /// Scheduled windows that have not ended.
    pub pending_windows: usize,
    /// Where this router's `PUT` and `DELETE` write: `"redis"` when the switch
    /// [follows Redis](MaintenanceSwitch::follow_redis) (feature `redis`), else `"local"` (the
    /// manual source of this instance).
    #[serde(default)]
    pub writes_to: String,
}

impl StatusBody {
    fn of(switch: &MaintenanceSwitch) -> Self {
        let status = switch.status();
        let notice = status.notice.as_ref();
        Self {
            enabled: status.enabled,
            sources: status
                .sources
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
            source: status.source.map(|s| s.as_str().to_owned()),
            until: status
                .ends_at
                .map(crate::retry_after::fmt_http_date_clamped),
            retry_after: notice
                .and_then(|n| n.get_retry_after())
                .map(|d| d.as_secs()),
            message: notice.and_then(|n| n.get_message()).map(str::to_owned),
            pending_windows: status.pending_windows,
            writes_to: writes_to(switch).to_owned(),
        }
    }
}

fn writes_to(switch: &MaintenanceSwitch) -> &'static str {
    #[cfg(feature = "redis")]
    if switch.redis_store().is_some() {
        return "redis";
    }
    let _ = switch;
    "local"
}

/// The body of `PUT`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnableRequest {
    until: Option<String>,
    retry_after: Option<u64>,
    message: Option<String>,
}

/// Sets `Cache-Control: no-store` on every answer of the router: status and errors alike are
/// about a moment and must not be replayed by a cache.
async fn no_store(mut res: Response) -> Response {
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn json_ok(switch: &MaintenanceSwitch) -> Response {
    let body = serde_json::to_vec(&StatusBody::of(switch)).expect("a status always serializes");
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}

async fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "no such route: the admin router answers at its root",
    )
}

async fn method_not_allowed() -> Response {
    problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "use GET (status), PUT (on) or DELETE (off)",
    )
}

fn unauthorized() -> Response {
    let mut res = problem(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    res.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"maintenance\""),
    );
    res
}

/// An `application/problem+json` (RFC 9457) error answer, by the crate's one renderer.
fn problem(status: StatusCode, detail: &str) -> Response {
    let body = crate::response::Problem::new(status, detail).to_bytes();
    (status, [(CONTENT_TYPE, "application/problem+json")], body).into_response()
}

impl Admin {
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(AUTHORIZATION) else {
            return false;
        };
        let bytes = value.as_bytes();
        // `Bearer` is case-insensitive (RFC 9110 §11.1); one or more spaces follow it.
        if bytes.len() < 7 || !bytes[..6].eq_ignore_ascii_case(b"bearer") || bytes[6] != b' ' {
            return false;
        }
        let presented = bytes[7..].trim_ascii_start();
        // In a time that shows neither the token nor its length (see `Secret::matches`).
        self.token.matches(presented)
    }
}

/// Lets only requests with the token reach the handlers.
async fn authenticate(State(admin): State<Arc<Admin>>, req: Request, next: Next) -> Response {
    if !admin.authorized(req.headers()) {
        return unauthorized();
    }
    next.run(req).await
}

async fn status(State(admin): State<Arc<Admin>>) -> Response {
    json_ok(&admin.switch)
}

async fn enable(State(admin): State<Arc<Admin>>, req: Request) -> Response {
    // A body announced over the limit is refused before any of it is read.
    let announced = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|length| length > BODY_LIMIT as u64) {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body may be at most {BODY_LIMIT} bytes"),
        );
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(req, &())).await {
        Ok(Ok(body)) => body,
        // 413 over the limit (a body without a length); 400 for a body that breaks off.
        Ok(Err(rejection)) => return problem(rejection.status(), &rejection.body_text()),
        Err(_) => {
            return problem(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the body did not arrive within {} seconds",
                    BODY_TIMEOUT.as_secs()
                ),
            )
        }
    };
    let notice = match notice_from_body(&body, admin.switch.clock().now()) {
        Ok(notice) => notice,
        Err(detail) => return bad_request(&detail),
    };
    #[cfg(feature = "redis")]
    if let Some(store) = admin.switch.redis_store() {
        return write_through(&admin.switch, &store, Some(notice)).await;
    }
    admin.switch.enable_with(notice);
    json_ok(&admin.switch)
}

/// The notice a `PUT` body asks for, read at `now`; or what is wrong with it (the detail of the
/// 400). Pure, so that it can be fuzzed.
pub(crate) fn notice_from_body(body: &[u8], now: SystemTime) -> Result<MaintenanceNotice, String> {
    let request: EnableRequest = if body.iter().all(u8::is_ascii_whitespace) {
        EnableRequest::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return Err(format!("invalid JSON body: {e}")),
        }
    };
    let mut notice = MaintenanceNotice::new();
    if let Some(until) = &request.until {
        match httpdate::parse_http_date(until) {
            Ok(t) if t <= now => {
                return Err("`until` is in the past: give the announced end of the work".to_owned())
            }
            Ok(t)
                if t.duration_since(now)
                    .is_ok_and(|ahead| ahead.as_secs() > MAX_RETRY_AFTER_SECS) =>
            {
                return Err(format!(
                    "`until` must be at most {MAX_RETRY_AFTER_SECS} seconds (30 days) ahead"
                ));
            }
            Ok(t) => notice = notice.until(t),
            Err(_) => {
                return Err(
                    "`until` must be an HTTP-date, e.g. \"Sun, 06 Nov 2033 08:49:37 GMT\""
                        .to_owned(),
                )
            }
        }
    }
    if let Some(secs) = request.retry_after {
        if secs > MAX_RETRY_AFTER_SECS {
            return Err(format!(
                "`retry_after` must be at most {MAX_RETRY_AFTER_SECS} seconds (30 days)"
            ));
        }
        notice = notice.retry_after(Duration::from_secs(secs));
    }
    if let Some(message) = request.message {
        notice = notice.message(message);
    }
    Ok(notice)
}

/// With Redis configured, the admin state lives there only: write, and answer with the status
/// (which the write has already applied to this switch), or 503 if Redis is unreachable.
#[cfg(feature = "redis")]
async fn write_through(
    switch: &MaintenanceSwitch,
    store: &super::redis::Store,
    notice: Option<MaintenanceNotice>,
) -> Response {
    match store.write(notice, Some(switch)).await {
        Ok(()) => json_ok(switch),
        Err(e) => store_unavailable(e.may_have_been_applied()),
    }
}

/// `503` + `Retry-After: 1` (the follower's longest reconnection wait): the write did not
/// happen, or (`maybe_applied`) its outcome is unknown.
#[cfg(feature = "redis")]
fn store_unavailable(maybe_applied: bool) -> Response {
    let retry_after = Duration::from_secs(1);
    let detail = if maybe_applied {
        "the maintenance store (Redis) did not confirm the change: it may or may not have been \
         applied; repeating the request is safe, or GET to check"
    } else {
        "the maintenance store (Redis) is unreachable: nothing was changed; retry"
    };
    let body = crate::response::Problem {
        retry_after: Some(retry_after.as_secs()),
        ..crate::response::Problem::new(StatusCode::SERVICE_UNAVAILABLE, detail)
    }
    .to_bytes();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            ),
            (
                axum::http::header::RETRY_AFTER,
                crate::RetryAfter::Delay(retry_after).to_header_value(),
            ),
        ],
        body,
    )
        .into_response()
}

/// The longest `retry_after` the router accepts: a client told to come back in more than 30
/// days has effectively been told to go away, which is not what maintenance means.
const MAX_RETRY_AFTER_SECS: u64 = 30 * 24 * 3600;

fn bad_request(detail: &str) -> Response {
    problem(StatusCode::BAD_REQUEST, detail)
}

async fn disable(State(admin): State<Arc<Admin>>) -> Response {
    #[cfg(feature = "redis")]
    if let Some(store) = admin.switch.redis_store() {
        return write_through(&admin.switch, &store, None).await;
    }
    admin.switch.disable();
    json_ok(&admin.switch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn refuses_to_build_without_a_token() {
        assert_eq!(
            router(MaintenanceSwitch::new(), "").err(),
            Some(MissingToken)
        );
        assert_eq!(
            router(MaintenanceSwitch::new(), "  \t").err(),
            Some(MissingToken)
        );
        assert_eq!(
            router(MaintenanceSwitch::new(), " \n").err(),
            Some(MissingToken)
        );
        assert!(router(MaintenanceSwitch::new(), "s3cret").is_ok());
        // Up to 256 bytes once trimmed: every comparison covers 256 bytes.
        let longest = "k".repeat(256);
        assert!(router(MaintenanceSwitch::new(), format!("{longest}\n")).is_ok());
        assert_eq!(
            router(MaintenanceSwitch::new(), format!("{longest}k")).err(),
            Some(MissingToken)
        );
    }

    /// `GET` formats the expected end as an HTTP-date, whatever it is: an end set from code
    /// past the year 9999, or a deadline read against a clock at the end of 9999, used to
    /// panic the handler (no answer at all).
    #[tokio::test]
    async fn status_of_an_end_past_the_year_9999_is_the_latest_http_date() {
        use tower::ServiceExt;

        let end_of_9999 = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
        let far = end_of_9999 + Duration::from_secs(400 * 24 * 3600);
        #[derive(Debug)]
        struct EndOf9999;
        impl super::super::WallClock for EndOf9999 {
            fn now(&self) -> std::time::SystemTime {
                UNIX_EPOCH + Duration::from_secs(253_402_300_799)
            }
        }
        let by_code = MaintenanceSwitch::new();
        by_code.enable_with(MaintenanceNotice::new().until(far));
        let by_deadline = MaintenanceSwitch::with_clock(EndOf9999);
        by_deadline.enable_with(MaintenanceNotice::new().ends_in(Duration::from_secs(3600)));
        for switch in [by_code, by_deadline] {
            let req = Request::get("/")
                .header(AUTHORIZATION, "Bearer s3cret")
                .body(axum::body::Body::empty())
                .unwrap();
            let res = router(switch, "s3cret")
                .unwrap()
                .oneshot(req)
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let body = axum::body::to_bytes(res.into_body(), BODY_LIMIT)
                .await
                .unwrap();
            let status: StatusBody = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                status.until.as_deref(),
                Some("Fri, 31 Dec 9999 23:59:59 GMT")
            );
        }
    }

    #[test]
    fn bearer_parsing() {
        let admin = Admin {
            switch: MaintenanceSwitch::new(),
            token: Secret::new(b"s3cret").unwrap(),
        };
        let check = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_static(v));
            admin.authorized(&h)
        };
        assert!(check("Bearer s3cret"));
        assert!(check("bearer  s3cret"));
        assert!(!check("Bearer s3cre"));
        assert!(!check("Bearer s3cret2"));
        assert!(!check("Basic s3cret"));
        assert!(!check("Bearers3cret"));
        assert!(!check("Bearer"));
        assert!(!check("Bearer "));
        assert!(!check("Bearer s3cret "));
        assert!(!admin.authorized(&HeaderMap::new()));
    }
}
