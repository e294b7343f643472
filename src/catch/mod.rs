//! Turn service errors and panics into clean `500 Internal Server Error` responses.
//!
//! [`CatchLayer`] wraps any `Service<http::Request<_>>` and makes its error type
//! [`Infallible`](std::convert::Infallible), so it stands where axum's `HandleErrorLayer` stands,
//! and it also catches panics, where tower-http's `CatchPanicLayer` stands.
//!
//! | what happens inside | what the client gets |
//! |---|---|
//! | the service returns `Err(e)` | **500**; `e` and its `source()` chain are logged at error level |
//! | a panic in `poll_ready`, `call`, or while polling the response future | **500**; the panic message is logged |
//! | `e` (or an error in its chain) is tower's `load_shed::error::Overloaded` | **503** with `Retry-After` (the [refusal policy](CatchLayer::refusal)'s minimum: 1 s, plus jitter, by default) |
//! | ... is tower's `timeout::error::Elapsed` or tokio's `time::error::Elapsed` | **503** with `Retry-After`, as Go's `http.TimeoutHandler` answers 503 (Go sends no `Retry-After`; a 503 should) |
//! | ... is a hyper-util or reqwest client's error (features `hyper-util`, `reqwest`): the upstream refused the connection, cut it short, or did not answer in time | **502** Bad Gateway, or **504** Gateway Timeout for a timeout; see [Upstream errors](#upstream-errors-502-and-504) |
//! | ... is matched by one of your [`on_error`](CatchLayer::on_error) rules (or your [classifier](CatchLayer::classify)), which come first | the status you chose, e.g. 502 or 504 |
//! | a panic while the response body streams (status already sent) | the body ends with a [`BodyPanicked`](error::BodyPanicked) error, logged; the connection task does not unwind |
//!
//! Every generated response is made by the layer's [`RefusalPolicy`](crate::refuse::RefusalPolicy)
//! (by default an [`ErrorResponse`](crate::ErrorResponse), or your own
//! [renderer](crate::refuse::RefusalPolicyBuilder::render)): `Cache-Control: no-store`, an
//! `x-error-id` header whose id is also in the body and in the log line, and problem+json, HTML
//! or plain text as the client's `Accept` asks. **Nothing of the error is sent**: not its message, not its type,
//! not a backtrace. The log line carries the method and
//! the path (never the query string, which often holds tokens).
//!
//! Unlike tower-http's `CatchPanicLayer`, the inner response body type is kept (wrapped, not
//! boxed), so the success path allocates nothing.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_5xx::catch::CatchLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(CatchLayer::new())
//!     .service(service_fn(|req: Request<Full<Bytes>>| async move {
//!         if req.uri().path() == "/boom" {
//!             return Err(std::io::Error::other("connection to db-7 refused"));
//!         }
//!         Ok(Response::new(Full::new(Bytes::from("ok"))))
//!     }));
//!
//! // The layer's error type is Infallible: every request gets a response.
//! let res = svc.clone().oneshot(Request::get("/boom").body(Full::default()).unwrap()).await;
//! let res: Response<_> = match res { Ok(res) => res, Err(never) => match never {} };
//! assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
//! assert_eq!(res.headers()["cache-control"], "no-store");
//! assert!(res.headers().contains_key("x-error-id"));
//! # let _: Option<Infallible> = None;
//! # }
//! ```
//!
//! # Upstream errors: 502 and 504
//!
//! A server that called an upstream and got no valid answer says **502 Bad Gateway** (RFC 9110
//! §15.6.3), one whose upstream did not answer in time **504 Gateway Timeout** (§15.6.5). With
//! the feature of your HTTP client, these errors anywhere in the chain are recognised:
//!
//! | feature | error | status |
//! |---|---|---|
//! | `hyper-util` | `client::legacy::Error` with `is_connect()` and an `io::ErrorKind::TimedOut` below it (the connector's connect timeout) | 504 |
//! | `hyper-util` | `client::legacy::Error` with `is_connect()` otherwise: refused, DNS failure, unreachable | 502 |
//! | `hyper-util` | `hyper::Error` with `is_incomplete_message()`, `is_closed()`, `is_canceled()` or `is_parse()`, or a body error over an `UnexpectedEof`: the connection ended before the response did, or the response was invalid | 502 |
//! | `reqwest` | `reqwest::Error` with `is_timeout()` (also a connect timeout) | 504 |
//! | `reqwest` | `reqwest::Error` with `is_connect()`, `is_request()`, `is_body()` or `is_decode()` | 502 |
//!
//! `reqwest_middleware::Error` hides the reqwest error from the chain; with feature
//! `reqwest-middleware` it is looked into. Other errors of these clients (a request the client
//! refused to build or send: a bug of the caller) stay 500.
//!
//! hyper reports a body cut short the same way whoever sent it: a service that returns the read
//! error of its own *request* body (the client hung up mid-upload) answers 502 as well, to a
//! client that is gone; only the log line says so.
//!
//! A timeout that tower's `Timeout` or tokio's `timeout` reports around a call stays a 503: the
//! layer cannot tell what was waited for. On a route that only waits for its upstream, one rule
//! makes it a 504:
//!
//! ```
//! use tower_5xx::catch::{CatchLayer, Classification};
//!
//! let proxy_route = CatchLayer::new()
//!     .on_error::<tokio::time::error::Elapsed>(|_| Classification::gateway_timeout());
//! # let _ = proxy_route;
//! ```
//!
//! With axum, put it on the whole router with `Router::layer` (panics in any handler become 500)
//! or on one fallible service with `route_service`; see the [crate example](crate).

mod body;
mod classify;
pub mod error;
mod future;
mod layer;
mod service;
mod upstream;

pub use body::CatchBody;
pub use classify::{Classification, Classify, DefaultClassifier, OnError};
pub use future::ResponseFuture;
pub use layer::CatchLayer;
pub use service::Catch;
