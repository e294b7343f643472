use std::{
    fmt,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
    },
    time::Duration,
};

use tower_layer::Layer;

use super::{
    queue::{Config, Shared},
    AllNormal, Limit, Shed,
};

/// Layer that limits concurrency, queues a bounded number of requests for a bounded time, and
/// answers the rest with **503 + `Retry-After`**. See the [module docs](super).
///
/// Every service made by one layer (and by its clones) shares one limit, one queue and one set
/// of statistics: put the layer where all the requests you want to limit pass.
///
/// The builder methods change the layer in place, so a [`handle`](Self::handle) taken before
/// them observes the configured layer. Two exceptions keep this from surprising anyone:
///
/// - on a layer that was cloned, a builder method returns a separate layer with its own state
///   (the clones and the handles taken so far keep the old one): clone-then-configure gives
///   independent limiters, as with any builder;
/// - once the layer (or a clone) has made a service, the settings are fixed: a builder method
///   **panics**, since the services already made would silently not see the change. Start
///   from [`ShedLayer::new`] for another limiter.
#[derive(Clone)]
#[must_use]
pub struct ShedLayer<P = AllNormal> {
    pub(crate) cell: LayerRef,
    pub(crate) priority: P,
}

/// What a layer, its clones and its handles share: the settings until the first service is
/// made, then the live state made from them.
pub(crate) struct Cell {
    config: Mutex<Config>,
    /// Set once, by the first `layer` call, while `config` is locked.
    shared: OnceLock<Arc<Shared>>,
    /// How many `ShedLayer` values point here (handles do not count).
    layers: AtomicUsize,
}

impl Cell {
    fn new(config: Config) -> Self {
        Self {
            config: Mutex::new(config),
            shared: OnceLock::new(),
            layers: AtomicUsize::new(0),
        }
    }

    /// A cell around state that already exists (for handles taken from a service).
    pub(crate) fn built(shared: Arc<Shared>) -> Self {
        let cell = Self::new(shared.config);
        let _ = cell.shared.set(shared);
        cell
    }

    pub(crate) fn config(&self) -> MutexGuard<'_, Config> {
        self.config.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live state, if a service was made.
    #[inline]
    pub(crate) fn get(&self) -> Option<&Arc<Shared>> {
        self.shared.get()
    }

    /// The live state, made from the settings on first use.
    pub(crate) fn shared(&self) -> Arc<Shared> {
        if let Some(shared) = self.shared.get() {
            return shared.clone();
        }
        // Made under the settings' lock, so a builder method either comes before (and is
        // used) or sees the state and panics.
        let config = self.config();
        self.shared
            .get_or_init(|| Arc::new(Shared::new(*config)))
            .clone()
    }
}

impl fmt::Debug for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cell")
            .field("config", &*self.config())
            .field("built", &self.shared.get().is_some())
            .finish_non_exhaustive()
    }
}

/// A layer's reference to its cell; counts the layers sharing the cell.
#[derive(Debug)]
pub(crate) struct LayerRef(pub(crate) Arc<Cell>);

impl LayerRef {
    fn new(cell: Cell) -> Self {
        cell.layers.fetch_add(1, Ordering::Relaxed);
        Self(Arc::new(cell))
    }
}

impl Clone for LayerRef {
    fn clone(&self) -> Self {
        self.0.layers.fetch_add(1, Ordering::Relaxed);
        Self(self.0.clone())
    }
}

impl Drop for LayerRef {
    fn drop(&mut self) {
        self.0.layers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<P> fmt::Debug for ShedLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cell = &self.cell.0;
        let config = *cell.config();
        let limit = match cell.get() {
            Some(shared) => shared.limit(),
            None => config.start_limit(),
        };
        f.debug_struct("ShedLayer")
            .field("config", &config)
            .field("limit", &limit)
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
            cell: LayerRef::new(Cell::new(Config {
                limit: Limit::from(100),
                max_queue: 100,
                low_priority_queue: 50,
                max_wait: Duration::from_millis(200),
                min_retry_after: Duration::from_secs(1),
                max_retry_after: Duration::from_secs(30),
                retry_after_jitter: Duration::from_secs(1),
                html: true,
                set_limit: None,
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
        let cell = self.cell.0.clone();
        let mut config = cell.config();
        let mut next = *config;
        f(&mut next);
        next.low_priority_queue = next.low_priority_queue.min(next.max_queue);
        next.max_retry_after = next.max_retry_after.max(next.min_retry_after);
        if cell.layers.load(Ordering::Relaxed) == 1 {
            // The only layer: change it in place, so its handles follow. Services it already
            // made would not see the change: refuse it rather than leave them behind.
            assert!(
                cell.get().is_none(),
                "ShedLayer: a setting was changed after the layer made a service; the services \
                 already made would not see it. Configure the layer before `layer()`, or clone \
                 it first for a separate limiter"
            );
            *config = next;
        } else {
            // Cloned: this one goes its own way; the others keep their settings.
            drop(config);
            self.cell = LayerRef::new(Cell::new(next));
        }
        self
    }

    /// The concurrency limit: a number (fixed), a [`Fixed`](super::Fixed), an
    /// [`Aimd`](super::Aimd) or a [`Gradient`](super::Gradient). Default: fixed at 100.
    pub fn limit(self, limit: impl Into<Limit>) -> Self {
        let limit = limit.into();
        self.with_config(|c| {
            c.limit = limit;
            c.set_limit = None;
        })
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
            cell: self.cell,
            priority,
        }
    }

    /// A handle on the shared state: the current limit, in-flight and queued counts, and a way
    /// to set the limit at runtime. It can be taken at any point: builder methods called
    /// afterwards change the layer it observes (see the [type docs](Self)).
    pub fn handle(&self) -> super::ShedHandle {
        super::ShedHandle {
            cell: self.cell.0.clone(),
        }
    }
}

impl<S, P: Clone> Layer<S> for ShedLayer<P> {
    type Service = Shed<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed::from_parts(inner, self.cell.0.shared(), self.priority.clone())
    }
}
