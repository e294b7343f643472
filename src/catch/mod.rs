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
//! | a panic in the response body (`poll_frame`, `size_hint`, `is_end_stream`): the status is already decided | the body ends with a [`BodyPanicked`](error::BodyPanicked) error, logged: a cut response, never a complete-looking one; the connection task does not unwind. See [A panic while the body streams](#a-panic-while-the-body-streams) |
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
//! # A panic while the body streams
//!
//! Once the response has left the service, its status and headers are decided: a panic in its
//! body can no longer become a 500. [`CatchBody`] guards every method of the body: a panic in
//! `poll_frame`, `size_hint` or `is_end_stream` is caught, logged with an error id, and the
//! body ends with a [`BodyPanicked`](error::BodyPanicked) error (after a panic in `size_hint` or
//! `is_end_stream`, which cannot return an error, the body reports "no known length" and "not
//! ended", and its next frame is the error). Before it reports the error, the body answers
//! `Pending` once, so that the server first sends the head and the chunks it holds. The server
//! then cuts the response. What a client gets from a hyper 1 server (hyper-util's, as axum
//! uses), as `tests/catch.rs` checks over 127.0.0.1:
//!
//! | the body panics | HTTP/1.1 with `Content-Length` (the body's size hint is exact) | HTTP/1.1 chunked (no exact size hint) | h2 (current-thread runtime; on a multi-threaded one, see below) |
//! |---|---|---|---|
//! | in `poll_frame`, after some chunks | the head and those chunks, then the connection closes short of the announced length | the head and those chunks, then the connection closes without the last (empty) chunk | `HEADERS` and those `DATA` frames, then `RST_STREAM` with `INTERNAL_ERROR` |
//! | in `poll_frame`, before any chunk | the head, then the connection closes with no body byte | the head, then the connection closes | `HEADERS`, then `RST_STREAM` with `INTERNAL_ERROR` |
//! | in `size_hint` or `is_end_stream` (asked when the head is written) | does not happen: the hint is dropped, so the head announces chunked | the head (`Transfer-Encoding: chunked`), then the connection closes | `HEADERS` without `content-length`, then `RST_STREAM` with `INTERNAL_ERROR` |
//!
//! So a client can always tell: a hyper client returns the status, then an error while reading
//! the body (HTTP/1.1: an incomplete message; h2: the stream reset); curl prints what it got
//! and exits with "transfer closed with N bytes remaining to read" (`Content-Length`),
//! "transfer closed with outstanding read data remaining" (chunked) or, over h2, "HTTP/2
//! stream 1 was not closed cleanly: INTERNAL_ERROR (err 2)". An HTTP/1.1 connection is closed
//! (as any response cut short must be); over h2 only the stream is reset and the connection
//! serves on.
//!
//! Over HTTP/1.1 the head always reaches the client: hyper writes it from the task that polls
//! the body, and flushes when the body is pending, on any runtime. Over h2 the `HEADERS` and
//! `DATA` frames are written by the connection's task, not the stream's, and h2 drops the
//! frames of a reset stream that it has not written yet. The body's one `Pending` lets the
//! connection's task go first, and on a current-thread runtime it always does: the client gets
//! the head as in the table. On a multi-threaded runtime that task may not have run by then
//! (busy on another worker, or its thread not scheduled): the client then gets only
//! `RST_STREAM` with `INTERNAL_ERROR`, no status, and a hyper client fails the request itself
//! with that stream error (curl: "HTTP/2 stream 1 was not closed cleanly: INTERNAL_ERROR (err
//! 2)", nothing on stdout). On a loaded two-core machine that was the usual outcome, and a
//! 5 ms wait before the reset did not make the head arrive reliably, so the body does not wait
//! longer. Either way, no client takes a cut response for a complete one.
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
