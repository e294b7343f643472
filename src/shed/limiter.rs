//! The limiter every service of one layer shares: a concurrency limit whose capacity can change
//! at runtime, a bounded wait queue, the latency statistics, the adaptive estimator, and how a
//! shed request is answered.
//!
//! The hot path (a request under the limit with nobody queued) is one load of the queue length
//! and one compare-and-swap on the in-flight count; completing it is a few atomic additions.
//! Waiters park on a [`Notify`]; a released permit wakes one of them (FIFO) only when the queue
//! is not empty.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tokio::{sync::Notify, time::Instant};

use super::{
    limit::{Estimator, Limit, WindowStats},
    Priority,
};
use crate::{
    refuse::{RefusalPolicy, RequestView},
    Reason, RetryAfter,
};

/// The settings of a built layer (checked by the builder).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) limit: Limit,
    pub(crate) max_queue: usize,
    pub(crate) low_priority_queue: usize,
    pub(crate) max_wait: Duration,
}

/// The current window of samples, in atomics so that recording is lock-free.
#[derive(Debug)]
struct Window {
    /// Nanoseconds since `Shared::epoch` at which the window opened.
    start: AtomicU64,
    count: AtomicU64,
    sum_ns: AtomicU64,
    min_ns: AtomicU64,
    drops: AtomicU64,
    max_in_flight: AtomicUsize,
}

#[derive(Debug)]
pub(crate) struct Shared {
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    queued: AtomicUsize,
    notify: Arc<Notify>,
    /// Exponential moving average of the inner service's latency, in nanoseconds (0 = none yet).
    latency_ns: AtomicU64,
    shed: AtomicU64,
    pub(crate) config: Config,
    refusal: RefusalPolicy,
    epoch: Instant,
    /// `Some` for adaptive limits.
    adaptive: Option<Adaptive>,
}

#[derive(Debug)]
struct Adaptive {
    window: Window,
    window_len: Duration,
    min_samples: u32,
    drop_latency: Option<Duration>,
    /// Only taken with `try_lock` by the request that closes a window: never waited on.
    estimator: Mutex<Estimator>,
}

impl Shared {
    pub(crate) fn new(config: Config, refusal: RefusalPolicy) -> Self {
        let epoch = Instant::now();
        let adaptive = config
            .limit
            .window()
            .map(|(window_len, min_samples)| Adaptive {
                window: Window {
                    start: AtomicU64::new(0),
                    count: AtomicU64::new(0),
                    sum_ns: AtomicU64::new(0),
                    min_ns: AtomicU64::new(u64::MAX),
                    drops: AtomicU64::new(0),
                    max_in_flight: AtomicUsize::new(0),
                },
                window_len,
                min_samples,
                drop_latency: config.limit.drop_latency(),
                estimator: Mutex::new(Estimator::new(config.limit)),
            });
        Self {
            in_flight: AtomicUsize::new(0),
            limit: AtomicUsize::new(config.limit.initial()),
            queued: AtomicUsize::new(0),
            notify: Arc::new(Notify::new()),
            latency_ns: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            config,
            refusal,
            epoch,
            adaptive,
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub(crate) fn shed_count(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    pub(crate) fn latency(&self) -> Option<Duration> {
        match self.latency_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Sets the limit from outside; an adaptive algorithm continues from this value.
    pub(crate) fn set_limit(&self, limit: usize) {
        let limit = limit.max(1);
        if let Some(adaptive) = &self.adaptive {
            // Off the hot path: waiting here is fine.
            adaptive
                .estimator
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .reset_to(limit);
        }
        self.store_limit(limit);
    }

    fn store_limit(&self, limit: usize) {
        let old = self.limit.swap(limit, Ordering::SeqCst);
        if limit > old {
            // New capacity: wake as many waiters as it can take.
            let wake = (limit - old).min(self.queued.load(Ordering::SeqCst));
            for _ in 0..wake {
                self.notify.notify_one();
            }
        }
    }

    /// Whether to measure this request's latency. Adaptive limits measure every request. A
    /// fixed limit only needs the latency for its `Retry-After` estimate, so it measures one
    /// request in 16 (and every request until it has a first value), which saves two clock
    /// reads on most requests.
    #[inline]
    pub(crate) fn sample(&self) -> bool {
        thread_local! {
            static TICK: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
        }
        if self.adaptive.is_some() || self.latency_ns.load(Ordering::Relaxed) == 0 {
            return true;
        }
        TICK.with(|tick| {
            let t = tick.get().wrapping_add(1);
            tick.set(t);
            t % 16 == 0
        })
    }

    /// Takes a permit if one is free and nobody is queued (queued requests go first).
    #[inline]
    pub(crate) fn try_acquire_fast(&self) -> bool {
        self.queued.load(Ordering::SeqCst) == 0 && self.try_acquire()
    }

    /// Takes a permit if one is free.
    ///
    /// The loads here are `SeqCst` on purpose. A queued request does `queued += 1` (in
    /// `try_enqueue`), then reads `in_flight` and `limit` here; a request that finishes does
    /// `in_flight -= 1`, then reads `queued` (`release`), and `store_limit` writes `limit`, then
    /// reads `queued`. That is the store-buffering pattern: with a weaker load on either side,
    /// both sides may read the old value (the waiter sees no free permit, the releaser sees an
    /// empty queue and wakes nobody), and the waiter sleeps until its deadline next to a free
    /// permit. With every one of these writes and loads `SeqCst` they fall into one total
    /// order, so at least one side sees the other: the waiter takes the permit, or the releaser
    /// wakes it (a `notify_one` before the waiter registered is kept as a permit by `Notify`).
    /// The failure ordering of the compare-and-swap is `SeqCst` too, since its reload can be
    /// the load that decides "full". On x86 a `SeqCst` load is a plain load. (A test cannot
    /// catch this race reliably: it needs a weakly ordered CPU and an exact interleaving, so
    /// there is none; the argument above is the check.)
    #[inline]
    pub(crate) fn try_acquire(&self) -> bool {
        let limit = self.limit.load(Ordering::SeqCst);
        let mut current = self.in_flight.load(Ordering::SeqCst);
        loop {
            if current >= limit {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// `SeqCst` write, then `SeqCst` load: the releasing half of the pattern described on
    /// [`try_acquire`](Self::try_acquire).
    #[inline]
    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.queued.load(Ordering::SeqCst) > 0 {
            self.notify.notify_one();
        }
    }

    /// Takes a place in the queue if there is room for this priority. The successful
    /// compare-and-swap is `SeqCst`: it is the waiter's write in the pattern described on
    /// [`try_acquire`](Self::try_acquire).
    pub(crate) fn try_enqueue(&self, priority: Priority) -> bool {
        if self.config.max_wait.is_zero() {
            return false;
        }
        let cap = match priority {
            Priority::Low => self.config.low_priority_queue,
            _ => self.config.max_queue,
        };
        let mut current = self.queued.load(Ordering::Relaxed);
        loop {
            if current >= cap {
                return false;
            }
            match self.queued.compare_exchange_weak(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    fn leave_queue(&self) {
        self.queued.fetch_sub(1, Ordering::SeqCst);
    }

    pub(crate) fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    pub(crate) fn count_shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    /// The base wait for a shed request: the time the backlog needs to drain at the observed
    /// rate, `(queued + 1) * latency / limit`. The refusal policy bounds and jitters it.
    pub(crate) fn drain_time(&self) -> Duration {
        let latency = self.latency().unwrap_or(Duration::from_millis(100));
        let backlog = self.queued() as u32 + 1;
        let limit = self.limit().clamp(1, u32::MAX as usize) as u32;
        latency.saturating_mul(backlog) / limit
    }

    /// Counts, logs and answers a shed request: 503 with the drain time as the base wait.
    pub(crate) fn refuse<B, ResBody: From<Bytes>>(
        &self,
        req: &Request<B>,
        why: &'static str,
    ) -> Response<ResBody> {
        self.count_shed();
        let response: Response<ResBody> = self.refusal.respond(
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::Overloaded,
            Some(RetryAfter::Delay(self.drain_time())),
            None,
            RequestView::of(req),
            std::time::SystemTime::now,
        );
        // Debug, not warn: under overload this fires for every shed request.
        tracing::debug!(
            error_id = ?response.extensions().get::<crate::ErrorId>(),
            method = %req.method(),
            path = req.uri().path(),
            why,
            limit = self.limit(),
            in_flight = self.in_flight(),
            queued = self.queued(),
            "request shed: overloaded"
        );
        response
    }

    /// Records a finished request: its latency in the inner service and whether it failed.
    pub(crate) fn record(&self, start: Instant, failed: bool) {
        let now = Instant::now();
        let latency = now.saturating_duration_since(start);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        // EMA with weight 1/16; a lost update under a race only loses one sample.
        let old = self.latency_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            ns
        } else {
            old - old / 16 + ns / 16
        };
        self.latency_ns.store(new.max(1), Ordering::Relaxed);

        let Some(a) = &self.adaptive else { return };
        let w = &a.window;
        let dropped = failed || a.drop_latency.is_some_and(|max| latency > max);
        w.sum_ns.fetch_add(ns, Ordering::Relaxed);
        w.min_ns.fetch_min(ns, Ordering::Relaxed);
        // This request still holds its permit, so it is counted.
        w.max_in_flight
            .fetch_max(self.in_flight(), Ordering::Relaxed);
        if dropped {
            w.drops.fetch_add(1, Ordering::Relaxed);
        }
        let count = w.count.fetch_add(1, Ordering::AcqRel) + 1;
        if count < u64::from(a.min_samples) {
            return;
        }
        let now = self.nanos_since_epoch(now);
        let opened = w.start.load(Ordering::Relaxed);
        if now.saturating_sub(opened) < a.window_len.as_nanos() as u64 {
            return;
        }
        // Close the window. Whoever holds the lock is already doing it.
        let Ok(mut estimator) = a.estimator.try_lock() else {
            return;
        };
        if w.count.load(Ordering::Acquire) < u64::from(a.min_samples) {
            return; // closed by someone else just now
        }
        let count = w.count.swap(0, Ordering::AcqRel);
        let sum = w.sum_ns.swap(0, Ordering::Relaxed);
        let stats = WindowStats {
            count,
            mean: Duration::from_nanos(sum / count.max(1)),
            min: Duration::from_nanos(w.min_ns.swap(u64::MAX, Ordering::Relaxed)),
            drops: w.drops.swap(0, Ordering::Relaxed),
            max_in_flight: w.max_in_flight.swap(0, Ordering::Relaxed),
        };
        w.start.store(now, Ordering::Relaxed);
        let next = estimator.update(&stats);
        drop(estimator);
        tracing::trace!(
            samples = stats.count,
            mean_us = stats.mean.as_micros() as u64,
            limit = next,
            "shed: adaptive limit window closed"
        );
        self.store_limit(next);
    }

    fn nanos_since_epoch(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// One unit of the concurrency limit, given back when dropped: on success, error, panic (the
/// future holding it is dropped while unwinding) and cancellation alike.
#[derive(Debug)]
pub(crate) struct Permit {
    shared: Arc<Shared>,
}

impl Permit {
    /// Wraps a permit already taken with `try_acquire`.
    #[inline]
    pub(crate) fn taken(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.release();
    }
}

/// A place in the wait queue, given back when dropped (acquired, timed out, or the request's
/// future dropped because the client went away).
#[derive(Debug)]
pub(crate) struct QueueSlot {
    shared: Arc<Shared>,
}

impl QueueSlot {
    /// Wraps a place already taken with `try_enqueue`.
    pub(crate) fn taken(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.shared.leave_queue();
    }
}
