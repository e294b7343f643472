use std::{fmt, sync::Arc, time::Duration};

use tower_layer::Layer;

use super::{
    queue::{Config, Shared},
    AllNormal, Limit, Shed,
};

/// Layer that limits concurrency, queues a bounded number of requests for a bounded time, and
/// answers the rest with **503 + `Retry-After`**. See the [module docs](super).
///
/// Every service made by one layer (and by its clones) shares one limit, one queue and one set
/// of statistics: put the layer where all the requests you want to limit pass. Each builder
/// method returns a layer with fresh state, so configure first, then build services.
#[derive(Clone)]
#[must_use]
pub struct ShedLayer<P = AllNormal> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) priority: P,
}

impl<P> fmt::Debug for ShedLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShedLayer")
            .field("config", &self.shared.config)
            .field("limit", &self.shared.limit())
            .finish_non_exhaustive()
    }
}

impl ShedLayer<AllNormal> {
    /// A layer with the default settings:
    ///
    /// - a [fixed](super::Fixed) limit of **100** concurrent requests;
    /// - a queue of **100** places, of which low-priority requests may use **half**;
    /// - a maximum wait of **200 ms** in the queue: a queue absorbs bursts shorter than a
    ///   request; waiting much longer only adds latency the client may no longer wait for;
    /// - `Retry-After` between **1 s** and **30 s**, plus up to **1 s** of jitter so that shed
    ///   clients do not come back in one herd;
    /// - HTML bodies for clients whose `Accept` prefers `text/html`;
    /// - every request [`Priority::Normal`](super::Priority::Normal).
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared::new(Config {
                limit: Limit::from(100),
                max_queue: 100,
                low_priority_queue: 50,
                max_wait: Duration::from_millis(200),
                min_retry_after: Duration::from_secs(1),
                max_retry_after: Duration::from_secs(30),
                retry_after_jitter: Duration::from_secs(1),
                html: true,
            })),
            priority: AllNormal,
        }
    }
}

impl Default for ShedLayer<AllNormal> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P> ShedLayer<P> {
    fn with_config(mut self, f: impl FnOnce(&mut Config)) -> Self {
        let mut config = self.shared.config;
        f(&mut config);
        config.low_priority_queue = config.low_priority_queue.min(config.max_queue);
        config.max_retry_after = config.max_retry_after.max(config.min_retry_after);
        self.shared = Arc::new(Shared::new(config));
        self
    }

    /// The concurrency limit: a number (fixed), a [`Fixed`](super::Fixed), an
    /// [`Aimd`](super::Aimd) or a [`Gradient`](super::Gradient). Default: fixed at 100.
    pub fn limit(self, limit: impl Into<Limit>) -> Self {
        let limit = limit.into();
        self.with_config(|c| c.limit = limit)
    }

    /// How many requests may wait for a permit. Default 100. With 0, a request that finds no
    /// free permit is shed at once (as tower's `LoadShed`). Also caps the
    /// [low-priority share](Self::low_priority_queue) and resets it to half of `max`.
    pub fn max_queue(self, max: usize) -> Self {
        self.with_config(|c| {
            c.max_queue = max;
            c.low_priority_queue = max / 2;
        })
    }

    /// How many of the queue's places [`Priority::Low`](super::Priority::Low) requests may use
    /// (at most [`max_queue`](Self::max_queue)). Default: half of the queue. With 0,
    /// low-priority requests are shed as soon as no permit is free.
    pub fn low_priority_queue(self, places: usize) -> Self {
        self.with_config(|c| c.low_priority_queue = places)
    }

    /// How long a request may wait in the queue before it is shed. Default 200 ms. With zero,
    /// nothing queues.
    pub fn max_wait(self, max_wait: Duration) -> Self {
        self.with_config(|c| c.max_wait = max_wait)
    }

    /// Bounds of the `Retry-After` estimate (before jitter). Default 1 s to 30 s. On the wire
    /// it is whole seconds, rounded up, so a minimum below 1 s still sends `1`.
    pub fn retry_after_bounds(self, min: Duration, max: Duration) -> Self {
        self.with_config(|c| {
            c.min_retry_after = min;
            c.max_retry_after = max;
        })
    }

    /// The largest random extra added to `Retry-After`, in whole seconds (what the header can
    /// carry), after the bounds are applied: the result may exceed the maximum bound by at most
    /// this much, so clients spread out even when the estimate sits at its cap. Default 1 s.
    pub fn retry_after_jitter(self, jitter: Duration) -> Self {
        self.with_config(|c| c.retry_after_jitter = jitter)
    }

    /// Whether clients that prefer `text/html` get an HTML page (default `true`); when `false`
    /// they get plain text.
    pub fn html(self, enabled: bool) -> Self {
        self.with_config(|c| c.html = enabled)
    }

    /// Decides each request's [`Priority`](super::Priority): a closure
    /// `Fn(&Request<B>) -> Priority`, an [`ExemptPaths`](super::ExemptPaths), or your own
    /// [`Prioritize`](super::Prioritize).
    pub fn priority<P2>(self, priority: P2) -> ShedLayer<P2> {
        ShedLayer {
            shared: self.shared,
            priority,
        }
    }

    /// A handle on the shared state: the current limit, in-flight and queued counts, and a way
    /// to set the limit at runtime.
    pub fn handle(&self) -> super::ShedHandle {
        super::ShedHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S, P: Clone> Layer<S> for ShedLayer<P> {
    type Service = Shed<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed::from_parts(inner, self.shared.clone(), self.priority.clone())
    }
}
