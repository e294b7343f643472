//! Per-client rate limits: **429 Too Many Requests** with `Retry-After` and the IETF
//! `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers-11), in one
//! process or across a fleet on Redis.
//!
//! A server that limits one client answers 429, not 503: the server is fine, that client should
//! slow down. [`RateLimitLayer`] counts each request against its client's quotas (one or more
//! [`Policy`]s) and answers:
//!
//! | situation | response |
//! |---|---|
//! | within every policy | the inner service's response, with `RateLimit-Policy` and `RateLimit` ([can be turned off](RateLimitBuilder::headers_within_quota)) |
//! | over any policy | **429**, `Retry-After` (the time until the request would be admitted, bounded and jittered by the [refusal policy](crate::refuse)), the two fields, `Cache-Control: no-store`, a problem+json body of type `https://iana.org/assignments/http-problem-types#quota-exceeded` with `violated-policies` (or text or HTML, as `Accept` asks), [`Reason::RateLimited`](crate::Reason) in the extensions; the request is not counted |
//! | an [exempt path](RateLimitBuilder::exempt_path) | the inner service's response, not counted, no fields |
//! | [Redis](RedisStore) slow or down | decided in memory (fail-open, the default), or 503 + `Retry-After` ([fail-closed](RedisStore::fail_closed)); never a stall past the timeout, never a 500 |
//!
//! # The fields
//!
//! Structured-field lists, one item per policy, named as the policy:
//!
//! ```text
//! RateLimit-Policy: "burst";q=10;w=1, "hourly";q=1000;w=3600
//! RateLimit: "burst";r=0;t=2, "hourly";r=987;t=47
//! ```
//!
//! `q` is the quota and `w` the window in seconds; `r` is how many more requests the client
//! may send now, and `t` the seconds (rounded up) until it is back to its full quota. A
//! [client](crate::retry) that gets a 429 or 503 without `Retry-After` waits the `t` of the
//! policies with `r=0`.
//!
//! # The algorithm and the stores
//!
//! GCRA (the generic cell rate algorithm): one timestamp per client and policy, no window
//! edges where a client could send twice its quota. In memory, the timestamps live in a sharded
//! map of bounded size ([`capacity`](RateLimitBuilder::capacity), 100,000 keys by default, under
//! 8.2 MB); the hot path takes one uncontended lock for a few nanoseconds and allocates only
//! the `RateLimit` field's value. With the `redis` feature, [`RedisStore`] keeps them in Redis,
//! one atomic script per request.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use tower_5xx::rate_limit::{Policy, RateLimitLayer};
//!
//! # fn main() -> Result<(), tower_5xx::error::InvalidConfig> {
//! let limit = RateLimitLayer::builder()
//!     // 10 per second with bursts of 20, and 1,000 per hour, per client IP.
//!     .policy(Policy::new("burst", 10, Duration::from_secs(1)).burst(20))
//!     .policy(Policy::new("hourly", 1000, Duration::from_secs(3600)))
//!     .exempt_path("/healthz")
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/api", get(|| async { "hello" }))
//!     .route("/healthz", get(|| async { "ok" }))
//!     .layer(limit);
//! // Serve with `app.into_make_service_with_connect_info::<SocketAddr>()`, so the layer sees
//! // the client's address.
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! A running check, with tower's `oneshot` on a plain service:
//!
//! ```
//! use std::{convert::Infallible, net::SocketAddr, time::Duration};
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_5xx::rate_limit::{Policy, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = RateLimitLayer::builder()
//!     .policy(Policy::new("demo", 2, Duration::from_secs(60)))
//!     .build()
//!     .unwrap();
//! let svc = layer.layer(service_fn(|_req: Request<()>| async {
//!     Ok::<_, Infallible>(Response::new(Bytes::from("hello")))
//! }));
//! let request = || {
//!     let mut req = Request::new(());
//!     req.extensions_mut().insert(SocketAddr::from(([192, 0, 2, 1], 4000)));
//!     req
//! };
//! let first = svc.clone().oneshot(request()).await.unwrap();
//! assert_eq!(first.headers()["ratelimit-policy"], r#""demo";q=2;w=60"#);
//! assert_eq!(first.headers()["ratelimit"], r#""demo";r=1;t=30"#);
//! svc.clone().oneshot(request()).await.unwrap();
//! let third = svc.clone().oneshot(request()).await.unwrap();
//! assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(third.headers()["ratelimit"], r#""demo";r=0;t=60"#);
//! assert!(third.headers().contains_key("retry-after"));
//! # }
//! ```

mod future;
mod key;
mod layer;
mod memory;
mod policy;
#[cfg(feature = "redis")]
mod redis;
mod service;

use http::HeaderName;

pub use crate::client_ip::{ClientRequest, ForwardedHeader};
pub use future::ResponseFuture;
pub use ipnet::IpNet;
pub use key::RateLimitKey;
pub use layer::{RateLimitBuilder, RateLimitLayer};
pub use policy::{Policy, MAX_POLICIES, MAX_QUOTA, MAX_WINDOW};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::RedisStore;
pub use service::RateLimit;

/// The `RateLimit-Policy` field: the quota policies, `"name";q=10;w=1`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The `RateLimit` field: the client's state per policy, `"name";r=4;t=2`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

#[cfg(test)]
mod tests;
