//! Circuit breakers: stop calling a failing dependency, answer `503` + `Retry-After` meanwhile.
//!
//! [`BreakerLayer`] guards a service (typically one that calls a dependency: a database, an
//! upstream API) with a [`CircuitBreaker`]. While the breaker is closed, calls flow and their
//! outcomes are recorded; when the failure rate or the slow-call rate (opt-in: set
//! [`slow_call_duration`](BreakerBuilder::slow_call_duration)) of the sliding window reaches
//! its threshold, the breaker opens, and requests are answered **503 Service
//! Unavailable** with `Retry-After` = the remaining open time (jittered) *without calling the
//! service*. After the open duration, a fixed number of probe calls is let through (half-open);
//! their outcomes decide between closed and open again (for a possibly longer time).
//!
//! | state | calls | how it is left |
//! |---|---|---|
//! | closed | flow; outcomes go to the sliding window | failure or slow-call rate ≥ threshold, with at least `minimum_calls` in the window → open |
//! | open | refused: 503 + `Retry-After` (layer) or [`CircuitOpen`](error::CircuitOpen) (permit API) | the open duration passes → half-open |
//! | half-open | `half_open_probes` calls flow, the rest are refused | all probes done: rates under thresholds → closed, else → open |
//! | forced open / disabled | all refused / all flow, nothing recorded | [`CircuitBreaker::reset`] |
//!
//! The hot path takes no lock: asking for a permit in the closed state is one atomic load, and
//! recording an outcome is a `fetch_add` on the current bucket of a ring of time (or call-count)
//! buckets plus a read of the ring; old buckets really fall out of the window as time (or calls)
//! move on. Every transition is a single compare-and-swap on one state word, so it happens
//! exactly once, and its end instant is part of that word: it gives `Retry-After`.
//!
//! Every transition is logged through `tracing` (warn when opening, info otherwise) and passed
//! to an optional [callback](BreakerBuilder::on_transition); [`CircuitBreaker::state`] and
//! [`CircuitBreaker::window_counts`] read the current state and counts.
//!
//! For clients, [`KeyedBreakers`] keeps one breaker per key (say, per upstream endpoint) with a
//! bounded number of keys, and the permit API works outside a tower stack:
//! [`CircuitBreaker::try_acquire`], [`Permit::success`] / [`Permit::failure`] /
//! [`Permit::failure_with_retry_after`], and [`CircuitBreaker::trip_for`] to open for the
//! `Retry-After` a server sent.
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_5xx::breaker::{BreakerLayer, CircuitBreaker, SlidingWindow, State};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let breaker = CircuitBreaker::builder()
//!     .failure_rate_threshold(0.5)
//!     .minimum_calls(5)
//!     .sliding_window(SlidingWindow::Time(Duration::from_secs(10)))
//!     .open_duration(Duration::from_secs(30))
//!     .build()
//!     .unwrap();
//!
//! // A dependency that is down: every call answers 502.
//! let svc = ServiceBuilder::new()
//!     .layer(BreakerLayer::new(breaker.clone()))
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         let mut res = Response::new(Full::new(Bytes::from("upstream failed")));
//!         *res.status_mut() = StatusCode::BAD_GATEWAY;
//!         Ok::<_, Infallible>(res)
//!     }));
//!
//! for _ in 0..5 {
//!     let res = svc.clone().oneshot(Request::new(Full::default())).await.unwrap();
//!     assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
//! }
//! assert_eq!(breaker.state(), State::Open);
//!
//! // Now the service is not called; the client is told when to come back.
//! let res = svc.oneshot(Request::new(Full::default())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
//! // The remaining open time (30 s, rounded up to whole seconds; the breaker keeps time in
//! // milliseconds) plus up to 1 s of jitter.
//! let retry_after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
//! assert!((30..=32).contains(&retry_after), "{retry_after}");
//! # }
//! ```

mod classify;
mod clock;
mod config;
pub mod error;
mod future;
mod keyed;
mod layer;
#[cfg(all(test, tower_5xx_loom))]
mod loom_model;
mod service;
mod state;
mod window;

/// The atomics of the breaker's lock-free state and window: loom's while model-checking them
/// (`RUSTFLAGS="--cfg tower_5xx_loom" cargo test --lib breaker::loom_model`), std's otherwise.
mod sync {
    #[cfg(all(test, tower_5xx_loom))]
    pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
    #[cfg(all(test, tower_5xx_loom))]
    pub(crate) use loom::sync::Mutex;
    #[cfg(not(all(test, tower_5xx_loom)))]
    pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
    #[cfg(not(all(test, tower_5xx_loom)))]
    pub(crate) use std::sync::Mutex;
}

pub use classify::{status_outcome, DefaultOutcomeClassifier, FailureIf, OutcomeClassifier};
pub use clock::{Clock, ManualClock, TokioClock};
pub use config::{
    BreakerBuilder, SlidingWindow, TransitionCallback, MAX_BUCKETS, MAX_HALF_OPEN_PROBES,
    MIN_BUCKETS,
};
pub use future::ResponseFuture;
pub use keyed::KeyedBreakers;
pub use layer::BreakerLayer;
pub use service::Breaker;
pub use state::{CircuitBreaker, Outcome, Permit, State, Transition};
pub use window::WindowCounts;
