//! Client retries that honour `Retry-After`, never storm, and never lose a request.
//!
//! [`RetryLayer`] wraps a client (hyper-util's `Client`, or any `Service<http::Request<_>>`)
//! and retries with a [`RetryPolicy`]:
//!
//! | concern | what the policy does |
//! |---|---|
//! | what is retried | connection errors before a response; 500, 502, 503, 504 and 429 (configurable); never 501 or another 4xx |
//! | backoff | exponential, capped, with [`Jitter`] none / full / equal / decorrelated; jitter never pushes a delay past the cap |
//! | `Retry-After` | delta-seconds or any HTTP-date form (read against the response's `Date`), a floor under the backoff: no retry before that instant; above the cap (default 5 min) or past the deadline, the response is returned at once |
//! | load | a shared, lock-free [`RetryBudget`]: at most `floor + ratio * requests` retries |
//! | safety | only idempotent methods, or `Idempotency-Key`, or an explicit opt-in, or an error proving the server never saw the request |
//! | bodies | buffered up to a cap and re-sent byte for byte; a larger body is sent once, streamed, not lost |
//! | time | a per-attempt timeout and an overall deadline |
//! | endpoints | optionally a client circuit breaker per [`Origin`] (scheme, host, port), opened for the server's `Retry-After`, failing fast with [`CircuitOpen`](crate::breaker::error::CircuitOpen) |
//!
//! Every setting is checked when the policy is built: [`RetryPolicyBuilder::build`],
//! [`Backoff::new`] and [`RetryBudget::new`] return an
//! [`InvalidConfig`](crate::error::InvalidConfig) that names the invalid setting, instead of
//! clamping or ignoring it. [`RetryPolicy::default`], [`Backoff::default`] and
//! [`RetryBudget::default`] are the infallible defaults.
//!
//! # Example
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use tower_5xx::retry::{Backoff, Jitter, RetryBudget, RetryLayer, RetryPolicy};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = RetryPolicy::builder()
//!     .max_attempts(4)
//!     .backoff(Backoff::new(Duration::from_millis(50), 2.0, Duration::from_secs(2))?.jitter(Jitter::Full))
//!     .retry_after_cap(Duration::from_secs(30))
//!     .attempt_timeout(Duration::from_secs(2))
//!     .budget(Arc::new(RetryBudget::new(0.1, 10)?))
//!     .on_attempt(|event| println!("attempt {}: {:?}", event.attempt, event.decision))
//!     .build()?;
//! let layer = RetryLayer::new(policy);
//! # let _ = layer;
//!
//! // An invalid setting is an error, not a clamp.
//! let err = RetryPolicy::builder().max_attempts(0).build().unwrap_err();
//! assert_eq!(err.setting(), "max_attempts");
//! # Ok(())
//! # }
//! ```
//!
//! The client under the layer takes [`ReplayBody`] request bodies (hyper-util:
//! `build_http::<ReplayBody<Full<Bytes>>>()`), and the layered service takes the plain ones; a
//! client built for another body type is reported by the compiler through [`RetryClient`].
//!
//! # What came back
//!
//! A response is the server's answer: one still 503 after the retries (or with a `Retry-After`
//! over the cap) comes back as `Ok(response)`, its `Retry-After` included. An error reads as a
//! [`Failure`], so the three cases a caller must tell apart need no guesswork:
//!
//! ```
//! use http::{header::RETRY_AFTER, Response, StatusCode};
//! use tower_5xx::{retry::Failure, BoxError};
//!
//! fn explain<B>(result: Result<Response<B>, BoxError>) -> String {
//!     match result {
//!         Ok(res) if res.status() == StatusCode::SERVICE_UNAVAILABLE => {
//!             let retry_after = res.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok());
//!             format!("still unavailable; Retry-After: {}", retry_after.unwrap_or("none"))
//!         }
//!         Ok(res) => format!("answered {}", res.status()),
//!         Err(error) => match Failure::from(error) {
//!             Failure::CircuitOpen(open) => {
//!                 format!("not sent: breaker open for {:?}", open.retry_after())
//!             }
//!             Failure::Transport(e) => format!("transport error: {e}"),
//!             other => format!("gave up: {other}"), // deadline, attempt timeout
//!         },
//!     }
//! }
//!
//! let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
//! let result: Result<Response<()>, BoxError> = Err(Box::new(refused));
//! assert_eq!(explain(result), "transport error: connection refused");
//! let mut res = Response::new(());
//! *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
//! res.headers_mut().insert(RETRY_AFTER, "120".parse().unwrap());
//! assert_eq!(explain(Ok(res)), "still unavailable; Retry-After: 120");
//! ```
//!
//! The crate's README has the whole client: built, sent to a server, each outcome shown.
//!
//! The policy also works alone with `tower::retry::RetryLayer`, on a service whose requests are
//! `Request<ReplayBody<B>>` and whose error type is [`BoxError`](crate::BoxError).

mod backoff;
mod body;
mod budget;
pub mod error;
mod layer;
#[cfg(all(test, tower_5xx_loom))]
mod loom_model;
mod origin;
mod policy;

/// The atomics of the retry budget: loom's while model-checking them
/// (`RUSTFLAGS="--cfg tower_5xx_loom" cargo test --lib retry::loom_model`), std's otherwise.
mod sync {
    #[cfg(all(test, tower_5xx_loom))]
    pub(crate) use loom::sync::atomic::{AtomicI64, AtomicU64, Ordering};
    #[cfg(not(all(test, tower_5xx_loom)))]
    pub(crate) use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
}
#[cfg(feature = "reqwest-middleware")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest-middleware")))]
mod reqwest;

pub use backoff::{Backoff, Jitter};
pub use body::ReplayBody;
pub use budget::RetryBudget;
pub use error::Failure;
pub use layer::{Attempt, AttemptFuture, ResponseFuture, Retry, RetryClient, RetryLayer};
pub use origin::Origin;
#[cfg(fuzzing)]
pub(crate) use policy::{fuzz_retry_delay, server_wait};
pub use policy::{
    AttemptEvent, Decision, GiveUpReason, RetryPolicy, RetryPolicyBuilder, RetryReason,
    IDEMPOTENCY_KEY,
};
#[cfg(feature = "reqwest-middleware")]
pub use reqwest::RetryMiddleware;
