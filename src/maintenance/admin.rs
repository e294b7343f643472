//! An axum router to read and flip the switch over HTTP, behind a bearer token.
//!
//! | request | effect | answer |
//! |---|---|---|
//! | `GET /` | none | `200` with the [status](StatusBody) as JSON |
//! | `PUT /` with JSON `{"until": "<HTTP-date>", "retry_after": 120, "message": "..."}` (all optional, no other fields; an empty body is `{}`) | maintenance on with that [notice](super::MaintenanceNotice) | `200` with the new status |
//! | `DELETE /` | maintenance off (scheduled windows are left alone) | `200` with the new status |
//! | no `Authorization: Bearer <token>`, or a wrong token | none | `401` with `WWW-Authenticate: Bearer` |
//! | a body that is not such JSON | none | `400` with an `application/problem+json` body |
//!
//! The token is compared in constant time. Every answer carries `Cache-Control: no-store`.
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

use std::{sync::Arc, time::UNIX_EPOCH};

use axum::{
    body::Bytes,
    extract::State,
    http::{
        header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE},
        HeaderMap, HeaderValue, StatusCode,
    },
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

pub use super::error::MissingToken;
use super::{MaintenanceNotice, MaintenanceSwitch, Source};

/// The admin router for `switch`, accepting `Authorization: Bearer <token>`.
///
/// Fails with [`MissingToken`] if `token` is empty or only whitespace: the router refuses to be
/// built without one. See the [module docs](self) for the routes.
pub fn router(switch: MaintenanceSwitch, token: impl Into<String>) -> Result<Router, MissingToken> {
    let token = token.into();
    if token.trim().is_empty() {
        return Err(MissingToken);
    }
    let state = Arc::new(Admin {
        switch,
        token: token.into_bytes().into_boxed_slice(),
    });
    Ok(Router::new()
        .route("/", get(status).put(enable).delete(disable))
        .with_state(state))
}

struct Admin {
    switch: MaintenanceSwitch,
    token: Box<[u8]>,
}

/// The JSON body of every successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StatusBody {
    /// Whether new requests get 503 now.
    pub enabled: bool,
    /// `"manual"` or `"scheduled"` while on, else `null`.
    pub source: Option<String>,
    /// The expected end as an HTTP-date, when known.
    pub until: Option<String>,
    /// The notice's own `Retry-After` in seconds, when set.
    pub retry_after: Option<u64>,
    /// The notice's message, when set.
    pub message: Option<String>,
    /// Scheduled windows that have not ended.
    pub pending_windows: usize,
}

impl StatusBody {
    fn of(switch: &MaintenanceSwitch) -> Self {
        let status = switch.status();
        let notice = status.notice.as_ref();
        Self {
            enabled: status.enabled,
            source: status.source.map(|s| {
                match s {
                    Source::Manual => "manual",
                    Source::Scheduled => "scheduled",
                }
                .to_owned()
            }),
            until: status
                .ends_at
                .map(|t| httpdate::fmt_http_date(t.max(UNIX_EPOCH))),
            retry_after: notice
                .and_then(|n| n.get_retry_after())
                .map(|d| d.as_secs()),
            message: notice.and_then(|n| n.get_message()).map(str::to_owned),
            pending_windows: status.pending_windows,
        }
    }
}

/// The body of `PUT`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnableRequest {
    until: Option<String>,
    retry_after: Option<u64>,
    message: Option<String>,
}

fn no_store(mut res: Response) -> Response {
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn json_ok(switch: &MaintenanceSwitch) -> Response {
    let body = serde_json::to_vec(&StatusBody::of(switch)).expect("a status always serializes");
    no_store(([(CONTENT_TYPE, "application/json")], body).into_response())
}

fn unauthorized() -> Response {
    no_store(
        (
            StatusCode::UNAUTHORIZED,
            [(WWW_AUTHENTICATE, "Bearer realm=\"maintenance\"")],
            "401 Unauthorized: a valid bearer token is required\n",
        )
            .into_response(),
    )
}

fn bad_request(detail: &str) -> Response {
    #[derive(Serialize)]
    struct Problem<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        title: &'static str,
        status: u16,
        detail: &'a str,
    }
    let body = serde_json::to_vec(&Problem {
        ty: "about:blank",
        title: "Bad Request",
        status: 400,
        detail,
    })
    .expect("a problem always serializes");
    no_store(
        (
            StatusCode::BAD_REQUEST,
            [(CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response(),
    )
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
        bool::from(presented.ct_eq(&self.token))
    }
}

async fn status(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if !admin.authorized(&headers) {
        return unauthorized();
    }
    json_ok(&admin.switch)
}

async fn enable(State(admin): State<Arc<Admin>>, headers: HeaderMap, body: Bytes) -> Response {
    if !admin.authorized(&headers) {
        return unauthorized();
    }
    let request: EnableRequest = if body.iter().all(u8::is_ascii_whitespace) {
        EnableRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return bad_request(&format!("invalid JSON body: {e}")),
        }
    };
    let mut notice = MaintenanceNotice::new();
    if let Some(until) = &request.until {
        match httpdate::parse_http_date(until) {
            Ok(t) => notice = notice.until(t),
            Err(_) => {
                return bad_request(
                    "`until` must be an HTTP-date, e.g. \"Sun, 06 Nov 2033 08:49:37 GMT\"",
                )
            }
        }
    }
    if let Some(secs) = request.retry_after {
        let secs = secs.min(crate::RetryAfter::MAX_DELAY.as_secs());
        notice = notice.retry_after(std::time::Duration::from_secs(secs));
    }
    if let Some(message) = request.message {
        notice = notice.message(message);
    }
    admin.switch.enable_with(notice);
    json_ok(&admin.switch)
}

async fn disable(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if !admin.authorized(&headers) {
        return unauthorized();
    }
    admin.switch.disable();
    json_ok(&admin.switch)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(router(MaintenanceSwitch::new(), "s3cret").is_ok());
    }

    #[test]
    fn bearer_parsing() {
        let admin = Admin {
            switch: MaintenanceSwitch::new(),
            token: b"s3cret".to_vec().into_boxed_slice(),
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
        assert!(!admin.authorized(&HeaderMap::new()));
    }
}
