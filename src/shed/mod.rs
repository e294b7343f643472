//! Shed overload with **503 Service Unavailable + `Retry-After`**: a concurrency limit (fixed or
//! adaptive), a bounded wait queue, and priorities.
//!
//! [`ShedLayer`] lets at most *limit* requests run in the inner service at once. A request that
//! finds no free permit waits in a queue of bounded length for a bounded time; a request that
//! finds the queue full, or waits past the maximum wait, gets a 503 at once and **the inner
//! service is never called for it**.
//!
//! | situation | what happens |
//! |---|---|
//! | a permit is free and nobody is queued | the request runs (two atomic loads and one compare-and-swap; no lock, no allocation) |
//! | no free permit, or others already waiting, and room in the queue | the request waits, first come first served, up to [`max_wait`](ShedBuilder::max_wait): a permit released while requests wait is handed to the oldest of them, never to a new arrival |
//! | the same, but the queue has not been empty for 100 ms, or a waiter timed out in the last 100 ms (a standing queue: sustained overload) | it waits at most [`standing_queue_wait`](ShedBuilder::standing_queue_wait) (default half of `max_wait`): the permits stay busy, the accepted requests wait less (CoDel) |
//! | the queue is full, or the wait ran out | **503** with `Retry-After`, `Cache-Control: no-store`, an error id, [`Reason::Shed`](crate::Reason::Shed) in the extensions |
//! | the request is [`Priority::Exempt`] (health checks, admin) | runs at once, never shed, not counted |
//! | the request is [`Priority::Low`] | may only use part of the queue, so it is shed first |
//!
//! **`Retry-After`** is derived from the observed drain rate: the time the backlog needs to
//! clear, `(queued + 1) × recent latency ÷ limit`, which the layer's
//! [`RefusalPolicy`](crate::refuse::RefusalPolicy) keeps within its bounds (by default at least
//! 1 s) and jitters (by default up to 1 s), so the clients it turns away do not come back all
//! at once.
//!
//! **Limits** ([`Limit`]): a [`Fixed`] number, changeable at runtime through the [`ShedHandle`];
//! [`Aimd`] (additive increase, multiplicative decrease on slow or failed requests); or
//! [`Gradient`] (after Netflix's Gradient2 and Envoy's adaptive concurrency: the limit follows
//! the ratio of a baseline latency, measured now and then at a lower limit, to the sampled
//! latency). Adaptive limits have a floor and a ceiling, and their current value is
//! observable through [`ShedHandle::limit`].
//!
//! **Cancellation and panics**: a permit is given back (or handed to the oldest waiter) when
//! the response future is dropped, on every path (success, error, a panic in `call` or in the
//! response future, cancellation); servers drop a future as soon as it is ready. A client that disconnects while queued frees its place in the queue as soon as the
//! server drops its request; one dropped just after a permit was handed to it passes the permit
//! on to the next waiter. A waiter whose deadline passes in the instant a permit reaches it
//! runs rather than waste the permit.
//!
//! # The decision is made in `call`, not `poll_ready`
//!
//! tower's `ConcurrencyLimit` and `LoadShed` work through `poll_ready`. axum routes are always
//! ready (see axum's docs, "Routing to services/middleware and backpressure"), so backpressure
//! through readiness only works around the whole app. `Shed` decides in `call`, so it works on a
//! single route (`route_layer`, `route_service`) as well as on a whole router or a hyper
//! service. Its `poll_ready` only waits for the inner service. A queued request carries a clone
//! of the (ready) inner service, so the inner service must be `Clone`, as axum's services are.
//!
//! The error type stays `S::Error`: a shed request is a response, not an `Err` that a server
//! would turn into a closed connection.
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{service_fn, Layer, Service, ServiceExt};
//! use tower_5xx::shed::{Gradient, Priority, ShedLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = ShedLayer::builder()
//!     .limit(Gradient::new().initial(10).floor(2).ceiling(200))
//!     .max_queue(20)
//!     .max_wait(Duration::from_millis(50))
//!     .build()
//!     .expect("valid settings")
//!     .priority(|req: &Request<Full<Bytes>>| match req.uri().path() {
//!         "/healthz" => Priority::Exempt,
//!         p if p.starts_with("/batch/") => Priority::Low,
//!         _ => Priority::Normal,
//!     });
//! let handle = layer.handle();
//!
//! let mut svc = layer.layer(service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
//! }));
//! let res = svc.ready().await.unwrap().call(Request::new(Full::default())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(handle.limit(), 10);
//! assert_eq!(handle.in_flight(), 0);
//! # }
//! ```
//!
//! With axum, put it on the routes to protect (`Router::route_layer`), with health checks
//! outside it or exempted with [`ExemptPaths`].

mod future;
mod layer;
mod limit;
mod limiter;
#[cfg(all(test, tower_5xx_loom))]
mod loom_model;
mod priority;
mod queue;
mod service;

/// The atomics and the wait-queue mutex of the limiter: loom's while model-checking them
/// (`RUSTFLAGS="--cfg tower_5xx_loom" cargo test --lib shed::loom_model`), std's otherwise.
mod sync {
    #[cfg(all(test, tower_5xx_loom))]
    pub(crate) use loom::sync::{
        atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Mutex, MutexGuard,
    };
    #[cfg(not(all(test, tower_5xx_loom)))]
    pub(crate) use std::sync::{
        atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Mutex, MutexGuard,
    };
}

use std::{fmt, sync::Arc, time::Duration};

pub use future::ResponseFuture;
pub use layer::{ShedBuilder, ShedLayer};
pub use limit::{Aimd, Fixed, Gradient, Limit};
pub use priority::{AllNormal, ExemptPaths, Prioritize, Priority};
pub use service::Shed;

/// A handle on the limiter a [`ShedLayer`] shares among its services: observe the limit, the
/// load and the shed count; set the limit at runtime. Cheap to clone.
#[derive(Clone)]
pub struct ShedHandle {
    shared: Arc<limiter::Shared>,
}

impl ShedHandle {
    /// The current concurrency limit (for an adaptive limit, its latest value).
    pub fn limit(&self) -> usize {
        self.shared.limit()
    }

    /// Sets the concurrency limit; 0 means 1 (a limit of 0 would refuse everything: that is
    /// maintenance, not shedding), and at most 2^32 - 1 requests run at once, so a higher limit
    /// (`usize::MAX` for "no limit") means that. If it grew, the new permits go to the oldest queued
    /// requests at once; if it shrank, requests already running finish (their permits retire
    /// instead of going to the queue) and new ones wait. An adaptive limit continues from this
    /// value; a [`Gradient`] takes the window in progress for a transition (it ran partly under
    /// the old limit) and waits its `probe_after` calm windows before probing.
    pub fn set_limit(&self, limit: usize) {
        self.shared.set_limit(limit);
    }

    /// How many requests hold a permit now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// How many requests wait in the queue now.
    pub fn queued(&self) -> usize {
        self.shared.queued()
    }

    /// How many requests were shed (answered 503) so far.
    pub fn shed_count(&self) -> u64 {
        self.shared.shed_count()
    }

    /// The recent latency of the inner service (a moving average), if any request finished.
    pub fn latency(&self) -> Option<Duration> {
        self.shared.latency()
    }
}

impl fmt::Debug for ShedHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShedHandle")
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .field("shed_count", &self.shed_count())
            .finish()
    }
}
