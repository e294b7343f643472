//! Tower middleware that makes HTTP services and clients speak the 5xx family correctly.
//!
//! `500` and `503` look alike in logs but tell clients, caches and crawlers different things:
//!
//! | signal | meaning | emitted here by | what a client should do |
//! |---|---|---|---|
//! | **500** Internal Server Error | an unexpected failure: a bug, a dependency call nobody planned for | [`catch`]: a service `Err`, a panic | retry idempotent requests with bounded exponential backoff and jitter |
//! | **503** Service Unavailable | a known, often deliberate state: maintenance, overload, an open circuit breaker | the [`maintenance`], [`shed`] and [`breaker`] layers, always with `Retry-After`; [`catch`] for tower's `Overloaded` and `Elapsed` | wait `Retry-After` (capped), otherwise back off: [`retry`] does |
//! | **502** / **504** | an upstream failed / timed out | [`catch`]: hyper-util's and reqwest's errors (features `hyper-util`, `reqwest`), your [`on_error`](catch::CatchLayer::on_error) rules | retry like 500 |
//! | **429** Too Many Requests | one client is over its quota: the server is fine | [`rate_limit`], with `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit` fields | wait `Retry-After` (or the `RateLimit` reset): [`retry`] does |
//!
//! Every response this crate generates carries `Cache-Control: no-store` and an
//! [error id](ErrorId) (header [`x-error-id`](ERROR_ID_HEADER) and body) that is logged with the
//! full error, so a user's report can be matched to a log line. A 500 never reveals the error's
//! text, type or backtrace to the client.
//!
//! # Example: a full axum stack
//!
//! ```
//! # #[cfg(all(feature = "catch", feature = "maintenance", feature = "shed", feature = "breaker"))]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use tower::{service_fn, Layer};
//! use tower_5xx::{
//!     breaker::{BreakerLayer, CircuitBreaker},
//!     catch::CatchLayer,
//!     maintenance::{MaintenanceLayer, MaintenanceSwitch},
//!     shed::ShedLayer,
//! };
//!
//! // A call to a dependency that can fail; its error becomes a clean 500 (CatchLayer), and a
//! // breaker stops calling it while it keeps failing (503 + Retry-After).
//! let dependency = CatchLayer::new().layer(service_fn(|_req: axum::extract::Request| async {
//!     Err::<axum::response::Response, _>(std::io::Error::other("db password rejected"))
//! }));
//! let breaker = CircuitBreaker::builder().open_duration(Duration::from_secs(5)).build()?;
//!
//! // Flip this from an admin endpoint, a signal handler or a sentinel file.
//! let maintenance = MaintenanceSwitch::new();
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .route("/report", get(|| async { "expensive" }))
//!     // The routes above: at most 32 run at once, 16 more may wait 100 ms, the rest get 503.
//!     .route_layer(ShedLayer::builder().limit(32).max_queue(16).max_wait(Duration::from_millis(100)).build()?)
//!     .route_service("/dependency", BreakerLayer::new(breaker).layer(dependency))
//!     .route("/healthz", get(|| async { "ok" }))
//!     // 503 + Retry-After for everything but /healthz while the switch is on.
//!     .layer(MaintenanceLayer::new(maintenance.clone()).bypass_path("/healthz"))
//!     // Outermost: any panic below becomes a 500 with an error id, the panic only in the log.
//!     .layer(CatchLayer::new());
//! # let _ = app;
//! // axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! # #[cfg(not(all(feature = "catch", feature = "maintenance", feature = "shed", feature = "breaker")))]
//! # fn main() {}
//! ```
//!
//! On the client side, [`retry::RetryLayer`] wraps hyper-util's `Client` and waits what a
//! server's `Retry-After` says (capped), within a shared retry budget.
//!
//! # Shared vocabulary
//!
//! - [`RetryAfter`]: the `Retry-After` value, parsed from and formatted to both RFC 9110 forms.
//! - `refuse::RefusalPolicy` (with any server feature): how every layer refuses, one policy for
//!   `Retry-After` bounds, jitter and form, body formats, and a hook for your own responses.
//! - [`ErrorResponse`]: the one generated error response every layer uses; its body is plain text,
//!   RFC 9457 `application/problem+json` or HTML, chosen by the request's `Accept`.
//! - [`ResponseBody`]: the inner service's body or a generated one, without boxing (the body of
//!   [`catch`], which must wrap the inner body to catch its panics; the 503 layers keep the
//!   inner body type and need only `ResBody: From<Bytes>`).
//! - [`Reason`]: why a response was generated, stored in the response's extensions so outer layers
//!   (metrics, logging) can tell a maintenance 503 from a shed 503 without parsing bodies.
//!
//! # Cargo features
//!
//! | feature | default | what it enables |
//! |---|---|---|
//! | `catch` | yes | [`catch::CatchLayer`]: errors and panics to 500, known tower errors to 503 |
//! | `maintenance` | yes | [`maintenance::MaintenanceLayer`]: 503 + `Retry-After` while a switch is on, scheduled windows, bypass rules, sentinel file |
//! | `axum` | no | [`maintenance::admin`] router (with `maintenance`); client-IP rules read axum's `ConnectInfo` |
//! | `rate-limit` | yes | [`rate_limit::RateLimitLayer`]: per-client quotas (GCRA, in memory), 429 + `Retry-After` + the IETF `RateLimit-Policy` / `RateLimit` fields |
//! | `redis` | no | with `rate-limit`: [`rate_limit::RedisStore`], one quota for a fleet in Redis |
//! | `shed` | yes | [`shed::ShedLayer`]: concurrency limit (fixed, AIMD, gradient), bounded queue, 503 + `Retry-After` |
//! | `breaker` | yes | [`breaker`]: circuit breakers (lock-free state machine, sliding windows), [`breaker::BreakerLayer`] answering 503 + `Retry-After` while open, [`breaker::KeyedBreakers`] |
//! | `retry` | yes | [`retry::RetryLayer`]: client retries honouring `Retry-After`, budget, idempotency, client breakers (enables `breaker`) |
//! | `reqwest-middleware` | no | [`retry`]'s policy as a `reqwest_middleware::Middleware` (enables `reqwest`) |
//! | `lifecycle` | yes | [`lifecycle`]: `/readyz` and `/livez`, [`lifecycle::DrainLayer`] (503 + `Retry-After` + `Connection: close` once the listener closes), the SIGTERM drain |
//! | `lifecycle-serve` | no | [`lifecycle::Lifecycle::serve`]: a small serve loop (hyper-util) that drains without closing idle keep-alive connections |
//! | `hyper-util` | no | with `catch`: hyper-util's legacy client errors become 502 / 504 ([upstream errors](catch#upstream-errors-502-and-504)) |
//! | `reqwest` | no | with `catch`: reqwest's errors become 502 / 504 ([upstream errors](catch#upstream-errors-502-and-504)) |
//! | `redis` | no | with `maintenance`: [`maintenance::redis`], one switch for a fleet: every instance follows one Redis key (pub/sub and a periodic re-read; the last state kept while Redis is down), and the admin router writes there |
#![cfg_attr(docsrs, feature(doc_cfg))]
// The docs link to the items of optional features. With every feature on (docs.rs, and CI's
// `cargo doc --all-features` with `-D warnings`) each link is checked; a build with fewer features
// leaves those items out and must not warn about links to them.
#![cfg_attr(
    not(all(
        feature = "axum",
        feature = "hyper-util",
        feature = "lifecycle-serve",
        feature = "metrics",
        feature = "redis",
        feature = "reqwest",
        feature = "reqwest-middleware"
    )),
    allow(rustdoc::broken_intra_doc_links)
)]

/// `get_ref`, `get_mut` and `into_inner` for a middleware whose inner service is `self.inner`.
/// Defined before the modules, so they see it by textual scope.
#[cfg(any(
    feature = "catch",
    feature = "maintenance",
    feature = "shed",
    feature = "breaker",
    feature = "lifecycle",
    feature = "rate-limit"
))]
macro_rules! inner_service_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// The inner service, consuming the middleware.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}
mod body;
#[cfg(any(feature = "maintenance", feature = "rate-limit"))]
mod client_ip;
pub mod error;
#[cfg(any(feature = "catch", feature = "retry"))]
mod error_chain;
mod html;
#[cfg(any(feature = "catch", feature = "lifecycle"))]
mod panic_payload;
#[cfg(any(feature = "maintenance", feature = "rate-limit"))]
mod path_prefix;
#[cfg(any(
    feature = "catch",
    feature = "maintenance",
    feature = "shed",
    feature = "breaker",
    feature = "lifecycle",
    feature = "rate-limit"
))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(
        feature = "catch",
        feature = "maintenance",
        feature = "shed",
        feature = "breaker",
        feature = "lifecycle",
        feature = "rate-limit"
    )))
)]
pub mod refuse;
mod response;
mod retry_after;
#[allow(dead_code)] // Parts are used only by some features.
mod telemetry;

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;

#[cfg(feature = "catch")]
#[cfg_attr(docsrs, doc(cfg(feature = "catch")))]
pub mod catch;

#[cfg(feature = "breaker")]
#[cfg_attr(docsrs, doc(cfg(feature = "breaker")))]
pub mod breaker;

#[cfg(feature = "lifecycle")]
#[cfg_attr(docsrs, doc(cfg(feature = "lifecycle")))]
pub mod lifecycle;

#[cfg(feature = "maintenance")]
#[cfg_attr(docsrs, doc(cfg(feature = "maintenance")))]
pub mod maintenance;

#[cfg(feature = "rate-limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
pub mod rate_limit;

#[cfg(feature = "retry")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
pub mod retry;

#[cfg(feature = "shed")]
#[cfg_attr(docsrs, doc(cfg(feature = "shed")))]
pub mod shed;

#[cfg(fuzzing)]
#[doc(hidden)]
pub mod __fuzz;

pub use body::ResponseBody;
pub use response::{ErrorId, ErrorResponse, Format, Reason, ERROR_ID_HEADER};
pub use retry_after::RetryAfter;

/// Alias for a type-erased error type, as used by tower and hyper.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
