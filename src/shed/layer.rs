use std::{fmt, sync::Arc, time::Duration};

use tower_layer::Layer;

use super::{
    limiter::{Config, Shared},
    AllNormal, Limit, Shed, ShedHandle,
};
use crate::{error::InvalidConfig, refuse::RefusalPolicy, telemetry::Meter};

/// Layer that limits concurrency, queues a bounded number of requests for a bounded time, and
/// answers the rest with **503 + `Retry-After`**. See the [module docs](super).
///
/// A plain value around one shared limiter, made when the layer is built: every service made
/// by the layer and by its clones shares one limit, one queue and one set of statistics (put
/// the layer where all the requests you want to limit pass), and a [`handle`](Self::handle)
/// taken at any time observes that limiter. For a separate limiter, build another layer.
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
    /// A layer with the [default settings](ShedBuilder): a fixed limit of 100, a queue of 100
    /// places waited in for at most 200 ms, the default [`RefusalPolicy`].
    pub fn new() -> Self {
        ShedBuilder::default()
            .build()
            .expect("the default settings are valid")
    }

    /// A builder starting from the default settings; [`ShedBuilder::build`] checks them.
    pub fn builder() -> ShedBuilder {
        ShedBuilder::default()
    }
}

impl Default for ShedLayer<AllNormal> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P> ShedLayer<P> {
    /// Decides each request's [`Priority`](super::Priority): a closure
    /// `Fn(&Request<B>) -> Priority`, an [`ExemptPaths`](super::ExemptPaths), or your own
    /// [`Prioritize`](super::Prioritize). The limiter stays the same.
    pub fn priority<P2>(self, priority: P2) -> ShedLayer<P2> {
        ShedLayer {
            shared: self.shared,
            priority,
        }
    }

    /// A handle on the shared limiter: the current limit, in-flight and queued counts, and a
    /// way to set the limit at runtime.
    pub fn handle(&self) -> ShedHandle {
        ShedHandle {
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

/// The settings of a [`ShedLayer`]; [`build`](Self::build) checks them and makes the layer.
///
/// | setting | default |
/// |---|---|
/// | [`limit`](Self::limit) | a [fixed](super::Fixed) limit of **100** concurrent requests |
/// | [`max_queue`](Self::max_queue) | **100** places |
/// | [`low_priority_queue`](Self::low_priority_queue) | **half** of the queue |
/// | [`max_wait`](Self::max_wait) | **200 ms**: a queue absorbs bursts shorter than a request; waiting much longer only adds latency the client may no longer wait for |
/// | [`standing_queue_wait`](Self::standing_queue_wait) | **half of `max_wait`**, for a request that joins a standing queue: one that has not been empty for 100 ms, or in which a waiter timed out in the last 100 ms |
/// | [`refusal`](Self::refusal) | [`RefusalPolicy::default`]: the base wait is the time the backlog needs to drain at the observed rate |
#[derive(Debug, Clone)]
#[must_use]
pub struct ShedBuilder {
    config: Config,
    /// `None`: half of the queue.
    low_priority_queue: Option<usize>,
    /// `None`: half of `max_wait`.
    standing_wait: Option<Duration>,
    refusal: RefusalPolicy,
    name: Option<Arc<str>>,
}

impl Default for ShedBuilder {
    fn default() -> Self {
        Self {
            config: Config {
                limit: Limit::from(100),
                max_queue: 100,
                low_priority_queue: 50,
                max_wait: Duration::from_millis(200),
                standing_wait: Duration::from_millis(100),
            },
            low_priority_queue: None,
            standing_wait: None,
            refusal: RefusalPolicy::default(),
            name: None,
        }
    }
}

impl ShedBuilder {
    /// The concurrency limit: a number (fixed), a [`Fixed`](super::Fixed), an
    /// [`Aimd`](super::Aimd) or a [`Gradient`](super::Gradient). Default: fixed at 100.
    pub fn limit(mut self, limit: impl Into<Limit>) -> Self {
        self.config.limit = limit.into();
        self
    }

    /// How many requests may wait for a permit. Default 100. With 0, a request that finds no
    /// free permit is shed at once (as tower's `LoadShed`).
    pub fn max_queue(mut self, max: usize) -> Self {
        self.config.max_queue = max;
        self
    }

    /// How many of the queue's places [`Priority::Low`](super::Priority::Low) requests may use
    /// (at most [`max_queue`](Self::max_queue)). Default: half of the queue. With 0,
    /// low-priority requests are shed as soon as no permit is free.
    pub fn low_priority_queue(mut self, places: usize) -> Self {
        self.low_priority_queue = Some(places);
        self
    }

    /// How long a request may wait in the queue before it is shed. Default 200 ms. With zero,
    /// nothing queues.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.config.max_wait = max_wait;
        self
    }

    /// How long a request may wait when it joins a **standing queue**: one that has not been
    /// empty for the last 100 ms, or in which a waiter gave up at its deadline in the last
    /// 100 ms (a queue under sustained overload still empties whenever several requests finish
    /// at once, but its waiters keep timing out). Default: half of
    /// [`max_wait`](Self::max_wait); at most `max_wait` ([`build`](Self::build) rejects more);
    /// zero sheds such a request at once.
    ///
    /// A queue that empties now and then absorbs bursts, and `max_wait` bounds the wait. A queue
    /// that never empties (sustained overload) absorbs nothing: every request that gets a place
    /// waits nearly the whole `max_wait` before it runs, and its latency is the service's plus
    /// that wait. With a shorter wait for those requests the queue still keeps every permit
    /// busy (one is handed over as soon as it frees), while the accepted requests wait less.
    /// This is the CoDel rule of Facebook's servers ("if the queue has not been empty for the
    /// last 100 ms, time in the queue is limited to 5 ms"); tower's `LoadShed` has no queue.
    pub fn standing_queue_wait(mut self, wait: Duration) -> Self {
        self.standing_wait = Some(wait);
        self
    }

    /// Names this layer in its metrics (`name="<name>"` on every series, feature `metrics`) and
    /// in its log events, to tell several shed layers of one process apart. Layers left unnamed,
    /// or given one name, share their series: the in-flight and queued gauges and the counters
    /// add up over them, and the limit gauge shows the limit the last of them stored.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How the 503 is made: `Retry-After` bounds, jitter and form, body formats, your own
    /// renderer. See [`RefusalPolicy`].
    pub fn refusal(mut self, policy: RefusalPolicy) -> Self {
        self.refusal = policy;
        self
    }

    /// Checks the settings and makes the layer, with its limiter.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`] when the limit's settings are invalid (see [`Fixed`](super::Fixed),
    /// [`Aimd`](super::Aimd), [`Gradient`](super::Gradient)), the low-priority share is
    /// larger than the queue, or the standing queue's wait is longer than `max_wait`.
    pub fn build(self) -> Result<ShedLayer, InvalidConfig> {
        let mut config = self.config;
        config.limit.validate()?;
        config.low_priority_queue = at_most(
            self.low_priority_queue,
            config.max_queue,
            config.max_queue / 2,
            ("low_priority_queue", "must not be larger than max_queue"),
        )?;
        config.standing_wait = at_most(
            self.standing_wait,
            config.max_wait,
            config.max_wait / 2,
            ("standing_queue_wait", "must not be longer than max_wait"),
        )?;
        Ok(ShedLayer {
            shared: Arc::new(Shared::new(config, self.refusal, Meter::new(self.name))),
            priority: AllNormal,
        })
    }
}

/// A setting that may not exceed `max`: `set` if within it, `unset` when not set, and the
/// `(setting, rule)` error otherwise.
fn at_most<T: PartialOrd>(
    set: Option<T>,
    max: T,
    unset: T,
    (setting, rule): (&'static str, &'static str),
) -> Result<T, InvalidConfig> {
    match set {
        None => Ok(unset),
        Some(value) if value > max => Err(InvalidConfig::new(setting, rule)),
        Some(value) => Ok(value),
    }
}
