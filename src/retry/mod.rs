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
//!     .budget(Arc::new(RetryBudget::new(0.1, 10)?))
//!     .on_attempt(|event| println!("attempt {}: {:?}", event.attempt, event.decision))
//!     .build();
//! let layer = RetryLayer::new(policy).attempt_timeout(Duration::from_secs(2));
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```
//!
//! The policy also works alone with `tower::retry::RetryLayer`, on a service whose requests are
//! `Request<ReplayBody<B>>` and whose error type is [`BoxError`](crate::BoxError).

mod backoff;
mod body;
mod budget;
pub mod error;
mod layer;
mod origin;
mod policy;
#[cfg(feature = "reqwest-middleware")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest-middleware")))]
mod reqwest;

pub use backoff::{Backoff, Jitter};
pub use body::ReplayBody;
pub use budget::RetryBudget;
pub use error::Failure;
pub use layer::{Attempt, AttemptFuture, ResponseFuture, Retry, RetryClient, RetryLayer};
pub use origin::Origin;
pub use policy::{
    AttemptEvent, Decision, GiveUpReason, RetryPolicy, RetryPolicyBuilder, RetryReason,
    IDEMPOTENCY_KEY,
};
#[cfg(feature = "reqwest-middleware")]
pub use reqwest::RetryMiddleware;
